"""attnlens.tiny.model: the transformer layers against torch's, the weights they report, and the model.

The tests that run a model do so on the reference backend (plain PyTorch, the
``reference_backend`` fixture): the Triton interpreter is far too slow for these models.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attnlens
from attnlens import tiny
from attnlens.tiny.data import BOS_ID, EOS_ID, PAD_ID
from token_batches import random_tokens

D_MODEL, NHEAD, DIM_FF = 16, 2, 32


def _padded_batch(batch=3, length=6, d_model=D_MODEL, lengths=(6, 4, 1), dtype=torch.float64):
    x = torch.randn(batch, length, d_model, dtype=dtype)
    pad = torch.arange(length)[None, :] >= torch.tensor(lengths)[:, None]  # True = padding
    return x, pad


def _torch_causal(n):
    return torch.ones(n, n, dtype=torch.bool).triu(1)  # True = not allowed


def _manual_weights(mha, query, key, key_padding=None, blocked=None):
    """Per-head softmax(q k^T / sqrt(d)) from the module's projections, masked: [B, H, Nq, Nk]."""
    e, h = mha.embed_dim, mha.num_heads
    w_q, w_k, _ = mha.in_proj_weight.chunk(3)
    b_q, b_k, _ = mha.in_proj_bias.chunk(3)
    q = F.linear(query, w_q, b_q).unflatten(-1, (h, e // h)).transpose(1, 2)
    k = F.linear(key, w_k, b_k).unflatten(-1, (h, e // h)).transpose(1, 2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(e // h)
    if key_padding is not None:
        scores = scores.masked_fill(key_padding[:, None, None, :], float("-inf"))
    if blocked is not None:
        scores = scores.masked_fill(blocked, float("-inf"))
    return scores.softmax(dim=-1)


# ----------------------------------------------------------------------------------------------
# layers against torch's, with copied weights


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_layer_matches_torch(reference_backend, norm_first):
    theirs = (
        nn.TransformerEncoderLayer(D_MODEL, NHEAD, DIM_FF, dropout=0.1, batch_first=True, norm_first=norm_first)
        .double()
        .eval()
    )
    ours = (
        tiny.TransformerEncoderLayer(D_MODEL, NHEAD, DIM_FF, dropout=0.1, batch_first=True, norm_first=norm_first)
        .double()
        .eval()
    )
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert isinstance(ours.self_attn, attnlens.modules.MultiHeadAttention)
    x, pad = _padded_batch()
    x.requires_grad_(True)  # keeps torch off its inference fast path, which changes padded rows
    causal = _torch_causal(x.shape[1])
    for kwargs in ({}, {"src_key_padding_mask": pad}, {"src_mask": causal, "src_key_padding_mask": pad}):
        expected = theirs(x, **kwargs)
        got = ours(x, **kwargs)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    # is_causal=True without a mask builds the causal mask (torch would need src_mask)
    torch.testing.assert_close(
        ours(x, src_key_padding_mask=pad, is_causal=True),
        theirs(x, src_mask=causal, src_key_padding_mask=pad, is_causal=True),
        rtol=1e-10,
        atol=1e-10,
    )


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_layer_matches_torch(reference_backend, norm_first):
    theirs = (
        nn.TransformerDecoderLayer(
            D_MODEL, NHEAD, DIM_FF, dropout=0.1, batch_first=True, activation="gelu", norm_first=norm_first
        )
        .double()
        .eval()
    )
    ours = (
        tiny.TransformerDecoderLayer(
            D_MODEL, NHEAD, DIM_FF, dropout=0.1, batch_first=True, activation="gelu", norm_first=norm_first
        )
        .double()
        .eval()
    )
    ours.load_state_dict(theirs.state_dict(), strict=True)
    tgt, tgt_pad = _padded_batch(length=5, lengths=(5, 3, 2))
    memory, memory_pad = _padded_batch(length=7, lengths=(7, 2, 5))
    tgt.requires_grad_(True)
    kwargs = dict(tgt_mask=_torch_causal(5), tgt_key_padding_mask=tgt_pad, memory_key_padding_mask=memory_pad)
    expected = theirs(tgt, memory, **kwargs)
    torch.testing.assert_close(ours(tgt, memory, **kwargs), expected, rtol=1e-10, atol=1e-10)
    got = ours(tgt, memory, tgt_key_padding_mask=tgt_pad, memory_key_padding_mask=memory_pad, tgt_is_causal=True)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_layers_are_batch_first_false_by_default_like_torch(reference_backend):
    theirs = nn.TransformerEncoderLayer(D_MODEL, NHEAD, DIM_FF).double().eval()
    ours = tiny.TransformerEncoderLayer(D_MODEL, NHEAD, DIM_FF).double().eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(6, 2, D_MODEL, dtype=torch.float64, requires_grad=True)  # [N, B, E]
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-10, atol=1e-10)


def test_pre_and_post_norm_differ_and_follow_their_formulas(reference_backend):
    x, pad = _padded_batch(lengths=(6, 6, 6))
    post = tiny.TransformerEncoderLayer(D_MODEL, NHEAD, DIM_FF, dropout=0.0, batch_first=True).double()
    pre = tiny.TransformerEncoderLayer(D_MODEL, NHEAD, DIM_FF, dropout=0.0, batch_first=True, norm_first=True).double()
    pre.load_state_dict(post.state_dict())

    def sa(layer, h):
        return layer.self_attn(h, h, h, need_weights=False)[0]

    def ff(layer, h):
        return layer.linear2(F.relu(layer.linear1(h)))

    h = post.norm1(x + sa(post, x))
    torch.testing.assert_close(post(x), post.norm2(h + ff(post, h)))
    h = x + sa(pre, pre.norm1(x))
    torch.testing.assert_close(pre(x), h + ff(pre, pre.norm2(h)))
    assert (pre(x) - post(x)).abs().max() > 0.1


# ----------------------------------------------------------------------------------------------
# weights the layers report


def test_encoder_layer_weights_are_the_attention_probabilities(reference_backend):
    layer = tiny.TransformerEncoderLayer(D_MODEL, NHEAD, DIM_FF, batch_first=True, norm_first=True).double().eval()
    x, pad = _padded_batch()
    out, weights = layer(x, src_key_padding_mask=pad, need_weights=True)
    assert weights.shape == (3, NHEAD, 6, 6)
    torch.testing.assert_close(out, layer(x, src_key_padding_mask=pad))
    expected = _manual_weights(layer.self_attn, layer.norm1(x), layer.norm1(x), key_padding=pad)
    torch.testing.assert_close(weights, expected)
    assert torch.all(weights.masked_select(pad[:, None, None, :].expand_as(weights)) == 0)  # padding keys get 0
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, NHEAD, 6, dtype=torch.float64))


def test_decoder_layer_weights_causal_and_padding(reference_backend):
    layer = tiny.TransformerDecoderLayer(D_MODEL, NHEAD, DIM_FF, batch_first=True).double().eval()
    tgt, tgt_pad = _padded_batch(length=5, lengths=(5, 3, 2))
    memory, memory_pad = _padded_batch(length=7, lengths=(7, 2, 5))
    out, weights = layer(
        tgt,
        memory,
        tgt_key_padding_mask=tgt_pad,
        memory_key_padding_mask=memory_pad,
        tgt_is_causal=True,
        need_weights=True,
    )
    assert isinstance(weights, tiny.DecoderWeights)
    assert weights.self_attn.shape == (3, NHEAD, 5, 5) and weights.cross_attn.shape == (3, NHEAD, 5, 7)
    above_diagonal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    assert torch.all(weights.self_attn[..., above_diagonal] == 0)
    assert torch.all(weights.self_attn[..., tgt_pad[:, None, None, :].expand(3, NHEAD, 5, 5)] == 0)
    assert torch.all(weights.cross_attn[memory_pad[:, None, None, :].expand(3, NHEAD, 5, 7)] == 0)
    # post-norm: cross-attention reads norm1(tgt + SA(tgt)); check its weights by hand
    h = layer.norm1(
        tgt
        + layer.self_attn(tgt, tgt, tgt, attn_mask=_torch_causal(5), key_padding_mask=tgt_pad, need_weights=False)[0]
    )
    torch.testing.assert_close(
        weights.cross_attn, _manual_weights(layer.multihead_attn, h, memory, key_padding=memory_pad)
    )
    # query 0 can only see key 0
    torch.testing.assert_close(weights.self_attn[:, :, 0, 0], torch.ones(3, NHEAD, dtype=torch.float64))


# ----------------------------------------------------------------------------------------------
# the model


@pytest.mark.parametrize("kind", ["encoder_decoder", "encoder", "decoder"])
def test_model_shapes_and_training_batches(reference_backend, kind):
    data = tiny.generate_synthetic_data(8, vocab_size=12, max_length=5, task="copy", seed=1)
    model = tiny.build_transformer_model(
        12, d_model=D_MODEL, nhead=NHEAD, num_layers=1, dim_feedforward=DIM_FF, max_len=13, kind=kind
    ).eval()
    src, tgt = data.src, data.tgt
    logits, labels = model.logits_and_labels(src, tgt)
    assert logits.shape == labels.shape + (12,)
    if kind == "encoder_decoder":
        assert model(src, tgt[:, :-1]).shape == (8, 6, 12)
        assert torch.equal(labels, tgt[:, 1:])
        assert len(model.encoder_layers) == len(model.decoder_layers) == 1
    elif kind == "encoder":
        assert model(src).shape == (8, 5, 12)
        assert torch.equal(labels[src != PAD_ID], src[src != PAD_ID])  # copy: label = source token
        assert torch.all(labels[src == PAD_ID] == PAD_ID)
        assert len(model.decoder_layers) == 0
    else:
        assert model(src).shape == (8, 5, 12)
        assert torch.all(labels[:, :5] == PAD_ID) and torch.equal(labels[:, 5:], tgt[:, 1:])
        assert len(model.encoder_layers) == 0
        assert all(isinstance(layer, tiny.TransformerEncoderLayer) for layer in model.decoder_layers)
    if kind != "encoder":
        generated = model.generate(src)
        assert generated.shape[0] == 8 and 1 <= generated.shape[1] <= 6
        # the first generated token is the arg-max after BOS, as the training layout reads it
        logits_after_bos, _ = model.logits_and_labels(src, tgt)
        first = logits_after_bos[:, 0 if kind == "encoder_decoder" else 5].argmax(-1)
        assert torch.equal(generated[:, 0], first)
    else:
        with pytest.raises(RuntimeError, match="encoder-only"):
            model.generate(src)
    with pytest.raises(TypeError, match="tgt_in"):
        model(src) if kind == "encoder_decoder" else model(src, tgt)


def test_model_ignores_padding_and_the_future(reference_backend):
    gen = torch.Generator().manual_seed(3)
    model = (
        tiny.build_transformer_model(12, d_model=D_MODEL, nhead=NHEAD, num_layers=2, dim_feedforward=DIM_FF, max_len=16)
        .double()
        .eval()
    )
    src = random_tokens(2, (4, 6), 6, generator=gen)
    tgt_in = torch.cat([torch.full((2, 1), BOS_ID), random_tokens(2, (5, 3), 5, generator=gen)], dim=1)
    logits = model(src, tgt_in)
    # more padding on the source and the target changes nothing at the real positions
    wider_src = torch.cat([src, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    wider_tgt = torch.cat([tgt_in, torch.zeros(2, 2, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(wider_src, wider_tgt)[:, :6], logits)
    # changing target tokens after position 2 leaves positions 0..2 alone, and changes position 3
    changed = tgt_in.clone()
    changed[0, 3:] = torch.where(changed[0, 3:] == PAD_ID, PAD_ID, (changed[0, 3:] - 3 + 1) % 9 + 3)
    new = model(src, changed)
    torch.testing.assert_close(new[0, :3], logits[0, :3])
    assert (new[0, 3] - logits[0, 3]).abs().max() > 1e-6
    # a source token inside the sentence matters; a pad position's embedding cannot (PAD row is 0)
    other_src = src.clone()
    other_src[1, 0] = (src[1, 0] - 3 + 1) % 9 + 3
    assert (model(other_src, tgt_in)[1] - logits[1]).abs().max() > 1e-6


def test_build_transformer_model_validates():
    with pytest.raises(ValueError, match="divisible"):
        tiny.build_transformer_model(10, d_model=30, nhead=4)
    with pytest.raises(ValueError, match="kind"):
        tiny.build_transformer_model(10, kind="seq2seq")
    with pytest.raises(ValueError, match="pad_id"):
        tiny.build_transformer_model(10, pad_id=10)
    model = tiny.build_transformer_model(10, max_len=4)
    with pytest.raises(ValueError, match="max_len"):
        model(torch.ones(1, 5, dtype=torch.long), torch.ones(1, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        model(torch.ones(1, 3), torch.ones(1, 2, dtype=torch.long))


def test_generate_greedy_matches_step_by_step_argmax(reference_backend):
    torch.manual_seed(5)
    model = tiny.build_transformer_model(
        12, d_model=D_MODEL, nhead=NHEAD, num_layers=1, dim_feedforward=DIM_FF, max_len=16
    ).eval()
    with torch.no_grad():  # make EOS likely after a few steps, so stopping is tested
        model.output.bias[EOS_ID] = 2.0
    src = random_tokens(3, (5, 2, 4), 5)
    out = model.generate(src, max_new_tokens=6)
    ys = torch.full((3, 1), BOS_ID)
    done = torch.zeros(3, dtype=torch.bool)
    for step in range(out.shape[1]):
        nxt = model(src, ys)[:, -1].argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, PAD_ID), nxt)
        assert torch.equal(out[:, step], nxt)
        done |= nxt == EOS_ID
        ys = torch.cat([ys, nxt[:, None]], dim=1)
    assert out.shape[1] == 6 or bool(done.all())
