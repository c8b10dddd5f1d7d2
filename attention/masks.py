"""Masks in the conventions ``attnlens.scaled_dot_product_attention`` takes.

Two conventions, both torch's, and they point in opposite directions:

- attend masks (``causal_mask``, ``mask_future_tokens``) are bool with **True = may attend**, as
  the ``attn_mask`` of ``torch.nn.functional.scaled_dot_product_attention``;
- padding masks (``padding_mask``) are bool ``[B, N]`` with **True = padding, ignored**, as the
  ``key_padding_mask`` of ``torch.nn.MultiheadAttention``.

So a causal mask goes to ``attn_mask=`` and a padding mask to ``key_padding_mask=``; neither is
ever inverted on the way.

The masks of one encoder-decoder batch of the teaching kit's data (``create_masks`` and its
``EncoderDecoderMasks``) live with that data in ``attnlens.tiny.masks``. ``attnlens.masks.create_masks``
and ``attnlens.masks.Masks`` are those same objects, loaded from the kit on first use.
"""

from __future__ import annotations

import importlib
from typing import Any, Union

import torch

from attnlens._checks import check_int, check_token_ids

__all__ = ["causal_mask", "mask_future_tokens", "padding_mask"]

Device = Union[torch.device, str, int, None]
# The id padding_mask treats as padding unless told otherwise. It is also the teaching kit's
# PAD_ID (a test checks the two agree), written here so the library never imports the kit.
DEFAULT_PAD_ID = 0


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
    batch = check_token_ids("batch", batch, "[B, N] or [N]", (1, 2))
    return causal_mask(batch.shape[-1], device=batch.device)


def padding_mask(tokens: torch.Tensor, pad_id: int = DEFAULT_PAD_ID) -> torch.Tensor:
    """Where ``tokens`` is padding.

    ``tokens`` is an integer tensor ``[B, N]``. Returns bool ``[B, N]`` with **True = padding,
    ignored** (``tokens == pad_id``), on the tokens' device: the ``key_padding_mask`` convention.
    ``pad_id`` defaults to 0, the padding id of ``attnlens.tiny``'s synthetic data.
    """
    tokens = check_token_ids("tokens", tokens, "[B, N]", (2,))
    pad_id = check_int("pad_id", pad_id)
    return tokens == pad_id


# Names of the teaching kit's batch helpers (attnlens.tiny.masks) that this module also answers
# to; they resolve on first use (PEP 562), so importing this module never loads the kit.
_KIT_NAMES = {"Masks": "EncoderDecoderMasks", "create_masks": "create_masks"}


def __getattr__(name: str) -> Any:
    if name in _KIT_NAMES:
        return getattr(importlib.import_module("attnlens.tiny.masks"), _KIT_NAMES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
