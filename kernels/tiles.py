"""Triton building blocks shared by every attention kernel (device code only).

The forward, the weights and the backward kernels all rebuild the same score tile; they call the
helpers below so that the scale, the masks and the dropout pattern are applied identically
everywhere. A weight the forward computes and a gradient the backward computes therefore see the
same bits of mask and the same random numbers.

Exponent domain: for fp16, bf16 and fp32 inputs the kernels work in base 2 (the softmax scale is
multiplied by log2(e) on the host so ``exp2`` replaces ``exp``, which is one instruction on a GPU),
and the saved row statistics are in base 2. For fp64 inputs (gradcheck) they work in base e,
because a log2(e) folded into a float32 kernel argument would cost fp64 its precision.

Index tiles: helpers take ``rows`` (query positions) and ``cols`` (key positions) as broadcastable
2-D integer tensors, ``offs_m[:, None]`` and ``offs_n[None, :]`` for a ``[BLOCK_M, BLOCK_N]``
tile, or ``offs_m[None, :]`` and ``offs_n[:, None]`` for the transposed tile the dK/dV kernel
uses; every helper works for both orientations.

Grouped arguments (tuples, nested where it reads better; Triton 3.6 and newer pass them to
``@triton.jit`` helpers):

- a *matrix* ``(base, stride_row, stride_col, num_rows, num_cols)``: one (batch, head) slice of a
  ``[..., rows, cols]`` tensor, read by ``load_block`` / ``load_block_transposed`` and written by
  ``store_block``, which take 1-D row and column indices;
- the *geometry* ``(seqlen_q, seqlen_k, causal_offset, window_left, window_right)`` of a call:
  key j is visible to query i iff ``j <= i + causal_offset`` (causal) and
  ``i + causal_offset - window_left <= j <= i + causal_offset + window_right`` (a window; the
  host turns an unbounded side into a bound no pair reaches);
- the *scoring* ``(scales, geometry, mask, padding, alibi_slope)`` of one (batch, head), read by
  ``score_tile``: ``scales = (qk_scale, qk_scale_lo, softcap_scale, softcap_scale_lo)``,
  ``mask = (mask_base, stride_mask_q, stride_mask_k)``, ``padding = (pad_base, stride_pad_k)``;
- the *dropout* ``(seed, rng_stream, dropout_p, keep_scale)`` of one (batch, head).

Score modifications, in the order they apply (the order of Gemma 2 and flash-attn):
``s = q.k * scale``; soft-capping ``s = softcap * tanh(s / softcap)``; the ALiBi bias
``- slope * |i + causal_offset - j|``; an additive ``attn_mask``; then every mask (bool mask, key
padding, causality, window, the key bound) sets forbidden scores to -inf.
"""

import triton
import triton.language as tl

LOG2E = 1.4426950408889634
# Globals read inside @triton.jit must be tl.constexpr for the GPU compiler; the interpreter does
# not enforce this (Triton 3.9), so the ahead-of-time compile test is what catches a plain float.
LOG2E_CONSTEXPR = tl.constexpr(LOG2E)
# The most negative finite additive-mask value an fp32 kernel keeps as it is: -fp32max / log2(e),
# rounded to fp32 (-2.3586574e38). Below it, ``bias * log2(e)`` would overflow to -inf and turn a
# row torch softmaxes (uniformly, for a row of torch.finfo(torch.float32).min) into an empty one;
# apply_masks clamps finite biases here instead. Times log2(e) in fp32 it is -3.4028233e38, finite.
MIN_FP32_BIAS = -3.4028234663852886e38 / LOG2E
MIN_FP32_BIAS_CONSTEXPR = tl.constexpr(MIN_FP32_BIAS)

# tanh(x) for |x| below these thresholds comes from its Taylor series (to x**9), above them from
# exp(-2|x|): each way is accurate to a few ulps where it is used (the exponential form cancels
# for small |x|, the series converges slowly for large |x|).
TANH_SERIES_BELOW_FP32 = tl.constexpr(0.25)
TANH_SERIES_BELOW_FP64 = tl.constexpr(0.01)

