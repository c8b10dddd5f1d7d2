"""Shared test helpers: inputs, poisoned memory and the flash-attn tolerance rule."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

import attnlens
from attnlens._inputs import prepare
from attnlens.reference import attention as reference_attention

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def describe_worst(actual: torch.Tensor, expected: torch.Tensor) -> str:
    """Where two tensors differ most: index, both values and the error."""
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    diff = (a - e).abs()
    both_inf = torch.isinf(a) & torch.isinf(e) & (torch.sign(a) == torch.sign(e))
    diff = torch.where(both_inf, torch.zeros_like(diff), diff)
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, math.inf), diff)
    if diff.numel() == 0:
        return "empty"
    flat = int(diff.argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape))
    return (
        f"worst at {index}: got {a[index].item():.8g}, expected {e[index].item():.8g}, error {diff[index].item():.3g}"
    )


def max_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Max absolute difference; equal infinities count as 0, NaN as inf."""
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    if a.shape != e.shape:
        raise AssertionError(f"shape {tuple(a.shape)} != expected {tuple(e.shape)}")
    if a.numel() == 0:
        return 0.0
    same_inf = torch.isinf(a) & torch.isinf(e) & (torch.sign(a) == torch.sign(e))
    diff = torch.where(same_inf, torch.zeros_like(a), (a - e).abs())
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, math.inf), diff)
    return float(diff.max())


def assert_rule(
    name: str,
    actual: torch.Tensor,
    exact: torch.Tensor,
    lowp: torch.Tensor,
    factor: float = 2.0,
    dtype: Optional[torch.dtype] = None,
) -> None:
    """flash-attn's rule: |actual - exact| <= factor * |lowp - exact| + floor.

    ``exact`` is computed in float64, ``lowp`` with the same maths in the input dtype. The floor is
    twice the error of merely rounding ``exact`` to the input dtype,
    plus half an ulp at the result's magnitude (1e-12 relative for fp64), so a kernel that is as
    exact as its dtype allows always passes.
    """
    dtype = dtype or actual.dtype
    exact64 = exact.detach().to(torch.float64).cpu()
    finite = exact64[torch.isfinite(exact64)]
    magnitude = float(finite.abs().max()) if finite.numel() else 0.0
    rounding = max_error(exact64.to(dtype), exact64) if exact64.numel() else 0.0
    half_ulp = 0.5 * torch.finfo(dtype).eps * magnitude
    floor = 2 * rounding + max(half_ulp, 1e-12 * max(1.0, magnitude))
    bound = factor * max_error(lowp, exact64) + floor
    error = max_error(actual, exact64)
    assert error <= bound, (
        f"{name}: max error {error:.3g} exceeds {factor}x the {dtype} reference's "
        f"error + floor = {bound:.3g}; {describe_worst(actual, exact64)}"
    )


