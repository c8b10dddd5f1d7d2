"""attnlens against torch, side by side in one run: ``pytest bench --benchmark-only``.

Per case (shape, dtype, mask) it times

- attnlens: forward; forward returning per-head weights; forward returning head-averaged weights;
  forward+backward;
- torch SDPA under each backend (math, flash, efficient, cuDNN), forward and forward+backward;
  a backend that cannot run the case (no such backend in this torch, unsupported dtype or mask,
  no GPU) is skipped with the reason;
- ``attnlens.reference`` (the eager path that materialises scores and weights), forward;
- at the level of a layer, with the q/k/v and output projections: ``torch.nn.MultiheadAttention``
  with ``need_weights=False`` and ``True`` (head-averaged, torch's default), and the same layer
  (the same parameters) computed through attnlens without and with ``return_weights="mean"``.

Each benchmark's ``group`` is its op and case, so pytest-benchmark's table lists the
implementations of one case together. On a machine without CUDA only the smoke cases run, through
Triton's interpreter, and every result says it is not a speed claim (see ``harness``).
"""

from __future__ import annotations

import contextlib
import warnings
import zlib
from typing import Callable, Dict, List, Optional, Tuple

import pytest
import torch
import torch.nn.functional as F

import attnlens
from harness import (
    Case,
    attention_bytes,
    attention_flops,
    attention_input_sets,
    fits_in_memory,
    grid_cases,
    input_sets,
    key_lengths,
    key_padding_mask,
    measure,
    module_bytes,
    projection_flops,
    rel_error,
    rotation,
    smoke_cases,
    tour_cases,
    weights_bytes,
)

CASES: Dict[str, Case] = {
    c.id: c for c in ((grid_cases() + tour_cases()) if torch.cuda.is_available() else smoke_cases())
}

SDPA_BACKENDS = {
    "math": "MATH",
    "flash": "FLASH_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
}

#: (implementation, op); op "fwd" is the forward alone, "fwdbwd" forward then backward
BENCHMARKS: List[Tuple[str, str]] = (
    [("attnlens", "fwd"), ("attnlens-weights", "fwd"), ("attnlens-weights-mean", "fwd"), ("attnlens", "fwdbwd")]
    + [(f"sdpa-{name}", op) for op in ("fwd", "fwdbwd") for name in SDPA_BACKENDS]
    + [("reference-weights", "fwd")]
    + [("mha-torch", "fwd"), ("mha-torch-weights", "fwd"), ("mha-attnlens", "fwd"), ("mha-attnlens-weights", "fwd")]
)

#: implementation -> the weights it returns
WEIGHTS = {
    "attnlens-weights": "per_head",
    "attnlens-weights-mean": "mean",
    "reference-weights": "per_head",
    "mha-torch-weights": "mean",
    "mha-attnlens-weights": "mean",
}


