"""attnlens.MultiHeadAttention against torch.nn.MultiheadAttention, and the teaching modules.

Parity: both modules hold the same parameters (ours loads torch's state_dict) and must return the
same output and weights within flash-attn's rule: torch in float64 is the exact answer, torch in the
input dtype gives the error budget. The full combinatorial sweep (batch_first, self/cross/kdim-vdim
attention, key_padding_mask, attn_mask, is_causal, need_weights, average_attn_weights,
add_bias_kv, add_zero_attn, train/eval) runs on the reference backend; a list of cases that touches
every feature runs the real kernels through Triton's interpreter. Then: unbatched inputs, gradients,
state_dict round trips, grouped-query attention against an explicit expansion, dropout, errors,
fully-masked rows, and SelfAttention / MultiHeadSelfAttention against explicit maths.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import math
import warnings
from typing import Dict, Optional

import pytest
import torch
from torch import nn

import attnlens
from attnlens.modules import MultiHeadAttention, MultiHeadSelfAttention, SelfAttention
from helpers import DEVICE, assert_equal, assert_rule, describe_worst

EMBED, HEADS, KDIM, VDIM = 8, 2, 5, 3
BATCH, LEN_Q, LEN_K = 2, 5, 7

MODES = ("self", "cross", "kvdim")
EXTRAS = {"plain": (False, False), "bias_kv": (True, False), "zero_attn": (False, True), "both": (True, True)}
PADDINGS = ("none", "bool", "float")
ATTN_MASKS = ("none", "bool2d", "float2d", "bool3d", "float3d", "causal_bool", "causal_float")
WEIGHTS = ("none", "mean", "per_head")  # need_weights=False / average / per head


# ----------------------------------------------------------------------------------------------
# building modules, inputs and masks


def torch_module(dtype: torch.dtype, **kwargs) -> nn.MultiheadAttention:
    """torch's module with every parameter random (torch initialises biases to 0, which would hide
    bias bugs)."""
    module = nn.MultiheadAttention(EMBED, HEADS, device=DEVICE, dtype=dtype, **kwargs)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "bias" in name:
                param.normal_(0.0, 0.5)
    return module


def twins(dtype: torch.dtype, **kwargs):
    """(ours, torch in ``dtype``, torch in float64) holding the same parameters."""
    theirs = torch_module(dtype, **kwargs)
    exact = nn.MultiheadAttention(EMBED, HEADS, device=DEVICE, dtype=torch.float64, **kwargs)
    exact.load_state_dict({k: v.to(torch.float64) for k, v in theirs.state_dict().items()})
    ours = MultiHeadAttention(EMBED, HEADS, device=DEVICE, dtype=dtype, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs, exact


def qkv_inputs(mode: str, dtype: torch.dtype, batch: Optional[int] = BATCH, batch_first: bool = True):
    """query, key, value for self attention (one tensor three times, as torch's packed self path
    wants), cross attention, or cross attention with kdim/vdim features. ``batch=None``: unbatched."""

    def make(length, features):
        shape = (length, features) if batch is None else (batch, length, features)
        t = torch.randn(shape, dtype=dtype, device=DEVICE)
        return t if batch is None or batch_first else t.transpose(0, 1).contiguous()

    if mode == "self":
        x = make(LEN_Q, EMBED)
        return x, x, x
    kdim, vdim = (KDIM, VDIM) if mode == "kvdim" else (EMBED, EMBED)
    return make(LEN_Q, EMBED), make(LEN_K, kdim), make(LEN_K, vdim)


def padding_mask(kind: str, batch: Optional[int], seqlen_k: int, dtype: torch.dtype):
    """torch's key_padding_mask: bool True = padding; float added. Key 0 is never padded."""
    if kind == "none":
        return None
    shape = (seqlen_k,) if batch is None else (batch, seqlen_k)
    pad = torch.rand(shape, device=DEVICE) < 0.35
    pad[..., 0] = False
    if kind == "bool":
        return pad
    return (0.5 * torch.randn(shape, dtype=dtype, device=DEVICE)).masked_fill(pad, float("-inf"))


def attention_mask(kind: str, leading: Optional[int], seqlen_q: int, seqlen_k: int, dtype: torch.dtype):
    """torch's attn_mask: bool True = NOT allowed, float added. ``leading`` is B * num_heads for 3-D
    masks. Key 0 is never blocked, so no query is left with nothing to attend to."""
    if kind == "none":
        return None
    if kind.startswith("causal"):
        blocked = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=DEVICE).triu(1)
        if kind == "causal_bool":
            return blocked
        return torch.zeros(seqlen_q, seqlen_k, dtype=dtype, device=DEVICE).masked_fill(blocked, float("-inf"))
    shape = (seqlen_q, seqlen_k) if kind.endswith("2d") else (leading, seqlen_q, seqlen_k)
    blocked = torch.rand(shape, device=DEVICE) < 0.3
    blocked[..., 0] = False
    if kind.startswith("bool"):
        return blocked
    return torch.randn(shape, dtype=dtype, device=DEVICE).masked_fill(blocked, float("-inf"))


def forward_kwargs(weights: str, attn_kind: str, key_padding_mask, attn_mask) -> Dict:
    return dict(
        key_padding_mask=key_padding_mask,
        attn_mask=attn_mask,
        need_weights=weights != "none",
        average_attn_weights=weights == "mean",
        is_causal=attn_kind.startswith("causal"),
    )


