"""Fused attention backward: dQ, dK, dV from the saved row statistics, with no N x N buffer.

The forward saves each row's log-sum-exp as two parts, the row max m and log(l) (``row_stats``
``[B, Hq, Nq, 2]``, see ``launch_forward``); every kernel here rebuilds P = exp((s - m) - log(l)),
exact whatever m (``tiles.probabilities``).

Maths (P = softmax(S), Z = dropout keep / (1 - p), W = P * Z the returned weights, O = W V, and a
loss that may also use W directly through dW):

    dV = W^T dO
    dW_total = dO V^T + dW                (dW = 0 unless the weights take part in the loss)
    dP = dW_total * Z
    dS = P * (dP - delta),   delta = rowsum(P * dP) = rowsum(dO * O) + rowsum(W * dW)
    dQ = scale * dS K,       dK = scale * dS^T Q

For head-averaged weights the per-head dW is dW_mean / Hq. Three kernels:

- ``_bwd_preprocess_kernel`` computes delta (one program per query block and head; the dW term
  recomputes W tile by tile when there is a dW).
- ``_bwd_dkdv_kernel``: one program per key block of one key/value head. It loops over every
  query head of its GQA group and every query block, so dK and dV are summed in registers in a
  fixed order: deterministic, no atomics.
- ``_bwd_dq_kernel``: one program per query block and query head, streaming the keys.

Every score tile is rebuilt with the helpers in ``tiles.py`` exactly as the forward built it:
same scale, same masks, same dropout pattern. The parameters every kernel shares follow each
kernel's own tensors in the order of ``attnlens.kernels.launch.KernelArgs``.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from attnlens.kernels.config import KernelConfig, get_config, is_heavy
from attnlens.kernels.launch import (
    INTERPRETED,
    AttentionProblem,
    check_grid,
    empty_like_query,
    explain_resources,
    fast_helper_calls,
    kernel_args,
    launchable,
    split_float,
)
from attnlens.kernels.tiles import (
    LOG2E,
    accumulator,
    apply_dropout,
    dropout_keep,
    head_scoring,
    key_block_range,
    load_block,
    load_block_transposed,
    load_row_stats,
    load_seed,
    matmul,
    probabilities,
    query_block_range,
    score_tile,
    store_block,
)

__all__ = ["launch_backward"]


@triton.jit
def _dw_scale(num_heads_q, DW_MEAN: tl.constexpr, USE_FP64: tl.constexpr):
    """Factor on the incoming weights gradient: 1/Hq for head-averaged weights, else 1; in fp64
    for fp64 inputs (a float32 argument would cost gradcheck its precision)."""
    if DW_MEAN:
        if USE_FP64:
            return tl.full([], 1.0, tl.float64) / num_heads_q
        else:
            return 1.0 / num_heads_q
    else:
        return 1.0


@triton.jit
def _load_rows(ptrs, offs, seqlen, CHECK: tl.constexpr):
    """A per-row vector (delta) at rows ``offs``, 0 past ``seqlen`` when CHECK."""
    if CHECK:
        return tl.load(ptrs, mask=offs < seqlen, other=0.0)
    else:
        return tl.load(ptrs)


# ---------------------------------------------------------------------------------------------
# preprocess: delta
# ---------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["causal_offset"])
def _bwd_preprocess_kernel(
    out_ptr,
    dout_ptr,
    delta_ptr,
    q_ptr,
    k_ptr,
    row_stats_ptr,
    dw_ptr,
    stride_out_batch,
    stride_out_head,
    stride_out_seq,
    stride_out_dim,
    stride_dout_batch,
    stride_dout_head,
    stride_dout_seq,
    stride_dout_dim,
    stride_q_batch,
    stride_q_head,
    stride_q_seq,
    stride_q_dim,
    stride_k_batch,
    stride_k_head,
    stride_k_seq,
    stride_k_dim,
    stride_dw_batch,
    stride_dw_head,
    stride_dw_q,
    stride_dw_k,
    mask_ptr,
    pad_ptr,
    kv_range_ptr,
    seed_ptr,
    alibi_ptr,
    sinks_ptr,
    stride_mask_batch,
    stride_mask_head,
    stride_mask_q,
    stride_mask_k,
    stride_pad_batch,
    stride_pad_k,
    stride_alibi_batch,
    stride_alibi_head,
    stride_sinks_batch,
    stride_sinks_head,
    stride_sinks_q,
    num_heads_q,
    kv_group_size,
    seqlen_q,
    seqlen_k,
    head_dim,
    head_dim_v,
    causal_offset,
    window_left,
    window_right,
    qk_scale,
    qk_scale_lo,
    softcap_scale,
    softcap_scale_lo,
    dropout_p,
    keep_scale,
    HAS_DW: tl.constexpr,
    DW_MEAN: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    MASK_KIND: tl.constexpr,
    HAS_PADDING: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    HAS_ALIBI: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    HAS_SINKS: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    EVEN_M: tl.constexpr,
    EVEN_N: tl.constexpr,
    EVEN_DQK: tl.constexpr,
    EVEN_DV: tl.constexpr,
    USE_FP64: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    """delta = rowsum(dO * O) (+ rowsum(W * dW) * dw_scale when HAS_DW), per query row.

    out_ptr, dout_ptr [B, Hq, Nq, Dv] any strides; delta_ptr [B, Hq, Nq] contiguous, written
    (fp32, fp64 for fp64). With HAS_DW: dw_ptr [B, Hq, Nq, Nk] (head stride 0 for the
    head-mean weights' gradient) and q/k/masks/seed as in the forward kernel and row_stats
    [B, Hq, Nq, 2] (row max, log row sum) as the forward wrote them, to rebuild W.
    grid: (cdiv(Nq, BLOCK_M), Hq, B)
    """
    pid_m = tl.program_id(0)
    off_h = tl.program_id(1)
    off_b = tl.program_id(2)
    b64 = off_b.to(tl.int64)
    h64 = off_h.to(tl.int64)
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)

    o_matrix = (
        out_ptr + b64 * stride_out_batch + h64 * stride_out_head,
        stride_out_seq,
        stride_out_dim,
        seqlen_q,
        head_dim_v,
    )
    do_matrix = (
        dout_ptr + b64 * stride_dout_batch + h64 * stride_dout_head,
        stride_dout_seq,
        stride_dout_dim,
        seqlen_q,
        head_dim_v,
    )
    o = load_block(o_matrix, offs_m, offs_dv, not EVEN_M, not EVEN_DV)
    do = load_block(do_matrix, offs_m, offs_dv, not EVEN_M, not EVEN_DV)
    if not USE_FP64:
        o = o.to(tl.float32)
        do = do.to(tl.float32)
    delta = tl.sum(o * do, 1)

    if HAS_DW:
        off_hkv = off_h // kv_group_size
        offs_d = tl.arange(0, BLOCK_DQK)
        q_matrix = (q_ptr + b64 * stride_q_batch + h64 * stride_q_head, stride_q_seq, stride_q_dim, seqlen_q, head_dim)
        k_matrix = (
            k_ptr + b64 * stride_k_batch + off_hkv.to(tl.int64) * stride_k_head,
            stride_k_seq,
            stride_k_dim,
            seqlen_k,
            head_dim,
        )
        dw_matrix = (
            dw_ptr + b64 * stride_dw_batch + h64 * stride_dw_head,
            stride_dw_q,
            stride_dw_k,
            seqlen_q,
            seqlen_k,
        )
        q = load_block(q_matrix, offs_m, offs_d, not EVEN_M, not EVEN_DQK)
        row_max, log_sum = load_row_stats(
            row_stats_ptr + (b64 * num_heads_q + h64) * seqlen_q * 2, offs_m, seqlen_q, not EVEN_M
        )
        geometry = (seqlen_q, seqlen_k, causal_offset, window_left, window_right)
        scales = (qk_scale, qk_scale_lo, softcap_scale, softcap_scale_lo)
        mask_args = (mask_ptr, stride_mask_batch, stride_mask_head, stride_mask_q, stride_mask_k)
        padding_args = (pad_ptr, stride_pad_batch, stride_pad_k)
        alibi_args = (alibi_ptr, stride_alibi_batch, stride_alibi_head)
        scoring = head_scoring(scales, geometry, mask_args, padding_args, alibi_args, b64, h64, HAS_ALIBI, USE_FP64)
        dropout = (load_seed(seed_ptr, HAS_DROPOUT), off_b * num_heads_q + off_h, dropout_p, keep_scale)
        # One checked loop (no unmasked stage): this pass streams dW, an N x N tensor, and is
        # bound by memory, not by the mask tests.
        lo, _full_start, _full_end, hi = key_block_range(
            start_m, off_b, kv_range_ptr, geometry, IS_CAUSAL, HAS_PADDING, HAS_WINDOW, BLOCK_M, BLOCK_N
        )
        dw_scale = _dw_scale(num_heads_q, DW_MEAN, USE_FP64)
        for start_n in range(lo, hi, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            k_t = load_block_transposed(k_matrix, offs_n, offs_d, not EVEN_N, not EVEN_DQK)
            s, _ = score_tile(
                q,
                k_t,
                offs_m[:, None],
                offs_n[None, :],
                scoring,
                not EVEN_M,
                not EVEN_N,
                IS_CAUSAL,
                MASK_KIND,
                HAS_PADDING,
                HAS_SOFTCAP,
                HAS_ALIBI,
                HAS_WINDOW,
                USE_FP64,
                DOT_PRECISION,
            )
            w = probabilities(s, row_max[:, None], log_sum[:, None], USE_FP64)
            w = apply_dropout(w, offs_m[:, None], offs_n[None, :], dropout, HAS_DROPOUT)
            dw = load_block(dw_matrix, offs_m, offs_n, not EVEN_M, not EVEN_N)
            delta += tl.sum(w * dw.to(w.dtype), 1) * dw_scale

    delta_ptrs = delta_ptr + (b64 * num_heads_q + h64) * seqlen_q + offs_m
    if EVEN_M:
        tl.store(delta_ptrs, delta)
    else:
        tl.store(delta_ptrs, delta, mask=offs_m < seqlen_q)


# ---------------------------------------------------------------------------------------------
# dK, dV
# ---------------------------------------------------------------------------------------------


@triton.jit
def _dkdv_query_loop(
    dk,
    dv,
    k,
    v,
    q_matrix,
    do_matrix,
    dw_matrix,
    stats_base,
    delta_base,
    scoring,
    dropout,
    dw_scale,
    offs_n,
    offs_d,
    offs_dv,
    lo,
    hi,
    BOUNDARY: tl.constexpr,
    HAS_DW: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    MASK_KIND: tl.constexpr,
    HAS_PADDING: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    HAS_ALIBI: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    EVEN_N: tl.constexpr,
    EVEN_DQK: tl.constexpr,
    EVEN_DV: tl.constexpr,
    USE_FP64: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """Accumulate dK, dV of one key block over query blocks [lo, hi), in the transposed
    orientation: tiles are [BLOCK_N keys, BLOCK_M queries]. BOUNDARY=False blocks are wholly
    inside the queries and wholly visible to every key of the block (no causal, window or bound
    test)."""
    seqlen_q = scoring[1][0]
    seed, rng_stream, dropout_p, keep_scale = dropout
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q_t = load_block_transposed(q_matrix, offs_m, offs_d, BOUNDARY, not EVEN_DQK)
        row_max, log_sum = load_row_stats(stats_base, offs_m, seqlen_q, BOUNDARY)
        delta = _load_rows(delta_base + offs_m, offs_m, seqlen_q, BOUNDARY)
        s_t, softcap_slope_t = score_tile(
            k,
            q_t,
            offs_m[None, :],
            offs_n[:, None],
            scoring,
            BOUNDARY,
            not EVEN_N,
            BOUNDARY and IS_CAUSAL,
            MASK_KIND,
            HAS_PADDING,
            HAS_SOFTCAP,
            HAS_ALIBI,
            BOUNDARY and HAS_WINDOW,
            USE_FP64,
            DOT_PRECISION,
        )
        p_t = probabilities(s_t, row_max[None, :], log_sum[None, :], USE_FP64)
        do = load_block(do_matrix, offs_m, offs_dv, BOUNDARY, not EVEN_DV)
        if HAS_DROPOUT:
            keep_t = dropout_keep(seed, rng_stream, offs_m[None, :], offs_n[:, None], dropout_p)
            w_t = tl.where(keep_t, p_t * keep_scale, 0.0)
        else:
            w_t = p_t
        dv += matmul(w_t.to(do.dtype), do, USE_FP64, DOT_PRECISION)
        dp_t = matmul(v, tl.trans(do), USE_FP64, DOT_PRECISION)
        if HAS_DW:
            dw_t = load_block_transposed(dw_matrix, offs_m, offs_n, BOUNDARY, not EVEN_N)
            dp_t += dw_t.to(dp_t.dtype) * dw_scale
        if HAS_DROPOUT:
            dp_t = tl.where(keep_t, dp_t * keep_scale, 0.0)
        ds_t = p_t * (dp_t - delta[None, :])
        if HAS_SOFTCAP:
            ds_t = ds_t * softcap_slope_t  # through the tanh, to the uncapped scores
        dk += matmul(ds_t.to(q_t.dtype), tl.trans(q_t), USE_FP64, DOT_PRECISION)
    return dk, dv


@triton.jit(do_not_specialize=["causal_offset"])
def _bwd_dkdv_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    dout_ptr,
    row_stats_ptr,
    delta_ptr,
    dk_ptr,
    dv_ptr,
    dw_ptr,
    stride_q_batch,
    stride_q_head,
    stride_q_seq,
    stride_q_dim,
    stride_k_batch,
    stride_k_head,
    stride_k_seq,
    stride_k_dim,
    stride_v_batch,
    stride_v_head,
    stride_v_seq,
    stride_v_dim,
    stride_dout_batch,
    stride_dout_head,
    stride_dout_seq,
    stride_dout_dim,
    stride_dk_batch,
    stride_dk_head,
    stride_dk_seq,
    stride_dk_dim,
    stride_dv_batch,
    stride_dv_head,
    stride_dv_seq,
    stride_dv_dim,
    stride_dw_batch,
    stride_dw_head,
    stride_dw_q,
    stride_dw_k,
    mask_ptr,
    pad_ptr,
    kv_range_ptr,
    seed_ptr,
    alibi_ptr,
    sinks_ptr,
    stride_mask_batch,
    stride_mask_head,
    stride_mask_q,
    stride_mask_k,
    stride_pad_batch,
    stride_pad_k,
    stride_alibi_batch,
    stride_alibi_head,
    stride_sinks_batch,
    stride_sinks_head,
    stride_sinks_q,
    num_heads_q,
    kv_group_size,
    seqlen_q,
    seqlen_k,
    head_dim,
    head_dim_v,
    causal_offset,
    window_left,
    window_right,
    qk_scale,
    qk_scale_lo,
    softcap_scale,
    softcap_scale_lo,
    dropout_p,
    keep_scale,
    sm_scale,
    sm_scale_lo,
    HAS_DW: tl.constexpr,
    DW_MEAN: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    MASK_KIND: tl.constexpr,
    HAS_PADDING: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    HAS_ALIBI: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    HAS_SINKS: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    EVEN_M: tl.constexpr,
    EVEN_N: tl.constexpr,
    EVEN_DQK: tl.constexpr,
    EVEN_DV: tl.constexpr,
    USE_FP64: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    """dK and dV for BLOCK_N keys of one (batch, key/value head).

    q_ptr [B, Hq, Nq, Dqk], k_ptr [B, Hkv, Nk, Dqk], v_ptr [B, Hkv, Nk, Dv], dout_ptr
    [B, Hq, Nq, Dv]: any strides. row_stats_ptr [B, Hq, Nq, 2] (row max, log row sum) and
    delta_ptr [B, Hq, Nq] contiguous. dk_ptr, dv_ptr like k and v, written. dw_ptr as in the
    preprocess kernel. Masks and seed as in the forward.
    sm_scale: the softmax scale (natural units) for dK = sm_scale * dS^T Q; with fp64 inputs it
    arrives as its float32 head and qk_scale_lo carries the rest.
    grid: (cdiv(Nk, BLOCK_N), Hkv, B)
    """
    pid_n = tl.program_id(0)
    off_hkv = tl.program_id(1)
    off_b = tl.program_id(2)
    b64 = off_b.to(tl.int64)
    hkv64 = off_hkv.to(tl.int64)
    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)

    k_matrix = (k_ptr + b64 * stride_k_batch + hkv64 * stride_k_head, stride_k_seq, stride_k_dim, seqlen_k, head_dim)
    v_matrix = (v_ptr + b64 * stride_v_batch + hkv64 * stride_v_head, stride_v_seq, stride_v_dim, seqlen_k, head_dim_v)
    k = load_block(k_matrix, offs_n, offs_d, not EVEN_N, not EVEN_DQK)
    v = load_block(v_matrix, offs_n, offs_dv, not EVEN_N, not EVEN_DV)
    dk = accumulator(BLOCK_N, BLOCK_DQK, USE_FP64)
    dv = accumulator(BLOCK_N, BLOCK_DV, USE_FP64)

    geometry = (seqlen_q, seqlen_k, causal_offset, window_left, window_right)
    scales = (qk_scale, qk_scale_lo, softcap_scale, softcap_scale_lo)
    mask_args = (mask_ptr, stride_mask_batch, stride_mask_head, stride_mask_q, stride_mask_k)
    padding_args = (pad_ptr, stride_pad_batch, stride_pad_k)
    alibi_args = (alibi_ptr, stride_alibi_batch, stride_alibi_head)
    # The query rows that send this key block gradient, in three ranges: the causal diagonal or the
    # window's right edge (checked), whole blocks that see every key of the block (unchecked), and
    # the window's left edge and the ragged last block (checked).
    lo, diagonal_end, full_start, full_end, tail_start, hi = query_block_range(
        start_n, off_b, kv_range_ptr, geometry, IS_CAUSAL, HAS_PADDING, HAS_WINDOW, BLOCK_M, BLOCK_N
    )
    stages = ((lo, diagonal_end), (full_start, full_end), (tail_start, hi))

    seed = load_seed(seed_ptr, HAS_DROPOUT)
    dw_scale = _dw_scale(num_heads_q, DW_MEAN, USE_FP64)
    for off_h in range(off_hkv * kv_group_size, (off_hkv + 1) * kv_group_size):
        h64 = tl.cast(off_h, tl.int64)
        q_matrix = (q_ptr + b64 * stride_q_batch + h64 * stride_q_head, stride_q_seq, stride_q_dim, seqlen_q, head_dim)
        do_matrix = (
            dout_ptr + b64 * stride_dout_batch + h64 * stride_dout_head,
            stride_dout_seq,
            stride_dout_dim,
            seqlen_q,
            head_dim_v,
        )
        dw_matrix = (
            dw_ptr + b64 * stride_dw_batch + h64 * stride_dw_head,
            stride_dw_q,
            stride_dw_k,
            seqlen_q,
            seqlen_k,
        )
        stats_base = row_stats_ptr + (b64 * num_heads_q + h64) * seqlen_q * 2
        delta_base = delta_ptr + (b64 * num_heads_q + h64) * seqlen_q
        scoring = head_scoring(scales, geometry, mask_args, padding_args, alibi_args, b64, h64, HAS_ALIBI, USE_FP64)
        dropout = (seed, off_b * num_heads_q + off_h, dropout_p, keep_scale)
        for stage in tl.static_range(3):
            # the last stage exists only with a window or when Nq % BLOCK_M != 0
            if stage != 2 or not EVEN_M or HAS_WINDOW:
                start, end = stages[stage]
                dk, dv = _dkdv_query_loop(
                    dk,
                    dv,
                    k,
                    v,
                    q_matrix,
                    do_matrix,
                    dw_matrix,
                    stats_base,
                    delta_base,
                    scoring,
                    dropout,
                    dw_scale,
                    offs_n,
                    offs_d,
                    offs_dv,
                    start,
                    end,
                    stage != 1,
                    HAS_DW,
                    IS_CAUSAL,
                    MASK_KIND,
                    HAS_PADDING,
                    HAS_SOFTCAP,
                    HAS_ALIBI,
                    HAS_WINDOW,
                    HAS_DROPOUT,
                    EVEN_N,
                    EVEN_DQK,
                    EVEN_DV,
                    USE_FP64,
                    DOT_PRECISION,
                    BLOCK_M,
                )

    if USE_FP64:
        dk = dk * sm_scale + dk * sm_scale_lo
    else:
        dk = dk * sm_scale
    dk_matrix = (
        dk_ptr + b64 * stride_dk_batch + hkv64 * stride_dk_head,
        stride_dk_seq,
        stride_dk_dim,
        seqlen_k,
        head_dim,
    )
    dv_matrix = (
        dv_ptr + b64 * stride_dv_batch + hkv64 * stride_dv_head,
        stride_dv_seq,
        stride_dv_dim,
        seqlen_k,
        head_dim_v,
    )
    store_block(dk_matrix, dk, offs_n, offs_d, not EVEN_N, not EVEN_DQK)
    store_block(dv_matrix, dv, offs_n, offs_dv, not EVEN_N, not EVEN_DV)


# ---------------------------------------------------------------------------------------------
# dQ
# ---------------------------------------------------------------------------------------------


@triton.jit
def _dq_key_loop(
    dq,
    q,
    do,
    row_max,
    log_sum,
    delta,
    k_matrix,
    v_matrix,
    dw_matrix,
    scoring,
    dropout,
    dw_scale,
    offs_m,
    offs_d,
    offs_dv,
    lo,
    hi,
    BOUNDARY: tl.constexpr,
    HAS_DW: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    MASK_KIND: tl.constexpr,
    HAS_PADDING: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    HAS_ALIBI: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    EVEN_M: tl.constexpr,
    EVEN_N: tl.constexpr,
    EVEN_DQK: tl.constexpr,
    EVEN_DV: tl.constexpr,
    USE_FP64: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Accumulate dQ of one query block over key blocks [lo, hi); BOUNDARY as in the forward.
    row_max, log_sum: the block's rows' statistics as ``load_row_stats`` returns them."""
    CHECK_N: tl.constexpr = BOUNDARY and not EVEN_N
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = load_block(k_matrix, offs_n, offs_d, CHECK_N, not EVEN_DQK)
        v = load_block(v_matrix, offs_n, offs_dv, CHECK_N, not EVEN_DV)
        s, softcap_slope = score_tile(
            q,
            tl.trans(k),
            offs_m[:, None],
            offs_n[None, :],
            scoring,
            not EVEN_M,
            CHECK_N,
            BOUNDARY and IS_CAUSAL,
            MASK_KIND,
            HAS_PADDING,
            HAS_SOFTCAP,
            HAS_ALIBI,
            BOUNDARY and HAS_WINDOW,
            USE_FP64,
            DOT_PRECISION,
        )
        p = probabilities(s, row_max[:, None], log_sum[:, None], USE_FP64)
        dp = matmul(do, tl.trans(v), USE_FP64, DOT_PRECISION)
        if HAS_DW:
            dw = load_block(dw_matrix, offs_m, offs_n, not EVEN_M, CHECK_N)
            dp += dw.to(dp.dtype) * dw_scale
        dp = apply_dropout(dp, offs_m[:, None], offs_n[None, :], dropout, HAS_DROPOUT)
        ds = p * (dp - delta[:, None])
        if HAS_SOFTCAP:
            ds = ds * softcap_slope  # through the tanh, to the uncapped scores
        dq += matmul(ds.to(k.dtype), k, USE_FP64, DOT_PRECISION)
    return dq


@triton.jit(do_not_specialize=["causal_offset"])
def _bwd_dq_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    dout_ptr,
    row_stats_ptr,
    delta_ptr,
    dq_ptr,
    dw_ptr,
    stride_q_batch,
    stride_q_head,
    stride_q_seq,
    stride_q_dim,
    stride_k_batch,
    stride_k_head,
    stride_k_seq,
    stride_k_dim,
    stride_v_batch,
    stride_v_head,
    stride_v_seq,
    stride_v_dim,
    stride_dout_batch,
    stride_dout_head,
    stride_dout_seq,
    stride_dout_dim,
    stride_dq_batch,
    stride_dq_head,
    stride_dq_seq,
    stride_dq_dim,
    stride_dw_batch,
    stride_dw_head,
    stride_dw_q,
    stride_dw_k,
    mask_ptr,
    pad_ptr,
    kv_range_ptr,
    seed_ptr,
    alibi_ptr,
    sinks_ptr,
    stride_mask_batch,
    stride_mask_head,
    stride_mask_q,
    stride_mask_k,
    stride_pad_batch,
    stride_pad_k,
    stride_alibi_batch,
    stride_alibi_head,
    stride_sinks_batch,
    stride_sinks_head,
    stride_sinks_q,
    num_heads_q,
    kv_group_size,
    seqlen_q,
    seqlen_k,
    head_dim,
    head_dim_v,
    causal_offset,
    window_left,
    window_right,
    qk_scale,
    qk_scale_lo,
    softcap_scale,
    softcap_scale_lo,
    dropout_p,
    keep_scale,
    sm_scale,
    sm_scale_lo,
    HAS_DW: tl.constexpr,
    DW_MEAN: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    MASK_KIND: tl.constexpr,
    HAS_PADDING: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    HAS_ALIBI: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    HAS_SINKS: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    EVEN_M: tl.constexpr,
    EVEN_N: tl.constexpr,
    EVEN_DQK: tl.constexpr,
    EVEN_DV: tl.constexpr,
    USE_FP64: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    """dQ for BLOCK_M query rows of one (batch, query head). Tensors as in ``_bwd_dkdv_kernel``;
    dq_ptr [B, Hq, Nq, Dqk] written. grid: (cdiv(Nq, BLOCK_M), Hq, B)"""
    pid_m = tl.program_id(0)
    off_h = tl.program_id(1)
    off_b = tl.program_id(2)
    off_hkv = off_h // kv_group_size
    b64 = off_b.to(tl.int64)
    h64 = off_h.to(tl.int64)
    hkv64 = off_hkv.to(tl.int64)
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)

    q_matrix = (q_ptr + b64 * stride_q_batch + h64 * stride_q_head, stride_q_seq, stride_q_dim, seqlen_q, head_dim)
    do_matrix = (
        dout_ptr + b64 * stride_dout_batch + h64 * stride_dout_head,
        stride_dout_seq,
        stride_dout_dim,
        seqlen_q,
        head_dim_v,
    )
    q = load_block(q_matrix, offs_m, offs_d, not EVEN_M, not EVEN_DQK)
    do = load_block(do_matrix, offs_m, offs_dv, not EVEN_M, not EVEN_DV)
    row_max, log_sum = load_row_stats(
        row_stats_ptr + (b64 * num_heads_q + h64) * seqlen_q * 2, offs_m, seqlen_q, not EVEN_M
    )
    delta = _load_rows(delta_ptr + (b64 * num_heads_q + h64) * seqlen_q + offs_m, offs_m, seqlen_q, not EVEN_M)

    k_matrix = (k_ptr + b64 * stride_k_batch + hkv64 * stride_k_head, stride_k_seq, stride_k_dim, seqlen_k, head_dim)
    v_matrix = (v_ptr + b64 * stride_v_batch + hkv64 * stride_v_head, stride_v_seq, stride_v_dim, seqlen_k, head_dim_v)
    dw_matrix = (dw_ptr + b64 * stride_dw_batch + h64 * stride_dw_head, stride_dw_q, stride_dw_k, seqlen_q, seqlen_k)
    geometry = (seqlen_q, seqlen_k, causal_offset, window_left, window_right)
    scales = (qk_scale, qk_scale_lo, softcap_scale, softcap_scale_lo)
    mask_args = (mask_ptr, stride_mask_batch, stride_mask_head, stride_mask_q, stride_mask_k)
    padding_args = (pad_ptr, stride_pad_batch, stride_pad_k)
    alibi_args = (alibi_ptr, stride_alibi_batch, stride_alibi_head)
    scoring = head_scoring(scales, geometry, mask_args, padding_args, alibi_args, b64, h64, HAS_ALIBI, USE_FP64)
    dropout = (load_seed(seed_ptr, HAS_DROPOUT), off_b * num_heads_q + off_h, dropout_p, keep_scale)
    dw_scale = _dw_scale(num_heads_q, DW_MEAN, USE_FP64)
    dq = accumulator(BLOCK_M, BLOCK_DQK, USE_FP64)

    lo, full_start, full_end, hi = key_block_range(
        start_m, off_b, kv_range_ptr, geometry, IS_CAUSAL, HAS_PADDING, HAS_WINDOW, BLOCK_M, BLOCK_N
    )
    # the unmasked blocks, then the boundary blocks, then the window's left edge, as in the forward
    stages = ((full_start, full_end), (full_end, hi), (lo, full_start))
    for stage in tl.static_range(3):
        if stage != 2 or HAS_WINDOW:
            start, end = stages[stage]
            dq = _dq_key_loop(
                dq,
                q,
                do,
                row_max,
                log_sum,
                delta,
                k_matrix,
                v_matrix,
                dw_matrix,
                scoring,
                dropout,
                dw_scale,
                offs_m,
                offs_d,
                offs_dv,
                start,
                end,
                stage != 0,
                HAS_DW,
                IS_CAUSAL,
                MASK_KIND,
                HAS_PADDING,
                HAS_SOFTCAP,
                HAS_ALIBI,
                HAS_WINDOW,
                HAS_DROPOUT,
                EVEN_M,
                EVEN_N,
                EVEN_DQK,
                EVEN_DV,
                USE_FP64,
                DOT_PRECISION,
                BLOCK_N,
            )
    if USE_FP64:
        dq = dq * sm_scale + dq * sm_scale_lo
    else:
        dq = dq * sm_scale
    dq_matrix = (
        dq_ptr + b64 * stride_dq_batch + h64 * stride_dq_head,
        stride_dq_seq,
        stride_dq_dim,
        seqlen_q,
        head_dim,
    )
    store_block(dq_matrix, dq, offs_m, offs_d, not EVEN_M, not EVEN_DQK)


