"""attnlens.reference (the tests' oracle) against torch's own attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from attnlens import reference
from helpers import assert_equal

TOL = dict(atol=1e-12, rtol=1e-10)


def qkv(b=2, hq=4, hkv=4, nq=9, nk=13, d=8):
    return (
        torch.randn(b, hq, nq, d, dtype=torch.float64),
        torch.randn(b, hkv, nk, d, dtype=torch.float64),
        torch.randn(b, hkv, nk, d, dtype=torch.float64),
    )


def torch_sdpa(*args, **kwargs):
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(*args, **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"is_causal": True},
        {"scale": 0.3},
        {"attn_mask": "bool"},
        {"attn_mask": "float"},
        {"attn_mask": "bool_broadcast"},
    ],
)
def test_matches_torch_sdpa(kwargs):
    q, k, v = qkv()
    kwargs = dict(kwargs)
    if kwargs.get("attn_mask") == "bool":
        kwargs["attn_mask"] = torch.rand(2, 4, 9, 13) > 0.3
        kwargs["attn_mask"][..., 0] = True  # torch gives NaN for rows with nothing to attend to
    elif kwargs.get("attn_mask") == "float":
        kwargs["attn_mask"] = torch.randn(2, 1, 9, 13, dtype=torch.float64)
    elif kwargs.get("attn_mask") == "bool_broadcast":
        kwargs["attn_mask"] = torch.rand(13) > 0.3
        kwargs["attn_mask"][0] = True
    torch.testing.assert_close(
        reference.scaled_dot_product_attention(q, k, v, **kwargs), torch_sdpa(q, k, v, **kwargs), **TOL
    )


def test_gqa_matches_torch():
    q, k, v = qkv(hq=6, hkv=2)
    ours = reference.scaled_dot_product_attention(q, k, v, enable_gqa=True, is_causal=True)
    theirs = torch_sdpa(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1), is_causal=True)
    torch.testing.assert_close(ours, theirs, **TOL)


def test_bottom_right_is_a_shifted_diagonal():
    q, k, v = qkv(nq=5, nk=12)
    ours = reference.scaled_dot_product_attention(q, k, v, is_causal=True, causal_alignment="bottom_right")
    mask = torch.ones(5, 12, dtype=torch.bool).tril(diagonal=12 - 5)
    torch.testing.assert_close(ours, torch_sdpa(q, k, v, attn_mask=mask), **TOL)


def test_key_padding_mask_is_a_broadcast_bool_mask():
    q, k, v = qkv()
    pad = torch.rand(2, 13) > 0.6
    pad[:, 0] = False
    ours = reference.scaled_dot_product_attention(q, k, v, key_padding_mask=pad)
    torch.testing.assert_close(ours, torch_sdpa(q, k, v, attn_mask=~pad[:, None, None, :]), **TOL)


def test_causal_combines_with_masks():
    q, k, v = qkv()
    mask = torch.rand(9, 13) > 0.4
    pad = torch.rand(2, 13) > 0.7
    ours = reference.scaled_dot_product_attention(q, k, v, attn_mask=mask, key_padding_mask=pad, is_causal=True)
    combined = mask & torch.ones(9, 13, dtype=torch.bool).tril() & ~pad[:, None, None, :]
    expected = torch_sdpa(q, k, v, attn_mask=combined)
    empty = ~combined.any(-1, keepdim=True).expand(2, 4, 9, 1)
    expected = torch.where(empty, torch.zeros_like(expected), expected)  # torch: NaN, attnlens: 0
    torch.testing.assert_close(ours, expected, **TOL)


def test_empty_rows_are_zero():
    """Older torch gives NaN for such rows, torch 2.13's math backend 0; attnlens always 0."""
    q, k, v = qkv()
    mask = torch.ones(9, 13, dtype=torch.bool)
    mask[2] = False
    out, weights = reference.scaled_dot_product_attention(q, k, v, attn_mask=mask, return_weights=True)
    assert (out[:, :, 2] == 0).all() and (weights[:, :, 2] == 0).all()
    assert torch.isfinite(out).all()
    theirs = torch_sdpa(q, k, v, attn_mask=mask)
    rows = [i for i in range(9) if i != 2]
    torch.testing.assert_close(out[:, :, rows], theirs[:, :, rows], **TOL)


def test_dropout_with_given_mask():
    q, k, v = qkv()
    keep = torch.rand(2, 4, 9, 13) > 0.25
    out, weights = reference.scaled_dot_product_attention(
        q, k, v, dropout_p=0.25, dropout_mask=keep, return_weights=True
    )
    probs = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, -1)
    torch.testing.assert_close(weights, probs * keep / 0.75, **TOL)
    torch.testing.assert_close(out, weights @ v, **TOL)


def test_dropout_draws_from_torch_generator():
    q, k, v = qkv()
    torch.manual_seed(3)
    a = reference.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    torch.manual_seed(3)
    b = reference.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    c = reference.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    assert_equal("same seed", a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("average", [True, False])
@pytest.mark.parametrize("masks", ["none", "padding", "attn_bool", "attn_float", "both"])
def test_weights_match_nn_multihead_attention(average, masks):
    """Project with the module's own weights, run the reference, compare with the module's weights."""
    embed, heads, nq, nk, batch = 16, 4, 6, 9, 3
    mha = torch.nn.MultiheadAttention(embed, heads, batch_first=True, dtype=torch.float64)
    query = torch.randn(batch, nq, embed, dtype=torch.float64)
    memory = torch.randn(batch, nk, embed, dtype=torch.float64)
    pad = torch.zeros(batch, nk, dtype=torch.bool)
    pad[0, -3:] = True
    mask_bool = torch.rand(nq, nk) > 0.3
    mask_bool[:, 0] = True
    mask_float = torch.randn(nq, nk, dtype=torch.float64)
    module_kwargs, ours_kwargs = {}, {}
    if masks in ("padding", "both"):
        module_kwargs["key_padding_mask"] = pad
        ours_kwargs["key_padding_mask"] = pad
    if masks in ("attn_bool", "both"):
        module_kwargs["attn_mask"] = ~mask_bool  # nn.MultiheadAttention: True = masked out
        ours_kwargs["attn_mask"] = mask_bool  # attnlens / SDPA: True = attend
    if masks == "attn_float":
        module_kwargs["attn_mask"] = mask_float
        ours_kwargs["attn_mask"] = mask_float
    out_mod, w_mod = mha(query, memory, memory, need_weights=True, average_attn_weights=average, **module_kwargs)

    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3)

    def heads_of(x, w, b):
        return F.linear(x, w, b).unflatten(-1, (heads, embed // heads)).transpose(1, 2)

    out, weights = reference.scaled_dot_product_attention(
        heads_of(query, w_q, b_q),
        heads_of(memory, w_k, b_k),
        heads_of(memory, w_v, b_v),
        return_weights="mean" if average else True,
        **ours_kwargs,
    )
    torch.testing.assert_close(weights, w_mod, **TOL)
    merged = mha.out_proj(out.transpose(1, 2).flatten(2))
    torch.testing.assert_close(merged, out_mod, **TOL)
