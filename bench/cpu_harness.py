"""How the CPU path's benchmarks measure: attnlens and its torch counterpart in turns, in one run.

Imported by ``bench/test_cpu_bench.py`` and ``bench/test_cpu_end_to_end_bench.py``. A CPU shared
with other work drifts by tens of percent within seconds, so two implementations timed one after
the other are not comparable; here every round times both, torch's first, on the same fresh
inputs, and the ratio of the two medians is what a result claims. pytest-benchmark's own
statistics are attnlens's calls (the timed target); torch's times are in ``extra_info``.

Each result's ``extra_info`` holds: ``impl`` (what attnlens ran), ``baseline`` (what torch ran),
the case, ``median_s`` / ``baseline_median_s``, ``ratio`` (attnlens over torch: below 1,
attnlens is faster), ``times_s`` / ``baseline_times_s`` (every round), ``rounds``, ``threads``,
the machine (CPU model, cores), the torch and triton versions and the date, and
``speed_claim: true`` (unlike the interpreter smoke runs of the GPU suite).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import math
import os
import platform
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

import attnlens


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> Optional[str]:
    try:  # never import triton here: the CPU path runs without it
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> Dict[str, object]:
    return {
        "device": "CPU",
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "attnlens": attnlens.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "speed_claim": True,
        "timer": "host perf_counter, attnlens and torch in turns (torch first) every round",
    }


def paired(
    benchmark,
    ours: Callable[..., object],
    theirs: Callable[..., object],
    make_args: Callable[[], Sequence[object]],
    info: Dict[str, object],
    seconds: float = 6.0,
    min_rounds: int = 5,
    max_rounds: int = 60,
) -> Dict[str, object]:
    """Time ``ours(*args)`` (with pytest-benchmark) and ``theirs(*args)`` in turns on the same
    fresh ``args`` every round; fill ``benchmark.extra_info`` and return it.

    One warm-up call each, then as many rounds as fit in about ``seconds`` (``min_rounds`` to
    ``max_rounds``)."""
    warm = make_args()
    start = time.perf_counter()
    theirs(*warm)
    middle = time.perf_counter()
    ours(*warm)
    end = time.perf_counter()
    del warm
    per_round = (end - start) or 1e-6
    rounds = max(min_rounds, min(max_rounds, math.ceil(seconds / per_round)))
    theirs_times: List[float] = []
    ours_times: List[float] = []

    def setup():
        args = make_args()
        t0 = time.perf_counter()
        theirs(*args)
        theirs_times.append(time.perf_counter() - t0)
        return tuple(args), {}

    def target(*args):
        t0 = time.perf_counter()
        ours(*args)
        ours_times.append(time.perf_counter() - t0)

    benchmark.pedantic(target, setup=setup, rounds=rounds, iterations=1, warmup_rounds=0)
    median, baseline = statistics.median(ours_times), statistics.median(theirs_times)
    extra = dict(machine_info())
    extra.update(info)
    extra.update(
        threads=torch.get_num_threads(),
        rounds=rounds,
        median_s=median,
        baseline_median_s=baseline,
        ratio=median / baseline,
        times_s=ours_times,
        baseline_times_s=theirs_times,
        warmup_s={"baseline": middle - start, "attnlens": end - middle},
    )
    benchmark.extra_info.update(extra)
    return extra
