"""The exceptions attnlens raises for bad arguments.

attnlens promises ``ValueError`` (a bad shape, value or device) and ``TypeError`` (a bad type or
dtype), each naming the argument, what it got and what it expects. torch raises ``RuntimeError``
for most of the same mistakes, so code written against ``torch.nn.functional.
scaled_dot_product_attention`` catches ``RuntimeError``. Each class here is both, so either kind
of ``except`` clause catches attnlens's errors::

    try:
        out = attnlens.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    except RuntimeError:   # as with torch; ValueError / TypeError / attnlens.AttentionError work too
        ...

As numpy's ``AxisError`` is both a ``ValueError`` and an ``IndexError``.
"""

from __future__ import annotations

__all__ = ["AttentionError", "AttentionValueError", "AttentionTypeError"]


class AttentionError(RuntimeError):
    """Base class of attnlens's bad-argument errors; a ``RuntimeError``, as torch's are."""


class AttentionValueError(AttentionError, ValueError):
    """A bad shape, value or device: both ``ValueError`` and ``RuntimeError``."""


class AttentionTypeError(AttentionError, TypeError):
    """A bad type or dtype: both ``TypeError`` and ``RuntimeError``."""
