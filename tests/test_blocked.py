"""The CPU path (backend ``"torch"``, ``attnlens.blocked``) against the float64 oracle, as the
kernels are tested: flash-attn's rule (error at most 2x that of the same maths in the input dtype,
3x for gradients, plus a rounding floor), on the shapes, masks, empty rows, GQA, strides, poisoned
memory, dropout with an imposed pattern and gradients (through the weights too) of
tests/test_forward.py and tests/test_backward.py, in fp16, bf16, fp32 and fp64.

Every road is covered: torch's flash-attention CPU kernel (``fused``, calls it computes exactly),
forced off with ``road="blocked"``; the small problems' one block of plain torch operations
(``_direct``, what the tests' shapes take by default); the blocked autograd function with one
query block (``one_block``) and with tiny blocks, so that short sequences already go through
several query blocks, one head at a time or all heads at once, and through the causal and
padding key trimming (``row_blocks``, ``head_loop``).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import attnlens
import attnlens.blocked as blocked
from attnlens._inputs import prepare
from attnlens.reference import scaled_dot_product_attention as reference_sdpa
from helpers import (
    ODD_SEQLENS,
    UNEQUAL_LENGTHS,
    assert_equal,
    assert_rule,
    make_qkv,
    mixed_padding,
    odd_gradient_cases,
    outputs_and_grads,
    poisoned_like,
    random_bool_mask,
    random_float_mask,
    reference,
    reference_grads,
)

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
F64 = torch.float64

#: block layouts: name -> (BLOCK_ELEMENTS, HEAD_LOOP_ELEMENTS, DIRECT_ELEMENTS)
LAYOUTS = {
    "default": (blocked.BLOCK_ELEMENTS, blocked.HEAD_LOOP_ELEMENTS, blocked.DIRECT_ELEMENTS),  # small: _direct
    "one_block": (blocked.BLOCK_ELEMENTS, 1 << 40, 0),  # the autograd function, one query block
    "row_blocks": (1 << 9, 1 << 40, 0),  # 16-row query blocks, all heads in one call
    "head_loop": (1 << 9, 0, 0),  # 16-row query blocks, one head at a time
    "groups": (1 << 9, 1 << 11, 0),  # 16-row query blocks, one batch element (all its heads) at a time
    "head_groups": (1 << 9, 1 << 12, 0),  # 16-row query blocks, a few heads of one batch element at a time
}
_KNOBS = ("BLOCK_ELEMENTS", "HEAD_LOOP_ELEMENTS", "DIRECT_ELEMENTS")


@pytest.fixture(autouse=True)
def torch_backend():
    with attnlens.use_backend("torch"):
        yield


@contextlib.contextmanager
def layout(name: str, road: str = "auto"):
    """Block sizes ``LAYOUTS[name]``; ``road="blocked"`` keeps every call off torch's fused kernel."""
    saved = [getattr(blocked, knob) for knob in _KNOBS], blocked._fused_plan
    for knob, value in zip(_KNOBS, LAYOUTS[name]):
        setattr(blocked, knob, value)
    if road == "blocked":
        blocked._fused_plan = lambda p: (False, None, False)
    try:
        yield
    finally:
        for knob, value in zip(_KNOBS, saved[0]):
            setattr(blocked, knob, value)
        blocked._fused_plan = saved[1]


def sdpa(*args, **kwargs):
    return attnlens.scaled_dot_product_attention(*args, **kwargs)


def check(q, k, v, **kwargs):
    """Output (with and without weights), per-head and head-mean weights against the float64
    oracle by flash-attn's rule; returns ``(out, weights, mean)``."""
    alone = sdpa(q, k, v, **kwargs)
    out, weights = sdpa(q, k, v, return_weights=True, **kwargs)
    out_m, mean = sdpa(q, k, v, return_weights="mean", **kwargs)
    exact = reference(q, k, v, F64, **kwargs)
    lowp = reference(q, k, v, q.dtype, **kwargs)
    for name, got in (("out", alone), ("out with weights", out), ("out with mean", out_m)):
        assert got.dtype == q.dtype and got.shape == exact[0].shape, name
        assert_rule(name, got, exact[0], lowp[0])
    assert weights.dtype == q.dtype and mean.dtype == q.dtype
    assert_rule("weights", weights, exact[1], lowp[1])
    assert_rule("mean weights", mean, exact[1].mean(1), lowp[1].float().mean(1).to(q.dtype))
    return out, weights, mean


# ---------------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seqlen", ODD_SEQLENS)
def test_sequence_lengths(name, dtype, seqlen):
    q, k, v = make_qkv(1, 2, seqlen, seqlen, 64, dtype)
    with layout(name):
        check(q, k, v)
        check(q, k, v, is_causal=True)


@pytest.mark.parametrize("seqlen", [1023, 1025])
def test_long_sequences(seqlen):
    q, k, v = make_qkv(1, 1, seqlen, seqlen, 32, torch.float16)
    check(q, k, v, is_causal=True)


@pytest.mark.parametrize("seqlen_q,seqlen_k", UNEQUAL_LENGTHS)
@pytest.mark.parametrize("alignment", ["top_left", "bottom_right"])
def test_unequal_lengths(seqlen_q, seqlen_k, alignment):
    q, k, v = make_qkv(2, 1, seqlen_q, seqlen_k, 40, torch.float16)
    with layout("row_blocks"):
        check(q, k, v)
        check(q, k, v, is_causal=True, causal_alignment=alignment)


@pytest.mark.parametrize("head_dim", [1, 8, 16, 40, 59, 64, 80, 96, 111, 128, 160, 256])
@pytest.mark.parametrize("dtype", DTYPES)
def test_head_dims(head_dim, dtype):
    q, k, v = make_qkv(1, 2, 70, 90, head_dim, dtype)
    check(q, k, v, is_causal=True)
    check(q, k, v, is_causal=True, causal_alignment="bottom_right")


