"""The fused backward kernels (dQ, dK, dV), gradients through the returned weights, dropout,
determinism and torch.compile.

- ``torch.autograd.gradcheck`` in float64 through the kernels for every mask, both causal
  alignments, GQA, Nq != Nk, odd head dims, weights in the loss (per head and head mean), dropout
  and rows with nothing to attend to.
- fp16 and fp32 gradients against a float64 reference with flash-attn's rule: the kernel's error
  may be at most 3x that of the same maths done in the input dtype, plus a rounding floor.
- Small tiles (``override_config(block_m=16, block_n=16)``) so that short sequences still run
  several query and key blocks, the GQA head loop, causal block skipping and ragged edges.

Every check goes through the kernels: ``kernel_grads`` forces ``use_backend("kernels")`` and the
gradcheck helper also counts calls of the fused backward launcher.
"""

from __future__ import annotations

import contextlib
import functools
from unittest import mock

import pytest
import torch

import attnlens
from attnlens import _ops
from attnlens.kernels import launch_dropout_mask, override_config
from attnlens.reference import scaled_dot_product_attention as reference_sdpa
from helpers import (
    DEVICE,
    assert_equal,
    assert_rule,
    check_grads,
    kernel_grads,
    make_qkv,
    odd_gradient_cases,
    poisoned_like,
    random_bool_mask,
    random_float_mask,
    reference_grads,
)

SMALL_TILES = dict(block_m=16, block_n=16)
F64 = torch.float64
# tensors on the device the kernels run on (the CPU here, through the interpreter; CUDA on a GPU)
randn = functools.partial(torch.randn, device=DEVICE)
zeros = functools.partial(torch.zeros, device=DEVICE)
ones = functools.partial(torch.ones, device=DEVICE)


def rng_state():
    """The state of the generator the dropout seed is drawn from."""
    return torch.cuda.get_rng_state(DEVICE) if DEVICE.type == "cuda" else torch.get_rng_state()


@contextlib.contextmanager
def fused_backward_calls():
    """Count the calls of the fused backward launcher made inside the block."""
    calls = []
    real = _ops.launch_backward

    def spy(*args, **kwargs):
        calls.append(args[0].dtype)
        return real(*args, **kwargs)

    with mock.patch.object(_ops, "launch_backward", spy):
        yield calls


def tiles(config):
    return override_config(**config) if config else contextlib.nullcontext()


