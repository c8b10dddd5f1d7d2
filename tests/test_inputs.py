"""Bad arguments raise TypeError/ValueError naming the argument, what it got and what it expects,
identically on the kernel path and on the reference path. Every such error is also a RuntimeError
(attnlens.AttentionTypeError / AttentionValueError), the type torch raises for most of them.

What torch accepts and attnlens now accepts too (leading dims, broadcasting, head dims the kernels
do not compile) is tested against torch itself in tests/torch_parity/."""

from __future__ import annotations

import pytest
import torch

import attnlens

B, H, NQ, NK, D = 2, 4, 5, 7, 8


def qkv(dtype=torch.float32):
    return (
        torch.randn(B, H, NQ, D, dtype=dtype),
        torch.randn(B, H, NK, D, dtype=dtype),
        torch.randn(B, H, NK, D, dtype=dtype),
    )


def _call(backend, *args, **kwargs):
    with attnlens.use_backend(backend):
        return attnlens.scaled_dot_product_attention(*args, **kwargs)


CASES = [
    # (description, builder returning (args, kwargs), exception, message fragments)
    ("query not a tensor", lambda q, k, v: ((q.tolist(), k, v), {}), TypeError, ["query", "list"]),
    ("integer dtype", lambda q, k, v: ((q.int(), k, v), {}), TypeError, ["query", "int32"]),
    ("mixed dtypes", lambda q, k, v: ((q, k.double(), v), {}), TypeError, ["same dtype", "float64"]),
    ("rank 1", lambda q, k, v: ((q[0, 0, 0], k, v), {}), ValueError, ["query", "at least 2", "(8,)"]),
    (
        "batch not broadcastable",
        lambda q, k, v: ((q, torch.cat([k, k[:1]]), torch.cat([v, v[:1]])), {}),
        ValueError,
        ["batch dims", "not broadcastable", "(3, 4, 7, 8)"],
    ),
    ("head dim mismatch", lambda q, k, v: ((q, k[..., :4], v), {}), ValueError, ["key head dim", "8"]),
    ("value length", lambda q, k, v: ((q, k, v[:, :, :3]), {}), ValueError, ["value", "(2, 4, 3, 8)"]),
    ("gqa without flag", lambda q, k, v: ((q, k[:, :2], v[:, :2]), {}), ValueError, ["enable_gqa", "4", "2"]),
    (
        "gqa not a multiple",
        lambda q, k, v: ((q, k[:, :3], v[:, :3]), {"enable_gqa": True}),
        ValueError,
        ["multiple", "4", "3"],
    ),
    ("dropout negative", lambda q, k, v: ((q, k, v), {"dropout_p": -0.1}), ValueError, ["dropout_p", "-0.1"]),
    ("dropout string", lambda q, k, v: ((q, k, v), {"dropout_p": "0.1"}), TypeError, ["dropout_p", "str"]),
    ("is_causal int", lambda q, k, v: ((q, k, v), {"is_causal": 1}), TypeError, ["is_causal", "int"]),
    ("scale string", lambda q, k, v: ((q, k, v), {"scale": "x"}), TypeError, ["scale", "str"]),
    ("scale nan", lambda q, k, v: ((q, k, v), {"scale": float("nan")}), ValueError, ["scale", "nan"]),
    ("scale bool", lambda q, k, v: ((q, k, v), {"scale": True}), TypeError, ["scale", "bool"]),
    ("scale 1-D tensor", lambda q, k, v: ((q, k, v), {"scale": torch.ones(1)}), TypeError, ["scale", "Tensor"]),
    ("enable_gqa int", lambda q, k, v: ((q, k, v), {"enable_gqa": 1}), TypeError, ["enable_gqa", "int"]),
    (
        "nested query",
        lambda q, k, v: ((torch.nested.nested_tensor([q[0, 0], q[0, 0, :2]], layout=torch.jagged), k, v), {}),
        TypeError,
        ["query", "NestedTensor", "key_padding_mask"],
    ),
    (
        "alignment",
        lambda q, k, v: ((q, k, v), {"causal_alignment": "bottom"}),
        ValueError,
        ["causal_alignment", "'bottom'", "bottom_right"],
    ),
    (
        "return_weights value",
        lambda q, k, v: ((q, k, v), {"return_weights": "max"}),
        ValueError,
        ["return_weights", "'max'", "mean"],
    ),
    (
        "mask wrong shape",
        lambda q, k, v: ((q, k, v), {"attn_mask": torch.ones(NQ, NK + 1, dtype=torch.bool)}),
        ValueError,
        ["attn_mask", "(5, 8)", "[2, 4, 5, 7]"],
    ),
    (
        "mask 5-D",
        lambda q, k, v: ((q, k, v), {"attn_mask": torch.ones(1, B, H, NQ, NK, dtype=torch.bool)}),
        ValueError,
        ["attn_mask", "at most 4"],
    ),
    (
        "mask float64 with float32 inputs",
        lambda q, k, v: ((q, k, v), {"attn_mask": torch.zeros(NQ, NK, dtype=torch.float64)}),
        TypeError,
        ["attn_mask", "float64", "float32", "Cast it"],
    ),
    (
        "mask float16 with float32 inputs",
        lambda q, k, v: ((q, k, v), {"attn_mask": torch.zeros(NQ, NK, dtype=torch.float16)}),
        TypeError,
        ["attn_mask", "float16", "float32"],
    ),
    (
        "mask on another device",
        lambda q, k, v: ((q, k, v), {"attn_mask": torch.zeros(NQ, NK, device="meta")}),
        ValueError,
        ["attn_mask", "device", "meta"],
    ),
    (
        "mask int",
        lambda q, k, v: ((q, k, v), {"attn_mask": torch.ones(NQ, NK, dtype=torch.int64)}),
        TypeError,
        ["attn_mask", "int64", "bool"],
    ),
    (
        "padding float",
        lambda q, k, v: ((q, k, v), {"key_padding_mask": torch.zeros(B, NK)}),
        TypeError,
        ["key_padding_mask", "float32", "bool"],
    ),
    (
        "padding shape",
        lambda q, k, v: ((q, k, v), {"key_padding_mask": torch.zeros(B, NQ, dtype=torch.bool)}),
        ValueError,
        ["key_padding_mask", "[2, 7]", "(2, 5)"],
    ),
]


