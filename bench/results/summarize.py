"""Turn pytest-benchmark JSON from ``bench/`` into the README's performance table and a plot.

    python bench/results/summarize.py bench/results/*.json --markdown table.md --plot speedup.png

Reads every result the attnlens benchmarks wrote (their ``extra_info``: implementation, op, case,
median device time), merges the files (a GPU run is usually split over several ``-k`` selections),
and per device writes

- a Markdown table, one row per case: attnlens's forward and its TFLOP/s against torch SDPA's
  fastest backend on that case; the forward with per-head weights against the time needed just to
  write the weights at the measured copy bandwidth; a MultiheadAttention layer returning
  head-averaged weights, attnlens inside against ``nn.MultiheadAttention(need_weights=True)``;
  forward+backward against SDPA's fastest backend;
- a PNG (matplotlib, Agg) of those three speed-ups against sequence length;
- when the files hold results of the launch-configuration sweep (``bench/test_config_sweep.py``),
  a second table: per case and kernel, the default configuration's time and the fastest
  candidate's, which is where a tuning step in ``bench/NOTES.md`` starts.

Speed-up is the other implementation's time over attnlens's: above 1, attnlens is faster. Results
of a CPU smoke run are labelled as such in both, because they are not speed claims.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import re
import sys
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

__all__ = ["Result", "Row", "SweepRow", "load", "summarize", "sweep", "markdown", "sweep_markdown", "plot", "main"]

NOT_A_SPEED_CLAIM = "CPU smoke run through Triton's interpreter, which proves the suite runs: not a speed claim."


MASK_ORDER = {"none": 0, "causal": 1, "padding": 2}
SWEEP_IMPL = "attnlens-sweep"
KERNEL_ORDER = {"forward": 0, "weights": 1, "backward_dkdv": 2, "backward_dq": 3, "backward_preprocess": 4}


@dataclasses.dataclass(frozen=True)
class Result:
    device: str
    case: str
    impl: str
    op: str
    median_s: float
    info: dict


@dataclasses.dataclass
class Row:
    """One case on one device. Times in seconds; None where that benchmark did not run."""

    case: str
    family: str
    dtype: str
    head_dim: int
    mask: str
    batch: int
    heads: int
    seqlen: int
    fwd: Optional[float] = None
    fwd_tflops: Optional[float] = None
    sdpa_fwd: Optional[Tuple[str, float]] = None
    weights: Optional[float] = None
    weights_over_floor: Optional[float] = None
    mha_weights: Optional[float] = None
    layer_weights: Optional[float] = None
    fwdbwd: Optional[float] = None
    sdpa_fwdbwd: Optional[Tuple[str, float]] = None

    @property
    def series(self) -> str:
        """The line this row belongs to in the plot: everything but the sequence length (and the
        grid's batch, which shrinks as N grows to keep batch x N fixed)."""
        batch = "" if self.family == "grid" else f" B{self.batch}"
        return f"{self.family}{batch} {self.dtype} d{self.head_dim} {self.mask}"

    @property
    def speedup_sdpa_fwd(self) -> Optional[float]:
        return _ratio(self.sdpa_fwd[1] if self.sdpa_fwd else None, self.fwd)

    @property
    def speedup_sdpa_fwdbwd(self) -> Optional[float]:
        return _ratio(self.sdpa_fwdbwd[1] if self.sdpa_fwdbwd else None, self.fwdbwd)

    @property
    def speedup_mha_weights(self) -> Optional[float]:
        return _ratio(self.mha_weights, self.layer_weights)


@dataclasses.dataclass
class DeviceSummary:
    device: str
    speed_claim: bool
    versions: Dict[str, str]
    dates: List[str]
    rows: List[Row]


def _ratio(other: Optional[float], ours: Optional[float]) -> Optional[float]:
    return other / ours if other and ours else None


def load(paths: Iterable[str]) -> List[Result]:
    """Every attnlens result in the given pytest-benchmark JSON files."""
    results = []
    for path in paths:
        with open(path) as fh:
            data = json.load(fh)
        for bench in data.get("benchmarks", []):
            info = bench.get("extra_info") or {}
            if "impl" not in info or "case" not in info:
                continue
            median = info.get("median_s") or bench["stats"]["median"]
            results.append(Result(info.get("device", "unknown"), info["case"], info["impl"], info["op"], median, info))
    return results


def _fastest(times: Dict[Tuple[str, str], Result], op: str) -> Optional[Tuple[str, float]]:
    candidates = [
        (r.median_s, impl[len("sdpa-") :]) for (impl, o), r in times.items() if o == op and impl.startswith("sdpa-")
    ]
    if not candidates:
        return None
    best, backend = min(candidates)
    return backend, best


def summarize(results: Sequence[Result]) -> List[DeviceSummary]:
    """Group results by device and case; later files win when a benchmark appears twice."""
    by_device: Dict[str, Dict[str, Dict[Tuple[str, str], Result]]] = collections.defaultdict(dict)
    for r in results:
        if r.impl != SWEEP_IMPL:
            by_device[r.device].setdefault(r.case, {})[(r.impl, r.op)] = r
    out = []
    for device, cases in by_device.items():
        rows, claims, versions, dates = [], set(), {}, set()
        for case, times in cases.items():
            first = next(iter(times.values())).info
            claims.update(r.info.get("speed_claim", False) for r in times.values())
            for key in ("torch", "triton", "cuda"):
                if first.get(key):
                    versions[key] = first[key]
            dates.update(r.info["date"] for r in times.values() if r.info.get("date"))

            def get(impl: str, op: str = "fwd", times=times) -> Optional[Result]:
                return times.get((impl, op))

            row = Row(
                case,
                first["family"],
                first["dtype"],
                first["head_dim"],
                first["mask"],
                first["batch"],
                first["heads"],
                first["seqlen_q"],
            )
            fwd, weights, fwdbwd = get("attnlens"), get("attnlens-weights"), get("attnlens", "fwdbwd")
            mha, layer = get("mha-torch-weights"), get("mha-attnlens-weights")
            if fwd:
                row.fwd, row.fwd_tflops = fwd.median_s, fwd.info.get("tflops")
            if weights:
                row.weights, row.weights_over_floor = weights.median_s, weights.info.get("time_over_weights_floor")
            row.mha_weights = mha.median_s if mha else None
            row.layer_weights = layer.median_s if layer else None
            row.fwdbwd = fwdbwd.median_s if fwdbwd else None
            row.sdpa_fwd, row.sdpa_fwdbwd = _fastest(times, "fwd"), _fastest(times, "fwdbwd")
            rows.append(row)
        rows.sort(
            key=lambda r: (
                r.family,
                0 if r.family == "grid" else r.batch,
                r.dtype,
                r.head_dim,
                MASK_ORDER.get(r.mask, len(MASK_ORDER)),
                r.mask,
                r.seqlen,
            )
        )
        out.append(DeviceSummary(device, claims == {True}, versions, sorted(dates), rows))
    return out


@dataclasses.dataclass
class SweepRow:
    """One kernel on one case of the configuration sweep: the default configuration against the
    fastest candidate (which may be the default). Times in seconds."""

    device: str
    case: str
    kernel: str
    op: str
    default_config: str
    default_s: Optional[float]
    best_config: str
    best_s: float
    timed: int

    @property
    def gain(self) -> Optional[float]:
        """Default time over the best candidate's: 1.0 when the default is the fastest."""
        return _ratio(self.default_s, self.best_s)


def sweep(results: Sequence[Result]) -> List[SweepRow]:
    """The sweep's rows, by device, case and kernel; later files win when a configuration appears
    twice. The default is the result marked ``is_default``."""
    groups: Dict[Tuple[str, str, str], Dict[str, Result]] = collections.defaultdict(dict)
    for r in results:
        if r.impl == SWEEP_IMPL:
            key = "default" if r.info.get("is_default") else r.info["config"]
            groups[(r.device, r.case, r.info["kernel"])][key] = r
    rows = []
    for (device, case, kernel), by_config in groups.items():
        default = by_config.get("default")
        best = min(by_config.values(), key=lambda r: r.median_s)
        any_result = default or best
        rows.append(
            SweepRow(
                device,
                case,
                kernel,
                any_result.op,
                any_result.info.get("default_config", "?"),
                default.median_s if default else None,
                best.info["config"],
                best.median_s,
                len(by_config),
            )
        )
    rows.sort(key=lambda r: (r.device, r.case, KERNEL_ORDER.get(r.kernel, len(KERNEL_ORDER)), r.kernel))
    return rows


def sweep_markdown(rows: Sequence[SweepRow], speed_claim: bool = True) -> str:
    """The sweep table: per device, one row per case and kernel."""
    parts = []
    for device in dict.fromkeys(r.device for r in rows):
        parts.append(f"### Launch-configuration sweep on {device}\n")
        if not speed_claim:
            parts.append(f"> **{NOT_A_SPEED_CLAIM}**\n")
        parts.append(
            "Configurations are block_m x block_n, warps, stages. *Timed* is the op the kernel was timed "
            "in (fwdbwd: forward then backward, only the named kernel's configuration changed). "
            "*Gain*: the default's time over the fastest candidate's.\n"
        )
        parts.append("| case | kernel | timed | default | ms | fastest | ms | gain | configurations |")
        parts.append("| " + " | ".join(["---"] * 9) + " |")
        for r in rows:
            if r.device == device:
                parts.append(
                    f"| {r.case} | {r.kernel} | {r.op} | {r.default_config} | {_ms(r.default_s)} | "
                    f"{r.best_config} | {_ms(r.best_s)} | {_x(r.gain)} | {r.timed} |"
                )
        parts.append("")
    return "\n".join(parts) + "\n"


def _ms(seconds: Optional[float]) -> str:
    return "–" if seconds is None else f"{seconds * 1e3:.3g}"


def _x(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.2f}x"


def markdown(summaries: Sequence[DeviceSummary]) -> str:
    """The README's performance table(s), one per device."""
    parts = []
    for s in summaries:
        versions = ", ".join(f"{k} {v}" for k, v in s.versions.items())
        parts.append(f"### {s.device} ({versions}; {', '.join(s.dates) or 'undated'})\n")
        if not s.speed_claim:
            parts.append(f"> **{NOT_A_SPEED_CLAIM}**\n")
        parts.append(
            "Times in ms (median). Speed-up = the other's time / attnlens's time; above 1, attnlens "
            "is faster. *Weights / floor*: forward with per-head weights over the time needed just "
            "to write them at the measured copy bandwidth. *Layer*: a MultiheadAttention layer "
            "(projections included) returning head-averaged weights.\n"
        )
        parts.append(
            "| case | B x H | N | fwd | TFLOP/s | fastest SDPA fwd | speed-up | fwd + weights | "
            "weights / floor | nn.MHA(need_weights) | attnlens layer | speed-up | fwd+bwd | "
            "fastest SDPA fwd+bwd | speed-up |"
        )
        parts.append("| " + " | ".join(["---"] * 15) + " |")
        for r in s.rows:
            sdpa_fwd = f"{_ms(r.sdpa_fwd[1])} ({r.sdpa_fwd[0]})" if r.sdpa_fwd else "–"
            sdpa_bwd = f"{_ms(r.sdpa_fwdbwd[1])} ({r.sdpa_fwdbwd[0]})" if r.sdpa_fwdbwd else "–"
            tflops = "–" if r.fwd_tflops is None else f"{r.fwd_tflops:.3g}"
            parts.append(
                f"| {r.series} | {r.batch} x {r.heads} | {r.seqlen} | {_ms(r.fwd)} | {tflops} | {sdpa_fwd} | "
                f"{_x(r.speedup_sdpa_fwd)} | {_ms(r.weights)} | {_x(r.weights_over_floor)} | {_ms(r.mha_weights)} | "
                f"{_ms(r.layer_weights)} | {_x(r.speedup_mha_weights)} | {_ms(r.fwdbwd)} | {sdpa_bwd} | "
                f"{_x(r.speedup_sdpa_fwdbwd)} |"
            )
        parts.append("")
    return "\n".join(parts) + "\n"


PANELS = (
    ("speedup_sdpa_fwd", "forward: over torch SDPA's fastest backend", 1.0),
    ("speedup_sdpa_fwdbwd", "forward+backward: over torch SDPA's fastest backend", 1.0),
    ("speedup_mha_weights", "layer with weights: over nn.MultiheadAttention(need_weights=True)", 5.0),
)


def plot_series(summary: DeviceSummary) -> Dict[str, Dict[str, List[Tuple[int, float]]]]:
    """Per panel, per series: the (N, speed-up) points the plot draws."""
    out: Dict[str, Dict[str, List[Tuple[int, float]]]] = {}
    for attr, _, _ in PANELS:
        lines: Dict[str, List[Tuple[int, float]]] = collections.defaultdict(list)
        for r in summary.rows:
            value = getattr(r, attr)
            if value is not None:
                lines[r.series].append((r.seqlen, value))
        out[attr] = {k: sorted(v) for k, v in lines.items()}
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def plot(summaries: Sequence[DeviceSummary], path: str) -> List[str]:
    """One PNG per device: ``path`` itself for a single device, else ``path`` with the device's
    name before the suffix. Returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for s in summaries:
        target = path if len(summaries) == 1 else re.sub(r"(\.png)?$", f"-{_slug(s.device)}.png", path, count=1)
        series = plot_series(s)
        fig, axes = plt.subplots(1, len(PANELS), figsize=(6 * len(PANELS), 4.5), constrained_layout=True)
        for ax, (attr, title, target_line) in zip(axes, PANELS):
            for name, points in sorted(series[attr].items()):
                ax.plot([n for n, _ in points], [v for _, v in points], marker="o", label=name)
            ax.axhline(1.0, color="black", linewidth=0.8)
            if target_line != 1.0:
                ax.axhline(target_line, color="grey", linestyle="--", linewidth=0.8, label=f"target {target_line:g}x")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("sequence length N")
            ax.set_ylabel("speed-up (x)")
            ax.set_title(title, fontsize=10)
            if series[attr]:
                ax.legend(fontsize=7)
        heading = f"attnlens on {s.device} ({', '.join(s.dates)})"
        if not s.speed_claim:
            heading += "\n" + NOT_A_SPEED_CLAIM
        fig.suptitle(heading, fontsize=11, color="black" if s.speed_claim else "darkred")
        fig.savefig(target, dpi=110)
        plt.close(fig)
        written.append(target)
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+", help="pytest-benchmark JSON files (--benchmark-json output)")
    parser.add_argument("--markdown", metavar="PATH", help="write the table here (default: print it)")
    parser.add_argument("--plot", metavar="PATH", help="write the speed-up plot here (PNG)")
    args = parser.parse_args(argv)
    results = load(args.json)
    summaries, sweep_rows = summarize(results), sweep(results)
    if not summaries and not sweep_rows:
        print("no attnlens benchmark results in " + ", ".join(args.json), file=sys.stderr)
        return 1
    table = markdown(summaries) if summaries else ""
    if sweep_rows:
        claims = {r.info.get("speed_claim", False) for r in results if r.impl == SWEEP_IMPL}
        table += sweep_markdown(sweep_rows, speed_claim=claims == {True})
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(table)
    else:
        print(table)
    if args.plot and summaries:
        for written in plot(summaries, args.plot):
            print(f"wrote {written}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
