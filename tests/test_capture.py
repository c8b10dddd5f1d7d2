"""attnlens.capture_attention: what it records, that it switches weights on only inside the block,
that callers get what they asked for, the graph kept on request, and the kernels' weights equal
the reference's.

The models are the teaching kit's small encoder-decoder (attnlens.tiny), on the reference backend
except in the test that captures through the kernels (interpreted on a CPU).
"""

import pytest
import torch
from torch import nn

import attnlens
from attnlens import tiny
from attnlens.tiny.data import BOS_ID, PAD_ID
from token_batches import random_tokens

D_MODEL, NHEAD, DIM_FF = 16, 2, 32


@pytest.fixture
def reference_backend():
    with attnlens.use_backend("reference"):
        yield


def _small_model(**kwargs):
    options = dict(d_model=D_MODEL, nhead=NHEAD, num_layers=2, dim_feedforward=DIM_FF, max_len=16)
    options.update(kwargs)
    return tiny.build_transformer_model(12, **options).eval()


def _attention_modules(model):
    return [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]


def test_capture_records_every_layer_with_kind_and_shape(reference_backend):
    model = _small_model()
    src = random_tokens(2, (5, 3), 5)
    tgt_in = torch.cat([torch.full((2, 1), BOS_ID), random_tokens(2, (3, 2), 3)], dim=1)
    expected_logits = model(src, tgt_in)
    with attnlens.capture_attention(model) as captured:
        logits = model(src, tgt_in)
    torch.testing.assert_close(logits, expected_logits)
    assert [(r.name, r.layer, r.kind) for r in captured] == [
        ("encoder_layers.0.self_attn", "encoder_layers.0", "self"),
        ("encoder_layers.1.self_attn", "encoder_layers.1", "self"),
        ("decoder_layers.0.self_attn", "decoder_layers.0", "self"),
        ("decoder_layers.0.multihead_attn", "decoder_layers.0", "cross"),
        ("decoder_layers.1.self_attn", "decoder_layers.1", "self"),
        ("decoder_layers.1.multihead_attn", "decoder_layers.1", "cross"),
    ]
    assert [r.shape for r in captured] == [(2, NHEAD, 5, 5)] * 2 + [(2, NHEAD, 4, 4), (2, NHEAD, 4, 5)] * 2
    assert [r.call for r in captured] == list(range(6))
    assert all(not r.weights.requires_grad for r in captured)
    assert captured.stack("cross").shape == (2, 2, NHEAD, 4, 5)
    assert captured.stack("self", name="encoder").shape == (2, 2, NHEAD, 5, 5)
    # the records are the layers' own weights
    memory = model.embed(src)
    src_pad = src == PAD_ID
    _, first = model.encoder_layers[0](memory, src_key_padding_mask=src_pad, need_weights=True)
    torch.testing.assert_close(captured[0].weights, first)
    src_pad_keys = src_pad[:, None, None, :].expand(2, NHEAD, 4, 5)
    assert torch.all(captured[3].weights[src_pad_keys] == 0)
    assert torch.all(captured[2].weights[..., torch.ones(4, 4, dtype=torch.bool).triu(1)] == 0)
    with pytest.raises(ValueError, match="different shapes"):
        captured.stack("self")


