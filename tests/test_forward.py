"""The fused forward and weights kernels against a float64 reference (flash-attn's 2x rule).

Each check compares four things: the output, the per-head weights, the head-averaged weights and
the log-sum-exp. Shapes are the ones that break naive kernels: odd lengths, Nq != Nk both ways,
odd head dims, GQA, every mask alone and together, rows with nothing to attend to.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import attnlens
from attnlens._inputs import prepare
from attnlens._ops import sdpa_forward_op
from attnlens.kernels import AttentionProblem, launch_weights, override_config, row_stats_to_lse
from helpers import (
    DEVICE,
    ODD_SEQLENS,
    UNEQUAL_LENGTHS,
    assert_equal,
    assert_rule,
    make_qkv,
    mixed_padding,
    poisoned_like,
    reference,
)

DTYPES = [torch.float16, torch.float32, torch.float64]


def run_kernels(q, k, v, **kwargs):
    """(out, lse natural, per-head weights, mean weights) from the kernels, for prepared args."""
    p = prepare(q, k, v, return_weights=True, **kwargs)
    out, row_stats, weights = sdpa_forward_op(
        p.query,
        p.key,
        p.value,
        p.attn_mask,
        p.key_padding_mask,
        None,
        None,
        None,
        p.scale,
        0.0,
        None,
        None,
        p.is_causal,
        p.causal_offset,
        1,
        False,
    )
    problem = AttentionProblem(
        scale=p.scale,
        is_causal=p.is_causal,
        causal_offset=p.causal_offset,
        attn_mask=p.attn_mask,
        key_padding_mask=p.key_padding_mask,
    )
    mean = launch_weights(p.query, p.key, row_stats, problem, mean=True)
    return out, row_stats_to_lse(row_stats), weights, mean


def check(q, k, v, lse_rows=slice(None), **kwargs):
    """Kernels vs float64 reference, with the input-dtype reference setting the tolerance.
    ``lse_rows`` indexes the query rows whose log-sum-exp is compared (all by default)."""
    out, lse, weights, mean = run_kernels(q, k, v, **kwargs)
    exact = reference(q, k, v, torch.float64, **kwargs)
    lowp = reference(q, k, v, q.dtype, **kwargs)
    assert_rule("out", out, exact[0], lowp[0])
    assert_rule("weights", weights, exact[1], lowp[1])
    assert_rule("mean weights", mean, exact[1].mean(1), lowp[1].mean(1))
    assert_rule("lse", lse[..., lse_rows], exact[2][..., lse_rows], lowp[2][..., lse_rows], dtype=q.dtype)
    assert torch.isfinite(out).all() and torch.isfinite(weights).all()
    return out, weights, mean


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seqlen", ODD_SEQLENS)
def test_sequence_lengths(dtype, seqlen):
    q, k, v = make_qkv(1, 2, seqlen, seqlen, 64, dtype)
    check(q, k, v)
    check(q, k, v, is_causal=True)


@pytest.mark.parametrize("seqlen", [1023, 1025])
def test_long_sequences(seqlen):
    q, k, v = make_qkv(1, 1, seqlen, seqlen, 32, torch.float16)
    check(q, k, v, is_causal=True)


@pytest.mark.parametrize("seqlen_q,seqlen_k", UNEQUAL_LENGTHS)
@pytest.mark.parametrize("alignment", ["top_left", "bottom_right"])
def test_unequal_lengths(seqlen_q, seqlen_k, alignment):
    q, k, v = make_qkv(2, 1, seqlen_q, seqlen_k, 40, torch.float16)
    check(q, k, v)
    check(q, k, v, is_causal=True, causal_alignment=alignment)


@pytest.mark.parametrize("head_dim", [1, 8, 16, 40, 59, 64, 80, 96, 111, 128, 160, 256])
@pytest.mark.parametrize("dtype", DTYPES)
def test_head_dims(head_dim, dtype):
    q, k, v = make_qkv(1, 2, 70, 90, head_dim, dtype)
    check(q, k, v, is_causal=True)


@pytest.mark.parametrize("head_dim,head_dim_v", [(64, 32), (24, 80), (59, 111)])
def test_value_head_dim_differs(head_dim, head_dim_v):
    q, k, v = make_qkv(2, 2, 65, 77, head_dim, torch.float16, head_dim_v=head_dim_v)
    check(q, k, v)


@pytest.mark.parametrize("heads_q,heads_kv", [(1, 1), (3, 3), (9, 9), (2, 1), (8, 1), (6, 3), (8, 2)])
def test_heads_and_gqa(heads_q, heads_kv):
    q, k, v = make_qkv(2, heads_q, 45, 67, 32, torch.float32, heads_kv=heads_kv)
    check(q, k, v, enable_gqa=heads_q != heads_kv, is_causal=True, causal_alignment="bottom_right")


def _masks(kind, batch, heads, seqlen_q, seqlen_k, dtype):
    if kind == "none":
        return None
    if kind == "bool":
        return torch.rand(batch, heads, seqlen_q, seqlen_k, device=DEVICE) > 0.3
    if kind == "bool_2d":
        return torch.rand(seqlen_q, seqlen_k, device=DEVICE) > 0.5
    if kind == "float":
        mask = torch.randn(batch, 1, seqlen_q, seqlen_k, device=DEVICE, dtype=dtype)
        mask[..., ::3] = float("-inf")
        return mask
    if kind == "float_row":  # broadcast over batch, heads and queries
        return torch.randn(seqlen_k, device=DEVICE, dtype=dtype)
    raise ValueError(kind)


@pytest.mark.parametrize("mask_kind", ["none", "bool", "bool_2d", "float", "float_row"])
@pytest.mark.parametrize("causal", ["none", "top_left", "bottom_right"])
@pytest.mark.parametrize("padding", [False, True])
def test_every_mask_combination(mask_kind, causal, padding):
    """Small tiles so that several key and query blocks, the diagonal and the ragged edge all
    occur in a short sequence."""
    batch, heads, seqlen_q, seqlen_k = 3, 2, 29, 41
    q, k, v = make_qkv(batch, heads, seqlen_q, seqlen_k, 24, torch.float32)
    kwargs = {}
    mask = _masks(mask_kind, batch, heads, seqlen_q, seqlen_k, torch.float32)
    if mask is not None:
        kwargs["attn_mask"] = mask
    if causal != "none":
        kwargs.update(is_causal=True, causal_alignment=causal)
    if padding:
        kwargs["key_padding_mask"] = mixed_padding(batch, seqlen_k)
    with override_config(block_m=16, block_n=16):
        check(q, k, v, **kwargs)


def test_gpu_tile_shapes():
    """The block shapes the GPU tables use, through the interpreter."""
    q, k, v = make_qkv(2, 1, 150, 201, 64, torch.float16)
    pad = mixed_padding(2, 201)
    for block_m, block_n in [(128, 64), (128, 32), (64, 32), (32, 16), (64, 128)]:
        with override_config(block_m=block_m, block_n=block_n):
            check(q, k, v, is_causal=True, causal_alignment="bottom_right", key_padding_mask=pad)


class TestRowsWithNothingToAttendTo:
    """Output 0, weights 0, lse -inf, never NaN."""

    def _assert_empty_rows(self, out, weights, mean, rows):
        assert torch.isfinite(out).all() and torch.isfinite(weights).all()
        assert (out[:, :, rows] == 0).all()
        assert (weights[:, :, rows] == 0).all()
        assert (mean[:, rows] == 0).all()

    def test_causal_bottom_right_with_more_queries_than_keys(self):
        q, k, v = make_qkv(1, 2, 40, 25, 16, torch.float16)
        out, weights, mean = check(q, k, v, is_causal=True, causal_alignment="bottom_right")
        self._assert_empty_rows(out, weights, mean, slice(0, 15))
        assert (weights[:, :, 15:].float().sum(-1) - 1).abs().max() < 1e-2

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_huge_negative_biases_softmax_like_torch(self, dtype):
        """Biases of -1e9 (``masked_fill(mask == 0, -1e9)``), -1e30 or torch.finfo(float32).min
        (Hugging Face's masks) are scores like any other, as in torch: a row made only of them is
        softmaxed (uniformly where they absorb the q.k differences), not emptied, and the weights
        recomputed from the saved row statistics stay exact although |row max| is huge. Only -inf
        masks a key."""
        q, k, v = make_qkv(1, 2, 7, 21, 16, dtype)
        bias = torch.zeros(1, 1, 7, 21, dtype=dtype, device=DEVICE)
        lowest = torch.finfo(torch.float32).min
        bias[..., 0, :] = lowest  # uniform, as torch's softmax of equal values
        bias[..., 1, 3:] = lowest  # weight on the first three keys only
        bias[..., 2, 5] = float("-inf")  # key 5 masked
        bias[..., 3, :] = -1e30  # uniform: -1e30 absorbs the q.k differences
        bias[..., 4, :] = -1e9  # the softmax of the scores (uniform in fp32)
        bias[..., 5, :] = float("-inf")  # nothing to attend to
        bias[..., 6, ::2] = -1e9  # the -1e9 keys get 0
        # An fp32 kernel clamps finfo(float32).min to -fp32max / log2(e) (x log2(e) would overflow
        # to -inf), which moves row 0's log-sum-exp but none of its weights: compare the rest.
        lse_rows = slice(1, None) if dtype == torch.float32 else slice(None)
        out, weights, mean = check(q, k, v, attn_mask=bias, lse_rows=lse_rows)
        self._assert_empty_rows(out, weights, mean, slice(5, 6))
        assert (weights[:, :, 1, 3:] == 0).all() and (weights[:, :, 2, 5] == 0).all()
        assert (weights[:, :, 6, ::2] == 0).all()
        for row in (1, 2, 3, 4, 6):
            assert (weights[:, :, row].sum(-1) - 1).abs().max() < 1e-5, row
        uniform_rows = [0, 3, 4] if dtype == torch.float32 else [0, 3]
        for row in uniform_rows:
            assert (weights[:, :, row] - 1 / 21).abs().max() < 1e-6, row
            assert (out[:, :, row] - v.mean(2)).abs().max() < 1e-5, row
        if dtype == torch.float64:  # -1e9 is exact in fp64: q.k still counts
            assert (weights[:, :, 4] - 1 / 21).abs().max() > 1e-3

    def test_all_keys_padded_in_one_batch_element(self):
        q, k, v = make_qkv(2, 3, 30, 45, 16, torch.float32)
        pad = torch.zeros(2, 45, dtype=torch.bool)
        pad[1] = True
        out, weights, mean = check(q, k, v, key_padding_mask=pad)
        assert (out[1] == 0).all() and (weights[1] == 0).all() and (mean[1] == 0).all()
        assert (weights[0].sum(-1) - 1).abs().max() < 1e-5

    def test_bool_mask_rows_all_false(self):
        q, k, v = make_qkv(1, 2, 33, 70, 32, torch.float16)
        mask = torch.rand(33, 70) > 0.5
        mask[[0, 5, 32]] = False
        out, weights, mean = check(q, k, v, attn_mask=mask)
        self._assert_empty_rows(out, weights, mean, [0, 5, 32])

    def test_float_mask_rows_all_minus_inf(self):
        q, k, v = make_qkv(1, 1, 20, 30, 32, torch.float32)
        mask = torch.zeros(20, 30)
        mask[3] = float("-inf")
        out, weights, mean = check(q, k, v, attn_mask=mask)
        self._assert_empty_rows(out, weights, mean, [3])

    def test_all_false_mask(self):
        q, k, v = make_qkv(2, 2, 17, 19, 16, torch.float16)
        out, weights, mean = check(q, k, v, attn_mask=torch.zeros(17, 19, dtype=torch.bool))
        assert (out == 0).all() and (weights == 0).all() and (mean == 0).all()

    def test_all_true_mask_equals_no_mask(self):
        q, k, v = make_qkv(2, 2, 17, 19, 16, torch.float32)
        masked = run_kernels(q, k, v, attn_mask=torch.ones(17, 19, dtype=torch.bool))
        plain = run_kernels(q, k, v)
        for name, a, b in zip(("out", "lse", "weights", "mean"), masked, plain):
            assert_equal(name, a, b)

    def test_padding_and_causal_empty_every_row_of_a_block(self):
        """Left padding that covers the diagonal: early rows of block 0 see nothing."""
        q, k, v = make_qkv(1, 1, 48, 48, 16, torch.float32)
        pad = torch.zeros(1, 48, dtype=torch.bool)
        pad[0, :20] = True
        with override_config(block_m=16, block_n=16):
            out, weights, mean = check(q, k, v, is_causal=True, key_padding_mask=pad)
        self._assert_empty_rows(out, weights, mean, slice(0, 20))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_poisoned_memory_is_never_read(dtype):
    """Inputs and masks are views into NaN-filled buffers (slack after every dim); the results
    must be finite and bitwise equal to those of clean contiguous copies."""
    q, k, v = make_qkv(2, 3, 37, 51, 40, dtype)
    mask = torch.randn(2, 3, 37, 51, dtype=dtype)
    pad = mixed_padding(2, 51)
    kwargs = dict(is_causal=True, causal_alignment="bottom_right")
    with override_config(block_m=16, block_n=32):
        clean = run_kernels(q, k, v, attn_mask=mask, key_padding_mask=pad, **kwargs)
        dirty = run_kernels(
            poisoned_like(q, (1, 1, 7, 9)),
            poisoned_like(k, (1, 2, 5, 3)),
            poisoned_like(v, (2, 1, 11, 5)),
            attn_mask=poisoned_like(mask, (1, 1, 3, 13)),
            key_padding_mask=poisoned_like(pad, (1, 6)),
            **kwargs,
        )
    for name, a, b in zip(("out", "lse", "weights", "mean"), dirty, clean):
        assert torch.isfinite(a[a != float("-inf")]).all(), f"{name} has NaN"
        assert_equal(name, a, b)


def test_transposed_inputs_need_no_copy():
    """[B, N, H, D] tensors viewed as [B, H, N, D], as nn.MultiheadAttention-style code makes them."""
    b, n, h, d = 2, 45, 3, 32
    q = torch.randn(b, n, h, d).transpose(1, 2)
    k = torch.randn(b, n + 10, h, d).transpose(1, 2)
    v = torch.randn(b, n + 10, h, d).transpose(1, 2)
    assert not q.is_contiguous()
    out, weights, _ = check(q, k, v, is_causal=True)
    # the output is laid out like the query, so merging heads is free
    assert out.transpose(1, 2).is_contiguous()
    contiguous = run_kernels(q.contiguous(), k.contiguous(), v.contiguous(), is_causal=True)
    assert_equal("out", out, contiguous[0])
    assert_equal("weights", weights, contiguous[2])


def test_scaled_inputs_do_not_overflow_fp16():
    q, k, v = make_qkv(2, 2, 100, 120, 64, torch.float16)
    out, weights, _ = check(q * 5, k * 3, v)
    assert torch.isfinite(out).all() and torch.isfinite(weights).all()


def test_scale_argument():
    q, k, v = make_qkv(1, 2, 30, 40, 16, torch.float64)
    check(q, k, v, scale=0.37)
    check(q, k, v, scale=-1.5)


class TestZeroLengths:
    def test_no_queries(self):
        q, k, v = make_qkv(2, 3, 0, 10, 16, torch.float32)
        out, weights = attnlens.scaled_dot_product_attention(q, k, v, return_weights=True)
        assert out.shape == (2, 3, 0, 16) and weights.shape == (2, 3, 0, 10)

    def test_no_keys(self):
        q, k, v = make_qkv(2, 3, 10, 0, 16, torch.float32)
        out, weights = attnlens.scaled_dot_product_attention(q, k, v, return_weights=True)
        assert out.shape == (2, 3, 10, 16) and (out == 0).all()
        assert weights.shape == (2, 3, 10, 0)
        _, mean = attnlens.scaled_dot_product_attention(q, k, v, return_weights="mean")
        assert mean.shape == (2, 10, 0)

    def test_empty_batch(self):
        q, k, v = make_qkv(0, 3, 10, 12, 16, torch.float32)
        out, weights = attnlens.scaled_dot_product_attention(q, k, v, return_weights=True)
        assert out.shape == (0, 3, 10, 16) and weights.shape == (0, 3, 10, 12)

    def test_reference_agrees(self):
        q, k, v = make_qkv(2, 3, 10, 0, 16, torch.float32)
        with attnlens.use_backend("reference"):
            out, weights = attnlens.scaled_dot_product_attention(q, k, v, return_weights="mean")
        assert (out == 0).all() and weights.shape == (2, 10, 0)


class TestPublicApi:
    def test_return_conventions(self):
        q, k, v = make_qkv(2, 3, 20, 25, 16, torch.float32)
        out = attnlens.scaled_dot_product_attention(q, k, v)
        out_w, weights = attnlens.scaled_dot_product_attention(q, k, v, return_weights=True)
        out_m, mean = attnlens.scaled_dot_product_attention(q, k, v, return_weights="mean")
        assert_equal("out", out, out_w)
        assert_equal("out", out, out_m)
        assert weights.shape == (2, 3, 20, 25) and mean.shape == (2, 20, 25)
        assert_rule("mean", mean, weights.double().mean(1), weights.double().mean(1), dtype=torch.float32)

    def test_unbatched_inputs(self):
        q, k, v = make_qkv(1, 3, 20, 25, 16, torch.float32)
        out, weights = attnlens.scaled_dot_product_attention(q[0], k[0], v[0], return_weights=True)
        full_out, full_weights = attnlens.scaled_dot_product_attention(q, k, v, return_weights=True)
        assert_equal("out", out, full_out[0])
        assert_equal("weights", weights, full_weights[0])
        _, mean = attnlens.scaled_dot_product_attention(q[0], k[0], v[0], return_weights="mean")
        assert mean.shape == (20, 25)

    def test_matches_torch_sdpa(self):
        q, k, v = make_qkv(2, 4, 50, 60, 32, torch.float32)
        mask = torch.rand(2, 1, 50, 60) > 0.2
        ours = attnlens.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        theirs = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        exact = reference(q, k, v, torch.float64, attn_mask=mask)[0]
        assert_rule("out vs torch", ours, exact, theirs)

    def test_kernels_and_reference_paths_agree(self):
        q, k, v = make_qkv(2, 4, 50, 60, 32, torch.float64, heads_kv=2)
        pad = mixed_padding(2, 60)
        kwargs = dict(enable_gqa=True, is_causal=True, key_padding_mask=pad, return_weights=True)
        assert attnlens.selected_backend(q.device) == "kernels"
        out, weights = attnlens.scaled_dot_product_attention(q, k, v, **kwargs)
        with attnlens.use_backend("reference"):
            assert attnlens.selected_backend(q.device) == "reference"
            ref_out, ref_weights = attnlens.scaled_dot_product_attention(q, k, v, **kwargs)
        assert (out - ref_out).abs().max() < 1e-12
        assert (weights - ref_weights).abs().max() < 1e-12


def test_float32_mask_minimum_with_fp16_inputs_is_a_bias_on_both_paths():
    """An fp32 mask's finfo.min with fp16 inputs is clamped, not overflowed to -inf: the kernels
    and the reference both softmax such a row uniformly."""
    q, k, v = make_qkv(1, 2, 5, 7, 16, torch.float16)
    bias = torch.zeros(1, 1, 5, 7, device=DEVICE)
    bias[..., 1, :] = torch.finfo(torch.float32).min
    bias[..., 2, 3] = float("-inf")
    out, weights = attnlens.scaled_dot_product_attention(q, k, v, attn_mask=bias, return_weights=True)
    with attnlens.use_backend("reference"):
        ref_out, ref_weights = attnlens.scaled_dot_product_attention(q, k, v, attn_mask=bias, return_weights=True)
    for w in (weights, ref_weights):
        assert torch.equal(w[0, :, 1].float(), torch.full((2, 7), 1 / 7, dtype=torch.float16).float())
        assert (w[0, :, 2, 3] == 0).all()
    assert (out.float() - ref_out.float()).abs().max() < 2e-3


class TestTensorDescriptorPath:
    """``KernelConfig.tma``: the forward reads Q, K and V through tensor descriptors and the
    weights kernel writes its tiles through one (TMA on Hopper; the interpreter runs the same
    kernel code). The descriptors bound every load and store by the tensor's own shape, so odd
    lengths, padded head dims, GQA, masks and NaN slack must come out as on the pointer path,
    bitwise."""

    @pytest.fixture
    def launches(self, monkeypatch):
        """(kernel name, USE_TMA) for every forward and weights launch."""
        from attnlens.kernels import forward as fwd

        seen, real = [], fwd.launchable

        def spy(kernel):
            launcher = real(kernel)
            name = "weights" if "weights" in kernel.fn.__name__ else "forward"

            class Recorder:
                def __getitem__(self, grid):
                    def run(*args, **kwargs):
                        if "USE_TMA" in kwargs:
                            seen.append((name, kwargs["USE_TMA"]))
                        return launcher[grid](*args, **kwargs)

                    return run

            return Recorder()

        monkeypatch.setattr(fwd, "launchable", spy)
        return seen

    @pytest.mark.parametrize(
        "case",
        [
            dict(shape=(1, 2, 37, 53, 40), kwargs=dict(is_causal=True)),
            dict(
                shape=(2, 6, 29, 41, 24),
                heads_kv=3,
                kwargs=dict(is_causal=True, causal_alignment="bottom_right", enable_gqa=True),
            ),
            dict(shape=(3, 2, 19, 130, 16), kwargs=dict(mask="float", padding=True)),
            dict(shape=(1, 1, 64, 64, 128), kwargs=dict()),
            dict(shape=(3, 4, 37, 72, 40), kwargs=dict(is_causal=True, causal_alignment="bottom_right", padding=True)),
        ],
    )
    def test_matches_the_reference_and_the_pointer_path(self, launches, case):
        batch, heads, seqlen_q, seqlen_k, head_dim = case["shape"]
        q, k, v = make_qkv(
            batch, heads, seqlen_q, seqlen_k, head_dim, torch.float16, heads_kv=case.get("heads_kv", heads)
        )
        kwargs = dict(case["kwargs"])
        if kwargs.pop("mask", None):
            kwargs["attn_mask"] = _masks("float", batch, heads, seqlen_q, seqlen_k, torch.float16)
        if kwargs.pop("padding", False):
            kwargs["key_padding_mask"] = mixed_padding(batch, seqlen_k)
        with override_config(block_m=16, block_n=16, tma=True):
            with_tma = check(q, k, v, **kwargs)
        # the forward always qualifies here; the weights only where their rows are 16-byte aligned
        assert ("forward", True) in launches and ("forward", False) not in launches
        assert {used for name, used in launches if name == "weights"} == {seqlen_k % 8 == 0}
        with override_config(block_m=16, block_n=16):
            pointers = run_kernels(q, k, v, **kwargs)
        assert_equal("out", with_tma[0], pointers[0])
        assert_equal("weights", with_tma[1], pointers[2])

    def test_poisoned_and_transposed_views(self, launches):
        q, k, v = make_qkv(2, 3, 37, 51, 40, torch.float16)
        # slack keeps every stride a multiple of 16 bytes (the last dim grows 40 -> 48), so the
        # views stay eligible and any read past a bound would bring NaN in
        dirty = [poisoned_like(q, (1, 1, 7, 8)), poisoned_like(k, (1, 2, 5, 8)), poisoned_like(v, (2, 1, 11, 8))]
        transposed = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v)]
        with override_config(block_m=16, block_n=32, tma=True):
            clean = run_kernels(q, k, v, is_causal=True)
            for views in (dirty, transposed):
                got = run_kernels(*views, is_causal=True)
                for name, a, b in zip(("out", "lse", "weights", "mean"), got, clean):
                    assert_equal(name, a, b)
        assert [used for name, used in launches if name == "forward"] == [True] * 3

    def test_ineligible_inputs_take_the_pointer_path(self, launches):
        from attnlens.kernels.launch import tma_eligible

        q, k, v = make_qkv(1, 2, 33, 33, 59, torch.float16)  # rows of 118 bytes: not 16-byte aligned
        q32, k32, v32 = make_qkv(1, 2, 33, 33, 64, torch.float32)  # not a 16-bit dtype
        assert not tma_eligible(q, k, v) and not tma_eligible(q32, k32, v32)
        assert not tma_eligible(q[..., 1:], k[..., 1:], v[..., 1:])  # base address off by 2 bytes
        rows = torch.randn(1, 2, 1, 64, dtype=torch.float16)
        assert not tma_eligible(rows.expand(1, 2, 33, 64))  # one key row repeated: row stride 0
        with override_config(block_m=16, block_n=16, tma=True):
            check(q, k, v, is_causal=True)
            check(q32, k32, v32)
        assert {name for name, _ in launches} == {"forward", "weights"}
        assert not any(used for _, used in launches)


def test_auto_keeps_cuda_devices_older_than_triton_supports_on_the_torch_path(monkeypatch):
    """Triton supports compute capability 8.0 and newer (older cards get FMA products and tiles
    never compiled for their shared memory): "auto" sends a V100/T4 to the "torch" path (PyTorch
    operations), newer cards to the kernels, and ``use_backend("kernels")`` still forces them."""
    import attnlens.kernels

    monkeypatch.setattr(attnlens.kernels, "INTERPRETED", False)  # as on a machine with real GPUs
    capabilities = {0: (7, 5), None: (8, 6), 2: (9, 0)}  # None: the current device
    monkeypatch.setattr(
        torch.cuda,
        "get_device_properties",
        lambda device: SimpleNamespace(major=capabilities[device.index][0], minor=capabilities[device.index][1]),
    )
    assert attnlens.selected_backend(torch.device("cuda", 0)) == "torch"
    assert attnlens.selected_backend(torch.device("cuda")) == "kernels"  # the current device, 8.6
    assert attnlens.selected_backend(torch.device("cuda", 2)) == "kernels"
    assert attnlens.selected_backend(torch.device("cpu")) == "torch"  # not interpreted here: the CPU path
    with attnlens.use_backend("kernels"):
        assert attnlens.selected_backend(torch.device("cuda", 0)) == "kernels"
    with attnlens.use_backend("reference"):
        assert attnlens.selected_backend(torch.device("cuda", 2)) == "reference"