@pytest.mark.parametrize("backend", ["kernels", "reference"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_arguments(case, backend):
    _, build, exc, fragments = case
    args, kwargs = build(*qkv())
    with pytest.raises(exc) as info:
        _call(backend, *args, **kwargs)
    # what torch raises for the same mistakes, so torch callers' except clauses still catch it
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, attnlens.AttentionError)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_mask_requires_grad_is_refused():
    q, k, v = qkv()
    bias = torch.zeros(NQ, NK, requires_grad=True)
    for backend in ("kernels", "reference"):
        with pytest.raises(ValueError, match="attn_mask requires grad"):
            _call(backend, q, k, v, attn_mask=bias)
    with torch.no_grad():  # allowed when no graph is being built
        _call("kernels", q, k, v, attn_mask=bias)
    _call("kernels", q, k, v, attn_mask=bias.detach())


def test_unbatched_mask_must_not_be_4d():
    """torch adds the mask to the scores in place, so a mask may not add leading dims."""
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"at most 3 dimensions.*\[4, 5, 7\]"):
        attnlens.scaled_dot_product_attention(q[0], k[0], v[0], attn_mask=torch.ones(1, H, NQ, NK, dtype=torch.bool))


@pytest.mark.parametrize("backend", ["kernels", "reference"])
def test_error_classes_are_both_kinds(backend):
    """One class per kind, defined once: a ValueError or TypeError as promised, and a RuntimeError
    as torch raises; AttentionError catches both."""
    assert issubclass(attnlens.AttentionValueError, ValueError)
    assert issubclass(attnlens.AttentionValueError, RuntimeError)
    assert issubclass(attnlens.AttentionTypeError, TypeError)
    assert issubclass(attnlens.AttentionTypeError, RuntimeError)
    assert not issubclass(attnlens.AttentionValueError, TypeError)
    q, k, v = qkv()
    with pytest.raises(attnlens.AttentionTypeError):
        _call(backend, q, k.double(), v)
    with pytest.raises(attnlens.AttentionValueError):
        _call(backend, q, k, v, dropout_p=2.0)


def test_forced_kernels_name_what_they_cannot_compile():
    """Head dims above 256 (and 0) run on the plain-PyTorch path under "auto"; forcing the kernels
    on them says why they cannot and what to do."""
    q = torch.randn(1, 1, 2, 257)
    with pytest.raises(ValueError, match=r"head dim.*256.*257.*use_backend\('auto'\)"):
        _call("kernels", q, q, q)
    expected = _call("reference", q, q, q)
    assert torch.equal(_call("auto", q, q, q), expected)


def test_device_mismatch_is_named():
    q, k, v = qkv()
    meta = torch.empty_like(k, device="meta")
    with pytest.raises(ValueError, match="same device"):
        attnlens.scaled_dot_product_attention(q, meta, v)


def test_masks_are_never_copied_or_cast():
    """A broadcast mask reaches the kernel as a stride-0 view of the caller's memory."""
    from attnlens._inputs import prepare

    mask = torch.rand(NQ, NK) > 0.5
    p = prepare(*qkv(), attn_mask=mask)
    assert p.attn_mask.shape == (B, H, NQ, NK)
    assert p.attn_mask.stride()[:2] == (0, 0)
    assert p.attn_mask.data_ptr() == mask.data_ptr() and p.attn_mask.dtype == torch.bool


def test_backend_names():
    with pytest.raises(ValueError, match="backend"):
        with attnlens.use_backend("fast"):
            pass


@pytest.mark.parametrize("batch,heads", [(65536, 1), (1, 65536)])
def test_batch_and_heads_past_the_grid_limit_are_named(batch, heads):
    """The kernels run batch and heads on CUDA grid axes limited to 65535 (as FlashAttention-2
    does): past it the kernel path says so and what to do, rather than failing to launch. The
    reference path has no such limit."""
    q = torch.randn(batch, heads, 1, 8)
    with pytest.raises(ValueError, match=r"batch \((65536|1)\) and query heads \((1|65536)\).*65535.*split the batch"):
        _call("kernels", q, q, q)
    out = _call("reference", q, q, q)
    assert torch.equal(out, q)  # one key: the output is its value


def test_dropout_mask_runs_batch_times_heads_on_the_unlimited_grid_axis(monkeypatch):
    """``attnlens.dropout_mask`` launches one program per (batch, head) and tile. batch * heads
    passes 65535 far sooner than batch or heads alone (4096 x 16 does), so it runs on grid axis 0,
    whose limit is 2**31 - 1; the other axes hold the tiles."""
    from attnlens.kernels import dropout

    grids = []

    class Recorder:
        def __getitem__(self, grid):
            grids.append(grid)
            return lambda *args, **kwargs: None

    monkeypatch.setattr(dropout, "launchable", lambda kernel: Recorder())
    seed = torch.zeros(1, dtype=torch.int64)
    dropout.launch_dropout_mask(seed, 4096, 16, 65, 130, 0.5)
    assert grids == [(4096 * 16, 2, 3)]
