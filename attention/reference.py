"""attnlens.reference: attention in plain PyTorch, with exactly the kernels' semantics.

This is what CPU tensors run when the Triton interpreter is off, and it is the tests' oracle
(evaluated in float64). It is itself checked against ``torch.nn.functional.scaled_dot_product_attention``
and ``torch.nn.MultiheadAttention``.

It materialises the full ``[B, Hq, Nq, Nk]`` score matrix: fine for teaching-sized inputs on a
CPU, which is what it is for.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch

from attnlens._inputs import Prepared, ReturnWeights, prepare
from attnlens.errors import AttentionTypeError, AttentionValueError

__all__ = ["scaled_dot_product_attention", "attention", "allowed_mask", "sink_share"]


def allowed_mask(p: Prepared) -> Optional[torch.Tensor]:
    """Bool ``[B or 1, Hq or 1, Nq, Nk]``: True where a query may attend to a key (causal, window,
    bool attn_mask and key padding combined), or None when nothing is masked."""
    batch, heads_q, seqlen_q, seqlen_k = p.shape
    device = p.query.device
    rows = torch.arange(seqlen_q, device=device)[:, None] + p.causal_offset  # the aligned diagonal
    cols = torch.arange(seqlen_k, device=device)[None, :]
    allowed = None
    if p.is_causal:
        allowed = (cols <= rows)[None, None]
    if p.window is not None:
        left, right = p.window
        inside = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=device)
        if left >= 0:
            inside &= cols >= rows - left
        if right >= 0:
            inside &= cols <= rows + right
        allowed = inside[None, None] if allowed is None else allowed & inside
    if p.attn_mask is not None and p.attn_mask.dtype == torch.bool:
        allowed = p.attn_mask if allowed is None else allowed & p.attn_mask
    if p.key_padding_mask is not None:
        keep = ~p.key_padding_mask[:, None, None, :]
        allowed = keep if allowed is None else allowed & keep
    return allowed


def attention(
    p: Prepared, dropout_mask: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attention on prepared arguments, in the inputs' dtype.

    Returns ``(out [B, Hq, Nq, Dv], weights [B, Hq, Nq, Nk], lse [B, Hq, Nq])``; weights are after
    dropout, lse (natural log, over the keys and the sink) is -inf for a row with nothing to
    attend to. ``dropout_mask`` (bool, True = keep, broadcastable to the weights) replaces the
    random draw when given.

    Score modifications, in this order: soft-capping, the ALiBi bias ``-slope * |i + offset - j|``,
    the additive mask; then the masks. A sink is one more logit in every row's softmax, of value 0:
    the weights over the real keys sum to 1 minus its share, ``exp(sink - lse)``.
    """
    q, k, v = p.query, p.key, p.value
    group = q.shape[1] // max(k.shape[1], 1)
    if group > 1:
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    if math.isinf(p.scale):
        # torch's maths for scale = +-inf (and for head dim 0, whose default scale 1/sqrt(0) is
        # inf): q and k each times sqrt(scale) before the product, so the scores are what IEEE
        # arithmetic makes of it (+-inf, or NaN), and an empty product stays 0.
        root = math.sqrt(p.scale) if p.scale > 0 else math.nan
        scores = torch.matmul(q * root, (k * root).transpose(-2, -1))
    else:
        scores = torch.matmul(q, k.transpose(-2, -1)) * p.scale
    if p.softcap is not None:
        scores = p.softcap * torch.tanh(scores / p.softcap)
    if p.alibi_slopes is not None:
        rows = torch.arange(scores.shape[-2], device=scores.device)[:, None] + p.causal_offset
        distance = (rows - torch.arange(scores.shape[-1], device=scores.device)[None, :]).abs()
        scores = scores - p.alibi_slopes.to(scores.dtype)[:, :, None, None] * distance.to(scores.dtype)
    if p.attn_mask is not None and p.attn_mask.dtype != torch.bool:
        bias = p.attn_mask
        if torch.finfo(bias.dtype).min < torch.finfo(scores.dtype).min:
            # A wider mask's very negative values (finfo(float32).min with fp16 inputs) are biases,
            # not -inf: clamp them to the scores' dtype as the kernels do, rather than overflow.
            bias = torch.where(torch.isneginf(bias), bias, bias.clamp(min=torch.finfo(scores.dtype).min))
        scores = scores + bias.to(scores.dtype)
    allowed = allowed_mask(p)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    # Softmax by hand so that a row with nothing to attend to gives zeros instead of NaN.
    row_max = (
        scores.amax(dim=-1, keepdim=True).detach()
        if scores.shape[-1]
        else scores.new_full(scores.shape[:-1] + (1,), float("-inf"))
    )
    sink = None if p.sinks is None else p.sinks.to(scores.dtype)[..., None]
    if sink is not None:
        row_max = torch.maximum(row_max, sink.detach())
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    exp = torch.exp(scores - row_max)
    total = exp.sum(dim=-1, keepdim=True)
    if sink is not None:
        total = total + torch.exp(sink - row_max)
    empty = total == 0
    weights = exp / torch.where(empty, torch.ones_like(total), total)
    lse = torch.where(
        empty,
        torch.full_like(total, float("-inf")),
        torch.log(torch.where(empty, torch.ones_like(total), total)) + row_max,
    ).squeeze(-1)
    if p.dropout_p > 0.0:
        if dropout_mask is None:
            draw = torch.rand(weights.shape, generator=generator, device=weights.device, dtype=torch.float32)
            dropout_mask = draw >= p.dropout_p
        keep_scale = 0.0 if p.dropout_p >= 1.0 else 1.0 / (1.0 - p.dropout_p)
        weights = torch.where(dropout_mask, weights * keep_scale, torch.zeros_like(weights))
    out = torch.matmul(weights, v)
    return out, weights, lse


def scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
    *,
    key_padding_mask: Optional[torch.Tensor] = None,
    causal_alignment: str = "top_left",
    return_weights: ReturnWeights = False,
    softcap: Optional[float] = None,
    sinks: Optional[torch.Tensor] = None,
    window: Optional[Tuple[int, int]] = None,
    alibi_slopes: Optional[torch.Tensor] = None,
    return_sink_share: bool = False,
    dropout_mask: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> Union[torch.Tensor, Tuple[torch.Tensor, ...]]:
    """The plain-PyTorch twin of ``attnlens.scaled_dot_product_attention`` (same arguments, same
    results), plus ``dropout_mask`` (bool, True = keep) to impose a dropout pattern and
    ``generator`` for the random draw otherwise."""
    p = prepare(
        query,
        key,
        value,
        attn_mask,
        dropout_p,
        is_causal,
        scale,
        enable_gqa,
        key_padding_mask,
        causal_alignment,
        return_weights,
        softcap,
        sinks,
        window,
        alibi_slopes,
    )
    check_sink_share(p, return_sink_share)
    out, weights, lse = attention(p, dropout_mask, generator)
    share = sink_share(p, lse) if return_sink_share else None
    return format_result(p, out, weights, share)


def check_sink_share(p: Prepared, return_sink_share: object) -> None:
    if not isinstance(return_sink_share, bool):
        raise AttentionTypeError(f"return_sink_share must be a bool, got {type(return_sink_share).__name__}")
    if return_sink_share and p.sinks is None:
        raise AttentionValueError("return_sink_share=True needs sinks (the share of each row that goes to the sink)")


def sink_share(p: Prepared, lse: torch.Tensor) -> torch.Tensor:
    """Each row's softmax share of its sink ``[B, Hq, Nq]``, ``exp(sink - lse)`` (lse over the keys
    and the sink, natural log), in the query's dtype; differentiable."""
    return torch.exp(p.sinks.to(lse.dtype) - lse).to(p.query.dtype)


def format_result(
    p: Prepared, out: torch.Tensor, weights: Optional[torch.Tensor], sink_share: Optional[torch.Tensor] = None
):
    """Apply the public return convention: give ``out`` (and per-head weights) the leading dims of
    the inputs' broadcast (``p.batch_shape``: none for 2-D inputs, the heads alone for 3-D ones),
    average heads for ``return_weights='mean'`` (when ``weights`` is per head), return ``out`` or
    ``(out, weights)``, and the sinks' share ``[..., Hq, Nq]`` (head-averaged with "mean") last
    when it is given. Splitting ``B`` and ``H`` back into those dims is always a view."""
    lead = p.batch_shape
    result = [out.reshape(*lead, *out.shape[2:])]
    if p.weights_mode == 2:
        if weights.dim() == 4:
            weights = weights.mean(dim=1) if weights.shape[1] else weights.sum(dim=1)
        result.append(weights.reshape(*lead[:-1], *weights.shape[1:]))
    elif p.weights_mode == 1:
        result.append(weights.reshape(*lead, *weights.shape[2:]))
    if sink_share is not None:
        if p.weights_mode == 2:
            result.append(sink_share.mean(dim=1).reshape(*lead[:-1], sink_share.shape[-1]))
        else:
            result.append(sink_share.reshape(*lead, sink_share.shape[-1]))
    return result[0] if len(result) == 1 else tuple(result)
