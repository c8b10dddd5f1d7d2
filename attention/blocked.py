"""attnlens's CPU path, the ``"torch"`` backend: exact attention from PyTorch operations, with no
``N x N`` buffer unless the weights are asked for.

CPU tensors take this path unless Triton's interpreter is on, and so does any device the kernels
do not run on. Its semantics are ``attnlens.reference``'s (the tests hold it to the float64
oracle); fp16 and bf16 are computed in fp32 and rounded once. Two roads:

* **fused**: torch's flash-attention CPU kernel (``aten::_scaled_dot_product_flash_attention_for_cpu``,
  what ``F.scaled_dot_product_attention`` runs on a CPU), wherever it computes exactly what
  attnlens does: no weights, no dropout, equal head dims, no causality or top-left causality, and
  masks that make one small additive mask without an ``Nq x Nk`` copy (key padding, a float
  ``attn_mask`` as given, a bool mask that does not vary along the queries). Checked on torch
  2.13: a row with nothing to attend to gets output 0 and gradients 0; GQA without repeating the
  keys; -inf and huge finite biases as attnlens reads them; fp16/bf16 accumulated in fp32.
* **blocked**: :class:`_BlockedAttention`, a ``torch.autograd.Function`` for the rest (weights,
  dropout, bottom-right causality, bool masks that vary along the queries, masks combined with
  one another). Query rows go in blocks of ``block_rows`` rows across all heads; each block takes
  the keys it can see (causality and key padding trim the key range, so masked key blocks are
  never computed), computes its scores with one matrix product, applies the masks, softmaxes the
  whole row at once (no online rescaling) and multiplies by the values. The weights are written
  once, straight into the result (per head), or summed over the heads of the block before they
  are written (``"mean"``: per-head weights never exist). The backward recomputes each block's
  probabilities from ``q`` and ``k`` (nothing ``N x N`` is saved) and needs no memory beyond a few
  blocks and the caller's weight gradient.

Score modifications (soft-capping, ALiBi, a window, sinks) take the blocked road (or the direct
one, for small problems): soft-capping and the ALiBi bias are applied to each block's scores, the
window trims each block's key range like causality does (keys outside it are never computed),
and sinks join each row's softmax denominator; the backward goes through the tanh and gives the
sinks their gradient. A row's log-sum-exp (for the sinks' share) is an output with a gradient.

Dropout: a call draws a seed from torch's generator (as the kernels do), and each query block
draws ``torch.rand([B, Hq, rows, Nk])`` from a generator seeded with it, whatever the masks; the
backward replays the same draws. :func:`dropout_keep_mask` replays them for
``attnlens.dropout_mask``.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from typing import Iterator, List, Optional, Tuple

import torch

from attnlens._inputs import Prepared

__all__ = ["attention", "block_rows", "dropout_keep_mask", "fused_eligible", "limits"]

# Rows per query block: the block's scores over all heads (and its dropout draw) hold about this
# many elements, and never fewer rows than _MIN_BLOCK_ROWS.
BLOCK_ELEMENTS = 1 << 21
_MIN_BLOCK_ROWS = 16
# A block larger than this (in elements) is computed one head at a time, so that the scores a
# head's softmax and second product read stay in the core's cache; smaller blocks go in one call
# per operation for all heads, which costs fewer Python-level operations.
HEAD_LOOP_ELEMENTS = 1 << 18
# Causal calls are computed in about this many query blocks (or more, of the size above), each
# stopping at the last key its last row can see: about half of the scores are never computed.
CAUSAL_BLOCKS = 8
CAUSAL_MIN_ROWS = 64

# Problems of at most this many scores (B * Hq * Nq * Nk, and no more than one block) take
# ``_direct``: one block of plain torch operations, differentiated by torch's autograd.
DIRECT_ELEMENTS = 1 << 21

# Below this many keys torch's fused kernel costs more than the same work in a few operations
# (torch 2.13, one thread: 750 us against 530 us at B=64, H=4, N=12, d=16; 344 us against 562 us
# at N=16).
_FUSED_MIN_KEYS = 16

_NEG_INF = float("-inf")
_FLASH_CPU = getattr(
    torch, "_scaled_dot_product_flash_attention_for_cpu", torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
)


def block_rows(batch_heads: int, seqlen_q: int, seqlen_k: int) -> int:
    """Query rows per block for ``batch_heads = B * Hq`` heads and ``seqlen_k`` keys. A function of
    the shape alone: the dropout draws follow the blocks, and ``dropout_keep_mask`` replays them."""
    rows = BLOCK_ELEMENTS // max(1, batch_heads * seqlen_k)
    return max(1, min(seqlen_q, max(_MIN_BLOCK_ROWS, rows)))


def _row_blocks(seqlen_q: int, rows: int) -> Iterator[Tuple[int, int]]:
    for start in range(0, seqlen_q, rows):
        yield start, min(seqlen_q, start + rows)


def _dropout_generator(seed: int, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def _draw_seed() -> int:
    """A seed from torch's default generator, so ``torch.manual_seed`` reproduces dropout."""
    return int(torch.randint(0, 2**62, (1,), dtype=torch.int64))


def _dropped(generator: torch.Generator, shape, dropout_p: float, device: torch.device) -> torch.Tensor:
    """Bool ``shape``, True = dropped: one query block's draw."""
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float32) < dropout_p