#: values of the MASK_KIND flag
MASK_NONE = 0
MASK_BOOL = 1
MASK_ADDITIVE = 2


@triton.jit
def load_tile(ptrs, rows, cols, num_rows, num_cols, CHECK_ROWS: tl.constexpr, CHECK_COLS: tl.constexpr):
    """Load a tile, reading nothing at ``rows >= num_rows`` / ``cols >= num_cols`` when asked to
    check them (zeros there). The checks compile away when the shape divides the block."""
    if CHECK_ROWS and CHECK_COLS:
        return tl.load(ptrs, mask=(rows < num_rows) & (cols < num_cols), other=0.0)
    elif CHECK_ROWS:
        return tl.load(ptrs, mask=rows < num_rows, other=0.0)
    elif CHECK_COLS:
        return tl.load(ptrs, mask=cols < num_cols, other=0.0)
    else:
        return tl.load(ptrs)


@triton.jit
def store_tile(ptrs, value, rows, cols, num_rows, num_cols, CHECK_ROWS: tl.constexpr, CHECK_COLS: tl.constexpr):
    """Store a tile (cast to the pointer's dtype), writing nothing outside the checked bounds."""
    value = value.to(ptrs.dtype.element_ty)
    if CHECK_ROWS and CHECK_COLS:
        tl.store(ptrs, value, mask=(rows < num_rows) & (cols < num_cols))
    elif CHECK_ROWS:
        tl.store(ptrs, value, mask=rows < num_rows)
    elif CHECK_COLS:
        tl.store(ptrs, value, mask=cols < num_cols)
    else:
        tl.store(ptrs, value)


@triton.jit
def block_ptrs(matrix, rows, cols):
    """Pointers to the tile ``matrix[rows, cols]`` (``[len(rows), len(cols)]``; ``rows`` and
    ``cols`` 1-D), offsets formed in int64: a head's slice may lie past 2**31 elements, and so
    may a stride times an index of a view whose inner dims are not innermost in memory."""
    base, stride_row, stride_col, num_rows, num_cols = matrix
    return base + rows.to(tl.int64)[:, None] * stride_row + cols.to(tl.int64)[None, :] * stride_col


@triton.jit
def load_block(matrix, rows, cols, CHECK_ROWS: tl.constexpr, CHECK_COLS: tl.constexpr):
    """The tile ``matrix[rows, cols]`` (``rows``, ``cols`` 1-D), zeros where a checked index is
    out of the matrix's bounds."""
    base, stride_row, stride_col, num_rows, num_cols = matrix
    ptrs = block_ptrs(matrix, rows, cols)
    return load_tile(ptrs, rows[:, None], cols[None, :], num_rows, num_cols, CHECK_ROWS, CHECK_COLS)


@triton.jit
def load_block_transposed(matrix, rows, cols, CHECK_ROWS: tl.constexpr, CHECK_COLS: tl.constexpr):
    """The transposed tile ``matrix[rows, cols]^T`` (``[len(cols), len(rows)]``), read in that
    orientation directly (K^T for ``q @ k^T``, Q^T in the dK/dV kernel)."""
    base, stride_row, stride_col, num_rows, num_cols = matrix
    ptrs = base + rows.to(tl.int64)[None, :] * stride_row + cols.to(tl.int64)[:, None] * stride_col
    return load_tile(ptrs, cols[:, None], rows[None, :], num_cols, num_rows, CHECK_COLS, CHECK_ROWS)


