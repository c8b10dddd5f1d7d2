"""The launchers' shared host code (``attnlens.kernels.launch``): how a call becomes the arguments
every kernel takes, the layout of what the launchers allocate, and the interpreter's helper calls."""

from __future__ import annotations

import math

import pytest
import torch

import attnlens
from attnlens.kernels import launch
from attnlens.kernels.config import KernelConfig
from attnlens.kernels.launch import AttentionProblem, empty_like_query, kernel_args, key_ranges
from attnlens.kernels.tiles import LOG2E, MASK_ADDITIVE, MASK_BOOL, MASK_NONE

# The kernels' shared parameters, in order (KernelArgs.runtime).
RUNTIME = (
    "mask_ptr pad_ptr kv_range_ptr seed_ptr alibi_ptr sinks_ptr "
    "stride_mask_batch stride_mask_head stride_mask_q stride_mask_k stride_pad_batch stride_pad_k "
    "stride_alibi_batch stride_alibi_head stride_sinks_batch stride_sinks_head stride_sinks_q "
    "num_heads_q kv_group_size seqlen_q seqlen_k head_dim head_dim_v "
    "causal_offset window_left window_right qk_scale qk_scale_lo softcap_scale softcap_scale_lo dropout_p keep_scale"
).split()


def _qkv(batch=2, heads_q=4, heads_kv=2, seqlen_q=5, seqlen_k=7, head_dim=24, head_dim_v=40, dtype=torch.float32):
    q = torch.randn(batch, heads_q, seqlen_q, head_dim, dtype=dtype)
    k = torch.randn(batch, heads_kv, seqlen_k, head_dim, dtype=dtype)
    v = torch.randn(batch, heads_kv, seqlen_k, head_dim_v, dtype=dtype)
    return q, k, v


def test_every_kernel_takes_the_shared_parameters_in_the_same_order():
    """The launchers pass ``KernelArgs.runtime`` positionally after each kernel's own tensors:
    every attention kernel must name those parameters in exactly that order, contiguously."""
    from attnlens.kernels.report import KERNEL_FUNCTIONS

    for name, kernel in KERNEL_FUNCTIONS.items():
        params = kernel.arg_names
        start = params.index("mask_ptr")
        assert params[start : start + len(RUNTIME)] == RUNTIME, name


def test_kernel_args_of_a_plain_call():
    q, k, v = _qkv()
    args = kernel_args(AttentionProblem(scale=0.125), q, k, v)
    runtime = dict(zip(RUNTIME, args.runtime))
    assert runtime["mask_ptr"] is q and runtime["pad_ptr"] is q and runtime["seed_ptr"] is q  # never read
    assert (runtime["num_heads_q"], runtime["kv_group_size"]) == (4, 2)
    assert (runtime["seqlen_q"], runtime["seqlen_k"], runtime["head_dim"], runtime["head_dim_v"]) == (5, 7, 24, 40)
    # the scale in base 2, split into a float32 head and the remainder
    assert runtime["qk_scale"] == float(torch.tensor(0.125 * LOG2E, dtype=torch.float32))
    assert math.isclose(runtime["qk_scale"] + runtime["qk_scale_lo"], 0.125 * LOG2E, rel_tol=0, abs_tol=1e-17)
    assert (runtime["dropout_p"], runtime["keep_scale"]) == (0.0, 1.0)
    assert args.flags == dict(
        IS_CAUSAL=False,
        MASK_KIND=MASK_NONE,
        HAS_PADDING=False,
        HAS_SOFTCAP=False,
        HAS_ALIBI=False,
        HAS_WINDOW=False,
        HAS_SINKS=False,
        HAS_DROPOUT=False,
        EVEN_DQK=False,
        EVEN_DV=False,
        USE_FP64=False,
        DOT_PRECISION="ieee",
        BLOCK_DQK=32,
        BLOCK_DV=64,
    )


def test_kernel_args_of_masks_padding_dropout_and_fp64():
    q, k, v = _qkv(dtype=torch.float64, head_dim=32, head_dim_v=64)
    bool_mask = torch.ones(5, 7, dtype=torch.bool)[None, None].expand(2, 4, 5, 7)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 4:] = True
    seed = torch.tensor([7], dtype=torch.int64)
    problem = AttentionProblem(
        scale=0.3, is_causal=True, causal_offset=2, attn_mask=bool_mask, key_padding_mask=pad, dropout_p=0.2, seed=seed
    )
    args = kernel_args(problem, q, k, v)
    runtime = dict(zip(RUNTIME, args.runtime))
    assert runtime["mask_ptr"].dtype == torch.uint8  # bool masks reach the kernels as bytes
    assert (runtime["stride_mask_batch"], runtime["stride_mask_head"]) == (0, 0)  # broadcast, never copied
    assert runtime["kv_range_ptr"].tolist() == [[0, 7], [0, 4]]
    assert runtime["seed_ptr"] is seed and runtime["causal_offset"] == 2
    assert runtime["dropout_p"] == 0.2 and math.isclose(runtime["keep_scale"], 1 / 0.8)
    assert runtime["qk_scale"] + runtime["qk_scale_lo"] == 0.3  # fp64 works in base e
    assert args.flags["MASK_KIND"] == MASK_BOOL and args.flags["HAS_PADDING"] and args.flags["HAS_DROPOUT"]
    assert args.flags["USE_FP64"] and args.flags["EVEN_DQK"] and args.flags["EVEN_DV"]
    additive = kernel_args(AttentionProblem(scale=1.0, attn_mask=torch.zeros(2, 4, 5, 7)), q, k, v)
    assert additive.mask_kind == MASK_ADDITIVE
    with pytest.raises(ValueError, match="seed is required"):
        kernel_args(AttentionProblem(scale=1.0, dropout_p=0.5), q, k, v)