def _sdpa_backend(name: str):
    """``(sdpa_kernel, SDPBackend member)`` or a reason this torch lacks it (``sdpa_kernel`` is
    torch >= 2.3; ``CUDNN_ATTENTION`` is not in every build)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        return None, f"torch {torch.__version__} has no torch.nn.attention.sdpa_kernel"
    member = getattr(SDPBackend, SDPA_BACKENDS[name], None)
    if member is None:
        return None, f"torch {torch.__version__} has no SDPBackend.{SDPA_BACKENDS[name]}"
    return (sdpa_kernel, member), None


# --------------------------------------------------------------------------------------------
# attention on [B, H, N, D]
# --------------------------------------------------------------------------------------------


def _attention_call(case: Case, impl: str, pad: Optional[torch.Tensor]) -> Callable:
    """``(q, k, v) -> out`` for one implementation."""
    if impl.startswith("attnlens"):
        mode = {"attnlens": False, "attnlens-weights": True, "attnlens-weights-mean": "mean"}[impl]

        def call(q, k, v):
            result = attnlens.scaled_dot_product_attention(
                q, k, v, is_causal=case.causal, key_padding_mask=pad, return_weights=mode
            )
            return result[0] if mode else result

        return call
    if impl == "reference-weights":
        return lambda q, k, v: attnlens.reference.scaled_dot_product_attention(
            q, k, v, is_causal=case.causal, key_padding_mask=pad, return_weights=True
        )[0]
    # torch SDPA: a bool mask means True = attend; broadcast [B, 1, 1, N], never expanded
    mask = None if pad is None else (~pad)[:, None, None, :]
    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=case.causal)


def _scratch_bytes(case: Case, impl: str, op: str) -> float:
    """Rough memory an implementation needs beyond its inputs, to skip what cannot fit."""
    scores = case.batch * case.heads * case.seqlen**2
    element = torch.finfo(case.torch_dtype).bits // 8
    if impl == "sdpa-math":  # fp32 scores, softmax and (training) what backward keeps
        return scores * 4 * (3 if op == "fwd" else 6)
    if impl == "reference-weights":
        return scores * element * 5
    if impl == "mha-torch-weights":
        return scores * element * 4
    return 1.1 * weights_bytes(case, WEIGHTS.get(impl, "none"))


def _attention_bench(case: Case, impl: str, op: str, env, generator: torch.Generator, lengths: Optional[List[int]]):
    """``(run, setup, info)`` for an attention-level benchmark."""
    device = env.device
    pad = key_padding_mask(case, lengths, device)
    training = op == "fwdbwd"
    sets = attention_input_sets(case, env, generator, training)
    call = _attention_call(case, impl, pad)
    next_set = rotation(sets)

    def setup() -> Dict[str, torch.Tensor]:
        tensors = next_set()
        for name in ("q", "k", "v"):
            tensors[name].grad = None
        return tensors

    if training:

        def run(t):
            call(t["q"], t["k"], t["v"]).backward(t["grad"])
    else:

        def run(t):
            with torch.no_grad():
                call(t["q"], t["k"], t["v"])

    weights = WEIGHTS.get(impl, "none")
    info = {
        "flops": attention_flops(case, lengths, op),
        "bytes": attention_bytes(case, lengths, op, weights),
        "weights": weights,
        "weights_bytes": weights_bytes(case, weights),
        "input_sets": len(sets),
    }
    if impl.startswith("attnlens"):
        info["attnlens_path"] = attnlens.selected_backend(device)
    return run, setup, info


# --------------------------------------------------------------------------------------------
# a MultiheadAttention layer on [B, N, E]
# --------------------------------------------------------------------------------------------


def _attnlens_layer(mha: torch.nn.MultiheadAttention, case: Case, pad: Optional[torch.Tensor], weights):
    """``x -> (out, weights)``: ``mha``'s computation (same parameters) with attnlens inside."""
    heads, head_dim = case.heads, case.head_dim

    def layer(x):
        batch, seqlen, embed = x.shape
        qkv = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).view(batch, seqlen, 3, heads, head_dim)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # [B, H, N, D] views, read in place
        result = attnlens.scaled_dot_product_attention(
            q, k, v, is_causal=case.causal, key_padding_mask=pad, return_weights=weights
        )
        out, w = result if weights else (result, None)
        # attnlens lays out like q, [B, N, H, D] in memory: this reshape is free
        return F.linear(out.transpose(1, 2).reshape(batch, seqlen, embed), mha.out_proj.weight, mha.out_proj.bias), w

    return layer


