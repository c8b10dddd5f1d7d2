"""Fused attention forward and the exact-weights kernel, with their launchers.

``attention_forward`` runs a FlashAttention-2-style forward: each program owns BLOCK_M query rows
of one (batch, head), streams the keys and values BLOCK_N at a time, and keeps an fp32 running
maximum and sum (online softmax). It writes the output and the per-row log-sum-exp, kept as its
two parts: the row max m and log(l), the log of the row sum (see ``attention_forward``).

``attention_weights`` turns those statistics into the exact probabilities without any score
buffer: each program recomputes one [BLOCK_M, BLOCK_N] score tile and writes
``exp((s - m) - log(l))`` straight into the weights tensor. With ``mean=True`` the program loops over the
heads itself and writes the head average once, so per-head weights never exist in memory.

Launchers take validated, normalised arguments (``attnlens.functional`` does the checking):
q ``[B, Hq, Nq, Dqk]``, k ``[B, Hkv, Nk, Dqk]``, v ``[B, Hkv, Nk, Dv]`` with any strides,
``attn_mask`` already viewed as 4-D and broadcast to ``[B, Hq, Nq, Nk]`` (stride 0 where it
broadcasts; never expanded in memory), ``key_padding_mask`` bool ``[B, Nk]`` (True = padding).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator, Optional, Tuple

import torch
import triton
import triton.language as tl

from attnlens.kernels.config import KernelConfig, get_config, head_dim_bucket, is_heavy
from attnlens.kernels.launch import INTERPRETED, explain_resources, launchable
from attnlens.kernels.tiles import (
    LOG2E,
    MASK_ADDITIVE,
    MASK_BOOL,
    MASK_NONE,
    _dropout_mask_kernel,
    apply_masks,
    dropout_keep,
    exponential,
    key_block_range,
    load_row_stats,
    load_tile,
    logarithm,
    matmul,
    probabilities,
    scaled_scores,
    store_tile,
)

__all__ = [
    "AttentionProblem",
    "attention_forward",
    "attention_weights",
    "dropout_keep_mask",
    "lse_to_natural",
]

# CUDA limits grid dimensions y and z to 65535; heads and batch go there, as in FlashAttention-2
# (axis x holds the query blocks, so that programs launched together share a head's keys in L2).
_MAX_GRID_YZ = 65535


@dataclasses.dataclass
class AttentionProblem:
    """Everything about one attention call that the kernels need besides q, k and v.

    ``causal_offset``: key j is visible to query i iff ``j <= i + causal_offset`` (0 is torch's
    top-left alignment, ``Nk - Nq`` the bottom-right one). ``seed`` is an int64 tensor of one
    element on the inputs' device, required when ``dropout_p > 0``.
    """

    scale: float
    is_causal: bool = False
    causal_offset: int = 0
    attn_mask: Optional[torch.Tensor] = None
    key_padding_mask: Optional[torch.Tensor] = None
    dropout_p: float = 0.0
    seed: Optional[torch.Tensor] = None
    allow_tf32: bool = False
    kv_range: Optional[torch.Tensor] = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.key_padding_mask is not None and self.kv_range is None:
            self.kv_range = _key_ranges(self.key_padding_mask)


def _key_ranges(key_padding_mask: torch.Tensor) -> torch.Tensor:
    """int32 ``[B, 2]``: the first and one-past-the-last unpadded key of each batch element
    ((0, 0) when every key is padding). Kernels skip the key blocks outside this range."""
    keep = ~key_padding_mask
    seqlen_k = keep.shape[1]
    if seqlen_k == 0:
        return torch.zeros(keep.shape[0], 2, dtype=torch.int32, device=keep.device)
    as_int = keep.to(torch.int32)
    any_kept = keep.any(dim=1)
    first = as_int.argmax(dim=1)
    end = seqlen_k - as_int.flip(1).argmax(dim=1)
    ranges = torch.stack([first, end], dim=1)
    return torch.where(any_kept[:, None], ranges, torch.zeros_like(ranges)).to(torch.int32).contiguous()


def _scale_parts(scale: float, use_fp64: bool) -> Tuple[float, float]:
    """The softmax scale in the kernel's exponent domain, split into a float32 head and remainder."""
    effective = scale if use_fp64 else scale * LOG2E
    head = float(torch.tensor(effective, dtype=torch.float32))
    return head, effective - head