def test_kernel_args_of_score_modifications():
    """Soft-capping moves log2(e) from the scale (tanh takes natural units) onto the cap; an
    unbounded window side becomes a bound no pair reaches; causal masking caps the right side at 0."""
    q, k, v = _qkv()
    slopes = torch.rand(4).expand(2, 4)
    sinks = torch.randn(4)[None, :, None].expand(2, 4, 5)
    problem = AttentionProblem(
        scale=0.5, is_causal=True, softcap=30.0, window=(-1, 5), alibi_slopes=slopes, sinks=sinks
    )
    args = kernel_args(problem, q, k, v)
    runtime = dict(zip(RUNTIME, args.runtime))
    assert math.isclose(runtime["qk_scale"] + runtime["qk_scale_lo"], 0.5 / 30.0, rel_tol=1e-15)
    assert math.isclose(runtime["softcap_scale"] + runtime["softcap_scale_lo"], 30.0 * LOG2E, rel_tol=1e-15)
    assert runtime["window_left"] > 5 + 7 and runtime["window_right"] == 0
    assert runtime["alibi_ptr"] is slopes and (runtime["stride_alibi_batch"], runtime["stride_alibi_head"]) == (0, 1)
    assert runtime["sinks_ptr"] is sinks
    assert (runtime["stride_sinks_batch"], runtime["stride_sinks_head"], runtime["stride_sinks_q"]) == (0, 1, 0)
    assert all(args.flags[f] for f in ("HAS_SOFTCAP", "HAS_ALIBI", "HAS_WINDOW", "HAS_SINKS"))
    plain = kernel_args(AttentionProblem(scale=1.0, window=(3, 2)), q, k, v)
    assert dict(zip(RUNTIME, plain.runtime))["window_right"] == 2  # without causal masking, as given


def test_options_add_the_block_shape_flags():
    q, k, v = _qkv(seqlen_q=32, seqlen_k=40)
    args = kernel_args(AttentionProblem(scale=1.0), q, k, v)
    options = args.options(KernelConfig(16, 16, 2, 1), USE_TMA=False)
    assert (options["EVEN_M"], options["EVEN_N"]) == (True, False)
    assert (options["BLOCK_M"], options["BLOCK_N"], options["num_warps"], options["num_stages"]) == (16, 16, 2, 1)
    assert options["USE_TMA"] is False and options["BLOCK_DQK"] == 32


def test_tf32_only_for_fp32_when_allowed():
    for dtype, allow, expected in [
        (torch.float32, True, "tf32"),
        (torch.float32, False, "ieee"),
        (torch.float16, True, "ieee"),
    ]:
        q, k, v = _qkv(dtype=dtype)
        assert kernel_args(AttentionProblem(scale=1.0, allow_tf32=allow), q, k, v).flags["DOT_PRECISION"] == expected


def test_key_ranges():
    pad = torch.tensor(
        [
            [False] * 6,
            [True, True, False, True, False, True],
            [True] * 6,
        ]
    )
    assert key_ranges(pad).tolist() == [[0, 6], [2, 5], [0, 0]]
    assert key_ranges(pad).dtype == torch.int32
    assert key_ranges(torch.zeros(3, 0, dtype=torch.bool)).tolist() == [[0, 0]] * 3


def test_empty_like_query_follows_a_transposed_query():
    batch, seqlen, heads, dim = 2, 5, 3, 8
    transposed = torch.randn(batch, seqlen, heads, dim).transpose(1, 2)  # a model's [B, N, H, D] projection
    out = empty_like_query(transposed, (batch, heads, seqlen, 16))
    assert out.shape == (batch, heads, seqlen, 16)
    assert out.transpose(1, 2).is_contiguous()  # [B, N, H, D] in memory: reshaping to [B, N, H*D] is free
    plain = empty_like_query(torch.randn(batch, heads, seqlen, dim), (batch, heads, seqlen, 16))
    assert plain.is_contiguous()


def test_check_grid_names_the_limit_and_the_remedy():
    launch.check_grid(65535, 65535)
    with pytest.raises(ValueError, match=r"batch \(65536\).*65535.*split the batch"):
        launch.check_grid(65536, 1)


def test_the_interpreter_calls_helpers_directly_and_computes_the_same():
    """Under the interpreter the kernels' jit helpers skip Triton's per-call re-patching of
    triton.language; the attention results stay exactly those of the unpatched helpers."""
    if not launch.INTERPRETED:
        pytest.skip("only the interpreter's helper calls are changed")
    from triton.runtime.interpreter import InterpretedFunction

    from attnlens.kernels import forward, tiles

    assert isinstance(tiles.score_tile, InterpretedFunction)
    assert type(tiles.score_tile) is not InterpretedFunction  # the direct-call subclass
    assert type(forward._fwd_key_loop) is type(tiles.score_tile)
    q, k, v = (torch.randn(1, 2, 33, 16) for _ in range(3))
    fast = attnlens.scaled_dot_product_attention(q, k, v, is_causal=True, return_weights=True)
    helpers = [
        obj for module in (tiles, forward) for obj in vars(module).values() if type(obj) is type(tiles.score_tile)
    ]
    try:
        for obj in helpers:
            obj.__class__ = InterpretedFunction
        slow = attnlens.scaled_dot_product_attention(q, k, v, is_causal=True, return_weights=True)
    finally:
        for obj in helpers:
            obj.__class__ = launch._DirectHelper
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])
