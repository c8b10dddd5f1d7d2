"""bench/results/summarize.py: pytest-benchmark JSON in, the README's table and the speed-up plot out.

The input is a synthetic JSON in the shape the benchmarks write (``extra_info`` per result), with
times chosen so every number in the table is known in advance.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def summarize():
    path = ROOT / "bench" / "results" / "summarize.py"
    spec = importlib.util.spec_from_file_location("attnlens_bench_summarize", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def _case(seqlen: int, mask: str = "none", dtype: str = "fp16", head_dim: int = 64) -> dict:
    batch, heads = 16384 // seqlen, 2048 // head_dim
    return {
        "case": f"grid-B{batch}-H{heads}-N{seqlen}-d{head_dim}-{dtype}-{mask}",
        "family": "grid",
        "batch": batch,
        "heads": heads,
        "seqlen_q": seqlen,
        "seqlen_k": seqlen,
        "head_dim": head_dim,
        "dtype": dtype,
        "mask": mask,
    }


def _result(
    case: dict,
    impl: str,
    op: str,
    median_s: float,
    device: str = "NVIDIA H100 80GB HBM3",
    speed_claim: bool = True,
    **info,
) -> dict:
    extra = {
        "device": device,
        "torch": "2.11.0+cu130",
        "triton": "3.6.0",
        "date": "2026-11-20",
        "speed_claim": speed_claim,
        "impl": impl,
        "op": op,
        "median_s": median_s,
        **case,
        **info,
    }
    # the host clock's median differs on purpose: the summary must use the device median
    return {
        "name": f"test_attention[{case['case']}-{impl}-{op}]",
        "group": f"{op} {case['case']}",
        "stats": {"median": median_s + 1.0},
        "extra_info": extra,
    }


def _write(path: pathlib.Path, benchmarks: list) -> str:
    path.write_text(json.dumps({"machine_info": {}, "benchmarks": benchmarks}))
    return str(path)


@pytest.fixture
def gpu_json(tmp_path):
    a, b = _case(1024), _case(4096, "causal")
    rows = [
        _result(a, "attnlens", "fwd", 1e-3, tflops=200.0),
        _result(a, "sdpa-math", "fwd", 8e-3),
        _result(a, "sdpa-flash", "fwd", 1.5e-3),
        _result(a, "sdpa-efficient", "fwd", 2e-3),
        _result(a, "attnlens-weights", "fwd", 4e-3, time_over_weights_floor=1.25),
        _result(a, "mha-torch-weights", "fwd", 30e-3),
        _result(a, "mha-attnlens-weights", "fwd", 5e-3),
        _result(a, "attnlens", "fwdbwd", 4e-3),
        _result(a, "sdpa-flash", "fwdbwd", 5e-3),
        _result(a, "sdpa-math", "fwdbwd", 3e-3),
        _result(b, "attnlens", "fwd", 2e-3, tflops=300.0),
        _result(b, "sdpa-cudnn", "fwd", 1e-3),
        {"name": "test_something_else", "stats": {"median": 1.0}, "extra_info": {}},  # not ours: ignored
    ]
    return _write(tmp_path / "h100.json", rows)


def test_rows_take_the_fastest_sdpa_backend_and_the_device_median(summarize, gpu_json):
    (device,) = summarize.summarize(summarize.load([gpu_json]))
    assert device.device == "NVIDIA H100 80GB HBM3" and device.speed_claim
    assert device.versions == {"torch": "2.11.0+cu130", "triton": "3.6.0"}
    short, long = device.rows  # no mask before causal
    assert (short.seqlen, long.seqlen) == (1024, 4096)
    assert short.sdpa_fwd == ("flash", 1.5e-3)
    assert short.speedup_sdpa_fwd == pytest.approx(1.5)
    assert short.sdpa_fwdbwd == ("math", 3e-3)
    assert short.speedup_sdpa_fwdbwd == pytest.approx(0.75)
    assert short.speedup_mha_weights == pytest.approx(6.0)
    assert short.weights_over_floor == pytest.approx(1.25)
    assert long.sdpa_fwd == ("cudnn", 1e-3)
    assert long.speedup_sdpa_fwd == pytest.approx(0.5)
    assert long.speedup_mha_weights is None and long.fwdbwd is None


def test_markdown_table(summarize, gpu_json):
    table = summarize.markdown(summarize.summarize(summarize.load([gpu_json])))
    lines = table.splitlines()
    assert lines[0].startswith("### NVIDIA H100 80GB HBM3 (torch 2.11.0+cu130, triton 3.6.0; 2026-11-20)")
    assert "not a speed claim" not in table
    rows = [line for line in lines if line.startswith("| grid")]
    assert rows == [
        "| grid fp16 d64 none | 16 x 32 | 1024 | 1 | 200 | 1.5 (flash) | 1.50x | 4 | 1.25x | 30 | 5 | 6.00x | 4 "
        "| 3 (math) | 0.75x |",
        "| grid fp16 d64 causal | 4 x 32 | 4096 | 2 | 300 | 1 (cudnn) | 0.50x | – | – | – | – | – | – | – | – |",
    ]


def test_files_merge_and_cpu_smoke_results_are_labelled(summarize, gpu_json, tmp_path):
    smoke = _case(64, dtype="fp32")
    smoke_json = _write(
        tmp_path / "cpu.json", [_result(smoke, "attnlens", "fwd", 0.1, device="CPU (x86_64)", speed_claim=False)]
    )
    summaries = summarize.summarize(summarize.load([gpu_json, smoke_json]))
    assert {s.device: s.speed_claim for s in summaries} == {"NVIDIA H100 80GB HBM3": True, "CPU (x86_64)": False}
    table = summarize.markdown(summaries)
    gpu_part, cpu_part = table.split("### CPU (x86_64)")
    assert "not a speed claim" not in gpu_part and "not a speed claim" in cpu_part


def test_plot(summarize, gpu_json, tmp_path):
    (device,) = summarize.summarize(summarize.load([gpu_json]))
    series = summarize.plot_series(device)
    assert series["speedup_sdpa_fwd"] == {
        "grid fp16 d64 none": [(1024, pytest.approx(1.5))],
        "grid fp16 d64 causal": [(4096, pytest.approx(0.5))],
    }
    assert series["speedup_mha_weights"] == {"grid fp16 d64 none": [(1024, pytest.approx(6.0))]}
    out = tmp_path / "speedup.png"
    assert summarize.plot([device], str(out)) == [str(out)]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_command_line(summarize, gpu_json, tmp_path, capsys):
    table, png = tmp_path / "table.md", tmp_path / "plot.png"
    assert summarize.main([gpu_json, "--markdown", str(table), "--plot", str(png)]) == 0
    assert "| grid fp16 d64 none | 16 x 32 | 1024 |" in table.read_text()
    assert png.stat().st_size > 0
    empty = _write(tmp_path / "empty.json", [])
    assert summarize.main([empty]) == 1
    assert "no attnlens benchmark results" in capsys.readouterr().err


def test_series_names(summarize):
    """The grid's batch shrinks as N grows (batch x N fixed), so it is not part of a grid line; the
    tour's batch is fixed per line, so it is."""
    grid = summarize.Row("c", "grid", "bf16", 128, "causal", 2, 16, 8192)
    tour = summarize.Row("c", "tour", "fp32", 16, "padding", 8, 4, 32)
    assert (grid.series, tour.series) == ("grid bf16 d128 causal", "tour B8 fp32 d16 padding")


