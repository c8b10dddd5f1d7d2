"""``attnlens.MultiHeadAttention`` on the CPU path (backend ``"torch"``): parity with
``torch.nn.MultiheadAttention`` in every feature combination (tests/test_modules.py's sweep, run on
this path, at a length where every call is computed in a few operations and at one where torch's
fused kernel and the blocks take over), gradients, and the module's fast roads: torch's
inference fast path for unmasked self-attention, one packed input projection when key is value,
and ``is_causal`` without a mask when the mask is exactly the causal mask (else the mask, as torch).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from test_modules import (
    ATTN_MASKS,
    BATCH,
    EMBED,
    EXTRAS,
    HEADS,
    LEN_K,
    LEN_Q,
    MODES,
    PADDINGS,
    WEIGHTS,
    assert_parity,
    attention_mask,
    call,
    forward_kwargs,
    mode_kwargs,
    padding_mask,
    parameter_grads,
    twins,
)

import attnlens
import attnlens.modules as modules
from helpers import DEVICE, assert_rule

pytestmark = pytest.mark.skipif(DEVICE.type != "cpu", reason="the CPU path")


@pytest.fixture(autouse=True)
def torch_backend():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with attnlens.use_backend("torch"):
        yield
    torch.set_num_threads(threads)


def _inputs(mode, dtype, seqlen_q, seqlen_k, batch_first=True, kdim=EMBED, vdim=EMBED):
    def make(length, features):
        t = torch.randn(BATCH, length, features, dtype=dtype)
        return t if batch_first else t.transpose(0, 1).contiguous()

    if mode == "self":
        x = make(seqlen_q, EMBED)
        return x, x, x
    return make(seqlen_q, EMBED), make(seqlen_k, kdim), make(seqlen_k, vdim)


@pytest.mark.parametrize("seqlen", [None, 40], ids=["short", "long"])
@pytest.mark.parametrize("batch_first", [True, False], ids=["bf", "seq_first"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("extras", list(EXTRAS))
def test_parity_sweep(seqlen, batch_first, mode, extras):
    """Every key_padding_mask x attn_mask/is_causal x weights combination, train and eval (with
    and without autograd), against torch's module (fp32, flash-attn's rule against float64)."""
    dtype = torch.float32
    seqlen_q = seqlen or LEN_Q
    seqlen_k = seqlen_q if mode == "self" else (seqlen + 3 if seqlen else LEN_K)
    ours, theirs, exact = twins(dtype, **mode_kwargs(mode, extras, batch_first))
    dims = mode_kwargs(mode, extras, batch_first)
    inputs = _inputs(mode, dtype, seqlen_q, seqlen_k, batch_first, dims.get("kdim", EMBED), dims.get("vdim", EMBED))
    for padding, attn_kind, weights in itertools.product(PADDINGS, ATTN_MASKS, WEIGHTS):
        if attn_kind.startswith("causal") and seqlen_q != seqlen_k:
            continue  # torch's causal mask is square
        kpm = padding_mask(padding, BATCH, seqlen_k, dtype)
        mask = attention_mask(attn_kind, BATCH * HEADS, seqlen_q, seqlen_k, dtype)
        kwargs = forward_kwargs(weights, attn_kind, kpm, mask)
        theirs.eval(), exact.eval()
        expected = call(theirs, inputs, kwargs), call(exact, inputs, kwargs, torch.float64)
        for training, grad in ((False, False), (False, True), (True, True)):
            ours.train(training)
            with torch.set_grad_enabled(grad):
                assert_parity(
                    f"kpm={padding} mask={attn_kind} weights={weights} train={training} grad={grad}",
                    ours,
                    None,
                    None,
                    inputs,
                    kwargs,
                    expected=expected,
                )


GRAD_CASES = [
    # dtype, mode, extras, padding, attn mask, weights, through the weights too, length
    (torch.float64, "self", "plain", "bool", "none", "mean", True, 40),
    (torch.float64, "self", "plain", "bool", "causal_bool", "none", False, 40),
    (torch.float64, "self", "plain", "float", "causal_float", "per_head", True, 40),
    (torch.float32, "kvdim", "both", "none", "float3d", "per_head", True, None),
    (torch.float64, "cross", "bias_kv", "float", "bool2d", "mean", True, 40),
    (torch.float32, "self", "plain", "none", "none", "none", False, 40),
]


@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: "-".join(str(x).replace("torch.", "") for x in c))
def test_gradients_match_torch(case):
    dtype, mode, extras, padding, attn_kind, weights, through_weights, seqlen = case
    dims = mode_kwargs(mode, extras)
    ours, theirs, exact = twins(dtype, **dims)
    seqlen_q = seqlen or LEN_Q
    seqlen_k = seqlen_q if mode == "self" else (seqlen + 3 if seqlen else LEN_K)
    inputs = _inputs(mode, dtype, seqlen_q, seqlen_k, True, dims.get("kdim", EMBED), dims.get("vdim", EMBED))
    kpm = padding_mask(padding, BATCH, seqlen_k, dtype)
    mask = attention_mask(attn_kind, BATCH * HEADS, seqlen_q, seqlen_k, dtype)
    kwargs = forward_kwargs(weights, attn_kind, kpm, mask)
    coef = True if through_weights else None
    got = parameter_grads(ours, inputs, kwargs, weights_coef=coef)
    lowp = parameter_grads(theirs, inputs, kwargs, weights_coef=coef)
    reference = parameter_grads(exact, inputs, kwargs, torch.float64, weights_coef=coef)
    for name in got:
        assert_rule(f"grad {name}", got[name], reference[name], lowp[name], factor=3.0)


def test_fully_masked_rows_give_zero_weights_not_nan():
    ours, _, _ = twins(torch.float32, batch_first=True)
    x = torch.randn(BATCH, 20, EMBED)
    pad = torch.zeros(BATCH, 20, dtype=torch.bool)
    pad[1] = True
    for kwargs in (dict(key_padding_mask=pad), dict(key_padding_mask=pad, need_weights=False)):
        out, w = ours(x, x, x, **kwargs)
        assert torch.isfinite(out).all()
        assert_rule("empty rows: out_proj.bias", out[1], ours.out_proj.bias.expand(20, EMBED), out[1])
        if w is not None:
            assert (w[1] == 0).all()


# ---------------------------------------------------------------------------------------------
# the module's roads


def _spy(monkeypatch, owner, name):
    calls = []
    real = getattr(owner, name)

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return calls


@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("padding", [False, True])
@pytest.mark.parametrize("need_weights", [False, True])
def test_the_causal_mask_is_not_read_when_it_is_the_causal_mask(monkeypatch, kind, padding, need_weights):
    """is_causal=True with the causal mask itself: attention gets is_causal and no mask, and the
    result is torch's; with any other mask the mask is what counts, as in torch's module (whose
    need_weights and padding paths read it)."""
    n = 33
    ours, theirs, exact = twins(torch.float32, batch_first=True)
    x = torch.randn(BATCH, n, EMBED)
    causal = attention_mask(f"causal_{kind}", None, n, n, torch.float32)
    wrong = causal.clone()
    wrong[3, 10] = wrong[0, 0] if kind == "float" else False  # one future key allowed
    wrong[5, 2] = float("-inf") if kind == "float" else True  # one past key blocked
    pad = padding_mask("bool", BATCH, n, torch.float32) if padding else None
    calls = _spy(monkeypatch, modules, "scaled_dot_product_attention")
    for mask, hinted in ((causal, True), (wrong, False)):
        kwargs = dict(attn_mask=mask, is_causal=True, need_weights=need_weights, key_padding_mask=pad)
        calls.clear()
        if not hinted and not padding and not need_weights:
            continue  # torch's own rule then drops the mask whatever it is (tested in test_modules.py)
        with torch.no_grad():
            assert_parity(f"hinted={hinted}", ours, theirs, exact, (x, x, x), kwargs)
        assert calls, "the module did not call attention"
        assert calls[-1]["is_causal"] is hinted
        assert (calls[-1]["attn_mask"] is None) is hinted


def test_the_causal_mask_check_allocates_nothing():
    from torch.profiler import ProfilerActivity, profile

    n = 64
    mask = torch.ones(n, n, dtype=torch.bool).triu(1)
    modules._is_causal_mask(mask[None, None], torch.float32)  # builds the cached pattern
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        assert modules._is_causal_mask(mask[None, None], torch.float32)
    assert not [e for e in prof.events() if e.self_cpu_memory_usage > 0]
    assert not modules._is_causal_mask(mask[None, None, :, :-1], torch.float32)  # not square
    assert not modules._is_causal_mask(mask.t()[None, None], torch.float32)  # not contiguous, not causal
    assert not modules._is_causal_mask(mask.double()[None, None], torch.float32)  # another dtype


FAST_PATH_CALLS = {
    "plain": dict(need_weights=False),
    "weights": dict(need_weights=True),
    "per-head weights": dict(need_weights=True, average_attn_weights=False),
    "causal": dict(need_weights=False, attn_mask="causal", is_causal=True),
    "causal, padding, weights": dict(attn_mask="causal", is_causal=True, key_padding_mask="padding"),
    "padding, weights": dict(key_padding_mask="padding"),
}
SLOW_PATH_CALLS = {
    "a mask other than the causal one": dict(attn_mask="random", need_weights=False),
    "causal with the first key padded": dict(attn_mask="causal", is_causal=True, key_padding_mask="first"),
    "a sequence of padding only": dict(key_padding_mask="all"),
    "float padding": dict(key_padding_mask="float"),
}


def _fast_path_kwargs(kwargs, n):
    kwargs = dict(kwargs)
    if kwargs.get("attn_mask") == "causal":
        kwargs["attn_mask"] = torch.ones(n, n, dtype=torch.bool).triu(1)
    elif kwargs.get("attn_mask") == "random":
        kwargs["attn_mask"] = torch.rand(n, n) > 0.7
    pad = torch.zeros(BATCH, n, dtype=torch.bool)
    pad[0, n - 5 :] = True
    kind = kwargs.get("key_padding_mask")
    if kind == "first":
        pad[1, 0] = True
    elif kind == "all":
        pad[1] = True
    elif kind == "float":
        pad = torch.zeros(BATCH, n).masked_fill(pad, float("-inf"))
    if kind is not None:
        kwargs["key_padding_mask"] = pad
    return kwargs


@pytest.mark.parametrize("name", list(FAST_PATH_CALLS) + list(SLOW_PATH_CALLS))
def test_inference_fast_path_is_taken_where_it_is_exact(monkeypatch, name):
    """Eval, no autograd, small self-attention without a possibly empty row (and weights only in
    fp32/fp64): torch's own fast path (one C++ call), giving what attnlens's path gives; anything
    else stays on attnlens's path."""
    n = 40
    ours, _, _ = twins(torch.float32, batch_first=True)
    ours.eval()
    x = torch.randn(BATCH, n, EMBED)
    kwargs = _fast_path_kwargs(FAST_PATH_CALLS.get(name) or SLOW_PATH_CALLS[name], n)
    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(ours, "_inference_fast_path", lambda *args: None)
        expected = ours(x, x, x, **kwargs)
    calls = _spy(monkeypatch, torch, "_native_multi_head_attention")
    with torch.no_grad():
        got = ours(x, x, x, **kwargs)
    assert len(calls) == (1 if name in FAST_PATH_CALLS else 0)
    for a, b in zip(got, expected):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.isfinite(a).all() and (a - b).abs().max() < 1e-5