@triton.jit
def store_block(matrix, value, rows, cols, CHECK_ROWS: tl.constexpr, CHECK_COLS: tl.constexpr):
    """Write ``value`` to the tile ``matrix[rows, cols]`` in the matrix's dtype, nothing out of
    bounds."""
    base, stride_row, stride_col, num_rows, num_cols = matrix
    ptrs = block_ptrs(matrix, rows, cols)
    store_tile(ptrs, value, rows[:, None], cols[None, :], num_rows, num_cols, CHECK_ROWS, CHECK_COLS)


@triton.jit
def accumulator(ROWS: tl.constexpr, COLS: tl.constexpr, USE_FP64: tl.constexpr):
    """A zero ``[ROWS, COLS]`` accumulator: fp32, fp64 for fp64 inputs."""
    if USE_FP64:
        return tl.zeros([ROWS, COLS], dtype=tl.float64)
    else:
        return tl.zeros([ROWS, COLS], dtype=tl.float32)


@triton.jit
def load_seed(seed_ptr, HAS_DROPOUT: tl.constexpr):
    """The Philox seed of a call with dropout (0, and no load, without)."""
    seed = 0
    if HAS_DROPOUT:
        seed = tl.load(seed_ptr)
    return seed


@triton.jit
def exponential(x, USE_FP64: tl.constexpr):
    """exp in the kernel's exponent domain: exp2 for 16/32-bit inputs, exp for fp64."""
    if USE_FP64:
        return tl.exp(x)
    else:
        return tl.exp2(x)


@triton.jit
def logarithm(x, USE_FP64: tl.constexpr):
    """log in the kernel's exponent domain (the inverse of ``exponential``)."""
    if USE_FP64:
        return tl.log(x)
    else:
        return tl.log2(x)


@triton.jit
def matmul(a, b, USE_FP64: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """``a @ b`` accumulated in fp32 (fp64 for fp64 inputs).

    DOT_PRECISION is "ieee" for fp32 inputs unless the user allowed TF32 through
    ``torch.backends.cuda.matmul.allow_tf32``; it has no effect on 16-bit inputs.
    """
    if USE_FP64:
        return tl.dot(a, b, out_dtype=tl.float64)
    else:
        return tl.dot(a, b, input_precision=DOT_PRECISION)


@triton.jit
def scaled_scores(a, b, qk_scale, qk_scale_lo, USE_FP64: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """``(a @ b) * scale`` in the exponent domain.

    Kernel float arguments are float32, so for fp64 the scale arrives split into a float32 head
    ``qk_scale`` and the float32 remainder ``qk_scale_lo``; their sum carries ~48 bits.
    """
    qk = matmul(a, b, USE_FP64, DOT_PRECISION)
    if USE_FP64:
        return qk * qk_scale + qk * qk_scale_lo
    else:
        return qk * qk_scale


@triton.jit
def tanh(x, USE_FP64: tl.constexpr):
    """tanh, elementwise, to a few ulps in fp32 and fp64 (Triton has no portable tanh: libdevice's
    is CUDA-only and the interpreter cannot run it)."""
    magnitude = tl.abs(x)
    x2 = x * x
    series = x * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0 + x2 * (62.0 / 2835.0)))))
    if USE_FP64:
        e = tl.exp(-2.0 * magnitude)
        threshold = TANH_SERIES_BELOW_FP64
    else:
        e = tl.exp2(magnitude * (-2.0 * LOG2E_CONSTEXPR))
        threshold = TANH_SERIES_BELOW_FP32
    tail = (1.0 - e) / (1.0 + e)
    tail = tl.where(x < 0, -tail, tail)
    return tl.where(magnitude < threshold, series, tail)


@triton.jit
def load_key_range(kv_range_ptr, off_b):
    """The first and one-past-the-last unpadded key of batch element ``off_b`` (int32 [B, 2])."""
    return tl.load(kv_range_ptr + off_b * 2), tl.load(kv_range_ptr + off_b * 2 + 1)


