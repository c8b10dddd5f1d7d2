"""What the attnlens benchmarks measure and how: the cases, the work each call does, the timer.

Imported by ``bench/conftest.py`` and ``bench/test_attention_bench.py`` (pytest puts ``bench/`` on
``sys.path``). ``bench/conftest.py`` sets ``TRITON_INTERPRET`` before anything here imports triton.

Timing. On a CUDA device every call is bracketed by CUDA events and synchronised, so each round's
time is device time; pytest-benchmark's own (host) clock brackets the same region and gives the
same numbers plus the launch overhead. The per-round device times are kept and their median goes
into ``extra_info["median_s"]``, from which TFLOP/s and GB/s are derived. Before timing, a few
warm-up calls compile kernels and create handles; inputs rotate among several freshly drawn random
sets (never zeros) so small problems are not timed out of the L2 cache.

Counting. Forward FLOPs are ``4 * B * H * Nq * Nk * D`` (two matrix products), halved when causal,
over the unpadded keys only when keys are padded; forward+backward is 3.5x that (backward 2.5x).
The MultiheadAttention-level benchmarks add the four projections, ``8 * B * N * E**2``. Bytes are
the problem's compulsory traffic, the same for every implementation: each input read once, each
output (and the weights, when returned) written once.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import math
import os
import platform
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

import torch

import attnlens

T = TypeVar("T")

# --------------------------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------------------------

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
MASKS = ("none", "causal", "padding")
GRID_SEQLENS = (512, 1024, 2048, 4096, 8192, 16384)
GRID_HEAD_DIMS = (64, 128)
GRID_TOKENS = 16384  # batch * seqlen, as FlashAttention's benchmarks
GRID_WIDTH = 2048  # heads * head_dim


@dataclasses.dataclass(frozen=True)
class Case:
    """One attention shape. ``family`` is "grid" (the GPU sweep), "tour" (the shapes the visual
    tour draws: d_model 64, 4 heads) or "smoke" (the CPU run that only proves the suite works)."""

    family: str
    batch: int
    heads: int
    seqlen: int
    head_dim: int
    dtype: str
    mask: str

    @property
    def id(self) -> str:
        return f"{self.family}-B{self.batch}-H{self.heads}-N{self.seqlen}-d{self.head_dim}-{self.dtype}-{self.mask}"

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def _has(self, part: str) -> bool:
        """``mask`` is "none" or a "-"-joined set of "causal", "padding" and "dropout" (all three
        in the sweep's training case, "causal-padding-dropout")."""
        return part in self.mask.split("-")

    @property
    def causal(self) -> bool:
        return self._has("causal")

    @property
    def padded(self) -> bool:
        return self._has("padding")

    @property
    def dropout_p(self) -> float:
        """Attention dropout of a training call (0.1, as in BERT and GPT-2), or 0."""
        return 0.1 if self._has("dropout") else 0.0

    @property
    def embed_dim(self) -> int:
        return self.heads * self.head_dim

    def params(self) -> Dict[str, object]:
        return {
            "family": self.family,
            "batch": self.batch,
            "heads": self.heads,
            "seqlen_q": self.seqlen,
            "seqlen_k": self.seqlen,
            "head_dim": self.head_dim,
            "dtype": self.dtype,
            "mask": self.mask,
            "causal": self.causal,
            "key_padding": self.padded,
            "dropout_p": self.dropout_p,
        }


def grid_cases() -> List[Case]:
    """N in 512..16384, head dim 64 and 128, fp16 and bf16, no mask / causal / key padding, with
    batch * N = 16384 tokens and heads * head_dim = 2048."""
    return [
        Case("grid", max(1, GRID_TOKENS // n), GRID_WIDTH // d, n, d, dtype, mask)
        for dtype in ("fp16", "bf16")
        for d in GRID_HEAD_DIMS
        for mask in MASKS
        for n in GRID_SEQLENS
    ]


def tour_cases() -> List[Case]:
    """The visual tour's scale: a sentence or two (N 8 to 32 tokens), d_model 64 in 4 heads, batch
    1 and 8; fp32 as the tour runs it, fp16 as a model would; causal (as the tour draws it) and
    key padding (a padded batch of sentences)."""
    return [
        Case("tour", b, 4, n, 16, dtype, mask)
        for b in (1, 8)
        for n in (8, 32)
        for dtype in ("fp32", "fp16")
        for mask in ("causal", "padding")
    ]


def smoke_cases() -> List[Case]:
    """A few tiny shapes for the CPU, where the kernels run through Triton's interpreter: enough to
    prove every benchmark runs end to end (a ragged length, each mask, both interpreter-safe
    dtypes), nothing that says anything about speed. No bf16: the interpreter multiplies bf16 bit
    patterns in ``tl.dot`` (triton issues 11584/11585)."""
    return [
        Case("smoke", 1, 1, 64, 16, "fp32", "none"),
        Case("smoke", 1, 1, 48, 16, "fp16", "causal"),
        Case("smoke", 2, 2, 16, 16, "fp32", "padding"),
    ]


def key_lengths(case: Case, generator: torch.Generator) -> Optional[List[int]]:
    """Unpadded key counts per batch element (between N/2 and N), or None without padding."""
    if not case.padded:
        return None
    return torch.randint(case.seqlen // 2, case.seqlen + 1, (case.batch,), generator=generator).tolist()


def key_padding_mask(case: Case, lengths: Optional[Sequence[int]], device: torch.device) -> Optional[torch.Tensor]:
    """Bool ``[B, N]``, True = padding (``nn.MultiheadAttention``'s convention), or None."""
    if lengths is None:
        return None
    positions = torch.arange(case.seqlen, device=device)
    return positions[None, :] >= torch.tensor(lengths, device=device)[:, None]


# --------------------------------------------------------------------------------------------
# counting
# --------------------------------------------------------------------------------------------

#: op name -> multiple of the forward FLOPs
OP_FLOP_FACTOR = {"fwd": 1.0, "fwdbwd": 3.5}


def attention_flops(case: Case, lengths: Optional[Sequence[int]], op: str) -> float:
    keys = sum(lengths) if lengths is not None else case.batch * case.seqlen
    flops = 4.0 * case.heads * case.seqlen * keys * case.head_dim
    if case.causal:
        flops /= 2
    return flops * OP_FLOP_FACTOR[op]


def projection_flops(case: Case) -> float:
    """The in-projection (q, k, v) and out-projection of a MultiheadAttention layer."""
    return 8.0 * case.batch * case.seqlen * case.embed_dim**2


def weights_bytes(case: Case, weights: str) -> int:
    """Bytes of the returned weights: "per_head" ``[B, H, N, N]``, "mean" ``[B, N, N]``, or "none"."""
    element = torch.finfo(case.torch_dtype).bits // 8
    per_head = {"none": 0, "mean": 1, "per_head": case.heads}[weights]
    return per_head * case.batch * case.seqlen * case.seqlen * element


def attention_bytes(case: Case, lengths: Optional[Sequence[int]], op: str, weights: str = "none") -> int:
    """Compulsory traffic: q, k, v (unpadded keys) read and out written once; backward adds reading
    q, k, v, out and dout and writing dq, dk and dv; plus the weights when returned."""
    element = torch.finfo(case.torch_dtype).bits // 8
    keys = sum(lengths) if lengths is not None else case.batch * case.seqlen
    rows = case.batch * case.seqlen * case.heads * case.head_dim * element
    key_rows = keys * case.heads * case.head_dim * element
    forward = 2 * rows + 2 * key_rows
    total = forward if op == "fwd" else forward + 4 * rows + 4 * key_rows
    return total + weights_bytes(case, weights)


def module_bytes(case: Case, weights: str) -> int:
    """A MultiheadAttention layer: x read, the four projection matrices read, out written, weights."""
    element = torch.finfo(case.torch_dtype).bits // 8
    tokens = case.batch * case.seqlen * case.embed_dim * element
    return 2 * tokens + 4 * case.embed_dim**2 * element + weights_bytes(case, weights)


# --------------------------------------------------------------------------------------------
# the machine
# --------------------------------------------------------------------------------------------

# Datasheet peaks (dense 16-bit tensor-core TFLOP/s, memory GB/s), matched by device name in order.
_DATASHEET: Tuple[Tuple[str, float, float], ...] = (
    ("H200", 989.0, 4800.0),
    ("H100 NVL", 835.0, 3900.0),
    ("H100 PCIe", 756.0, 2000.0),
    ("H100", 989.0, 3350.0),
    ("A100-SXM4-80GB", 312.0, 2039.0),
    ("A100 80GB PCIe", 312.0, 1935.0),
    ("A100", 312.0, 1555.0),
)

NOT_A_SPEED_CLAIM = (
    "CPU smoke run: the kernels ran through Triton's interpreter to prove the benchmark "
    "suite works end to end. These times are NOT a speed claim."
)


@dataclasses.dataclass
class BenchEnv:
    """The machine and software a run measured, and the timing policy."""

    cuda: bool
    device: torch.device
    device_name: str
    capability: Optional[str]
    versions: Dict[str, Optional[str]]
    date: str
    l2_bytes: int
    peak_tflops_16bit: Optional[float]
    peak_gbps: Optional[float]
    peak_gbps_source: Optional[str]
    copy_gbps: Optional[float]
    target_seconds: float
    min_rounds: int
    max_rounds: int
    warmup: int

    @property
    def speed_claim(self) -> bool:
        return self.cuda

    def info(self) -> Dict[str, object]:
        """What every result carries in ``extra_info`` about where it was measured."""
        out: Dict[str, object] = {
            "device": self.device_name,
            "capability": self.capability,
            **self.versions,
            "date": self.date,
            "peak_tflops_16bit": self.peak_tflops_16bit,
            "peak_gbps": self.peak_gbps,
            "peak_gbps_source": self.peak_gbps_source,
            "copy_gbps_measured": self.copy_gbps,
            "speed_claim": self.speed_claim,
            "timer": "cuda events" if self.cuda else "host perf_counter (CPU, Triton interpreter)",
        }
        if not self.speed_claim:
            out["note"] = NOT_A_SPEED_CLAIM
        return out


def versions() -> Dict[str, Optional[str]]:
    try:
        import triton

        triton_version: Optional[str] = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "attnlens": attnlens.__version__,
        "python": platform.python_version(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET"),
    }


def _peak_gbps(props) -> Tuple[Optional[float], Optional[str]]:
    clock_khz = getattr(props, "memory_clock_rate", 0) or 0
    bus_bits = getattr(props, "memory_bus_width", 0) or 0
    if clock_khz and bus_bits:  # double data rate: two transfers per clock
        return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9, "device properties (memory clock x bus width)"
    for name, _, gbps in _DATASHEET:
        if name in props.name:
            return gbps, "datasheet"
    return None, None


def measure_copy_gbps(device: torch.device, nbytes: int = 1 << 30, repeats: int = 10) -> float:
    """Device-to-device copy bandwidth, counting bytes read plus bytes written (median of ``repeats``)."""
    src = torch.rand(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for i in range(repeats + 3):
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        if i >= 3:
            times.append(start.elapsed_time(end) * 1e-3)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * nbytes / statistics.median(times) / 1e9


def detect_env(target_seconds: float = 0.25) -> BenchEnv:
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    if torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
        props = torch.cuda.get_device_properties(device)
        peak_tflops = next((tf for name, tf, _ in _DATASHEET if name in props.name), None)
        peak_gbps, source = _peak_gbps(props)
        return BenchEnv(
            True,
            device,
            props.name,
            f"sm_{props.major}{props.minor}",
            versions(),
            date,
            int(getattr(props, "L2_cache_size", 0) or 50 << 20),
            peak_tflops,
            peak_gbps,
            source,
            measure_copy_gbps(device),
            target_seconds,
            min_rounds=5,
            max_rounds=100,
            warmup=3,
        )
    return BenchEnv(
        False,
        torch.device("cpu"),
        f"CPU ({platform.processor() or platform.machine()})",
        None,
        versions(),
        date,
        0,
        None,
        None,
        None,
        None,
        target_seconds,
        min_rounds=1,
        max_rounds=1,
        warmup=1,
    )


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------


class RoundTimer:
    """Wraps a callable so that each call's device time (CUDA events) or host time is recorded."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.times: List[float] = []

    def wrap(self, fn: Callable[..., object]) -> Callable[..., None]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

            def target(*args):
                start.record()
                fn(*args)
                end.record()
                end.synchronize()
                self.times.append(start.elapsed_time(end) * 1e-3)
        else:

            def target(*args):
                t0 = time.perf_counter()
                fn(*args)
                self.times.append(time.perf_counter() - t0)

        return target


def input_sets(env: BenchEnv, set_bytes: int) -> int:
    """How many fresh input sets to rotate among: enough to overflow the L2 cache twice, 2 to 8,
    fewer when memory is short."""
    if not env.cuda:
        return 2
    wanted = max(2, min(8, math.ceil(2 * env.l2_bytes / max(set_bytes, 1))))
    free, _ = torch.cuda.mem_get_info(env.device)
    return max(1, min(wanted, int(0.25 * free // max(set_bytes, 1))))


def attention_input_sets(
    case: Case, env: BenchEnv, generator: torch.Generator, training: bool
) -> List[Dict[str, torch.Tensor]]:
    """Fresh random ``q``, ``k``, ``v`` ``[B, H, N, D]`` in the case's dtype (and ``grad``, the
    incoming gradient, when ``training``; q/k/v then require grad), as many sets as
    :func:`input_sets` allows."""
    shape = (case.batch, case.heads, case.seqlen, case.head_dim)
    names = ("q", "k", "v", "grad")[: 4 if training else 3]

    def draw() -> Dict[str, torch.Tensor]:
        tensors = {
            name: torch.randn(shape, device=env.device, dtype=case.torch_dtype, generator=generator) for name in names
        }
        for name in ("q", "k", "v"):
            tensors[name].requires_grad_(training)
        return tensors

    set_bytes = len(names) * torch.Size(shape).numel() * (torch.finfo(case.torch_dtype).bits // 8)
    return [draw() for _ in range(input_sets(env, set_bytes))]


def rotation(sets: Sequence[T]) -> Callable[[], T]:
    """A callable that returns the sets in turn, round and round (a benchmark's ``setup``)."""
    turn = itertools.count()
    return lambda: sets[next(turn) % len(sets)]


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest absolute difference over the largest magnitude of ``want``."""
    return ((got.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1e-30)).item()


def fits_in_memory(env: BenchEnv, nbytes: float) -> bool:
    """Whether an implementation that needs about ``nbytes`` of scratch can run now."""
    if not env.cuda:
        return True
    free, _ = torch.cuda.mem_get_info(env.device)
    return nbytes < 0.85 * free


def measure(
    benchmark, env: BenchEnv, run: Callable[[object], object], setup: Callable[[], object], info: Dict[str, object]
) -> float:
    """Time ``run(setup())`` with pytest-benchmark's pedantic mode; fill ``extra_info``.

    ``setup`` runs outside the timed region before every call (it picks the next input set and
    clears gradients). ``info`` holds "flops" and "bytes" (the counts above), optional
    "weights_bytes", and anything else to record. Returns the median time in seconds.
    """
    timer = RoundTimer(env.cuda)
    target = timer.wrap(run)

    def fresh():
        state = setup()
        if env.cuda:
            torch.cuda.synchronize(env.device)
        return (state,), {}

    for _ in range(env.warmup):
        target(*fresh()[0])
    estimate = statistics.median(timer.times[1:] or timer.times)
    rounds = max(env.min_rounds, min(env.max_rounds, math.ceil(env.target_seconds / max(estimate, 1e-9))))
    timer.times.clear()
    if env.cuda:
        torch.cuda.synchronize(env.device)
        torch.cuda.reset_peak_memory_stats(env.device)
        base_memory = torch.cuda.memory_allocated(env.device)
    benchmark.pedantic(target, setup=fresh, rounds=rounds, iterations=1, warmup_rounds=0)
    median = statistics.median(timer.times)

    extra = dict(env.info())
    extra.update(info)
    extra.update(median_s=median, min_s=min(timer.times), rounds=rounds)
    extra["tflops"] = info["flops"] / median / 1e12
    extra["gbps"] = info["bytes"] / median / 1e9
    extra["tflops_fraction_of_peak"] = (
        extra["tflops"] / env.peak_tflops_16bit
        if env.peak_tflops_16bit and info.get("dtype") in ("fp16", "bf16")
        else None
    )
    extra["gbps_fraction_of_peak"] = extra["gbps"] / env.peak_gbps if env.peak_gbps else None
    if info.get("weights_bytes"):
        floor = info["weights_bytes"] / (env.copy_gbps * 1e9) if env.copy_gbps else None
        extra["weights_write_floor_s"] = floor
        extra["time_over_weights_floor"] = median / floor if floor else None
    if env.cuda:
        peak = torch.cuda.max_memory_allocated(env.device)
        extra.update(peak_memory_bytes=peak, peak_memory_extra_bytes=peak - base_memory)
    else:
        extra.update(peak_memory_bytes=None, peak_memory_extra_bytes=None)
    benchmark.extra_info.update(extra)
    return median
