"""Argument checks shared by the public helpers (masks, data, positional encodings, model)."""

from __future__ import annotations

import numbers
from typing import Optional, Tuple

import torch


def check_int(name: str, value: object, minimum: Optional[int] = None) -> int:
    """``value`` as an int, or a ``TypeError``/``ValueError`` naming ``name``.

    bool is an int subclass, but ``max_len=True`` or a seed of ``False`` is always a mistake, so it
    is refused. With ``minimum``, smaller values raise ``ValueError``.
    """
    expected = "an int" if minimum is None else f"an int >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        got = type(value).__name__ if minimum is None else f"{type(value).__name__} {value!r}"
        raise TypeError(f"{name} must be {expected}, got {got}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be {expected}, got {value}")
    return int(value)


def check_token_ids(name: str, tokens: object, shape_hint: str, ndims: Tuple[int, ...]) -> torch.Tensor:
    """``tokens`` as an integer tensor with one of ``ndims`` dimensions, or a clear error.

    ``shape_hint`` is the documented shape (``"[B, N]"``), quoted in the error. bool, floating and
    complex tensors are refused: token ids are integers, and a bool tensor here is usually a mask
    passed in the wrong place.
    """
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids {shape_hint}, got {type(tokens).__name__}")
    dtype = tokens.dtype
    if dtype == torch.bool or dtype.is_floating_point or dtype.is_complex:
        raise TypeError(f"{name} must hold integer token ids (e.g. torch.long), got dtype {dtype}")
    if tokens.dim() not in ndims:
        raise ValueError(f"{name} must be {shape_hint}, got shape {tuple(tokens.shape)} ({tokens.dim()}-D)")
    return tokens
