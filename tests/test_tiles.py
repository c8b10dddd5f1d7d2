"""The device building blocks of ``attnlens.kernels.tiles``, each run in a small kernel of its own
(through Triton's interpreter on a CPU) and compared with the same rule written in torch.

The attention kernels' tests exercise these helpers only in combination; here each one's contract
is checked on its own: which tile a matrix read returns and what it reads past the bounds, which
key and query blocks the range helpers hand to the loops, and what the masks keep.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import triton
import triton.language as tl

from attnlens.kernels import tiles
from attnlens.kernels.launch import fast_helper_calls, key_ranges
from helpers import DEVICE

# ---- kernels that run one helper ------------------------------------------------------------


@triton.jit
def _load_block_kernel(
    src_ptr,
    out_ptr,
    stride_row,
    stride_col,
    num_rows,
    num_cols,
    row0,
    col0,
    TRANSPOSED: tl.constexpr,
    CHECK_ROWS: tl.constexpr,
    CHECK_COLS: tl.constexpr,
    R: tl.constexpr,
    C: tl.constexpr,
):
    rows = row0 + tl.arange(0, R)
    cols = col0 + tl.arange(0, C)
    matrix = (src_ptr, stride_row, stride_col, num_rows, num_cols)
    if TRANSPOSED:
        tile = tiles.load_block_transposed(matrix, rows, cols, CHECK_ROWS, CHECK_COLS)  # [C, R]
        tl.store(out_ptr + tl.arange(0, C)[:, None] * R + tl.arange(0, R)[None, :], tile)
    else:
        tile = tiles.load_block(matrix, rows, cols, CHECK_ROWS, CHECK_COLS)  # [R, C]
        tl.store(out_ptr + tl.arange(0, R)[:, None] * C + tl.arange(0, C)[None, :], tile)


@triton.jit
def _store_block_kernel(
    value_ptr, dst_ptr, stride_row, stride_col, num_rows, num_cols, R: tl.constexpr, C: tl.constexpr
):
    rows = tl.arange(0, R)
    cols = tl.arange(0, C)
    value = tl.load(value_ptr + rows[:, None] * C + cols[None, :])
    tiles.store_block((dst_ptr, stride_row, stride_col, num_rows, num_cols), value, rows, cols, True, True)


@triton.jit
def _ranges_kernel(
    out_ptr,
    kv_range_ptr,
    seqlen_q,
    seqlen_k,
    causal_offset,
    window_left,
    window_right,
    IS_CAUSAL: tl.constexpr,
    HAS_PADDING: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Row ``pid`` of out: key_block_range for query block pid (4 values), then query_block_range
    for key block pid (6 values)."""
    pid = tl.program_id(0)
    off_b = tl.program_id(1)
    geometry = (seqlen_q, seqlen_k, causal_offset, window_left, window_right)
    k_ranges = tiles.key_block_range(
        pid * BLOCK_M, off_b, kv_range_ptr, geometry, IS_CAUSAL, HAS_PADDING, HAS_WINDOW, BLOCK_M, BLOCK_N
    )
    q_ranges = tiles.query_block_range(
        pid * BLOCK_N, off_b, kv_range_ptr, geometry, IS_CAUSAL, HAS_PADDING, HAS_WINDOW, BLOCK_M, BLOCK_N
    )
    base = out_ptr + (off_b * tl.num_programs(0) + pid) * 10
    for i in tl.static_range(4):
        tl.store(base + i, k_ranges[i])
    for i in tl.static_range(6):
        tl.store(base + 4 + i, q_ranges[i])


