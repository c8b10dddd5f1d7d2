"""Checking and normalising the arguments of ``scaled_dot_product_attention``.

Every path (compiled kernels, interpreter, reference) goes through ``prepare`` so they accept and
refuse exactly the same inputs and see them in the same normal form: 4-D ``[B, H, N, D]`` q/k/v,
a 4-D attention mask view broadcast to ``[B, Hq, Nq, Nk]``, and resolved scale and causal offset.

The shapes accepted are torch's: ``query [..., Nq, D]``, ``key [..., Nk, D]``, ``value [..., Nk,
Dv]`` with at least 2 dimensions each, whose leading dimensions broadcast against each other as
``torch.matmul``'s do (so a batch of 1 or a single key/value head serves every query batch or
head). The last leading dimension is the head dimension; ``enable_gqa=True`` lets it differ as in
grouped-query attention. Broadcasting is done with ``expand`` (stride 0), never a copy; flattening
more than one batch dimension into ``B`` is a view whenever the strides allow it (see
``_flatten``).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import sys
from typing import List, Optional, Sequence, Tuple, Union

import torch

from attnlens.errors import AttentionTypeError, AttentionValueError

__all__ = ["Prepared", "prepare", "kernel_limits", "MAX_HEAD_DIM", "SUPPORTED_DTYPES"]

# The largest head dim the kernels compile; larger (and 0) run on the plain-PyTorch path.
MAX_HEAD_DIM = 256
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
CAUSAL_ALIGNMENTS = ("top_left", "bottom_right")

ReturnWeights = Union[bool, str]


@dataclasses.dataclass
class Prepared:
    """Normalised arguments. ``weights_mode`` is 0 (none), 1 (per head) or 2 (head mean).

    ``query`` ``[B, Hq, Nq, D]``, ``key`` ``[B, Hkv, Nk, D]``, ``value`` ``[B, Hkv, Nk, Dv]`` with
    Hq a multiple of Hkv; ``batch_shape`` is the leading dims of the caller's output
    (``[*batch_shape, Nq, Dv]``), which ``B`` and ``Hq`` flatten (row-major).

    Score modifications (None when absent): ``softcap`` a positive float; ``window`` ``(left,
    right)`` with -1 for an unbounded side (never both -1); ``alibi_slopes`` ``[B, Hq]`` and
    ``sinks`` ``[B, Hq, Nq]`` (stride-0 views where the caller's tensors broadcast), both in the
    accumulation dtype (float32; float64 for float64 inputs), ``sinks`` differentiable."""

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
    batch_shape: Tuple[int, ...]
    softcap: Optional[float] = None
    window: Optional[Tuple[int, int]] = None
    alibi_slopes: Optional[torch.Tensor] = None
    sinks: Optional[torch.Tensor] = None

    @property
    def shape(self):
        b, hq, nq, _ = self.query.shape
        return b, hq, nq, self.key.shape[2]

    @property
    def unbatched(self) -> bool:
        """Whether the inputs were 3-D ``[H, N, D]``: outputs drop the batch dim."""
        return len(self.batch_shape) == 1


def kernel_limits(p: Prepared) -> Optional[str]:
    """Why the Triton kernels cannot run ``p`` (None when they can): head dims they do not compile
    (0 or above ``MAX_HEAD_DIM``) or an infinite scale. Such calls run on the plain-PyTorch path."""
    head_dim, head_dim_v = p.query.shape[-1], p.value.shape[-1]
    for name, d in (("query/key", head_dim), ("value", head_dim_v)):
        if d < 1 or d > MAX_HEAD_DIM:
            return f"the kernels compile head dims 1 to {MAX_HEAD_DIM}; {name} head dim is {d}"
    if math.isinf(p.scale):
        return f"the kernels take a finite scale; got {p.scale}"
    return None


def _describe(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)} and dtype {t.dtype}"


def _overrides_torch_function(t: torch.Tensor) -> bool:
    """Whether ``t`` is a tensor subclass that gives torch functions its own meaning (its own
    ``__torch_function__``), so that its memory is not what it stands for. ``nn.Parameter`` and
    subclasses that only intercept dispatch (FakeTensor, FunctionalTensor under torch.compile) are
    plain tensors here."""
    cls = type(t)
    if cls is torch.Tensor or cls is torch.nn.Parameter:
        return False
    impl = getattr(cls, "__torch_function__", None)
    if impl is torch._C._disabled_torch_function_impl:
        return False
    return getattr(impl, "__func__", impl) is not torch.Tensor.__torch_function__.__func__


def _check_tensor(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise AttentionTypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_nested:
        raise AttentionTypeError(
            f"{name} is a NestedTensor, which attnlens does not take; pad the sequences to one length and pass "
            f"key_padding_mask (True = padding) instead"
        )
    if _overrides_torch_function(t):
        raise AttentionTypeError(
            f"{name} is a {type(t).__module__}.{type(t).__name__}, a tensor subclass with its own "
            f"__torch_function__ that attnlens does not understand (it reads a tensor's memory as the values); "
            f"pass a plain torch.Tensor"
        )
    return t


def _causal_bias(attn_mask: object) -> Optional[Tuple[bool, int, int]]:
    """``(lower_right, seq_len_q, seq_len_kv)`` when ``attn_mask`` is torch's ``CausalBias``
    (``torch.nn.attention.bias.causal_upper_left`` / ``causal_lower_right``), else None. Its storage
    is uninitialised and must never be read; it stands for ``is_causal`` with an alignment."""
    if type(attn_mask) is torch.Tensor or not isinstance(attn_mask, torch.Tensor):
        return None
    # No CausalBias can exist unless its module was imported; not importing it keeps
    # `import attnlens` from importing torch._dynamo.
    bias = sys.modules.get("torch.nn.attention.bias")
    if bias is None or not isinstance(attn_mask, bias.CausalBias):
        return None
    variant = attn_mask.variant
    if variant not in (bias.CausalVariant.UPPER_LEFT, bias.CausalVariant.LOWER_RIGHT):
        raise AttentionValueError(f"attn_mask is a CausalBias of unknown variant {variant!r}")
    return variant == bias.CausalVariant.LOWER_RIGHT, int(attn_mask.seq_len_q), int(attn_mask.seq_len_kv)


def _weights_mode(return_weights: ReturnWeights) -> int:
    if return_weights is False or return_weights is None:
        return 0
    if return_weights is True:
        return 1
    if isinstance(return_weights, str) and return_weights == "mean":
        return 2
    raise AttentionValueError(f"return_weights must be False, True or 'mean', got {return_weights!r}")


def _real(name: str, value: object, expected: str) -> float:
    """A Python float from a real number or a 0-dim real tensor (torch accepts both); bool is
    refused, since ``scale=True`` is always a mistake."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_complex() and value.dtype != torch.bool:
        return float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise AttentionTypeError(f"{name} must be {expected}, got {type(value).__name__}")
    return float(value)


def _broadcast(what: str, shapes: Sequence[Tuple[int, ...]], described: str) -> Tuple[int, ...]:
    if all(shape == shapes[0] for shape in shapes):
        return tuple(shapes[0])  # the common case, without torch's general rule (tens of microseconds)
    try:
        return tuple(torch.broadcast_shapes(*shapes))
    except RuntimeError:
        raise AttentionValueError(f"{what} are not broadcastable (torch.matmul's rule): {described}") from None


def _heads(heads_q: int, heads_k: int, heads_v: int, enable_gqa: bool, described: str) -> Tuple[int, int]:
    """``(output heads, key/value heads the kernels see)`` under torch's rules. Without
    ``enable_gqa`` the head dims (dim -3) broadcast: each is 1 or the common count, so one key/value
    head serves every query head (multi-query attention). With it, the key heads and the value
    heads must each divide the query heads, as in grouped-query attention."""
    if not enable_gqa:
        heads = max(heads_q, heads_k, heads_v) if min(heads_q, heads_k, heads_v) != 0 else 0
        if any(h not in (1, heads) for h in (heads_q, heads_k, heads_v)):
            raise AttentionValueError(
                f"query has {heads_q} heads (dim -3) but key has {heads_k} and value {heads_v}: each must equal the "
                f"others or be 1 (broadcast); pass enable_gqa=True for grouped-query attention ({described})"
            )
        return heads, heads_k if heads_k == heads_v else heads
    for name, h in (("key", heads_k), ("value", heads_v)):
        if (h == 0 and heads_q != 0) or (h != 0 and heads_q % h != 0):
            raise AttentionValueError(
                f"with enable_gqa=True the {name} heads (dim -3) must divide the query heads (a multiple of them): "
                f"query has {heads_q}, {name} has {h} ({described})"
            )
    return heads_q, math.lcm(heads_k, heads_v)


def _with_heads(t: torch.Tensor, rank: int, batch_dims: Tuple[int, ...], heads: int) -> torch.Tensor:
    """``t`` ``[..., N, D]`` as ``[*batch_dims, heads, N, D]``: missing leading dims added and size-1
    dims expanded (views, stride 0). Only a head count other than 1 that must grow (key and value
    with different head counts under ``enable_gqa``) is repeated, which copies."""
    if t.dim() == rank + 2 and t.shape[:-2] == (*batch_dims, heads):
        return t  # already [*batch_dims, heads, N, D]
    t = t[(None,) * (rank + 2 - t.dim())]
    if rank == 0:  # [N, D] everywhere: one head
        return t[None]
    own = t.shape[rank - 1]
    if own != heads and own != 1:
        t = t.repeat_interleave(heads // own, dim=rank - 1)
    return t.expand(*batch_dims, heads, *t.shape[rank:])


def _mergeable(t: torch.Tensor, start: int, end: int) -> bool:
    """Whether dims ``start:end`` of ``t`` can be viewed as one dim (no copy)."""
    if t.numel() == 0:
        return True
    dims = [(t.shape[i], t.stride(i)) for i in range(start, end) if t.shape[i] != 1]
    return all(dims[i][1] == dims[i + 1][1] * dims[i + 1][0] for i in range(len(dims) - 1))


def _flatten(tensors: List[torch.Tensor], batch_dims: Tuple[int, ...], may_fold: bool) -> List[torch.Tensor]:
    """``[*batch_dims, H, ...]`` tensors as ``[B, H', ...]``, sharing one split of ``batch_dims``.

    The kernels take one batch stride, so batch dims broadcast in some but not all of their dims
    cannot always be merged into ``B`` without a copy. When ``may_fold`` (no key_padding_mask, no
    head-averaged weights), trailing batch dims may instead be folded into the heads (``B`` =
    the first dims, ``H'`` = the rest times ``H``): the kernels map query head ``h'`` to key head
    ``h' // group`` either way, so the result is the same. The first split that is a view for
    every tensor wins; if none is, ``B`` takes all batch dims and ``reshape`` copies what it must."""
    n = len(batch_dims)
    if n == 1:
        return tensors
    if n == 0:
        return [t.unsqueeze(0) for t in tensors]
    splits = range(n, -1, -1) if may_fold else (n,)
    for j in splits:
        if all(_mergeable(t, 0, j) and _mergeable(t, j, n + 1) for t in tensors):
            break
    else:
        j = n
    batch = math.prod(batch_dims[:j])
    return [t.reshape(batch, math.prod(t.shape[j : n + 1]), *t.shape[n + 1 :]) for t in tensors]


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
    softcap: Optional[float] = None,
    sinks: Optional[torch.Tensor] = None,
    window: Optional[Sequence[int]] = None,
    alibi_slopes: Optional[torch.Tensor] = None,
) -> Prepared:
    """Validate the arguments of ``scaled_dot_product_attention`` and return them normalised.

    Raises ``AttentionTypeError`` (a ``TypeError``) for wrong types and dtypes and
    ``AttentionValueError`` (a ``ValueError``) for wrong shapes, values and devices, both also
    ``RuntimeError`` as torch's errors are; each message names the argument, what it got and what
    it expects.
    """
    query = _check_tensor("query", query)
    key = _check_tensor("key", key)
    value = _check_tensor("value", value)
    for name, t in (("query", query), ("key", key), ("value", value)):
        if t.dtype not in SUPPORTED_DTYPES:
            raise AttentionTypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if not (query.dtype == key.dtype == value.dtype):
        raise AttentionTypeError(
            f"query, key and value must have the same dtype, got {query.dtype}, {key.dtype} and {value.dtype}"
        )
    if not (query.device == key.device == value.device):
        raise AttentionValueError(
            f"query, key and value must be on the same device, got {query.device}, {key.device} and {value.device}"
        )
    for name, t in (("query", query), ("key", key), ("value", value)):
        if t.dim() < 2:
            raise AttentionValueError(
                f"{name} must have at least 2 dimensions ([..., N, D], any leading dims, as torch), got {_describe(t)}"
            )
    described = f"query {tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)}"
    seqlen_q, head_dim = query.shape[-2:]
    seqlen_k, head_dim_k = key.shape[-2:]
    if head_dim_k != head_dim:
        raise AttentionValueError(f"key head dim must equal query head dim {head_dim}, got key {tuple(key.shape)}")
    if value.shape[-2] != seqlen_k:
        raise AttentionValueError(
            f"value must have key's length Nk = {seqlen_k} ([..., {seqlen_k}, Dv]), got value {tuple(value.shape)}"
        )

    if not isinstance(is_causal, bool):
        raise AttentionTypeError(f"is_causal must be a bool, got {type(is_causal).__name__}")
    if not isinstance(enable_gqa, bool):
        raise AttentionTypeError(f"enable_gqa must be a bool, got {type(enable_gqa).__name__}")
    dropout_p = _real("dropout_p", dropout_p, "a float in [0, 1]")
    if not 0.0 <= dropout_p <= 1.0:
        raise AttentionValueError(f"dropout_p must be in [0, 1], got {dropout_p}")
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim) if head_dim else math.inf  # torch's 1 / sqrt(0)
    else:
        scale = _real("scale", scale, "a float or None")
        if math.isnan(scale):
            raise AttentionValueError(
                "scale must be a number or None, got nan (torch's own backends disagree on it: NaN from the math "
                "backend, zeros from the CPU flash backend)"
            )
    if causal_alignment not in CAUSAL_ALIGNMENTS:
        raise AttentionValueError(f"causal_alignment must be 'top_left' or 'bottom_right', got {causal_alignment!r}")
    weights_mode = _weights_mode(return_weights)

    causal_bias = _causal_bias(attn_mask)
    if causal_bias is not None:
        lower_right, bias_q, bias_k = causal_bias
        if is_causal:
            raise AttentionValueError(
                "CausalBias should not be used with causal=True: attn_mask is torch's causal bias already, "
                "pass one or the other (as torch requires)"
            )
        if (bias_q, bias_k) != (seqlen_q, seqlen_k):
            raise AttentionValueError(
                f"attn_mask is a CausalBias for {bias_q} queries and {bias_k} keys, but query has Nq = {seqlen_q} "
                f"and key Nk = {seqlen_k}"
            )
        attn_mask, is_causal = None, True
        causal_alignment = "bottom_right" if lower_right else "top_left"
    causal_offset = seqlen_k - seqlen_q if causal_alignment == "bottom_right" else 0

    # Leading dims: right-aligned, broadcast as torch.matmul's batch dims; the last is the heads.
    leads = [tuple(t.shape[:-2]) for t in (query, key, value)]
    rank = max(len(lead) for lead in leads)
    leads = [(1,) * (rank - len(lead)) + lead for lead in leads]
    if rank == 0:
        batch_dims, heads, heads_kv = (), 1, 1
        batch_shape: Tuple[int, ...] = ()
    else:
        batch_dims = _broadcast(
            "the batch dims (all dims before -3) of query, key and value", [lead[:-1] for lead in leads], described
        )
        heads, heads_kv = _heads(leads[0][-1], leads[1][-1], leads[2][-1], enable_gqa, described)
        batch_shape = batch_dims + (heads,)
    tensors = [
        _with_heads(query, rank, batch_dims, heads),
        _with_heads(key, rank, batch_dims, heads_kv),
        _with_heads(value, rank, batch_dims, heads_kv),
    ]

    scores_shape = batch_shape + (seqlen_q, seqlen_k)
    if attn_mask is not None:
        attn_mask = _check_tensor("attn_mask", attn_mask)
        if attn_mask.dtype != torch.bool and attn_mask.dtype not in (torch.float32, query.dtype):
            kind = "floating point" if attn_mask.is_floating_point() else "an integer dtype"
            raise AttentionTypeError(
                f"attn_mask must be bool (True = attend), or float32 or the query's dtype {query.dtype} (added to the "
                f"scores), as torch requires; got {attn_mask.dtype} ({kind}). Cast it explicitly: attnlens never "
                f"changes a mask's dtype"
            )
        if attn_mask.device != query.device:
            raise AttentionValueError(f"attn_mask must be on the query's device {query.device}, got {attn_mask.device}")
        if attn_mask.dim() > len(scores_shape):
            raise AttentionValueError(
                f"attn_mask must have at most {len(scores_shape)} dimensions broadcastable to the scores "
                f"{list(scores_shape)} ([..., Nq, Nk]; torch adds it to them in place, so it cannot add dims), "
                f"got {_describe(attn_mask)}"
            )
        aligned = attn_mask[(None,) * (len(scores_shape) - attn_mask.dim())]  # leading size-1 dims, a view
        if any(got not in (1, want) for got, want in zip(aligned.shape, scores_shape)):
            raise AttentionValueError(
                f"attn_mask of shape {tuple(attn_mask.shape)} is not broadcastable to the scores "
                f"{list(scores_shape)} ([..., Nq, Nk])"
            )
        if rank == 0:
            aligned = aligned[None]
        tensors.append(aligned.expand(*batch_dims, heads, seqlen_q, seqlen_k))

    if key_padding_mask is not None:
        key_padding_mask = _check_tensor("key_padding_mask", key_padding_mask)
        if key_padding_mask.dtype != torch.bool:
            raise AttentionTypeError(
                f"key_padding_mask must be bool (True = padding, ignored), got "
                f"{key_padding_mask.dtype}; pass a float mask as attn_mask instead"
            )
        if key_padding_mask.device != query.device:
            raise AttentionValueError(
                f"key_padding_mask must be on the query's device {query.device}, got {key_padding_mask.device}"
            )
        expected = batch_dims + (seqlen_k,)
        if tuple(key_padding_mask.shape) != expected:
            raise AttentionValueError(
                f"key_padding_mask must have shape {list(expected)} ([B, Nk], the batch dims of the output), "
                f"got {tuple(key_padding_mask.shape)}"
            )
        key_padding_mask = key_padding_mask.reshape(math.prod(batch_dims), seqlen_k)

    softcap = check_softcap(softcap)
    window = check_window(window)
    per_head = sinks is not None or alibi_slopes is not None
    # Per-head sinks and slopes need the heads as they are: no folding of batch dims into them.
    may_fold = key_padding_mask is None and weights_mode != 2 and not per_head
    flat = _flatten(tensors, batch_dims, may_fold=may_fold)
    query, key, value = flat[:3]
    attn_mask = flat[3] if attn_mask is not None else None
    accumulation = torch.float64 if query.dtype == torch.float64 else torch.float32
    if sinks is not None:
        sinks = _sinks(sinks, batch_dims, heads, seqlen_q, query.device, accumulation)
    if alibi_slopes is not None:
        alibi_slopes = _alibi_slopes(alibi_slopes, batch_dims, heads, query.device, accumulation)
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
        batch_shape,
        softcap,
        window,
        alibi_slopes,
        sinks,
    )


