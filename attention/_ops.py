"""The kernels as torch custom ops with autograd, so eager mode and torch.compile share one path.

``attnlens::sdpa_forward`` (``sdpa_forward_op``) returns ``(out, row_stats, weights)``; ``weights``
is empty unless asked for; ``row_stats`` ``[B, Hq, Nq, 2]`` holds each row's max and log row sum
(``attnlens.kernels.launch_forward``), which ``attnlens::sdpa_backward`` (``sdpa_backward_op``)
takes back. ``row_stats`` is differentiable only through the rows' log-sum-exp
(``attnlens.kernels.row_stats_to_lse``), which is how the sinks' share of each row gets its
gradient. With torch >= 2.6 and compiled kernels the ops are ``torch.library.triton_op``s whose
launches go through ``wrap_triton``, so torch.compile sees the Triton kernels themselves. Under
the interpreter (or torch < 2.6) they are opaque ``torch.library.custom_op``s with fake
implementations; torch.compile traces around them without graph breaks either way.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import List, Optional, Tuple

import torch

from attnlens.kernels import (
    USES_WRAP_TRITON,
    AttentionProblem,
    empty_like_query,
    launch_backward,
    launch_forward,
    launch_weights,
)
from attnlens.kernels.tiles import LOG2E

__all__ = ["sdpa_forward_op", "sdpa_backward_op"]

_MODE_NONE, _MODE_PER_HEAD, _MODE_MEAN = 0, 1, 2

# The forward op's arguments after (query, key, value), in order; the backward op takes the same
# after (query, key, value, out, row_stats, grad_out, grad_weights, grad_lse).
_PROBLEM_ARGS = (
    "attn_mask",
    "key_padding_mask",
    "seed",
    "alibi_slopes",
    "sinks",
    "scale",
    "dropout_p",
    "softcap",
    "window",
    "is_causal",
    "causal_offset",
    "weights_mode",
    "allow_tf32",
)


def _register(name: str, fn, mutates_args=()):
    if USES_WRAP_TRITON and hasattr(torch.library, "triton_op"):
        return torch.library.triton_op(name, fn, mutates_args=mutates_args)
    return torch.library.custom_op(name, fn, mutates_args=mutates_args)


def _problem(params: SimpleNamespace) -> AttentionProblem:
    return AttentionProblem(
        scale=params.scale,
        is_causal=params.is_causal,
        causal_offset=params.causal_offset,
        attn_mask=params.attn_mask,
        key_padding_mask=params.key_padding_mask,
        dropout_p=params.dropout_p,
        seed=params.seed,
        allow_tf32=params.allow_tf32,
        softcap=params.softcap,
        window=None if params.window is None else (params.window[0], params.window[1]),
        alibi_slopes=params.alibi_slopes,
        sinks=params.sinks,
    )


def _params(values) -> SimpleNamespace:
    return SimpleNamespace(**dict(zip(_PROBLEM_ARGS, values)))


def _named_params(scope: dict) -> SimpleNamespace:
    """The problem arguments out of an op's own arguments (its ``locals()``), by name."""
    return SimpleNamespace(**{name: scope[name] for name in _PROBLEM_ARGS})