def test_capture_switches_weights_on_only_inside_and_restores(reference_backend):
    model = _small_model(num_layers=1)
    modules = _attention_modules(model)
    requested = []
    spies = [
        m.register_forward_pre_hook(
            lambda mod, args, kwargs: requested.append(kwargs["need_weights"]), with_kwargs=True
        )
        for m in modules
    ]
    src = random_tokens(2, (4, 2), 4)
    tgt_in = torch.cat([torch.full((2, 1), BOS_ID), random_tokens(2, (2, 1), 2)], dim=1)
    model(src, tgt_in)
    assert requested == [False, False, False]  # outside a capture no layer computes weights
    hooks_before = [(len(m._forward_pre_hooks), len(m._forward_hooks)) for m in modules]
    with attnlens.capture_attention(model) as outer:
        with attnlens.capture_attention(model.decoder_layers) as inner:  # nested, on a sub-module
            model(src, tgt_in)
        model(src, tgt_in)
    assert [(len(m._forward_pre_hooks), len(m._forward_hooks)) for m in modules] == hooks_before
    assert all(not hasattr(m, "_attnlens_capture_state") for m in modules)
    assert len(outer) == 6 and len(inner) == 2
    assert [r.name for r in inner] == ["0.self_attn", "0.multihead_attn"]
    torch.testing.assert_close(inner[1].weights, outer[2].weights)
    requested.clear()
    model(src, tgt_in)
    assert requested == [False, False, False]
    for spy in spies:
        spy.remove()


def test_capture_gives_callers_what_they_asked_for(reference_backend):
    mha = attnlens.modules.MultiHeadAttention(D_MODEL, NHEAD, batch_first=True).eval()
    x = torch.randn(2, 5, D_MODEL)
    memory = torch.randn(2, 3, D_MODEL)
    expected_out, expected_mean = mha(x, x, x)
    with attnlens.capture_attention(mha) as captured:
        out, mean = mha(x, x, x)  # torch's default: head-averaged weights
        out_none, none = mha(x, memory, memory, need_weights=False)
        _, per_head = mha(x, memory, memory, None, True, None, False)  # positional arguments
    torch.testing.assert_close(out, expected_out)
    torch.testing.assert_close(mean, expected_mean)
    assert none is None and per_head.shape == (2, NHEAD, 5, 3)
    assert [(r.name, r.kind, r.shape) for r in captured] == [
        ("", "self", (2, NHEAD, 5, 5)),
        ("", "cross", (2, NHEAD, 5, 3)),
        ("", "cross", (2, NHEAD, 5, 3)),
    ]
    torch.testing.assert_close(captured[0].weights.mean(1), expected_mean)
    with pytest.raises(ValueError, match="no attention module"):
        with attnlens.capture_attention(nn.Linear(2, 2)):
            pass


def test_capture_without_detach_keeps_the_graph(reference_backend):
    model = _small_model(num_layers=1).train()
    src = random_tokens(2, (4, 2), 4)
    tgt_in = torch.cat([torch.full((2, 1), BOS_ID), random_tokens(2, (2, 1), 2)], dim=1)
    with attnlens.capture_attention(model, detach=False) as captured:
        model(src, tgt_in)
    cross = captured.select(kind="cross")[0].weights
    assert cross.requires_grad
    cross[..., 0].sum().backward()  # attention supervision: a loss on the weights
    assert model.decoder_layers[0].multihead_attn.in_proj_weight.grad.abs().sum() > 0


def test_capture_through_kernels_equals_reference():
    model = tiny.build_transformer_model(12, d_model=16, nhead=2, num_layers=1, dim_feedforward=16, max_len=8).eval()
    src = random_tokens(2, (5, 3), 5)
    tgt_in = torch.cat([torch.full((2, 1), BOS_ID), random_tokens(2, (3, 1), 3)], dim=1)
    results = {}
    for backend in ("kernels", "reference"):
        with attnlens.use_backend(backend), torch.no_grad(), attnlens.capture_attention(model) as captured:
            assert attnlens.selected_backend(src.device) == backend
            logits = model(src, tgt_in)
        results[backend] = (logits, captured)
    logits_k, captured_k = results["kernels"]
    logits_r, captured_r = results["reference"]
    assert [(r.name, r.kind, r.shape) for r in captured_k] == [(r.name, r.kind, r.shape) for r in captured_r]
    assert len(captured_k) == 3
    for k, r in zip(captured_k, captured_r):
        torch.testing.assert_close(k.weights, r.weights, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits_k, logits_r, rtol=1e-5, atol=1e-5)