def dropout_keep_mask(query: torch.Tensor, key: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """The keep pattern (bool ``[B, Hq, Nq, Nk]``, True = kept) that a call on this path with these
    4-D ``query`` and ``key`` makes when it starts from torch's generator in its current state."""
    batch, heads, seqlen_q, _ = query.shape
    seqlen_k = key.shape[2]
    device = query.device
    generator = _dropout_generator(_draw_seed(), device)
    rows = block_rows(batch * heads, seqlen_q, seqlen_k)
    blocks = [
        ~_dropped(generator, (batch, heads, end - start, seqlen_k), dropout_p, device)
        for start, end in _row_blocks(seqlen_q, rows)
    ]
    if not blocks:
        return torch.ones((batch, heads, seqlen_q, seqlen_k), dtype=torch.bool, device=device)
    return torch.cat(blocks, dim=2)


# ---------------------------------------------------------------------------------------------
# the fused road: torch's flash-attention CPU kernel
# ---------------------------------------------------------------------------------------------


def _unbroadcast(mask: torch.Tensor) -> torch.Tensor:
    """``mask`` (a 4-D stride-0 broadcast view) with every broadcast dimension back to size 1."""
    index = tuple(
        slice(0, 1) if stride == 0 and size > 1 else slice(None) for size, stride in zip(mask.shape, mask.stride())
    )
    return mask[index]


def _fused_mask(p: Prepared) -> Tuple[bool, Optional[torch.Tensor]]:
    """``(eligible, additive mask or None)``: the one float mask torch's kernel would take for the
    call's attn_mask and key padding, if it needs no copy of ``Nq x Nk`` size."""
    dtype = p.query.dtype
    mask = None
    if p.attn_mask is not None:
        mask = _unbroadcast(p.attn_mask)
        if mask.dtype == torch.bool:
            if mask.shape[2] != 1:  # varies along the queries: converting it would copy Nq x Nk
                return False, None
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, _NEG_INF)
        else:
            # The kernel takes a mask of the query's dtype, or fp32 with fp16/bf16 queries (it adds
            # the mask in fp32 then, as the kernels do); its last dimension must be unit-stride.
            half = dtype in (torch.float16, torch.bfloat16)
            if mask.dtype != dtype and not (half and mask.dtype == torch.float32):
                return False, None
            if mask.stride(-1) != 1 and mask.shape[-1] != 1:
                return False, None
    if p.key_padding_mask is not None:
        padding = torch.zeros(p.key_padding_mask.shape, dtype=dtype, device=p.query.device)
        padding = padding.masked_fill_(p.key_padding_mask, _NEG_INF)[:, None, None, :]
        if mask is None:
            mask = padding
        elif mask.shape[2] == 1:  # per-key: the sum stays [B, H or 1, 1, Nk]
            mask = mask + padding
        else:
            return False, None
    return True, mask


def limits(p: Prepared) -> Optional[str]:
    """Why this path does not take a call (None when it does): head dim 0 and an infinite scale,
    which the reference computes as torch's math backend does."""
    if p.query.shape[-1] == 0:
        return "head dim 0"
    if math.isinf(p.scale):
        return f"an infinite scale ({p.scale})"
    return None


def _modified(p: Prepared) -> bool:
    return p.softcap is not None or p.window is not None or p.alibi_slopes is not None or p.sinks is not None


def fused_eligible(p: Prepared) -> bool:
    """Whether the call takes torch's flash-attention CPU kernel (see the module docstring)."""
    return _fused_plan(p)[0]


def _fused_plan(p: Prepared) -> Tuple[bool, Optional[torch.Tensor], bool]:
    """``(eligible, mask, is_causal)`` for torch's kernel."""
    batch, heads_q, seqlen_q, seqlen_k = p.shape
    if (
        p.query.device.type != "cpu"
        or _modified(p)
        or p.weights_mode != 0
        or p.dropout_p != 0.0
        or min(batch, heads_q, seqlen_q, seqlen_k) == 0  # torch's kernel divides by these
        or seqlen_k < _FUSED_MIN_KEYS
        or p.key.shape[1] == 0
        or p.value.shape[3] != p.query.shape[3]
    ):
        return False, None, False
    # Causality is needed unless every query sees every key (j <= i + offset for all i, j).
    causal = p.is_causal and p.causal_offset < seqlen_k - 1
    # torch's kernel is top-left aligned only, and with a negative scale its causal rows come out
    # NaN (torch 2.13).
    if causal and (p.causal_offset != 0 or not p.scale > 0.0):
        return False, None, False
    eligible, mask = _fused_mask(p)
    return eligible, mask, causal


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    # torch 2.13's CPU kernel reads the last dimension as contiguous whatever its stride.
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _fused(p: Prepared, mask: Optional[torch.Tensor], causal: bool) -> torch.Tensor:
    out, _ = _FLASH_CPU(
        _unit_last_stride(p.query),
        _unit_last_stride(p.key),
        _unit_last_stride(p.value),
        0.0,
        causal,
        attn_mask=mask,
        scale=p.scale,
    )
    return out


