"""attnlens's deliberate differences from torch, each asserted (docs/torch-compat.md lists them).

A difference is one of: attnlens refuses clearly what torch runs with a doubtful result, attnlens
computes what torch refuses (a superset, with the value torch gives for the equivalent explicit
input), or a documented choice where torch's own backends disagree. Never a silently different value.
"""

from __future__ import annotations

import math
import warnings
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend
from torch.nn.attention.bias import causal_lower_right, causal_upper_left

import attnlens
from attnlens import MultiHeadAttention

from .common import PATHS, assert_close, raised, sdpa, torch_backend


def _qkv(*shape, nq=5, nk=7, dtype=torch.float32, requires_grad=False):
    q = torch.randn(*shape, nq, 8, dtype=dtype, requires_grad=requires_grad)
    k = torch.randn(*shape, nk, 8, dtype=dtype, requires_grad=requires_grad)
    v = torch.randn(*shape, nk, 8, dtype=dtype, requires_grad=requires_grad)
    return q, k, v


# ---------------------------------------------------------------------------------------------
# rows with nothing to attend to
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_fully_masked_rows_give_zero(path):
    """A query row with nothing to attend to gives output 0, weights 0 and gradients 0, never NaN.
    torch 2.13's CPU backends give the same output (its math backend's _safe_softmax); its older
    releases and some CUDA backends give NaN."""
    q, k, v = _qkv(2, 2, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(5, 7) > 0.4
    mask[1] = False
    out, weights = sdpa(path, q, k, v, attn_mask=mask, return_weights=True)
    assert torch.equal(out[:, :, 1], torch.zeros_like(out[:, :, 1]))
    assert torch.equal(weights[:, :, 1], torch.zeros_like(weights[:, :, 1]))
    grads = torch.autograd.grad(out.sum() + weights.sum(), (q, k, v))
    assert all(torch.isfinite(g).all() for g in grads)
    assert torch.equal(grads[0][:, :, 1], torch.zeros_like(grads[0][:, :, 1]))
    assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


@pytest.mark.parametrize("path", PATHS)
def test_module_fully_masked_rows_give_out_proj_bias(path):
    """nn.MultiheadAttention: a query that may attend to no key gets weights 0 and output
    ``out_proj.bias``. torch gives NaN on its need_weights=True path and its inference fast path;
    its need_weights=False path gives what attnlens gives."""
    theirs = nn.MultiheadAttention(8, 2, batch_first=True)
    nn.init.normal_(theirs.out_proj.bias)
    ours = MultiHeadAttention(8, 2, batch_first=True)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 4, 8)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[2] = True  # query 2 may attend to nothing (module convention: True = blocked)
    with attnlens.use_backend(path):
        out, weights = ours(x, x, x, attn_mask=mask)
    assert_close(out[:, 2], theirs.out_proj.bias.expand(2, 8))
    assert torch.equal(weights[:, 2], torch.zeros(2, 4))
    torch_out, torch_weights = theirs(x, x, x, attn_mask=mask)
    assert torch_out[:, 2].isnan().all() and torch_weights[:, 2].isnan().all()
    assert_close(out, theirs(x, x, x, attn_mask=mask, need_weights=False)[0])


# ---------------------------------------------------------------------------------------------
# is_causal together with attn_mask
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_is_causal_with_attn_mask_applies_both(path):
    """is_causal=True with an attn_mask: a key must pass both, as torch 2.13's default CPU backend
    computes it; torch's math backend refuses the combination with RuntimeError."""
    q, k, v = _qkv(2, 2)
    mask = torch.randn(5, 7)
    actual = sdpa(path, q, k, v, attn_mask=mask, is_causal=True)
    both = mask.masked_fill(~torch.ones(5, 7, dtype=torch.bool).tril(), float("-inf"))
    assert_close(actual, F.scaled_dot_product_attention(q, k, v, attn_mask=both))
    assert_close(actual, F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True))
    with torch_backend(SDPBackend.MATH), pytest.raises(RuntimeError, match="attn_mask should not be set"):
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True)


# ---------------------------------------------------------------------------------------------
# refused, where torch runs with a doubtful result or its backends disagree
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_mask_requiring_grad_is_refused(path):
    """The kernels treat masks as constants, so a float attn_mask that requires grad (while grad is
    enabled) raises, where torch differentiates it. (attnlens.MultiHeadAttention runs such masks on
    its differentiable plain-PyTorch path instead.)"""
    q, k, v = _qkv(1, 2)
    bias = torch.zeros(5, 7, requires_grad=True)
    with pytest.raises(attnlens.AttentionValueError, match="attn_mask requires grad"):
        sdpa(path, q, k, v, attn_mask=bias)
    with torch.no_grad():
        assert_close(sdpa(path, q, k, v, attn_mask=bias), F.scaled_dot_product_attention(q, k, v, attn_mask=bias))


