"""The kernels as torch custom ops with autograd, so eager mode and torch.compile share one path.

``attnlens::attention_forward`` returns ``(out, lse, weights)``; ``weights`` is empty unless asked
for; ``lse`` ``[B, Hq, Nq, 2]`` holds each row's max and log row sum (``attention_forward``), which
the backward op takes back. With torch >= 2.6 and compiled kernels it is a ``torch.library.triton_op`` whose launches
go through ``wrap_triton``, so torch.compile sees the Triton kernels themselves. Under the
interpreter (or torch < 2.6) it is an opaque ``torch.library.custom_op`` with a fake
implementation; torch.compile traces around it without graph breaks either way.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from attnlens.kernels import USES_WRAP_TRITON, AttentionProblem, attention_forward, attention_weights
from attnlens.kernels.backward import attention_backward
from attnlens.kernels.forward import _like_query_layout

__all__ = ["attention_op", "attention_backward_op"]

_MODE_NONE, _MODE_PER_HEAD, _MODE_MEAN = 0, 1, 2


def _register(name: str, fn, mutates_args=()):
    if USES_WRAP_TRITON and hasattr(torch.library, "triton_op"):
        return torch.library.triton_op(name, fn, mutates_args=mutates_args)
    return torch.library.custom_op(name, fn, mutates_args=mutates_args)


def _problem(
    query, attn_mask, key_padding_mask, seed, scale, dropout_p, is_causal, causal_offset, allow_tf32, kv_range=None
) -> AttentionProblem:
    return AttentionProblem(
        scale=scale,
        is_causal=is_causal,
        causal_offset=causal_offset,
        attn_mask=attn_mask,
        key_padding_mask=key_padding_mask,
        dropout_p=dropout_p,
        seed=seed,
        allow_tf32=allow_tf32,
        kv_range=kv_range,
    )


def _forward_impl(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: Optional[torch.Tensor],
    key_padding_mask: Optional[torch.Tensor],
    seed: Optional[torch.Tensor],
    scale: float,
    dropout_p: float,
    is_causal: bool,
    causal_offset: int,
    weights_mode: int,
    allow_tf32: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    problem = _problem(query, attn_mask, key_padding_mask, seed, scale, dropout_p, is_causal, causal_offset, allow_tf32)
    out, lse = attention_forward(query, key, value, problem)
    if weights_mode == _MODE_NONE:
        weights = query.new_empty((0,))
    else:
        weights = attention_weights(query, key, lse, problem, mean=weights_mode == _MODE_MEAN)
    return out, lse, weights


attention_op = _register("attnlens::attention_forward", _forward_impl)


@attention_op.register_fake
def _forward_fake(
    query,
    key,
    value,
    attn_mask,
    key_padding_mask,
    seed,
    scale,
    dropout_p,
    is_causal,
    causal_offset,
    weights_mode,
    allow_tf32,
):
    batch, heads_q, seqlen_q, _ = query.shape
    seqlen_k, head_dim_v = key.shape[2], value.shape[3]
    out = _like_query_layout(query, (batch, heads_q, seqlen_q, head_dim_v))
    lse_dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
    lse = query.new_empty((batch, heads_q, seqlen_q, 2), dtype=lse_dtype)  # (row max, log row sum)
    if weights_mode == _MODE_NONE:
        weights = query.new_empty((0,))
    elif weights_mode == _MODE_MEAN:
        weights = query.new_empty((batch, seqlen_q, seqlen_k))
    else:
        weights = query.new_empty((batch, heads_q, seqlen_q, seqlen_k))
    return out, lse, weights


def _backward_impl(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    grad_out: torch.Tensor,
    grad_weights: Optional[torch.Tensor],
    attn_mask: Optional[torch.Tensor],
    key_padding_mask: Optional[torch.Tensor],
    seed: Optional[torch.Tensor],
    scale: float,
    dropout_p: float,
    is_causal: bool,
    causal_offset: int,
    weights_mode: int,
    allow_tf32: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    problem = _problem(query, attn_mask, key_padding_mask, seed, scale, dropout_p, is_causal, causal_offset, allow_tf32)
    return attention_backward(
        query,
        key,
        value,
        out,
        lse,
        grad_out,
        problem,
        grad_weights=grad_weights,
        weights_mean=weights_mode == _MODE_MEAN,
    )


attention_backward_op = _register("attnlens::attention_backward", _backward_impl)


@attention_backward_op.register_fake
def _backward_fake(
    query,
    key,
    value,
    out,
    lse,
    grad_out,
    grad_weights,
    attn_mask,
    key_padding_mask,
    seed,
    scale,
    dropout_p,
    is_causal,
    causal_offset,
    weights_mode,
    allow_tf32,
):
    return (
        _like_query_layout(query, tuple(query.shape)),
        _like_query_layout(key, tuple(key.shape)),
        _like_query_layout(value, tuple(value.shape)),
    )


def _setup_context(ctx, inputs, output):
    (
        query,
        key,
        value,
        attn_mask,
        key_padding_mask,
        seed,
        scale,
        dropout_p,
        is_causal,
        causal_offset,
        weights_mode,
        allow_tf32,
    ) = inputs
    out, lse, _ = output
    ctx.save_for_backward(query, key, value, out, lse, attn_mask, key_padding_mask, seed)
    ctx.params = (scale, dropout_p, is_causal, causal_offset, weights_mode, allow_tf32)
    ctx.mark_non_differentiable(lse)
    # Leave unused outputs' gradients as None: a weights tensor returned only to be looked at
    # must not cost an N x N read of zeros in the backward.
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_out, grad_lse, grad_weights):
    query, key, value, out, lse, attn_mask, key_padding_mask, seed = ctx.saved_tensors
    scale, dropout_p, is_causal, causal_offset, weights_mode, allow_tf32 = ctx.params
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    if weights_mode == _MODE_NONE:
        grad_weights = None
    grad_q, grad_k, grad_v = attention_backward_op(
        query,
        key,
        value,
        out,
        lse,
        grad_out,
        grad_weights,
        attn_mask,
        key_padding_mask,
        seed,
        scale,
        dropout_p,
        is_causal,
        causal_offset,
        weights_mode,
        allow_tf32,
    )
    return grad_q, grad_k, grad_v, None, None, None, None, None, None, None, None, None


attention_op.register_autograd(_backward, setup_context=_setup_context)