@triton.jit
def load_alibi_slope(
    alibi_ptr, b64, h64, stride_alibi_batch, stride_alibi_head, HAS_ALIBI: tl.constexpr, USE_FP64: tl.constexpr
):
    """The ALiBi slope of one (batch, head) in the exponent domain (0 without ALiBi)."""
    slope = 0.0
    if HAS_ALIBI:
        slope = tl.load(alibi_ptr + b64 * stride_alibi_batch + h64 * stride_alibi_head)
        if not USE_FP64:
            slope = slope * LOG2E_CONSTEXPR
    return slope


@triton.jit
def head_scoring(
    scales, geometry, mask_args, padding_args, alibi_args, b64, h64, HAS_ALIBI: tl.constexpr, USE_FP64: tl.constexpr
):
    """The scoring tuple of batch element ``b64``, head ``h64`` from the kernel-wide ``scales`` and
    ``geometry`` and the kernel's tensors: ``mask_args = (mask_ptr, stride_batch, stride_head,
    stride_q, stride_k)``, ``padding_args = (pad_ptr, stride_batch, stride_k)``,
    ``alibi_args = (alibi_ptr, stride_batch, stride_head)``."""
    mask_ptr, stride_mask_batch, stride_mask_head, stride_mask_q, stride_mask_k = mask_args
    pad_ptr, stride_pad_batch, stride_pad_k = padding_args
    alibi_ptr, stride_alibi_batch, stride_alibi_head = alibi_args
    mask = (mask_ptr + b64 * stride_mask_batch + h64 * stride_mask_head, stride_mask_q, stride_mask_k)
    padding = (pad_ptr + b64 * stride_pad_batch, stride_pad_k)
    slope = load_alibi_slope(alibi_ptr, b64, h64, stride_alibi_batch, stride_alibi_head, HAS_ALIBI, USE_FP64)
    return scales, geometry, mask, padding, slope