@pytest.mark.parametrize("head_dim,head_dim_v", [(64, 32), (24, 80), (59, 111)])
def test_value_head_dim_differs(head_dim, head_dim_v):
    q, k, v = make_qkv(2, 2, 65, 77, head_dim, torch.float16, head_dim_v=head_dim_v)
    check(q, k, v)
    check(q, k, v, is_causal=True)


@pytest.mark.parametrize("name", ["default", "head_loop", "head_groups"])
@pytest.mark.parametrize("heads_q,heads_kv", [(1, 1), (3, 3), (9, 9), (2, 1), (8, 1), (6, 3), (8, 2)])
def test_heads_and_gqa(name, heads_q, heads_kv):
    q, k, v = make_qkv(2, heads_q, 45, 67, 32, torch.float32, heads_kv=heads_kv)
    gqa = heads_q != heads_kv
    with layout(name):
        check(q, k, v, enable_gqa=gqa)
        check(q, k, v, enable_gqa=gqa, is_causal=True, causal_alignment="bottom_right")


def _masks(kind, batch, heads, seqlen_q, seqlen_k, dtype):
    if kind == "none":
        return None
    if kind == "bool":
        return torch.rand(batch, heads, seqlen_q, seqlen_k) > 0.3
    if kind == "bool_2d":
        return torch.rand(seqlen_q, seqlen_k) > 0.5
    if kind == "bool_keys":  # per key, broadcast over the queries
        return torch.rand(batch, 1, 1, seqlen_k) > 0.3
    if kind == "float":
        mask = torch.randn(batch, 1, seqlen_q, seqlen_k, dtype=dtype)
        mask[..., ::3] = float("-inf")
        return mask
    if kind == "float_row":  # broadcast over batch, heads and queries
        return torch.randn(seqlen_k, dtype=dtype)
    raise ValueError(kind)


@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("mask_kind", ["none", "bool", "bool_2d", "bool_keys", "float", "float_row"])
@pytest.mark.parametrize("causal", ["none", "top_left", "bottom_right"])
@pytest.mark.parametrize("padding", [False, True])
def test_every_mask_combination(name, mask_kind, causal, padding):
    batch, heads, seqlen_q, seqlen_k = 3, 2, 29, 41
    q, k, v = make_qkv(batch, heads, seqlen_q, seqlen_k, 24, torch.float32)
    kwargs = {}
    mask = _masks(mask_kind, batch, heads, seqlen_q, seqlen_k, torch.float32)
    if mask is not None:
        kwargs["attn_mask"] = mask
    if causal != "none":
        kwargs.update(is_causal=True, causal_alignment=causal)
    if padding:
        kwargs["key_padding_mask"] = mixed_padding(batch, seqlen_k)
    with layout(name):
        check(q, k, v, **kwargs)


@pytest.mark.parametrize(
    "dtype, mask_dtype",
    [(torch.float16, torch.float16), (torch.float16, torch.float32), (torch.bfloat16, torch.float32)]
    + [(torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32)],
)
def test_float_masks_of_another_dtype(dtype, mask_dtype):
    """A float mask of a dtype torch accepts (float32, or the query's) is added in the
    accumulation dtype (fp32) on both roads; other dtypes are refused (tests/torch_parity)."""
    q, k, v = make_qkv(2, 2, 21, 33, 16, dtype)
    mask = torch.randn(2, 1, 1, 33).to(mask_dtype)
    mask[..., 5] = float("-inf")
    check(q, k, v, attn_mask=mask)
    check(q, k, v, attn_mask=mask.expand(2, 1, 21, 33).contiguous(), key_padding_mask=mixed_padding(2, 33))


