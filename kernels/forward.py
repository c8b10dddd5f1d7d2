"""Fused attention forward and the exact-weights kernel, with their launchers.

``launch_forward`` runs a FlashAttention-2-style forward: each program owns BLOCK_M query rows of
one (batch, head), streams the keys and values BLOCK_N at a time, and keeps an fp32 running
maximum and sum (online softmax). It writes the output and each row's softmax statistics: the row
max m and log(l), the log of the row sum (``row_stats``, see ``launch_forward``).

``launch_weights`` turns those statistics into the exact probabilities without any score buffer:
each program recomputes one [BLOCK_M, BLOCK_N] score tile and writes ``exp((s - m) - log(l))``
straight into the weights tensor. With ``mean=True`` the program loops over the heads itself and
writes the head average once, so per-head weights never exist in memory.

Launchers take validated, normalised arguments (``attnlens.scaled_dot_product_attention`` does
the checking): q ``[B, Hq, Nq, Dqk]``, k ``[B, Hkv, Nk, Dqk]``, v ``[B, Hkv, Nk, Dv]`` with any
strides, and an ``AttentionProblem`` whose ``attn_mask`` is already viewed as 4-D and broadcast to
``[B, Hq, Nq, Nk]`` (stride 0 where it broadcasts; never expanded in memory) and whose
``key_padding_mask`` is bool ``[B, Nk]`` (True = padding). The parameters every kernel shares
(masks, seed, lengths, scale) follow the kernel's own tensors in the order of
``attnlens.kernels.launch.KernelArgs``.
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
    descriptor_scratch,
    empty_like_query,
    explain_resources,
    fast_helper_calls,
    kernel_args,
    launchable,
    tma_eligible,
)
from attnlens.kernels.tiles import (
    LOG2E,
    LOG2E_CONSTEXPR,
    accumulator,
    apply_dropout,
    exponential,
    head_scoring,
    key_block_range,
    load_block,
    load_block_transposed,
    load_key_range,
    load_row_stats,
    load_seed,
    logarithm,
    matmul,
    probabilities,
    score_tile,
    store_block,
)

__all__ = ["launch_forward", "launch_weights", "row_stats_to_lse"]


def row_stats_to_lse(row_stats: torch.Tensor) -> torch.Tensor:
    """The kernels' row statistics ``[..., 2]`` (row max, log row sum; base 2 below fp64) as one
    log-sum-exp ``[...]`` in natural log units and the statistics' dtype (-inf for empty rows).
    The sum is formed in float64, so that only the final rounding is lost when |row max| is huge."""
    total = row_stats[..., 0].to(torch.float64) + row_stats[..., 1].to(torch.float64)
    return total if row_stats.dtype == torch.float64 else (total * (1.0 / LOG2E)).to(row_stats.dtype)


# ---------------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------------


@triton.jit
def _fwd_key_loop(
    acc,
    l_i,
    m_i,
    q,
    k_source,
    v_source,
    scoring,
    dropout,
    offs_m,
    offs_d,
    offs_dv,
    lo,
    hi,
    BOUNDARY: tl.constexpr,
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
    USE_TMA: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Online softmax over key blocks [lo, hi). With BOUNDARY=False every block lies wholly
    inside the keys and wholly inside the causal diagonal and the window, so no bound, causal or
    window test is made.
    ``k_source``/``v_source`` are the K and V matrices of this (batch, head), or with USE_TMA their
    tensor descriptors (zeros outside the keys and head dims, as the checked loads give)."""
    CHECK_N: tl.constexpr = BOUNDARY and not EVEN_N
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        if USE_TMA:
            k_t = tl.trans(k_source.load([start_n, 0]))
        else:
            k_t = load_block_transposed(k_source, offs_n, offs_d, CHECK_N, not EVEN_DQK)
        s, _ = score_tile(
            q,
            k_t,
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
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A row that has seen only masked keys keeps m = -inf; shift it by 0 so exp gives 0, not NaN.
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = exponential(m_i - m_shift, USE_FP64)
        p = exponential(s - m_shift[:, None], USE_FP64)
        l_i = l_i * alpha + tl.sum(p, 1)
        p = apply_dropout(p, offs_m[:, None], offs_n[None, :], dropout, HAS_DROPOUT)
        if USE_TMA:
            v = v_source.load([start_n, 0])
        else:
            v = load_block(v_source, offs_n, offs_dv, CHECK_N, not EVEN_DV)
        acc = acc * alpha[:, None] + matmul(p.to(v.dtype), v, USE_FP64, DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["causal_offset"])
def _attn_fwd_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    out_ptr,
    row_stats_ptr,
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
    stride_out_batch,
    stride_out_head,
    stride_out_seq,
    stride_out_dim,
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
    USE_TMA: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    """Attention output and row statistics for BLOCK_M query rows of one (batch, head).

    USE_TMA: load the Q, K and V tiles through tensor descriptors made in the kernel (Hopper's
    copy engine) instead of pointer arithmetic; the launcher asks for it only where the
    descriptors' rules hold (unit stride along the head dim, 16-byte aligned bases and strides).

    q_ptr          [B, Hq, Nq, Dqk]   any strides
    k_ptr          [B, Hkv, Nk, Dqk]  any strides; query head h reads key head h // kv_group_size
    v_ptr          [B, Hkv, Nk, Dv]   any strides
    out_ptr        [B, Hq, Nq, Dv]    written, input dtype
    row_stats_ptr  [B, Hq, Nq, 2]     written, contiguous: row max m and log(l), fp32 in base 2
                                      (fp64 in base e for fp64); see launch_forward
    mask_ptr       attn_mask viewed [B, Hq, Nq, Nk] (stride 0 where broadcast), uint8 or float
    pad_ptr        key_padding_mask [B, Nk] as uint8, nonzero = padding
    kv_range_ptr   int32 [B, 2]: first and one-past-last unpadded key
    seed_ptr       int64 [1], Philox seed for dropout
    alibi_ptr      [B, Hq] ALiBi slopes (fp32; fp64 for fp64), any strides
    sinks_ptr      [B, Hq, Nq] sink logits (fp32; fp64 for fp64), natural units, any strides (0
                   where one logit serves a head)
    grid: (cdiv(Nq, BLOCK_M), Hq, B)

    HAS_SINKS: the row's softmax starts from the head's sink logit, a key of value 0, so the
    sink is in the saved row statistics and every kernel that rebuilds probabilities from them
    gets the probabilities over the real keys (summing to less than 1) without knowing of it.
    """
    pid_m = tl.program_id(0)
    off_h = tl.program_id(1)
    off_b = tl.program_id(2)
    off_hkv = off_h // kv_group_size
    b64 = off_b.to(tl.int64)
    h64 = off_h.to(tl.int64)
    hkv64 = off_hkv.to(tl.int64)

    q_base = q_ptr + b64 * stride_q_batch + h64 * stride_q_head
    k_base = k_ptr + b64 * stride_k_batch + hkv64 * stride_k_head
    v_base = v_ptr + b64 * stride_v_batch + hkv64 * stride_v_head
    out_base = out_ptr + b64 * stride_out_batch + h64 * stride_out_head

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)

    if USE_TMA:
        q_desc = tl.make_tensor_descriptor(
            q_base, shape=[seqlen_q, head_dim], strides=[stride_q_seq, 1], block_shape=[BLOCK_M, BLOCK_DQK]
        )
        k_source = tl.make_tensor_descriptor(
            k_base, shape=[seqlen_k, head_dim], strides=[stride_k_seq, 1], block_shape=[BLOCK_N, BLOCK_DQK]
        )
        v_source = tl.make_tensor_descriptor(
            v_base, shape=[seqlen_k, head_dim_v], strides=[stride_v_seq, 1], block_shape=[BLOCK_N, BLOCK_DV]
        )
        q = q_desc.load([start_m, 0])
    else:
        k_source = (k_base, stride_k_seq, stride_k_dim, seqlen_k, head_dim)
        v_source = (v_base, stride_v_seq, stride_v_dim, seqlen_k, head_dim_v)
        q_matrix = (q_base, stride_q_seq, stride_q_dim, seqlen_q, head_dim)
        q = load_block(q_matrix, offs_m, offs_d, not EVEN_M, not EVEN_DQK)

    geometry = (seqlen_q, seqlen_k, causal_offset, window_left, window_right)
    scales = (qk_scale, qk_scale_lo, softcap_scale, softcap_scale_lo)
    mask_args = (mask_ptr, stride_mask_batch, stride_mask_head, stride_mask_q, stride_mask_k)
    padding_args = (pad_ptr, stride_pad_batch, stride_pad_k)
    alibi_args = (alibi_ptr, stride_alibi_batch, stride_alibi_head)
    scoring = head_scoring(scales, geometry, mask_args, padding_args, alibi_args, b64, h64, HAS_ALIBI, USE_FP64)
    dropout = (load_seed(seed_ptr, HAS_DROPOUT), off_b * num_heads_q + off_h, dropout_p, keep_scale)

    # Key blocks this query block can see: [lo, hi). Blocks in [full_start, full_end) need no
    # causal, window or bound test; the others are tested element by element.
    lo, full_start, full_end, hi = key_block_range(
        start_m, off_b, kv_range_ptr, geometry, IS_CAUSAL, HAS_PADDING, HAS_WINDOW, BLOCK_M, BLOCK_N
    )

    acc = accumulator(BLOCK_M, BLOCK_DV, USE_FP64)
    if HAS_SINKS:
        # the sink: a key of score sink (exponent domain) and value 0 that every row attends to
        sink_ptrs = (
            sinks_ptr + b64 * stride_sinks_batch + h64 * stride_sinks_head + offs_m.to(tl.int64) * stride_sinks_q
        )
        if EVEN_M:
            sink = tl.load(sink_ptrs)
        else:
            sink = tl.load(sink_ptrs, mask=offs_m < seqlen_q, other=0.0)
        if not USE_FP64:
            sink = sink * LOG2E_CONSTEXPR
        m_i = sink.to(acc.dtype)
        l_i = tl.full([BLOCK_M], 1.0, dtype=acc.dtype)
    else:
        l_i = tl.zeros([BLOCK_M], dtype=acc.dtype)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=acc.dtype)
    # the unmasked blocks [full_start, full_end), then the boundary blocks [full_end, hi), then
    # (with a window) the blocks on the window's left edge [lo, full_start)
    stages = ((full_start, full_end), (full_end, hi), (lo, full_start))
    for stage in tl.static_range(3):
        if stage != 2 or HAS_WINDOW:
            start, end = stages[stage]
            acc, l_i, m_i = _fwd_key_loop(
                acc,
                l_i,
                m_i,
                q,
                k_source,
                v_source,
                scoring,
                dropout,
                offs_m,
                offs_d,
                offs_dv,
                start,
                end,
                stage != 0,
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
                USE_TMA,
                BLOCK_N,
            )

    # A row with nothing to attend to has l = 0 and acc = 0: output 0, m = -inf and log(l) = 0.
    # m and log(l) are stored apart: in fp32, m + log(l) drops log(l) once |m| is large.
    empty = l_i == 0.0
    row_max = tl.where(empty, float("-inf"), m_i)
    log_sum = logarithm(tl.where(empty, 1.0, l_i), USE_FP64)
    out = acc / tl.where(empty, 1.0, l_i)[:, None]

    stats_ptrs = row_stats_ptr + ((b64 * num_heads_q + h64) * seqlen_q + offs_m) * 2
    if not EVEN_M:
        tl.store(stats_ptrs, row_max, mask=offs_m < seqlen_q)
        tl.store(stats_ptrs + 1, log_sum, mask=offs_m < seqlen_q)
    else:
        tl.store(stats_ptrs, row_max)
        tl.store(stats_ptrs + 1, log_sum)
    out_matrix = (out_base, stride_out_seq, stride_out_dim, seqlen_q, head_dim_v)
    store_block(out_matrix, out, offs_m, offs_dv, not EVEN_M, not EVEN_DV)