@pytest.mark.parametrize("path", PATHS)
def test_inputs_on_another_device_are_refused(path):
    """A mask on another device than the query raises (RuntimeError, and ValueError). torch's math
    backend raises too; its CPU flash backend runs with a "meta" mask and returns values that are
    neither the masked nor the unmasked attention. A value shorter than the key: torch's math
    backend raises, its CPU flash backend runs; attnlens raises."""
    q, k, v = _qkv(2, 2)
    with pytest.raises(RuntimeError, match="attn_mask must be on the query's device"):
        sdpa(path, q, k, v, attn_mask=torch.zeros(5, 7, device="meta"))
    with pytest.raises(RuntimeError, match=r"value must have key's length Nk = 7"):
        sdpa(path, q, k, v[:, :, :6])
    with torch_backend(SDPBackend.MATH):
        assert isinstance(raised(partial(F.scaled_dot_product_attention, q, k, v[:, :, :6])), RuntimeError)


@pytest.mark.parametrize("path", PATHS)
def test_nan_scale_is_refused(path):
    """scale=nan raises ValueError: torch's math backend returns NaN everywhere, its CPU flash
    backend zeros, so there is no torch answer to match."""
    q, k, v = _qkv(1, 2)
    with pytest.raises(attnlens.AttentionValueError, match="scale must be a number or None, got nan"):
        sdpa(path, q, k, v, scale=math.nan)


@pytest.mark.parametrize("path", PATHS)
def test_bool_scale_and_dropout_are_refused(path):
    """torch's argument parser reads scale=True as 1.0 and dropout_p=False as 0.0; attnlens
    refuses bools there (TypeError), as it does everywhere a number is expected."""
    q, k, v = _qkv(1, 2)
    assert raised(partial(F.scaled_dot_product_attention, q, k, v, scale=True)) is None
    with pytest.raises(attnlens.AttentionTypeError, match="scale must be a float or None, got bool"):
        sdpa(path, q, k, v, scale=True)
    with pytest.raises(attnlens.AttentionTypeError, match="dropout_p must be a float in"):
        sdpa(path, q, k, v, dropout_p=False)


@pytest.mark.parametrize("path", PATHS)
def test_causal_bias_lengths_must_match_the_inputs(path):
    """A CausalBias made for other lengths raises. torch's upper-left bias ignores its lengths (it
    becomes is_causal=True); its lower-right one fails or not depending on the backend."""
    q, k, v = _qkv(1, 2)
    with pytest.raises(attnlens.AttentionValueError, match="CausalBias for 4 queries and 9 keys"):
        sdpa(path, q, k, v, attn_mask=causal_upper_left(4, 9))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bias = causal_lower_right(6, 7)
    with pytest.raises(attnlens.AttentionValueError, match="Nq = 5"):
        sdpa(path, q, k, v, attn_mask=bias)


