"""The dropout pattern the attention kernels apply, written out as a tensor (for
``attnlens.dropout_mask`` and for checking a dropout result against the reference)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from attnlens.kernels.launch import fast_helper_calls, launchable
from attnlens.kernels.tiles import dropout_keep

__all__ = ["launch_dropout_mask"]


@triton.jit
def _dropout_mask_kernel(
    keep_ptr, seed_ptr, seqlen_q, seqlen_k, num_heads, dropout_p, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr
):
    """Write the keep pattern the attention kernels use.

    keep_ptr  uint8 [B, H, seqlen_q, seqlen_k], contiguous
    seed_ptr  int64 [1]
    grid: (B * H, cdiv(seqlen_q, BLOCK_M), cdiv(seqlen_k, BLOCK_N)); B * H on axis 0, whose limit
    is 2**31 - 1 (axes 1 and 2 stop at 65535)
    """
    bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_n = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    seed = tl.load(seed_ptr)
    keep = dropout_keep(seed, bh, offs_m[:, None], offs_n[None, :], dropout_p)
    base = keep_ptr + bh.to(tl.int64) * seqlen_q * seqlen_k
    ptrs = base + offs_m.to(tl.int64)[:, None] * seqlen_k + offs_n[None, :]
    tl.store(ptrs, keep.to(tl.uint8), mask=(offs_m[:, None] < seqlen_q) & (offs_n[None, :] < seqlen_k))


def launch_dropout_mask(
    seed: torch.Tensor, batch: int, heads: int, seqlen_q: int, seqlen_k: int, dropout_p: float
) -> torch.Tensor:
    """The bool keep pattern ``[B, Hq, Nq, Nk]`` the kernels apply for ``seed`` and ``dropout_p``
    (True = kept): the pattern of rng stream ``b * Hq + h`` at (query, key)."""
    keep = torch.empty((batch, heads, seqlen_q, seqlen_k), dtype=torch.uint8, device=seed.device)
    if keep.numel() == 0:
        return keep.bool()
    block = 64
    grid = (batch * heads, triton.cdiv(seqlen_q, block), triton.cdiv(seqlen_k, block))
    launchable(_dropout_mask_kernel)[grid](
        keep, seed, seqlen_q, seqlen_k, heads, float(dropout_p), BLOCK_M=block, BLOCK_N=block
    )
    return keep.bool()


fast_helper_calls(globals())
