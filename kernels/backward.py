"""Fused attention backward: dQ, dK, dV from the saved log-sum-exp, with no N x N buffer.

The forward saves each row's log-sum-exp as two parts, the row max m and log(l) (``lse``
``[B, Hq, Nq, 2]``, see ``attention_forward``); every kernel here rebuilds P = exp((s - m) - log(l)),
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
same scale, same masks, same dropout pattern.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from attnlens.kernels.config import KernelConfig, get_config, head_dim_bucket, is_heavy
from attnlens.kernels.forward import (
    AttentionProblem,
    _check_grid,
    _dot_precision,
    _like_query_layout,
    _mask_args,
    _padding_args,
    _scale_parts,
    _seed_args,
)
from attnlens.kernels.launch import INTERPRETED, explain_resources, launchable
from attnlens.kernels.tiles import (
    apply_masks,
    dropout_keep,
    key_block_range,
    load_row_stats,
    load_tile,
    matmul,
    probabilities,
    scaled_scores,
    store_tile,
)

__all__ = ["attention_backward"]


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
    lse_ptr,
    dw_ptr,
    mask_ptr,
    pad_ptr,
    kv_range_ptr,
    seed_ptr,
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
    stride_mask_batch,
    stride_mask_head,
    stride_mask_q,
    stride_mask_k,
    stride_pad_batch,
    stride_pad_k,
    num_heads_q,
    kv_group_size,
    seqlen_q,
    seqlen_k,
    head_dim,
    head_dim_v,
    causal_offset,
    qk_scale,
    qk_scale_lo,
    dropout_p,
    keep_scale,
    HAS_DW: tl.constexpr,
    DW_MEAN: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    MASK_KIND: tl.constexpr,
    HAS_PADDING: tl.constexpr,
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
    head-mean weights' gradient) and q/k/masks/seed as in the forward kernel and lse
    [B, Hq, Nq, 2] (row max, log row sum) as the forward wrote it, to rebuild W.
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
    rows64 = offs_m.to(tl.int64)[:, None]

    o_ptrs = (
        out_ptr
        + b64 * stride_out_batch
        + h64 * stride_out_head
        + rows64 * stride_out_seq
        + offs_dv.to(tl.int64)[None, :] * stride_out_dim
    )
    do_ptrs = (
        dout_ptr
        + b64 * stride_dout_batch
        + h64 * stride_dout_head
        + rows64 * stride_dout_seq
        + offs_dv.to(tl.int64)[None, :] * stride_dout_dim
    )
    if USE_FP64:
        o = load_tile(o_ptrs, offs_m[:, None], offs_dv[None, :], seqlen_q, head_dim_v, not EVEN_M, not EVEN_DV)
        do = load_tile(do_ptrs, offs_m[:, None], offs_dv[None, :], seqlen_q, head_dim_v, not EVEN_M, not EVEN_DV)
    else:
        o = load_tile(o_ptrs, offs_m[:, None], offs_dv[None, :], seqlen_q, head_dim_v, not EVEN_M, not EVEN_DV).to(
            tl.float32
        )
        do = load_tile(do_ptrs, offs_m[:, None], offs_dv[None, :], seqlen_q, head_dim_v, not EVEN_M, not EVEN_DV).to(
            tl.float32
        )
    delta = tl.sum(o * do, 1)

    if HAS_DW:
        off_hkv = off_h // kv_group_size
        offs_d = tl.arange(0, BLOCK_DQK)
        q_ptrs = (
            q_ptr
            + b64 * stride_q_batch
            + h64 * stride_q_head
            + rows64 * stride_q_seq
            + offs_d.to(tl.int64)[None, :] * stride_q_dim
        )
        q = load_tile(q_ptrs, offs_m[:, None], offs_d[None, :], seqlen_q, head_dim, not EVEN_M, not EVEN_DQK)
        k_base = k_ptr + b64 * stride_k_batch + off_hkv.to(tl.int64) * stride_k_head
        mask_base = mask_ptr + b64 * stride_mask_batch + h64 * stride_mask_head
        pad_base = pad_ptr + b64 * stride_pad_batch
        dw_base = dw_ptr + b64 * stride_dw_batch + h64 * stride_dw_head
        row_max, log_sum = load_row_stats(
            lse_ptr + (b64 * num_heads_q + h64) * seqlen_q * 2, offs_m, seqlen_q, not EVEN_M
        )
        seed = 0
        if HAS_DROPOUT:
            seed = tl.load(seed_ptr)
        rng_stream = off_b * num_heads_q + off_h
        # One checked loop (no unmasked stage): this pass streams dW, an N x N tensor, and is
        # bound by memory, not by the mask tests.
        lo, _, hi = key_block_range(
            start_m, off_b, kv_range_ptr, seqlen_k, causal_offset, IS_CAUSAL, HAS_PADDING, BLOCK_M, BLOCK_N
        )
        dw_scale = _dw_scale(num_heads_q, DW_MEAN, USE_FP64)
        for start_n in range(lo, hi, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            k_ptrs = k_base + offs_n.to(tl.int64)[None, :] * stride_k_seq + offs_d.to(tl.int64)[:, None] * stride_k_dim
            k_t = load_tile(k_ptrs, offs_d[:, None], offs_n[None, :], head_dim, seqlen_k, not EVEN_DQK, not EVEN_N)
            s = scaled_scores(q, k_t, qk_scale, qk_scale_lo, USE_FP64, DOT_PRECISION)
            s = apply_masks(
                s,
                offs_m[:, None],
                offs_n[None, :],
                mask_base,
                stride_mask_q,
                stride_mask_k,
                pad_base,
                stride_pad_k,
                seqlen_q,
                seqlen_k,
                causal_offset,
                not EVEN_M,
                not EVEN_N,
                IS_CAUSAL,
                MASK_KIND,
                HAS_PADDING,
                USE_FP64,
            )
            w = probabilities(s, row_max[:, None], log_sum[:, None], USE_FP64)
            if HAS_DROPOUT:
                keep = dropout_keep(seed, rng_stream, offs_m[:, None], offs_n[None, :], dropout_p)
                w = tl.where(keep, w * keep_scale, 0.0)
            dw_ptrs = dw_base + rows64 * stride_dw_q + offs_n.to(tl.int64)[None, :] * stride_dw_k
            dw = load_tile(dw_ptrs, offs_m[:, None], offs_n[None, :], seqlen_q, seqlen_k, not EVEN_M, not EVEN_N)
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
    q_base,
    do_base,
    lse_base,
    delta_base,
    mask_base,
    pad_base,
    dw_base,
    seed,
    rng_stream,
    offs_n,
    offs_d,
    offs_dv,
    lo,
    hi,
    stride_q_seq,
    stride_q_dim,
    stride_dout_seq,
    stride_dout_dim,
    stride_mask_q,
    stride_mask_k,
    stride_pad_k,
    stride_dw_q,
    stride_dw_k,
    seqlen_q,
    seqlen_k,
    head_dim,
    head_dim_v,
    causal_offset,
    qk_scale,
    qk_scale_lo,
    dropout_p,
    keep_scale,
    dw_scale,
    BOUNDARY: tl.constexpr,
    HAS_DW: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    MASK_KIND: tl.constexpr,
    HAS_PADDING: tl.constexpr,
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
    inside the queries and wholly visible to every key of the block (no causal or bound test)."""
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        offs_m64 = offs_m.to(tl.int64)
        q_t_ptrs = q_base + offs_m64[None, :] * stride_q_seq + offs_d.to(tl.int64)[:, None] * stride_q_dim
        q_t = load_tile(q_t_ptrs, offs_d[:, None], offs_m[None, :], head_dim, seqlen_q, not EVEN_DQK, BOUNDARY)
        row_max, log_sum = load_row_stats(lse_base, offs_m, seqlen_q, BOUNDARY)
        if BOUNDARY:
            delta = tl.load(delta_base + offs_m, mask=offs_m < seqlen_q, other=0.0)
        else:
            delta = tl.load(delta_base + offs_m)
        s_t = scaled_scores(k, q_t, qk_scale, qk_scale_lo, USE_FP64, DOT_PRECISION)
        s_t = apply_masks(
            s_t,
            offs_m[None, :],
            offs_n[:, None],
            mask_base,
            stride_mask_q,
            stride_mask_k,
            pad_base,
            stride_pad_k,
            seqlen_q,
            seqlen_k,
            causal_offset,
            BOUNDARY,
            not EVEN_N,
            BOUNDARY and IS_CAUSAL,
            MASK_KIND,
            HAS_PADDING,
            USE_FP64,
        )
        p_t = probabilities(s_t, row_max[None, :], log_sum[None, :], USE_FP64)
        do_ptrs = do_base + offs_m64[:, None] * stride_dout_seq + offs_dv.to(tl.int64)[None, :] * stride_dout_dim
        do = load_tile(do_ptrs, offs_m[:, None], offs_dv[None, :], seqlen_q, head_dim_v, BOUNDARY, not EVEN_DV)
        if HAS_DROPOUT:
            keep_t = dropout_keep(seed, rng_stream, offs_m[None, :], offs_n[:, None], dropout_p)
            w_t = tl.where(keep_t, p_t * keep_scale, 0.0)
        else:
            w_t = p_t
        dv += matmul(w_t.to(do.dtype), do, USE_FP64, DOT_PRECISION)
        dp_t = matmul(v, tl.trans(do), USE_FP64, DOT_PRECISION)
        if HAS_DW:
            dw_ptrs = dw_base + offs_m64[None, :] * stride_dw_q + offs_n.to(tl.int64)[:, None] * stride_dw_k
            dw_t = load_tile(dw_ptrs, offs_m[None, :], offs_n[:, None], seqlen_q, seqlen_k, BOUNDARY, not EVEN_N)
            dp_t += dw_t.to(dp_t.dtype) * dw_scale
        if HAS_DROPOUT:
            dp_t = tl.where(keep_t, dp_t * keep_scale, 0.0)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += matmul(ds_t.to(q_t.dtype), tl.trans(q_t), USE_FP64, DOT_PRECISION)
    return dk, dv


