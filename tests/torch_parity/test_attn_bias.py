"""torch's CausalBias tests (test/test_transformers.py, TestAttnBias), ported to attnlens.

``torch.nn.attention.bias.causal_upper_left(Nq, Nk)`` / ``causal_lower_right(Nq, Nk)`` are tensor
subclasses that stand for a causal mask; their storage is uninitialised. attnlens reads them as
``is_causal=True`` with top-left / bottom-right alignment and never touches their memory.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.bias import CausalBias, CausalVariant, causal_lower_right, causal_upper_left

import attnlens

from .common import PATHS, assert_close, sdpa

FORWARD_TOL = dict(atol=1e-3, rtol=1e-3)  # torch's, float16
GRAD_TOL = dict(atol=5e-3, rtol=5e-3)

# torch's (batch, heads, Nq, Nk, head dim) are (16, 16, 128, 128, 16), (16, 16, 128, 256, 32),
# (16, 16, 256, 128, 32) and (1, 1, 23, 56, 15): the same lengths with 2 x 2 heads on the
# plain-PyTorch path, shorter ones with 1 or 2 heads on the interpreted kernels.
SHAPES = {
    "reference": [(2, 2, 128, 128, 16), (2, 2, 128, 256, 32), (2, 2, 256, 128, 32), (1, 1, 23, 56, 15)],
    "kernels": [(1, 1, 33, 33, 16), (1, 2, 33, 70, 32), (1, 2, 70, 33, 32), (1, 1, 23, 56, 15)],
}


def _bias(variant: CausalVariant, seq_q: int, seq_kv: int) -> CausalBias:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that lower-right with Nq > Nk "produces NaNs"
        if variant == CausalVariant.UPPER_LEFT:
            return causal_upper_left(seq_q, seq_kv)
        return causal_lower_right(seq_q, seq_kv)


def _params():
    for path in PATHS:
        for variant in (CausalVariant.UPPER_LEFT, CausalVariant.LOWER_RIGHT):
            for shape in SHAPES[path]:
                yield pytest.param(path, variant, shape, id=f"{path}-{variant.name}-{'x'.join(map(str, shape))}")


@pytest.mark.parametrize("path,variant,shape", list(_params()))
def test_causal_variants(path, variant, shape):
    """TestAttnBias.test_causal_variants: float16 q/k/v from torch.rand, attnlens with the bias
    against torch's SDPA with the materialised bool mask, outputs and gradients, torch's
    tolerances. torch skips lower-right with Nq > Nk ("will produce NaNs"); attnlens gives those
    fully masked rows output 0 and gradient 0, and so does torch's CPU backend with the
    materialised mask, so they are compared too."""
    batch, heads, seq_q, seq_kv, head_dim = shape
    query = torch.rand(batch, heads, seq_q, head_dim, dtype=torch.float16, requires_grad=True)
    key = torch.rand(batch, heads, seq_kv, head_dim, dtype=torch.float16, requires_grad=True)
    value = torch.rand(batch, heads, seq_kv, head_dim, dtype=torch.float16, requires_grad=True)
    q2, k2, v2 = (t.detach().clone().requires_grad_(True) for t in (query, key, value))
    bias = _bias(variant, seq_q, seq_kv)

    expected = F.scaled_dot_product_attention(query, key, value, attn_mask=bias._materialize(query.device))
    actual = sdpa(path, q2, k2, v2, attn_mask=bias, dropout_p=0.0, is_causal=False, scale=None)
    grad = torch.randn_like(expected)
    expected.backward(grad)
    actual.backward(grad)
    assert_close(actual, expected, "output", **FORWARD_TOL)
    for name, a, b in (("dq", q2, query), ("dk", k2, key), ("dv", v2, value)):
        assert_close(a.grad, b.grad, name, **GRAD_TOL)


def test_causal_variants_compile():
    """TestAttnBias.test_causal_variants_compile: the same through ``torch.compile`` (aot_eager),
    each variant one graph (fullgraph, one frame), on the kernel path (the bias is resolved while
    tracing, so the graph holds is_causal and its alignment, never the bias's memory)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    batch, heads, seq_q, seq_kv, head_dim = 1, 1, 23, 56, 15
    for variant in (CausalVariant.UPPER_LEFT, CausalVariant.LOWER_RIGHT):
        torch._dynamo.reset()
        counter = CompileCounterWithBackend("aot_eager")
        compiled = torch.compile(attnlens.scaled_dot_product_attention, backend=counter, fullgraph=True)
        query = torch.rand(batch, heads, seq_q, head_dim, dtype=torch.float16, requires_grad=True)
        key = torch.rand(batch, heads, seq_kv, head_dim, dtype=torch.float16, requires_grad=True)
        value = torch.rand(batch, heads, seq_kv, head_dim, dtype=torch.float16, requires_grad=True)
        bias = _bias(variant, seq_q, seq_kv)
        expected = F.scaled_dot_product_attention(query, key, value, attn_mask=bias._materialize())
        q2, k2, v2 = (t.detach().clone().requires_grad_(True) for t in (query, key, value))
        with attnlens.use_backend("kernels"):
            actual = compiled(q2, k2, v2, attn_mask=bias)
        grad = torch.randn_like(expected)
        expected.backward(grad)
        actual.backward(grad)
        assert counter.frame_count == 1, f"{variant.name}: the compiled call should be one graph"
        assert_close(actual, expected, f"{variant.name} output", **FORWARD_TOL)
        for name, a, b in (("dq", q2, query), ("dk", k2, key), ("dv", v2, value)):
            assert_close(a.grad, b.grad, f"{variant.name} {name}", **GRAD_TOL)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", [(2, 2, 17, 17, 16), (2, 2, 17, 40, 32), (1, 1, 23, 56, 15), (1, 2, 40, 17, 8)])
def test_is_causal_equals_upper_left(path, shape):
    """TestAttnBias.test_is_causal_equals_upper_left, made exact: the upper-left bias gives
    bit-for-bit what ``is_causal=True`` gives (torch checks within 1e-3), and the lower-right bias
    what ``causal_alignment="bottom_right"`` gives. Equality means the bias's uninitialised memory
    was never read: any value added from it would change the output."""
    batch, heads, seq_q, seq_kv, head_dim = shape
    query = torch.rand(batch, heads, seq_q, head_dim, dtype=torch.float16)
    key = torch.rand(batch, heads, seq_kv, head_dim, dtype=torch.float16)
    value = torch.rand(batch, heads, seq_kv, head_dim, dtype=torch.float16)
    out_bias, weights_bias = sdpa(
        path, query, key, value, attn_mask=causal_upper_left(seq_q, seq_kv), dropout_p=0.0, return_weights=True
    )
    out_causal, weights_causal = sdpa(path, query, key, value, is_causal=True, dropout_p=0.0, return_weights=True)
    assert torch.equal(out_bias, out_causal) and torch.equal(weights_bias, weights_causal)
    lower = sdpa(path, query, key, value, attn_mask=_bias(CausalVariant.LOWER_RIGHT, seq_q, seq_kv))
    bottom_right = sdpa(path, query, key, value, is_causal=True, causal_alignment="bottom_right")
    assert torch.equal(lower, bottom_right)


@pytest.mark.parametrize("path", PATHS)
def test_is_causal_and_mask_fails(path):
    """TestAttnBias.test_is_causal_and_mask_fails: a CausalBias with is_causal=True raises
    ValueError with torch's message."""
    query = key = value = torch.rand(2, 2, 16, 16, dtype=torch.float16)
    with pytest.raises(ValueError, match="CausalBias should not be used with causal=True"):
        sdpa(path, query, key, value, attn_mask=causal_upper_left(16, 16), is_causal=True, dropout_p=0.0)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("variant", [CausalVariant.UPPER_LEFT, CausalVariant.LOWER_RIGHT], ids=lambda v: v.name)
def test_causal_bias_with_broadcast_inputs(path, variant):
    """The bias with torch's other input forms: 3-D inputs, a 5-D batch, a 2-D key against a 4-D
    query; equal to torch's SDPA with the materialised mask."""
    seq_q, seq_kv = 6, 9
    bias = _bias(variant, seq_q, seq_kv)
    cases = {
        "3-D": ((3, seq_q, 8), (3, seq_kv, 8)),
        "5-D": ((2, 1, 2, seq_q, 8), (2, 3, 2, seq_kv, 8)),
        "2-D key": ((2, 2, seq_q, 8), (seq_kv, 8)),
    }
    for name, (q_shape, kv_shape) in cases.items():
        q, k, v = torch.randn(q_shape), torch.randn(kv_shape), torch.randn(kv_shape)
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=bias._materialize())
        assert_close(sdpa(path, q, k, v, attn_mask=bias), expected, name)
