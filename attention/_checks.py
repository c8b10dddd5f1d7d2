"""Argument checks shared by the public helpers (masks, data, positional encodings, model)."""

from __future__ import annotations

import numbers
from typing import Optional


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