def _module_bench(case: Case, impl: str, env, generator: torch.Generator, lengths: Optional[List[int]]):
    device, dtype = env.device, case.torch_dtype
    pad = key_padding_mask(case, lengths, device)
    mha = torch.nn.MultiheadAttention(case.embed_dim, case.heads, batch_first=True, device=device, dtype=dtype)
    mha.eval()
    with torch.no_grad():
        for bias in (mha.in_proj_bias, mha.out_proj.bias):
            bias.copy_(0.02 * torch.randn(bias.shape, device=device, dtype=dtype, generator=generator))
    causal_mask = (
        torch.ones(case.seqlen, case.seqlen, dtype=torch.bool, device=device).triu(1) if case.causal else None
    )  # True = not allowed, as nn.MultiheadAttention
    weights = WEIGHTS.get(impl, "none")

    def torch_layer(x, need_weights):
        return mha(
            x, x, x, key_padding_mask=pad, need_weights=need_weights, attn_mask=causal_mask, is_causal=case.causal
        )

    if impl.startswith("mha-torch"):

        def call(x):
            return torch_layer(x, weights != "none")
    else:
        call = _attnlens_layer(mha, case, pad, "mean" if weights != "none" else False)

    shape = (case.batch, case.seqlen, case.embed_dim)
    set_bytes = torch.Size(shape).numel() * (torch.finfo(dtype).bits // 8)
    sets = [
        torch.randn(shape, device=device, dtype=dtype, generator=generator) for _ in range(input_sets(env, set_bytes))
    ]

    if impl.startswith("mha-attnlens") and case.family != "grid":
        # not a test, but a benchmark of the wrong computation is worse than none: the layer built
        # around attnlens must be nn.MultiheadAttention's layer
        with torch.no_grad():
            want_out, want_w = torch_layer(sets[0], True)
            got_out, got_w = _attnlens_layer(mha, case, pad, "mean")(sets[0])
        tolerance = {"fp32": 1e-3, "fp16": 1e-2, "bf16": 3e-2}[case.dtype]
        assert rel_error(got_out, want_out) < tolerance, (rel_error(got_out, want_out), case.id)
        assert rel_error(got_w, want_w) < tolerance, (rel_error(got_w, want_w), case.id)

    setup = rotation(sets)

    def run(x):
        with torch.no_grad():
            call(x)

    info = {
        "flops": attention_flops(case, lengths, "fwd") + projection_flops(case),
        "bytes": module_bytes(case, weights),
        "weights": weights,
        "weights_bytes": weights_bytes(case, weights),
        "input_sets": len(sets),
    }
    if impl.startswith("mha-attnlens"):
        info["attnlens_path"] = attnlens.selected_backend(device)
    return run, setup, info


# --------------------------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------------------------


def _skip_if_unrunnable(run: Callable, setup: Callable, what: str) -> None:
    """One call as a probe: a torch SDPA backend that cannot take the case raises RuntimeError
    (unsupported dtype, mask or device); skip with torch's reason."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            run(setup())
        except torch.cuda.OutOfMemoryError:
            raise
        except RuntimeError as exc:
            first_line = lambda text: (str(text).strip().splitlines() or [""])[0]
            reasons = "; ".join(first_line(w.message) for w in caught[:3])
            pytest.skip(f"{what} cannot run this case: {first_line(exc)} {reasons}".strip())


@pytest.mark.parametrize("bench", [f"{impl}-{op}" for impl, op in BENCHMARKS])
@pytest.mark.parametrize("case_id", list(CASES))
def test_attention(benchmark, bench_env, case_id: str, bench: str):
    case = CASES[case_id]
    impl, op = bench.rsplit("-", 1)
    env = bench_env
    benchmark.group = f"{op} {case.id}"
    if env.cuda and not fits_in_memory(env, _scratch_bytes(case, impl, op)):
        free = torch.cuda.mem_get_info(env.device)[0]
        pytest.skip(
            f"{impl} needs about {_scratch_bytes(case, impl, op) / 2**30:.1f} GiB beyond its inputs; "
            f"{free / 2**30:.1f} GiB free"
        )
    context = contextlib.ExitStack()
    if impl.startswith("sdpa-"):
        backend, missing = _sdpa_backend(impl[len("sdpa-") :])
        if missing:
            pytest.skip(missing)
        sdpa_kernel, member = backend
        context.enter_context(sdpa_kernel(member))
    generator = torch.Generator(device=env.device).manual_seed(zlib.crc32(f"{case.id} {bench}".encode()))
    lengths = key_lengths(case, torch.Generator().manual_seed(zlib.crc32(case.id.encode())))
    with context:
        try:
            if impl.startswith("mha-"):
                run, setup, info = _module_bench(case, impl, env, generator, lengths)
            else:
                run, setup, info = _attention_bench(case, impl, op, env, generator, lengths)
            if impl.startswith("sdpa-"):
                _skip_if_unrunnable(run, setup, f"torch SDPA backend {impl[len('sdpa-') :]}")
            info.update(impl=impl, op=op, case=case.id, key_lengths=lengths, **case.params())
            measure(benchmark, env, run, setup, info)
        except torch.cuda.OutOfMemoryError as exc:
            pytest.skip(f"out of device memory: {str(exc).splitlines()[0]}")