def launch_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, problem: AttentionProblem, config: Optional[KernelConfig] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run the fused forward.

    Returns ``(out, row_stats)``: out ``[B, Hq, Nq, Dv]`` in the input dtype (laid out like q),
    row_stats ``[B, Hq, Nq, 2]`` contiguous, each row's log-sum-exp in two parts:
    ``row_stats[..., 0]`` = m, the max of the row's scores, and ``row_stats[..., 1]`` = log(l),
    l = sum(exp(s - m)); fp32 in base 2 (fp64 in base e for fp64 inputs). The log-sum-exp is
    m + log(l) (``row_stats_to_lse`` gives it in natural units); the kernels that recompute
    probabilities use exp((s - m) - log(l)), exact whatever m, whereas a single fp32 m + log(l)
    loses log(l) once |m| is large (a row of -1e9 biases). Rows with nothing to attend to:
    m = -inf, log(l) = 0.
    """
    batch, heads_q, seqlen_q, head_dim = q.shape
    seqlen_k, head_dim_v = k.shape[2], v.shape[3]
    out = empty_like_query(q, (batch, heads_q, seqlen_q, head_dim_v))
    row_stats = torch.empty(
        (batch, heads_q, seqlen_q, 2),
        dtype=torch.float64 if q.dtype == torch.float64 else torch.float32,
        device=q.device,
    )
    if out.numel() == 0 and row_stats.numel() == 0:
        return out, row_stats
    if seqlen_k == 0:
        out.zero_()
        row_stats[..., 0] = float("-inf")
        row_stats[..., 1] = 0.0
        return out, row_stats
    check_grid(batch, heads_q)
    args = kernel_args(problem, q, k, v)
    width = max(head_dim, head_dim_v)
    cfg = config or get_config(
        "forward", q.device, q.dtype, width, INTERPRETED, heavy=is_heavy(args.mask_kind, args.has_dropout)
    )
    use_tma = cfg.tma and tma_eligible(q, k, v)
    grid = (triton.cdiv(seqlen_q, cfg.block_m), heads_q, batch)
    with explain_resources("forward", cfg, q.dtype, width), descriptor_scratch(q.device, use_tma):
        launchable(_attn_fwd_kernel)[grid](
            q,
            k,
            v,
            out,
            row_stats,
            *q.stride(),
            *k.stride(),
            *v.stride(),
            *out.stride(),
            *args.runtime,
            **args.options(cfg, USE_TMA=use_tma),
        )
    return out, row_stats


# ---------------------------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["causal_offset"])
def _attn_weights_kernel(
    q_ptr,
    k_ptr,
    row_stats_ptr,
    w_ptr,
    stride_q_batch,
    stride_q_head,
    stride_q_seq,
    stride_q_dim,
    stride_k_batch,
    stride_k_head,
    stride_k_seq,
    stride_k_dim,
    stride_w_batch,
    stride_w_head,
    stride_w_q,
    stride_w_k,
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
    num_n_blocks,
    IS_CAUSAL: tl.constexpr,
    MASK_KIND: tl.constexpr,
    HAS_PADDING: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    HAS_ALIBI: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    HAS_SINKS: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    HEAD_MEAN: tl.constexpr,
    EVEN_M: tl.constexpr,
    EVEN_N: tl.constexpr,
    EVEN_DQK: tl.constexpr,
    EVEN_DV: tl.constexpr,
    USE_FP64: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    USE_TMA: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    """Exact attention probabilities for one [BLOCK_M, BLOCK_N] tile, from the saved row
    statistics: exp((s - m) - log(l)).

    USE_TMA: write the tile with one tensor-descriptor (TMA) store instead of per-thread stores;
    the launcher asks for it only where the weights' rows are 16-byte aligned.

    q_ptr          [B, Hq, Nq, Dqk], k_ptr [B, Hkv, Nk, Dqk]   any strides
    row_stats_ptr  [B, Hq, Nq, 2] contiguous (row max, log row sum), as the forward wrote them
    w_ptr          [B, Hq, Nq, Nk] written (HEAD_MEAN: [B, Nq, Nk], stride_w_head unused), input dtype
    mask_ptr, pad_ptr, kv_range_ptr, seed_ptr, alibi_ptr as in the forward kernel (head_dim_v,
    sinks_ptr, EVEN_DV and BLOCK_DV are unused: the shared arguments of every kernel)
    grid: (cdiv(Nq, BLOCK_M) * cdiv(Nk, BLOCK_N), 1 if HEAD_MEAN else Hq, B)

    A tile that causality, the window or key padding empties entirely is written as zeros
    without any loads. With HAS_SINKS the row statistics include the sink, so the tile holds the
    probabilities over the real keys.
    With HEAD_MEAN the program sums the probabilities of all Hq heads in registers, in head
    order (deterministic), and writes their mean once.
    """
    pid = tl.program_id(0)
    pid_m = pid // num_n_blocks
    pid_n = pid % num_n_blocks
    off_b = tl.program_id(2)
    b64 = off_b.to(tl.int64)
    start_m = pid_m * BLOCK_M
    start_n = pid_n * BLOCK_N
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_DQK)
    if HEAD_MEAN:
        head_lo = 0
        head_hi = num_heads_q
    else:
        head_lo = tl.program_id(1)
        head_hi = head_lo + 1

    active = start_m < seqlen_q
    if IS_CAUSAL:
        active = active & (start_n <= start_m + BLOCK_M - 1 + causal_offset)
    if HAS_WINDOW:
        # some (row, key) pair of the tile within [i + offset - left, i + offset + right]
        active = active & (start_n <= start_m + BLOCK_M - 1 + causal_offset + window_right)
        active = active & (start_n + BLOCK_N - 1 >= start_m + causal_offset - window_left)
    if HAS_PADDING:
        kv_start, kv_end = load_key_range(kv_range_ptr, off_b)
        active = active & (start_n < kv_end) & (start_n + BLOCK_N > kv_start)
    seed = load_seed(seed_ptr, HAS_DROPOUT)

    geometry = (seqlen_q, seqlen_k, causal_offset, window_left, window_right)
    scales = (qk_scale, qk_scale_lo, softcap_scale, softcap_scale_lo)
    mask_args = (mask_ptr, stride_mask_batch, stride_mask_head, stride_mask_q, stride_mask_k)
    padding_args = (pad_ptr, stride_pad_batch, stride_pad_k)
    alibi_args = (alibi_ptr, stride_alibi_batch, stride_alibi_head)
    total = accumulator(BLOCK_M, BLOCK_N, USE_FP64)
    if active:
        for off_h in range(head_lo, head_hi):
            h64 = tl.cast(off_h, tl.int64)
            hkv64 = tl.cast(off_h // kv_group_size, tl.int64)
            q_matrix = (
                q_ptr + b64 * stride_q_batch + h64 * stride_q_head,
                stride_q_seq,
                stride_q_dim,
                seqlen_q,
                head_dim,
            )
            k_matrix = (
                k_ptr + b64 * stride_k_batch + hkv64 * stride_k_head,
                stride_k_seq,
                stride_k_dim,
                seqlen_k,
                head_dim,
            )
            q = load_block(q_matrix, offs_m, offs_d, not EVEN_M, not EVEN_DQK)
            k_t = load_block_transposed(k_matrix, offs_n, offs_d, not EVEN_N, not EVEN_DQK)
            # A row with nothing to attend to comes back with m = +inf: its probabilities are 0.
            row_max, log_sum = load_row_stats(
                row_stats_ptr + (b64 * num_heads_q + h64) * seqlen_q * 2, offs_m, seqlen_q, not EVEN_M
            )
            scoring = head_scoring(scales, geometry, mask_args, padding_args, alibi_args, b64, h64, HAS_ALIBI, USE_FP64)
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
            p = probabilities(s, row_max[:, None], log_sum[:, None], USE_FP64)
            dropout = (seed, off_b * num_heads_q + off_h, dropout_p, keep_scale)
            total += apply_dropout(p, offs_m[:, None], offs_n[None, :], dropout, HAS_DROPOUT)
    if HEAD_MEAN:
        total = total / num_heads_q
        w_head = 0
    else:
        w_head = head_lo.to(tl.int64)
    w_base = w_ptr + b64 * stride_w_batch + w_head * stride_w_head
    if USE_TMA:
        # one bulk asynchronous store of the tile; the hardware clips it to [seqlen_q, seqlen_k]
        w_desc = tl.make_tensor_descriptor(
            w_base, shape=[seqlen_q, seqlen_k], strides=[stride_w_q, 1], block_shape=[BLOCK_M, BLOCK_N]
        )
        w_desc.store([start_m, start_n], total.to(w_ptr.dtype.element_ty))
    else:
        w_matrix = (w_base, stride_w_q, stride_w_k, seqlen_q, seqlen_k)
        store_block(w_matrix, total, offs_m, offs_n, not EVEN_M, not EVEN_N)


def launch_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    row_stats: torch.Tensor,
    problem: AttentionProblem,
    mean: bool = False,
    config: Optional[KernelConfig] = None,
) -> torch.Tensor:
    """Exact attention probabilities from the forward's ``row_stats`` (``[B, Hq, Nq, 2]``), in q's
    dtype.

    Returns ``[B, Hq, Nq, Nk]``, or ``[B, Nq, Nk]`` (the average over query heads) when ``mean``.
    After dropout when ``problem.dropout_p > 0``, with the forward's seed.
    """
    batch, heads_q, seqlen_q, head_dim = q.shape
    seqlen_k = k.shape[2]
    shape = (batch, seqlen_q, seqlen_k) if mean else (batch, heads_q, seqlen_q, seqlen_k)
    weights = torch.empty(shape, dtype=q.dtype, device=q.device)
    if weights.numel() == 0:
        return weights
    if heads_q == 0:
        return weights.zero_()
    check_grid(batch, heads_q)
    args = kernel_args(problem, q, k, k)
    cfg = config or get_config(
        "weights", q.device, q.dtype, head_dim, INTERPRETED, heavy=is_heavy(args.mask_kind, args.has_dropout)
    )
    w_strides = (weights.stride(0), 0, weights.stride(1), weights.stride(2)) if mean else weights.stride()
    use_tma = cfg.tma and tma_eligible(weights.view(batch, -1, seqlen_q, seqlen_k))
    num_n_blocks = triton.cdiv(seqlen_k, cfg.block_n)
    grid = (triton.cdiv(seqlen_q, cfg.block_m) * num_n_blocks, 1 if mean else heads_q, batch)
    with explain_resources("weights", cfg, q.dtype, head_dim), descriptor_scratch(q.device, use_tma):
        launchable(_attn_weights_kernel)[grid](
            q,
            k,
            row_stats,
            weights,
            *q.stride(),
            *k.stride(),
            *w_strides,
            *args.runtime,
            num_n_blocks,
            **args.options(cfg, HEAD_MEAN=mean, USE_TMA=use_tma),
        )
    return weights


fast_helper_calls(globals())