def padding(batch, seqlen_k):
    """Right padding in batch 0; in batch 1 left padding past a whole 16-key block and every
    fifth key after it (padded keys inside the unpadded range)."""
    pad = torch.zeros(batch, seqlen_k, dtype=torch.bool, device=DEVICE)
    pad[0, seqlen_k - seqlen_k // 3 :] = True
    if batch > 1:
        pad[1, : max(1, seqlen_k // 2)] = True
        pad[1, seqlen_k // 2 + 2 :: 5] = True
    return pad


def inputs(shape, dtype):
    batch, heads_q, heads_kv, seqlen_q, seqlen_k, head_dim, head_dim_v = shape
    return make_qkv(batch, heads_q, seqlen_q, seqlen_k, head_dim, dtype, heads_kv=heads_kv, head_dim_v=head_dim_v)


def gradcheck(q, k, v, config=None, dropout_seed=None, fast=True, **kwargs):
    """gradcheck of ``attnlens.scaled_dot_product_attention(q, k, v, **kwargs)`` (every output,
    so the weights too when returned) through the fused backward. With ``dropout_seed`` every
    evaluation starts from that seed, so the dropout pattern is the same each time."""
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))

    def fn(q, k, v):
        with contextlib.ExitStack() as stack:
            if dropout_seed is not None:
                stack.enter_context(torch.random.fork_rng())
                torch.manual_seed(dropout_seed)
            return attnlens.scaled_dot_product_attention(q, k, v, **kwargs)

    with attnlens.use_backend("kernels"), tiles(config), fused_backward_calls() as calls:
        assert torch.autograd.gradcheck(fn, (q, k, v), fast_mode=fast)
    assert calls and set(calls) == {F64}, "the fused backward was not used"


# ---------------------------------------------------------------------------------------------
# gradcheck (float64)
# ---------------------------------------------------------------------------------------------

# name: ((B, Hq, Hkv, Nq, Nk, D, Dv), keyword arguments (built after seeding), tiles)
GRADCHECK_CASES = {
    "no_mask": ((2, 2, 2, 9, 9, 8, 8), lambda: {}, None),
    "no_mask_blocks": ((1, 1, 1, 17, 33, 8, 8), lambda: {}, SMALL_TILES),
    "nq_lt_nk": ((1, 1, 1, 5, 19, 8, 8), lambda: {}, None),
    "nq_gt_nk": ((1, 1, 1, 19, 5, 8, 8), lambda: {}, None),
    "causal_top_left_nq_lt_nk": ((1, 1, 1, 17, 33, 4, 4), lambda: dict(is_causal=True), SMALL_TILES),
    "causal_top_left_nq_gt_nk": ((1, 1, 1, 33, 17, 4, 4), lambda: dict(is_causal=True), SMALL_TILES),
    "causal_bottom_right_nq_lt_nk": (
        (1, 1, 1, 17, 33, 4, 4),
        lambda: dict(is_causal=True, causal_alignment="bottom_right"),
        SMALL_TILES,
    ),
    # rows 0..15 see no key: constant zero output, zero gradient
    "causal_bottom_right_nq_gt_nk": (
        (1, 1, 1, 33, 17, 4, 4),
        lambda: dict(is_causal=True, causal_alignment="bottom_right"),
        SMALL_TILES,
    ),
    "key_padding": ((2, 1, 1, 13, 35, 5, 5), lambda: dict(key_padding_mask=padding(2, 35)), SMALL_TILES),
    "bool_mask": (
        (2, 2, 2, 11, 13, 4, 4),
        lambda: dict(attn_mask=random_bool_mask((2, 2, 11, 13), empty_rows=[0, 5])),
        None,
    ),
    "float_mask_broadcast": ((2, 2, 2, 11, 13, 4, 4), lambda: dict(attn_mask=random_float_mask((11, 13), F64)), None),
    "gqa_2_to_1": ((1, 4, 2, 11, 13, 8, 8), lambda: dict(enable_gqa=True, is_causal=True), None),
    "gqa_blocks": (
        (1, 2, 1, 17, 20, 4, 4),
        lambda: dict(enable_gqa=True, is_causal=True, causal_alignment="bottom_right"),
        SMALL_TILES,
    ),
    "odd_head_dims": ((1, 2, 2, 7, 9, 3, 5), lambda: {}, None),
    "head_dim_1": ((1, 1, 1, 5, 6, 1, 1), lambda: dict(is_causal=True), None),
    "weights": (
        (2, 1, 1, 9, 13, 4, 4),
        lambda: dict(return_weights=True, is_causal=True, key_padding_mask=padding(2, 13)),
        None,
    ),
    "weights_mean": (
        (1, 2, 1, 9, 13, 4, 4),
        lambda: dict(return_weights="mean", enable_gqa=True, attn_mask=random_bool_mask((1, 2, 9, 13), empty_rows=[3])),
        None,
    ),
    "weights_blocks": (
        (1, 2, 1, 17, 20, 4, 4),
        lambda: dict(
            return_weights=True,
            enable_gqa=True,
            is_causal=True,
            causal_alignment="bottom_right",
            key_padding_mask=padding(1, 20),
        ),
        SMALL_TILES,
    ),
    "weights_mean_blocks": (
        (1, 2, 1, 17, 20, 4, 4),
        lambda: dict(
            return_weights="mean",
            enable_gqa=True,
            is_causal=True,
            attn_mask=random_float_mask((1, 1, 17, 20), F64),
            key_padding_mask=padding(1, 20),
        ),
        SMALL_TILES,
    ),
}


@pytest.mark.parametrize("name", list(GRADCHECK_CASES))
def test_gradcheck(name):
    shape, make_kwargs, config = GRADCHECK_CASES[name]
    q, k, v = inputs(shape, F64)
    gradcheck(q, k, v, config=config, **make_kwargs())


def test_gradcheck_full_jacobian_with_weights():
    """Every entry of the Jacobian (not gradcheck's fast random projection), output and weights."""
    q, k, v = make_qkv(1, 1, 2, 3, 2, F64)
    gradcheck(q, k, v, fast=False, return_weights=True, is_causal=True, causal_alignment="bottom_right")


@pytest.mark.parametrize("return_weights", [True, "mean"])
def test_gradcheck_dropout(return_weights):
    """The backward regenerates the forward's dropout pattern (multi-block consistency of the
    pattern is checked against the reference in test_dropout_matches_reference_given_the_same_mask)."""
    q, k, v = make_qkv(1, 2, 7, 9, 4, F64, heads_kv=1)
    gradcheck(q, k, v, dropout_seed=7, dropout_p=0.3, enable_gqa=True, is_causal=True, return_weights=return_weights)


# ---------------------------------------------------------------------------------------------
# fp16 and fp32 against a float64 reference (flash-attn's 3x rule)
# ---------------------------------------------------------------------------------------------

ODD_CASES = odd_gradient_cases(padding)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("name", list(ODD_CASES))
def test_low_precision_gradients(name, dtype):
    shape, make_kwargs, weights_in_loss = ODD_CASES[name]
    q, k, v = inputs(shape, dtype)
    check_grads(q, k, v, grad_weights=True if weights_in_loss else None, **make_kwargs(dtype))


@pytest.mark.parametrize("padded", [False, True], ids=["no_padding", "padding"])
@pytest.mark.parametrize("causal", ["none", "top_left", "bottom_right"])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
def test_every_mask_combination(mask_kind, causal, padded):
    """16x16 tiles: several query and key blocks, the diagonal and the ragged edge; weights in the loss."""
    batch, heads, seqlen_q, seqlen_k = 2, 1, 21, 35
    q, k, v = make_qkv(batch, heads, seqlen_q, seqlen_k, 16, torch.float32)
    kwargs = dict(return_weights=True)
    if mask_kind == "bool":
        kwargs["attn_mask"] = random_bool_mask((batch, heads, seqlen_q, seqlen_k), empty_rows=[7])
    elif mask_kind == "float":
        kwargs["attn_mask"] = random_float_mask((batch, 1, seqlen_q, seqlen_k), torch.float32)
    if causal != "none":
        kwargs.update(is_causal=True, causal_alignment=causal)
    if padded:
        kwargs["key_padding_mask"] = padding(batch, seqlen_k)
    with override_config(**SMALL_TILES):
        check_grads(q, k, v, grad_weights=True, **kwargs)


@pytest.mark.parametrize("seqlen_q,seqlen_k", [(32, 48), (48, 32)])
@pytest.mark.parametrize("alignment", ["top_left", "bottom_right"])
def test_lengths_that_divide_the_blocks(seqlen_q, seqlen_k, alignment):
    """EVEN_M / EVEN_N: the unchecked loads and loops, with several blocks each way."""
    q, k, v = make_qkv(2, 2, seqlen_q, seqlen_k, 16, torch.float32, heads_kv=1)
    kwargs = dict(
        enable_gqa=True,
        is_causal=True,
        causal_alignment=alignment,
        key_padding_mask=padding(2, seqlen_k),
        return_weights=True,
    )
    with override_config(**SMALL_TILES):
        check_grads(q, k, v, grad_weights=True, **kwargs)


def test_weights_returned_but_not_in_the_loss():
    """Weights returned only to be looked at change nothing; weights alone in the loss work too."""
    q, k, v = make_qkv(2, 1, 17, 20, 16, torch.float32)
    grad_out = randn(2, 1, 17, 16)
    kwargs = dict(is_causal=True, key_padding_mask=padding(2, 20))
    with override_config(**SMALL_TILES):
        plain = kernel_grads(q, k, v, grad_out, **kwargs)
        for mode in (True, "mean"):
            looked_at = kernel_grads(q, k, v, grad_out, return_weights=mode, **kwargs)
            for name, a, b in zip(("dq", "dk", "dv"), looked_at, plain):
                assert_equal(name, a, b)
        grad_weights = randn(2, 17, 20)
        expected = check_grads(
            q, k, v, grad_out=torch.zeros_like(grad_out), grad_weights=grad_weights, return_weights="mean", **kwargs
        )
        leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
        with attnlens.use_backend("kernels"):
            _, weights = attnlens.scaled_dot_product_attention(*leaves, return_weights="mean", **kwargs)
        weights_only = torch.autograd.grad(weights, leaves, grad_weights)  # the output gets no gradient
    for name, a, b in zip(("dq", "dk", "dv"), weights_only, expected):
        assert_equal(name, a, b)


def test_gpu_tile_shapes():
    """The block shapes the GPU tables use (and unequal ones), through the interpreter."""
    q, k, v = make_qkv(2, 2, 40, 70, 32, torch.float16, heads_kv=1)
    kwargs = dict(
        enable_gqa=True,
        is_causal=True,
        causal_alignment="bottom_right",
        key_padding_mask=padding(2, 70),
        return_weights="mean",
    )
    grad_out = randn(2, 2, 40, 32, dtype=torch.float16)
    grad_weights = randn(2, 40, 70, dtype=torch.float16)
    for block_m, block_n in [(16, 32), (32, 16), (64, 32), (32, 128)]:
        with override_config(block_m=block_m, block_n=block_n):
            check_grads(q, k, v, grad_out=grad_out, grad_weights=grad_weights, **kwargs)


def test_value_head_dim_differs():
    q, k, v = make_qkv(2, 2, 45, 53, 24, torch.float32, head_dim_v=59)
    with override_config(**SMALL_TILES):
        check_grads(q, k, v, grad_weights=True, return_weights=True, is_causal=True)


def test_unbatched_inputs():
    q, k, v = make_qkv(1, 3, 20, 25, 16, torch.float32)
    grads = check_grads(q[0], k[0], v[0], grad_weights=True, return_weights="mean")
    assert grads[0].shape == (3, 20, 16)


def test_scaled_inputs_give_finite_fp16_gradients():
    q, k, v = make_qkv(2, 2, 100, 120, 64, torch.float16)
    grads = check_grads(q * 5, k * 3, v, grad_weights=True, return_weights=True)
    for g in grads:
        assert torch.isfinite(g).all()


# ---------------------------------------------------------------------------------------------
# rows with nothing to attend to
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["bool_rows", "float_rows", "padded_batch", "bottom_right", "all_false"])
def test_rows_with_nothing_to_attend_to_get_zero_gradients(case):
    batch, heads, seqlen_q, seqlen_k = 2, 2, 20, 24
    if case == "bottom_right":
        seqlen_q, seqlen_k = 37, 21
    q, k, v = make_qkv(batch, heads, seqlen_q, seqlen_k, 8, torch.float32)
    kwargs = dict(return_weights=True)
    empty = zeros(batch, heads, seqlen_q, dtype=torch.bool)
    if case == "bool_rows":
        kwargs["attn_mask"] = random_bool_mask((seqlen_q, seqlen_k), empty_rows=[0, 9, 19])
        empty[:, :, [0, 9, 19]] = True
    elif case == "float_rows":
        mask = randn(batch, 1, seqlen_q, seqlen_k)
        mask[1, :, 3] = float("-inf")
        kwargs["attn_mask"] = mask
        empty[1, :, 3] = True
    elif case == "padded_batch":
        pad = zeros(batch, seqlen_k, dtype=torch.bool)
        pad[1] = True
        kwargs["key_padding_mask"] = pad
        empty[1] = True
    elif case == "bottom_right":
        kwargs.update(is_causal=True, causal_alignment="bottom_right")
        empty[:, :, : seqlen_q - seqlen_k] = True
    else:
        kwargs["attn_mask"] = zeros(seqlen_q, seqlen_k, dtype=torch.bool)
        empty[:] = True
    with override_config(**SMALL_TILES):
        dq, dk, dv = check_grads(q, k, v, grad_weights=True, **kwargs)
    assert empty.any()
    assert (dq[empty] == 0).all(), "a row with nothing to attend to got a query gradient"
    if case in ("padded_batch", "all_false"):
        rows = slice(1, 2) if case == "padded_batch" else slice(None)
        assert (dk[rows] == 0).all() and (dv[rows] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weights_in_loss", [False, True])
def test_huge_negative_bias_rows_get_the_softmax_gradients(dtype, weights_in_loss):
    """Rows of -1e9 and of torch.finfo(float32).min biases are softmaxed as torch does (not
    emptied), and their gradients come from probabilities recomputed exactly although the row
    max is huge (saving m + log(l) in fp32 would make every recomputed weight 1)."""
    q, k, v = make_qkv(2, 2, 20, 24, 8, dtype)
    bias = randn(1, 1, 20, 24).to(dtype)
    bias[..., 3, :] = -1e9
    bias[..., 7, :] = torch.finfo(torch.float32).min
    bias[..., 11, :] = -1e30
    bias[..., 12, ::3] = torch.finfo(torch.float32).min
    bias[..., 15, :] = float("-inf")
    kwargs = dict(attn_mask=bias, return_weights=True)
    with override_config(**SMALL_TILES):
        dq, dk, dv = check_grads(q, k, v, grad_weights=True if weights_in_loss else None, **kwargs)
        assert (dq[:, :, 15] == 0).all()
        assert dq[:, :, [3, 7, 11]].abs().amax() > 0  # not treated as empty rows
        with attnlens.use_backend("kernels"):
            _, weights = attnlens.scaled_dot_product_attention(q, k, v, **kwargs)
    assert (weights[:, :, 7] - 1 / 24).abs().max() < 1e-6
    assert (weights[:, :, [3, 7, 11, 12]].sum(-1) - 1).abs().max() < 1e-5


def test_zero_length_sequences():
    for seqlen_q, seqlen_k in [(0, 7), (7, 0)]:
        q, k, v = make_qkv(2, 2, seqlen_q, seqlen_k, 8, torch.float32)
        grad_out = randn(2, 2, seqlen_q, 8)
        grad_weights = randn(2, 2, seqlen_q, seqlen_k)
        dq, dk, dv = kernel_grads(q, k, v, grad_out, grad_weights, return_weights=True)
        assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape
        for g in (dq, dk, dv):
            assert (g == 0).all()


# ---------------------------------------------------------------------------------------------
# layouts, poisoned memory, determinism
# ---------------------------------------------------------------------------------------------


def test_non_contiguous_incoming_gradients():
    """grad_out a transposed [B, N, H, D] view and the weights' gradient a permuted view: the
    same gradients, bit for bit, as with contiguous copies, and right against the reference."""
    q, k, v = make_qkv(1, 2, 21, 35, 24, torch.float32)
    grad_out = randn(1, 21, 2, 24).transpose(1, 2)
    grad_weights = randn(1, 21, 35, 2).permute(0, 3, 1, 2)
    assert not grad_out.is_contiguous() and not grad_weights.is_contiguous()
    kwargs = dict(return_weights=True, is_causal=True)
    with override_config(**SMALL_TILES):
        strided = check_grads(q, k, v, grad_out=grad_out, grad_weights=grad_weights, **kwargs)
        contiguous = kernel_grads(q, k, v, grad_out.contiguous(), grad_weights.contiguous(), **kwargs)
    for name, a, b in zip(("dq", "dk", "dv"), strided, contiguous):
        assert_equal(name, a, b)


def test_broadcast_incoming_gradients():
    """``out.sum() + weights.sum()`` hands the backward stride-0 gradients of ones."""
    q, k, v = make_qkv(2, 2, 21, 27, 16, torch.float32, requires_grad=True)
    with attnlens.use_backend("kernels"), override_config(**SMALL_TILES):
        out, weights = attnlens.scaled_dot_product_attention(q, k, v, return_weights="mean", is_causal=True)
        (out.sum() + weights.sum()).backward()
        expected = kernel_grads(q, k, v, ones(2, 2, 21, 16), ones(2, 21, 27), return_weights="mean", is_causal=True)
    for name, a, b in zip(("dq", "dk", "dv"), (q.grad, k.grad, v.grad), expected):
        assert_equal(name, a, b)


def test_transposed_inputs():
    """q, k, v as transposed [B, N, H, D] views: read in place, gradients laid out like them."""
    b, n, h, d = 2, 21, 2, 16
    q = randn(b, n, h, d).transpose(1, 2)
    k = randn(b, n + 8, h, d).transpose(1, 2)
    v = randn(b, n + 8, h, d).transpose(1, 2)
    grad_out = randn(b, h, n, d)
    kwargs = dict(is_causal=True, return_weights=True)
    grad_weights = randn(b, h, n, n + 8)
    with override_config(**SMALL_TILES):
        strided = check_grads(q, k, v, grad_out=grad_out, grad_weights=grad_weights, **kwargs)
        contiguous = kernel_grads(q.contiguous(), k.contiguous(), v.contiguous(), grad_out, grad_weights, **kwargs)
    for name, a, b_ in zip(("dq", "dk", "dv"), strided, contiguous):
        assert_equal(name, a, b_)
        assert a.transpose(1, 2).is_contiguous(), f"{name} is not laid out like its input"


def test_poisoned_memory_is_never_read():
    """Inputs, incoming gradients and masks are views into NaN-filled buffers; the gradients must
    be finite and equal to those from clean contiguous tensors."""
    q, k, v = make_qkv(2, 2, 21, 35, 24, torch.float32, heads_kv=1)
    grad_out = randn(2, 2, 21, 24)
    grad_weights = randn(2, 2, 21, 35)
    mask = randn(2, 2, 21, 35)
    pad = padding(2, 35)
    kwargs = dict(is_causal=True, causal_alignment="bottom_right", enable_gqa=True, return_weights=True)
    with override_config(block_m=16, block_n=32):
        clean = kernel_grads(q, k, v, grad_out, grad_weights, attn_mask=mask, key_padding_mask=pad, **kwargs)
        dirty = kernel_grads(
            poisoned_like(q, (1, 1, 7, 9)),
            poisoned_like(k, (1, 2, 5, 3)),
            poisoned_like(v, (2, 1, 11, 5)),
            poisoned_like(grad_out, (1, 1, 4, 6)),
            poisoned_like(grad_weights, (1, 1, 3, 13)),
            attn_mask=poisoned_like(mask, (1, 1, 3, 13)),
            key_padding_mask=poisoned_like(pad, (1, 6)),
            **kwargs,
        )
    for name, a, b in zip(("dq", "dk", "dv"), dirty, clean):
        assert torch.isfinite(a).all(), f"{name} has NaN"
        assert_equal(name, a, b)


def test_deterministic():
    """Two runs, bitwise-identical gradients (GQA 4:1: dK/dV summed over the group's heads)."""
    q, k, v = make_qkv(1, 4, 33, 40, 16, torch.float16, heads_kv=1)
    grad_out = randn(1, 4, 33, 16, dtype=torch.float16)
    grad_weights = randn(1, 33, 40, dtype=torch.float16)
    kwargs = dict(enable_gqa=True, is_causal=True, return_weights="mean", key_padding_mask=padding(1, 40))
    with override_config(**SMALL_TILES):
        first, second = (kernel_grads(q, k, v, grad_out, grad_weights, **kwargs) for _ in range(2))
    for name, a, b in zip(("dq", "dk", "dv"), first, second):
        assert_equal(name, a, b)


# ---------------------------------------------------------------------------------------------
# dropout
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dropout_p", [0.1, 0.5])
def test_kept_fraction(dropout_p):
    keep = launch_dropout_mask(torch.tensor([20240601], dtype=torch.int64, device=DEVICE), 1, 2, 256, 512, dropout_p)
    fraction = keep.double().mean().item()
    assert abs(fraction - (1 - dropout_p)) <= 0.01 * (1 - dropout_p), fraction
    # not one pattern repeated: heads, rows and columns differ
    assert not torch.equal(keep[0, 0], keep[0, 1])
    assert not torch.equal(keep[0, 0, 0], keep[0, 0, 1])
    assert not torch.equal(keep[0, 0, :, 0], keep[0, 0, :, 1])


def _dropout_call(q, k, v, seed, **kwargs):
    """(out, weights, dq, dk, dv) of one attention call with dropout started from ``seed``."""
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    torch.manual_seed(seed)
    out, weights = attnlens.scaled_dot_product_attention(q, k, v, **kwargs)
    grads = torch.autograd.grad((out, weights), (q, k, v), (torch.cos(out), torch.sin(weights)))
    return (out, weights, *grads)


@pytest.mark.parametrize("backend", ["kernels", "reference"])
def test_dropout_matches_reference_given_the_same_mask(backend):
    """``attnlens.dropout_mask`` returns the pattern a call used; the reference given that mask
    reproduces the output, the (post-dropout) weights and the gradients."""
    q, k, v = make_qkv(2, 2, 21, 35, 8, F64, heads_kv=1)
    kwargs = dict(dropout_p=0.3, enable_gqa=True, is_causal=True, key_padding_mask=padding(2, 35), return_weights=True)
    with attnlens.use_backend(backend), override_config(**SMALL_TILES):
        out, weights, *grads = _dropout_call(q, k, v, 11, **kwargs)
        torch.manual_seed(11)
        keep = attnlens.dropout_mask(q, k, 0.3)
    assert keep.shape == (2, 2, 21, 35) and keep.dtype == torch.bool
    assert 0.6 < keep.double().mean() < 0.8
    assert (weights[~keep] == 0).all()
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
    ref_out, ref_weights = reference_sdpa(*leaves, dropout_mask=keep, **kwargs)
    ref_grads = torch.autograd.grad((ref_out, ref_weights), leaves, (torch.cos(ref_out), torch.sin(ref_weights)))
    for name, a, b in zip(
        ("out", "weights", "dq", "dk", "dv"), (out, weights, *grads), (ref_out, ref_weights, *ref_grads)
    ):
        assert (a - b).abs().max() < 1e-12, f"{name} differs from the reference by {(a - b).abs().max():.3g}"


def test_dropout_mask_of_unbatched_inputs():
    q, k, _ = make_qkv(1, 2, 5, 7, 4, torch.float32)
    torch.manual_seed(3)
    unbatched = attnlens.dropout_mask(q[0], k[0], 0.5)
    torch.manual_seed(3)
    batched = attnlens.dropout_mask(q, k, 0.5)
    assert_equal("mask", unbatched, batched[0])
    assert attnlens.dropout_mask(q, k, 0.0).all()
    with pytest.raises(ValueError, match="dropout_p"):
        attnlens.dropout_mask(q, k, 1.5)


@pytest.mark.parametrize("return_weights", [True, "mean"])
def test_dropout_fp16_gradients(return_weights):
    """fp16 gradients with dropout against the float64 reference given the same mask (3x rule)."""
    q, k, v = make_qkv(1, 2, 45, 70, 32, torch.float16)
    kwargs = dict(dropout_p=0.2, is_causal=True, return_weights=return_weights)
    grad_out = randn(1, 2, 45, 32, dtype=torch.float16)
    grad_weights = randn((1, 45, 70) if return_weights == "mean" else (1, 2, 45, 70), dtype=torch.float16)
    with override_config(**SMALL_TILES):
        torch.manual_seed(5)
        grads = kernel_grads(q, k, v, grad_out, grad_weights, **kwargs)
        torch.manual_seed(5)
        keep = attnlens.dropout_mask(q, k, 0.2)
    exact = reference_grads(q, k, v, grad_out, grad_weights, F64, dropout_mask=keep, **kwargs)
    lowp = reference_grads(q, k, v, grad_out, grad_weights, torch.float16, dropout_mask=keep, **kwargs)
    for name, got, ex, lo in zip(("dq", "dk", "dv"), grads, exact, lowp):
        assert_rule(name, got, ex, lo, factor=3.0)


def test_manual_seed_reproduces_dropout():
    q, k, v = make_qkv(1, 2, 17, 20, 8, torch.float32)
    kwargs = dict(dropout_p=0.4, return_weights=True)
    first, second, other = (_dropout_call(q, k, v, seed, **kwargs) for seed in (1, 1, 2))
    for name, a, b in zip(("out", "weights", "dq", "dk", "dv"), first, second):
        assert_equal(name, a, b)
    assert not torch.equal(first[1] == 0, other[1] == 0), "another seed gave the same dropout pattern"


def test_dropout_zero_leaves_the_generator_alone():
    q, k, v = make_qkv(1, 2, 9, 11, 8, torch.float32, requires_grad=True)
    state = rng_state()
    out, weights = attnlens.scaled_dot_product_attention(q, k, v, dropout_p=0.0, return_weights=True)
    (out.sum() + weights.sum()).backward()
    assert torch.equal(state, rng_state())
    attnlens.scaled_dot_product_attention(q, k, v, dropout_p=0.1)
    assert not torch.equal(state, rng_state()), "dropout_p > 0 should draw a seed"


def test_dropout_one_drops_everything():
    q, k, v = make_qkv(1, 2, 9, 11, 8, torch.float32)
    grad_out, grad_weights = randn(1, 2, 9, 8), randn(1, 2, 9, 11)
    dq, dk, dv = kernel_grads(q, k, v, grad_out, grad_weights, dropout_p=1.0, return_weights=True)
    out, weights = attnlens.scaled_dot_product_attention(q, k, v, dropout_p=1.0, return_weights=True)
    assert (out == 0).all() and (weights == 0).all()
    for g in (dq, dk, dv):
        assert (g == 0).all()


# ---------------------------------------------------------------------------------------------
# torch.compile, masks are constants
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "return_weights,dropout_p",
    [(False, 0.0), (True, 0.0), ("mean", 0.0), (True, 0.3)],
    ids=["out", "weights", "mean_weights", "weights_dropout"],
)
def test_torch_compile_matches_eager(return_weights, dropout_p):
    """forward (with or without weights, with dropout) + loss + backward, traced with
    fullgraph=True; the same seed gives the same dropout pattern compiled and eager."""
    torch._dynamo.reset()
    q, k, v = make_qkv(2, 4, 19, 23, 8, torch.float32, heads_kv=2)
    grad_out = randn(2, 4, 19, 8)
    pad = padding(2, 23)

    def loss_fn(q, k, v):
        result = attnlens.scaled_dot_product_attention(
            q,
            k,
            v,
            is_causal=True,
            enable_gqa=True,
            key_padding_mask=pad,
            dropout_p=dropout_p,
            return_weights=return_weights,
        )
        if return_weights is False:
            return (result * grad_out).sum()
        out, weights = result
        return (out * grad_out).sum() + (weights * weights).sum()

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    assert attnlens.selected_backend(q.device) == "kernels"
    results = []
    with fused_backward_calls() as calls:
        for fn in (loss_fn, compiled):
            leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
            torch.manual_seed(3)
            loss = fn(*leaves)
            loss.backward()
            results.append((loss, *(t.grad for t in leaves)))
    assert len(calls) == 2
    for name, a, b in zip(("loss", "dq", "dk", "dv"), *results):
        assert_equal(name, b, a)


def test_float_mask_requiring_grad_is_refused():
    q, k, v = make_qkv(1, 2, 5, 6, 8, torch.float32)
    bias = randn(5, 6, requires_grad=True)
    with pytest.raises(ValueError, match="attn_mask"):
        attnlens.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    with pytest.raises(ValueError, match="attn_mask"):
        attnlens.scaled_dot_product_attention(q, k, v, attn_mask=bias * 2)
    detached = attnlens.scaled_dot_product_attention(q, k, v, attn_mask=bias.detach())
    with torch.no_grad():  # no graph is built, so nothing could flow into the mask
        assert_equal("out", attnlens.scaled_dot_product_attention(q, k, v, attn_mask=bias), detached)