def _dot_precision(dtype: torch.dtype, allow_tf32: bool) -> str:
    return "tf32" if (dtype == torch.float32 and allow_tf32) else "ieee"


def _mask_args(problem: AttentionProblem, fallback: torch.Tensor):
    """(tensor, 4 strides, kind) for the attention mask; a dummy pointer when there is none."""
    mask = problem.attn_mask
    if mask is None:
        return fallback, (0, 0, 0, 0), MASK_NONE
    if mask.dtype == torch.bool:
        return mask.view(torch.uint8), mask.stride(), MASK_BOOL
    return mask, mask.stride(), MASK_ADDITIVE


def _padding_args(problem: AttentionProblem, fallback: torch.Tensor):
    pad = problem.key_padding_mask
    if pad is None:
        return fallback, fallback, (0, 0), False
    return pad.view(torch.uint8), problem.kv_range, pad.stride(), True


def _seed_args(problem: AttentionProblem, fallback: torch.Tensor):
    if problem.dropout_p <= 0.0:
        return fallback, False, 0.0, 1.0
    if problem.seed is None:
        raise ValueError("AttentionProblem.seed is required when dropout_p > 0")
    keep_scale = 0.0 if problem.dropout_p >= 1.0 else 1.0 / (1.0 - problem.dropout_p)
    return problem.seed, True, float(problem.dropout_p), keep_scale


def tma_eligible(*tensors: torch.Tensor) -> bool:
    """Whether the kernels may read these ``[B, H, N, D]`` tensors through tensor descriptors
    (TMA): 16-bit CUDA tensors on compute capability 9.x or newer, or any 16-bit tensor under the
    interpreter (so the tests run the path), with unit stride along D and every other stride and
    the base address a multiple of 16 bytes. Other calls take the pointer path, which computes
    the same result."""
    for t in tensors:
        if t.dtype not in (torch.float16, torch.bfloat16) or t.stride(-1) != 1:
            return False
        size = t.element_size()
        if t.data_ptr() % 16 or any((st * size) % 16 for st in t.stride()[:-1]):
            return False
        if t.shape[-2] > 1 and t.stride(-2) <= 0:  # a descriptor's row stride must be positive
            return False
    if INTERPRETED:
        return True
    device = tensors[0].device
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 9:
        return False
    try:  # a torch.compile graph cannot yet pass the descriptors' scratch allocator through
        return not torch.compiler.is_compiling()
    except AttributeError:  # pragma: no cover - torch < 2.3
        return True


@contextlib.contextmanager
def _descriptor_scratch(device: torch.device, needed: bool) -> Iterator[None]:
    """Tensor descriptors made inside a kernel live in a small global scratch buffer that Triton
    asks its allocator for at launch. Supply one from torch's caching allocator for this launch
    when the caller has not set their own (``triton.set_allocator``)."""
    if not needed or INTERPRETED:
        yield
        return
    from triton.runtime import _allocation

    current = _allocation._allocator.get()
    if not isinstance(current, _allocation.NullAllocator):
        yield
        return

    def allocate(size: int, alignment: int, stream) -> torch.Tensor:
        return torch.empty(size, dtype=torch.int8, device=device)

    token = _allocation._allocator.set(allocate)
    try:
        yield
    finally:
        _allocation._allocator.reset(token)


def _check_grid(batch: int, heads: int) -> None:
    if batch > _MAX_GRID_YZ or heads > _MAX_GRID_YZ:
        raise ValueError(
            f"on the kernel path, batch ({batch}) and query heads ({heads}) must each be at most "
            f"{_MAX_GRID_YZ} (CUDA's grid limit on the axes they run on); split the batch into "
            f"chunks of at most {_MAX_GRID_YZ} and concatenate the results"
        )


def lse_to_natural(lse: torch.Tensor) -> torch.Tensor:
    """The kernels' saved row statistics ``[..., 2]`` (row max, log row sum; base 2 below fp64) as
    one log-sum-exp ``[...]`` in natural log units and lse's dtype (-inf for empty rows). The sum
    is formed in float64, so that only the final rounding is lost when |row max| is huge."""
    total = lse[..., 0].to(torch.float64) + lse[..., 1].to(torch.float64)
    return total if lse.dtype == torch.float64 else (total * (1.0 / LOG2E)).to(lse.dtype)