def check_softcap(softcap: object) -> Optional[float]:
    if softcap is None:
        return None
    value = _real("softcap", softcap, "a positive float or None")
    if not (value > 0 and math.isfinite(value)):
        raise AttentionValueError(
            f"softcap must be a positive finite float (scores become softcap * tanh(scores / softcap)), got {value}"
        )
    return value


def check_window(window: object) -> Optional[Tuple[int, int]]:
    """``(left, right)`` as ints >= -1 (-1: unbounded), or None for no window (also (-1, -1))."""
    if window is None:
        return None
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise AttentionTypeError(
            f"window must be (left, right), two ints (-1 for an unbounded side, as flash-attn's window_size), "
            f"got {window!r}"
        )
    sides = []
    for name, side in zip(("left", "right"), window):
        if isinstance(side, bool) or not isinstance(side, numbers.Integral):
            raise AttentionTypeError(f"window's {name} side must be an int, got {type(side).__name__} {side!r}")
        if side < -1:
            raise AttentionValueError(f"window's {name} side must be >= 0, or -1 for unbounded, got {side}")
        sides.append(int(side))
    return None if sides == [-1, -1] else (sides[0], sides[1])


def _sinks(
    sinks: object, batch_dims: Tuple[int, ...], heads: int, seqlen_q: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """``sinks`` as a differentiable ``[B, Hq, Nq]`` view in ``dtype``: one logit per head
    (``[Hq]``), or per row (any shape broadcastable to ``[..., Hq, Nq]``, e.g. computed from the
    tokens). Broadcasting is a stride-0 view; its backward sums the rows' gradients back."""
    sinks = _check_tensor("sinks", sinks)
    if not sinks.is_floating_point():
        raise AttentionTypeError(f"sinks must be a floating point tensor of logits, got {sinks.dtype}")
    if sinks.device != device:
        raise AttentionValueError(f"sinks must be on the query's device {device}, got {sinks.device}")
    rows = batch_dims + (heads, seqlen_q)
    per_head = sinks.dim() == 1
    aligned = sinks[:, None] if per_head else sinks
    if aligned.dim() > len(rows) or any(got not in (1, want) for got, want in zip(aligned.shape[::-1], rows[::-1])):
        raise AttentionValueError(
            f"sinks must have shape [Hq] = [{heads}] (one logit per query head) or broadcast to the rows "
            f"{list(rows)} ([..., Hq, Nq], one logit per row), got {_describe(sinks)}"
        )
    full = aligned.to(dtype).expand(rows)  # differentiable: gradients reach the caller's dtype and shape
    return full.reshape(math.prod(batch_dims), heads, seqlen_q)


def _alibi_slopes(
    slopes: object, batch_dims: Tuple[int, ...], heads: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    slopes = _check_tensor("alibi_slopes", slopes)
    if not slopes.is_floating_point():
        raise AttentionTypeError(f"alibi_slopes must be a floating point tensor, got {slopes.dtype}")
    if tuple(slopes.shape) not in ((heads,), batch_dims + (heads,)):
        expected = f"[{heads}] or {list(batch_dims + (heads,))}"
        raise AttentionValueError(f"alibi_slopes must have shape [Hq] or [B, Hq] = {expected}, got {_describe(slopes)}")
    if slopes.device != device:
        raise AttentionValueError(f"alibi_slopes must be on the query's device {device}, got {slopes.device}")
    if slopes.requires_grad and torch.is_grad_enabled():
        raise AttentionValueError(
            "alibi_slopes requires grad, but attnlens treats the slopes as constants and computes no gradient for "
            "them; pass alibi_slopes.detach()"
        )
    batch = math.prod(batch_dims)
    if slopes.dim() == 1:
        return slopes.to(dtype)[None].expand(batch, heads)
    return slopes.to(dtype).reshape(batch, heads)