def test_inference_fast_path_is_not_taken_otherwise(monkeypatch):
    ours, _, _ = twins(torch.float32, batch_first=True)
    x = torch.randn(BATCH, 40, EMBED)
    calls = _spy(monkeypatch, torch, "_native_multi_head_attention")
    ours.train()
    with torch.no_grad():
        ours(x, x, x, need_weights=False)  # training
    ours.eval()
    ours(x, x, x, need_weights=False)  # autograd on: the parameters require grad
    with torch.no_grad():
        ours(x, x, x.clone(), need_weights=False)  # not self-attention
        big = torch.randn(1, 300, EMBED)  # 2 heads x 300 x 300 scores: above _NATIVE_SMALL
        ours(big, big, big)  # weights of a large problem: attnlens's blocks are faster
        half, _, _ = twins(torch.float16, batch_first=True)
        half.eval()
        xh = x.half()
        half(xh, xh, xh)  # fp16 weights: torch computes them in fp16
    assert calls == []


@pytest.mark.parametrize("mode", ["self", "cross"])
def test_packed_projection_equals_separate_projections(mode):
    """One matrix product for q, k and v (two for cross attention when key is value) gives what
    separate products give."""
    ours, _, _ = twins(torch.float64, batch_first=True)
    x = torch.randn(BATCH, 21, EMBED, dtype=torch.float64)
    memory = torch.randn(BATCH, 17, EMBED, dtype=torch.float64)
    query, key = (x, x) if mode == "self" else (x, memory)
    packed = ours(query, key, key)
    separate = ours(query.clone(), key.clone(), key.clone())
    for a, b in zip(packed, separate):
        assert (a - b).abs().max() < 1e-12