class TestRowsWithNothingToAttendTo:
    """Output 0, weights 0, gradients 0, never NaN, on both roads."""

    @pytest.fixture(params=[("default", "auto"), ("default", "blocked"), ("row_blocks", "blocked")])
    def road(self, request):
        """torch's fused kernel where it applies, else _direct; _direct always; the blocked function."""
        with layout(*request.param):
            yield request.param

    def _assert_empty_rows(self, out, weights, mean, rows):
        assert torch.isfinite(out).all() and torch.isfinite(weights).all()
        assert (out[:, :, rows] == 0).all()
        assert (weights[:, :, rows] == 0).all()
        assert (mean[:, rows] == 0).all()

    def test_causal_bottom_right_with_more_queries_than_keys(self, road):
        q, k, v = make_qkv(1, 2, 40, 25, 16, torch.float16)
        out, weights, mean = check(q, k, v, is_causal=True, causal_alignment="bottom_right")
        self._assert_empty_rows(out, weights, mean, slice(0, 15))
        assert (weights[:, :, 15:].float().sum(-1) - 1).abs().max() < 1e-2

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_huge_negative_biases_softmax_like_torch(self, road, dtype):
        """-1e9, -1e30 and finfo(float32).min are scores like any other (a row of them is
        softmaxed, uniformly where they absorb q.k), only -inf masks a key."""
        q, k, v = make_qkv(1, 2, 7, 21, 16, dtype)
        bias = torch.zeros(1, 1, 7, 21, dtype=dtype)
        lowest = torch.finfo(torch.float32).min
        bias[..., 0, :] = lowest
        bias[..., 1, 3:] = lowest
        bias[..., 2, 5] = float("-inf")
        bias[..., 3, :] = -1e30
        bias[..., 4, :] = -1e9
        bias[..., 5, :] = float("-inf")
        bias[..., 6, ::2] = -1e9
        out, weights, mean = check(q, k, v, attn_mask=bias)
        self._assert_empty_rows(out, weights, mean, slice(5, 6))
        assert (weights[:, :, 1, 3:] == 0).all() and (weights[:, :, 2, 5] == 0).all()
        for row in (0, 3):
            assert (weights[:, :, row] - 1 / 21).abs().max() < 1e-6, row

    def test_all_keys_padded_in_one_batch_element(self, road):
        q, k, v = make_qkv(2, 3, 30, 45, 16, torch.float32)
        pad = torch.zeros(2, 45, dtype=torch.bool)
        pad[1] = True
        out, weights, mean = check(q, k, v, key_padding_mask=pad)
        assert (out[1] == 0).all() and (weights[1] == 0).all() and (mean[1] == 0).all()
        out, weights, mean = check(q, k, v, key_padding_mask=pad, is_causal=True)
        assert (out[1] == 0).all() and (weights[1] == 0).all() and (mean[1] == 0).all()

    def test_every_key_padded(self, road):
        q, k, v = make_qkv(2, 3, 30, 45, 16, torch.float32)
        out, weights, mean = check(q, k, v, key_padding_mask=torch.ones(2, 45, dtype=torch.bool))
        assert (out == 0).all() and (weights == 0).all() and (mean == 0).all()

    def test_bool_mask_rows_all_false(self, road):
        q, k, v = make_qkv(1, 2, 33, 70, 32, torch.float16)
        mask = torch.rand(33, 70) > 0.5
        mask[[0, 5, 32]] = False
        out, weights, mean = check(q, k, v, attn_mask=mask)
        self._assert_empty_rows(out, weights, mean, [0, 5, 32])

    def test_float_mask_rows_all_minus_inf(self, road):
        q, k, v = make_qkv(1, 1, 20, 30, 32, torch.float32)
        mask = torch.zeros(20, 30)
        mask[3] = float("-inf")
        out, weights, mean = check(q, k, v, attn_mask=mask)
        self._assert_empty_rows(out, weights, mean, [3])

    def test_all_false_mask(self, road):
        q, k, v = make_qkv(2, 2, 17, 19, 16, torch.float16)
        out, weights, mean = check(q, k, v, attn_mask=torch.zeros(17, 19, dtype=torch.bool))
        assert (out == 0).all() and (weights == 0).all() and (mean == 0).all()

    def test_all_true_mask_equals_no_mask(self, road):
        q, k, v = make_qkv(2, 2, 17, 19, 16, torch.float32)
        for mode in (False, True, "mean"):
            masked = sdpa(q, k, v, attn_mask=torch.ones(17, 19, dtype=torch.bool), return_weights=mode)
            plain = sdpa(q, k, v, return_weights=mode)
            for a, b in zip(masked if mode else (masked,), plain if mode else (plain,)):
                assert (a - b).abs().max() < 1e-6

    def test_padding_and_causal_empty_every_row_of_a_block(self, road):
        q, k, v = make_qkv(1, 1, 48, 48, 16, torch.float32)
        pad = torch.zeros(1, 48, dtype=torch.bool)
        pad[0, :20] = True
        out, weights, mean = check(q, k, v, is_causal=True, key_padding_mask=pad)
        self._assert_empty_rows(out, weights, mean, slice(0, 20))

    @pytest.mark.parametrize("case", ["bool_rows", "padded_batch", "bottom_right", "all_false"])
    def test_gradients_are_zero(self, road, case):
        q, k, v = make_qkv(2, 2, 20, 24, 8, torch.float32)
        kwargs, rows = {}, None
        if case == "bool_rows":
            mask = torch.rand(20, 24) > 0.3
            mask[[2, 9]] = False
            kwargs["attn_mask"], rows = mask, (slice(None), slice(None), [2, 9])
        elif case == "padded_batch":
            pad = torch.zeros(2, 24, dtype=torch.bool)
            pad[1] = True
            kwargs["key_padding_mask"], rows = pad, (1,)
        elif case == "bottom_right":
            q = q[:, :, :20].repeat(1, 1, 2, 1)[:, :, :37]
            kwargs.update(is_causal=True, causal_alignment="bottom_right")
            rows = (slice(None), slice(None), slice(0, 13))
        else:
            kwargs["attn_mask"], rows = torch.zeros(20, 24, dtype=torch.bool), (slice(None),)
        dq, dk, dv = check_grads(q, k, v, grad_weights=True, return_weights=True, **kwargs)
        assert (dq[rows] == 0).all()
        if case in ("padded_batch", "all_false"):
            assert (dk[rows] == 0).all() and (dv[rows] == 0).all()


@pytest.mark.parametrize("name,road", [("default", "auto"), ("default", "blocked"), ("row_blocks", "blocked")])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_poisoned_memory_is_never_read(name, road, dtype):
    """Inputs and masks as views into NaN-filled buffers: finite results, equal to those of clean
    contiguous copies."""
    q, k, v = make_qkv(2, 3, 37, 51, 40, dtype)
    pad = mixed_padding(2, 51)
    for kwargs in (
        dict(attn_mask=torch.randn(2, 3, 37, 51, dtype=dtype), is_causal=True, causal_alignment="bottom_right"),
        dict(is_causal=True),
        dict(attn_mask=torch.randn(2, 1, 1, 51, dtype=dtype)),
    ):
        for mode in (False, True):
            with layout(name, road):
                clean = sdpa(q, k, v, key_padding_mask=pad, return_weights=mode, **kwargs)
                dirty_kwargs = dict(kwargs)
                if "attn_mask" in kwargs:
                    dirty_kwargs["attn_mask"] = poisoned_like(kwargs["attn_mask"], (1, 1, 3, 13))
                dirty = sdpa(
                    poisoned_like(q, (1, 1, 7, 9)),
                    poisoned_like(k, (1, 2, 5, 3)),
                    poisoned_like(v, (2, 1, 11, 5)),
                    key_padding_mask=poisoned_like(pad, (1, 6)),
                    return_weights=mode,
                    **dirty_kwargs,
                )
            for label, a, b in zip(("out", "weights"), dirty if mode else (dirty,), clean if mode else (clean,)):
                assert torch.isfinite(a).all(), f"{label} has NaN"
                assert_equal(label, a, b)