def _sweep_result(kernel: str, config: str, median_s: float, default: bool = False, op: str = "fwd") -> dict:
    case = {
        "case": "sweep-B4-H32-N4096-d64-fp16-none",
        "family": "sweep",
        "batch": 4,
        "heads": 32,
        "seqlen_q": 4096,
        "seqlen_k": 4096,
        "head_dim": 64,
        "dtype": "fp16",
        "mask": "none",
    }
    return _result(
        case,
        "attnlens-sweep",
        op,
        median_s,
        kernel=kernel,
        config=config,
        default_config="128x64-w4-s3",
        is_default=default,
    )


def test_config_sweep_table(summarize, gpu_json, tmp_path):
    """The sweep's results stay out of the performance table and get their own: the default
    against the fastest candidate, per case and kernel."""
    sweep_json = _write(
        tmp_path / "sweep.json",
        [
            _sweep_result("backward_dq", "128x64-w8-s2", 3e-3, default=True, op="fwdbwd"),
            _sweep_result("backward_dq", "64x64-w4-s2", 4e-3, op="fwdbwd"),
            _sweep_result("forward", "128x64-w4-s3", 2e-3, default=True),
            _sweep_result("forward", "128x128-w8-s3", 1.6e-3),
            _sweep_result("forward", "64x64-w4-s2", 2.5e-3),
        ],
    )
    results = summarize.load([gpu_json, sweep_json])
    (device,) = summarize.summarize(results)
    assert all(not r.case.startswith("sweep") for r in device.rows)
    forward, dq = summarize.sweep(results)  # forward first, whatever the file order
    assert (forward.kernel, forward.best_config, forward.timed) == ("forward", "128x128-w8-s3", 3)
    assert forward.gain == pytest.approx(1.25)
    assert (dq.best_config, dq.op, dq.gain) == ("128x64-w8-s2", "fwdbwd", pytest.approx(1.0))
    table = tmp_path / "table.md"
    assert summarize.main([gpu_json, sweep_json, "--markdown", str(table)]) == 0
    text = table.read_text()
    assert "| grid fp16 d64 none | 16 x 32 | 1024 |" in text
    assert (
        "| sweep-B4-H32-N4096-d64-fp16-none | forward | fwd | 128x64-w4-s3 | 2 | 128x128-w8-s3 | 1.6 | 1.25x | 3 |"
    ) in text
    # a file of sweep results alone is enough
    assert summarize.main([sweep_json, "--markdown", str(table)]) == 0
    assert "Launch-configuration sweep" in table.read_text()
