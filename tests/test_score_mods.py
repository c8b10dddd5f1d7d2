"""Soft-capping, sliding windows, ALiBi and attention sinks (``softcap``, ``window``,
``alibi_slopes``, ``sinks``) on every path, against the float64 oracle: alone and together, with
the masks, both causal alignments, GQA, dropout, both kinds of weights and the gradients (through
the weights and the sinks' share too), on shapes that break naive block ranges."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

import attnlens
from attnlens.kernels import override_config
from helpers import DEVICE, assert_rule, check_grads, make_qkv, max_error, reference

F64 = torch.float64
SMALL_TILES = dict(block_m=16, block_n=16)
# The paths under test (the reference is the oracle itself): the kernels, and the CPU path on
# each of its roads: direct (one block of torch operations), blocked (16-row query blocks, all
# heads at once) and blocked a few heads at a time.
PATHS = ["kernels", "torch", "torch-blocked", "torch-heads"]
_CPU_LAYOUTS = {  # (BLOCK_ELEMENTS, HEAD_LOOP_ELEMENTS, DIRECT_ELEMENTS) of attnlens.blocked
    "torch-blocked": (1 << 9, 1 << 40, 0),
    "torch-heads": (1 << 9, 1 << 10, 0),
}


@contextlib.contextmanager
def on_path(path: str):
    """Run on ``path``: a backend, or the CPU path with the block layout that forces one of its roads."""
    from attnlens import blocked

    backend = "torch" if path.startswith("torch") else path
    knobs = ("BLOCK_ELEMENTS", "HEAD_LOOP_ELEMENTS", "DIRECT_ELEMENTS")
    saved = [getattr(blocked, knob) for knob in knobs]
    for knob, value in zip(knobs, _CPU_LAYOUTS.get(path, saved)):
        setattr(blocked, knob, value)
    try:
        with attnlens.use_backend(backend), override_config(**SMALL_TILES):
            yield
    finally:
        for knob, value in zip(knobs, saved):
            setattr(blocked, knob, value)


def _padding(batch: int, seqlen_k: int) -> torch.Tensor:
    pad = torch.zeros(batch, seqlen_k, dtype=torch.bool, device=DEVICE)
    pad[-1, seqlen_k * 2 // 3 :] = True  # the last element padded at the end
    return pad


def _mods(name: str, heads: int, dtype: torch.dtype):
    """The keyword arguments of one combination of score modifications."""
    generator = torch.Generator().manual_seed(3)
    slopes = (torch.rand(heads, generator=generator) * 0.4 + 0.05).to(DEVICE)
    sinks = (torch.randn(heads, generator=generator) * 2).to(device=DEVICE, dtype=dtype)
    return {
        "softcap": dict(softcap=2.5),
        "window": dict(window=(11, 4)),
        "left": dict(window=(9, -1)),
        "alibi": dict(alibi_slopes=slopes),
        "sinks": dict(sinks=sinks),
        "all": dict(softcap=4.0, window=(13, 2), alibi_slopes=slopes, sinks=sinks),
    }[name]


CASES = [
    # (batch, heads_q, heads_kv, seqlen_q, seqlen_k, head_dim), call keyword arguments
    ((2, 4, 2, 37, 53, 24), dict(is_causal=True)),
    ((1, 3, 3, 53, 37, 40), dict(is_causal=True, causal_alignment="bottom_right")),
    ((2, 2, 1, 97, 97, 16), dict(key_padding_mask="pad")),
    ((1, 2, 2, 33, 70, 59), dict(attn_mask="bool")),
    ((2, 2, 2, 31, 45, 8), dict(attn_mask="float", is_causal=True)),
]


def _call_kwargs(shape, call, mods, dtype):
    batch, heads_q, heads_kv, seqlen_q, seqlen_k, head_dim = shape
    kwargs = dict(call)
    generator = torch.Generator().manual_seed(7)
    if kwargs.get("key_padding_mask") == "pad":
        kwargs["key_padding_mask"] = _padding(batch, seqlen_k)
    if kwargs.get("attn_mask") == "bool":
        kwargs["attn_mask"] = (torch.rand(seqlen_q, seqlen_k, generator=generator) > 0.25).to(DEVICE)
    elif kwargs.get("attn_mask") == "float":
        kwargs["attn_mask"] = torch.randn(batch, 1, seqlen_q, seqlen_k, generator=generator).to(DEVICE, dtype)
    if heads_q != heads_kv:
        kwargs["enable_gqa"] = True
    kwargs.update(_mods(mods, heads_q, dtype))
    return kwargs


@pytest.mark.parametrize("backend", PATHS)
@pytest.mark.parametrize("mods", ["softcap", "window", "left", "alibi", "sinks", "all"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_forward_and_weights_match_the_oracle(backend, mods, case):
    shape, call = CASES[case]
    dtype = torch.float16 if backend == "kernels" and case % 2 else torch.float32
    q, k, v = make_qkv(*shape[:2], *shape[3:], dtype=dtype, heads_kv=shape[2])
    kwargs = _call_kwargs(shape, call, mods, dtype)
    with on_path(backend):
        out, weights = attnlens.scaled_dot_product_attention(q, k, v, return_weights=True, **kwargs)
        _, mean = attnlens.scaled_dot_product_attention(q, k, v, return_weights="mean", **kwargs)
    exact = reference(q, k, v, F64, **kwargs)
    lowp = reference(q, k, v, dtype, **kwargs)
    assert_rule("out", out, exact[0], lowp[0])
    assert_rule("weights", weights, exact[1], lowp[1])
    assert_rule("mean weights", mean, exact[1].mean(1), lowp[1].mean(1))
    if "sinks" not in kwargs:
        real_rows = exact[1].sum(-1) > 0  # rows with something to attend to sum to 1
        assert torch.allclose(weights.double().sum(-1)[real_rows], torch.ones((), dtype=F64), atol=1e-2)


@pytest.mark.parametrize("backend", PATHS)
@pytest.mark.parametrize("mods", ["softcap", "window", "alibi", "sinks", "all"])
@pytest.mark.parametrize("weights", ["per_head", "mean"])
def test_gradients_match_the_oracle(backend, mods, weights):
    """fp32 gradients of a loss on the output and the returned weights, by the 3x rule."""
    shape, call = CASES[0] if mods != "all" else CASES[2]
    q, k, v = make_qkv(*shape[:2], *shape[3:], dtype=torch.float32, heads_kv=shape[2])
    kwargs = _call_kwargs(shape, call, mods, torch.float32)
    kwargs["return_weights"] = True if weights == "per_head" else "mean"
    with on_path(backend):
        check_grads(q, k, v, grad_weights=True, **kwargs)


def test_fp64_gradcheck_through_every_modification():
    """float64 gradcheck of the kernels with soft-capping, ALiBi, a window and sinks at once:
    the gradients of q, k, v and the sinks, through the output, the weights and the sinks' share."""
    torch.manual_seed(1)
    q, k, v = (t.requires_grad_(True) for t in make_qkv(1, 2, 11, 13, 8, F64))
    sinks = torch.randn(2, dtype=F64, device=DEVICE, requires_grad=True)
    slopes = torch.tensor([0.25, 0.5], dtype=F64, device=DEVICE)

    def attention(q, k, v, sinks):
        out, weights, share = attnlens.scaled_dot_product_attention(
            q, k, v, is_causal=True, softcap=3.0, window=(4, -1), alibi_slopes=slopes, sinks=sinks,
            return_weights=True, return_sink_share=True,
        )  # fmt: skip
        return out, weights, share

    with attnlens.use_backend("kernels"), override_config(**SMALL_TILES):
        # fast mode (random projections of the Jacobian): each interpreted call takes a while
        assert torch.autograd.gradcheck(attention, (q, k, v, sinks), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


@pytest.mark.parametrize("backend", PATHS)
def test_sinks_share_completes_each_row_and_gets_its_gradient(backend):
    """The weights over the real keys plus the sink's share sum to 1 per row (a row with nothing
    to attend to is all sink); the share and the sinks' gradient equal the oracle's."""
    q, k, v = make_qkv(2, 4, 29, 41, 16, F64, heads_kv=2)
    pad = torch.zeros(2, 41, dtype=torch.bool, device=DEVICE)
    pad[1] = True  # every key of the second element padded
    kwargs = dict(is_causal=True, enable_gqa=True, key_padding_mask=pad, window=(6, -1))
    grads, results = {}, {}
    for path in (backend, "reference"):
        sinks = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=F64, device=DEVICE, requires_grad=True)
        with on_path(path):
            out, weights, share = attnlens.scaled_dot_product_attention(
                q, k, v, sinks=sinks, return_weights=True, return_sink_share=True, **kwargs
            )
        (out.sum() + (weights * weights).sum() + (share * share).sum()).backward()
        grads[path], results[path] = sinks.grad, (out, weights, share)
    out, weights, share = results[backend]
    assert max_error(weights.sum(-1) + share, torch.ones_like(share)) < 1e-12
    assert torch.equal(share[1], torch.ones_like(share[1])) and not weights[1].any() and not out[1].any()
    for name, got, expected in zip(("out", "weights", "share"), results[backend], results["reference"]):
        assert max_error(got, expected) < 1e-12, name
    assert max_error(grads[backend], grads["reference"]) < 1e-10
    _, mean, mean_share = attnlens.scaled_dot_product_attention(
        q, k, v, sinks=grads[backend].detach(), return_weights="mean", return_sink_share=True, **kwargs
    )
    assert mean_share.shape == (2, 29) and max_error(mean.sum(-1) + mean_share, torch.ones(2, 29)) < 1e-12