def test_transposed_inputs():
    """[B, N, H, D] tensors viewed as [B, H, N, D], as nn.MultiheadAttention-style code makes them."""
    b, n, h, d = 2, 45, 3, 32
    q = torch.randn(b, n, h, d).transpose(1, 2)
    k = torch.randn(b, n + 10, h, d).transpose(1, 2)
    v = torch.randn(b, n + 10, h, d).transpose(1, 2)
    out, weights, _ = check(q, k, v, is_causal=True)
    contiguous = sdpa(q.contiguous(), k.contiguous(), v.contiguous(), is_causal=True, return_weights=True)
    assert_equal("out", out, contiguous[0])
    assert_equal("weights", weights, contiguous[1])


def test_last_dimension_not_contiguous():
    """torch 2.13's fused CPU kernel reads the head dim as contiguous whatever its stride: such
    inputs are copied first."""
    q = torch.randn(1, 2, 32, 9).transpose(2, 3)  # [1, 2, 9, 32], head-dim stride 9
    k, v = torch.randn(1, 2, 11, 32), torch.randn(1, 2, 11, 32)
    assert q.stride(-1) != 1
    exact = reference(q, k, v, F64)
    assert_rule("out", sdpa(q, k, v), exact[0], reference(q, k, v)[0])


def test_scaled_inputs_do_not_overflow_fp16():
    q, k, v = make_qkv(2, 2, 100, 120, 64, torch.float16)
    out, weights, _ = check(q * 5, k * 3, v)
    assert torch.isfinite(out).all() and torch.isfinite(weights).all()


@pytest.mark.parametrize("name,road", [("default", "auto"), ("default", "blocked"), ("one_block", "blocked")])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_torch_fp16_overflow_regression(name, road, dtype):
    """pytorch issue 160841: q = k = v = 256 in fp16 at head dim 80 overflows a half-precision
    score (256 * 256 * 80 / sqrt(80)); computed in fp32 the answer is 256."""
    q = torch.full((1, 2, 16, 80), 256.0, dtype=dtype, requires_grad=True)
    with layout(name, road):
        out, weights = sdpa(q, q, q, return_weights=True)
        (grad,) = torch.autograd.grad(out.float().sum(), q)
        plain = sdpa(q, q, q, is_causal=True)
    assert (out == 256).all() and (plain == 256).all()
    assert torch.isfinite(weights).all() and torch.isfinite(grad).all()


def test_scale_argument():
    q, k, v = make_qkv(1, 2, 30, 40, 16, F64)
    check(q, k, v, scale=0.37)
    check(q, k, v, scale=-1.5, is_causal=True)


class TestZeroLengths:
    @pytest.mark.parametrize("shape", [(2, 3, 0, 10), (2, 3, 10, 0), (0, 3, 10, 12), (2, 0, 10, 12)])
    def test_shapes_and_zero_output(self, shape):
        batch, heads, seqlen_q, seqlen_k = shape
        q, k, v = make_qkv(batch, max(heads, 1), seqlen_q, seqlen_k, 16, torch.float32)
        q, k, v = q[:, :heads], k[:, :heads], v[:, :heads]
        q.requires_grad_(True)
        out, weights = sdpa(q, k, v, return_weights=True, is_causal=True)
        assert out.shape == (batch, heads, seqlen_q, 16) and weights.shape == shape
        assert (out == 0).all()
        _, mean = sdpa(q, k, v, return_weights="mean")
        assert mean.shape == (batch, seqlen_q, seqlen_k)
        assert (sdpa(q, k, v) == 0).all()
        (grad,) = torch.autograd.grad(out.sum() + weights.sum(), q)
        assert (grad == 0).all() and grad.shape == q.shape


# ---------------------------------------------------------------------------------------------
# which road
# ---------------------------------------------------------------------------------------------


def _spy_fused(monkeypatch):
    calls = []
    real = blocked._FLASH_CPU

    def spy(*args, **kwargs):
        calls.append(kwargs.get("attn_mask"))
        return real(*args, **kwargs)

    monkeypatch.setattr(blocked, "_FLASH_CPU", spy)
    return calls


FUSED = {
    "plain": lambda b, n: {},
    "causal": lambda b, n: dict(is_causal=True),
    "padding": lambda b, n: dict(key_padding_mask=mixed_padding(b, n)),
    "causal_padding": lambda b, n: dict(is_causal=True, key_padding_mask=mixed_padding(b, n)),
    "float_mask": lambda b, n: dict(attn_mask=torch.randn(b, 1, n, n, dtype=F64)),
    "bool_keys_padding": lambda b, n: dict(
        attn_mask=torch.rand(b, 1, 1, n) > 0.2, key_padding_mask=mixed_padding(b, n)
    ),
}
BLOCKED = {
    "weights": lambda b, n: dict(return_weights=True),
    "dropout": lambda b, n: dict(dropout_p=0.2),
    "bottom_right": lambda b, n: dict(is_causal=True, causal_alignment="bottom_right"),
    "bool_mask_varies_over_queries": lambda b, n: dict(attn_mask=torch.rand(n, n) > 0.2),
    "float_mask_and_padding": lambda b, n: dict(
        attn_mask=torch.randn(n, n, dtype=F64), key_padding_mask=mixed_padding(b, n)
    ),
}


