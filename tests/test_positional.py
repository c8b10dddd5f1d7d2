"""Positional encodings against their closed forms.

Sinusoidal: every element against ``sin/cos(pos / base**(2i/d))`` evaluated independently in float64,
and the property that makes it useful, that shifting by ``k`` positions is a fixed rotation of each
(sin, cos) pair. Modules: the exact sum they return, their layouts, state_dict and gradients.
RoPE: against explicit per-position rotation matrices, relative-position invariance of the scores,
norm preservation, offsets, the two pair layouts, and end to end through the fused kernels.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pytest
import torch

import attnlens
from attnlens.positional import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    apply_rotary,
    sinusoidal_positional_encoding,
)
from helpers import DEVICE, assert_equal, assert_rule, describe_worst, max_error

# ----------------------------------------------------------------------------------------------
# independent references (plain Python / numpy float64, no code shared with attnlens.positional)


def closed_form_encoding(max_len: int, embed_dim: int, base: float = 10000.0) -> torch.Tensor:
    """Vaswani et al.'s formula, one element at a time: column c belongs to pair i = c // 2."""
    table = [[0.0] * embed_dim for _ in range(max_len)]
    for pos in range(max_len):
        for col in range(embed_dim):
            angle = pos / base ** (2 * (col // 2) / embed_dim)
            table[pos][col] = math.sin(angle) if col % 2 == 0 else math.cos(angle)
    return torch.tensor(table, dtype=torch.float64).reshape(max_len, embed_dim)


def rotation_matrix(position: float, head_dim: int, base: float = 10000.0, interleaved: bool = False) -> torch.Tensor:
    """The ``[D, D]`` RoPE matrix for one position, built pair by pair in float64."""
    matrix = torch.eye(head_dim, dtype=torch.float64)
    for j in range(head_dim // 2):
        a, b = (2 * j, 2 * j + 1) if interleaved else (j, j + head_dim // 2)
        angle = position / base ** (2 * j / head_dim)
        matrix[a, a], matrix[a, b] = math.cos(angle), -math.sin(angle)
        matrix[b, a], matrix[b, b] = math.sin(angle), math.cos(angle)
    return matrix


def rope_reference(
    x: torch.Tensor, positions: Sequence[float], base: float = 10000.0, interleaved: bool = False
) -> torch.Tensor:
    """``x`` ``[..., N, D]`` with token t multiplied by ``rotation_matrix(positions[t])``, in float64."""
    matrices = torch.stack([rotation_matrix(p, x.shape[-1], base, interleaved) for p in positions])
    return torch.einsum("nde,...ne->...nd", matrices.to(x.device), x.to(torch.float64))


def assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor, atol: float) -> None:
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    error = max_error(actual, expected)
    assert error <= atol, f"{name}: max error {error:.3g} > {atol:.3g}; {describe_worst(actual, expected)}"


# ----------------------------------------------------------------------------------------------
# sinusoidal_positional_encoding

SIZES = [(1, 1), (5, 2), (9, 3), (33, 5), (50, 16), (64, 17), (20, 64), (128, 7)]


@pytest.mark.parametrize("max_len,embed_dim", SIZES)
def test_sinusoidal_matches_closed_form_float64(max_len, embed_dim):
    pe = sinusoidal_positional_encoding(max_len, embed_dim, dtype=torch.float64)
    assert pe.shape == (max_len, embed_dim) and pe.dtype == torch.float64
    assert_close("encoding", pe, closed_form_encoding(max_len, embed_dim), atol=1e-13)


@pytest.mark.parametrize("max_len,embed_dim", SIZES)
def test_sinusoidal_float32_is_the_correctly_rounded_closed_form(max_len, embed_dim):
    pe = sinusoidal_positional_encoding(max_len, embed_dim)
    expected = closed_form_encoding(max_len, embed_dim)
    assert pe.dtype == torch.float32
    # float64 angles, one rounding at the end: within half an ulp of 1 of the exact value
    assert_close("encoding", pe, expected, atol=2.0**-25 + 1e-12)
    assert float(pe.abs().max()) <= 1.0


@pytest.mark.parametrize("base", [100.0, 10000.0, 500000.0])
def test_sinusoidal_base(base):
    pe = sinusoidal_positional_encoding(40, 12, base=base, dtype=torch.float64)
    assert_close("encoding", pe, closed_form_encoding(40, 12, base), atol=1e-13)


def test_sinusoidal_large_positions_stay_accurate():
    """At position 10^5 a float32 angle would be off by ~6e-3 rad; the float64 angle keeps fp32 exactness."""
    max_len, embed_dim = 100_000, 32
    pe = sinusoidal_positional_encoding(max_len, embed_dim)
    positions = np.arange(max_len, dtype=np.float64)[:, None]
    denominators = np.array([10000.0 ** (2 * (c // 2) / embed_dim) for c in range(embed_dim)])
    angles = positions / denominators
    expected = np.where(np.arange(embed_dim) % 2 == 0, np.sin(angles), np.cos(angles))
    assert_close("encoding", pe, torch.from_numpy(expected), atol=2.0**-25 + 1e-9)


@pytest.mark.parametrize("embed_dim", [1, 2, 7, 8])
def test_sinusoidal_first_row_is_zero_one_alternating(embed_dim):
    pe = sinusoidal_positional_encoding(3, embed_dim)
    expected = torch.tensor([float(c % 2) for c in range(embed_dim)])  # sin 0 = 0, cos 0 = 1
    assert_equal("PE[0]", pe[0], expected)


@pytest.mark.parametrize("embed_dim", [16, 17])
@pytest.mark.parametrize("shift", [1, 5, 37])
def test_sinusoidal_shift_is_a_fixed_rotation_per_pair(embed_dim, shift):
    """(sin, cos)(pos + k) = [[cos kw, sin kw], [-sin kw, cos kw]] (sin, cos)(pos) for every pos:
    the linear map depends on the shift k only, which lets attention express relative offsets."""
    max_len = 80
    pe = sinusoidal_positional_encoding(max_len + shift, embed_dim, dtype=torch.float64)
    for i in range(embed_dim // 2):
        frequency = 1.0 / 10000.0 ** (2 * i / embed_dim)
        c, s = math.cos(shift * frequency), math.sin(shift * frequency)
        rotation = torch.tensor([[c, s], [-s, c]], dtype=torch.float64)
        now = pe[:max_len, 2 * i : 2 * i + 2]  # [pos, (sin, cos)]
        later = pe[shift : shift + max_len, 2 * i : 2 * i + 2]
        assert_close(f"pair {i}", later, now @ rotation.T, atol=1e-12)


def test_sinusoidal_dtype_device_and_empty():
    pe = sinusoidal_positional_encoding(6, 4, dtype=torch.float16, device=DEVICE)
    assert pe.dtype == torch.float16 and pe.device.type == DEVICE.type
    assert_equal("fp16", pe.cpu(), closed_form_encoding(6, 4).to(torch.float16))
    assert sinusoidal_positional_encoding(0, 4).shape == (0, 4)


@pytest.mark.parametrize(
    "kwargs,error,pattern",
    [
        (dict(max_len=-1, embed_dim=4), ValueError, r"max_len must be an int >= 0, got -1"),
        (dict(max_len=4, embed_dim=0), ValueError, r"embed_dim must be an int >= 1, got 0"),
        (dict(max_len=4.0, embed_dim=4), TypeError, r"max_len must be an int >= 0, got float 4.0"),
        (dict(max_len=True, embed_dim=4), TypeError, r"max_len .* got bool"),
        (dict(max_len=4, embed_dim="8"), TypeError, r"embed_dim .* got str"),
        (dict(max_len=4, embed_dim=4, base=0.0), ValueError, r"base must be a finite number > 0, got 0.0"),
        (dict(max_len=4, embed_dim=4, base=float("inf")), ValueError, r"base must be a finite number"),
        (dict(max_len=4, embed_dim=4, dtype=torch.int64), TypeError, r"dtype must be a floating point"),
    ],
)
def test_sinusoidal_bad_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        sinusoidal_positional_encoding(**kwargs)


# ----------------------------------------------------------------------------------------------
# SinusoidalPositionalEncoding


@pytest.mark.parametrize("batch_first", [True, False])
def test_sinusoidal_module_adds_the_table(batch_first):
    module = SinusoidalPositionalEncoding(24, max_len=50, batch_first=batch_first).to(DEVICE)
    x = torch.randn(3, 13, 24, device=DEVICE)  # [B, N, d]
    out = module(x if batch_first else x.transpose(0, 1))
    out = out if batch_first else out.transpose(0, 1)
    table = sinusoidal_positional_encoding(50, 24, device=DEVICE)
    for b in range(3):
        assert_equal(f"batch {b}", out[b], x[b] + table[:13])
    assert_equal("unbatched", module(x[0]), x[0] + table[:13])


def test_sinusoidal_module_buffer_state_dict_and_dtypes():
    module = SinusoidalPositionalEncoding(10, max_len=30)
    assert_equal("pe", module.pe, sinusoidal_positional_encoding(30, 10))
    assert "pe" in dict(module.named_buffers())
    assert module.state_dict() == {}, "the table is derived from the arguments, not a checkpoint value"
    module.load_state_dict({})
    x = torch.randn(2, 30, 10, dtype=torch.float16)
    out = module(x)
    assert out.dtype == torch.float16, "a float32 table must not promote fp16 activations"
    assert_equal("fp16", out, x + module.pe.to(torch.float16))
    module64 = SinusoidalPositionalEncoding(10, max_len=30).double()
    assert_equal("fp64 table", module64.pe, sinusoidal_positional_encoding(30, 10, dtype=torch.float64))


def test_sinusoidal_module_dropout():
    module = SinusoidalPositionalEncoding(16, max_len=20, dropout=0.5)
    x = torch.randn(4, 20, 16)
    summed = x + module.pe
    out = module.train()(x)
    kept = out != 0
    assert 0.3 < kept.float().mean() < 0.7
    assert_equal("kept scaled by 1/(1-p)", out[kept], summed[kept] * 2)
    assert_equal("eval", module.eval()(x), summed)


@pytest.mark.parametrize(
    "make,x,pattern,error",
    [
        (
            lambda: SinusoidalPositionalEncoding(8, max_len=10),
            torch.zeros(2, 11, 8),
            r"11 positions .* max_len=10",
            ValueError,
        ),
        (
            lambda: SinusoidalPositionalEncoding(8, max_len=10),
            torch.zeros(2, 5, 6),
            r"embed_dim=8, got shape \(2, 5, 6\)",
            ValueError,
        ),
        (
            lambda: SinusoidalPositionalEncoding(8, max_len=10, batch_first=False),
            torch.zeros(11, 2, 8),
            r"11 positions",
            ValueError,
        ),
        (lambda: SinusoidalPositionalEncoding(8), torch.zeros(1, 2, 5, 8), r"shape \(1, 2, 5, 8\)", ValueError),
        (lambda: SinusoidalPositionalEncoding(8), torch.zeros(2, 5, 8, dtype=torch.long), r"floating point", TypeError),
        (lambda: SinusoidalPositionalEncoding(8), [0.0] * 8, r"x must be a torch.Tensor", TypeError),
    ],
)
def test_sinusoidal_module_bad_inputs(make, x, pattern, error):
    with pytest.raises(error, match=pattern):
        make()(x)


@pytest.mark.parametrize(
    "kwargs,error,pattern",
    [
        (dict(embed_dim=0), ValueError, "embed_dim"),
        (dict(embed_dim=8, max_len=-2), ValueError, "max_len"),
        (dict(embed_dim=8, dropout=1.5), ValueError, r"dropout must be a float in \[0, 1\], got 1.5"),
        (dict(embed_dim=8, dropout="0.1"), TypeError, "dropout"),
    ],
)
def test_sinusoidal_module_bad_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        SinusoidalPositionalEncoding(**kwargs)


# ----------------------------------------------------------------------------------------------
# LearnedPositionalEmbedding


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("offset", [0, 7])
def test_learned_adds_rows_from_offset(batch_first, offset):
    module = LearnedPositionalEmbedding(32, 12, batch_first=batch_first).to(DEVICE)
    x = torch.randn(2, 9, 12, device=DEVICE)
    out = module(x if batch_first else x.transpose(0, 1), offset=offset)
    out = out if batch_first else out.transpose(0, 1)
    rows = module.embedding.weight[offset : offset + 9]
    for b in range(2):
        assert_equal(f"batch {b}", out[b], x[b] + rows)
    assert module.pe is module.embedding.weight and module.pe.shape == (32, 12)


def test_learned_incremental_decoding_matches_full_sequence():
    module = LearnedPositionalEmbedding(16, 8)
    x = torch.randn(3, 10, 8)
    full = module(x)
    steps = torch.cat([module(x[:, t : t + 1], offset=t) for t in range(10)], dim=1)
    assert_equal("token by token", steps, full)


def test_learned_gradients_reach_the_used_rows_only():
    module = LearnedPositionalEmbedding(20, 6)
    x = torch.randn(4, 5, 6, requires_grad=True)
    upstream = torch.randn(4, 5, 6)
    (module(x, offset=3) * upstream).sum().backward()
    assert_equal("dx", x.grad, upstream)
    expected = torch.zeros(20, 6)
    expected[3:8] = upstream.sum(0)
    assert_close("dE", module.embedding.weight.grad, expected, atol=1e-6)


def test_learned_state_dict_and_init():
    module = LearnedPositionalEmbedding(64, 64, dropout=0.1)
    state = module.state_dict()
    assert list(state) == ["embedding.weight"] and state["embedding.weight"].shape == (64, 64)
    std = float(module.pe.detach().std())
    assert 0.018 < std < 0.022, f"table std {std}: expected the 0.02 initialisation"
    other = LearnedPositionalEmbedding(64, 64)
    other.load_state_dict(state)
    x = torch.randn(2, 10, 64)
    assert_equal("round trip", other(x), module.eval()(x))


@pytest.mark.parametrize(
    "x,offset,error,pattern",
    [
        (torch.zeros(1, 9, 4), 0, ValueError, r"offset=0 to 8 .* exceed max_len=8"),
        (torch.zeros(1, 3, 4), 6, ValueError, r"offset=6 to 8 .* exceed max_len=8"),
        (torch.zeros(1, 3, 4), -1, ValueError, r"offset must be an int >= 0, got -1"),
        (torch.zeros(1, 3, 4), 1.0, TypeError, r"offset must be an int >= 0, got float"),
        (torch.zeros(1, 3, 5), 0, ValueError, r"embed_dim=4"),
    ],
)
def test_learned_bad_inputs(x, offset, error, pattern):
    with pytest.raises(error, match=pattern):
        LearnedPositionalEmbedding(8, 4)(x, offset=offset)


# ----------------------------------------------------------------------------------------------
# RotaryEmbedding: the rotation itself

HEAD_DIMS = [2, 8, 40, 64]


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rope_matches_rotation_matrices(head_dim, interleaved, dtype):
    rope = RotaryEmbedding(head_dim, interleaved=interleaved)
    q = torch.randn(2, 3, 11, head_dim, dtype=dtype, device=DEVICE)
    k = torch.randn(2, 1, 11, head_dim, dtype=dtype, device=DEVICE)
    q_rot, k_rot = rope(q, k, offset=4)
    assert q_rot.dtype == dtype and q_rot.shape == q.shape and k_rot.shape == k.shape
    positions = range(4, 15)
    # float32 angles near 15 rad carry ~1e-6 rad of rounding
    atol = 1e-12 if dtype == torch.float64 else 2e-5 * float(q.abs().max())
    assert_close("q", q_rot, rope_reference(q, positions, interleaved=interleaved), atol)
    assert_close("k", k_rot, rope_reference(k, positions, interleaved=interleaved), atol)


def test_rope_known_value():
    """D = 2 at position 1 turns (1, 0) by one radian; at position 0 nothing moves."""
    rope = RotaryEmbedding(2, interleaved=True)
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    out = rope.rotate(x)
    expected = torch.tensor([[1.0, 0.0], [math.cos(1), math.sin(1)], [-math.sin(2), math.cos(2)]], dtype=torch.float64)
    assert_close("rotated", out, expected, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_rope_low_precision_rounds_once(dtype):
    """fp16/bf16 inputs are rotated in float32 and rounded once, even after module.half()."""
    rope = RotaryEmbedding(64).to(dtype)
    x = torch.randn(2, 4, 50, 64, device=DEVICE).to(dtype)
    out = rope.rotate(x, offset=100)
    assert out.dtype == dtype
    exact = rope_reference(x, range(100, 150))
    assert_rule("rotated", out, exact, lowp=exact.to(dtype), factor=1.0)


# ----------------------------------------------------------------------------------------------
# RotaryEmbedding: the properties attention relies on


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("m,n,shift", [(0, 0, 7), (3, 10, 25), (40, 2, 100), (0, 127, 250)])
def test_rope_scores_depend_on_relative_position_only(interleaved, m, n, shift):
    head_dim = 64
    rope = RotaryEmbedding(head_dim, interleaved=interleaved)
    q = torch.randn(5, head_dim, device=DEVICE)  # five independent query/key pairs
    k = torch.randn(5, head_dim, device=DEVICE)

    def score(query_position: int, key_position: int) -> torch.Tensor:
        q_rot = rope.rotate(q.unsqueeze(-2), offset=query_position).squeeze(-2)
        k_rot = rope.rotate(k.unsqueeze(-2), offset=key_position).squeeze(-2)
        return (q_rot * k_rot).sum(-1)

    # fp32 angles below 400 rad are off by < 3e-5 rad, so scores by < ~1e-4 |q||k|
    atol = 2e-4 * float((q.norm(dim=-1) * k.norm(dim=-1)).max())
    assert_close("shifted scores", score(m + shift, n + shift), score(m, n), atol)
    # and the value is <q, R(n - m) k>, not something trivially shift-invariant like <q, k>
    expected = (q.double() * rope_reference(k, [n - m], interleaved=interleaved)).sum(-1)
    assert_close("relative rotation", score(m, n), expected, atol)
    if m != n:
        assert max_error(score(m, n), (q * k).sum(-1)) > 10 * atol, "RoPE did not rotate"


def test_rope_score_matrix_invariant_under_offset_float64_far_positions():
    """Whole score matrices at offsets 0 and 10^6 agree to float64 precision (fp64 angles)."""
    rope = RotaryEmbedding(32)
    q = torch.randn(2, 3, 20, 32, dtype=torch.float64, device=DEVICE)
    k = torch.randn(2, 3, 20, 32, dtype=torch.float64, device=DEVICE)

    def scores(offset: int) -> torch.Tensor:
        q_rot, k_rot = rope(q, k, offset=offset)
        return q_rot @ k_rot.transpose(-1, -2)

    near, far = scores(0), scores(1_000_000)
    assert_close("scores", far, near, atol=1e-8)


@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_preserves_norms_of_every_pair(interleaved):
    rope = RotaryEmbedding(40, interleaved=interleaved)
    x = torch.randn(3, 2, 30, 40, dtype=torch.float64, device=DEVICE, requires_grad=True)
    out = rope.rotate(x, offset=9)
    half = 20

    def pair_norms(t):
        a, b = (t[..., 0::2], t[..., 1::2]) if interleaved else (t[..., :half], t[..., half:])
        return torch.hypot(a, b)

    assert_close("pair norms", pair_norms(out), pair_norms(x), atol=1e-13)
    # a rotation is orthogonal, so d|Rx|^2/dx = 2x exactly
    out.pow(2).sum().backward()
    assert_close("gradient of |Rx|^2", x.grad, 2 * x.detach(), atol=1e-12)


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("start", [1, 16, 37])
def test_rope_offset_equals_slicing_the_full_rotation(interleaved, start):
    rope = RotaryEmbedding(16, interleaved=interleaved)
    q = torch.randn(2, 4, 40, 16, device=DEVICE)
    k = torch.randn(2, 2, 40, 16, device=DEVICE)
    q_full, k_full = rope(q, k)
    q_tail, k_tail = rope(q[:, :, start:], k[:, :, start:], offset=start)
    assert_equal("q suffix", q_tail, q_full[:, :, start:])
    assert_equal("k suffix", k_tail, k_full[:, :, start:])
    steps = torch.cat([rope.rotate(k[:, :, t : t + 1], offset=t) for t in range(40)], dim=2)
    assert_equal("k token by token (KV-cache decoding)", steps, k_full)


def test_rope_positions_match_offsets():
    rope = RotaryEmbedding(24)
    q = torch.randn(3, 2, 10, 24, device=DEVICE)
    k = torch.randn(3, 2, 10, 24, device=DEVICE)
    q_pos, k_pos = rope(q, k, positions=torch.arange(5, 15, device=DEVICE))
    q_off, k_off = rope(q, k, offset=5)
    assert_close("q", q_pos, q_off, atol=1e-6)
    assert_close("k", k_pos, k_off, atol=1e-6)
    # per-sequence positions [B, N] (e.g. left padding): row b as if rotated alone with offset b * 3
    per_sequence = torch.arange(10, device=DEVICE) + 3 * torch.arange(3, device=DEVICE)[:, None]
    q_rows, _ = rope(q, k, positions=per_sequence)
    for b in range(3):
        assert_close(f"sequence {b}", q_rows[b], rope.rotate(q[b], offset=3 * b), atol=1e-6)


@pytest.mark.parametrize("head_dim", [2, 8, 64])
def test_rope_layouts_are_permutations_of_each_other(head_dim):
    """Interleaved pairs (2j, 2j+1) are rotate-half pairs (j, j + D/2) after a fixed permutation."""
    to_half = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)]).to(DEVICE)
    x = torch.randn(2, 3, 17, head_dim, device=DEVICE)
    interleaved = RotaryEmbedding(head_dim, interleaved=True).rotate(x, offset=2)
    half = RotaryEmbedding(head_dim).rotate(x[..., to_half], offset=2)
    assert_equal("permuted", half, interleaved[..., to_half])
    if head_dim > 2:  # with one pair both layouts are the same
        unpermuted = RotaryEmbedding(head_dim).rotate(x, offset=2)
        assert max_error(unpermuted, interleaved) > 0.1, "the layouts must differ before permuting"


def test_rope_gqa_rotates_every_head_alike():
    rope = RotaryEmbedding(16)
    q = torch.randn(2, 8, 12, 16, device=DEVICE)
    k = torch.randn(2, 2, 12, 16, device=DEVICE)
    q_rot, k_rot = rope(q, k, offset=3)
    assert q_rot.shape == (2, 8, 12, 16) and k_rot.shape == (2, 2, 12, 16)
    for h in range(8):
        assert_equal(f"q head {h}", q_rot[:, h], rope.rotate(q[:, h], offset=3))
    assert_equal("k transposed view", rope.rotate(k.transpose(1, 2).contiguous().transpose(1, 2), offset=3), k_rot)


def test_rope_cos_sin_tables_and_state():
    rope = RotaryEmbedding(8, base=500.0)
    cos, sin = rope.cos_sin(6, offset=2, dtype=torch.float64)
    angles = torch.tensor([[p / 500.0 ** (2 * j / 8) for j in range(4)] for p in range(2, 8)], dtype=torch.float64)
    assert_close("cos", cos, angles.cos(), atol=1e-15)
    assert_close("sin", sin, angles.sin(), atol=1e-15)
    assert rope.state_dict() == {}, "tables are caches, not parameters"
    # growing the cache for a longer input keeps the earlier positions exact
    x = torch.randn(1, 1, 3, 8)
    before = rope.rotate(x)
    rope.rotate(torch.randn(1, 1, 1000, 8), offset=3000)
    assert_equal("after growth", rope.rotate(x), before)
    x_rot = apply_rotary(x, *rope.cos_sin(3))
    assert_equal("apply_rotary with cos_sin", x_rot, before)


def test_rope_max_len():
    rope = RotaryEmbedding(8, max_len=20)
    x = torch.randn(1, 1, 5, 8)
    assert_close("inside", rope.rotate(x, offset=15), rope_reference(x, range(15, 20)), atol=1e-5)
    with pytest.raises(ValueError, match=r"offset=16 to 20 .* exceed max_len=20"):
        rope.rotate(x, offset=16)
    with pytest.raises(ValueError, match=r"positions must lie in \[0, max_len=20\), got values from 0 to 20"):
        rope.rotate(x, positions=torch.tensor([0, 1, 2, 3, 20]))


@pytest.mark.parametrize(
    "call,error,pattern",
    [
        (lambda: RotaryEmbedding(7), ValueError, r"head_dim must be even .* got 7"),
        (lambda: RotaryEmbedding(0), ValueError, r"head_dim must be an int >= 2, got 0"),
        (lambda: RotaryEmbedding(8.0), TypeError, r"head_dim must be an int"),
        (lambda: RotaryEmbedding(8, base=-1.0), ValueError, r"base must be a finite number > 0, got -1.0"),
        (lambda: RotaryEmbedding(8, max_len=-1), ValueError, r"max_len must be an int >= 0"),
        (
            lambda: RotaryEmbedding(8)(torch.zeros(1, 1, 3, 6), torch.zeros(1, 1, 3, 8)),
            ValueError,
            r"q must have shape \[..., N, head_dim=8\] .* got shape \(1, 1, 3, 6\)",
        ),
        (
            lambda: RotaryEmbedding(8)(torch.zeros(1, 1, 3, 8), torch.zeros(1, 1, 3, 8, dtype=torch.int32)),
            TypeError,
            r"k must be floating point, got dtype torch.int32",
        ),
        (
            lambda: RotaryEmbedding(8)(torch.zeros(1, 1, 3, 8), torch.zeros(1, 1, 3, 8), offset=-2),
            ValueError,
            r"offset must be an int >= 0, got -2",
        ),
        (
            lambda: RotaryEmbedding(8)(torch.zeros(1, 1, 3, 8), torch.zeros(1, 1, 3, 8), positions=torch.zeros(3)),
            TypeError,
            r"positions must be an integer tensor .* got dtype torch.float32",
        ),
        (
            lambda: RotaryEmbedding(8)(torch.zeros(1, 1, 3, 8), torch.zeros(1, 1, 4, 8), positions=torch.arange(3)),
            ValueError,
            r"positions must have shape \[N\] or \[B, N\] matching k of shape \(1, 1, 4, 8\)",
        ),
        (
            lambda: RotaryEmbedding(8)(
                torch.zeros(1, 1, 3, 8), torch.zeros(1, 1, 3, 8), offset=1, positions=torch.arange(3)
            ),
            ValueError,
            r"either offset or positions",
        ),
        (
            lambda: apply_rotary(torch.zeros(3, 8), torch.zeros(3, 3), torch.zeros(3, 3)),
            ValueError,
            r"cos and sin must have the same shape \[..., N, D/2=4\]",
        ),
    ],
)
def test_rope_bad_arguments(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


# ----------------------------------------------------------------------------------------------
# end to end: RoPE, then the fused kernels


def manual_attention(q, k, v, is_causal):
    """Softmax attention written out, GQA by repeating key heads, in the inputs' dtype."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if is_causal:
        future = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    weights = scores.softmax(-1)
    return weights @ v, weights


@pytest.mark.parametrize(
    "heads_q,heads_kv,seqlen,head_dim,is_causal",
    [
        (3, 3, 17, 16, False),
        (4, 2, 31, 40, True),  # GQA 2:1
        (8, 1, 33, 64, True),  # GQA 8:1
    ],
)
@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_then_fused_attention_matches_float64(heads_q, heads_kv, seqlen, head_dim, is_causal, interleaved):
    rope = RotaryEmbedding(head_dim, interleaved=interleaved)
    q = torch.randn(2, heads_q, seqlen, head_dim, device=DEVICE)
    k = torch.randn(2, heads_kv, seqlen, head_dim, device=DEVICE)
    v = torch.randn(2, heads_kv, seqlen, head_dim, device=DEVICE)
    q_rot, k_rot = rope(q, k, offset=5)
    out, weights = attnlens.scaled_dot_product_attention(
        q_rot, k_rot, v, is_causal=is_causal, enable_gqa=heads_q != heads_kv, return_weights=True
    )
    positions = range(5, 5 + seqlen)
    q64, k64 = (rope_reference(t, positions, interleaved=interleaved) for t in (q, k))
    exact_out, exact_weights = manual_attention(q64, k64, v.double(), is_causal)
    lowp_out, lowp_weights = manual_attention(q64.float(), k64.float(), v, is_causal)
    assert_rule("out", out, exact_out, lowp_out)
    assert_rule("weights", weights, exact_weights, lowp_weights)