# ---------------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------------


@triton.jit
def _fwd_key_loop(
    acc,
    l_i,
    m_i,
    q,
    k_base,
    v_base,
    k_desc,
    v_desc,
    mask_base,
    pad_base,
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
    seqlen_q,
    seqlen_k,
    head_dim,
    head_dim_v,
    causal_offset,
    qk_scale,
    qk_scale_lo,
    dropout_p,
    keep_scale,
    BOUNDARY: tl.constexpr,
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
    USE_TMA: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Online softmax over key blocks [lo, hi). With BOUNDARY=False every block lies wholly
    inside the keys and wholly below the causal diagonal, so no bound or causal test is made.
    With USE_TMA, K and V tiles come through the tensor descriptors (zeros outside the keys and
    head dims, as the masked loads give) instead of the pointers."""
    CHECK_N: tl.constexpr = BOUNDARY and not EVEN_N
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        offs_n64 = offs_n.to(tl.int64)
        if USE_TMA:
            k_t = tl.trans(k_desc.load([start_n, 0]))
        else:
            k_ptrs = k_base + offs_n64[None, :] * stride_k_seq + offs_d.to(tl.int64)[:, None] * stride_k_dim
            k_t = load_tile(k_ptrs, offs_d[:, None], offs_n[None, :], head_dim, seqlen_k, not EVEN_DQK, CHECK_N)
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
            CHECK_N,
            BOUNDARY and IS_CAUSAL,
            MASK_KIND,
            HAS_PADDING,
            USE_FP64,
        )
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A row that has seen only masked keys keeps m = -inf; shift it by 0 so exp gives 0, not NaN.
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = exponential(m_i - m_shift, USE_FP64)
        p = exponential(s - m_shift[:, None], USE_FP64)
        l_i = l_i * alpha + tl.sum(p, 1)
        if HAS_DROPOUT:
            keep = dropout_keep(seed, rng_stream, offs_m[:, None], offs_n[None, :], dropout_p)
            p = tl.where(keep, p * keep_scale, 0.0)
        if USE_TMA:
            v = v_desc.load([start_n, 0])
        else:
            v_ptrs = v_base + offs_n64[:, None] * stride_v_seq + offs_dv.to(tl.int64)[None, :] * stride_v_dim
            v = load_tile(v_ptrs, offs_n[:, None], offs_dv[None, :], seqlen_k, head_dim_v, CHECK_N, not EVEN_DV)
        acc = acc * alpha[:, None] + matmul(p.to(v.dtype), v, USE_FP64, DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["causal_offset"])
def _attn_fwd_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    out_ptr,
    lse_ptr,
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
    stride_out_batch,
    stride_out_head,
    stride_out_seq,
    stride_out_dim,
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
    USE_TMA: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    """Attention output and log-sum-exp for BLOCK_M query rows of one (batch, head).

    USE_TMA: load the Q, K and V tiles through tensor descriptors made in the kernel (Hopper's
    copy engine) instead of pointer arithmetic; the launcher asks for it only where the
    descriptors' rules hold (unit stride along the head dim, 16-byte aligned bases and strides).

    q_ptr      [B, Hq, Nq, Dqk]   any strides
    k_ptr      [B, Hkv, Nk, Dqk]  any strides; query head h reads key head h // kv_group_size
    v_ptr      [B, Hkv, Nk, Dv]   any strides
    out_ptr    [B, Hq, Nq, Dv]    written, input dtype
    lse_ptr    [B, Hq, Nq, 2]     written, contiguous: row max m and log(l), fp32 in base 2 (fp64
                                  in base e for fp64); see attention_forward
    mask_ptr   attn_mask viewed [B, Hq, Nq, Nk] (stride 0 where broadcast), uint8 or float
    pad_ptr    key_padding_mask [B, Nk] as uint8, nonzero = padding
    kv_range_ptr int32 [B, 2]: first and one-past-last unpadded key
    seed_ptr   int64 [1], Philox seed for dropout
    grid: (cdiv(Nq, BLOCK_M), Hq, B)
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
    mask_base = mask_ptr + b64 * stride_mask_batch + h64 * stride_mask_head
    pad_base = pad_ptr + b64 * stride_pad_batch

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)

    if USE_TMA:
        q_desc = tl.make_tensor_descriptor(
            q_base, shape=[seqlen_q, head_dim], strides=[stride_q_seq, 1], block_shape=[BLOCK_M, BLOCK_DQK]
        )
        k_desc = tl.make_tensor_descriptor(
            k_base, shape=[seqlen_k, head_dim], strides=[stride_k_seq, 1], block_shape=[BLOCK_N, BLOCK_DQK]
        )
        v_desc = tl.make_tensor_descriptor(
            v_base, shape=[seqlen_k, head_dim_v], strides=[stride_v_seq, 1], block_shape=[BLOCK_N, BLOCK_DV]
        )
        q = q_desc.load([start_m, 0])
    else:
        k_desc = k_base
        v_desc = v_base
        q_ptrs = q_base + offs_m.to(tl.int64)[:, None] * stride_q_seq + offs_d.to(tl.int64)[None, :] * stride_q_dim
        q = load_tile(q_ptrs, offs_m[:, None], offs_d[None, :], seqlen_q, head_dim, not EVEN_M, not EVEN_DQK)

    seed = 0
    if HAS_DROPOUT:
        seed = tl.load(seed_ptr)
    rng_stream = off_b * num_heads_q + off_h

    # Key blocks this query block can see: [lo, hi). Blocks in [lo, full_end) need no causal or
    # bound test; the rest, up to hi, are tested element by element.
    lo, full_end, hi = key_block_range(
        start_m, off_b, kv_range_ptr, seqlen_k, causal_offset, IS_CAUSAL, HAS_PADDING, BLOCK_M, BLOCK_N
    )

    if USE_FP64:
        acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float64)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float64)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float64)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)

    acc, l_i, m_i = _fwd_key_loop(
        acc,
        l_i,
        m_i,
        q,
        k_base,
        v_base,
        k_desc,
        v_desc,
        mask_base,
        pad_base,
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
        seqlen_q,
        seqlen_k,
        head_dim,
        head_dim_v,
        causal_offset,
        qk_scale,
        qk_scale_lo,
        dropout_p,
        keep_scale,
        False,
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
        USE_TMA,
        BLOCK_N,
    )
    acc, l_i, m_i = _fwd_key_loop(
        acc,
        l_i,
        m_i,
        q,
        k_base,
        v_base,
        k_desc,
        v_desc,
        mask_base,
        pad_base,
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
        seqlen_q,
        seqlen_k,
        head_dim,
        head_dim_v,
        causal_offset,
        qk_scale,
        qk_scale_lo,
        dropout_p,
        keep_scale,
        True,
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
        USE_TMA,
        BLOCK_N,
    )

    # A row with nothing to attend to has l = 0 and acc = 0: output 0, m = -inf and log(l) = 0.
    # m and log(l) are stored apart: in fp32, m + log(l) drops log(l) once |m| is large.
    empty = l_i == 0.0
    row_max = tl.where(empty, float("-inf"), m_i)
    log_sum = logarithm(tl.where(empty, 1.0, l_i), USE_FP64)
    out = acc / tl.where(empty, 1.0, l_i)[:, None]

    lse_ptrs = lse_ptr + ((b64 * num_heads_q + h64) * seqlen_q + offs_m) * 2
    out_base = out_ptr + b64 * stride_out_batch + h64 * stride_out_head
    out_ptrs = out_base + offs_m.to(tl.int64)[:, None] * stride_out_seq + offs_dv.to(tl.int64)[None, :] * stride_out_dim
    if not EVEN_M:
        tl.store(lse_ptrs, row_max, mask=offs_m < seqlen_q)
        tl.store(lse_ptrs + 1, log_sum, mask=offs_m < seqlen_q)
    else:
        tl.store(lse_ptrs, row_max)
        tl.store(lse_ptrs + 1, log_sum)
    store_tile(out_ptrs, out, offs_m[:, None], offs_dv[None, :], seqlen_q, head_dim_v, not EVEN_M, not EVEN_DV)