@pytest.mark.parametrize("name", list(FUSED) + list(BLOCKED))
def test_each_call_takes_its_road_and_both_roads_agree(monkeypatch, name):
    """Calls torch's fused kernel computes exactly go there; the others to the blocked road; the
    blocked road gives the same numbers for the fused calls (fp64: to rounding)."""
    batch, n = 2, 23
    q, k, v = make_qkv(batch, 2, n, n - 2 if name == "bottom_right" else n, 8, F64)
    if name == "bottom_right":
        q = torch.cat([q, q[:, :, :3]], dim=2)  # Nq > Nk: the first rows see nothing
    kwargs = (FUSED.get(name) or BLOCKED[name])(batch, k.shape[2])
    calls = _spy_fused(monkeypatch)
    torch.manual_seed(3)
    got = sdpa(q, k, v, **kwargs)
    assert bool(calls) == (name in FUSED), calls
    torch.manual_seed(3)
    # dropout draws follow the query blocks: compare it under the same blocks
    with layout("default" if name == "dropout" else "row_blocks", "blocked"):
        other = sdpa(q, k, v, **kwargs)
    for a, b in zip(got if isinstance(got, tuple) else (got,), other if isinstance(other, tuple) else (other,)):
        assert (a - b).abs().max() < 1e-12


def test_bottom_right_single_query_needs_no_causal_mask(monkeypatch):
    """Decoding: one query aligned bottom-right sees every key, so the fused kernel takes it."""
    q, k, v = make_qkv(2, 2, 1, 30, 8, F64)
    calls = _spy_fused(monkeypatch)
    out = sdpa(q, k, v, is_causal=True, causal_alignment="bottom_right")
    assert len(calls) == 1
    assert (out - sdpa(q, k, v)).abs().max() == 0


def test_matches_torch_sdpa():
    q, k, v = make_qkv(2, 4, 50, 60, 32, torch.float32)
    mask = torch.rand(2, 1, 50, 60) > 0.2
    for kwargs in (dict(attn_mask=mask), dict(), dict(is_causal=True)):
        ours = sdpa(q, k, v, **kwargs)
        theirs = F.scaled_dot_product_attention(q, k, v, **kwargs)
        assert_rule("out vs torch", ours, reference(q, k, v, F64, **kwargs)[0], theirs)


def test_selected_backend_and_use_backend():
    cpu = torch.device("cpu")
    assert attnlens.selected_backend(cpu) == "torch"
    with attnlens.use_backend("reference"):
        assert attnlens.selected_backend(cpu) == "reference"
    with attnlens.use_backend("auto"):
        assert attnlens.selected_backend(cpu) in ("kernels", "torch")
    assert "torch" in attnlens.functional.BACKENDS
    with pytest.raises(ValueError, match="backend must be one of"):
        with attnlens.use_backend("fast"):
            pass


_CHILD = """
import sys, json
import torch
import attnlens
q = torch.randn(1, 2, 9, 8, requires_grad=True)
out = attnlens.scaled_dot_product_attention(q, q, q, is_causal=True)
out2, weights = attnlens.scaled_dot_product_attention(q, q, q, return_weights="mean", dropout_p=0.1)
(out.sum() + out2.sum() + weights.sum()).backward()
mha = attnlens.MultiHeadAttention(8, 2, batch_first=True)
mha(q[0].detach(), q[0].detach(), q[0].detach())
print(json.dumps({
    "backend": attnlens.selected_backend(q.device),
    "triton": "triton" in sys.modules,
    "compiler": "torch._dynamo" in sys.modules or "torch._inductor" in sys.modules,
}))
"""