def assert_equal(name: str, actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert torch.equal(actual, expected), f"{name} differs: {describe_worst(actual, expected)}"


def make_qkv(
    batch: int,
    heads_q: int,
    seqlen_q: int,
    seqlen_k: int,
    head_dim: int,
    dtype: torch.dtype,
    heads_kv: Optional[int] = None,
    head_dim_v: Optional[int] = None,
    requires_grad: bool = False,
):
    heads_kv = heads_kv or heads_q
    head_dim_v = head_dim_v or head_dim
    q = torch.randn(batch, heads_q, seqlen_q, head_dim, dtype=dtype, device=DEVICE)
    k = torch.randn(batch, heads_kv, seqlen_k, head_dim, dtype=dtype, device=DEVICE)
    v = torch.randn(batch, heads_kv, seqlen_k, head_dim_v, dtype=dtype, device=DEVICE)
    if requires_grad:
        for t in (q, k, v):
            t.requires_grad_(True)
    return q, k, v


def poisoned_like(t: torch.Tensor, slack: Sequence[int]) -> torch.Tensor:
    """A view equal to ``t`` inside a larger NaN-filled (for bool: True-filled) buffer, with
    ``slack[i]`` extra elements after each dimension i, so reading past any bound is seen."""
    big = tuple(s + extra for s, extra in zip(t.shape, slack))
    fill = True if t.dtype == torch.bool else float("nan")
    buf = torch.full(big, fill, dtype=t.dtype, device=t.device)
    view = buf[tuple(slice(0, s) for s in t.shape)]
    view.copy_(t)
    return view


def reference(q, k, v, dtype=None, **kwargs):
    """The reference's (out, per-head weights, lse natural) on the same arguments, cast to
    ``dtype`` (float64 for the exact oracle; the input dtype for the 'same maths' one)."""
    dtype = dtype or q.dtype

    def cast(t):
        if t is None or not torch.is_tensor(t) or not t.is_floating_point():
            return t
        return t.detach().to(dtype)

    kwargs = {key: cast(val) for key, val in kwargs.items()}
    weights_mode = kwargs.pop("return_weights", False)
    del weights_mode
    p = prepare(cast(q), cast(k), cast(v), **kwargs)
    return reference_attention(p)


def check_forward(q, k, v, **kwargs) -> None:
    """The output, the per-head weights and the head-averaged weights of one call against the
    float64 reference, by flash-attn's rule."""
    out, weights = attnlens.scaled_dot_product_attention(q, k, v, return_weights=True, **kwargs)
    _, mean = attnlens.scaled_dot_product_attention(q, k, v, return_weights="mean", **kwargs)
    exact = reference(q, k, v, torch.float64, **kwargs)
    lowp = reference(q, k, v, q.dtype, **kwargs)
    assert_rule("out", out, exact[0], lowp[0])
    assert_rule("weights", weights, exact[1], lowp[1])
    assert_rule("mean weights", mean, exact[1].mean(1), lowp[1].mean(1))


# Sequence lengths that break naive kernels (block edges of 16/32/64/128, primes), and unequal
# query/key lengths both ways round; the kernel and CPU-path tests share them.
ODD_SEQLENS = [1, 2, 3, 17, 31, 97, 113, 127, 128, 129, 200, 257]
UNEQUAL_LENGTHS = [(113, 203), (203, 113), (1, 147), (147, 1), (3, 799), (799, 3), (127, 512), (512, 127)]


def mixed_padding(batch, seqlen_k):
    """key_padding_mask with right padding in batch 0, left padding in batch 1 and every third key
    padded in batch 2 (True = padding)."""
    pad = torch.zeros(batch, seqlen_k, dtype=torch.bool, device=DEVICE)
    pad[0, seqlen_k - seqlen_k // 3 :] = True  # right padding
    if batch > 1:
        pad[1, : seqlen_k // 4] = True  # left padding
    if batch > 2:
        pad[2, torch.arange(0, seqlen_k, 3)] = True  # scattered
    return pad


def random_bool_mask(shape, empty_rows=()):
    """Random bool attn_mask (True = attend, 70 %) whose ``empty_rows`` attend to nothing."""
    mask = torch.rand(shape, device=DEVICE) > 0.3
    mask[..., list(empty_rows), :] = False
    return mask


def random_float_mask(shape, dtype):
    """Random additive mask with a column of -inf and, for 2-D masks, one row of -inf."""
    mask = torch.randn(shape, dtype=dtype, device=DEVICE)
    mask[..., 2] = float("-inf")
    if mask.dim() == 2:
        mask[4] = float("-inf")
    return mask


def odd_gradient_cases(padding):
    """Shapes and arguments that break naive backward passes, for the gradient tests of each path:
    name -> ((B, Hq, Hkv, Nq, Nk, D, Dv), keyword arguments for a dtype, weights in the loss).
    ``padding(batch, seqlen_k)`` makes the key padding masks."""
    return {
        "113x203_d40_causal_bottom_right_padding": (
            (2, 2, 2, 113, 203, 40, 40),
            lambda dt: dict(is_causal=True, causal_alignment="bottom_right", key_padding_mask=padding(2, 203)),
            False,
        ),
        "203x113_d59_causal_top_left_bool_mask": (
            (1, 2, 2, 203, 113, 59, 59),
            lambda dt: dict(is_causal=True, attn_mask=random_bool_mask((203, 113))),
            False,
        ),
        "1x147_d111_float_mask_padding": (
            (2, 2, 2, 1, 147, 111, 111),
            lambda dt: dict(attn_mask=random_float_mask((2, 1, 1, 147), dt), key_padding_mask=padding(2, 147)),
            False,
        ),
        "gqa_8_to_1_d64_causal": ((1, 8, 1, 33, 47, 64, 64), lambda dt: dict(enable_gqa=True, is_causal=True), False),
        "weights_97x129_d40_causal": (
            (1, 2, 2, 97, 129, 40, 40),
            lambda dt: dict(return_weights=True, is_causal=True),
            True,
        ),
        "mean_weights_gqa_float_mask": (
            (1, 4, 2, 65, 90, 24, 24),
            lambda dt: dict(return_weights="mean", enable_gqa=True, attn_mask=random_float_mask((65, 90), dt)),
            True,
        ),
    }


def sdpa(*args, **kwargs):
    return attnlens.scaled_dot_product_attention(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------


def outputs_and_grads(result, grad_out, grad_weights):
    """The (outputs, their incoming gradients) of a call: ``out`` alone unless a weights gradient is given."""
    if isinstance(result, tuple):
        out, weights = result
    else:
        out, weights = result, None
    if grad_weights is None:
        return (out,), (grad_out,)
    return (out, weights), (grad_out, grad_weights)


def kernel_grads(q, k, v, grad_out, grad_weights=None, **kwargs):
    """``(dq, dk, dv)`` of ``attnlens.scaled_dot_product_attention`` on the kernel path, for the loss
    ``sum(out * grad_out) + sum(weights * grad_weights)`` (the weights term when ``grad_weights`` is
    given; pass ``return_weights`` then). q, k and v keep their strides."""
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    with attnlens.use_backend("kernels"):
        result = attnlens.scaled_dot_product_attention(q, k, v, **kwargs)
    outputs, grads = outputs_and_grads(result, grad_out, grad_weights)
    return torch.autograd.grad(outputs, (q, k, v), grads)


def reference_grads(q, k, v, grad_out, grad_weights=None, dtype=None, dropout_mask=None, **kwargs):
    """``(dq, dk, dv)`` of the reference for the same loss as ``kernel_grads``, computed in
    ``dtype`` (float64 for the exact oracle, the input dtype for the 'same maths' one)."""
    dtype = dtype or q.dtype

    def cast(t):
        if t is None or not torch.is_tensor(t) or not t.is_floating_point():
            return t
        return t.detach().to(dtype)

    leaves = tuple(cast(t).requires_grad_(True) for t in (q, k, v))
    kwargs = {key: cast(val) for key, val in kwargs.items()}
    p = prepare(*leaves, **kwargs)
    out, weights, _ = reference_attention(p, dropout_mask)
    if p.weights_mode == 2:
        weights = weights.mean(1)
    result = (out, weights) if p.weights_mode else out
    if p.unbatched:
        result = tuple(t.squeeze(0) for t in result) if p.weights_mode else out.squeeze(0)
    outputs, grads = outputs_and_grads(result, cast(grad_out), cast(grad_weights))
    return torch.autograd.grad(outputs, leaves, grads)


def check_grads(q, k, v, grad_out=None, grad_weights=None, factor: float = 3.0, **kwargs):
    """Kernel gradients against a float64 reference with flash-attn's rule (``factor`` x the error
    of the reference computed in the input dtype, plus the floor). Random incoming gradients
    unless given; ``grad_weights=True`` draws one for the returned weights. Returns the kernel's
    ``(dq, dk, dv)``."""
    batch, heads_q, seqlen_q, seqlen_k = prepare(q, k, v, **kwargs).shape
    if grad_out is None:
        grad_out = torch.randn(batch, heads_q, seqlen_q, v.shape[-1], dtype=q.dtype, device=q.device)
        if q.dim() == 3:
            grad_out = grad_out[0]
    if grad_weights is True:
        mean = kwargs.get("return_weights") == "mean"
        shape = (batch, seqlen_q, seqlen_k) if mean else (batch, heads_q, seqlen_q, seqlen_k)
        grad_weights = torch.randn(shape, dtype=q.dtype, device=q.device)
        if q.dim() == 3:
            grad_weights = grad_weights[0]
    grads = kernel_grads(q, k, v, grad_out, grad_weights, **kwargs)
    exact = reference_grads(q, k, v, grad_out, grad_weights, torch.float64, **kwargs)
    lowp = reference_grads(q, k, v, grad_out, grad_weights, q.dtype, **kwargs)
    for name, got, ex, lo in zip(("dq", "dk", "dv"), grads, exact, lowp):
        assert torch.isfinite(got).all(), f"{name} is not finite"
        assert_rule(name, got, ex, lo, factor=factor)
    return grads