@triton.jit
def key_block_range(
    start_m,
    off_b,
    kv_range_ptr,
    geometry,
    IS_CAUSAL: tl.constexpr,
    HAS_PADDING: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """The key blocks a query block [start_m, start_m + BLOCK_M) can see, as three ranges of keys:
    [lo, full_start) and [full_end, hi) need the causal/window/bound tests, [full_start,
    full_end) holds whole blocks every query of the block sees entirely (no test). The forward,
    the dQ and the preprocess kernels all split their key loop this way. Blocks that causality,
    the window or key padding empty entirely are outside [lo, hi). Without a window the first
    range is empty (full_start = lo)."""
    seqlen_q, seqlen_k, causal_offset, window_left, window_right = geometry
    lo = 0
    hi = seqlen_k
    full_end = seqlen_k
    if IS_CAUSAL:
        hi = tl.minimum(seqlen_k, tl.maximum(start_m + BLOCK_M + causal_offset, 0))
        full_end = tl.minimum(seqlen_k, tl.maximum(start_m + causal_offset + 1, 0))
    if HAS_WINDOW:
        # row i sees keys [i + causal_offset - window_left, i + causal_offset + window_right]
        hi = tl.minimum(hi, tl.maximum(start_m + BLOCK_M + causal_offset + window_right, 0))
        full_end = tl.minimum(full_end, tl.maximum(start_m + causal_offset + window_right + 1, 0))
        lo = (tl.maximum(start_m + causal_offset - window_left, 0) // BLOCK_N) * BLOCK_N
    if HAS_PADDING:
        kv_start, kv_end = load_key_range(kv_range_ptr, off_b)
        if HAS_WINDOW:
            lo = tl.maximum(lo, (kv_start // BLOCK_N) * BLOCK_N)
        else:
            lo = (kv_start // BLOCK_N) * BLOCK_N
        hi = tl.minimum(hi, kv_end)
    full_start = lo
    if HAS_WINDOW:
        # keys every row of the block sees on the left: from the last row's left edge on
        last_left = tl.maximum(start_m + BLOCK_M - 1 + causal_offset - window_left, 0)
        full_start = tl.minimum(tl.maximum(((last_left + BLOCK_N - 1) // BLOCK_N) * BLOCK_N, lo), tl.maximum(hi, lo))
    full_end = tl.maximum(full_start, (tl.minimum(full_end, hi) // BLOCK_N) * BLOCK_N)
    return lo, full_start, full_end, hi


@triton.jit
def query_block_range(
    start_n,
    off_b,
    kv_range_ptr,
    geometry,
    IS_CAUSAL: tl.constexpr,
    HAS_PADDING: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """The twin of ``key_block_range`` for the dK/dV kernel: the query blocks a key block
    [start_n, start_n + BLOCK_N) receives gradient from, as three ranges of query rows:

    - [lo, diagonal_end): blocks on the causal (or window's right) edge, tested element by element;
    - [full_start, full_end): whole blocks that see every key of the block and lie inside the
      queries, with no causal, window or bound test;
    - [tail_start, hi): the blocks after those: the window's left edge and the last, partial
      query block (empty when there is no window and Nq divides BLOCK_M).

    A key block that key padding empties entirely receives nothing: every range is empty."""
    seqlen_q, seqlen_k, causal_offset, window_left, window_right = geometry
    lo = 0
    diagonal_end = 0
    hi = seqlen_q
    # query i sees key j iff i >= j - causal_offset - right, right = 0 (causal) or window_right
    right = 0
    if HAS_WINDOW:
        right = window_right
    if IS_CAUSAL or HAS_WINDOW:
        first_row = tl.minimum(tl.maximum(start_n - causal_offset - right, 0), seqlen_q)
        lo = (first_row // BLOCK_M) * BLOCK_M
        last_row = tl.minimum(tl.maximum(start_n + BLOCK_N - 1 - causal_offset - right, 0), seqlen_q)
        diagonal_end = ((last_row + BLOCK_M - 1) // BLOCK_M) * BLOCK_M
    if HAS_PADDING:
        kv_start, kv_end = load_key_range(kv_range_ptr, off_b)
        hi = tl.where((start_n < kv_end) & (start_n + BLOCK_N > kv_start), hi, 0)
    whole_end = (seqlen_q // BLOCK_M) * BLOCK_M
    if HAS_WINDOW:
        # and i <= j - causal_offset + window_left: rows past the last key's left edge see nothing,
        # blocks of rows up to the first key's left edge see every key of the block
        hi = tl.minimum(hi, tl.maximum(start_n + BLOCK_N - causal_offset + window_left, 0))
        whole_end = tl.minimum(
            whole_end, (tl.maximum(start_n - causal_offset + window_left + 1, 0) // BLOCK_M) * BLOCK_M
        )
    diagonal_end = tl.minimum(diagonal_end, whole_end)
    lo = tl.minimum(lo, hi)
    full_start = tl.maximum(diagonal_end, lo)
    return (
        lo,
        tl.minimum(diagonal_end, hi),
        full_start,
        tl.minimum(whole_end, hi),
        tl.maximum(full_start, whole_end),
        hi,
    )


@triton.jit
def apply_masks(
    s,
    rows,
    cols,
    scoring,
    CHECK_ROWS: tl.constexpr,
    CHECK_COLS: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    MASK_KIND: tl.constexpr,
    HAS_PADDING: tl.constexpr,
    HAS_ALIBI: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    USE_FP64: tl.constexpr,
):
    """Add the ALiBi bias and an additive mask to the scores, and set every score a query may not
    attend to to -inf.

    s          scores in the exponent domain, shape of ``rows`` broadcast with ``cols``
    scoring    the scoring tuple (module docstring): the attn_mask of this (batch, head) is read at
               ``rows * stride_mask_q + cols * stride_mask_k`` (uint8, nonzero = attend, or any
               float dtype, added to the scores), the key_padding_mask of this batch as uint8,
               nonzero = padding, at ``cols * stride_pad_k``; ``alibi_slope`` is already in the
               exponent domain
    CHECK_ROWS / CHECK_COLS: the tile may reach past seqlen_q / seqlen_k; memory there is not read
    IS_CAUSAL / HAS_WINDOW: apply the causal / window test (the loops ask for them only on the
    blocks that straddle an edge)
    """
    scales, geometry, mask, padding, alibi_slope = scoring
    seqlen_q, seqlen_k, causal_offset, window_left, window_right = geometry
    if HAS_ALIBI:
        distance = rows + causal_offset - cols
        s = s - alibi_slope * tl.abs(distance).to(s.dtype)
    if MASK_KIND != 0:
        mask_base, stride_mask_q, stride_mask_k = mask
        mask_ptrs = mask_base + rows.to(tl.int64) * stride_mask_q + cols.to(tl.int64) * stride_mask_k
        # Out-of-bounds elements load as 0 (bool: do not attend; float: add nothing); both are
        # out of range anyway and are masked below or never stored.
        mask_tile = load_tile(mask_ptrs, rows, cols, seqlen_q, seqlen_k, CHECK_ROWS, CHECK_COLS)
        if MASK_KIND == 1:
            s = tl.where(mask_tile != 0, s, float("-inf"))
        else:
            bias = mask_tile.to(s.dtype)
            if not USE_FP64:
                # Clamp finite biases so that the change of base cannot overflow: -inf stays -inf
                # (masked), torch.finfo(torch.float32).min stays a huge finite penalty, as in torch.
                bias = tl.where(
                    (bias < MIN_FP32_BIAS_CONSTEXPR) & (bias != float("-inf")), MIN_FP32_BIAS_CONSTEXPR, bias
                )
                bias = bias * LOG2E_CONSTEXPR
            s = s + bias
    if HAS_PADDING:
        pad_base, stride_pad_k = padding
        if CHECK_COLS:
            padded = tl.load(pad_base + cols.to(tl.int64) * stride_pad_k, mask=cols < seqlen_k, other=1)
        else:
            padded = tl.load(pad_base + cols.to(tl.int64) * stride_pad_k)
        s = tl.where(padded != 0, float("-inf"), s)
    if CHECK_COLS:
        s = tl.where(cols < seqlen_k, s, float("-inf"))
    if IS_CAUSAL:
        s = tl.where(cols <= rows + causal_offset, s, float("-inf"))
    if HAS_WINDOW:
        inside = (cols >= rows + causal_offset - window_left) & (cols <= rows + causal_offset + window_right)
        s = tl.where(inside, s, float("-inf"))
    return s


@triton.jit
def score_tile(
    a,
    b,
    rows,
    cols,
    scoring,
    CHECK_ROWS: tl.constexpr,
    CHECK_COLS: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    MASK_KIND: tl.constexpr,
    HAS_PADDING: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    HAS_ALIBI: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    USE_FP64: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """The masked scores ``a @ b`` of the tile ``rows`` x ``cols`` in the exponent domain: the
    one definition of a score every kernel uses. ``a @ b`` is ``q @ k^T`` (``[BLOCK_M, BLOCK_N]``)
    or ``k @ q^T`` (the transposed tile of the dK/dV kernel, with ``rows``/``cols`` transposed).

    Returns ``(s, softcap_slope)``: with HAS_SOFTCAP, ``softcap_slope`` = 1 - tanh**2, the
    derivative of the capped score by the uncapped one (the backward's chain rule); otherwise 1.
    With soft-capping the host passes ``qk_scale`` = scale / softcap (natural units) and
    ``softcap_scale`` = softcap in the exponent domain."""
    scales = scoring[0]
    qk_scale, qk_scale_lo, softcap_scale, softcap_scale_lo = scales
    if HAS_SOFTCAP:
        capped = tanh(scaled_scores(a, b, qk_scale, qk_scale_lo, USE_FP64, DOT_PRECISION), USE_FP64)
        if USE_FP64:
            s = capped * softcap_scale + capped * softcap_scale_lo
        else:
            s = capped * softcap_scale
        slope = 1.0 - capped * capped
    else:
        s = scaled_scores(a, b, qk_scale, qk_scale_lo, USE_FP64, DOT_PRECISION)
        slope = 1.0
    s = apply_masks(
        s,
        rows,
        cols,
        scoring,
        CHECK_ROWS,
        CHECK_COLS,
        IS_CAUSAL,
        MASK_KIND,
        HAS_PADDING,
        HAS_ALIBI,
        HAS_WINDOW,
        USE_FP64,
    )
    return s, slope


@triton.jit
def load_row_stats(stats_base, offs, seqlen, CHECK: tl.constexpr):
    """Load the forward's per-row softmax statistics for rows ``offs`` (1-D) of one (batch, head).

    ``stats_base`` points at row 0 of a ``[Nq, 2]`` contiguous block of the saved row statistics
    (``row_stats[b, h]``, see ``attnlens.kernels.forward.launch_forward``): ``[:, 0]`` = m, the
    row max of the scores, ``[:, 1]`` = log(l), the log of the row sum of exp(s - m), both in the
    exponent domain. Returns ``(row_max, log_sum)`` ready for ``probabilities``: a row with
    nothing to attend to (m = -inf) and a row past ``seqlen`` (when CHECK) get m = +inf, which
    makes every recomputed probability of the row exp(-inf) = 0.
    """
    ptrs = stats_base + offs.to(tl.int64) * 2
    if CHECK:
        row_max = tl.load(ptrs, mask=offs < seqlen, other=float("inf"))
        log_sum = tl.load(ptrs + 1, mask=offs < seqlen, other=0.0)
    else:
        row_max = tl.load(ptrs)
        log_sum = tl.load(ptrs + 1)
    row_max = tl.where(row_max == float("-inf"), float("inf"), row_max)
    return row_max, log_sum


@triton.jit
def probabilities(s, row_max, log_sum, USE_FP64: tl.constexpr):
    """Softmax probabilities ``exp((s - m) - log(l))`` from scores and the row statistics
    (broadcast to ``s``). Subtracting m first keeps them exact whatever the row max: m + log(l)
    would lose log(l) entirely once |m| is large (a row of -1e9 biases, say), giving 1 per key."""
    return exponential((s - row_max) - log_sum, USE_FP64)


@triton.jit
def dropout_keep(seed, rng_stream, rows, cols, dropout_p):
    """True where a probability survives dropout, drawn with counter-based Philox.

    The counter is (key index, query index, rng_stream, 0) with rng_stream = batch * Hq + head, so
    every element of a [B, Hq, Nq, Nk] pattern has its own counter whatever the tiling: the
    forward, the weights and the backward kernels regenerate the same pattern from the seed alone.
    """
    zero = rows * 0 + cols * 0
    c0 = (cols + zero).to(tl.uint32, bitcast=True)
    c1 = (rows + zero).to(tl.uint32, bitcast=True)
    c2 = (zero + rng_stream).to(tl.uint32, bitcast=True)
    c3 = zero.to(tl.uint32, bitcast=True)
    r, _, _, _ = tl.philox(seed, c0, c1, c2, c3)
    return tl.uint_to_uniform_float(r) >= dropout_p


@triton.jit
def apply_dropout(p, rows, cols, dropout, HAS_DROPOUT: tl.constexpr):
    """``p`` after dropout: kept values scaled by 1 / (1 - p), dropped ones 0 (``dropout`` is the
    dropout tuple of the module docstring; nothing happens without HAS_DROPOUT)."""
    if HAS_DROPOUT:
        seed, rng_stream, dropout_p, keep_scale = dropout
        keep = dropout_keep(seed, rng_stream, rows, cols, dropout_p)
        p = tl.where(keep, p * keep_scale, 0.0)
    return p
