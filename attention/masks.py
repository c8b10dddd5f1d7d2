"""Masks for token batches, in the conventions ``attnlens.scaled_dot_product_attention`` takes.

Two conventions, both torch's, and they point in opposite directions:

- attend masks (``causal_mask``, ``mask_future_tokens``, ``Masks.tgt_causal_mask``,
  ``Masks.combined_tgt_mask()``) are bool with **True = may attend**, as the ``attn_mask`` of
  ``torch.nn.functional.scaled_dot_product_attention``;
- padding masks (``padding_mask``, ``Masks.src_key_padding_mask``, ``Masks.tgt_key_padding_mask``)
  are bool ``[B, N]`` with **True = padding, ignored**, as the ``key_padding_mask`` of
  ``torch.nn.MultiheadAttention``.

So a causal mask goes to ``attn_mask=`` and a padding mask to ``key_padding_mask=``; neither is
ever inverted on the way.
"""

from __future__ import annotations

from typing import NamedTuple, Tuple, Union

import torch

from attnlens._checks import check_int
from attnlens.tiny.data import PAD_ID

__all__ = ["Masks", "causal_mask", "create_masks", "mask_future_tokens", "padding_mask"]

Device = Union[torch.device, str, int, None]


def _check_tokens(name: str, tokens: object, shape_hint: str, ndims: Tuple[int, ...]) -> torch.Tensor:
    """``tokens`` as an integer tensor with one of ``ndims`` dimensions, or a clear error."""
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids {shape_hint}, got {type(tokens).__name__}")
    dtype = tokens.dtype
    if dtype == torch.bool or dtype.is_floating_point or dtype.is_complex:
        raise TypeError(f"{name} must hold integer token ids (e.g. torch.long), got dtype {dtype}")
    if tokens.dim() not in ndims:
        raise ValueError(f"{name} must be {shape_hint}, got shape {tuple(tokens.shape)} ({tokens.dim()}-D)")
    return tokens


def causal_mask(n: int, *, device: Device = None) -> torch.Tensor:
    """The causal (look-ahead) mask for a sequence of length ``n``.

    Returns a bool tensor ``[n, n]`` with **True = attend**: query ``i`` may attend to key ``j``
    exactly when ``j <= i`` (the lower triangle, diagonal included). Pass it as ``attn_mask``; it
    broadcasts over batch and heads. Equivalent to ``is_causal=True`` for square attention.
    """
    n = check_int("n", n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


def mask_future_tokens(batch: torch.Tensor) -> torch.Tensor:
    """The causal mask for a token batch: ``causal_mask(N, device=batch.device)``.

    ``batch`` is an integer token tensor ``[B, N]`` (or one sequence ``[N]``). Returns bool
    ``[N, N]``, **True = attend**, on the batch's device, so query position ``i`` cannot see the
    future positions ``j > i``. Only the length and the device of ``batch`` matter, not its tokens.
    """
    batch = _check_tokens("batch", batch, "[B, N] or [N]", (1, 2))
    return causal_mask(batch.shape[-1], device=batch.device)


def padding_mask(tokens: torch.Tensor, pad_id: int = PAD_ID) -> torch.Tensor:
    """Where ``tokens`` is padding.

    ``tokens`` is an integer tensor ``[B, N]``. Returns bool ``[B, N]`` with **True = padding,
    ignored** (``tokens == pad_id``), on the tokens' device: the ``key_padding_mask`` convention.
    """
    tokens = _check_tokens("tokens", tokens, "[B, N]", (2,))
    pad_id = check_int("pad_id", pad_id)
    return tokens == pad_id


class Masks(NamedTuple):
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


def create_masks(src: torch.Tensor, tgt: torch.Tensor, pad_id: int = PAD_ID) -> Masks:
    """The source and target masks for a batch of an encoder-decoder.

    ``src`` is the integer source batch ``[B, Ns]``; ``tgt`` is the integer batch the decoder
    reads, ``[B, Nt]`` (with ``attnlens.data`` that is ``tgt[:, :-1]``, BOS + target without the
    last position). Both on the same device, with the same batch size ``B``.

    Returns ``Masks(src_key_padding_mask [B, Ns], tgt_key_padding_mask [B, Nt], tgt_causal_mask
    [Nt, Nt])``: the padding masks are True = padding (``key_padding_mask=``), the causal mask is
    True = attend (``attn_mask=``).
    """
    src = _check_tokens("src", src, "[B, Ns]", (2,))
    tgt = _check_tokens("tgt", tgt, "[B, Nt]", (2,))
    pad_id = check_int("pad_id", pad_id)
    if src.shape[0] != tgt.shape[0]:
        raise ValueError(
            f"src and tgt must have the same batch size, got src {tuple(src.shape)} and tgt {tuple(tgt.shape)}"
        )
    if src.device != tgt.device:
        raise ValueError(f"src and tgt must be on the same device, got src on {src.device} and tgt on {tgt.device}")
    return Masks(
        src_key_padding_mask=padding_mask(src, pad_id),
        tgt_key_padding_mask=padding_mask(tgt, pad_id),
        tgt_causal_mask=mask_future_tokens(tgt),
    )
