"""Checking and normalising the arguments of ``scaled_dot_product_attention``.

Every path (compiled kernels, interpreter, reference) goes through ``prepare`` so they accept and
refuse exactly the same inputs and see them in the same normal form: 4-D q/k/v, a 4-D attention
mask view broadcast to ``[B, Hq, Nq, Nk]`` with stride 0 (never copied), and resolved scale and
causal offset.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Optional, Union

import torch

__all__ = ["Prepared", "prepare", "MAX_HEAD_DIM", "SUPPORTED_DTYPES"]

MAX_HEAD_DIM = 256
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
CAUSAL_ALIGNMENTS = ("top_left", "bottom_right")

ReturnWeights = Union[bool, str]


@dataclasses.dataclass
class Prepared:
    """Normalised arguments. ``weights_mode`` is 0 (none), 1 (per head) or 2 (head mean)."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    attn_mask: Optional[torch.Tensor]
    key_padding_mask: Optional[torch.Tensor]
    dropout_p: float
    is_causal: bool
    causal_offset: int
    scale: float
    weights_mode: int
    unbatched: bool

    @property
    def shape(self):
        b, hq, nq, _ = self.query.shape
        return b, hq, nq, self.key.shape[2]


def _describe(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)} and dtype {t.dtype}"


def _check_tensor(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def _weights_mode(return_weights: ReturnWeights) -> int:
    if return_weights is False or return_weights is None:
        return 0
    if return_weights is True:
        return 1
    if isinstance(return_weights, str) and return_weights == "mean":
        return 2
    raise ValueError(f"return_weights must be False, True or 'mean', got {return_weights!r}")


def _broadcast_mask(attn_mask: torch.Tensor, full: tuple) -> torch.Tensor:
    """View ``attn_mask`` as 4-D and broadcast it to ``full`` = (B, Hq, Nq, Nk) without copying."""
    if attn_mask.dim() > 4:
        raise ValueError(
            f"attn_mask must have at most 4 dimensions broadcastable to [B, Hq, Nq, Nk] = "
            f"{list(full)}, got {_describe(attn_mask)}"
        )
    view = attn_mask[(None,) * (4 - attn_mask.dim())]  # leading size-1 dims, never a copy
    for got, want in zip(view.shape, full):
        if got != want and got != 1:
            raise ValueError(
                f"attn_mask of shape {tuple(attn_mask.shape)} is not broadcastable to [B, Hq, Nq, Nk] = {list(full)}"
            )
    return view.expand(full)


def prepare(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
    key_padding_mask: Optional[torch.Tensor] = None,
    causal_alignment: str = "top_left",
    return_weights: ReturnWeights = False,
) -> Prepared:
    """Validate the arguments of ``scaled_dot_product_attention`` and return them normalised.

    Raises ``TypeError`` for wrong types and dtypes and ``ValueError`` for wrong shapes and
    values; each message names the argument, what it got and what it expects.
    """
    query = _check_tensor("query", query)
    key = _check_tensor("key", key)
    value = _check_tensor("value", value)
    for name, t in (("query", query), ("key", key), ("value", value)):
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if not (query.dtype == key.dtype == value.dtype):
        raise TypeError(
            f"query, key and value must have the same dtype, got {query.dtype}, {key.dtype} and {value.dtype}"
        )
    if not (query.device == key.device == value.device):
        raise ValueError(
            f"query, key and value must be on the same device, got {query.device}, {key.device} and {value.device}"
        )
    if query.dim() not in (3, 4):
        raise ValueError(f"query must be 4-D [B, Hq, Nq, D] or 3-D [Hq, Nq, D], got {_describe(query)}")
    if key.dim() != query.dim() or value.dim() != query.dim():
        raise ValueError(
            f"key and value must have the same number of dimensions as query "
            f"({query.dim()}), got key {tuple(key.shape)} and value {tuple(value.shape)}"
        )
    unbatched = query.dim() == 3
    if unbatched:
        query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)

    batch, heads_q, seqlen_q, head_dim = query.shape
    _, heads_kv, seqlen_k, head_dim_k = key.shape
    if key.shape[0] != batch or value.shape[0] != batch:
        raise ValueError(
            f"query, key and value must have the same batch size, got query "
            f"{tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)}"
        )
    if head_dim_k != head_dim:
        raise ValueError(f"key head dim must equal query head dim {head_dim}, got key {tuple(key.shape)}")
    if value.shape[1] != heads_kv or value.shape[2] != seqlen_k:
        raise ValueError(
            f"value must have key's heads and length [B, {heads_kv}, {seqlen_k}, Dv], got value {tuple(value.shape)}"
        )
    head_dim_v = value.shape[3]
    for name, d in (("query/key", head_dim), ("value", head_dim_v)):
        if d < 1 or d > MAX_HEAD_DIM:
            raise ValueError(f"{name} head dim must be between 1 and {MAX_HEAD_DIM}, got {d}")
    if heads_q != heads_kv:
        if not enable_gqa:
            raise ValueError(
                f"query has {heads_q} heads but key/value have {heads_kv}; pass "
                f"enable_gqa=True for grouped-query attention"
            )
        if heads_kv == 0 or heads_q % heads_kv != 0:
            raise ValueError(
                f"with enable_gqa=True the query heads ({heads_q}) must be a multiple "
                f"of the key/value heads ({heads_kv})"
            )

    if isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real):
        raise TypeError(f"dropout_p must be a float, got {type(dropout_p).__name__}")
    dropout_p = float(dropout_p)
    if not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"dropout_p must be in [0, 1], got {dropout_p}")
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal must be a bool, got {type(is_causal).__name__}")
    if not isinstance(enable_gqa, bool):
        raise TypeError(f"enable_gqa must be a bool, got {type(enable_gqa).__name__}")
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    elif isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    elif not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    scale = float(scale)
    if causal_alignment not in CAUSAL_ALIGNMENTS:
        raise ValueError(f"causal_alignment must be 'top_left' or 'bottom_right', got {causal_alignment!r}")
    causal_offset = seqlen_k - seqlen_q if causal_alignment == "bottom_right" else 0
    weights_mode = _weights_mode(return_weights)

    full = (batch, heads_q, seqlen_q, seqlen_k)
    if attn_mask is not None:
        attn_mask = _check_tensor("attn_mask", attn_mask)
        if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
            raise TypeError(
                f"attn_mask must be bool (True = attend) or floating point (added to the scores), got {attn_mask.dtype}"
            )
        if attn_mask.device != query.device:
            raise ValueError(f"attn_mask must be on the query's device {query.device}, got {attn_mask.device}")
        if unbatched and attn_mask.dim() == 4:
            raise ValueError(
                f"attn_mask for unbatched (3-D) inputs must have at most 3 dimensions "
                f"broadcastable to [Hq, Nq, Nk], got {_describe(attn_mask)}"
            )
        attn_mask = _broadcast_mask(attn_mask, full)

    if key_padding_mask is not None:
        key_padding_mask = _check_tensor("key_padding_mask", key_padding_mask)
        if key_padding_mask.dtype != torch.bool:
            raise TypeError(
                f"key_padding_mask must be bool (True = padding, ignored), got "
                f"{key_padding_mask.dtype}; pass a float mask as attn_mask instead"
            )
        if key_padding_mask.device != query.device:
            raise ValueError(
                f"key_padding_mask must be on the query's device {query.device}, got {key_padding_mask.device}"
            )
        expected = (seqlen_k,) if unbatched else (batch, seqlen_k)
        if tuple(key_padding_mask.shape) != expected:
            raise ValueError(
                f"key_padding_mask must have shape {list(expected)} ([B, Nk]), got {tuple(key_padding_mask.shape)}"
            )
        if unbatched:
            key_padding_mask = key_padding_mask.unsqueeze(0)

    return Prepared(
        query,
        key,
        value,
        attn_mask,
        key_padding_mask,
        dropout_p,
        is_causal,
        causal_offset,
        scale,
        weights_mode,
        unbatched,
    )