@triton.jit
def _masks_kernel(
    out_ptr,
    mask_ptr,
    pad_ptr,
    stride_mask_q,
    stride_mask_k,
    seqlen_q,
    seqlen_k,
    causal_offset,
    window_left,
    window_right,
    alibi_slope,
    IS_CAUSAL: tl.constexpr,
    MASK_KIND: tl.constexpr,
    HAS_PADDING: tl.constexpr,
    HAS_ALIBI: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    M: tl.constexpr,
    N: tl.constexpr,
):
    rows = tl.arange(0, M)
    cols = tl.arange(0, N)
    geometry = (seqlen_q, seqlen_k, causal_offset, window_left, window_right)
    scoring = ((1.0, 0.0, 0.0, 0.0), geometry, (mask_ptr, stride_mask_q, stride_mask_k), (pad_ptr, 1), alibi_slope)
    s = tl.zeros([M, N], dtype=tl.float32)
    s = tiles.apply_masks(
        s, rows[:, None], cols[None, :], scoring, True, True, IS_CAUSAL, MASK_KIND, HAS_PADDING, HAS_ALIBI,
        HAS_WINDOW, False,
    )  # fmt: skip
    tl.store(out_ptr + rows[:, None] * N + cols[None, :], s)


@triton.jit
def _tanh_kernel(x_ptr, y_ptr, N: tl.constexpr, USE_FP64: tl.constexpr):
    offs = tl.arange(0, N)
    tl.store(y_ptr + offs, tiles.tanh(tl.load(x_ptr + offs), USE_FP64))


fast_helper_calls(globals())


# ---- matrices --------------------------------------------------------------------------------


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("check_rows, check_cols", list(itertools.product([False, True], repeat=2)))
def test_load_block_reads_the_tile_and_nothing_past_a_checked_bound(transposed, check_rows, check_cols):
    """A 16 x 32 tile at (row0, col0) of a 20 x 40 matrix laid out with a row stride of 50 and a
    column stride of 1 inside NaN-filled storage: checked indices past the bound read as 0 (and
    the NaN there is never loaded); unchecked ones are only used where the tile fits."""
    rows, cols, r, c = 20, 40, 16, 32
    storage = torch.full((rows * 50 + 64,), float("nan"), device=DEVICE)
    matrix = storage[: rows * 50].view(rows, 50)[:, :cols]
    matrix.copy_(torch.arange(rows * cols, dtype=torch.float32, device=DEVICE).view(rows, cols))
    row0 = 8 if check_rows else 0  # 8 + 16 > 20: rows 20..23 are past the bound
    col0 = 16 if check_cols else 0  # 16 + 32 > 40
    out = torch.empty((c, r) if transposed else (r, c), device=DEVICE)
    _load_block_kernel[(1,)](
        matrix, out, 50, 1, rows, cols, row0, col0, TRANSPOSED=transposed, CHECK_ROWS=check_rows,
        CHECK_COLS=check_cols, R=r, C=c,
    )  # fmt: skip
    expected = torch.zeros(r, c, device=DEVICE)
    fit = matrix[row0 : row0 + r, col0 : col0 + c]
    expected[: fit.shape[0], : fit.shape[1]] = fit
    assert torch.equal(out, expected.T if transposed else expected)


def test_store_block_writes_only_inside_the_matrix():
    value = torch.arange(16 * 16, dtype=torch.float32, device=DEVICE).view(16, 16)
    storage = torch.full((16, 32), -1.0, device=DEVICE)
    dst = storage[:, ::2]  # column stride 2: every other element belongs to the matrix
    _store_block_kernel[(1,)](value, dst, 32, 2, 11, 13, R=16, C=16)
    assert torch.equal(dst[:11, :13], value[:11, :13])
    assert (dst[11:] == -1).all() and (dst[:, 13:] == -1).all()
    assert (storage[:, 1::2] == -1).all()  # nothing between the matrix's columns


# ---- block ranges ----------------------------------------------------------------------------


def _visible(seqlen_q, seqlen_k, causal_offset, is_causal, keep, window=None):
    """bool [Nq, Nk]: query i may see key j (causality, a window and key padding), the rule the
    ranges follow."""
    rows = torch.arange(seqlen_q)[:, None]
    cols = torch.arange(seqlen_k)[None, :]
    visible = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool)
    if is_causal:
        visible &= cols <= rows + causal_offset
    if window is not None:
        left, right = window
        visible &= (cols >= rows + causal_offset - left) & (cols <= rows + causal_offset + right)
    return visible & keep[None, :]


