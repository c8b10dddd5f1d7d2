"""What torch's scaled_dot_product_attention accepts, and how: shapes and broadcasting, head dims,
mask dtypes and devices, scale values, empty sizes. Every case is checked against torch 2.13 itself
on the CPU (output and gradients), so a change in torch's rules shows up here.

torch's rule for shapes (its math backend is ``softmax(q k^T * scale + mask) v`` with torch.matmul):
query ``[..., Nq, D]``, key ``[..., Nk, D]``, value ``[..., Nk, Dv]``, at least 2-D, leading dims
broadcasting as matmul's batch dims (dim -3 is the heads: one key/value head serves all query heads
without ``enable_gqa``); with ``enable_gqa`` the key and value heads each divide the query heads.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend

import attnlens
from attnlens._inputs import prepare

from .common import PATHS, assert_close, raised, sdpa, torch_backend

# name -> (query shape, key shape, value shape, keyword arguments)
SHAPES = {
    "MQA: 4 query heads, 1 key/value head": ((2, 4, 5, 16), (2, 1, 7, 16), (2, 1, 7, 16), {}),
    "1 query head, 3 key/value heads": ((2, 1, 5, 16), (2, 3, 7, 16), (2, 3, 7, 16), {}),
    "1 key head, 3 value heads": ((2, 3, 5, 16), (2, 1, 7, 16), (2, 3, 7, 16), {}),
    "query batch 1, key/value batch 3": ((1, 2, 5, 16), (3, 2, 7, 16), (3, 2, 7, 16), {}),
    "query batch 3, key/value batch 1": ((3, 2, 5, 16), (1, 2, 7, 16), (1, 2, 7, 16), {}),
    "value batch larger than query and key": ((1, 2, 5, 16), (1, 2, 7, 16), (3, 2, 7, 16), {}),
    "2-D": ((5, 16), (7, 16), (7, 16), {}),
    "2-D query, 4-D key/value": ((5, 16), (2, 3, 7, 16), (2, 3, 7, 16), {}),
    "3-D query, 4-D key/value": ((3, 5, 16), (2, 3, 7, 16), (2, 3, 7, 16), {}),
    "4-D query, 3-D key/value": ((2, 3, 5, 16), (3, 7, 16), (3, 7, 16), {}),
    "4-D query, 2-D key/value": ((2, 3, 5, 16), (7, 16), (7, 16), {}),
    "5-D": ((2, 3, 2, 5, 16), (2, 3, 2, 7, 16), (2, 3, 2, 7, 16), {}),
    "5-D, key and value broadcast on different dims": ((2, 3, 2, 5, 16), (1, 3, 2, 7, 16), (2, 1, 2, 7, 16), {}),
    "6-D": ((2, 1, 2, 2, 5, 8), (1, 3, 1, 2, 7, 8), (1, 3, 2, 2, 7, 8), {}),
    "value head dim differs": ((2, 3, 5, 16), (2, 3, 7, 16), (2, 3, 7, 8), {}),
    "GQA 4:2": ((2, 4, 5, 16), (2, 2, 7, 16), (2, 2, 7, 16), {"enable_gqa": True}),
    "GQA, key 1 head and value 2 heads": ((2, 4, 5, 16), (2, 1, 7, 16), (2, 2, 7, 16), {"enable_gqa": True}),
    "GQA with batch broadcast": ((1, 4, 5, 16), (3, 2, 7, 16), (3, 2, 7, 16), {"enable_gqa": True}),
    "GQA 5-D": ((3, 2, 4, 5, 16), (1, 2, 2, 7, 16), (3, 1, 2, 7, 16), {"enable_gqa": True}),
    "causal, query batch 1": ((1, 2, 5, 16), (3, 2, 7, 16), (3, 2, 7, 16), {"is_causal": True}),
    "bool mask over 5-D": (
        (2, 3, 2, 5, 16),
        (2, 3, 2, 7, 16),
        (2, 3, 2, 7, 16),
        {"attn_mask": "bool", "mask": (3, 1, 5, 7)},
    ),
    "float mask with batch broadcast": (
        (1, 2, 5, 16),
        (3, 2, 7, 16),
        (3, 2, 7, 16),
        {"attn_mask": "float", "mask": (3, 1, 5, 7)},
    ),
    "mask on the value's larger batch": (
        (1, 2, 5, 16),
        (1, 2, 7, 16),
        (3, 2, 7, 16),
        {"attn_mask": "float", "mask": (2, 5, 7)},
    ),
}
KERNEL_SHAPES = {
    "MQA: 4 query heads, 1 key/value head",
    "query batch 1, key/value batch 3",
    "2-D",
    "3-D query, 4-D key/value",
    "5-D, key and value broadcast on different dims",
    "GQA, key 1 head and value 2 heads",
    "bool mask over 5-D",
}


def _make(case):
    q_shape, k_shape, v_shape, kwargs = case
    q, k, v = (torch.randn(s, dtype=torch.float64, requires_grad=True) for s in (q_shape, k_shape, v_shape))
    kwargs = dict(kwargs)
    kind, mask_shape = kwargs.pop("attn_mask", None), kwargs.pop("mask", None)
    if kind == "bool":
        mask = torch.rand(mask_shape) > 0.3
        mask[..., 0] = True  # torch's math backend and attnlens agree on empty rows (0), but keep it plain
        kwargs["attn_mask"] = mask
    elif kind == "float":
        kwargs["attn_mask"] = torch.randn(mask_shape, dtype=torch.float64)
    return (q, k, v), kwargs


def _shape_params():
    for name in SHAPES:
        for path in PATHS:
            if path == "reference" or name in KERNEL_SHAPES:
                yield pytest.param(name, path, id=f"{name}-{path}")


@pytest.mark.parametrize("name,path", list(_shape_params()))
def test_shapes_match_torch(name, path):
    """Output and gradients equal torch's (float64, assert_close's tolerance) for every shape
    torch accepts: MQA without enable_gqa, batch broadcast either way, 2-D to 6-D, rank mixes."""
    (q, k, v), kwargs = _make(SHAPES[name])
    expected = F.scaled_dot_product_attention(q, k, v, **kwargs)
    q2, k2, v2 = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    actual = sdpa(path, q2, k2, v2, **kwargs)
    assert actual.shape == expected.shape
    assert_close(actual, expected, "output")
    grad = torch.randn_like(expected)
    want = torch.autograd.grad(expected, (q, k, v), grad)
    got = torch.autograd.grad(actual, (q2, k2, v2), grad)
    for what, a, b in zip(("dq", "dk", "dv"), got, want):
        assert a.shape == b.shape
        assert_close(a, b, what)


@pytest.mark.parametrize("path", PATHS)
def test_expanded_inputs_are_read_in_place(path):
    """Inputs the caller already broadcast with expand (stride 0 over batch or heads) and
    transposed views run as they are: same result as contiguous copies."""
    key = torch.randn(1, 7, 1, 16).expand(3, 7, 2, 16).transpose(1, 2)  # stride 0 on batch and heads
    value = torch.randn(3, 2, 7, 16)
    query = torch.randn(3, 5, 2, 16).transpose(1, 2)
    assert key.stride()[:2] == (0, 0)
    expected = F.scaled_dot_product_attention(query, key, value)
    actual = sdpa(path, query, key, value)
    assert_close(actual, expected)
    assert torch.equal(actual, sdpa(path, query.contiguous(), key.contiguous(), value))


VIEW_CASES = {
    "MQA": ((2, 4, 5, 16), (2, 1, 7, 16), {}),
    "query batch 1": ((1, 2, 5, 16), (3, 2, 7, 16), {}),
    "key batch 1": ((3, 2, 5, 16), (1, 2, 7, 16), {}),
    "query heads 1": ((2, 1, 5, 16), (2, 3, 7, 16), {}),
    "3-D query, 4-D key": ((3, 5, 16), (2, 3, 7, 16), {}),
    "2-D": ((5, 16), (7, 16), {}),
    "5-D key broadcast on one batch dim": ((2, 3, 2, 5, 16), (1, 3, 2, 7, 16), {}),
    "5-D key broadcast on two batch dims": ((2, 3, 2, 5, 16), (1, 1, 2, 7, 16), {}),
    "GQA": ((2, 4, 5, 16), (2, 2, 7, 16), {"enable_gqa": True}),
}


@pytest.mark.parametrize("name", list(VIEW_CASES))
def test_broadcast_inputs_are_not_copied(name):
    """What the paths receive are views of the caller's tensors (stride 0 where broadcast), never
    copies; a broadcast mask stays a stride-0 view as well. (One case has to copy: two inputs
    broadcast over different batch dims of a 5-D or deeper call, which no single batch stride can
    express; see docs/torch-compat.md.)"""
    q_shape, kv_shape, kwargs = VIEW_CASES[name]
    q, k, v = torch.randn(q_shape), torch.randn(kv_shape), torch.randn(kv_shape)
    mask = torch.rand(q_shape[-2], kv_shape[-2]) > 0.5
    p = prepare(q, k, v, attn_mask=mask, **kwargs)
    for what, given, seen in (
        ("query", q, p.query),
        ("key", k, p.key),
        ("value", v, p.value),
        ("mask", mask, p.attn_mask),
    ):
        assert seen.untyped_storage().data_ptr() == given.untyped_storage().data_ptr(), f"{what} was copied"
        assert seen.dim() == 4
    for given, seen in ((q, p.query), (k, p.key)):
        if given.dim() == 4:
            for dim in range(2):
                assert given.shape[dim] == seen.shape[dim] or seen.stride(dim) == 0


HEAD_DIMS = {
    "head dim 300": (300, 300),
    "query/key 16, value 300": (16, 300),
    "head dim 0": (0, 0),
    "query/key 0, value 8": (0, 8),
    "query/key 300, value 0": (300, 0),
}


@pytest.mark.parametrize("name", list(HEAD_DIMS))
def test_head_dims_the_kernels_do_not_compile(name):
    """torch takes any head dim; the kernels compile 1 to 256. The rest run on the plain-PyTorch
    path whatever the device ("auto", which under the interpreter otherwise picks the kernels),
    with torch's values and gradients (head dim 0: every score 0, uniform weights; torch's scale
    1/sqrt(0) = inf multiplies nothing). Forcing the kernels says why it cannot."""
    d, dv = HEAD_DIMS[name]
    q = torch.randn(2, 2, 5, d, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 2, 7, d, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 2, 7, dv, dtype=torch.float64, requires_grad=True)
    assert attnlens.selected_backend(q.device) == "kernels"
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    actual = attnlens.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.equal(actual, sdpa("reference", q, k, v, is_causal=True))
    assert_close(actual, expected)
    if expected.numel():
        grad = torch.randn_like(expected)
        for what, a, b in zip(
            "qkv", torch.autograd.grad(actual, (q, k, v), grad), torch.autograd.grad(expected, (q, k, v), grad)
        ):
            assert_close(a, b, f"d{what}")
    with pytest.raises(attnlens.AttentionValueError, match=r"head dims 1 to 256.*use_backend\('auto'\)"):
        sdpa("kernels", q, k, v)


DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
MASK_DTYPES = [torch.bool, torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64, torch.uint8]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mask_dtype_rule_is_torchs(dtype):
    """torch accepts a bool mask, a float32 one, or one in the query's dtype, and refuses any other
    (a float64 or float16 mask with float32 inputs included) rather than casting it: attnlens
    accepts exactly the same, never casts silently, and raises what torch's except clause catches.
    Accepted masks give torch's values (16-bit at torch's float16 fused tolerance, 1e-2)."""
    q = torch.randn(2, 2, 5, 8).to(dtype)
    k = torch.randn(2, 2, 7, 8).to(dtype)
    v = torch.randn(2, 2, 7, 8).to(dtype)
    for mask_dtype in MASK_DTYPES:
        mask = torch.rand(5, 7) > 0.3 if mask_dtype == torch.bool else torch.randn(5, 7).to(mask_dtype)
        expected = raised(partial(F.scaled_dot_product_attention, q, k, v, attn_mask=mask))
        for path in PATHS:
            got = raised(partial(sdpa, path, q, k, v, attn_mask=mask))
            if isinstance(expected, Exception):
                assert isinstance(got, type(expected)) and isinstance(got, TypeError), f"{mask_dtype}: {got!r}"
                assert str(mask_dtype).replace("torch.", "") in str(got)
            else:
                assert got is None, f"{mask_dtype} mask with {dtype} inputs ({path}): {got!r}"
        if expected is None and (dtype != torch.bfloat16 or mask_dtype == torch.bool):
            tol = {} if dtype in (torch.float32, torch.float64) else dict(atol=1e-2, rtol=1e-2)
            path = "kernels" if dtype == torch.float16 else "reference"
            assert_close(
                sdpa(path, q, k, v, attn_mask=mask),
                F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                f"{mask_dtype}",
                **tol,
            )


def test_mask_on_another_device_is_refused_as_torchs_math_backend_does():
    """torch's math backend raises RuntimeError for a mask on another device (here "meta", the
    only other device of a CPU machine); attnlens raises on every path (torch's CPU flash
    backend instead runs and returns values that are not the masked attention: test_differences)."""
    q, k, v = torch.randn(2, 2, 5, 8), torch.randn(2, 2, 7, 8), torch.randn(2, 2, 7, 8)
    mask = torch.zeros(5, 7, device="meta")
    with torch_backend(SDPBackend.MATH):
        expected = raised(partial(F.scaled_dot_product_attention, q, k, v, attn_mask=mask))
    assert type(expected) is RuntimeError
    for path in PATHS:
        with pytest.raises(RuntimeError, match="attn_mask must be on the query's device cpu, got meta"):
            sdpa(path, q, k, v, attn_mask=mask)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "scale", [0.0, -1.0, 3, 1e-3, np.float32(0.25), torch.tensor(0.5), torch.tensor(2, dtype=torch.int64)], ids=repr
)
def test_scale_values_torch_accepts(path, scale):
    """Any real scale torch's argument parser takes (int, numpy scalar, 0-dim tensor, 0,
    negative) gives torch's result."""
    q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 7, 8), torch.randn(1, 2, 7, 8)
    expected = F.scaled_dot_product_attention(q, k, v, scale=scale)
    assert_close(sdpa(path, q, k, v, scale=scale), expected)


