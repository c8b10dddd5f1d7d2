"""Benchmark set-up. Without CUDA the kernels run through Triton's interpreter, so ``TRITON_INTERPRET``
must be set before triton is first imported (importing torch does not import triton); on a CUDA
machine it is left alone and the compiled kernels are what gets timed.

    pytest bench --benchmark-only                                   # everything this machine can run
    pytest bench --benchmark-only --benchmark-json=bench/results/<device>-<date>.json
"""

import gc
import os
import sys

import torch

# Triton reads TRITON_INTERPRET once, when first imported: too late if something imported it already.
_TRITON_IMPORTED_TOO_EARLY = "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    # The CPU smoke run measures nothing; one thread keeps torch's small ops from spinning against
    # whatever else shares the cores.
    torch.set_num_threads(1)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silences Triton 3.9's notice; same default
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

from harness import NOT_A_SPEED_CLAIM, detect_env, versions  # noqa: E402


def pytest_addoption(parser):
    parser.addoption(
        "--bench-seconds",
        type=float,
        default=0.25,
        help="attnlens bench: timed seconds to aim for per benchmark on a GPU (rounds 5 to 100)",
    )
    parser.addoption(
        "--cpu-threads",
        type=int,
        default=1,
        help="attnlens bench: torch intra-op threads for the CPU path's benchmarks (test_cpu_*.py)",
    )


def pytest_configure(config):
    if not torch.cuda.is_available() and _TRITON_IMPORTED_TOO_EARLY:
        raise pytest.UsageError(
            "triton was imported before bench/conftest.py could set TRITON_INTERPRET=1; "
            "set it in the environment to run the CPU smoke benchmarks"
        )


def pytest_report_header(config):
    if torch.cuda.is_available():
        return [f"attnlens bench: {torch.cuda.get_device_name()} - the GPU grid and the visual tour's shapes"]
    return [
        "attnlens bench: no CUDA device - tiny smoke cases only, through Triton's interpreter; "
        "the GPU grid is not collected.",
        NOT_A_SPEED_CLAIM,
    ]


@pytest.fixture(scope="session")
def bench_env(request):
    return detect_env(request.config.getoption("--bench-seconds"))


@pytest.fixture(autouse=True)
def _release_memory():
    """Give the next benchmark the whole device: this one's inputs and scratch go back to the
    driver, not only to torch's cache (the memory checks read the driver's free memory)."""
    yield
    if torch.cuda.is_available():
        if torch.cuda.memory_allocated() > 1 << 30:  # held by a reference cycle; a full collection is slow
            gc.collect()
        torch.cuda.empty_cache()


def pytest_benchmark_update_machine_info(config, machine_info):
    """The device and versions, also in the JSON's machine_info (each result's extra_info has them too)."""
    cuda = torch.cuda.is_available()
    info = {"device": torch.cuda.get_device_name() if cuda else "CPU", "speed_claim": cuda, **versions()}
    if not cuda:
        info["note"] = (
            NOT_A_SPEED_CLAIM + " This applies to the GPU suite's smoke cases only: the CPU path's "
            "benchmarks (test_cpu_*.py, extra_info speed_claim true) are real measurements."
        )
    machine_info["attnlens"] = info