def _forward_impl(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: Optional[torch.Tensor],
    key_padding_mask: Optional[torch.Tensor],
    seed: Optional[torch.Tensor],
    alibi_slopes: Optional[torch.Tensor],
    sinks: Optional[torch.Tensor],
    scale: float,
    dropout_p: float,
    softcap: Optional[float],
    window: Optional[List[int]],
    is_causal: bool,
    causal_offset: int,
    weights_mode: int,
    allow_tf32: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    params = _named_params(locals())
    problem = _problem(params)
    out, row_stats = launch_forward(query, key, value, problem)
    if weights_mode == _MODE_NONE:
        weights = query.new_empty((0,))
    else:
        weights = launch_weights(query, key, row_stats, problem, mean=weights_mode == _MODE_MEAN)
    return out, row_stats, weights


sdpa_forward_op = _register("attnlens::sdpa_forward", _forward_impl)


@sdpa_forward_op.register_fake
def _forward_fake(query, key, value, *problem_args):
    params = _params(problem_args)
    batch, heads_q, seqlen_q, _ = query.shape
    seqlen_k, head_dim_v = key.shape[2], value.shape[3]
    out = empty_like_query(query, (batch, heads_q, seqlen_q, head_dim_v))
    stats_dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
    row_stats = query.new_empty((batch, heads_q, seqlen_q, 2), dtype=stats_dtype)  # (row max, log row sum)
    if params.weights_mode == _MODE_NONE:
        weights = query.new_empty((0,))
    elif params.weights_mode == _MODE_MEAN:
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
    grad_lse: Optional[torch.Tensor],
    attn_mask: Optional[torch.Tensor],
    key_padding_mask: Optional[torch.Tensor],
    seed: Optional[torch.Tensor],
    alibi_slopes: Optional[torch.Tensor],
    sinks: Optional[torch.Tensor],
    scale: float,
    dropout_p: float,
    softcap: Optional[float],
    window: Optional[List[int]],
    is_causal: bool,
    causal_offset: int,
    weights_mode: int,
    allow_tf32: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    params = _named_params(locals())
    grad_q, grad_k, grad_v, grad_sinks = launch_backward(
        query,
        key,
        value,
        out,
        row_stats,
        grad_out,
        _problem(params),
        grad_weights=grad_weights,
        weights_mean=weights_mode == _MODE_MEAN,
        grad_lse=grad_lse,
    )
    return grad_q, grad_k, grad_v, query.new_empty((0,)) if grad_sinks is None else grad_sinks


sdpa_backward_op = _register("attnlens::sdpa_backward", _backward_impl)


@sdpa_backward_op.register_fake
def _backward_fake(query, key, value, out, row_stats, grad_out, grad_weights, grad_lse, *problem_args):
    sinks = _params(problem_args).sinks
    return (
        empty_like_query(query, tuple(query.shape)),
        empty_like_query(key, tuple(key.shape)),
        empty_like_query(value, tuple(value.shape)),
        query.new_empty((0,)) if sinks is None else torch.empty_like(sinks),
    )


def _setup_context(ctx, inputs, output):
    query, key, value, *problem_args = inputs
    params = _params(problem_args)
    out, row_stats, _ = output
    ctx.save_for_backward(
        query,
        key,
        value,
        out,
        row_stats,
        params.attn_mask,
        params.key_padding_mask,
        params.seed,
        params.alibi_slopes,
        params.sinks,
    )
    ctx.params = params
    # Leave unused outputs' gradients as None: a weights tensor returned only to be looked at
    # must not cost an N x N read of zeros in the backward.
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_out, grad_row_stats, grad_weights):
    query, key, value, out, row_stats, attn_mask, key_padding_mask, seed, alibi_slopes, sinks = ctx.saved_tensors
    params = ctx.params
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    if params.weights_mode == _MODE_NONE:
        grad_weights = None
    grad_lse = None
    if grad_row_stats is not None:
        # row_stats reach a loss only through lse = (m + log l) / log2(e) (row_stats_to_lse; base e
        # for fp64), whose gradient arrives on both parts alike: dL/dlse = dL/dlog(l) * log2(e).
        grad_lse = grad_row_stats[..., 1] * (1.0 if row_stats.dtype == torch.float64 else LOG2E)
    grad_q, grad_k, grad_v, grad_sinks = sdpa_backward_op(
        query,
        key,
        value,
        out,
        row_stats,
        grad_out,
        grad_weights,
        grad_lse,
        attn_mask,
        key_padding_mask,
        seed,
        alibi_slopes,
        sinks,
        params.scale,
        params.dropout_p,
        params.softcap,
        params.window,
        params.is_causal,
        params.causal_offset,
        params.weights_mode,
        params.allow_tf32,
    )
    grad_problem = [None] * len(_PROBLEM_ARGS)
    grad_problem[_PROBLEM_ARGS.index("sinks")] = grad_sinks if sinks is not None else None
    return (grad_q, grad_k, grad_v, *grad_problem)


sdpa_forward_op.register_autograd(_backward, setup_context=_setup_context)