# ---------------------------------------------------------------------------------------------
# the blocked road
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Plan:
    """One call, normalised for the block loops. Tensors in ``compute`` dtype are ``[B*Hq, N, D]``."""

    batch: int
    heads: int
    heads_kv: int
    seqlen_q: int
    seqlen_k: int
    scale: float
    dropout_p: float
    is_causal: bool
    causal_offset: int
    weights_mode: int
    attn_mask: Optional[torch.Tensor]  # 4-D broadcast view [B, Hq, Nq, Nk]
    key_padding_mask: Optional[torch.Tensor]  # bool [B, Nk], True = padding
    dtype: torch.dtype  # the inputs'
    compute: torch.dtype  # fp64 for fp64 inputs, fp32 otherwise
    device: torch.device
    rows: int  # query rows per block of the dropout draws
    compute_rows: int  # query rows per block computed (fewer for causal calls)
    key_lo: int  # keys before key_lo or from key_hi on are padding in every batch element
    key_hi: int
    may_empty: bool  # whether a row can have nothing to attend to
    seed: Optional[int]
    softcap: Optional[float] = None
    window: Optional[Tuple[int, int]] = None  # (left, right), -1 unbounded
    alibi_slopes: Optional[torch.Tensor] = None  # [B, Hq] in the compute dtype
    sinks: Optional[torch.Tensor] = None  # [B, Hq, Nq] in the compute dtype (set per forward)
    want_lse: bool = False  # the rows' log-sum-exp is an output

    @property
    def batch_heads(self) -> int:
        return self.batch * self.heads

    def key_range(self, start: int, end: int) -> Tuple[int, int]:
        """The keys that rows ``start:end`` may see: padding, causality and the window trim the range."""
        lo, hi = self.key_lo, self.key_hi
        if self.is_causal:
            hi = min(hi, end - 1 + self.causal_offset + 1)
        if self.window is not None:
            left, right = self.window
            if right >= 0:
                hi = min(hi, end - 1 + self.causal_offset + right + 1)
            if left >= 0:
                lo = max(lo, start + self.causal_offset - left)
        return lo, max(lo, hi)

    def causal_block(self, start: int, end: int, key_start: int, key_end: int) -> Optional[Tuple[int, torch.Tensor]]:
        """``(first column, bool [rows, columns])``: where causality or the window masks keys of
        this block (True = masked), from the first key some row of the block may not see; None if
        none is masked."""
        first = key_end
        if self.is_causal:
            first = max(key_start, start + self.causal_offset + 1)
        if self.window is not None:
            left, right = self.window
            if right >= 0:
                first = min(first, max(key_start, start + self.causal_offset + right + 1))
            if left >= 0 and key_start < end - 1 + self.causal_offset - left:
                first = key_start  # the window's left edge reaches into the block
        if first >= key_end:
            return None
        rows = torch.arange(start, end, device=self.device)[:, None] + self.causal_offset
        cols = torch.arange(first, key_end, device=self.device)[None, :]
        masked = torch.zeros((end - start, key_end - first), dtype=torch.bool, device=self.device)
        if self.is_causal:
            masked |= cols > rows
        if self.window is not None:
            left, right = self.window
            if right >= 0:
                masked |= cols > rows + right
            if left >= 0:
                masked |= cols < rows - left
        return first - key_start, masked


