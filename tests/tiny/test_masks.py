"""attnlens.tiny.masks: the masks of an encoder-decoder batch (create_masks), exact contents, errors,
and use with the attention function."""

import inspect

import pytest
import torch

import attnlens
from attnlens.masks import padding_mask
from attnlens.tiny.data import PAD_ID
from attnlens.tiny.masks import EncoderDecoderMasks, create_masks
from token_batches import SRC, SRC_PADDING, TGT, TGT_PADDING, hand_causal

T, F = True, False


def test_padding_mask_default_pad_id_is_data_pad_id():
    assert PAD_ID == 0
    assert inspect.signature(padding_mask).parameters["pad_id"].default == PAD_ID
    assert torch.equal(padding_mask(torch.tensor([[0, 3]])), torch.tensor([[T, F]]))


# --- create_masks ---------------------------------------------------------------------------------


def test_create_masks_fields():
    masks = create_masks(SRC, TGT)
    assert isinstance(masks, EncoderDecoderMasks)
    assert masks._fields == ("src_key_padding_mask", "tgt_key_padding_mask", "tgt_causal_mask")
    assert torch.equal(masks.src_key_padding_mask, SRC_PADDING)
    assert torch.equal(masks.tgt_key_padding_mask, TGT_PADDING)
    assert torch.equal(masks.tgt_causal_mask, hand_causal(6))
    src_pad, tgt_pad, causal = masks  # a NamedTuple unpacks in field order
    assert torch.equal(src_pad, SRC_PADDING) and torch.equal(tgt_pad, TGT_PADDING)
    assert torch.equal(causal, hand_causal(6))


def test_create_masks_pad_id():
    masks = create_masks(SRC, TGT, pad_id=5)
    assert torch.equal(masks.src_key_padding_mask, SRC == 5)
    assert torch.equal(masks.tgt_key_padding_mask, TGT == 5)


def test_combined_tgt_mask_by_hand():
    combined = create_masks(SRC, TGT).combined_tgt_mask()
    assert combined.shape == (2, 1, 6, 6)
    assert combined.dtype == torch.bool
    # Sequence 0: keys 4 and 5 are padding; sequence 1: keys 2..5 are padding.
    expected0 = torch.tensor(
        [
            [T, F, F, F, F, F],
            [T, T, F, F, F, F],
            [T, T, T, F, F, F],
            [T, T, T, T, F, F],
            [T, T, T, T, F, F],
            [T, T, T, T, F, F],
        ]
    )
    expected1 = torch.tensor(
        [
            [T, F, F, F, F, F],
            [T, T, F, F, F, F],
            [T, T, F, F, F, F],
            [T, T, F, F, F, F],
            [T, T, F, F, F, F],
            [T, T, F, F, F, F],
        ]
    )
    assert torch.equal(combined[0, 0], expected0)
    assert torch.equal(combined[1, 0], expected1)


def test_combined_tgt_mask_equals_elementwise_definition():
    tgt = torch.randint(0, 4, (3, 9))
    tgt[:, 0] = 1  # rows start with BOS, as decoder inputs do
    combined = create_masks(tgt[:, :4], tgt).combined_tgt_mask()
    for b in range(3):
        for i in range(9):
            for j in range(9):
                assert bool(combined[b, 0, i, j]) == (j <= i and int(tgt[b, j]) != PAD_ID)


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: create_masks(SRC.float(), TGT), TypeError, "src must hold integer token ids"),
        (lambda: create_masks(SRC, TGT.double()), TypeError, "tgt must hold integer token ids"),
        (lambda: create_masks(SRC[0], TGT), ValueError, r"src must be \[B, Ns\]"),
        (lambda: create_masks(SRC, TGT[None]), ValueError, r"tgt must be \[B, Nt\]"),
        (lambda: create_masks(SRC, TGT[:1]), ValueError, r"same batch size, got src \(2, 5\) and tgt \(1, 6\)"),
        (lambda: create_masks(SRC, TGT, pad_id=None), TypeError, "pad_id must be an int"),
    ],
)
def test_errors_name_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


# --- with the attention function ------------------------------------------------------------------


def manual_attention(q, k, v, allowed):
    """Eager float64 softmax attention with a bool allowed mask (True = attend)."""
    scores = (q.double() @ k.double().transpose(-2, -1)) / q.shape[-1] ** 0.5
    weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    return weights @ v.double(), weights


def test_masks_drive_scaled_dot_product_attention():
    masks = create_masks(SRC, TGT)
    batch, heads, head_dim = 2, 3, 16
    nt, ns = TGT.shape[1], SRC.shape[1]
    q = torch.randn(batch, heads, nt, head_dim)
    k_self, v_self = torch.randn(batch, heads, nt, head_dim), torch.randn(batch, heads, nt, head_dim)
    k_cross, v_cross = torch.randn(batch, heads, ns, head_dim), torch.randn(batch, heads, ns, head_dim)

    # Decoder self-attention: causal mask as attn_mask plus padding mask as key_padding_mask ...
    out, weights = attnlens.scaled_dot_product_attention(
        q,
        k_self,
        v_self,
        attn_mask=masks.tgt_causal_mask,
        key_padding_mask=masks.tgt_key_padding_mask,
        return_weights=True,
    )
    # ... equals the combined mask alone, and a hand-built mask in eager float64.
    out_combined, weights_combined = attnlens.scaled_dot_product_attention(
        q, k_self, v_self, attn_mask=masks.combined_tgt_mask(), return_weights=True
    )
    hand_allowed = torch.zeros(batch, 1, nt, nt, dtype=torch.bool)
    for b, length in enumerate([4, 2]):  # unpadded target lengths of TGT
        for i in range(nt):
            hand_allowed[b, 0, i, : min(i + 1, length)] = True
    expected_out, expected_weights = manual_attention(q, k_self, v_self, hand_allowed)
    for actual in (out, out_combined):
        torch.testing.assert_close(actual.double(), expected_out, atol=1e-5, rtol=1e-5)
    for actual in (weights, weights_combined):
        torch.testing.assert_close(actual.double(), expected_weights, atol=1e-5, rtol=1e-5)
        # Masked positions get exactly zero weight.
        assert bool((actual.expand(batch, heads, nt, nt)[~hand_allowed.expand(batch, heads, nt, nt)] == 0).all())

    # Cross-attention: target queries over source keys, source padding ignored.
    out_cross, weights_cross = attnlens.scaled_dot_product_attention(
        q, k_cross, v_cross, key_padding_mask=masks.src_key_padding_mask, return_weights=True
    )
    cross_allowed = ~SRC_PADDING[:, None, None, :].expand(batch, 1, nt, ns)
    expected_cross, expected_cross_weights = manual_attention(q, k_cross, v_cross, cross_allowed)
    torch.testing.assert_close(out_cross.double(), expected_cross, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights_cross.double(), expected_cross_weights, atol=1e-5, rtol=1e-5)
    assert float(weights_cross[0, :, :, 3:].abs().max()) == 0.0  # source 0 has padding at 3 and 4
