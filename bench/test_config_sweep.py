"""Launch-configuration sweep: each kernel under a list of candidate configurations, on the shapes
the speed targets are stated for. ``pytest bench/test_config_sweep.py --benchmark-only``.

This is the data a tuning step in ``bench/NOTES.md`` starts from: for every case and kernel it
times the machine's default configuration from ``kernels/config.py`` (``<kernel>-default``) and
each candidate in ``CANDIDATES`` (block_m x block_n x warps x stages), changing that kernel's configuration only
(``attnlens.kernels.config.override_config``), and ``bench/results/summarize.py`` lists the best
candidate against the default. What each benchmark times:

- ``forward``: the forward without weights;
- ``weights``: the forward returning per-head weights (the forward part is the same for every
  candidate, so the ranking is the weights kernel's);
- ``backward_dkdv``, ``backward_dq``: forward then backward (likewise).

Besides the commonest calls (no mask, causal) there is one training call, causal with key
padding and attention dropout (``causal-padding-dropout``): it runs the heavy-call rows
(``attnlens.kernels.config.is_heavy``), with candidates of its own that include the spill-free
tiles giving up wgmma on sm_90 (bench/NOTES.md, step 6), so a GPU run can say which costs less.

Every candidate is first checked against the default configuration on the same inputs (output,
weights, gradients; with dropout, from the same seed): a configuration that computes something
else fails the run rather than being timed. A candidate the compiler cannot fit (shared memory) is
skipped with the reason.

Without CUDA one tiny case and two candidates per kernel run through Triton's interpreter: proof
that the sweep works, not a speed claim, like the rest of the CPU smoke run.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Callable, Dict, List, Optional, Tuple

import pytest
import torch

import attnlens
from attnlens.kernels.config import KernelConfig, get_config, is_heavy, override_config
from attnlens.kernels.launch import tma_eligible
from attnlens.kernels.report import parse_config
from attnlens.kernels.tiles import MASK_NONE
from harness import (
    Case,
    attention_bytes,
    attention_flops,
    attention_input_sets,
    key_lengths,
    key_padding_mask,
    measure,
    rel_error,
    rotation,
    weights_bytes,
)

CUDA = torch.cuda.is_available()

#: kernel -> the op timed for it ("fwd", "weights" or "fwdbwd")
KERNEL_OPS = {"forward": "fwd", "weights": "weights", "backward_dkdv": "fwdbwd", "backward_dq": "fwdbwd"}

# 16-bit candidates for sm_80/sm_90: the FlashAttention-2 neighbourhood of the defaults. The
# weights kernel has no key loop without head averaging, so its stages barely matter there.
_GPU_CANDIDATES: Dict[str, List[Tuple[int, int, int, int]]] = {
    "forward": [
        (64, 64, 4, 2),
        (64, 64, 4, 3),
        (64, 128, 4, 3),
        (128, 32, 4, 3),
        (128, 64, 4, 2),
        (128, 64, 4, 3),
        (128, 64, 4, 4),
        (128, 64, 8, 3),
        (128, 128, 8, 2),
        (128, 128, 8, 3),
        (256, 64, 8, 3),
    ],
    "weights": [
        (64, 64, 4, 2),
        (64, 128, 4, 2),
        (128, 64, 4, 2),
        (128, 64, 8, 2),
        (128, 128, 4, 2),
        (128, 128, 8, 2),
        (256, 64, 8, 2),
        (64, 256, 8, 2),
    ],
    "backward_dkdv": [
        (32, 64, 4, 2),
        (32, 64, 8, 2),
        (32, 128, 4, 2),
        (32, 128, 8, 2),
        (64, 64, 4, 2),
        (64, 128, 4, 2),
        (64, 128, 8, 2),
        (64, 128, 8, 3),
        (128, 64, 8, 2),
        (128, 128, 8, 2),
    ],
    "backward_dq": [
        (64, 64, 4, 2),
        (64, 64, 4, 3),
        (64, 128, 8, 2),
        (128, 32, 4, 2),
        (128, 64, 8, 2),
        (128, 64, 8, 3),
        (128, 128, 8, 2),
    ],
}
# KernelConfig.tma: the forward reading Q, K and V through tensor descriptors, the weights kernel
# writing its tiles through one (sm_90 and newer only: other cards take the pointer path, so these
# then time the same kernel as their pointer twins; the weights need N_k a multiple of 8). The
# compile report shows the descriptors freeing registers: 139 instead of 166 at d=128 for
# 128x64x8x3, and 128x128 tiles spill-free at 187 (bench/NOTES.md, step 3).
_GPU_TMA_CANDIDATES: Dict[str, List[Tuple[int, int, int, int]]] = {
    "forward": [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3)],
    "weights": [(128, 64, 4, 2), (128, 64, 8, 2), (128, 128, 8, 2)],
}
# The heavy-call rows' neighbourhood, for the training case. On sm_90 at d=128 the dK/dV row
# (16x128x8x2) spills with dropout in combination; 16x64x8x2 spills less and keeps wgmma;
# 32x32x8x2 and 16x32x8x2 spill nowhere but run on HMMA (bench/NOTES.md, step 6).
_GPU_HEAVY_CANDIDATES: Dict[str, List[Tuple[int, int, int, int]]] = {
    "forward": [(128, 64, 8, 3), (128, 64, 4, 3), (128, 32, 8, 3), (64, 64, 4, 3)],
    "weights": [(128, 64, 8, 2), (128, 64, 4, 2), (64, 64, 4, 2)],
    "backward_dkdv": [(16, 128, 8, 2), (16, 64, 8, 2), (32, 32, 8, 2), (16, 32, 8, 2), (32, 128, 8, 2)],
    "backward_dq": [(128, 64, 8, 2), (128, 32, 8, 2), (64, 64, 4, 2)],
}
_CPU_CANDIDATES = {kernel: [(16, 16, 4, 1), (32, 16, 4, 1)] for kernel in KERNEL_OPS}
_CPU_HEAVY_CANDIDATES = {kernel: [(16, 16, 4, 1)] for kernel in KERNEL_OPS}
_CPU_TMA_CANDIDATES = {"forward": [(16, 16, 4, 1)]}
CANDIDATES = _GPU_CANDIDATES if CUDA else _CPU_CANDIDATES
HEAVY_CANDIDATES = _GPU_HEAVY_CANDIDATES if CUDA else _CPU_HEAVY_CANDIDATES
TMA_CANDIDATES = _GPU_TMA_CANDIDATES if CUDA else _CPU_TMA_CANDIDATES
TRAINING = "causal-padding-dropout"


def _specs(kernel: str, heavy: bool = False) -> List[str]:
    """``default``, then ``MxNxWxS`` per candidate, then ``MxNxWxS+tma`` per descriptor candidate
    (``heavy``: the heavy-call candidates, and no descriptor ones)."""
    if heavy:
        return ["default"] + ["x".join(map(str, c)) for c in HEAVY_CANDIDATES[kernel]]
    return (
        ["default"]
        + ["x".join(map(str, c)) for c in CANDIDATES[kernel]]
        + ["x".join(map(str, c)) + "+tma" for c in TMA_CANDIDATES.get(kernel, [])]
    )


def sweep_cases() -> List[Case]:
    """On a GPU: N = 4096 (the size the weights target names), head dim 64 and 128 with
    heads x head dim = 2048 and batch 4, fp16: no mask, causal, and the training call (causal,
    key padding, dropout 0.1). On a CPU: two tiny cases."""
    if not CUDA:
        return [Case("sweep", 1, 2, 40, 16, "fp16", "causal"), Case("sweep", 2, 2, 40, 16, "fp16", TRAINING)]
    return [
        Case("sweep", 4, 2048 // d, 4096, d, "fp16", mask) for d in (64, 128) for mask in ("none", "causal", TRAINING)
    ]


CASES = {c.id: c for c in sweep_cases()}


def _heavy(case: Case) -> bool:
    """Whether the case's calls take the heavy-call rows (the launchers' rule: no mask tensor here,
    so dropout decides)."""
    return is_heavy(MASK_NONE, case.dropout_p > 0)


#: (case id, "<kernel>-<spec>"): each case with its own candidates
PAIRS = [
    (case_id, f"{kernel}-{spec}")
    for case_id, case in CASES.items()
    for kernel in KERNEL_OPS
    for spec in _specs(kernel, _heavy(case))
]


def config_label(cfg: KernelConfig) -> str:
    """``128x64-w4-s3`` (``-tma`` appended for descriptor loads): block_m x block_n, warps,
    stages (the form summarize.py prints)."""
    return f"{cfg.block_m}x{cfg.block_n}-w{cfg.num_warps}-s{cfg.num_stages}" + ("-tma" if cfg.tma else "")


def _call(case: Case, op: str, pad: Optional[torch.Tensor]) -> Callable[[Dict[str, torch.Tensor]], List[torch.Tensor]]:
    """``tensors -> results`` for the op; the results are what the correctness check compares."""
    kwargs = dict(is_causal=case.causal, key_padding_mask=pad, dropout_p=case.dropout_p)

    def call(t: Dict[str, torch.Tensor]) -> List[torch.Tensor]:
        if op == "fwdbwd":
            for name in ("q", "k", "v"):
                t[name].grad = None
            out = attnlens.scaled_dot_product_attention(t["q"], t["k"], t["v"], **kwargs)
            out.backward(t["grad"])
            return [out.detach(), t["q"].grad, t["k"].grad, t["v"].grad]
        with torch.no_grad():
            if op == "weights":
                return list(
                    attnlens.scaled_dot_product_attention(t["q"], t["k"], t["v"], return_weights=True, **kwargs)
                )
            return [attnlens.scaled_dot_product_attention(t["q"], t["k"], t["v"], **kwargs)]

    return call


def _seeded(
    call: Callable[[Dict[str, torch.Tensor]], List[torch.Tensor]], tensors: Dict[str, torch.Tensor]
) -> List[torch.Tensor]:
    """``call(tensors)`` from a fixed state of torch's generator: with dropout, the same pattern
    for the default and the candidate, so that their results can be compared."""
    torch.manual_seed(20261201)
    return call(tensors)


def _max_rel_error(got: List[torch.Tensor], want: List[torch.Tensor]) -> float:
    return max(rel_error(g, w) for g, w in zip(got, want))


def _tma_used(kernel: str, cfg: KernelConfig, t: Dict[str, torch.Tensor], got: List[torch.Tensor]) -> bool:
    """Whether the candidate's tensor descriptors are really used here: the launchers' own rule
    (``tma_eligible``) on the tensors they apply it to (the inputs; the returned weights)."""
    if not cfg.tma:
        return False
    if kernel == "forward":
        return tma_eligible(t["q"], t["k"], t["v"])
    return kernel == "weights" and tma_eligible(got[1])


def _does_not_fit(exc: BaseException) -> bool:
    """Triton's OutOfResources, bare or as the cause of attnlens's RuntimeError about it."""
    from attnlens.kernels.launch import OutOfResources

    return isinstance(exc, OutOfResources) or isinstance(exc.__cause__, OutOfResources)


@pytest.mark.parametrize("case_id,candidate", PAIRS)
def test_config(benchmark, bench_env, case_id: str, candidate: str):
    case = CASES[case_id]
    kernel, spec = candidate.rsplit("-", 1)
    op = KERNEL_OPS[kernel]
    env = bench_env
    dtype = case.torch_dtype
    default = get_config(kernel, env.device, dtype, case.head_dim, interpreted=not env.cuda, heavy=_heavy(case))
    cfg = default if spec == "default" else parse_config(spec)
    if spec != "default" and cfg == default:
        pytest.skip(
            f"{config_label(cfg)} is this machine's default {kernel} configuration, timed as '{kernel}-default'"
        )
    benchmark.group = f"sweep {kernel} {case.id}"

    generator = torch.Generator(device=env.device).manual_seed(zlib.crc32(f"{case.id} {candidate}".encode()))
    sets = attention_input_sets(case, env, generator, training=op == "fwdbwd")
    lengths = key_lengths(case, torch.Generator().manual_seed(zlib.crc32(case.id.encode())))
    call = _call(case, op, key_padding_mask(case, lengths, env.device))
    want = _seeded(call, sets[0])  # the default configuration
    with override_config(kernel, **dataclasses.asdict(cfg)):
        try:
            got = _seeded(call, sets[0])
        except Exception as exc:
            if not _does_not_fit(exc):
                raise
            pytest.skip(f"{kernel} {config_label(cfg)} does not fit: {str(exc).splitlines()[0]}")
        error = _max_rel_error(got, want)
        # Same maths, another summation order: fp16 results agree to a few units in the last place.
        assert error < 2e-2, f"{kernel} {config_label(cfg)} disagrees with {config_label(default)}: {error:.3g}"
        tma_used = _tma_used(kernel, cfg, sets[0], got)
        del got, want
        weights = "per_head" if op == "weights" else "none"
        bench_op = "fwd" if op == "weights" else op
        info: Dict[str, Optional[object]] = {
            "flops": attention_flops(case, lengths, bench_op),
            "bytes": attention_bytes(case, lengths, bench_op, weights),
            "weights": weights,
            "weights_bytes": weights_bytes(case, weights),
            "input_sets": len(sets),
            "impl": "attnlens-sweep",
            "op": op,
            "case": case.id,
            "kernel": kernel,
            "config": config_label(cfg),
            "default_config": config_label(default),
            "is_default": spec == "default",
            "heavy": _heavy(case),
            "key_lengths": lengths,
            "max_rel_error_vs_default": error,
            "attnlens_path": attnlens.selected_backend(env.device),
            "tma_used": tma_used,
            **case.params(),
        }
        measure(benchmark, env, call, rotation(sets), info)
