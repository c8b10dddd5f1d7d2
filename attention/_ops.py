"""The kernels as torch custom ops with autograd, so eager mode and torch.compile share one path.

``attnlens::sdpa_forward`` (``sdpa_forward_op``) returns ``(out, row_stats, weights)``; ``weights``
is empty unless asked for; ``row_stats`` ``[B, Hq, Nq, 2]`` holds each row's max and log row sum
(``attnlens.kernels.launch_forward``), which ``attnlens::sdpa_backward`` (``sdpa_backward_op``)
takes back. With torch >= 2.6 and compiled kernels they are ``torch.library.triton_op``s whose
launches go through ``wrap_triton``, so torch.compile sees the Triton kernels themselves. Under
the interpreter (or torch < 2.6) they are opaque ``torch.library.custom_op``s with fake
implementations; torch.compile traces around them without graph breaks either way.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from attnlens.kernels import (
    USES_WRAP_TRITON,
    AttentionProblem,
    empty_like_query,
    launch_backward,
    launch_forward,
    launch_weights,
)

__all__ = ["sdpa_forward_op", "sdpa_backward_op"]

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
    out, row_stats = launch_forward(query, key, value, problem)
    if weights_mode == _MODE_NONE:
        weights = query.new_empty((0,))
    else:
        weights = launch_weights(query, key, row_stats, problem, mean=weights_mode == _MODE_MEAN)
    return out, row_stats, weights


sdpa_forward_op = _register("attnlens::sdpa_forward", _forward_impl)


@sdpa_forward_op.register_fake
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
    out = empty_like_query(query, (batch, heads_q, seqlen_q, head_dim_v))
    stats_dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
    row_stats = query.new_empty((batch, heads_q, seqlen_q, 2), dtype=stats_dtype)  # (row max, log row sum)
    if weights_mode == _MODE_NONE:
        weights = query.new_empty((0,))
    elif weights_mode == _MODE_MEAN:
        weights = query.new_empty((batch, seqlen_q, seqlen_k))
    else:
        weights = query.new_empty((batch, heads_q, seqlen_q, seqlen_k))
    return out, row_stats, weights


def _backward_impl(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    out: torch.Tensor,
    row_stats: torch.Tensor,
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
    return launch_backward(
        query,
        key,
        value,
        out,
        row_stats,
        grad_out,
        problem,
        grad_weights=grad_weights,
        weights_mean=weights_mode == _MODE_MEAN,
    )


sdpa_backward_op = _register("attnlens::sdpa_backward", _backward_impl)


@sdpa_backward_op.register_fake
def _backward_fake(
    query,
    key,
    value,
    out,
    row_stats,
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
        empty_like_query(query, tuple(query.shape)),
        empty_like_query(key, tuple(key.shape)),
        empty_like_query(value, tuple(value.shape)),
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
    out, row_stats, _ = output
    ctx.save_for_backward(query, key, value, out, row_stats, attn_mask, key_padding_mask, seed)
    ctx.params = (scale, dropout_p, is_causal, causal_offset, weights_mode, allow_tf32)
    ctx.mark_non_differentiable(row_stats)
    # Leave unused outputs' gradients as None: a weights tensor returned only to be looked at
    # must not cost an N x N read of zeros in the backward.
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_out, grad_row_stats, grad_weights):
    query, key, value, out, row_stats, attn_mask, key_padding_mask, seed = ctx.saved_tensors
    scale, dropout_p, is_causal, causal_offset, weights_mode, allow_tf32 = ctx.params
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    if weights_mode == _MODE_NONE:
        grad_weights = None
    grad_q, grad_k, grad_v = sdpa_backward_op(
        query,
        key,
        value,
        out,
        row_stats,
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


sdpa_forward_op.register_autograd(_backward, setup_context=_setup_context)