@pytest.mark.parametrize("scale", [math.inf, -math.inf])
def test_infinite_scale_is_torchs_math(scale):
    """scale = +-inf: torch computes it (q and k times sqrt(scale), so every score is +-inf or NaN)
    and so does attnlens, on the plain-PyTorch path (the kernels take finite scales): NaN wherever
    a row has a +inf score (inf - inf in the softmax), 0 where every score is -inf, as torch's math
    backend gives."""
    torch.manual_seed(0)
    q = torch.randn(1, 2, 6, 8)
    k = torch.randn(1, 2, 7, 8)
    v = torch.randn(1, 2, 7, 8)
    q[0, 0, 0] = 1.0  # a row whose scores are all -inf (with scale > 0) or all +inf (scale < 0)
    k[0, 0] = -1.0
    with torch_backend(SDPBackend.MATH):
        expected = F.scaled_dot_product_attention(q, k, v, scale=scale)
    actual = attnlens.scaled_dot_product_attention(q, k, v, scale=scale)
    assert torch.equal(actual.isnan(), expected.isnan())
    assert_close(actual, expected, equal_nan=True)
    assert (expected[0, 0, 0] == 0).all() if scale > 0 else expected[0, 0, 0].isnan().all()
    with pytest.raises(attnlens.AttentionValueError, match="finite scale"):
        sdpa("kernels", q, k, v, scale=scale)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "shapes",
    [
        ((2, 2, 0, 8), (2, 2, 7, 8)),
        ((2, 2, 5, 8), (2, 2, 0, 8)),
        ((0, 2, 5, 8), (0, 2, 7, 8)),
        ((2, 0, 5, 8), (2, 0, 7, 8)),
        ((0, 2, 5, 8), (1, 2, 7, 8)),
    ],
    ids=["no queries", "no keys", "batch 0", "no heads", "batch 0 against 1"],
)
def test_empty_sizes(path, shapes):
    """Empty dims give torch's shapes and values (no keys: output 0, as torch's CPU backends)."""
    q = torch.randn(shapes[0])
    k = torch.randn(shapes[1])
    v = torch.randn(shapes[1])
    expected = F.scaled_dot_product_attention(q, k, v)
    actual = sdpa(path, q, k, v)
    assert actual.shape == expected.shape
    assert_close(actual, expected)


@pytest.mark.parametrize("path", PATHS)
def test_dropout_one_drops_everything(path):
    """dropout_p = 1 (torch accepts it): every weight dropped, output 0."""
    q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 7, 8), torch.randn(1, 2, 7, 8)
    expected = F.scaled_dot_product_attention(q, k, v, dropout_p=1.0)
    assert torch.equal(expected, torch.zeros_like(expected))
    assert torch.equal(sdpa(path, q, k, v, dropout_p=1.0), expected)