def cast(kwargs: Dict, dtype: torch.dtype) -> Dict:
    return {k: (v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in kwargs.items()}


def call(module, inputs, kwargs, dtype: Optional[torch.dtype] = None):
    """Run ``module``; ``dtype`` casts the floating inputs and masks (keeping q is k is v)."""
    if dtype is not None:
        casted = {}
        inputs = [casted.setdefault(id(t), t.to(dtype)) for t in inputs]
        kwargs = cast(kwargs, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's warning about mixed bool/float masks
        return module(*inputs, **kwargs)


def assert_parity(label: str, ours, theirs, exact, inputs, kwargs, factor: float = 2.0, expected=None) -> None:
    """Our (output, weights) against torch's within flash-attn's rule. ``expected``: torch's
    ``((out, weights) in the input dtype, (out, weights) in float64)`` when already computed."""
    out, weights = call(ours, inputs, kwargs)
    if expected is None:
        expected = call(theirs, inputs, kwargs), call(exact, inputs, kwargs, torch.float64)
    (out_lowp, weights_lowp), (out_exact, weights_exact) = expected
    assert out.dtype == out_lowp.dtype and out.shape == out_lowp.shape, label
    assert_rule(f"{label} output", out, out_exact, out_lowp, factor)
    if weights_lowp is None:
        assert weights is None, f"{label}: need_weights=False must return None weights"
    else:
        assert weights is not None and weights.shape == weights_lowp.shape, label
        assert_rule(f"{label} weights", weights, weights_exact, weights_lowp, factor)


def mode_kwargs(mode: str, extras: str = "plain", batch_first: bool = True) -> Dict:
    bias_kv, zero_attn = EXTRAS[extras]
    dims = dict(kdim=KDIM, vdim=VDIM) if mode == "kvdim" else {}
    return dict(batch_first=batch_first, add_bias_kv=bias_kv, add_zero_attn=zero_attn, **dims)


def run_case(dtype, batch_first, mode, extras, padding, attn_kind, weights, training, batched=True):
    """One parity check; the modules and inputs are made from the (fixed) test seed."""
    ours, theirs, exact = twins(dtype, **mode_kwargs(mode, extras, batch_first))
    batch = BATCH if batched else None
    inputs = qkv_inputs(mode, dtype, batch, batch_first)
    seqlen_k = LEN_Q if mode == "self" else LEN_K
    kpm = padding_mask(padding, batch, seqlen_k, dtype)
    leading = (BATCH if batched else 1) * HEADS
    mask = attention_mask(attn_kind, leading, LEN_Q, seqlen_k, dtype)
    kwargs = forward_kwargs(weights, attn_kind, kpm, mask)
    for module in (ours, theirs, exact):
        module.train(training)
    label = f"{dtype} bf={batch_first} {mode} {extras} kpm={padding} mask={attn_kind} w={weights} train={training}"
    grad = contextlib.nullcontext() if training else torch.no_grad()
    with grad:
        assert_parity(label, ours, theirs, exact, inputs, kwargs)


# ----------------------------------------------------------------------------------------------
# parity sweep (reference backend) and kernel coverage


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These tensors are tiny: on a shared 2-core machine torch's intra-op threads only wait on
    each other (a 5x7 softmax took 15 ms with two threads under load, 0.1 ms with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# float64 leaves out batch_first=False (a transpose, dtype-blind) to stay inside the time budget
SWEEP = [
    c
    for c in itertools.product((torch.float32, torch.float64), (True, False), MODES, EXTRAS)
    if c[0] == torch.float32 or c[1]
]


@pytest.mark.parametrize(
    "dtype, batch_first, mode, extras",
    SWEEP,
    ids=lambda v: str(v).replace("torch.", "") if not isinstance(v, bool) else f"bf={v}",
)
def test_parity_sweep_reference(dtype, batch_first, mode, extras):
    """Every key_padding_mask x attn_mask/is_causal x weights combination, in eval and in train
    mode (dropout 0), for one module configuration."""
    ours, theirs, exact = twins(dtype, **mode_kwargs(mode, extras, batch_first))
    inputs = qkv_inputs(mode, dtype, BATCH, batch_first)
    seqlen_k = LEN_Q if mode == "self" else LEN_K
    with attnlens.use_backend("reference"):
        for padding, attn_kind, weights in itertools.product(PADDINGS, ATTN_MASKS, WEIGHTS):
            kpm = padding_mask(padding, BATCH, seqlen_k, dtype)
            mask = attention_mask(attn_kind, BATCH * HEADS, LEN_Q, seqlen_k, dtype)
            kwargs = forward_kwargs(weights, attn_kind, kpm, mask)
            # grad stays enabled, which keeps torch off its inference fast path (slow on a small
            # CPU; test_parity_kernels meets it). With dropout 0 torch computes the same in train
            # and eval mode, so its answer is computed once and ours in both modes.
            theirs.eval(), exact.eval()
            expected = call(theirs, inputs, kwargs), call(exact, inputs, kwargs, torch.float64)
            for training in (False, True):
                ours.train(training)
                assert_parity(
                    f"kpm={padding} mask={attn_kind} weights={weights} train={training}",
                    ours,
                    None,
                    None,
                    inputs,
                    kwargs,
                    expected=expected,
                )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("extras", ["plain", "both"])
def test_unbatched_parity_reference(mode, extras):
    """2-D inputs: key_padding_mask [Nk], attn_mask [Nq, Nk] or [num_heads, Nq, Nk]."""
    dtype = torch.float32
    ours, theirs, exact = twins(dtype, **mode_kwargs(mode, extras))
    inputs = qkv_inputs(mode, dtype, batch=None)
    seqlen_k = LEN_Q if mode == "self" else LEN_K
    with attnlens.use_backend("reference"):
        for padding, attn_kind, weights in itertools.product(PADDINGS, ATTN_MASKS, WEIGHTS):
            kpm = padding_mask(padding, None, seqlen_k, dtype)
            mask = attention_mask(attn_kind, HEADS, LEN_Q, seqlen_k, dtype)
            kwargs = forward_kwargs(weights, attn_kind, kpm, mask)
            assert_parity(
                f"unbatched kpm={padding} mask={attn_kind} weights={weights}", ours, theirs, exact, inputs, kwargs
            )
            out, w = call(ours, inputs, kwargs)
            assert out.shape == (LEN_Q, EMBED)
            if weights != "none":
                keys = seqlen_k + sum(EXTRAS[extras])
                assert w.shape == ((LEN_Q, keys) if weights == "mean" else (HEADS, LEN_Q, keys))


# (dtype, batch_first, mode, extras, key padding, attn_mask, weights, training, batched): together
# these run every feature at least once through the kernels (Triton's interpreter on a CPU).
KERNEL_CASES = [
    (torch.float32, True, "self", "plain", "bool", "none", "mean", False, True),
    (torch.float32, False, "self", "plain", "none", "bool2d", "per_head", True, True),
    (torch.float64, True, "cross", "plain", "float", "float2d", "mean", False, True),
    (torch.float32, False, "kvdim", "plain", "bool", "bool3d", "none", False, True),
    (torch.float32, True, "cross", "bias_kv", "none", "float3d", "per_head", True, True),
    (torch.float32, True, "kvdim", "zero_attn", "bool", "float2d", "mean", False, True),
    (torch.float64, False, "self", "both", "float", "bool3d", "per_head", True, True),
    (torch.float32, True, "self", "plain", "none", "causal_bool", "none", False, True),  # kernel's causal path
    (torch.float32, False, "cross", "both", "none", "causal_float", "none", True, True),  # causal + extra keys
    (torch.float32, True, "self", "plain", "bool", "causal_bool", "mean", False, True),  # mask path
    (torch.float32, True, "cross", "both", "bool", "bool2d", "per_head", False, False),  # unbatched
    (torch.float64, True, "self", "plain", "float", "float3d", "none", True, False),  # unbatched
]


@pytest.mark.parametrize("case", KERNEL_CASES, ids=lambda c: "-".join(str(x).replace("torch.", "") for x in c))
def test_parity_kernels(case):
    assert attnlens.selected_backend(DEVICE) == "kernels"
    run_case(*case)


def test_eval_ignores_dropout_kernels():
    """Dropout acts in training only: in eval a dropout=0.5 module is torch's module."""
    ours, theirs, exact = twins(torch.float32, batch_first=True, dropout=0.5)
    for module in (ours, theirs, exact):
        module.eval()
    x = torch.randn(BATCH, LEN_Q, EMBED, device=DEVICE)
    kpm = padding_mask("bool", BATCH, LEN_Q, torch.float32)
    with torch.no_grad():
        assert_parity("eval dropout=0.5", ours, theirs, exact, (x, x, x), dict(key_padding_mask=kpm))
        first = ours(x, x, x, key_padding_mask=kpm)
        second = ours(x, x, x, key_padding_mask=kpm)
    assert_equal("eval output, second call", second[0], first[0])
    assert_equal("eval weights, second call", second[1], first[1])


# ----------------------------------------------------------------------------------------------
# gradients


def parameter_grads(module, inputs, kwargs, dtype=None, weights_coef=None):
    """Gradients of sum(out * r) (+ sum(weights * s)) for every parameter and the float inputs."""
    casted = {}
    leaves = [
        casted.setdefault(id(t), (t.to(dtype) if dtype else t).detach().clone().requires_grad_(True)) for t in inputs
    ]
    out, weights = call(module, leaves, kwargs, None if dtype is None else dtype)
    g = torch.Generator(device="cpu").manual_seed(1)
    loss = (out * torch.randn(out.shape, generator=g, dtype=torch.float64).to(out)).sum()
    if weights_coef is not None and weights is not None:
        loss = loss + (weights * torch.randn(weights.shape, generator=g, dtype=torch.float64).to(weights)).sum()
    names = [n for n, _ in module.named_parameters()]
    unique = list({id(t): t for t in leaves}.values())
    grads = torch.autograd.grad(loss, [p for _, p in module.named_parameters()] + unique)
    return dict(zip(names + [f"input{i}" for i in range(len(unique))], grads))


GRAD_CASES = [
    # dtype, backend, mode, extras, padding, attn mask, weights, through the weights too
    (torch.float64, "kernels", "self", "plain", "bool", "none", "mean", True),
    (torch.float32, "kernels", "kvdim", "both", "none", "float3d", "per_head", True),
    (torch.float32, "kernels", "self", "plain", "none", "causal_bool", "none", False),
    (torch.float64, "reference", "cross", "bias_kv", "float", "bool2d", "mean", True),
]


@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: "-".join(str(x).replace("torch.", "") for x in c))
def test_gradients_match_torch(case):
    dtype, backend, mode, extras, padding, attn_kind, weights, through_weights = case
    ours, theirs, exact = twins(dtype, **mode_kwargs(mode, extras))
    inputs = qkv_inputs(mode, dtype)
    seqlen_k = LEN_Q if mode == "self" else LEN_K
    kpm = padding_mask(padding, BATCH, seqlen_k, dtype)
    mask = attention_mask(attn_kind, BATCH * HEADS, LEN_Q, seqlen_k, dtype)
    kwargs = forward_kwargs(weights, attn_kind, kpm, mask)
    coef = True if through_weights else None
    with attnlens.use_backend(backend):
        got = parameter_grads(ours, inputs, kwargs, weights_coef=coef)
    lowp = parameter_grads(theirs, inputs, kwargs, weights_coef=coef)
    reference = parameter_grads(exact, inputs, kwargs, torch.float64, weights_coef=coef)
    assert got.keys() == reference.keys()
    for name in got:
        assert_rule(f"grad {name}", got[name], reference[name], lowp[name], factor=3.0)


def test_gradient_reaches_a_learned_float_mask():
    """A float attn_mask that requires grad (a learned bias) gets torch's gradient: attnlens runs
    that call on the differentiable reference path instead of refusing it."""
    ours, theirs, exact = twins(torch.float64, batch_first=True)
    x = torch.randn(BATCH, LEN_Q, EMBED, dtype=torch.float64, device=DEVICE)
    grads = []
    for module in (ours, exact):
        bias = 0.3 * torch.randn(LEN_Q, LEN_Q, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        bias = bias.to(DEVICE).requires_grad_(True)
        out, weights = module(x, x, x, attn_mask=bias, average_attn_weights=False)
        (out.square().sum() + weights.square().sum()).backward()
        grads.append(bias.grad)
    assert_rule("attn_mask grad", grads[0], grads[1], grads[1], factor=3.0)


# ----------------------------------------------------------------------------------------------
# state_dict and construction


STATE_CONFIGS = [
    dict(),
    dict(kdim=KDIM, vdim=VDIM),
    dict(add_bias_kv=True, add_zero_attn=True),
    dict(bias=False),
    dict(kdim=KDIM, bias=False, add_bias_kv=True, batch_first=True),
]


@pytest.mark.parametrize("config", STATE_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_state_dict_round_trips(config):
    """Same seed -> same parameters as torch; state_dicts load both ways, strictly, and the loaded
    module computes what the other one does."""
    torch.manual_seed(7)
    theirs = nn.MultiheadAttention(EMBED, HEADS, device=DEVICE, **config)
    torch.manual_seed(7)
    ours = MultiHeadAttention(EMBED, HEADS, device=DEVICE, **config)
    assert isinstance(ours, nn.MultiheadAttention)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for name, value in theirs.state_dict().items():
        assert_equal(f"initial {name}", ours.state_dict()[name], value)

    fresh_theirs = torch_module(torch.float32, **config)  # torch -> ours
    ours.load_state_dict(fresh_theirs.state_dict())
    back = nn.MultiheadAttention(EMBED, HEADS, device=DEVICE, **config)  # ours -> torch
    back.load_state_dict(ours.state_dict())
    for name, value in fresh_theirs.state_dict().items():
        assert_equal(f"round trip {name}", back.state_dict()[name], value)

    mode = "kvdim" if "kdim" in config else "cross"
    q, k, v = qkv_inputs(mode, torch.float32, batch_first=config.get("batch_first", False))
    if "kdim" in config and "vdim" not in config:
        v = torch.randn(*v.shape[:-1], EMBED, device=DEVICE)
    exact = copy.deepcopy(back).double()
    with attnlens.use_backend("reference"):
        assert_parity("after the round trip", ours, back, exact, (q, k, v), {})


def test_constructor_arguments_are_torchs():
    with pytest.raises(ValueError):
        MultiHeadAttention(0, 2)
    with pytest.raises(AssertionError):
        MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match="num_kv_heads"):
        MultiHeadAttention(8, 4, num_kv_heads=3)
    with pytest.raises(TypeError, match="num_kv_heads"):
        MultiHeadAttention(8, 4, num_kv_heads=2.0)
    module = MultiHeadAttention(8, 2, 0.1, False, True, True, 5, 3, True, None, torch.float64)
    assert (module.dropout, module.in_proj_bias, module.add_zero_attn) == (0.1, None, True)
    assert (module.kdim, module.vdim) == (5, 3)
    assert module.batch_first and module.bias_k.dtype == torch.float64 and module.num_kv_heads == 2
    assert "MultiHeadAttention" in attnlens.__all__ and attnlens.MultiHeadAttention is MultiHeadAttention


# ----------------------------------------------------------------------------------------------
# grouped-query attention


def expanded_torch_module(ours: MultiHeadAttention) -> nn.MultiheadAttention:
    """torch's module equal to ``ours`` (grouped) with every key/value head repeated for its query
    heads: query head h reads key/value head h // (num_heads // num_kv_heads)."""
    group = ours.num_heads // ours.num_kv_heads
    d = ours.head_dim

    def expand(rows: torch.Tensor) -> torch.Tensor:  # [kv_heads * d, ...] -> [heads * d, ...]
        return rows.unflatten(0, (ours.num_kv_heads, d)).repeat_interleave(group, dim=0).flatten(0, 1)

    theirs = nn.MultiheadAttention(
        ours.embed_dim,
        ours.num_heads,
        kdim=ours.kdim,
        vdim=ours.vdim,
        bias=ours.in_proj_bias is not None,
        add_bias_kv=ours.bias_k is not None,
        add_zero_attn=ours.add_zero_attn,
        batch_first=ours.batch_first,
        device=DEVICE,
        dtype=torch.float64,
    )
    e, kv = ours.embed_dim, ours.num_kv_heads * d
    state = {"out_proj.weight": ours.out_proj.weight, "out_proj.bias": ours.out_proj.bias}
    weights = [ours.q_proj_weight, expand(ours.k_proj_weight), expand(ours.v_proj_weight)]
    if theirs.in_proj_weight is not None:
        state["in_proj_weight"] = torch.cat(weights)
    else:
        state.update(q_proj_weight=weights[0], k_proj_weight=weights[1], v_proj_weight=weights[2])
    if ours.in_proj_bias is not None:
        b_q, b_k, b_v = ours.in_proj_bias.split([e, kv, kv])
        state["in_proj_bias"] = torch.cat([b_q, expand(b_k), expand(b_v)])
    else:
        state = {k: v for k, v in state.items() if k != "out_proj.bias"}
    if ours.bias_k is not None:
        state["bias_k"] = expand(ours.bias_k[0, 0])[None, None]
        state["bias_v"] = expand(ours.bias_v[0, 0])[None, None]
    theirs.load_state_dict({k: v.detach().to(torch.float64) for k, v in state.items()})
    return theirs


GQA_CASES = [
    # num_kv_heads, kdim/vdim, add_bias_kv, add_zero_attn, backend, padding, attn mask, weights
    (2, False, False, False, "kernels", "bool", "bool2d", "per_head"),
    (1, True, True, True, "kernels", "none", "causal_bool", "none"),
    (2, True, True, False, "reference", "float", "float3d", "mean"),
    (1, False, False, True, "reference", "bool", "none", "per_head"),
]


@pytest.mark.parametrize("case", GQA_CASES, ids=lambda c: "-".join(map(str, c)))
def test_grouped_query_attention_matches_explicit_expansion(case):
    kv_heads, kvdim, bias_kv, zero_attn, backend, padding, attn_kind, weights = case
    heads = 4
    dims = dict(kdim=KDIM, vdim=VDIM) if kvdim else {}
    ours = MultiHeadAttention(
        EMBED,
        heads,
        batch_first=True,
        add_bias_kv=bias_kv,
        add_zero_attn=zero_attn,
        num_kv_heads=kv_heads,
        device=DEVICE,
        **dims,
    )
    kv_dim = kv_heads * (EMBED // heads)
    assert ours.in_proj_weight is None and ours.k_proj_weight.shape == (kv_dim, ours.kdim)
    assert ours.in_proj_bias.shape == (EMBED + 2 * kv_dim,)
    with torch.no_grad():
        for name, param in ours.named_parameters():
            if "bias" in name:
                param.normal_(0.0, 0.5)
    theirs = expanded_torch_module(ours)
    q, k, v = qkv_inputs("kvdim" if kvdim else "cross", torch.float32)
    kpm = padding_mask(padding, BATCH, LEN_K, torch.float32)
    mask = attention_mask(attn_kind, BATCH * heads, LEN_Q, LEN_K, torch.float32)
    kwargs = forward_kwargs(weights, attn_kind, kpm, mask)
    with attnlens.use_backend(backend):
        out, w = call(ours, (q, k, v), kwargs)
    expected, expected_w = call(theirs, (q, k, v), kwargs, torch.float64)
    theirs32 = expanded_torch_module(ours).float()
    lowp_out, lowp_w = call(theirs32, (q, k, v), kwargs)
    assert_rule("GQA output", out, expected, lowp_out)
    if weights == "none":
        assert w is None
    else:
        assert_rule("GQA weights", w, expected_w, lowp_w)


def test_grouped_state_dict_has_torch_names_but_not_its_shapes():
    ours = MultiHeadAttention(EMBED, 4, num_kv_heads=2, add_bias_kv=True)
    theirs = nn.MultiheadAttention(EMBED, 4, kdim=EMBED + 1, add_bias_kv=True)  # torch's separate-weights layout
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    with pytest.raises(RuntimeError, match="size mismatch"):
        ours.load_state_dict(nn.MultiheadAttention(EMBED, 4, add_bias_kv=True).state_dict())
    twin = MultiHeadAttention(EMBED, 4, num_kv_heads=2, add_bias_kv=True)
    twin.load_state_dict(ours.state_dict())
    for name, value in ours.state_dict().items():
        assert_equal(name, twin.state_dict()[name], value)


# ----------------------------------------------------------------------------------------------
# dropout


def projected_values(module: MultiHeadAttention, x: torch.Tensor) -> torch.Tensor:
    """[B, H, N, D] values of self attention on batch-first ``x``, without bias_kv/zero_attn."""
    _, _, w_v = module.in_proj_weight.chunk(3)
    _, _, b_v = module.in_proj_bias.chunk(3)
    return (x @ w_v.T + b_v).unflatten(-1, (module.num_heads, module.head_dim)).transpose(1, 2)


@pytest.mark.parametrize("backend", ["kernels", "torch", "reference"])
def test_dropout_in_training(backend):
    """Train-mode weights are the eval weights with entries dropped (zeroed) and the rest scaled by
    1 / (1 - p), as torch's; the output is computed from exactly those weights; a seed reproduces
    them; 'mean' is the mean of the same per-head draw."""
    p, n = 0.4, 16
    ours, theirs, _ = twins(torch.float64, batch_first=True, dropout=p)
    x = torch.randn(BATCH, n, EMBED, dtype=torch.float64, device=DEVICE)
    with attnlens.use_backend(backend), torch.no_grad():
        ours.eval()
        _, eval_w = ours(x, x, x, average_attn_weights=False)
        ours.train()
        torch.manual_seed(11)
        out, w = ours(x, x, x, average_attn_weights=False)
        torch.manual_seed(11)
        out_again, w_again = ours(x, x, x, average_attn_weights=False)
        torch.manual_seed(11)
        _, w_mean = ours(x, x, x)
        torch.manual_seed(11)
        out_no_weights, none = ours(x, x, x, need_weights=False)
        torch.manual_seed(12)
        out_other, _ = ours(x, x, x, average_attn_weights=False)
        torch.manual_seed(11)  # the pattern the attention call inside the module drew
        heads_shape = (BATCH, HEADS, n, EMBED // HEADS)
        keep = attnlens.dropout_mask(x.new_empty(heads_shape), x.new_empty(heads_shape), p)
    assert_equal("same seed, output", out_again, out)
    assert_equal("same seed, weights", w_again, w)
    assert none is None
    assert_rule("need_weights=False output, same seed", out_no_weights, out, out)
    assert_rule("'mean' weights = mean of the per-head draw", w_mean, w.mean(dim=1), w.mean(dim=1))
    assert not torch.equal(out_other, out), "a different seed must draw a different dropout pattern"

    kept = w != 0
    assert_equal("dropped entries = attnlens.dropout_mask's pattern", kept, keep)
    assert_rule("kept weights = eval weights / (1 - p)", w[kept], eval_w[kept] / (1 - p), eval_w[kept] / (1 - p))
    dropped = 1.0 - kept.double().mean().item()
    assert abs(dropped - p) < 0.06, f"dropped fraction {dropped:.3f}, expected about {p}"
    row_sums = w.sum(-1)
    assert abs(row_sums.mean().item() - 1.0) < 0.1, "dropout must keep each row's expected sum at 1"
    v = projected_values(ours, x)
    expected = (w @ v).transpose(1, 2).flatten(2) @ ours.out_proj.weight.T + ours.out_proj.bias
    assert_rule("output from the returned weights", out, expected, expected)

    theirs.train()  # torch's weights obey the same relation
    _, torch_w = theirs(x, x, x, average_attn_weights=False)
    torch_kept = torch_w != 0
    assert_rule(
        "torch: kept weights = eval weights / (1 - p)",
        torch_w[torch_kept],
        eval_w[torch_kept] / (1 - p),
        eval_w[torch_kept] / (1 - p),
    )


# ----------------------------------------------------------------------------------------------
# errors and warnings: the same exception types as torch


def _raised(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - we compare the types
        return type(exc)
    return None


def _zeros(*shape, dtype):
    return torch.zeros(shape, dtype=dtype, device=DEVICE)


ERROR_CASES = {
    "is_causal without attn_mask": dict(is_causal=True),
    "int attn_mask": dict(attn_mask=_zeros(LEN_Q, LEN_Q, dtype=torch.int64)),
    "int key_padding_mask": dict(key_padding_mask=_zeros(BATCH, LEN_Q, dtype=torch.int64)),
    "2-D attn_mask of the wrong shape": dict(attn_mask=_zeros(LEN_Q, LEN_Q + 1, dtype=torch.bool)),
    "3-D attn_mask of the wrong shape": dict(attn_mask=_zeros(HEADS, LEN_Q, LEN_Q, dtype=torch.bool)),
    "4-D attn_mask": dict(attn_mask=_zeros(1, 1, LEN_Q, LEN_Q, dtype=torch.bool)),
    "1-D key_padding_mask for batched inputs": dict(key_padding_mask=_zeros(LEN_Q, dtype=torch.bool)),
    "key_padding_mask of the wrong length": dict(key_padding_mask=_zeros(BATCH, LEN_Q + 1, dtype=torch.bool)),
    "float64 mask, float32 query": dict(attn_mask=_zeros(LEN_Q, LEN_Q, dtype=torch.float64)),
    "float64 mask, float32 query, no weights": dict(
        attn_mask=_zeros(LEN_Q, LEN_Q, dtype=torch.float64), need_weights=False
    ),
}


@pytest.mark.parametrize("name", list(ERROR_CASES))
def test_errors_match_torch(name):
    ours, theirs, _ = twins(torch.float32, batch_first=True)
    ours.train(), theirs.train()  # torch's inference fast path skips some checks
    x = torch.randn(BATCH, LEN_Q, EMBED, device=DEVICE)
    kwargs = ERROR_CASES[name]
    expected = _raised(lambda: theirs(x, x, x, **kwargs))
    assert expected is not None, f"torch accepts {name}"
    with attnlens.use_backend("reference"):
        assert _raised(lambda: ours(x, x, x, **kwargs)) is expected


def test_shape_errors_match_torch():
    ours, theirs, _ = twins(torch.float32, batch_first=True, kdim=KDIM, vdim=VDIM)
    ours2, theirs2, _ = twins(torch.float32)
    q, k, v = qkv_inputs("kvdim", torch.float32)
    bad = {
        "4-D query": (ours, theirs, (q[None], k, v), {}),
        "2-D key with 3-D query": (ours, theirs, (q, k[0], v), {}),
        "wrong kdim": (ours, theirs, (q, v, v), {}),
        "wrong embed_dim": (ours, theirs, (k, k, v), {}),
        "key and value lengths differ": (ours, theirs, (q, k, v[:, :-1]), {}),
        "packed key/value shapes differ": (ours2, theirs2, (q, q, q[:-1]), {}),
        "unbatched 3-D mask of the wrong shape": (
            ours2,
            theirs2,
            (q[0], q[0], q[0]),
            dict(attn_mask=torch.zeros(BATCH * HEADS, LEN_Q, LEN_Q)),
        ),
    }
    with attnlens.use_backend("reference"):
        for name, (mine, torchs, inputs, kwargs) in bad.items():
            expected = _raised(functools.partial(torchs, *inputs, **kwargs))
            assert expected is not None, f"torch accepts {name}"
            assert _raised(functools.partial(mine, *inputs, **kwargs)) is expected, name


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_batch_and_device_errors_match_torch(batch_first, training):
    """torch's module never broadcasts the batch (attnlens's functional API does, as torch's SDPA)
    and fails on a key or value on another device: RuntimeError exactly, in training and inference.
    (With a meta tensor torch fails on its need_weights=False path; its need_weights=True path lets
    meta through and returns meaningless values, which attnlens refuses as well.)"""
    ours, theirs, _ = twins(torch.float32, batch_first=batch_first)
    ours.train(training), theirs.train(training)
    dim = 0 if batch_first else 1
    x = torch.randn(BATCH, LEN_Q, EMBED, device=DEVICE)
    if not batch_first:
        x = x.transpose(0, 1)
    one = x.narrow(dim, 0, 1)
    bigger = torch.cat([x, one], dim=dim)
    cases = {
        "key and value batch 1": (x, one, one),
        "query batch 1": (one, x, x),
        "key and value batch larger": (x, bigger, bigger),
        "key on another device": (x, x.to("meta"), x),
        "value on another device": (x, x, x.to("meta")),
    }
    context = contextlib.nullcontext() if training else torch.no_grad()
    with context:
        for name, inputs in cases.items():
            expected = _raised(functools.partial(theirs, *inputs, need_weights=False))
            assert expected is RuntimeError, f"torch: {name} raised {expected}"
            for backend, need_weights in itertools.product(("kernels", "reference"), (True, False)):
                with attnlens.use_backend(backend):
                    raised = _raised(functools.partial(ours, *inputs, need_weights=need_weights))
                assert raised is RuntimeError, f"{name} ({backend}, need_weights={need_weights}): {raised}"


def test_masks_on_another_device_are_refused_with_torchs_type():
    """A deliberate difference: torch's module runs with a mask on another device (its CPU path
    then returns values that are not the masked attention, and weights on the mask's device);
    attnlens refuses it with the RuntimeError torch raises for every other device mismatch."""
    ours, theirs, _ = twins(torch.float32, batch_first=True)
    x = torch.randn(BATCH, LEN_Q, EMBED, device=DEVICE)
    masks = {
        "attn_mask": torch.zeros(LEN_Q, LEN_Q, device="meta"),
        "key_padding_mask": torch.zeros(BATCH, LEN_Q, dtype=torch.bool, device="meta"),
    }
    for name, mask in masks.items():
        assert _raised(functools.partial(theirs, x, x, x, **{name: mask})) is None, f"torch now refuses {name}"
        with pytest.raises(RuntimeError, match=f"{name} must be on the query's device") as info:
            ours(x, x, x, **{name: mask})
        assert type(info.value) is RuntimeError


def test_mixed_mask_dtypes_warn_like_torch():
    ours, theirs, _ = twins(torch.float32, batch_first=True)
    x = torch.randn(BATCH, LEN_Q, EMBED, device=DEVICE)
    kwargs = dict(
        key_padding_mask=padding_mask("bool", BATCH, LEN_Q, torch.float32),
        attn_mask=attention_mask("float2d", None, LEN_Q, LEN_Q, torch.float32),
    )
    for module in (theirs, ours):
        with pytest.warns(UserWarning):
            module(x, x, x, **kwargs)


def test_float32_mask_with_float64_query_without_weights_is_accepted_like_torch():
    ours, theirs, exact = twins(torch.float64, batch_first=True)
    x = torch.randn(BATCH, LEN_Q, EMBED, dtype=torch.float64, device=DEVICE)
    mask = attention_mask("float2d", None, LEN_Q, LEN_Q, torch.float32)
    with attnlens.use_backend("reference"):
        out, _ = ours(x, x, x, attn_mask=mask, need_weights=False)
    expected, _ = theirs(x, x, x, attn_mask=mask, need_weights=False)
    assert_rule("output", out, expected, expected.float())


# ----------------------------------------------------------------------------------------------
# the one deliberate difference: rows with nothing to attend to


@pytest.mark.parametrize("backend", ["kernels", "reference"])
def test_fully_masked_rows_give_zero_weights_not_nan(backend):
    ours, theirs, exact = twins(torch.float32, batch_first=True)
    x = torch.randn(BATCH, LEN_Q, EMBED, device=DEVICE)
    kpm = padding_mask("bool", BATCH, LEN_Q, torch.float32)
    kpm[1] = True  # sequence 1 has no key left
    kwargs = dict(key_padding_mask=kpm, average_attn_weights=False)
    with attnlens.use_backend(backend):
        out, weights = ours(x, x, x, **kwargs)
    torch_out, torch_w = theirs(x, x, x, **kwargs)
    assert torch.isnan(torch_out[1]).all() and torch.isnan(torch_w[1]).all()  # torch's behaviour
    assert_equal("weights of the empty sequence", weights[1], torch.zeros_like(weights[1]))
    assert_rule(
        "output of the empty sequence = out_proj.bias",
        out[1],
        ours.out_proj.bias.double().expand(LEN_Q, EMBED),
        ours.out_proj.bias.expand(LEN_Q, EMBED),
    )
    exact_out, exact_w = call(exact, (x, x, x), kwargs, torch.float64)
    assert_rule("other sequence output", out[0], exact_out[0], torch_out[0])
    assert_rule("other sequence weights", weights[0], exact_w[0], torch_w[0])


# ----------------------------------------------------------------------------------------------
# score modifications: softcap, window, alibi_slopes, sinks


def modified_by_hand(module: MultiHeadAttention, x: torch.Tensor, pad: Optional[torch.Tensor], causal: bool):
    """What the module must compute, in float64: its own projections, then the float64 oracle
    with the same modifications (masks in SDPA's convention: True = attend)."""
    e, h = module.embed_dim, module.num_heads
    x = x.double()
    w, b = module.in_proj_weight.double(), module.in_proj_bias.double()
    q, k, v = (torch.nn.functional.linear(x, w[i * e : (i + 1) * e], b[i * e : (i + 1) * e]) for i in range(3))
    q, k, v = (t.unflatten(-1, (h, e // h)).transpose(1, 2) for t in (q, k, v))
    allowed = None
    if pad is not None:
        allowed = ~pad[:, None, None, :]
    if causal:
        causal_allowed = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool, device=x.device).tril()
        allowed = causal_allowed if allowed is None else allowed & causal_allowed
    out, weights = attnlens.reference.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=allowed,
        return_weights=True,
        softcap=module.softcap,
        window=module.window,
        alibi_slopes=None if module.alibi_slopes is None else module.alibi_slopes.double(),
        sinks=None if module.sinks is None else module.sinks.double(),
    )
    out = out.transpose(1, 2).flatten(-2)
    out = torch.nn.functional.linear(out, module.out_proj.weight.double(), module.out_proj.bias.double())
    return out, weights


MODS = {
    "softcap": dict(softcap=0.7),
    "window": dict(window=(2, 1)),
    "alibi": dict(alibi_slopes=torch.tensor([0.5, 0.125])),
    "sinks": dict(sinks=True),
    "all": dict(softcap=1.5, window=(3, 0), alibi_slopes=torch.tensor([0.25, 1.0]), sinks=True),
}


@pytest.mark.parametrize("backend", ["kernels", "torch", "reference"])
@pytest.mark.parametrize("mods", list(MODS))
def test_score_modifications_are_the_functional_ones(backend, mods):
    """The module with each modification = its projections through the oracle with the same
    arguments, in eval (torch's fast path must not be taken) and training (no dropout), with key
    padding, the causal hint and weights per head and averaged."""
    torch.manual_seed(0)
    ours = MultiHeadAttention(EMBED, HEADS, batch_first=True, device=DEVICE, **MODS[mods])
    with torch.no_grad():
        ours.in_proj_bias.normal_(0.0, 0.5)
        ours.out_proj.bias.normal_(0.0, 0.5)
        if ours.sinks is not None:
            ours.sinks.copy_(torch.tensor([0.3, -1.0]))
    x = torch.randn(BATCH, LEN_K, EMBED, device=DEVICE)
    pad = padding_mask("bool", BATCH, LEN_K, torch.float32)
    causal_mask = nn.Transformer.generate_square_subsequent_mask(LEN_K, device=DEVICE, dtype=torch.bool)
    for training, kwargs in itertools.product(
        (False, True),
        (
            dict(need_weights=False),
            dict(key_padding_mask=pad, average_attn_weights=False),
            dict(attn_mask=causal_mask, is_causal=True, key_padding_mask=pad),
        ),
    ):
        ours.train(training)
        with attnlens.use_backend(backend):
            out, weights = ours(x, x, x, **kwargs)
        exact_out, exact_w = modified_by_hand(ours, x, kwargs.get("key_padding_mask"), "attn_mask" in kwargs)
        name = f"{mods}, training={training}, {sorted(kwargs)}"
        torch.testing.assert_close(
            out.double(), exact_out, atol=2e-5, rtol=2e-5, msg=functools.partial("{0} output: {1}".format, name)
        )
        if kwargs.get("need_weights", True):
            expected = exact_w.mean(1) if kwargs.get("average_attn_weights", True) else exact_w
            torch.testing.assert_close(
                weights.double(), expected, atol=2e-6, rtol=2e-5, msg=functools.partial("{0} weights: {1}".format, name)
            )
        else:
            assert weights is None


@pytest.mark.parametrize("backend", ["kernels", "torch"])
def test_learned_sinks_get_gradients_and_live_in_the_state_dict(backend):
    torch.manual_seed(1)
    ours = MultiHeadAttention(EMBED, HEADS, batch_first=True, device=DEVICE, sinks=True, alibi_slopes=torch.ones(HEADS))
    assert "sinks" in ours.state_dict() and "alibi_slopes" not in ours.state_dict()
    x = torch.randn(BATCH, LEN_Q, EMBED, device=DEVICE, dtype=torch.float64)
    ours = ours.double()
    with attnlens.use_backend(backend):
        out, weights = ours(x, x, x, need_weights=True)
        (out.square().sum() + weights.square().sum()).backward()
    got = ours.sinks.grad.clone()
    ours.sinks.grad = None
    exact_out, exact_w = modified_by_hand(ours, x, None, False)
    (exact_out.square().sum() + exact_w.mean(1).square().sum()).backward()
    torch.testing.assert_close(got, ours.sinks.grad, atol=1e-10, rtol=1e-8)
    assert bool((weights.sum(-1) < 1).all())  # the sink takes its share of every row
    plain = MultiHeadAttention(EMBED, HEADS, device=DEVICE)
    with pytest.raises(RuntimeError, match="sinks"):
        plain.load_state_dict(ours.state_dict())  # strict: the unexpected key is named
    clone = copy.deepcopy(ours)
    assert clone.sinks is not None and clone.window is None and "sinks=True" in repr(clone)


SCORE_MOD_ERRORS = {
    "softcap": (dict(softcap=-1.0), ValueError, "softcap must be a positive"),
    "window": (dict(window=(1,)), TypeError, "window must be"),
    "alibi shape": (dict(alibi_slopes=torch.ones(3)), ValueError, r"alibi_slopes must be .*\[num_heads\] = \[2\]"),
    "alibi type": (dict(alibi_slopes=[1.0, 2.0]), TypeError, "alibi_slopes must be a tensor"),
    "sinks": (dict(sinks=1), TypeError, "sinks must be a bool"),
    "window with bias_kv": (dict(window=(1, 1), add_bias_kv=True), ValueError, "window measure distances"),
    "alibi with zero_attn": (dict(alibi_slopes=torch.ones(2), add_zero_attn=True), ValueError, "alibi_slopes measure"),
}


@pytest.mark.parametrize("name", list(SCORE_MOD_ERRORS))
def test_score_modification_errors(name):
    kwargs, error, message = SCORE_MOD_ERRORS[name]
    with pytest.raises(error, match=message):
        MultiHeadAttention(EMBED, HEADS, **kwargs)


# ----------------------------------------------------------------------------------------------
# teaching modules


def explicit_attention(q, k, v, allowed=None, additive=None):
    """softmax(q k^T / sqrt(d) + mask) v in float64; ``allowed`` bool True = attend."""
    q, k, v = q.double(), k.double(), v.double()
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if additive is not None:
        scores = scores + additive.double()
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    weights = scores.softmax(-1)
    return weights @ v, weights


@pytest.mark.parametrize("backend", ["kernels", "reference"])
def test_self_attention_is_the_explicit_maths(backend):
    module = SelfAttention(EMBED, 6).to(DEVICE)
    x = torch.randn(BATCH, LEN_Q, EMBED, device=DEVICE)
    allowed = torch.rand(BATCH, LEN_Q, LEN_Q, device=DEVICE) < 0.7
    allowed[..., 0] = True
    additive = torch.randn(LEN_Q, LEN_Q, device=DEVICE)
    q, k, v = module.query(x), module.key(x), module.value(x)
    with attnlens.use_backend(backend):
        cases = [
            (module(x), explicit_attention(q, k, v)),
            (module(x, allowed), explicit_attention(q, k, v, allowed=allowed)),
            (module(x, additive), explicit_attention(q, k, v, additive=additive)),
            (module(x[0], allowed[0]), explicit_attention(q[0], k[0], v[0], allowed=allowed[0])),
        ]
    for (out, weights), (expected, expected_w) in cases:
        assert out.shape == expected.shape and weights.shape == expected_w.shape
        assert_rule("SelfAttention output", out, expected, expected.float())
        assert_rule("SelfAttention weights", weights, expected_w, expected_w.float())
        assert torch.allclose(weights.sum(-1), weights.new_ones(()), atol=1e-5)


def torch_twin_of(module: MultiHeadSelfAttention) -> nn.MultiheadAttention:
    theirs = nn.MultiheadAttention(
        module.embed_dim, module.num_heads, batch_first=True, device=DEVICE, dtype=torch.float64
    )
    theirs.load_state_dict(
        {
            "in_proj_weight": torch.cat([module.q_proj.weight, module.k_proj.weight, module.v_proj.weight]).double(),
            "in_proj_bias": torch.cat([module.q_proj.bias, module.k_proj.bias, module.v_proj.bias]).double(),
            "out_proj.weight": module.out_proj.weight.double(),
            "out_proj.bias": module.out_proj.bias.double(),
        }
    )
    return theirs


@pytest.mark.parametrize("backend", ["kernels", "reference"])
def test_multi_head_self_attention_is_the_explicit_maths(backend):
    heads = 2
    module = MultiHeadSelfAttention(EMBED, heads).to(DEVICE)
    x = torch.randn(BATCH, LEN_Q, EMBED, device=DEVICE)
    pad = padding_mask("bool", BATCH, LEN_Q, torch.float32)
    allowed = torch.rand(BATCH, LEN_Q, LEN_Q, device=DEVICE) < 0.7
    allowed[..., 0] = True
    causal = torch.ones(LEN_Q, LEN_Q, dtype=torch.bool, device=DEVICE).tril()

    def split(t):
        return t.unflatten(-1, (heads, EMBED // heads)).transpose(-3, -2)

    q, k, v = split(module.q_proj(x)), split(module.k_proj(x)), split(module.v_proj(x))

    def explicit(allowed4):
        heads_out, w = explicit_attention(q, k, v, allowed=allowed4)
        concatenated = heads_out.transpose(1, 2).flatten(2)
        return concatenated @ module.out_proj.weight.double().T + module.out_proj.bias.double(), w

    with attnlens.use_backend(backend):
        got = [module(x), module(x, mask=allowed), module(x, key_padding_mask=pad, is_causal=True)]
    expected = [explicit(None), explicit(allowed[:, None]), explicit(~pad[:, None, None, :] & causal)]
    for (out, weights), (e_out, e_w) in zip(got, expected):
        assert out.shape == (BATCH, LEN_Q, EMBED) and weights.shape == (BATCH, heads, LEN_Q, LEN_Q)
        assert_rule("MultiHeadSelfAttention output", out, e_out, e_out.float())
        assert_rule("MultiHeadSelfAttention weights", weights, e_w, e_w.float())
    # and it is torch's module in disguise (torch's padding convention, per-head weights)
    torch_out, torch_w = torch_twin_of(module)(
        x.double(), x.double(), x.double(), key_padding_mask=pad, average_attn_weights=False
    )
    with attnlens.use_backend(backend):
        out, weights = module(x, key_padding_mask=pad)
    assert_rule("vs nn.MultiheadAttention output", out, torch_out, torch_out.float())
    assert_rule("vs nn.MultiheadAttention weights", weights, torch_w, torch_w.float())


def test_multi_head_self_attention_unbatched_and_dropout():
    module = MultiHeadSelfAttention(EMBED, 2, dropout=0.5).to(DEVICE)
    x = torch.randn(LEN_Q, EMBED, device=DEVICE)
    with attnlens.use_backend("reference"):
        module.eval()
        out, weights = module(x)
        batched_out, batched_w = module(x[None])
        module.train()
        torch.manual_seed(5)
        train_out, train_w = module(x)
        torch.manual_seed(5)
        again_out, _ = module(x)
    assert out.shape == (LEN_Q, EMBED) and weights.shape == (2, LEN_Q, LEN_Q)
    assert_rule("unbatched = batch of one", out, batched_out[0].double(), batched_out[0])
    assert_equal("seeded dropout", again_out, train_out)
    kept = train_w != 0
    assert 0 < kept.sum() < kept.numel(), describe_worst(train_w, weights)
    assert_rule("kept weights scaled by 2", train_w[kept], 2 * weights[kept].double(), 2 * weights[kept])