CASES = [
    # seqlen_q, seqlen_k, causal_offset, is_causal, padded key range (start, end) or None, window
    (37, 53, 0, True, None, None),
    (37, 53, 16, True, None, None),
    (53, 37, -16, True, None, None),
    (64, 64, 0, True, (5, 40), None),
    (40, 70, 30, False, (17, 33), None),
    (33, 33, 0, False, (0, 0), None),
    (16, 96, 80, True, (20, 96), None),
    (97, 97, 0, True, None, (20, 0)),
    (97, 97, 0, False, None, (7, 40)),
    (64, 130, 66, False, (3, 120), (33, 5)),
    (70, 50, -20, True, None, (0, 0)),
    (50, 50, 0, False, None, (0, 100)),
]


@pytest.mark.parametrize("seqlen_q, seqlen_k, causal_offset, is_causal, kept, window", CASES)
def test_block_ranges_cover_every_visible_pair_and_check_every_boundary(
    seqlen_q, seqlen_k, causal_offset, is_causal, kept, window
):
    """For each query block, the key loops [lo, full_start) and [full_end, hi) (checked) and
    [full_start, full_end) (unchecked) cover every visible key, and the unchecked part holds only
    whole blocks that every query of the block sees. The same for each key block's query stages,
    including that a key block padding empties gets no query rows at all. (The window's sides
    arrive as ``launch.window_bounds`` gives them: at most 0 on the right with causal masking.)"""
    block_m, block_n = 16, 16
    keep = torch.ones(seqlen_k, dtype=torch.bool)
    padding = kept is not None
    if padding:
        keep[:] = False
        keep[kept[0] : kept[1]] = True
    visible = _visible(seqlen_q, seqlen_k, causal_offset, is_causal, keep, window)
    # the unchecked stages skip the causal, window and bound tests only: key padding applies everywhere
    no_padding = torch.ones(seqlen_k, dtype=torch.bool)
    unpadded = _visible(seqlen_q, seqlen_k, causal_offset, is_causal, no_padding, window)
    kv_range = key_ranges((~keep)[None, :]).to(DEVICE)
    programs = max(triton.cdiv(seqlen_q, block_m), triton.cdiv(seqlen_k, block_n))
    out = torch.zeros((1, programs, 10), dtype=torch.int32, device=DEVICE)
    left, right = window or (0, 0)
    _ranges_kernel[(programs, 1)](
        out, kv_range, seqlen_q, seqlen_k, causal_offset, left, right, IS_CAUSAL=is_causal, HAS_PADDING=padding,
        HAS_WINDOW=window is not None, BLOCK_M=block_m, BLOCK_N=block_n,
    )  # fmt: skip
    out = out[0].cpu()
    for m in range(triton.cdiv(seqlen_q, block_m)):
        lo, full_start, full_end, hi = (int(x) for x in out[m, :4])
        rows = slice(m * block_m, min((m + 1) * block_m, seqlen_q))
        stages = [(lo, full_start), (full_start, full_end), (full_end, hi)]
        covered = {j for a, b in stages for start in range(a, b, block_n) for j in range(start, start + block_n)}
        seen = visible[rows].any(dim=0).nonzero().flatten().tolist()
        assert set(seen) <= covered, (m, lo, full_start, full_end, hi, seen)
        assert lo % block_n == 0 and full_start % block_n == 0 or full_start == hi
        assert lo <= full_start <= full_end and full_end % block_n == 0 or full_end == full_start
        assert full_end == full_start or unpadded[rows, full_start:full_end].all()
    for n in range(triton.cdiv(seqlen_k, block_n)):
        lo, diag_end, full_start, full_end, tail_start, hi = (int(x) for x in out[n, 4:])
        cols = slice(n * block_n, min((n + 1) * block_n, seqlen_k))
        stages = [(lo, diag_end), (full_start, full_end), (tail_start, hi)]
        covered = {i for a, b in stages for start in range(a, b, block_m) for i in range(start, start + block_m)}
        senders = visible[:, cols].any(dim=1).nonzero().flatten().tolist()
        assert set(senders) <= covered, (n, senders, stages)
        whole = unpadded[full_start:full_end, cols]
        assert full_end <= full_start or (
            full_end <= seqlen_q and whole.all() and (full_end - full_start) % block_m == 0
        )
        if padding and not keep[cols].any():
            assert not covered  # a key block that padding empties receives no gradient
        # the three stages never overlap, so no query block is counted twice
        assert diag_end <= full_start and (full_end <= tail_start or tail_start >= hi)