def _plan(p: Prepared) -> _Plan:
    batch, heads, seqlen_q, seqlen_k = p.shape
    key_lo, key_hi = 0, seqlen_k
    padding = p.key_padding_mask
    if padding is not None and padding.numel():
        used = torch.nonzero(~padding.all(dim=0)).flatten()
        if used.numel():
            key_lo, key_hi = int(used[0]), int(used[-1]) + 1
        else:
            key_lo = key_hi = 0
    may_empty = (
        p.attn_mask is not None
        or padding is not None
        or (p.is_causal and p.causal_offset < 0)
        or p.window is not None
        or seqlen_k == 0
    )
    rows = block_rows(batch * heads, seqlen_q, seqlen_k)
    compute_rows = rows
    if p.is_causal and seqlen_q > 2 * CAUSAL_MIN_ROWS:  # blocks that stop at their diagonal skip work
        compute_rows = max(1, min(rows, max(CAUSAL_MIN_ROWS, -(-seqlen_q // CAUSAL_BLOCKS))))
    return _Plan(
        batch=batch,
        heads=heads,
        heads_kv=p.key.shape[1],
        seqlen_q=seqlen_q,
        seqlen_k=seqlen_k,
        scale=p.scale,
        dropout_p=p.dropout_p,
        is_causal=p.is_causal,
        causal_offset=p.causal_offset,
        weights_mode=p.weights_mode,
        attn_mask=p.attn_mask,
        key_padding_mask=padding,
        dtype=p.query.dtype,
        compute=torch.float64 if p.query.dtype == torch.float64 else torch.float32,
        device=p.query.device,
        rows=rows,
        compute_rows=compute_rows,
        key_lo=key_lo,
        key_hi=key_hi,
        may_empty=may_empty,
        seed=_draw_seed() if p.dropout_p > 0.0 else None,
        softcap=p.softcap,
        window=p.window,
        alibi_slopes=p.alibi_slopes,
    )


def _as_heads(plan: _Plan, t: torch.Tensor, expand: bool) -> torch.Tensor:
    """``[B, H, N, D]`` -> ``[B*Hq, N, D]`` in the compute dtype (key/value heads repeated for
    GQA when ``expand``); a view when no conversion is needed."""
    if t.dtype != plan.compute:
        t = t.to(plan.compute)
    if expand and t.shape[1] != plan.heads:
        t = t.repeat_interleave(plan.heads // t.shape[1], dim=1)
    return t.reshape(plan.batch_heads, t.shape[2], t.shape[3])


class _Scratch:
    """Contiguous buffers reused by the blocks of one call: allocated (and paged in) once, on first use."""

    def __init__(self, plan: _Plan):
        self.plan = plan
        self.buffers: dict = {}

    def get(self, index: int, shape) -> torch.Tensor:
        buffer = self.buffers.get(index)
        if buffer is None:
            plan = self.plan
            size = plan.batch_heads * min(plan.rows, plan.seqlen_q) * max(plan.seqlen_k, 1)
            buffer = self.buffers[index] = torch.empty(size, dtype=plan.compute, device=plan.device)
        return buffer[: math.prod(shape)].view(shape)


# torch 2.13's CPU softmax takes 10-20x longer per element on rows shorter than 16 (27 ns against
# 2.7 ns at 12 and 16 keys, one thread): such rows are softmaxed with elementwise operations.
_SHORT_ROWS = 16


def _softmax(scores: torch.Tensor) -> torch.Tensor:
    """Row softmax (differentiable): torch's, or elementwise operations on short rows. A row of
    -inf gives NaN, as torch's does."""
    if scores.shape[-1] >= _SHORT_ROWS or scores.device.type != "cpu" or scores.numel() == 0:
        return torch.softmax(scores, dim=-1)
    exp = (scores - scores.detach().amax(dim=-1, keepdim=True)).exp()
    return exp / exp.sum(dim=-1, keepdim=True)


def _softmax_(scores: torch.Tensor) -> None:
    """Row softmax of a contiguous tensor, in place."""
    if scores.numel() == 0:
        return
    if scores.shape[-1] < _SHORT_ROWS:
        scores.sub_(scores.amax(dim=-1, keepdim=True)).exp_()
        scores.div_(scores.sum(dim=-1, keepdim=True))
    elif scores.device.type == "cpu":
        # torch's CPU kernel reads a whole row before writing it, so out may alias a contiguous input
        # (a non-contiguous out is written wrongly by torch 2.13: never pass one).
        torch.softmax(scores, -1, out=scores)
    else:
        scores.copy_(torch.softmax(scores, dim=-1))


def _bias(mask: torch.Tensor, compute: torch.dtype) -> torch.Tensor:
    """A float mask block ready to add to ``compute`` scores. A wider mask's finite values below
    the compute dtype's range are huge penalties, not -inf (as the reference keeps them)."""
    if torch.finfo(mask.dtype).max > torch.finfo(compute).max:
        lowest = torch.finfo(compute).min
        mask = torch.where(torch.isneginf(mask), mask, mask.clamp(min=lowest)).to(compute)
    return mask


class _Heads:
    """The heads of ``[B*Hq, ...]`` one step of a block covers: batch elements ``b0:b1`` and heads
    ``h0:h1`` of each, where either every head is in (``h0:h1 = 0:Hq``) or one batch element
    is (``b1 = b0 + 1``), so that the step's heads are one contiguous range of ``B*Hq``."""

    def __init__(self, plan: _Plan, b0: int, b1: int, h0: int, h1: int):
        self.plan = plan
        self.b0, self.b1, self.h0, self.h1 = b0, b1, h0, h1
        self.span = slice(b0 * plan.heads + h0, (b1 - 1) * plan.heads + h1)
        self.count = self.span.stop - self.span.start

    def view4(self, t: torch.Tensor) -> torch.Tensor:
        """``[count, rows, keys]`` -> ``[b1 - b0, h1 - h0, rows, keys]``, which lines up with this
        step's blocks of ``[B, Hq, Nq, Nk]`` tensors."""
        return t.view(self.b1 - self.b0, self.h1 - self.h0, t.shape[1], t.shape[2])

    def mask(self, t: Optional[torch.Tensor], rows: slice, keys: slice) -> Optional[torch.Tensor]:
        """These heads' block of a ``[B, Hq, Nq, Nk]`` tensor (mask, weights, their gradient)."""
        if t is None:
            return None
        return t[self.b0 : self.b1, self.h0 : self.h1, rows, keys]

    def padding(self, keys: slice) -> Optional[torch.Tensor]:
        pad = self.plan.key_padding_mask
        if pad is None:
            return None
        return pad[self.b0 : self.b1, None, None, keys]

    def dropped(self, drop: Optional[torch.Tensor], keys: slice) -> Optional[torch.Tensor]:
        """This step's part of the block's dropout draw ``[B, Hq, rows, Nk]``."""
        if drop is None:
            return None
        return drop[self.b0 : self.b1, self.h0 : self.h1, :, keys]


def _head_steps(plan: _Plan, rows: int, keys: int) -> List[_Heads]:
    """The steps of one block: as many heads per step as keep a step's scores within
    ``HEAD_LOOP_ELEMENTS`` (at least one head), so that a head's softmax and second product read
    scores still in the core's cache, without a step per head where heads are small."""
    batch, heads = plan.batch, plan.heads
    per_head = max(1, rows * keys)
    budget = max(HEAD_LOOP_ELEMENTS, per_head)
    if batch * heads * per_head <= budget or batch * heads == 0:
        return [_Heads(plan, 0, batch, 0, heads)]
    if heads * per_head <= budget:
        group = budget // (heads * per_head)
        return [_Heads(plan, b, min(batch, b + group), 0, heads) for b in range(0, batch, group)]
    group = budget // per_head
    return [_Heads(plan, b, b + 1, h, min(heads, h + group)) for b in range(batch) for h in range(0, heads, group)]


def _blocks(plan: _Plan, generator: Optional[torch.Generator]) -> Iterator[Tuple[int, int, Optional[torch.Tensor]]]:
    """``(start, end, dropped)`` for each query block in order: rows ``start:end`` and their part of
    the dropout draw (bool ``[B, Hq, rows, Nk]``, True = dropped) or None.

    The draws are made per ``plan.rows`` rows, a function of the shape alone (so
    ``dropout_keep_mask`` can replay them); causal calls compute in smaller blocks inside those,
    each of which stops at the keys its last row can see."""
    for draw_start, draw_end in _row_blocks(plan.seqlen_q, plan.rows):
        drop = None
        if generator is not None:
            shape = (plan.batch, plan.heads, draw_end - draw_start, plan.seqlen_k)
            drop = _dropped(generator, shape, plan.dropout_p, plan.device)
        for start in range(draw_start, draw_end, plan.compute_rows):
            end = min(draw_end, start + plan.compute_rows)
            yield start, end, (None if drop is None else drop[:, :, start - draw_start : end - draw_start])


def _probabilities(
    plan: _Plan,
    heads: _Heads,
    q3: torch.Tensor,
    k3: torch.Tensor,
    start: int,
    end: int,
    key_start: int,
    key_end: int,
    causal: Optional[Tuple[int, torch.Tensor]],
    out: torch.Tensor,
    slope: Optional[torch.Tensor] = None,
    lse: Optional[torch.Tensor] = None,
) -> None:
    """The softmax probabilities (before dropout) of rows ``start:end`` over keys
    ``key_start:key_end`` for ``heads``, written into ``out`` (contiguous ``[count, rows, keys]``).
    Masked keys get 0; a row with nothing to attend to gets 0 everywhere (with a sink, the sink
    takes the row). With soft-capping, ``slope`` (like ``out``) receives 1 - tanh**2, the capped
    score's derivative; with sinks, ``lse`` (``[B*Hq, Nq]``) receives the rows' log-sum-exp over
    the keys and the sink."""
    rows, keys = slice(start, end), slice(key_start, key_end)
    torch.baddbmm(out, q3[heads.span, rows], k3[heads.span, keys].transpose(1, 2), beta=0.0, alpha=plan.scale, out=out)
    if plan.softcap is not None:
        out.div_(plan.softcap).tanh_()
        if slope is not None:
            torch.mul(out, out, out=slope).neg_().add_(1.0)
        out.mul_(plan.softcap)
    scores = heads.view4(out)
    if plan.alibi_slopes is not None:
        scores.addcmul_(
            plan.alibi_slopes[heads.b0 : heads.b1, heads.h0 : heads.h1, None, None],
            _distance(plan, start, end, key_start, key_end),
            value=-1.0,
        )
    mask = heads.mask(plan.attn_mask, rows, keys)
    if mask is not None:
        if mask.dtype == torch.bool:
            scores.masked_fill_(~mask, _NEG_INF)
        else:
            scores.add_(_bias(mask, plan.compute))
    padding = heads.padding(keys)
    if padding is not None:
        scores.masked_fill_(padding, _NEG_INF)
    if causal is not None:
        first, masked = causal
        out[..., first:].masked_fill_(masked, _NEG_INF)
    if plan.sinks is not None:
        _softmax_with_sink_(out, plan.sinks[heads.span, rows, None], None if lse is None else lse[heads.span, rows])
        return
    empty = None
    if plan.may_empty:
        empty = out.amax(dim=-1, keepdim=True) == _NEG_INF
    _softmax_(out)
    if empty is not None and bool(empty.any()):
        out.masked_fill_(empty, 0.0)


def _distance(plan: _Plan, start: int, end: int, key_start: int, key_end: int) -> torch.Tensor:
    """``|i + offset - j|`` for rows ``start:end`` and keys ``key_start:key_end`` (ALiBi's distance)."""
    rows = torch.arange(start, end, device=plan.device, dtype=plan.compute)[:, None] + plan.causal_offset
    return (rows - torch.arange(key_start, key_end, device=plan.device, dtype=plan.compute)[None, :]).abs_()


def _softmax_with_sink_(scores: torch.Tensor, sink: torch.Tensor, lse: Optional[torch.Tensor]) -> None:
    """Row softmax in place with one more logit per row, ``sink`` (``[..., rows, 1]``, no value):
    the probabilities of the real keys sum to 1 minus the sink's share. ``lse`` receives the rows'
    log-sum-exp over the keys and the sink."""
    top = torch.maximum(scores.amax(dim=-1, keepdim=True), sink)
    scores.sub_(top).exp_()
    total = scores.sum(dim=-1, keepdim=True).add_((sink - top).exp_())
    scores.div_(total)
    if lse is not None:
        lse.copy_((total.log_() + top).squeeze(-1))


def _drop_(plan: _Plan, heads: _Heads, probs: torch.Tensor, dropped: Optional[torch.Tensor]) -> None:
    """Apply dropout in place: dropped probabilities to 0, the rest scaled by 1 / (1 - p)."""
    if dropped is None:
        return
    heads.view4(probs).masked_fill_(dropped, 0.0)
    probs.mul_(0.0 if plan.dropout_p >= 1.0 else 1.0 / (1.0 - plan.dropout_p))


def _forward(
    plan: _Plan, q3: torch.Tensor, k3: torch.Tensor, v3: torch.Tensor
) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """``(out [B*Hq, Nq, Dv] in the compute dtype, weights or None, lse [B*Hq, Nq] or None)``:
    the rows' log-sum-exp with sinks (over the keys and the sink)."""
    bh, seqlen_q, seqlen_k = plan.batch_heads, plan.seqlen_q, plan.seqlen_k
    out3 = torch.empty((bh, seqlen_q, v3.shape[2]), dtype=plan.compute, device=plan.device)
    lse = None
    if plan.sinks is not None:  # a row that computes nothing sees only its sink: lse = sink
        lse = plan.sinks.clone()
    weights = None
    if plan.weights_mode == 1:
        weights = torch.empty((plan.batch, plan.heads, seqlen_q, seqlen_k), dtype=plan.dtype, device=plan.device)
    elif plan.weights_mode == 2:
        weights = torch.empty((plan.batch, seqlen_q, seqlen_k), dtype=plan.dtype, device=plan.device)
    scratch = _Scratch(plan)
    generator = _dropout_generator(plan.seed, plan.device) if plan.seed is not None else None
    mean_scale = 1.0 / plan.heads if plan.heads else 0.0

    for start, end, drop in _blocks(plan, generator):
        rows = slice(start, end)
        key_start, key_end = plan.key_range(start, end)
        if weights is not None:  # what the block does not compute is 0
            if key_start > 0:
                weights[..., rows, :key_start].zero_()
            if max(key_end, key_start) < seqlen_k:
                weights[..., rows, max(key_end, key_start) :].zero_()
        if key_end <= key_start:
            out3[:, rows].zero_()
            continue
        keys = slice(key_start, key_end)
        causal = plan.causal_block(start, end, key_start, key_end)
        steps = _head_steps(plan, end - start, key_end - key_start)
        for heads in steps:
            shape = (heads.count, end - start, key_end - key_start)
            target = _weights_in_place(plan, heads, weights, rows, keys)
            probs = target if target is not None else scratch.get(0, shape)
            _probabilities(plan, heads, q3, k3, start, end, key_start, key_end, causal, probs, lse=lse)
            _drop_(plan, heads, probs, heads.dropped(drop, keys))
            if plan.weights_mode == 1 and target is None:
                heads.mask(weights, rows, keys).copy_(heads.view4(probs))
            elif plan.weights_mode == 2:
                _accumulate_mean(plan, heads, probs, weights, rows, keys, scratch, mean_scale)
            torch.bmm(probs, v3[heads.span, keys], out=out3[heads.span, rows])
    return out3, weights, lse


def _weights_in_place(
    plan: _Plan, heads: _Heads, weights: Optional[torch.Tensor], rows: slice, keys: slice
) -> Optional[torch.Tensor]:
    """The per-head weights' block itself as a contiguous ``[count, rows, keys]`` tensor, when the
    probabilities can be computed right there (no copy), else None."""
    if plan.weights_mode != 1 or weights.dtype != plan.compute:
        return None
    block = heads.mask(weights, rows, keys)
    if not block.is_contiguous():
        return None
    return block.reshape(heads.count, block.shape[-2], block.shape[-1])


def _accumulate_mean(
    plan: _Plan,
    heads: _Heads,
    probs: torch.Tensor,
    weights: torch.Tensor,
    rows: slice,
    keys: slice,
    scratch: _Scratch,
    mean_scale: float,
) -> None:
    """Add this step's probabilities to the head average of their rows; each batch element's
    average is written once, when its last head is in."""
    total = heads.view4(probs).sum(dim=1)  # [b1 - b0, rows, keys]
    if heads.h0 == 0 and heads.h1 == plan.heads:
        weights[heads.b0 : heads.b1, rows, keys].copy_(total.mul_(mean_scale))
        return
    partial = scratch.get(1, total.shape)
    if heads.h0 == 0:
        partial.copy_(total)
    else:
        partial.add_(total)
    if heads.h1 == plan.heads:
        weights[heads.b0 : heads.b1, rows, keys].copy_(partial.mul_(mean_scale))


def _backward(
    plan: _Plan,
    q3: torch.Tensor,
    k3: torch.Tensor,
    v3: torch.Tensor,
    dout3: Optional[torch.Tensor],
    dweights: Optional[torch.Tensor],
    saved_probs: Optional[torch.Tensor] = None,
    lse: Optional[torch.Tensor] = None,
    dlse: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """``(dq, dk, dv)`` as ``[B*Hq, N, D]`` in the compute dtype, block by block from recomputed
    probabilities, or read from ``saved_probs`` (``[B*Hq, Nq, Nk]``, the forward's per-head weights
    when they are the probabilities themselves). ``dout3``/``dweights`` may be None (that output
    took no part in the loss). With sinks, ``lse`` is the forward's ``[B*Hq, Nq]``, ``dlse`` its
    incoming gradient or None, and the sinks' gradient ``[B*Hq, Nq]`` is returned last (else
    None): the sink is a key of value 0, so dsink = -P_sink * (delta - dlse)."""
    dq3 = torch.empty_like(q3, dtype=plan.compute, memory_format=torch.contiguous_format)
    dk3 = torch.zeros(k3.shape, dtype=plan.compute, device=plan.device)
    dv3 = torch.zeros(v3.shape, dtype=plan.compute, device=plan.device)
    dsinks = None
    if plan.sinks is not None:  # rows that compute nothing have delta = 0 - dlse
        dsinks = (plan.sinks - lse).exp_() * (dlse if dlse is not None else 0.0)
    dropout = plan.seed is not None
    scratch = _Scratch(plan)
    generator = _dropout_generator(plan.seed, plan.device) if dropout else None
    keep_scale = 0.0 if plan.dropout_p >= 1.0 else 1.0 / (1.0 - plan.dropout_p)
    mean_scale = 1.0 / plan.heads if plan.heads else 0.0

    for start, end, drop in _blocks(plan, generator):
        rows = slice(start, end)
        key_start, key_end = plan.key_range(start, end)
        if key_end <= key_start:
            dq3[:, rows].zero_()
            continue
        keys = slice(key_start, key_end)
        causal = plan.causal_block(start, end, key_start, key_end)
        for heads in _head_steps(plan, end - start, key_end - key_start):
            span = heads.span
            shape = (heads.count, end - start, key_end - key_start)
            slope = scratch.get(3, shape) if plan.softcap is not None else None
            if saved_probs is not None and slope is None:
                probs = saved_probs[span, rows, keys]
            else:
                probs = scratch.get(0, shape)
                _probabilities(plan, heads, q3, k3, start, end, key_start, key_end, causal, probs, slope)
            dropped = heads.dropped(drop, keys)
            kept = probs
            if dropped is not None:
                kept = scratch.get(2, shape)
                kept.copy_(probs)
                _drop_(plan, heads, kept, dropped)
            # dL/dP_dropped = dout @ v^T + dweights
            grad = scratch.get(1, shape)
            if dout3 is not None:
                dv3[span, keys].baddbmm_(kept.transpose(1, 2), dout3[span, rows])
                torch.bmm(dout3[span, rows], v3[span, keys].transpose(1, 2), out=grad)
            else:
                grad.zero_()
            if dweights is not None:
                if plan.weights_mode == 2:
                    block = dweights[heads.b0 : heads.b1, None, rows, keys]
                    heads.view4(grad).add_(block, alpha=mean_scale)
                else:
                    heads.view4(grad).add_(heads.mask(dweights, rows, keys))
            if dropped is not None:  # dL/dP = dL/dP_dropped where kept, times 1 / (1 - p)
                heads.view4(grad).masked_fill_(dropped, 0.0)
                grad.mul_(keep_scale)
            # dL/dS = P ∘ (dL/dP - rowsum(dL/dP ∘ P)): torch's softmax backward, one pass, the row
            # sum taken over the block's whole row as the reference's autograd does (not
            # rowsum(dout ∘ out): the same number, from a rounded out)
            if dsinks is not None:  # delta = rowsum(dL/dP * P) over the row's keys
                delta = (grad * probs).sum(dim=-1)
                if dlse is not None:
                    delta -= dlse[span, rows]
                dsinks[span, rows] = -(plan.sinks[span, rows] - lse[span, rows]).exp() * delta
            grad = torch._softmax_backward_data(grad, probs, -1, plan.compute)
            if dlse is not None:  # dlse/dS = P
                grad.addcmul_(probs, dlse[span, rows, None])
            if slope is not None:  # through the tanh, to the uncapped scores
                grad.mul_(slope)
            torch.baddbmm(dq3[span, rows], grad, k3[span, keys], beta=0.0, alpha=plan.scale, out=dq3[span, rows])
            dk3[span, keys].baddbmm_(grad.transpose(1, 2), q3[span, rows], alpha=plan.scale)
    return dq3, dk3, dv3, dsinks


class _BlockedAttention(torch.autograd.Function):
    """``(out, weights, lse)`` of the blocked road; ``weights`` is an empty tensor when not asked
    for, ``lse`` (the rows' log-sum-exp, ``[B, Hq, Nq]``) when there are no sinks."""

    @staticmethod
    def forward(ctx, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, sinks, plan: _Plan):
        plan = dataclasses.replace(plan, sinks=_sinks3(plan, sinks))
        q3 = _as_heads(plan, query, expand=False)
        k3 = _as_heads(plan, key, expand=True)
        v3 = _as_heads(plan, value, expand=True)
        out3, weights, lse = _forward(plan, q3, k3, v3)
        out = out3.view(plan.batch, plan.heads, plan.seqlen_q, out3.shape[2])
        if out.dtype != plan.dtype:
            out = out.to(plan.dtype)
        ctx.plan = plan
        ctx.shapes = (query.shape, key.shape, value.shape)
        ctx.dtypes = (query.dtype, key.dtype, value.dtype)
        ctx.save_for_backward(q3, k3, v3, lse)
        ctx.set_materialize_grads(False)
        ctx.weights = None
        ctx.sinks = None if sinks is None else (sinks.shape, sinks.dtype)
        if weights is None:
            weights = out.new_empty((0,))
            ctx.mark_non_differentiable(weights)
        elif plan.weights_mode == 1 and weights.dtype == plan.compute and plan.seed is None:
            # Per-head weights without dropout are the probabilities: the backward reads them
            # instead of recomputing them, if the caller still holds them unchanged (a weak
            # reference keeps nothing alive, and a modified tensor is simply recomputed).
            ctx.weights = (weakref.ref(weights), weights._version)
        if lse is None:
            lse = out.new_empty((0,))
            ctx.mark_non_differentiable(lse)
        else:
            lse = lse.view(plan.batch, plan.heads, plan.seqlen_q)
        return out, weights, lse

    @staticmethod
    def backward(ctx, grad_out: Optional[torch.Tensor], grad_weights: Optional[torch.Tensor], grad_lse):
        plan: _Plan = ctx.plan
        q3, k3, v3, lse = ctx.saved_tensors
        dout3 = None
        if grad_out is not None:
            dout3 = grad_out.to(plan.compute).reshape(plan.batch_heads, plan.seqlen_q, grad_out.shape[-1])
        if plan.weights_mode == 0:
            grad_weights = None
        dlse = None
        if grad_lse is not None and plan.sinks is not None:
            dlse = grad_lse.to(plan.compute).reshape(plan.batch_heads, plan.seqlen_q)
        if dout3 is None and grad_weights is None and dlse is None:
            return None, None, None, None, None
        saved_probs = None
        if ctx.weights is not None:
            reference, version = ctx.weights
            weights = reference()
            if weights is not None and weights._version == version:
                saved_probs = weights.view(plan.batch_heads, plan.seqlen_q, plan.seqlen_k)
        lse3 = None if plan.sinks is None else lse.view(plan.batch_heads, plan.seqlen_q)
        dq3, dk3, dv3, dsinks = _backward(plan, q3, k3, v3, dout3, grad_weights, saved_probs, lse3, dlse)
        (q_shape, k_shape, v_shape), (q_dtype, k_dtype, v_dtype) = ctx.shapes, ctx.dtypes
        group = plan.heads // max(plan.heads_kv, 1)

        def back(t: torch.Tensor, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
            t = t.view(plan.batch, plan.heads, shape[2], shape[3])
            if group > 1:
                t = t.view(plan.batch, plan.heads_kv, group, shape[2], shape[3]).sum(dim=2)
            return t.to(dtype)

        dq = dq3.view(q_shape).to(q_dtype)
        grad_sinks = None
        if ctx.sinks is not None:
            sinks_shape, sinks_dtype = ctx.sinks
            grad_sinks = dsinks.view(sinks_shape).to(sinks_dtype)
        return dq, back(dk3, k_shape, k_dtype), back(dv3, v_shape, v_dtype), grad_sinks, None


def _sinks3(plan: _Plan, sinks: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The prepared sinks ``[B, Hq, Nq]`` as ``[B*Hq, Nq]`` in the compute dtype (no grad)."""
    if sinks is None:
        return None
    return sinks.detach().to(plan.compute).reshape(plan.batch_heads, plan.seqlen_q)


def _direct(plan: _Plan, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, sinks: Optional[torch.Tensor]):
    """A problem of one block (``DIRECT_ELEMENTS`` scores at most) as plain torch operations on all
    of it, differentiated by torch's autograd (which keeps the block's probabilities): the blocked
    road's arithmetic without its per-block bookkeeping, which would cost more than the work here.
    Returns ``(out, weights or None, lse or None)`` (lse with sinks)."""
    q3, k3, v3 = _as_heads(plan, query, False), _as_heads(plan, key, True), _as_heads(plan, value, True)
    batch, heads, seqlen_q, seqlen_k = plan.batch, plan.heads, plan.seqlen_q, plan.seqlen_k
    scores = torch.baddbmm(q3.new_zeros(()), q3, k3.transpose(1, 2), beta=0.0, alpha=plan.scale)
    if plan.softcap is not None:
        scores = torch.tanh(scores / plan.softcap) * plan.softcap
    scores4 = scores.view(batch, heads, seqlen_q, seqlen_k)
    if plan.alibi_slopes is not None:
        scores4.addcmul_(plan.alibi_slopes[:, :, None, None], _distance(plan, 0, seqlen_q, 0, seqlen_k), value=-1.0)
    if plan.attn_mask is not None:
        if plan.attn_mask.dtype == torch.bool:
            scores4.masked_fill_(~plan.attn_mask, _NEG_INF)
        else:
            scores4.add_(_bias(plan.attn_mask, plan.compute))
    if plan.key_padding_mask is not None:
        scores4.masked_fill_(plan.key_padding_mask[:, None, None, :], _NEG_INF)
    masked = plan.causal_block(0, seqlen_q, 0, seqlen_k)
    if masked is not None:
        scores[..., masked[0] :].masked_fill_(masked[1], _NEG_INF)
    grad = scores.requires_grad or (sinks is not None and sinks.requires_grad and torch.is_grad_enabled())
    lse = None
    if sinks is not None:  # one more logit per row, of no value
        sink = sinks.to(plan.compute).reshape(batch * heads, seqlen_q, 1)
        top = torch.maximum(scores.detach().amax(dim=-1, keepdim=True), sink.detach())
        exp = (scores - top).exp()
        total = exp.sum(dim=-1, keepdim=True) + (sink - top).exp()
        probs = exp / total
        lse = (total.log() + top).view(batch, heads, seqlen_q)
        empty = None
    else:
        empty = None
        if plan.may_empty and seqlen_k > 0:
            empty = scores.detach().amax(dim=-1, keepdim=True) == _NEG_INF
            if bool(empty.any()):
                scores.masked_fill_(empty, 0.0)  # finite, so that neither softmax nor its gradient is NaN
            else:
                empty = None
        if grad:
            probs = _softmax(scores)
            if empty is not None:
                probs = probs.masked_fill(empty, 0.0)
        else:  # nothing to keep for a backward: in place
            _softmax_(scores)
            probs = scores
            if empty is not None:
                probs.masked_fill_(empty, 0.0)
    if plan.seed is not None:
        generator = _dropout_generator(plan.seed, plan.device)
        dropped = _dropped(generator, (batch, heads, seqlen_q, seqlen_k), plan.dropout_p, plan.device)
        keep_scale = 0.0 if plan.dropout_p >= 1.0 else 1.0 / (1.0 - plan.dropout_p)
        probs = (
            probs.masked_fill(dropped.view(probs.shape), 0.0)
            if grad
            else probs.masked_fill_(dropped.view(probs.shape), 0.0)
        )
        probs = probs * keep_scale if grad else probs.mul_(keep_scale)
    out = torch.bmm(probs, v3).view(batch, heads, seqlen_q, v3.shape[2])
    weights = None
    if plan.weights_mode:
        weights = probs.view(batch, heads, seqlen_q, seqlen_k)
        if plan.weights_mode == 2:
            weights = weights.mean(dim=1) if heads else weights.sum(dim=1)
        # (fp32/fp64 per-head weights without dropout are the tensor torch's softmax keeps for its
        # backward: modifying them in place before the backward raises, as in eager torch.)
        weights = weights if weights.dtype == plan.dtype else weights.to(plan.dtype)
    return (out if out.dtype == plan.dtype else out.to(plan.dtype)), weights, lse


def _blocked_no_grad(plan: _Plan, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, sinks):
    """The blocked forward without autograd's bookkeeping (nothing will need a gradient)."""
    plan = dataclasses.replace(plan, sinks=_sinks3(plan, sinks))
    out3, weights, lse = _forward(
        plan, _as_heads(plan, query, False), _as_heads(plan, key, True), _as_heads(plan, value, True)
    )
    out = out3.view(plan.batch, plan.heads, plan.seqlen_q, out3.shape[2])
    if lse is not None:
        lse = lse.view(plan.batch, plan.heads, plan.seqlen_q)
    return (out if out.dtype == plan.dtype else out.to(plan.dtype)), weights, lse


def attention(p: Prepared) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """``(out [B, Hq, Nq, Dv], weights or None, lse or None)`` for prepared arguments: per-head
    weights ``[B, Hq, Nq, Nk]`` or the head mean ``[B, Nq, Nk]`` as ``p.weights_mode`` asks; with
    sinks, the rows' log-sum-exp ``[B, Hq, Nq]`` over the keys and the sink (differentiable; the
    sinks' share is ``exp(sink - lse)``)."""
    eligible, mask, causal = _fused_plan(p)
    if eligible:
        return _fused(p, mask, causal), None, None
    plan = _plan(p)
    if plan.compute_rows >= plan.seqlen_q and plan.batch_heads * plan.seqlen_q * plan.seqlen_k <= min(
        DIRECT_ELEMENTS, BLOCK_ELEMENTS
    ):
        return _direct(plan, p.query, p.key, p.value, p.sinks)
    inputs = (p.query, p.key, p.value) + (() if p.sinks is None else (p.sinks,))
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in inputs)):
        return _blocked_no_grad(plan, p.query, p.key, p.value, p.sinks)
    out, weights, lse = _BlockedAttention.apply(p.query, p.key, p.value, p.sinks, plan)
    return out, (weights if p.weights_mode else None), (lse if p.sinks is not None else None)