# ---------------------------------------------------------------------------------------------
# launcher
# ---------------------------------------------------------------------------------------------


def launch_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    row_stats: torch.Tensor,
    grad_out: torch.Tensor,
    problem: AttentionProblem,
    grad_weights: Optional[torch.Tensor] = None,
    weights_mean: bool = False,
    grad_lse: Optional[torch.Tensor] = None,
    configs: Optional[dict] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Gradients of attention with respect to q, k, v and the sinks.

    ``out`` and ``row_stats`` (``[B, Hq, Nq, 2]``) are the forward's results for the same
    arguments; ``grad_out`` is dL/dout (any strides). ``grad_weights`` is dL/dweights when the
    returned weights take part in the loss: ``[B, Hq, Nq, Nk]``, or ``[B, Nq, Nk]`` with
    ``weights_mean=True``. ``grad_lse`` (``[B, Hq, Nq]``) is dL/dlse when the loss uses the rows'
    natural log-sum-exp (the sink's share is computed from it): since dlse/ds = P, it only
    shifts delta. ``configs`` maps kernel names ("backward_preprocess", "backward_dkdv",
    "backward_dq") to ``KernelConfig``s.

    Returns ``(dq, dk, dv, dsinks)`` laid out like q, k and v, in their dtype; ``dsinks``
    ``[B, Hq, Nq]`` (in the sinks' dtype) when the problem has sinks, else None. Deterministic.
    """
    batch, heads_q, seqlen_q, head_dim = q.shape
    heads_kv, seqlen_k, head_dim_v = k.shape[1], k.shape[2], v.shape[3]
    dq = empty_like_query(q, tuple(q.shape))
    dk = empty_like_query(k, tuple(k.shape))
    dv = empty_like_query(v, tuple(v.shape))
    sinks = problem.sinks
    dsinks = None if sinks is None else torch.zeros_like(sinks)
    if dq.numel() == 0 and dk.numel() == 0:
        return dq, dk, dv, dsinks
    if seqlen_q == 0 or heads_q == 0:
        return dq.zero_(), dk.zero_(), dv.zero_(), dsinks
    check_grid(batch, heads_q)
    configs = configs or {}
    width = max(head_dim, head_dim_v)
    args = kernel_args(problem, q, k, v)
    has_dw = grad_weights is not None
    heavy = is_heavy(args.mask_kind, args.has_dropout, has_dw)

    def config(name: str) -> KernelConfig:
        return configs.get(name) or get_config(name, q.device, q.dtype, width, INTERPRETED, heavy=heavy)

    # Natural-units scale for dQ and dK, as a float32 head and the remainder the fp64 kernels add.
    sm_scale, sm_scale_lo = split_float(problem.scale)
    if has_dw:
        dw = grad_weights
        dw_strides = (dw.stride(0), 0, dw.stride(1), dw.stride(2)) if weights_mean else dw.stride()
    else:
        dw, dw_strides = q, (0, 0, 0, 0)
    own_flags = dict(HAS_DW=has_dw, DW_MEAN=has_dw and weights_mean)

    # delta = rowsum(dO * O) (+ rowsum(W * dW)); 0 without keys, where every output row is 0
    delta = torch.zeros(row_stats.shape[:-1], dtype=row_stats.dtype, device=row_stats.device)
    if seqlen_k:
        cfg = config("backward_preprocess")
        with explain_resources("backward_preprocess", cfg, q.dtype, width):
            launchable(_bwd_preprocess_kernel)[(triton.cdiv(seqlen_q, cfg.block_m), heads_q, batch)](
                out,
                grad_out,
                delta,
                q,
                k,
                row_stats,
                dw,
                *out.stride(),
                *grad_out.stride(),
                *q.stride(),
                *k.stride(),
                *dw_strides,
                *args.runtime,
                **args.options(cfg, **own_flags),
            )
    if grad_lse is not None:
        delta -= grad_lse.to(delta.dtype)  # dS = P * (dP - delta + dlse)
    if sinks is not None:
        # the sink is a key of value 0: dS_sink = P_sink * (0 - delta)
        dsinks = -(_sink_probabilities(sinks, row_stats) * delta).to(sinks.dtype)
    if seqlen_k == 0:
        return dq.zero_(), dk.zero_(), dv.zero_(), dsinks

    cfg = config("backward_dkdv")
    with explain_resources("backward_dkdv", cfg, q.dtype, width):
        launchable(_bwd_dkdv_kernel)[(triton.cdiv(seqlen_k, cfg.block_n), heads_kv, batch)](
            q,
            k,
            v,
            grad_out,
            row_stats,
            delta,
            dk,
            dv,
            dw,
            *q.stride(),
            *k.stride(),
            *v.stride(),
            *grad_out.stride(),
            *dk.stride(),
            *dv.stride(),
            *dw_strides,
            *args.runtime,
            sm_scale,
            sm_scale_lo,
            **args.options(cfg, **own_flags),
        )

    cfg = config("backward_dq")
    with explain_resources("backward_dq", cfg, q.dtype, width):
        launchable(_bwd_dq_kernel)[(triton.cdiv(seqlen_q, cfg.block_m), heads_q, batch)](
            q,
            k,
            v,
            grad_out,
            row_stats,
            delta,
            dq,
            dw,
            *q.stride(),
            *k.stride(),
            *v.stride(),
            *grad_out.stride(),
            *dq.stride(),
            *dw_strides,
            *args.runtime,
            sm_scale,
            sm_scale_lo,
            **args.options(cfg, **own_flags),
        )
    return dq, dk, dv, dsinks


def _sink_probabilities(sinks: torch.Tensor, row_stats: torch.Tensor) -> torch.Tensor:
    """Each row's probability of its sink, ``[B, Hq, Nq]`` (``sinks`` ``[B, Hq, Nq]``): exp(sink -
    lse), in the row statistics' exponent domain (base 2 below fp64) and dtype."""
    sink = sinks.to(row_stats.dtype)
    if row_stats.dtype == torch.float64:
        return torch.exp((sink - row_stats[..., 0]) - row_stats[..., 1])
    return torch.exp2((sink * LOG2E - row_stats[..., 0]) - row_stats[..., 1])


fast_helper_calls(globals())