def _like_query_layout(q: torch.Tensor, shape: Tuple[int, int, int, int]) -> torch.Tensor:
    """An empty [B, H, N, D] tensor laid out like q: [B, N, H, D] in memory when q is such a
    transposed view (so ``out.transpose(1, 2).reshape(B, N, H * D)`` costs nothing), else contiguous."""
    b, h, n, d = shape
    if q.dim() == 4 and q.stride(1) < q.stride(2) and h > 1 and n > 1:
        return torch.empty((b, n, h, d), dtype=q.dtype, device=q.device).transpose(1, 2)
    return torch.empty(shape, dtype=q.dtype, device=q.device)


def attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, problem: AttentionProblem, config: Optional[KernelConfig] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run the fused forward.

    Returns ``(out, lse)``: out ``[B, Hq, Nq, Dv]`` in the input dtype (laid out like q), lse
    ``[B, Hq, Nq, 2]`` contiguous, the row's log-sum-exp in two parts: ``lse[..., 0]`` = m, the
    max of the row's scores, and ``lse[..., 1]`` = log(l), l = sum(exp(s - m)); fp32 in base 2
    (fp64 in base e for fp64 inputs). The log-sum-exp is m + log(l) (``lse_to_natural`` gives it
    in natural units); the kernels that recompute probabilities use exp((s - m) - log(l)), exact
    whatever m, whereas a single fp32 m + log(l) loses log(l) once |m| is large (a row of -1e9
    biases). Rows with nothing to attend to: m = -inf, log(l) = 0.
    """
    batch, heads_q, seqlen_q, head_dim = q.shape
    heads_kv, seqlen_k, head_dim_v = k.shape[1], k.shape[2], v.shape[3]
    use_fp64 = q.dtype == torch.float64
    out = _like_query_layout(q, (batch, heads_q, seqlen_q, head_dim_v))
    lse = torch.empty(
        (batch, heads_q, seqlen_q, 2), dtype=torch.float64 if use_fp64 else torch.float32, device=q.device
    )
    if out.numel() == 0 and lse.numel() == 0:
        return out, lse
    if seqlen_k == 0:
        out.zero_()
        lse[..., 0] = float("-inf")
        lse[..., 1] = 0.0
        return out, lse
    _check_grid(batch, heads_q)
    block_dqk, block_dv = head_dim_bucket(head_dim), head_dim_bucket(head_dim_v)
    mask, mask_strides, mask_kind = _mask_args(problem, q)
    pad, kv_range, pad_strides, has_padding = _padding_args(problem, q)
    seed, has_dropout, dropout_p, keep_scale = _seed_args(problem, q)
    cfg = config or get_config(
        "forward", q.device, q.dtype, max(head_dim, head_dim_v), INTERPRETED, heavy=is_heavy(mask_kind, has_dropout)
    )
    qk_scale, qk_scale_lo = _scale_parts(problem.scale, use_fp64)
    grid = (triton.cdiv(seqlen_q, cfg.block_m), heads_q, batch)
    use_tma = cfg.tma and tma_eligible(q, k, v)
    with explain_resources("forward", cfg, q.dtype, max(head_dim, head_dim_v)), _descriptor_scratch(q.device, use_tma):
        launchable(_attn_fwd_kernel)[grid](
            q,
            k,
            v,
            out,
            lse,
            mask,
            pad,
            kv_range,
            seed,
            *q.stride(),
            *k.stride(),
            *v.stride(),
            *out.stride(),
            *mask_strides,
            *pad_strides,
            heads_q,
            heads_q // heads_kv,
            seqlen_q,
            seqlen_k,
            head_dim,
            head_dim_v,
            problem.causal_offset,
            qk_scale,
            qk_scale_lo,
            dropout_p,
            keep_scale,
            IS_CAUSAL=problem.is_causal,
            MASK_KIND=mask_kind,
            HAS_PADDING=has_padding,
            HAS_DROPOUT=has_dropout,
            EVEN_M=seqlen_q % cfg.block_m == 0,
            EVEN_N=seqlen_k % cfg.block_n == 0,
            EVEN_DQK=head_dim == block_dqk,
            EVEN_DV=head_dim_v == block_dv,
            USE_FP64=use_fp64,
            DOT_PRECISION=_dot_precision(q.dtype, problem.allow_tf32),
            USE_TMA=use_tma,
            BLOCK_M=cfg.block_m,
            BLOCK_N=cfg.block_n,
            BLOCK_DQK=block_dqk,
            BLOCK_DV=block_dv,
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
        )
    return out, lse


# ---------------------------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["causal_offset"])
def _attn_weights_kernel(
    q_ptr,
    k_ptr,
    lse_ptr,
    w_ptr,
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
    stride_w_batch,
    stride_w_head,
    stride_w_q,
    stride_w_k,
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
    num_n_blocks,
    causal_offset,
    qk_scale,
    qk_scale_lo,
    dropout_p,
    keep_scale,
    IS_CAUSAL: tl.constexpr,
    MASK_KIND: tl.constexpr,
    HAS_PADDING: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    HEAD_MEAN: tl.constexpr,
    EVEN_M: tl.constexpr,
    EVEN_N: tl.constexpr,
    EVEN_DQK: tl.constexpr,
    USE_FP64: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    USE_TMA: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr,
):
    """Exact attention probabilities for one [BLOCK_M, BLOCK_N] tile, from the saved row
    statistics: exp((s - m) - log(l)).

    USE_TMA: write the tile with one tensor-descriptor (TMA) store instead of per-thread stores;
    the launcher asks for it only where the weights' rows are 16-byte aligned.

    q_ptr    [B, Hq, Nq, Dqk], k_ptr [B, Hkv, Nk, Dqk]   any strides
    lse_ptr  [B, Hq, Nq, 2] contiguous (row max, log row sum), as the forward wrote it
    w_ptr    [B, Hq, Nq, Nk] written (HEAD_MEAN: [B, Nq, Nk], stride_w_head unused), input dtype
    mask_ptr, pad_ptr, kv_range_ptr, seed_ptr as in the forward kernel
    grid: (cdiv(Nq, BLOCK_M) * cdiv(Nk, BLOCK_N), 1 if HEAD_MEAN else Hq, B)

    A tile that causal or padding ranges empty entirely is written as zeros without any loads.
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
    if HAS_PADDING:
        kv_start = tl.load(kv_range_ptr + off_b * 2)
        kv_end = tl.load(kv_range_ptr + off_b * 2 + 1)
        active = active & (start_n < kv_end) & (start_n + BLOCK_N > kv_start)
    seed = 0
    if HAS_DROPOUT:
        seed = tl.load(seed_ptr)

    if USE_FP64:
        total = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float64)
    else:
        total = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if active:
        pad_base = pad_ptr + b64 * stride_pad_batch
        offs_n64 = offs_n.to(tl.int64)
        for off_h in range(head_lo, head_hi):
            h64 = tl.cast(off_h, tl.int64)
            hkv64 = tl.cast(off_h // kv_group_size, tl.int64)
            q_ptrs = (
                q_ptr
                + b64 * stride_q_batch
                + h64 * stride_q_head
                + offs_m.to(tl.int64)[:, None] * stride_q_seq
                + offs_d.to(tl.int64)[None, :] * stride_q_dim
            )
            k_ptrs = (
                k_ptr
                + b64 * stride_k_batch
                + hkv64 * stride_k_head
                + offs_n64[None, :] * stride_k_seq
                + offs_d.to(tl.int64)[:, None] * stride_k_dim
            )
            q = load_tile(q_ptrs, offs_m[:, None], offs_d[None, :], seqlen_q, head_dim, not EVEN_M, not EVEN_DQK)
            k_t = load_tile(k_ptrs, offs_d[:, None], offs_n[None, :], head_dim, seqlen_k, not EVEN_DQK, not EVEN_N)
            # A row with nothing to attend to comes back with m = +inf: its probabilities are 0.
            row_max, log_sum = load_row_stats(
                lse_ptr + (b64 * num_heads_q + h64) * seqlen_q * 2, offs_m, seqlen_q, not EVEN_M
            )
            s = scaled_scores(q, k_t, qk_scale, qk_scale_lo, USE_FP64, DOT_PRECISION)
            mask_base = mask_ptr + b64 * stride_mask_batch + h64 * stride_mask_head
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
            p = probabilities(s, row_max[:, None], log_sum[:, None], USE_FP64)
            if HAS_DROPOUT:
                keep = dropout_keep(seed, off_b * num_heads_q + off_h, offs_m[:, None], offs_n[None, :], dropout_p)
                p = tl.where(keep, p * keep_scale, 0.0)
            total += p
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
        w_ptrs = w_base + offs_m.to(tl.int64)[:, None] * stride_w_q + offs_n.to(tl.int64)[None, :] * stride_w_k
        store_tile(w_ptrs, total, offs_m[:, None], offs_n[None, :], seqlen_q, seqlen_k, not EVEN_M, not EVEN_N)


def attention_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    problem: AttentionProblem,
    mean: bool = False,
    config: Optional[KernelConfig] = None,
) -> torch.Tensor:
    """Exact attention probabilities from the forward's lse (``[B, Hq, Nq, 2]``), in q's dtype.

    Returns ``[B, Hq, Nq, Nk]``, or ``[B, Nq, Nk]`` (the average over query heads) when ``mean``.
    After dropout when ``problem.dropout_p > 0``, with the forward's seed.
    """
    batch, heads_q, seqlen_q, head_dim = q.shape
    heads_kv, seqlen_k = k.shape[1], k.shape[2]
    use_fp64 = q.dtype == torch.float64
    shape = (batch, seqlen_q, seqlen_k) if mean else (batch, heads_q, seqlen_q, seqlen_k)
    weights = torch.empty(shape, dtype=q.dtype, device=q.device)
    if weights.numel() == 0:
        return weights
    if heads_q == 0:
        return weights.zero_()
    _check_grid(batch, heads_q)
    block_dqk = head_dim_bucket(head_dim)
    mask, mask_strides, mask_kind = _mask_args(problem, q)
    pad, kv_range, pad_strides, has_padding = _padding_args(problem, q)
    seed, has_dropout, dropout_p, keep_scale = _seed_args(problem, q)
    cfg = config or get_config(
        "weights", q.device, q.dtype, head_dim, INTERPRETED, heavy=is_heavy(mask_kind, has_dropout)
    )
    qk_scale, qk_scale_lo = _scale_parts(problem.scale, use_fp64)
    w_strides = (weights.stride(0), 0, weights.stride(1), weights.stride(2)) if mean else weights.stride()
    use_tma = cfg.tma and tma_eligible(weights.view(batch, -1, seqlen_q, seqlen_k))
    num_n_blocks = triton.cdiv(seqlen_k, cfg.block_n)
    grid = (triton.cdiv(seqlen_q, cfg.block_m) * num_n_blocks, 1 if mean else heads_q, batch)
    with explain_resources("weights", cfg, q.dtype, head_dim), _descriptor_scratch(q.device, use_tma):
        launchable(_attn_weights_kernel)[grid](
            q,
            k,
            lse,
            weights,
            mask,
            pad,
            kv_range,
            seed,
            *q.stride(),
            *k.stride(),
            *w_strides,
            *mask_strides,
            *pad_strides,
            heads_q,
            heads_q // heads_kv,
            seqlen_q,
            seqlen_k,
            head_dim,
            num_n_blocks,
            problem.causal_offset,
            qk_scale,
            qk_scale_lo,
            dropout_p,
            keep_scale,
            IS_CAUSAL=problem.is_causal,
            MASK_KIND=mask_kind,
            HAS_PADDING=has_padding,
            HAS_DROPOUT=has_dropout,
            HEAD_MEAN=mean,
            EVEN_M=seqlen_q % cfg.block_m == 0,
            EVEN_N=seqlen_k % cfg.block_n == 0,
            EVEN_DQK=head_dim == block_dqk,
            USE_FP64=use_fp64,
            DOT_PRECISION=_dot_precision(q.dtype, problem.allow_tf32),
            USE_TMA=use_tma,
            BLOCK_M=cfg.block_m,
            BLOCK_N=cfg.block_n,
            BLOCK_DQK=block_dqk,
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
        )
    return weights


def dropout_keep_mask(
    seed: torch.Tensor, batch: int, heads: int, seqlen_q: int, seqlen_k: int, dropout_p: float
) -> torch.Tensor:
    """The bool keep pattern ``[B, Hq, Nq, Nk]`` the kernels apply for ``seed`` and ``dropout_p``
    (True = kept). For tests and for checking a dropout result against the reference."""
    keep = torch.empty((batch, heads, seqlen_q, seqlen_k), dtype=torch.uint8, device=seed.device)
    if keep.numel() == 0:
        return keep.bool()
    block = 64
    grid = (batch * heads, triton.cdiv(seqlen_q, block), triton.cdiv(seqlen_k, block))
    launchable(_dropout_mask_kernel)[grid](
        keep, seed, seqlen_q, seqlen_k, heads, float(dropout_p), BLOCK_M=block, BLOCK_N=block
    )
    return keep.bool()