@triton.jit(do_not_specialize=["causal_offset"])
def _bwd_dkdv_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    dout_ptr,
    lse_ptr,
    delta_ptr,
    dk_ptr,
    dv_ptr,
    dw_ptr,
    mask_ptr,
    pad_ptr,
    kv_range_ptr,
    seed_ptr,
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
    stride_mask_batch,
    stride_mask_head,
    stride_mask_q,
    stride_mask_k,
    stride_pad_batch,
    stride_pad_k,
    num_heads_q,
    kv_group_size,
    seqlen_q,
    seqlen_k,
    head_dim,
    head_dim_v,
    causal_offset,
    qk_scale,
    qk_scale_lo,
    dropout_p,
    keep_scale,
    sm_scale,
    HAS_DW: tl.constexpr,
    DW_MEAN: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    MASK_KIND: tl.constexpr,
    HAS_PADDING: tl.constexpr,
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
    [B, Hq, Nq, Dv]: any strides. lse_ptr [B, Hq, Nq, 2] (row max, log row sum) and delta_ptr
    [B, Hq, Nq] contiguous. dk_ptr, dv_ptr like
    k and v, written. dw_ptr as in the preprocess kernel. Masks and seed as in the forward.
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
    offs_n64 = offs_n.to(tl.int64)
    offs_d = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)

    k_ptrs = (
        k_ptr
        + b64 * stride_k_batch
        + hkv64 * stride_k_head
        + offs_n64[:, None] * stride_k_seq
        + offs_d.to(tl.int64)[None, :] * stride_k_dim
    )
    v_ptrs = (
        v_ptr
        + b64 * stride_v_batch
        + hkv64 * stride_v_head
        + offs_n64[:, None] * stride_v_seq
        + offs_dv.to(tl.int64)[None, :] * stride_v_dim
    )
    k = load_tile(k_ptrs, offs_n[:, None], offs_d[None, :], seqlen_k, head_dim, not EVEN_N, not EVEN_DQK)
    v = load_tile(v_ptrs, offs_n[:, None], offs_dv[None, :], seqlen_k, head_dim_v, not EVEN_N, not EVEN_DV)
    if USE_FP64:
        dk = tl.zeros([BLOCK_N, BLOCK_DQK], dtype=tl.float64)
        dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float64)
    else:
        dk = tl.zeros([BLOCK_N, BLOCK_DQK], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)

    # Query blocks that can see this key block: [lo, nq). Those in [full_start, full_end) see
    # every key of the block and lie inside the queries, so they skip the causal and bound tests.
    lo = 0
    full_start = 0
    nq = seqlen_q
    if IS_CAUSAL:
        # query i sees key j iff i >= j - causal_offset
        first_row = tl.minimum(tl.maximum(start_n - causal_offset, 0), seqlen_q)
        lo = (first_row // BLOCK_M) * BLOCK_M
        last_row = tl.minimum(tl.maximum(start_n + BLOCK_N - 1 - causal_offset, 0), seqlen_q)
        full_start = ((last_row + BLOCK_M - 1) // BLOCK_M) * BLOCK_M
    if HAS_PADDING:
        kv_start = tl.load(kv_range_ptr + off_b * 2)
        kv_end = tl.load(kv_range_ptr + off_b * 2 + 1)
        # a key block wholly outside the unpadded range receives no gradient: skip every query
        nq = tl.where((start_n < kv_end) & (start_n + BLOCK_N > kv_start), nq, 0)
    full_end = (seqlen_q // BLOCK_M) * BLOCK_M
    full_start = tl.minimum(full_start, full_end)
    lo = tl.minimum(lo, nq)

    seed = 0
    if HAS_DROPOUT:
        seed = tl.load(seed_ptr)
    dw_scale = _dw_scale(num_heads_q, DW_MEAN, USE_FP64)
    pad_base = pad_ptr + b64 * stride_pad_batch
    for off_h in range(off_hkv * kv_group_size, (off_hkv + 1) * kv_group_size):
        h64 = tl.cast(off_h, tl.int64)
        q_base = q_ptr + b64 * stride_q_batch + h64 * stride_q_head
        do_base = dout_ptr + b64 * stride_dout_batch + h64 * stride_dout_head
        lse_base = lse_ptr + (b64 * num_heads_q + h64) * seqlen_q * 2
        delta_base = delta_ptr + (b64 * num_heads_q + h64) * seqlen_q
        mask_base = mask_ptr + b64 * stride_mask_batch + h64 * stride_mask_head
        dw_base = dw_ptr + b64 * stride_dw_batch + h64 * stride_dw_head
        rng_stream = off_b * num_heads_q + off_h
        # checked: the diagonal blocks before full_start
        dk, dv = _dkdv_query_loop(
            dk,
            dv,
            k,
            v,
            q_base,
            do_base,
            lse_base,
            delta_base,
            mask_base,
            pad_base,
            dw_base,
            seed,
            rng_stream,
            offs_n,
            offs_d,
            offs_dv,
            lo,
            tl.minimum(full_start, nq),
            stride_q_seq,
            stride_q_dim,
            stride_dout_seq,
            stride_dout_dim,
            stride_mask_q,
            stride_mask_k,
            stride_pad_k,
            stride_dw_q,
            stride_dw_k,
            seqlen_q,
            seqlen_k,
            head_dim,
            head_dim_v,
            causal_offset,
            qk_scale,
            qk_scale_lo,
            dropout_p,
            keep_scale,
            dw_scale,
            True,
            HAS_DW,
            IS_CAUSAL,
            MASK_KIND,
            HAS_PADDING,
            HAS_DROPOUT,
            EVEN_N,
            EVEN_DQK,
            EVEN_DV,
            USE_FP64,
            DOT_PRECISION,
            BLOCK_M,
        )
        # unchecked: whole blocks fully visible to the key block
        dk, dv = _dkdv_query_loop(
            dk,
            dv,
            k,
            v,
            q_base,
            do_base,
            lse_base,
            delta_base,
            mask_base,
            pad_base,
            dw_base,
            seed,
            rng_stream,
            offs_n,
            offs_d,
            offs_dv,
            tl.maximum(full_start, lo),
            tl.minimum(full_end, nq),
            stride_q_seq,
            stride_q_dim,
            stride_dout_seq,
            stride_dout_dim,
            stride_mask_q,
            stride_mask_k,
            stride_pad_k,
            stride_dw_q,
            stride_dw_k,
            seqlen_q,
            seqlen_k,
            head_dim,
            head_dim_v,
            causal_offset,
            qk_scale,
            qk_scale_lo,
            dropout_p,
            keep_scale,
            dw_scale,
            False,
            HAS_DW,
            IS_CAUSAL,
            MASK_KIND,
            HAS_PADDING,
            HAS_DROPOUT,
            EVEN_N,
            EVEN_DQK,
            EVEN_DV,
            USE_FP64,
            DOT_PRECISION,
            BLOCK_M,
        )
        # checked: the ragged last block
        if not EVEN_M:
            dk, dv = _dkdv_query_loop(
                dk,
                dv,
                k,
                v,
                q_base,
                do_base,
                lse_base,
                delta_base,
                mask_base,
                pad_base,
                dw_base,
                seed,
                rng_stream,
                offs_n,
                offs_d,
                offs_dv,
                tl.maximum(tl.maximum(full_start, lo), full_end),
                nq,
                stride_q_seq,
                stride_q_dim,
                stride_dout_seq,
                stride_dout_dim,
                stride_mask_q,
                stride_mask_k,
                stride_pad_k,
                stride_dw_q,
                stride_dw_k,
                seqlen_q,
                seqlen_k,
                head_dim,
                head_dim_v,
                causal_offset,
                qk_scale,
                qk_scale_lo,
                dropout_p,
                keep_scale,
                dw_scale,
                True,
                HAS_DW,
                IS_CAUSAL,
                MASK_KIND,
                HAS_PADDING,
                HAS_DROPOUT,
                EVEN_N,
                EVEN_DQK,
                EVEN_DV,
                USE_FP64,
                DOT_PRECISION,
                BLOCK_M,
            )

    if USE_FP64:
        dk = dk * sm_scale + dk * qk_scale_lo
    else:
        dk = dk * sm_scale
    dk_ptrs = (
        dk_ptr
        + b64 * stride_dk_batch
        + hkv64 * stride_dk_head
        + offs_n64[:, None] * stride_dk_seq
        + offs_d.to(tl.int64)[None, :] * stride_dk_dim
    )
    dv_ptrs = (
        dv_ptr
        + b64 * stride_dv_batch
        + hkv64 * stride_dv_head
        + offs_n64[:, None] * stride_dv_seq
        + offs_dv.to(tl.int64)[None, :] * stride_dv_dim
    )
    store_tile(dk_ptrs, dk, offs_n[:, None], offs_d[None, :], seqlen_k, head_dim, not EVEN_N, not EVEN_DQK)
    store_tile(dv_ptrs, dv, offs_n[:, None], offs_dv[None, :], seqlen_k, head_dim_v, not EVEN_N, not EVEN_DV)


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
    k_base,
    v_base,
    mask_base,
    pad_base,
    dw_base,
    seed,
    rng_stream,
    offs_m,
    offs_d,
    offs_dv,
    lo,
    hi,
    stride_k_seq,
    stride_k_dim,
    stride_v_seq,
    stride_v_dim,
    stride_mask_q,
    stride_mask_k,
    stride_pad_k,
    stride_dw_q,
    stride_dw_k,
    seqlen_q,
    seqlen_k,
    head_dim,
    head_dim_v,
    causal_offset,
    qk_scale,
    qk_scale_lo,
    dropout_p,
    keep_scale,
    dw_scale,
    BOUNDARY: tl.constexpr,
    HAS_DW: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    MASK_KIND: tl.constexpr,
    HAS_PADDING: tl.constexpr,
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
        offs_n64 = offs_n.to(tl.int64)
        k_ptrs = k_base + offs_n64[:, None] * stride_k_seq + offs_d.to(tl.int64)[None, :] * stride_k_dim
        v_ptrs = v_base + offs_n64[:, None] * stride_v_seq + offs_dv.to(tl.int64)[None, :] * stride_v_dim
        k = load_tile(k_ptrs, offs_n[:, None], offs_d[None, :], seqlen_k, head_dim, CHECK_N, not EVEN_DQK)
        v = load_tile(v_ptrs, offs_n[:, None], offs_dv[None, :], seqlen_k, head_dim_v, CHECK_N, not EVEN_DV)
        s = scaled_scores(q, tl.trans(k), qk_scale, qk_scale_lo, USE_FP64, DOT_PRECISION)
        s = apply_masks(
            s,
            offs_m[:, None],
            offs_n[None, :],
            mask_base,
            stride_mask_q,
            stride_mask_k,
            pad_base,
            stride_pad_k,
            seqlen_q,
            seqlen_k,
            causal_offset,
            not EVEN_M,
            CHECK_N,
            BOUNDARY and IS_CAUSAL,
            MASK_KIND,
            HAS_PADDING,
            USE_FP64,
        )
        p = probabilities(s, row_max[:, None], log_sum[:, None], USE_FP64)
        dp = matmul(do, tl.trans(v), USE_FP64, DOT_PRECISION)
        if HAS_DW:
            dw_ptrs = dw_base + offs_m.to(tl.int64)[:, None] * stride_dw_q + offs_n64[None, :] * stride_dw_k
            dw = load_tile(dw_ptrs, offs_m[:, None], offs_n[None, :], seqlen_q, seqlen_k, not EVEN_M, CHECK_N)
            dp += dw.to(dp.dtype) * dw_scale
        if HAS_DROPOUT:
            keep = dropout_keep(seed, rng_stream, offs_m[:, None], offs_n[None, :], dropout_p)
            dp = tl.where(keep, dp * keep_scale, 0.0)
        ds = p * (dp - delta[:, None])
        dq += matmul(ds.to(k.dtype), k, USE_FP64, DOT_PRECISION)
    return dq


@triton.jit(do_not_specialize=["causal_offset"])
def _bwd_dq_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    dout_ptr,
    lse_ptr,
    delta_ptr,
    dq_ptr,
    dw_ptr,
    mask_ptr,
    pad_ptr,
    kv_range_ptr,
    seed_ptr,
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
    stride_mask_batch,
    stride_mask_head,
    stride_mask_q,
    stride_mask_k,
    stride_pad_batch,
    stride_pad_k,
    num_heads_q,
    kv_group_size,
    seqlen_q,
    seqlen_k,
    head_dim,
    head_dim_v,
    causal_offset,
    qk_scale,
    qk_scale_lo,
    dropout_p,
    keep_scale,
    sm_scale,
    HAS_DW: tl.constexpr,
    DW_MEAN: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    MASK_KIND: tl.constexpr,
    HAS_PADDING: tl.constexpr,
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
    offs_m64 = offs_m.to(tl.int64)
    offs_d = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)

    q_ptrs = (
        q_ptr
        + b64 * stride_q_batch
        + h64 * stride_q_head
        + offs_m64[:, None] * stride_q_seq
        + offs_d.to(tl.int64)[None, :] * stride_q_dim
    )
    do_ptrs = (
        dout_ptr
        + b64 * stride_dout_batch
        + h64 * stride_dout_head
        + offs_m64[:, None] * stride_dout_seq
        + offs_dv.to(tl.int64)[None, :] * stride_dout_dim
    )
    q = load_tile(q_ptrs, offs_m[:, None], offs_d[None, :], seqlen_q, head_dim, not EVEN_M, not EVEN_DQK)
    do = load_tile(do_ptrs, offs_m[:, None], offs_dv[None, :], seqlen_q, head_dim_v, not EVEN_M, not EVEN_DV)
    row_max, log_sum = load_row_stats(lse_ptr + (b64 * num_heads_q + h64) * seqlen_q * 2, offs_m, seqlen_q, not EVEN_M)
    delta_ptrs = delta_ptr + (b64 * num_heads_q + h64) * seqlen_q + offs_m
    if EVEN_M:
        delta = tl.load(delta_ptrs)
    else:
        delta = tl.load(delta_ptrs, mask=offs_m < seqlen_q, other=0.0)

    k_base = k_ptr + b64 * stride_k_batch + hkv64 * stride_k_head
    v_base = v_ptr + b64 * stride_v_batch + hkv64 * stride_v_head
    mask_base = mask_ptr + b64 * stride_mask_batch + h64 * stride_mask_head
    pad_base = pad_ptr + b64 * stride_pad_batch
    dw_base = dw_ptr + b64 * stride_dw_batch + h64 * stride_dw_head
    seed = 0
    if HAS_DROPOUT:
        seed = tl.load(seed_ptr)
    rng_stream = off_b * num_heads_q + off_h
    dw_scale = _dw_scale(num_heads_q, DW_MEAN, USE_FP64)
    if USE_FP64:
        dq = tl.zeros([BLOCK_M, BLOCK_DQK], dtype=tl.float64)
    else:
        dq = tl.zeros([BLOCK_M, BLOCK_DQK], dtype=tl.float32)

    lo, full_end, hi = key_block_range(
        start_m, off_b, kv_range_ptr, seqlen_k, causal_offset, IS_CAUSAL, HAS_PADDING, BLOCK_M, BLOCK_N
    )
    dq = _dq_key_loop(
        dq,
        q,
        do,
        row_max,
        log_sum,
        delta,
        k_base,
        v_base,
        mask_base,
        pad_base,
        dw_base,
        seed,
        rng_stream,
        offs_m,
        offs_d,
        offs_dv,
        lo,
        full_end,
        stride_k_seq,
        stride_k_dim,
        stride_v_seq,
        stride_v_dim,
        stride_mask_q,
        stride_mask_k,
        stride_pad_k,
        stride_dw_q,
        stride_dw_k,
        seqlen_q,
        seqlen_k,
        head_dim,
        head_dim_v,
        causal_offset,
        qk_scale,
        qk_scale_lo,
        dropout_p,
        keep_scale,
        dw_scale,
        False,
        HAS_DW,
        IS_CAUSAL,
        MASK_KIND,
        HAS_PADDING,
        HAS_DROPOUT,
        EVEN_M,
        EVEN_N,
        EVEN_DQK,
        EVEN_DV,
        USE_FP64,
        DOT_PRECISION,
        BLOCK_N,
    )
    dq = _dq_key_loop(
        dq,
        q,
        do,
        row_max,
        log_sum,
        delta,
        k_base,
        v_base,
        mask_base,
        pad_base,
        dw_base,
        seed,
        rng_stream,
        offs_m,
        offs_d,
        offs_dv,
        full_end,
        hi,
        stride_k_seq,
        stride_k_dim,
        stride_v_seq,
        stride_v_dim,
        stride_mask_q,
        stride_mask_k,
        stride_pad_k,
        stride_dw_q,
        stride_dw_k,
        seqlen_q,
        seqlen_k,
        head_dim,
        head_dim_v,
        causal_offset,
        qk_scale,
        qk_scale_lo,
        dropout_p,
        keep_scale,
        dw_scale,
        True,
        HAS_DW,
        IS_CAUSAL,
        MASK_KIND,
        HAS_PADDING,
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
        dq = dq * sm_scale + dq * qk_scale_lo
    else:
        dq = dq * sm_scale
    dq_ptrs = (
        dq_ptr
        + b64 * stride_dq_batch
        + h64 * stride_dq_head
        + offs_m64[:, None] * stride_dq_seq
        + offs_d.to(tl.int64)[None, :] * stride_dq_dim
    )
    store_tile(dq_ptrs, dq, offs_m[:, None], offs_d[None, :], seqlen_q, head_dim, not EVEN_M, not EVEN_DQK)


# ---------------------------------------------------------------------------------------------
# launcher
# ---------------------------------------------------------------------------------------------


def attention_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    grad_out: torch.Tensor,
    problem: AttentionProblem,
    grad_weights: Optional[torch.Tensor] = None,
    weights_mean: bool = False,
    configs: Optional[dict] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of attention with respect to q, k and v.

    ``out`` and ``lse`` (``[B, Hq, Nq, 2]``) are the forward's results for the same arguments; ``grad_out`` is dL/dout
    (any strides). ``grad_weights`` is dL/dweights when the returned weights take part in the loss:
    ``[B, Hq, Nq, Nk]``, or ``[B, Nq, Nk]`` with ``weights_mean=True``. ``configs`` maps kernel
    names ("backward_preprocess", "backward_dkdv", "backward_dq") to ``KernelConfig``s.
    Returns ``(dq, dk, dv)`` laid out like q, k and v, in their dtype. Deterministic.
    """
    batch, heads_q, seqlen_q, head_dim = q.shape
    heads_kv, seqlen_k, head_dim_v = k.shape[1], k.shape[2], v.shape[3]
    dq = _like_query_layout(q, tuple(q.shape))
    dk = _like_query_layout(k, tuple(k.shape))
    dv = _like_query_layout(v, tuple(v.shape))
    if dq.numel() == 0 and dk.numel() == 0:
        return dq, dk, dv
    if seqlen_k == 0 or seqlen_q == 0 or heads_q == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    _check_grid(batch, heads_q)
    configs = configs or {}
    width = max(head_dim, head_dim_v)

    use_fp64 = q.dtype == torch.float64
    block_dqk, block_dv = head_dim_bucket(head_dim), head_dim_bucket(head_dim_v)
    mask, mask_strides, mask_kind = _mask_args(problem, q)
    pad, kv_range, pad_strides, has_padding = _padding_args(problem, q)
    seed, has_dropout, dropout_p, keep_scale = _seed_args(problem, q)
    heavy = is_heavy(mask_kind, has_dropout, grad_weights is not None)

    def config(name: str) -> KernelConfig:
        return configs.get(name) or get_config(name, q.device, q.dtype, width, INTERPRETED, heavy=heavy)

    qk_scale, qk_scale_lo = _scale_parts(problem.scale, use_fp64)
    # Natural-units scale for dQ and dK. For fp64 its float32 head equals qk_scale and its
    # remainder qk_scale_lo (the fp64 exponent domain is natural), which the kernels add back.
    sm_scale = float(torch.tensor(problem.scale, dtype=torch.float32))
    has_dw = grad_weights is not None
    if has_dw:
        dw = grad_weights
        dw_strides = (dw.stride(0), 0, dw.stride(1), dw.stride(2)) if weights_mean else dw.stride()
    else:
        dw, dw_strides = q, (0, 0, 0, 0)
    common_flags = dict(
        HAS_DW=has_dw,
        DW_MEAN=has_dw and weights_mean,
        IS_CAUSAL=problem.is_causal,
        MASK_KIND=mask_kind,
        HAS_PADDING=has_padding,
        HAS_DROPOUT=has_dropout,
        EVEN_DQK=head_dim == block_dqk,
        EVEN_DV=head_dim_v == block_dv,
        USE_FP64=use_fp64,
        DOT_PRECISION=_dot_precision(q.dtype, problem.allow_tf32),
        BLOCK_DQK=block_dqk,
        BLOCK_DV=block_dv,
    )
    group = heads_q // heads_kv

    delta = torch.empty(lse.shape[:-1], dtype=lse.dtype, device=lse.device)
    cfg = config("backward_preprocess")
    with explain_resources("backward_preprocess", cfg, q.dtype, width):
        launchable(_bwd_preprocess_kernel)[(triton.cdiv(seqlen_q, cfg.block_m), heads_q, batch)](
            out,
            grad_out,
            delta,
            q,
            k,
            lse,
            dw,
            mask,
            pad,
            kv_range,
            seed,
            *out.stride(),
            *grad_out.stride(),
            *q.stride(),
            *k.stride(),
            *dw_strides,
            *mask_strides,
            *pad_strides,
            heads_q,
            group,
            seqlen_q,
            seqlen_k,
            head_dim,
            head_dim_v,
            problem.causal_offset,
            qk_scale,
            qk_scale_lo,
            dropout_p,
            keep_scale,
            EVEN_M=seqlen_q % cfg.block_m == 0,
            EVEN_N=seqlen_k % cfg.block_n == 0,
            BLOCK_M=cfg.block_m,
            BLOCK_N=cfg.block_n,
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
            **common_flags,
        )

    cfg = config("backward_dkdv")
    with explain_resources("backward_dkdv", cfg, q.dtype, width):
        launchable(_bwd_dkdv_kernel)[(triton.cdiv(seqlen_k, cfg.block_n), heads_kv, batch)](
            q,
            k,
            v,
            grad_out,
            lse,
            delta,
            dk,
            dv,
            dw,
            mask,
            pad,
            kv_range,
            seed,
            *q.stride(),
            *k.stride(),
            *v.stride(),
            *grad_out.stride(),
            *dk.stride(),
            *dv.stride(),
            *dw_strides,
            *mask_strides,
            *pad_strides,
            heads_q,
            group,
            seqlen_q,
            seqlen_k,
            head_dim,
            head_dim_v,
            problem.causal_offset,
            qk_scale,
            qk_scale_lo,
            dropout_p,
            keep_scale,
            sm_scale,
            EVEN_M=seqlen_q % cfg.block_m == 0,
            EVEN_N=seqlen_k % cfg.block_n == 0,
            BLOCK_M=cfg.block_m,
            BLOCK_N=cfg.block_n,
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
            **common_flags,
        )
    cfg = config("backward_dq")
    with explain_resources("backward_dq", cfg, q.dtype, width):
        launchable(_bwd_dq_kernel)[(triton.cdiv(seqlen_q, cfg.block_m), heads_q, batch)](
            q,
            k,
            v,
            grad_out,
            lse,
            delta,
            dq,
            dw,
            mask,
            pad,
            kv_range,
            seed,
            *q.stride(),
            *k.stride(),
            *v.stride(),
            *grad_out.stride(),
            *dq.stride(),
            *dw_strides,
            *mask_strides,
            *pad_strides,
            heads_q,
            group,
            seqlen_q,
            seqlen_k,
            head_dim,
            head_dim_v,
            problem.causal_offset,
            qk_scale,
            qk_scale_lo,
            dropout_p,
            keep_scale,
            sm_scale,
            EVEN_M=seqlen_q % cfg.block_m == 0,
            EVEN_N=seqlen_k % cfg.block_n == 0,
            BLOCK_M=cfg.block_m,
            BLOCK_N=cfg.block_n,
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
            **common_flags,
        )
    return dq, dk, dv
