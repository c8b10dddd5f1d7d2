"""The masks of one encoder-decoder batch of ``attnlens.tiny.data``: ``create_masks``.

    masks = create_masks(src, tgt[:, :-1])    # the decoder reads BOS + target without the last token
    # encoder self-attention and decoder cross-attention: key_padding_mask=masks.src_key_padding_mask
    # decoder self-attention: attn_mask=masks.tgt_causal_mask, key_padding_mask=masks.tgt_key_padding_mask

The masks are built with the library's ``attnlens.causal_mask`` / ``attnlens.padding_mask`` and keep
their conventions: the causal mask is **True = attend** (``attn_mask=``), the padding masks are
**True = padding** (``key_padding_mask=``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from attnlens._checks import check_int, check_token_ids
from attnlens.masks import mask_future_tokens, padding_mask
from attnlens.tiny.data import PAD_ID

__all__ = ["EncoderDecoderMasks", "create_masks"]


class EncoderDecoderMasks(NamedTuple):
    """The masks an encoder-decoder needs for one batch (see ``create_masks``).

    - ``src_key_padding_mask``: bool ``[B, Ns]``, True = padding. For encoder self-attention and
      decoder cross-attention (``key_padding_mask=``).
    - ``tgt_key_padding_mask``: bool ``[B, Nt]``, True = padding. For decoder self-attention.
    - ``tgt_causal_mask``: bool ``[Nt, Nt]``, True = attend. For decoder self-attention
      (``attn_mask=``).
    """

    src_key_padding_mask: torch.Tensor
    tgt_key_padding_mask: torch.Tensor
    tgt_causal_mask: torch.Tensor

    def combined_tgt_mask(self) -> torch.Tensor:
        """What decoder self-attention effectively applies, as one bool mask ``[B, 1, Nt, Nt]``.

        **True = attend**: query ``i`` of sequence ``b`` may see key ``j`` when ``j <= i`` and key
        ``j`` is not padding. The head dimension is 1, so it broadcasts over heads. Passing it as
        ``attn_mask`` alone gives the same attention as ``attn_mask=tgt_causal_mask`` together with
        ``key_padding_mask=tgt_key_padding_mask``; it is also the picture to draw.
        """
        not_padding = ~self.tgt_key_padding_mask
        return self.tgt_causal_mask[None, None, :, :] & not_padding[:, None, None, :]


# The tuple's former name, kept as an alias: attnlens.Masks and attnlens.masks.Masks resolve to it.
Masks = EncoderDecoderMasks


def create_masks(src: torch.Tensor, tgt: torch.Tensor, pad_id: int = PAD_ID) -> EncoderDecoderMasks:
    """The source and target masks for a batch of an encoder-decoder.

    ``src`` is the integer source batch ``[B, Ns]``; ``tgt`` is the integer batch the decoder
    reads, ``[B, Nt]`` (with ``attnlens.tiny.data`` that is ``tgt[:, :-1]``, BOS + target without
    the last position). Both on the same device, with the same batch size ``B``.

    Returns ``EncoderDecoderMasks(src_key_padding_mask [B, Ns], tgt_key_padding_mask [B, Nt],
    tgt_causal_mask [Nt, Nt])``: the padding masks are True = padding (``key_padding_mask=``), the
    causal mask is True = attend (``attn_mask=``).
    """
    src = check_token_ids("src", src, "[B, Ns]", (2,))
    tgt = check_token_ids("tgt", tgt, "[B, Nt]", (2,))
    pad_id = check_int("pad_id", pad_id)
    if src.shape[0] != tgt.shape[0]:
        raise ValueError(
            f"src and tgt must have the same batch size, got src {tuple(src.shape)} and tgt {tuple(tgt.shape)}"
        )
    if src.device != tgt.device:
        raise ValueError(f"src and tgt must be on the same device, got src on {src.device} and tgt on {tgt.device}")
    return EncoderDecoderMasks(
        src_key_padding_mask=padding_mask(src, pad_id),
        tgt_key_padding_mask=padding_mask(tgt, pad_id),
        tgt_causal_mask=mask_future_tokens(tgt),
    )