class _Scaled(torch.Tensor):
    """A tensor subclass with its own meaning for torch functions (as torch's attention biases,
    MaskedTensor or NestedTensor have): its memory is not what it stands for."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return super().__torch_function__(func, types, args, kwargs or {})


@pytest.mark.parametrize("path", PATHS)
def test_tensor_subclasses_attnlens_does_not_understand_are_refused(path):
    """A mask or input that is a tensor subclass with its own __torch_function__ (torch would hand
    it the call) raises TypeError naming its class; NestedTensors raise TypeError saying what to do
    instead. nn.Parameter, which defines no meaning of its own, is a plain tensor."""
    q, k, v = _qkv(1, 2)
    mask = torch.rand(5, 7) > 0.5
    with pytest.raises(attnlens.AttentionTypeError, match="attn_mask is a .*_Scaled, a tensor subclass"):
        sdpa(path, q, k, v, attn_mask=mask.as_subclass(_Scaled))
    with pytest.raises(attnlens.AttentionTypeError, match="query is a .*_Scaled"):
        sdpa(path, q.as_subclass(_Scaled), k, v)
    nested = torch.nested.nested_tensor([q[0, 0], q[0, 0, :3]], layout=torch.jagged)
    with pytest.raises(attnlens.AttentionTypeError, match="NestedTensor.*key_padding_mask"):
        sdpa(path, nested, k, v)
    parameter = nn.Parameter(torch.randn(5, 7), requires_grad=False)
    assert_close(sdpa(path, q, k, v, attn_mask=parameter), F.scaled_dot_product_attention(q, k, v, attn_mask=parameter))


def test_module_refuses_nested_tensors_with_torchs_assertion():
    """NestedTensor inputs: torch's module computes them on its inference fast path only and raises
    AssertionError elsewhere; attnlens has no fast path and raises AssertionError always."""
    theirs = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    ours = MultiHeadAttention(8, 2, batch_first=True).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        strided = torch.nested.nested_tensor([torch.randn(4, 8), torch.randn(6, 8)])
    with torch.no_grad():
        assert theirs(strided, strided, strided)[0].is_nested
        with pytest.raises(AssertionError, match="NestedTensor"):
            ours(strided, strided, strided)
    theirs.train(), ours.train()
    assert type(raised(partial(theirs, strided, strided, strided))) is AssertionError
    assert type(raised(partial(ours, strided, strided, strided))) is AssertionError


def test_module_is_causal_without_mask_raises_in_inference_too():
    """is_causal=True needs attn_mask (the causal mask as a hint): torch raises RuntimeError, except
    on its inference fast path, which ignores is_causal and attends everywhere; attnlens raises
    always."""
    theirs = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    ours = MultiHeadAttention(8, 2, batch_first=True).eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        assert_close(theirs(x, x, x, is_causal=True)[0], theirs(x, x, x)[0])
        with pytest.raises(RuntimeError, match="is_causal=True needs attn_mask"):
            ours(x, x, x, is_causal=True)


# ---------------------------------------------------------------------------------------------
# computed where torch refuses (supersets), with torch's value for the explicit equivalent
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_what_torch_refuses_but_attnlens_computes(path):
    """A 0-D or 1-D mask (torch: IndexError) broadcasts like any other; a mask over the value's
    larger batch (torch adds the mask to q k^T in place, before the value broadcasts) applies to
    the broadcast output; enable_gqa with a 2-D key (torch: IndexError) reads it as one head. Each
    gives torch's result for the explicitly broadcast input."""
    q, k, v = _qkv(2, 2)
    for mask in (torch.tensor(-1.5), torch.randn(7)):
        assert isinstance(raised(partial(F.scaled_dot_product_attention, q, k, v, attn_mask=mask)), IndexError)
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.expand(5, 7))
        assert_close(sdpa(path, q, k, v, attn_mask=mask), expected, f"{mask.dim()}-D mask")

    q1, k1, v3 = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 7, 8), torch.randn(3, 2, 7, 8)
    mask = torch.randn(3, 1, 5, 7)
    assert isinstance(raised(partial(F.scaled_dot_product_attention, q1, k1, v3, attn_mask=mask)), RuntimeError)
    expected = F.scaled_dot_product_attention(q1.expand(3, -1, -1, -1), k1.expand(3, -1, -1, -1), v3, attn_mask=mask)
    assert_close(sdpa(path, q1, k1, v3, attn_mask=mask), expected, "mask over the value's batch")

    key, value = torch.randn(7, 8), torch.randn(7, 8)
    assert isinstance(raised(partial(F.scaled_dot_product_attention, q, key, value, enable_gqa=True)), IndexError)
    expected = F.scaled_dot_product_attention(q, key[None, None], value[None, None], enable_gqa=True)
    assert_close(sdpa(path, q, key, value, enable_gqa=True), expected, "enable_gqa with a 2-D key")


# ---------------------------------------------------------------------------------------------
# dropout draws
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_dropout_draws_are_attnlens_own(path):
    """Dropout is torch's in meaning (each weight dropped with probability p, the rest scaled by
    1 / (1 - p), the returned weights those after dropout) but not in its draws: the same seed
    gives another pattern than torch's, so torch's dropout results cannot be replayed bit for bit.
    attnlens's are reproducible from torch's generator, and ``attnlens.dropout_mask`` gives the
    pattern a call makes."""
    q, k, v = _qkv(2, 2, nq=16, nk=32)
    p = 0.25
    torch.manual_seed(7)
    out, weights = sdpa(path, q, k, v, dropout_p=p, return_weights=True)
    torch.manual_seed(7)
    assert torch.equal(out, sdpa(path, q, k, v, dropout_p=p))
    torch.manual_seed(7)
    with attnlens.use_backend(path):
        keep = attnlens.dropout_mask(q, k, p)
    _, plain = sdpa(path, q, k, v, return_weights=True)
    assert torch.equal(weights == 0, ~keep)
    assert_close(weights, torch.where(keep, plain / (1 - p), torch.zeros_like(plain)))
    assert 0.6 < keep.float().mean() < 0.9  # 2048 draws at p = 0.25