@pytest.mark.parametrize("backend", PATHS)
def test_dropout_with_modifications_matches_the_oracle_given_the_same_pattern(backend):
    q, k, v = make_qkv(2, 2, 21, 35, 8, F64)
    kwargs = dict(dropout_p=0.3, is_causal=True, softcap=2.0, window=(5, -1), sinks=torch.zeros(2, dtype=F64))
    with on_path(backend):
        torch.manual_seed(11)
        out, weights = attnlens.scaled_dot_product_attention(q, k, v, return_weights=True, **kwargs)
        torch.manual_seed(11)
        keep = attnlens.dropout_mask(q, k, 0.3)
    expected_out, expected_weights = attnlens.reference.scaled_dot_product_attention(
        q, k, v, return_weights=True, dropout_mask=keep, **kwargs
    )
    assert max_error(out, expected_out) < 1e-12 and max_error(weights, expected_weights) < 1e-12


def test_window_blocks_outside_are_never_read():
    """16 queries aligned bottom-right to 160 keys with a causal window of 40 see keys 104..159 only.
    The keys and values before 96 (whole 16-key blocks outside every row's window) are NaN: the
    forward, the weights and the backward kernels must not read them (causality alone would visit
    every block from key 0, and a NaN value times a zero probability is NaN), and their gradients
    are exactly 0."""
    seqlen_q, seqlen_k, d = 16, 160, 16
    q, k, v = make_qkv(1, 2, seqlen_q, seqlen_k, d, torch.float32)
    kwargs = dict(is_causal=True, causal_alignment="bottom_right", window=(40, 0))
    expected = reference(q, k, v, F64, **kwargs)
    k_dirty, v_dirty = k.clone(), v.clone()
    k_dirty[:, :, :96] = float("nan")
    v_dirty[:, :, :96] = float("nan")
    q, k_dirty, v_dirty = (t.requires_grad_(True) for t in (q, k_dirty, v_dirty))
    with attnlens.use_backend("kernels"), override_config(**SMALL_TILES):
        out, weights = attnlens.scaled_dot_product_attention(q, k_dirty, v_dirty, return_weights=True, **kwargs)
        (out.sum() + weights.pow(2).sum()).backward()
    assert max_error(out, expected[0]) < 1e-5 and max_error(weights, expected[1]) < 1e-6
    for name, grad in (("dq", q.grad), ("dk", k_dirty.grad), ("dv", v_dirty.grad)):
        assert torch.isfinite(grad).all(), name
    assert not k_dirty.grad[:, :, :96].any() and not v_dirty.grad[:, :, :96].any()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(softcap=0.0), ValueError, "softcap must be a positive"),
        (dict(softcap=math.inf), ValueError, "softcap must be a positive"),
        (dict(softcap="30"), TypeError, "softcap must be"),
        (dict(window=(3,)), TypeError, r"window must be \(left, right\)"),
        (dict(window=(3, -2)), ValueError, "right side must be >= 0, or -1"),
        (dict(window=(1.5, 2)), TypeError, "left side must be an int"),
        (dict(sinks=torch.zeros(3)), ValueError, r"sinks must have shape \[Hq\] = \[2\]"),
        (dict(sinks=torch.zeros(2, dtype=torch.int64)), TypeError, "sinks must be a floating point"),
        (dict(alibi_slopes=torch.zeros(2, 3)), ValueError, r"alibi_slopes must have shape \[Hq\] or \[B, Hq\]"),
        (dict(alibi_slopes=torch.zeros(2, requires_grad=True)), ValueError, "alibi_slopes requires grad"),
        (dict(return_sink_share=True), ValueError, "return_sink_share=True needs sinks"),
    ],
)
def test_bad_arguments_are_refused_clearly(kwargs, error, match):
    q, k, v = make_qkv(1, 2, 5, 6, 8, torch.float32)
    with pytest.raises(error, match=match):
        attnlens.scaled_dot_product_attention(q, k, v, **kwargs)


def test_unbounded_window_is_no_window():
    q, k, v = make_qkv(1, 2, 17, 19, 8, F64)
    plain = attnlens.scaled_dot_product_attention(q, k, v, is_causal=True)
    unbounded = attnlens.scaled_dot_product_attention(q, k, v, is_causal=True, window=(-1, -1))
    assert torch.equal(plain, unbounded)
