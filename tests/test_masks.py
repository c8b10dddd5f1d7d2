"""attnlens.masks: exact mask contents, the two conventions, errors, and use with the kernels."""

import pytest
import torch

import attnlens
from attnlens.masks import causal_mask, mask_future_tokens, padding_mask
from token_batches import SRC, SRC_PADDING, TGT, TGT_PADDING, hand_causal

T, F = True, False


# --- causal_mask / mask_future_tokens -------------------------------------------------------------


def test_causal_mask_is_lower_triangle_including_diagonal():
    expected = torch.tensor([[T, F, F, F], [T, T, F, F], [T, T, T, F], [T, T, T, T]])
    mask = causal_mask(4)
    assert mask.dtype == torch.bool
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 17, 128])
def test_causal_mask_matches_definition(n):
    mask = causal_mask(n)
    assert mask.shape == (n, n)
    assert torch.equal(mask, hand_causal(n))
    # Row i sees exactly i + 1 keys: itself and everything before.
    assert mask.sum(dim=1).tolist() == list(range(1, n + 1))


def test_causal_mask_device_argument():
    assert causal_mask(3, device="cpu").device == torch.device("cpu")
    assert causal_mask(3, device=torch.device("cpu")).device == torch.device("cpu")


@pytest.mark.parametrize("shape", [(2, 5), (5,), (1, 1), (3, 0)])
def test_mask_future_tokens_is_causal_mask_of_the_length(shape):
    batch = torch.randint(0, 10, shape)
    mask = mask_future_tokens(batch)
    assert mask.dtype == torch.bool
    assert mask.device == batch.device
    assert torch.equal(mask, hand_causal(shape[-1]))


def test_mask_future_tokens_ignores_token_values():
    # Padding does not change the causal mask: padding is the padding mask's job.
    assert torch.equal(mask_future_tokens(TGT), mask_future_tokens(torch.full_like(TGT, 9)))


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8])
def test_integer_token_dtypes_are_accepted(dtype):
    tokens = TGT.to(dtype)
    assert torch.equal(mask_future_tokens(tokens), hand_causal(6))
    assert torch.equal(padding_mask(tokens), TGT_PADDING)


# --- padding_mask ---------------------------------------------------------------------------------


def test_padding_mask_marks_pad_positions_true():
    assert torch.equal(padding_mask(SRC), SRC_PADDING)
    assert torch.equal(padding_mask(TGT), TGT_PADDING)
    assert padding_mask(SRC).dtype == torch.bool


def test_padding_mask_with_another_pad_id():
    tokens = torch.tensor([[4, 9, 9], [9, 4, 0]])
    assert torch.equal(padding_mask(tokens, pad_id=9), torch.tensor([[F, T, T], [T, F, F]]))


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: causal_mask(-1), ValueError, "n must be >= 0"),
        (lambda: causal_mask(2.0), TypeError, "n must be an int"),
        (lambda: causal_mask(True), TypeError, "n must be an int"),
        (lambda: causal_mask(torch.tensor(3)), TypeError, "n must be an int"),
        (lambda: mask_future_tokens([[1, 2]]), TypeError, "batch must be a torch.Tensor"),
        (lambda: mask_future_tokens(torch.zeros(2, 3)), TypeError, "batch must hold integer token ids"),
        (lambda: mask_future_tokens(torch.zeros(2, 3, dtype=torch.bool)), TypeError, "batch must hold integer"),
        (lambda: mask_future_tokens(torch.tensor(3)), ValueError, r"batch must be \[B, N\] or \[N\], got shape \(\)"),
        (lambda: mask_future_tokens(torch.zeros(2, 3, 4, dtype=torch.long)), ValueError, "batch must be"),
        (lambda: padding_mask(torch.zeros(2, 3)), TypeError, "tokens must hold integer token ids"),
        (
            lambda: padding_mask(torch.zeros(3, dtype=torch.long)),
            ValueError,
            r"tokens must be \[B, N\], got shape \(3,\)",
        ),
        (lambda: padding_mask(SRC, pad_id=0.0), TypeError, "pad_id must be an int"),
        (lambda: padding_mask("abc"), TypeError, "tokens must be a torch.Tensor"),
    ],
)
def test_errors_name_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_causal_mask_equals_is_causal():
    q, k, v = (torch.randn(1, 2, 7, 8) for _ in range(3))
    with_mask = attnlens.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(7))
    with_flag = attnlens.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(with_mask, with_flag, atol=1e-6, rtol=1e-6)