def test_tanh_is_accurate_in_fp32_and_fp64():
    """Soft-capping's tanh (Triton has no portable one): a few ulps on both sides of the switch
    from the series to the exponential form, and exactly +-1 far out."""
    x64 = torch.cat(
        [torch.linspace(-30, 30, 401, dtype=torch.float64), torch.logspace(-8, 1, 111, dtype=torch.float64)]
    )
    for dtype, tolerance in ((torch.float32, 4e-7), (torch.float64, 4e-14)):
        x = x64.to(dtype)
        y = torch.empty_like(x)
        _tanh_kernel[(1,)](x.to(DEVICE), y, N=512, USE_FP64=dtype == torch.float64)
        exact = torch.tanh(x.to(torch.float64))
        relative = ((y.cpu().to(torch.float64) - exact).abs() / exact.abs().clamp_min(1e-300)).max()
        assert relative <= tolerance, (dtype, float(relative))


# ---- masks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("mask_kind", [tiles.MASK_NONE, tiles.MASK_BOOL, tiles.MASK_ADDITIVE])
@pytest.mark.parametrize("padding", [False, True])
@pytest.mark.parametrize("extras", ["", "alibi", "window", "alibi+window"])
def test_apply_masks_matches_the_rule(is_causal, mask_kind, padding, extras):
    """Scores of 0 come out as the ALiBi bias plus the additive mask (times log2(e): the kernels'
    exponent domain) or -inf wherever causality, the window, the bool mask, key padding or the key
    bound forbids a key; the tile is 16 x 32 over 13 queries and 27 keys, so the bounds are
    checked too."""
    seqlen_q, seqlen_k, offset = 13, 27, 3
    window = (4, 6) if "window" in extras else None
    slope = 0.375 if "alibi" in extras else 0.0
    generator = torch.Generator().manual_seed(1)
    if mask_kind == tiles.MASK_BOOL:
        mask = torch.rand(seqlen_q, seqlen_k, generator=generator) > 0.3
        mask_arg = mask.to(DEVICE).view(torch.uint8)
    elif mask_kind == tiles.MASK_ADDITIVE:
        mask = torch.randn(seqlen_q, seqlen_k, generator=generator)
        mask[2, 5] = float("-inf")
        mask_arg = mask.to(DEVICE)
    else:
        mask_arg = torch.zeros(1, device=DEVICE)
    pad = torch.rand(seqlen_k, generator=generator) > 0.7
    out = torch.empty(16, 32, device=DEVICE)
    left, right = window or (0, 0)
    _masks_kernel[(1,)](
        out, mask_arg, pad.to(DEVICE).view(torch.uint8), seqlen_k, 1, seqlen_q, seqlen_k, offset, left, right, slope,
        IS_CAUSAL=is_causal, MASK_KIND=mask_kind, HAS_PADDING=padding, HAS_ALIBI="alibi" in extras,
        HAS_WINDOW=window is not None, M=16, N=32,
    )  # fmt: skip
    rows, cols = torch.arange(16)[:, None], torch.arange(32)[None, :]
    expected = -slope * (rows + offset - cols).abs().float()
    allowed = torch.zeros(16, 32, dtype=torch.bool)
    allowed[:, :seqlen_k] = True
    if is_causal:
        allowed &= cols <= rows + offset
    if window is not None:
        allowed &= (cols >= rows + offset - left) & (cols <= rows + offset + right)
    if padding:
        allowed[:, :seqlen_k] &= ~pad[None, :]
    if mask_kind == tiles.MASK_BOOL:
        allowed[:seqlen_q, :seqlen_k] &= mask
    if mask_kind == tiles.MASK_ADDITIVE:
        expected[:seqlen_q, :seqlen_k] += mask * tiles.LOG2E
    expected = torch.where(allowed, expected, torch.tensor(float("-inf")))
    real = slice(0, seqlen_q)  # rows past Nq are never stored by a kernel; only their bounds matter
    torch.testing.assert_close(out.cpu()[real], expected[real], rtol=1e-6, atol=1e-6)