def _child(env_value):
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    if env_value is not None:
        env["TRITON_INTERPRET"] = env_value
    done = subprocess.run([sys.executable, "-P", "-c", _CHILD], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    import json

    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_cpu_call_without_the_interpreter_never_imports_triton():
    """Without TRITON_INTERPRET a CPU call (forward, weights, dropout, backward, the module) takes
    the CPU path, and neither triton nor torch's compiler stack is imported."""
    assert _child(None) == {"backend": "torch", "triton": False, "compiler": False}
    assert _child("0") == {"backend": "torch", "triton": False, "compiler": False}


def test_the_interpreter_setting_is_read_as_triton_reads_it():
    """TRITON_INTERPRET=true (any case) turns the interpreter on for Triton, so the kernels run."""
    result = _child("True")
    assert result["backend"] == "kernels" and result["triton"]


# ---------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------


def torch_grads(q, k, v, grad_out, grad_weights=None, **kwargs):
    """``(dq, dk, dv)`` on the CPU path for ``sum(out * grad_out) + sum(weights * grad_weights)``."""
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    result = sdpa(q, k, v, **kwargs)
    outputs, grads = outputs_and_grads(result, grad_out, grad_weights)
    return torch.autograd.grad(outputs, (q, k, v), grads)


def check_grads(q, k, v, grad_out=None, grad_weights=None, factor=3.0, **kwargs):
    """The CPU path's gradients against the float64 oracle (flash-attn's rule, ``factor`` x)."""
    batch, heads_q, seqlen_q, seqlen_k = prepare(q, k, v, **kwargs).shape
    if grad_out is None:
        grad_out = torch.randn(batch, heads_q, seqlen_q, v.shape[-1], dtype=q.dtype)
        if q.dim() == 3:
            grad_out = grad_out[0]
    if grad_weights is True:
        mean = kwargs.get("return_weights") == "mean"
        shape = (batch, seqlen_q, seqlen_k) if mean else (batch, heads_q, seqlen_q, seqlen_k)
        grad_weights = torch.randn(shape, dtype=q.dtype)
        if q.dim() == 3:
            grad_weights = grad_weights[0]
    grads = torch_grads(q, k, v, grad_out, grad_weights, **kwargs)
    exact = reference_grads(q, k, v, grad_out, grad_weights, F64, **kwargs)
    lowp = reference_grads(q, k, v, grad_out, grad_weights, q.dtype, **kwargs)
    for name, got, ex, lo in zip(("dq", "dk", "dv"), grads, exact, lowp):
        assert torch.isfinite(got).all(), f"{name} is not finite"
        assert got.dtype == q.dtype
        assert_rule(name, got, ex, lo, factor=factor)
    return grads


GRADCHECK_CASES = {
    "no_mask": ((2, 2, 2, 9, 9, 8, 8), lambda: {}),
    "nq_lt_nk": ((1, 1, 1, 5, 19, 8, 8), lambda: {}),
    "causal_top_left_nq_gt_nk": ((1, 1, 1, 33, 17, 4, 4), lambda: dict(is_causal=True)),
    "causal_bottom_right_nq_lt_nk": (
        (1, 1, 1, 17, 33, 4, 4),
        lambda: dict(is_causal=True, causal_alignment="bottom_right"),
    ),
    "causal_bottom_right_nq_gt_nk": (
        (1, 1, 1, 33, 17, 4, 4),
        lambda: dict(is_causal=True, causal_alignment="bottom_right"),
    ),
    "key_padding": ((2, 1, 1, 13, 35, 5, 5), lambda: dict(key_padding_mask=mixed_padding(2, 35))),
    "causal_padding": ((2, 2, 2, 19, 19, 4, 4), lambda: dict(is_causal=True, key_padding_mask=mixed_padding(2, 19))),
    "bool_mask": ((2, 2, 2, 11, 13, 4, 4), lambda: dict(attn_mask=random_bool_mask((2, 2, 11, 13), empty_rows=[0, 5]))),
    "float_mask_broadcast": ((2, 2, 2, 11, 13, 4, 4), lambda: dict(attn_mask=random_float_mask((11, 13), F64))),
    "gqa": ((1, 4, 2, 17, 20, 8, 8), lambda: dict(enable_gqa=True, is_causal=True, causal_alignment="bottom_right")),
    "odd_head_dims": ((1, 2, 2, 7, 9, 3, 5), lambda: {}),
    "weights": (
        (2, 1, 1, 19, 23, 4, 4),
        lambda: dict(return_weights=True, is_causal=True, key_padding_mask=mixed_padding(2, 23)),
    ),
    "weights_mean_gqa": (
        (2, 4, 2, 17, 20, 4, 4),
        lambda: dict(
            return_weights="mean",
            enable_gqa=True,
            is_causal=True,
            attn_mask=random_float_mask((2, 1, 17, 20), F64),
            key_padding_mask=mixed_padding(2, 20),
        ),
    ),
    "weights_bool_mask": (
        (1, 2, 1, 17, 20, 4, 4),
        lambda: dict(return_weights=True, enable_gqa=True, attn_mask=random_bool_mask((1, 2, 17, 20), empty_rows=[3])),
    ),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("case", list(GRADCHECK_CASES))
def test_gradcheck(name, case):
    shape, make_kwargs = GRADCHECK_CASES[case]
    batch, heads_q, heads_kv, seqlen_q, seqlen_k, head_dim, head_dim_v = shape
    q, k, v = make_qkv(batch, heads_q, seqlen_q, seqlen_k, head_dim, F64, heads_kv=heads_kv, head_dim_v=head_dim_v)
    kwargs = make_kwargs()
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
    with layout(name):
        assert torch.autograd.gradcheck(lambda *t: sdpa(*t, **kwargs), leaves, fast_mode=True)


@pytest.mark.parametrize("return_weights", [False, True, "mean"])
def test_gradcheck_dropout(return_weights):
    """The backward replays the forward's draws (several query blocks, one head at a time)."""
    q, k, v = make_qkv(2, 2, 37, 29, 4, F64, heads_kv=1)
    kwargs = dict(dropout_p=0.3, enable_gqa=True, is_causal=True, return_weights=return_weights)

    def fn(*leaves):
        with torch.random.fork_rng():
            torch.manual_seed(7)
            return sdpa(*leaves, **kwargs)

    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
    for name in ("default", "head_loop"):
        with layout(name):
            assert torch.autograd.gradcheck(fn, leaves, fast_mode=True)


# the kernels' odd cases, plus two that take the blocked road's plain and causal-with-padding routes
ODD_CASES = {
    **odd_gradient_cases(mixed_padding),
    "plain_97x129_d64": ((2, 2, 2, 97, 129, 64, 64), lambda dt: {}, False),
    "causal_padding_d64": (
        (2, 2, 2, 97, 97, 64, 64),
        lambda dt: dict(is_causal=True, key_padding_mask=mixed_padding(2, 97)),
        False,
    ),
}


@pytest.mark.parametrize("name", ["default", "one_block", "head_loop"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("case", list(ODD_CASES))
def test_low_precision_gradients(name, case, dtype):
    shape, make_kwargs, weights_in_loss = ODD_CASES[case]
    batch, heads_q, heads_kv, seqlen_q, seqlen_k, head_dim, head_dim_v = shape
    q, k, v = make_qkv(batch, heads_q, seqlen_q, seqlen_k, head_dim, dtype, heads_kv=heads_kv, head_dim_v=head_dim_v)
    with layout(name):
        check_grads(q, k, v, grad_weights=True if weights_in_loss else None, **make_kwargs(dtype))


@pytest.mark.parametrize("name", ["default", "row_blocks", "head_loop", "groups"])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
@pytest.mark.parametrize("causal", ["none", "top_left", "bottom_right"])
@pytest.mark.parametrize("padded", [False, True])
def test_every_mask_combination_gradients(name, mask_kind, causal, padded):
    """_direct's and the blocked function's backward (several query blocks), with and without
    weights in the loss; torch's fused backward is checked by test_low_precision_gradients and
    test_gradcheck."""
    batch, heads, seqlen_q, seqlen_k = 2, 2, 21, 35
    q, k, v = make_qkv(batch, heads, seqlen_q, seqlen_k, 16, torch.float32)
    kwargs = dict(return_weights=True)
    if mask_kind == "bool":
        kwargs["attn_mask"] = random_bool_mask((batch, heads, seqlen_q, seqlen_k), empty_rows=[7])
    elif mask_kind == "float":
        kwargs["attn_mask"] = random_float_mask((batch, 1, seqlen_q, seqlen_k), torch.float32)
    if causal != "none":
        kwargs.update(is_causal=True, causal_alignment=causal)
    if padded:
        kwargs["key_padding_mask"] = mixed_padding(batch, seqlen_k)
    with layout(name, "blocked"):
        check_grads(q, k, v, grad_weights=True, **kwargs)
        kwargs["return_weights"] = "mean"
        check_grads(q, k, v, grad_weights=True, **kwargs)
        del kwargs["return_weights"]
        check_grads(q, k, v, **kwargs)


def test_weights_returned_but_not_in_the_loss():
    """Weights returned only to be looked at change nothing; weights alone in the loss work too."""
    q, k, v = make_qkv(2, 1, 17, 20, 16, torch.float32)
    grad_out = torch.randn(2, 1, 17, 16)
    kwargs = dict(is_causal=True, key_padding_mask=mixed_padding(2, 20))
    with layout("row_blocks", "blocked"):
        plain = torch_grads(q, k, v, grad_out, **kwargs)
        for mode in (True, "mean"):
            looked_at = torch_grads(q, k, v, grad_out, return_weights=mode, **kwargs)
            for name, a, b in zip(("dq", "dk", "dv"), looked_at, plain):
                assert_equal(name, a, b)
        grad_weights = torch.randn(2, 17, 20)
        expected = check_grads(
            q, k, v, grad_out=torch.zeros_like(grad_out), grad_weights=grad_weights, return_weights="mean", **kwargs
        )
        leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
        _, weights = sdpa(*leaves, return_weights="mean", **kwargs)
        weights_only = torch.autograd.grad(weights, leaves, grad_weights)
    for name, a, b in zip(("dq", "dk", "dv"), weights_only, expected):
        assert (a - b).abs().max() < 1e-6, name


def test_non_contiguous_and_broadcast_incoming_gradients():
    q, k, v = make_qkv(1, 2, 21, 35, 24, torch.float32)
    grad_out = torch.randn(1, 21, 2, 24).transpose(1, 2)
    grad_weights = torch.randn(1, 21, 35, 2).permute(0, 3, 1, 2)
    kwargs = dict(return_weights=True, is_causal=True)
    with layout("head_loop"):
        strided = check_grads(q, k, v, grad_out=grad_out, grad_weights=grad_weights, **kwargs)
        contiguous = torch_grads(q, k, v, grad_out.contiguous(), grad_weights.contiguous(), **kwargs)
        for name, a, b in zip(("dq", "dk", "dv"), strided, contiguous):
            assert_equal(name, a, b)
        leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
        out, weights = sdpa(*leaves, return_weights="mean", is_causal=True)
        (out.sum() + weights.sum()).backward()
        expected = torch_grads(
            q, k, v, torch.ones(1, 2, 21, 24), torch.ones(1, 21, 35), return_weights="mean", is_causal=True
        )
    for name, a, b in zip(("dq", "dk", "dv"), (t.grad for t in leaves), expected):
        assert_equal(name, a, b)


def test_unbatched_inputs():
    q, k, v = make_qkv(1, 3, 20, 25, 16, torch.float32)
    grads = check_grads(q[0], k[0], v[0], grad_weights=True, return_weights="mean")
    assert grads[0].shape == (3, 20, 16)
    out, weights = sdpa(q[0], k[0], v[0], return_weights=True)
    full_out, full_weights = sdpa(q, k, v, return_weights=True)
    assert_equal("out", out, full_out[0])
    assert_equal("weights", weights, full_weights[0])


def test_deterministic():
    q, k, v = make_qkv(1, 4, 33, 40, 16, torch.float16, heads_kv=1)
    grad_out = torch.randn(1, 4, 33, 16, dtype=torch.float16)
    grad_weights = torch.randn(1, 33, 40, dtype=torch.float16)
    kwargs = dict(enable_gqa=True, is_causal=True, return_weights="mean", key_padding_mask=mixed_padding(1, 40))
    with layout("head_loop"):
        first, second = (torch_grads(q, k, v, grad_out, grad_weights, **kwargs) for _ in range(2))
    for name, a, b in zip(("dq", "dk", "dv"), first, second):
        assert_equal(name, a, b)


# ---------------------------------------------------------------------------------------------
# dropout
# ---------------------------------------------------------------------------------------------


def _dropout_call(q, k, v, seed, **kwargs):
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    torch.manual_seed(seed)
    out, weights = sdpa(q, k, v, **kwargs)
    grads = torch.autograd.grad((out, weights), (q, k, v), (torch.cos(out), torch.sin(weights)))
    return (out, weights, *grads)


@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("return_weights", [True, "mean"])
def test_dropout_matches_reference_given_the_same_mask(name, return_weights):
    """``attnlens.dropout_mask`` returns the pattern a call used (several query blocks in the
    tiny layouts); the reference given that mask reproduces output, weights and gradients."""
    q, k, v = make_qkv(2, 2, 37, 35, 8, F64, heads_kv=1)
    kwargs = dict(
        dropout_p=0.3,
        enable_gqa=True,
        is_causal=True,
        key_padding_mask=mixed_padding(2, 35),
        return_weights=return_weights,
    )
    with layout(name):
        out, weights, *grads = _dropout_call(q, k, v, 11, **kwargs)
        torch.manual_seed(11)
        keep = attnlens.dropout_mask(q, k, 0.3)
    assert keep.shape == (2, 2, 37, 35) and keep.dtype == torch.bool
    assert 0.6 < keep.double().mean() < 0.8
    if return_weights is True:
        assert (weights[~keep] == 0).all()
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
    ref_out, ref_weights = reference_sdpa(*leaves, dropout_mask=keep, **kwargs)
    ref_grads = torch.autograd.grad((ref_out, ref_weights), leaves, (torch.cos(ref_out), torch.sin(ref_weights)))
    for label, a, b in zip(
        ("out", "weights", "dq", "dk", "dv"), (out, weights, *grads), (ref_out, ref_weights, *ref_grads)
    ):
        assert (a - b).abs().max() < 1e-12, f"{label} differs from the reference by {(a - b).abs().max():.3g}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dropout_half_precision_gradients(dtype):
    q, k, v = make_qkv(1, 2, 45, 70, 32, dtype)
    kwargs = dict(dropout_p=0.2, is_causal=True, return_weights="mean")
    grad_out = torch.randn(1, 2, 45, 32, dtype=dtype)
    grad_weights = torch.randn(1, 45, 70, dtype=dtype)
    with layout("row_blocks"):
        torch.manual_seed(5)
        grads = torch_grads(q, k, v, grad_out, grad_weights, **kwargs)
        torch.manual_seed(5)
        keep = attnlens.dropout_mask(q, k, 0.2)
    exact = reference_grads(q, k, v, grad_out, grad_weights, F64, dropout_mask=keep, **kwargs)
    lowp = reference_grads(q, k, v, grad_out, grad_weights, dtype, dropout_mask=keep, **kwargs)
    for name, got, ex, lo in zip(("dq", "dk", "dv"), grads, exact, lowp):
        assert_rule(name, got, ex, lo, factor=3.0)


def test_the_pattern_depends_on_the_shapes_only():
    """The same seed drops the same entries whatever the masks and the weights asked for, so
    ``dropout_mask(q, k, p)`` needs no more than the shapes."""
    q, k, v = make_qkv(2, 3, 40, 33, 8, torch.float32)
    with layout("row_blocks"):
        torch.manual_seed(2)
        keep = attnlens.dropout_mask(q, k, 0.5)
        for kwargs in (dict(), dict(is_causal=True), dict(key_padding_mask=mixed_padding(2, 33), is_causal=True)):
            torch.manual_seed(2)
            _, weights = sdpa(q, k, v, dropout_p=0.5, return_weights=True, **kwargs)
            assert (weights[~keep] == 0).all()
            torch.manual_seed(2)
            out = sdpa(q, k, v, dropout_p=0.5, **kwargs)
            expected = reference_sdpa(q, k, v, dropout_p=0.5, dropout_mask=keep, **kwargs)
            assert (out - expected).abs().max() < 1e-5


def test_one_block_draws_what_the_reference_draws():
    """A call of one query block draws ``torch.rand([B, Hq, Nq, Nk])`` from its seed's
    generator: the reference's draw."""
    q, k, _ = make_qkv(2, 3, 10, 12, 8, torch.float32)
    assert blocked.block_rows(6, 10, 12) == 10
    torch.manual_seed(4)
    keep = attnlens.dropout_mask(q, k, 0.4)
    torch.manual_seed(4)
    generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))
    assert_equal("pattern", keep, torch.rand(2, 3, 10, 12, generator=generator) >= 0.4)


def test_manual_seed_reproduces_dropout_and_zero_leaves_the_generator_alone():
    q, k, v = make_qkv(1, 2, 17, 20, 8, torch.float32)
    first, second, other = (_dropout_call(q, k, v, seed, dropout_p=0.4, return_weights=True) for seed in (1, 1, 2))
    for name, a, b in zip(("out", "weights", "dq", "dk", "dv"), first, second):
        assert_equal(name, a, b)
    assert not torch.equal(first[1] == 0, other[1] == 0)
    state = torch.get_rng_state()
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
    out, weights = sdpa(*leaves, dropout_p=0.0, return_weights=True)
    (out.sum() + weights.sum()).backward()
    assert torch.equal(state, torch.get_rng_state())


def test_dropout_one_drops_everything():
    q, k, v = make_qkv(1, 2, 9, 11, 8, torch.float32)
    dq, dk, dv = torch_grads(
        q, k, v, torch.randn(1, 2, 9, 8), torch.randn(1, 2, 9, 11), dropout_p=1.0, return_weights=True
    )
    out, weights = sdpa(q, k, v, dropout_p=1.0, return_weights=True)
    assert (out == 0).all() and (weights == 0).all()
    for g in (dq, dk, dv):
        assert (g == 0).all()


@pytest.mark.parametrize("dropout_p", [0.1, 0.5])
def test_kept_fraction(dropout_p):
    q, k, _ = make_qkv(1, 2, 256, 512, 8, torch.float32)
    keep = attnlens.dropout_mask(q, k, dropout_p)
    fraction = keep.double().mean().item()
    assert abs(fraction - (1 - dropout_p)) <= 0.01 * (1 - dropout_p), fraction


def test_float_mask_requiring_grad_is_refused():
    q, k, v = make_qkv(1, 2, 5, 6, 8, torch.float32)
    bias = torch.randn(5, 6, requires_grad=True)
    with pytest.raises(ValueError, match="attn_mask"):
        sdpa(q, k, v, attn_mask=bias)


@pytest.mark.parametrize("held", ["held", "modified", "dropped"])
def test_backward_reads_the_weights_only_while_they_are_unchanged(held):
    """The blocked backward reads per-head weights the caller still holds unchanged instead of
    recomputing them; modified or dropped weights are recomputed: the same gradients every way."""
    q, k, v = make_qkv(2, 2, 37, 41, 16, torch.float32)
    grad_out = torch.randn(2, 2, 37, 16)
    kwargs = dict(is_causal=True, key_padding_mask=mixed_padding(2, 41), return_weights=True)
    with layout("row_blocks"):
        expected = check_grads(q, k, v, grad_out=grad_out, **kwargs)
        leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
        out, weights = sdpa(*leaves, **kwargs)
        if held == "modified":
            weights.mul_(2.0)
        elif held == "dropped":
            del weights
        grads = torch.autograd.grad(out, leaves, grad_out)
    for name, a, b in zip(("dq", "dk", "dv"), grads, expected):
        assert (a - b).abs().max() < 1e-6, name
