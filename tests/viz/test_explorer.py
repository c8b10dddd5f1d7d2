"""attnlens.viz.explorer: what the page embeds, read back the way the page's script reads it.

The decoder here is written from the format the module documents (a JSON header, deflated
bytes in base64, 16-bit codes as a high-byte plane then a low-byte plane), not by calling the
module, so a page whose numbers the browser would misread fails here too.
"""

from __future__ import annotations

import base64
import html
import json
import re
import sys
import zlib

import numpy as np
import pytest
import torch

import attnlens
from attnlens import viz

from .figures import CAUSAL, TOKENS, random_weights

N = len(TOKENS)
# attnlens.viz.explorer is the function; its module is reached by name
explorer_module = sys.modules["attnlens.viz.explorer"]


def read_page(page: str):
    """(header, raw bytes) of an explorer page."""
    header = json.loads(re.search(r'<script type="application/json" id="ax-header">(.*?)</script>', page, re.S)[1])
    data = re.search(r'<script type="application/octet-stream" id="ax-data">(.*?)</script>', page, re.S)[1]
    return header, zlib.decompress(base64.b64decode("".join(data.split())))


def shown_matrices(page: str, section: int = 0) -> np.ndarray:
    """The weights the page shows for a section, ``[M, Nq, Nk]`` (heads, head means, rollouts)."""
    header, raw = read_page(page)
    meta = header["sections"][section]
    offset, count = meta["codes"]
    if header["bits"] == 16:
        high = np.frombuffer(raw, np.uint8, count, offset).astype(np.uint32)
        low = np.frombuffer(raw, np.uint8, count, offset + count).astype(np.uint32)
        values = (high << 8 | low) / 65535.0
    else:
        values = (np.frombuffer(raw, np.uint8, count, offset) / 255.0) ** 2
    return values.reshape(-1, meta["nq"], meta["nk"])


def layered(layers: int = 2, heads: int = 3, n: int = N, seed: int = 0, allowed=None) -> np.ndarray:
    return np.stack([random_weights(heads, n, n, allowed=allowed, seed=seed + layer) for layer in range(layers)])


# ----------------------------------------------------------------------------------------------
# the numbers round-trip within the precision the page states


@pytest.mark.parametrize("bits", [16, 8])
def test_weights_round_trip_within_the_stated_precision(bits):
    weights = layered(3, 4)
    # exact 0s and 1s, and tiny weights, are where codings go wrong
    weights[0, 0] = np.eye(N)
    weights[1, 2, 0] = np.r_[1e-6, 3e-4, 0.01, 0.2, 0.3, 1 - 0.510301]
    page = viz.explorer(weights, TOKENS, precision=bits).to_html()
    header = read_page(page)[0]
    precision = viz.explorer(weights, TOKENS, precision=bits).precision
    assert header["bits"] == bits and precision.bits == bits
    shown = shown_matrices(page)
    heads = shown[: 3 * 4].reshape(weights.shape)
    error = np.abs(heads - weights)
    assert error.max() <= header["max_error"] + 1e-12
    assert np.all(error <= precision.bound(weights) + 1e-12)
    if bits == 16:
        assert header["max_error"] == pytest.approx(0.5 / 65535)
        assert "0.0000076" in header["precision_text"]
    else:
        assert header["coding"] == "sqrt"
        assert header["max_error"] == pytest.approx(1 - (254.5 / 255) ** 2)  # the worst case, rounding up to 1
        # the square root spends its codes on small weights: 1e-6 -> 0, 3e-4 within 1e-4
        assert error[1, 2, 0, 1] < 1e-4 and error[1, 2, 0, 2] <= 0.0004
    assert heads[0, 0, 2, 2] == 1.0 and heads[0, 0, 2, 3] == 0.0
    assert "Weights stored in %d bits" % bits in page


def test_head_means_and_rollout_per_layer_are_embedded():
    weights = layered(3, 2)
    shown = shown_matrices(viz.explorer(weights, TOKENS).to_html())
    assert shown.shape == (3 * 2 + 3 + 3, N, N)
    means, rollouts = shown[6:9], shown[9:12]
    np.testing.assert_allclose(means, weights.mean(axis=1), atol=1e-5)
    for layer in range(3):
        np.testing.assert_allclose(rollouts[layer], viz.attention_rollout(weights[: layer + 1]), atol=1e-5)
    # rollout rows stay distributions
    np.testing.assert_allclose(rollouts.sum(-1), 1.0, atol=N * 1e-5)


def test_cross_attention_has_key_labels_and_no_rollout():
    weights = np.stack([random_weights(2, 4, N, seed=s) for s in range(2)])  # [L=2, H=2, Nq=4, Nk=6]
    page = viz.explorer(weights, ["<bos>", "x", "y", "z"], TOKENS, view="text").to_html()
    header = read_page(page)[0]
    meta = header["sections"][0]
    assert (meta["nq"], meta["nk"], meta["self"]) == (4, N, False)
    assert meta["tokens_k"] == TOKENS and meta["tokens_q"][0] == "<bos>"
    assert header["view"] == "text"
    assert shown_matrices(page).shape == (2 * 2 + 2, 4, N)  # no rollout for cross-attention
    with pytest.raises(ValueError, match="tokens_k"):
        viz.explorer(weights, ["a", "b", "c", "d"])


# ----------------------------------------------------------------------------------------------
# what users hold


def test_hugging_face_attentions_pick_the_batch_element():
    per_layer = tuple(
        torch.from_numpy(np.stack([layered(1, 2, seed=s)[0] for s in (layer, 10 + layer)])) for layer in range(3)
    )
    assert per_layer[0].shape == (2, 2, N, N)  # [B, H, Nq, Nk]
    page = viz.explorer(per_layer, TOKENS, batch_index=1).to_html()
    header = read_page(page)[0]
    assert header["sections"][0]["layer_names"] == ["layer 0", "layer 1", "layer 2"]
    heads = shown_matrices(page)[:6].reshape(3, 2, N, N)
    np.testing.assert_allclose(heads, np.stack([w[1].numpy() for w in per_layer]), atol=1e-5)
    # a model output (a mapping with .attentions) works as well, and says when it has none
    assert viz.explorer({"attentions": per_layer}, TOKENS).sections[0].weights.shape == (3, 2, N, N)
    with pytest.raises(ValueError, match="output_attentions=True"):
        viz.explorer({"attentions": None, "last_hidden_state": 0}, TOKENS)
    with pytest.raises(ValueError, match=r"batch_index must be in \[0, 2\)"):
        viz.explorer(per_layer, TOKENS, batch_index=2)


def test_single_arrays_of_every_documented_rank():
    weights = layered(2, 3)
    as_5d = torch.from_numpy(weights)[:, None]  # [L, B=1, H, N, N] as captured.stack() gives
    for value, shape in [(as_5d, (2, 3)), (weights, (2, 3)), (weights[0], (1, 3)), (weights[0, 0], (1, 1))]:
        section = viz.explorer(value, TOKENS).sections[0]
        assert section.weights.shape[:2] == shape
        np.testing.assert_allclose(section.weights.reshape(-1, N, N)[0], weights[0, 0], atol=1e-7)
    # lists of per-layer [H, N, N] and of per-layer [N, N]
    assert viz.explorer(list(weights), TOKENS).sections[0].weights.shape == (2, 3, N, N)
    assert viz.explorer([w[0] for w in weights], TOKENS).sections[0].weights.shape == (2, 1, N, N)
    with pytest.raises(ValueError, match="no batch axis"):
        viz.explorer(weights, TOKENS, batch_index=1)


def test_capture_attention_records_by_duck_typing():
    torch.manual_seed(0)
    model = attnlens.tiny.build_transformer_model(12, 16, 2, 2, 32, 0.0, max_len=12).eval()
    src, tgt = torch.tensor([[3, 4, 5, 6, 7]]), torch.tensor([[1, 8, 9]])
    # the reference path: this checks how records are read, not the kernels (tested elsewhere)
    with torch.no_grad(), attnlens.use_backend("reference"), attnlens.capture_attention(model) as captured:
        model(src, tgt)
    # an encoder-decoder's records hold three shapes: one section each
    with pytest.raises(ValueError, match="different shapes"):
        viz.explorer(captured, list("abcde"))
    encoder = captured.select("self", "encoder")
    page = viz.explorer(encoder, list("abcde"), name="encoder self-attention")
    page.add(captured.select("cross"), ["<bos>", "p", "q"], list("abcde"), name="cross-attention")
    header = read_page(page.to_html())[0]
    names = [s["name"] for s in header["sections"]]
    assert names == ["encoder self-attention", "cross-attention"]
    assert header["sections"][0]["layer_names"] == [r.name for r in encoder]
    np.testing.assert_allclose(page.sections[1].weights, captured.stack("cross")[:, 0].numpy(), atol=1e-7)
    cross = shown_matrices(page.to_html(), 1)
    np.testing.assert_allclose(cross[:4].reshape(2, 2, 3, 5), captured.stack("cross")[:, 0].numpy(), atol=1e-5)


def test_mask_marks_blocked_cells():
    weights = layered(1, 2, allowed=CAUSAL)
    page = viz.explorer(weights, TOKENS, mask=torch.from_numpy(CAUSAL)).to_html()
    header, raw = read_page(page)
    offset, count = header["sections"][0]["mask"]
    assert count == N * N
    np.testing.assert_array_equal(np.frombuffer(raw, np.uint8, count, offset).reshape(N, N), CAUSAL)
    # a key mask [Nk]: True = a real token (a Hugging Face attention_mask, as bool)
    keys = np.array([True] * 4 + [False] * 2)
    section = viz.explorer(weights, TOKENS, mask=keys).sections[0]
    np.testing.assert_array_equal(section.allowed, np.broadcast_to(keys, (N, N)))
    assert read_page(viz.explorer(weights, TOKENS).to_html())[0]["sections"][0]["mask"] is None
    with pytest.raises(TypeError, match=r"mask must be bool.*attention_mask\[batch_index\]\.bool\(\)"):
        viz.explorer(weights, TOKENS, mask=torch.ones(N, dtype=torch.long))
    with pytest.raises(ValueError, match=r"mask must have shape \[Nq, Nk\] = \(6, 6\)"):
        viz.explorer(weights, TOKENS, mask=np.ones((N, N + 1), bool))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(attentions=np.full((1, 1, N, N), 2.0)), ValueError, r"probabilities in \[0, 1\].*\[2, 2\]"),
        (dict(attentions=np.full((1, 1, N, N), np.nan)), ValueError, "NaN"),
        (dict(attentions="weights"), TypeError, "attentions must be"),
        (dict(attentions=[]), TypeError, "attentions must be"),
        (dict(attentions=np.zeros((2, 2, 2, 2, 2, 2))), ValueError, "6-D"),
        (dict(tokens=TOKENS[:-1]), ValueError, "tokens has 5 labels but the weights have 6 queries"),
        (dict(tokens="the cat sat on the mat"), TypeError, "split it first"),
        (dict(precision=12), ValueError, "precision must be 'auto', 8 or 16"),
        (dict(view="table"), ValueError, "view must be one of"),
        (dict(batch_index=True), TypeError, "batch_index must be an int"),
        (dict(title=3), TypeError, "title must be a str"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(kwargs, error, message):
    arguments = {"attentions": layered(1, 1), "tokens": TOKENS, **kwargs}
    with pytest.raises(error, match=message):
        viz.explorer(arguments.pop("attentions"), arguments.pop("tokens"), **arguments)


def test_layers_of_different_shapes_are_refused():
    with pytest.raises(ValueError, match=r"attentions\[1\] has shape \(2, 6, 6\)"):
        viz.explorer([layered(1, 3)[0], layered(1, 2)[0]], TOKENS)


# ----------------------------------------------------------------------------------------------
# the page itself


def test_page_is_self_contained():
    tokens = ["</script><script>alert(1)</script>", "<b>", "&amp;", '"q"', "naïve", "日本"]
    page = viz.explorer(layered(1, 2), tokens, title="<i>title</i>").to_html()
    assert "http://" not in page and "https://" not in page
    lowered = page.lower()
    for element in ("<script src", "<link", "<img", "<iframe", "<object", "<embed"):
        assert element not in lowered, element
    style = re.search(r"<style>(.*?)</style>", page, re.S)[1]
    assert "url(" not in style and "@import" not in style and "@font-face" not in style
    script = page[page.rindex("<script>") :]
    for call in ("fetch(", "XMLHttpRequest", "import(", "WebSocket", "EventSource", "sendBeacon", "Worker("):
        assert call not in script, call
    # only the page's own three scripts close: token text cannot end one
    assert page.count("</script>") == 3
    assert "<title>&lt;i&gt;title&lt;/i&gt;</title>" in page
    assert read_page(page)[0]["sections"][0]["tokens_q"] == tokens
    assert read_page(page)[0]["title"] == "<i>title</i>"


def test_save_and_notebook_display(tmp_path):
    page = viz.explorer(layered(1, 2), TOKENS, title="demo")
    path = page.save(tmp_path / "page.html")
    assert path == str(tmp_path / "page.html")
    assert open(path, encoding="utf-8").read() == page.to_html()
    shown = page._repr_html_()
    assert shown.startswith("<iframe srcdoc=") and 'title="demo"' in shown
    assert html.unescape(re.search(r'srcdoc="(.*?)"', shown, re.S)[1]) == page.to_html()
    assert repr(page) == "Explorer('attention' [1, 2, 6, 6]; 16-bit)"
    with pytest.raises(TypeError, match="path must be"):
        page.save(3)


def test_auto_precision_and_size_limit(monkeypatch):
    weights = layered(2, 2)
    page = viz.explorer(weights, TOKENS)
    assert page.num_values == (4 + 2 + 2) * N * N
    assert page.precision.bits == 16
    monkeypatch.setattr(explorer_module, "AUTO_16_BIT_VALUES", page.num_values - 1)
    assert page.precision.bits == 8
    monkeypatch.setattr(explorer_module, "MAX_VALUES", page.num_values - 1)
    with pytest.raises(ValueError, match=r"show fewer layers or heads"):
        viz.explorer(weights, TOKENS)


def test_open_at_sets_where_the_page_starts():
    page = viz.explorer(layered(2, 3), TOKENS).add(layered(1, 2), TOKENS, name="other")
    assert read_page(page.to_html())[0]["start"] == {"section": 0, "layer": 0, "head": 0}
    assert page.open_at(section=0, layer=1, head=2, view="grid") is page
    header = read_page(page.to_html())[0]
    assert header["start"] == {"section": 0, "layer": 1, "head": 2} and header["view"] == "grid"
    with pytest.raises(ValueError, match=r"head must be in \[0, 2\) for section 1, got 2"):
        page.open_at(section=1, head=2)
    with pytest.raises(ValueError, match=r"section must be in \[0, 2\)"):
        page.open_at(section=2)


def test_layer_names_label_the_layer_picker():
    page = viz.explorer(layered(2, 1), TOKENS, layer_names=["enc.0", "enc.1"])
    assert read_page(page.to_html())[0]["sections"][0]["layer_names"] == ["enc.0", "enc.1"]
    with pytest.raises(ValueError, match="layer_names has 1 names but attentions have 2 layers"):
        viz.explorer(layered(2, 1), TOKENS, layer_names=["enc.0"])
    with pytest.raises(TypeError, match="layer_names must be a sequence of str"):
        viz.explorer(layered(2, 1), TOKENS, layer_names="enc")


def test_added_sections_get_distinct_names():
    page = viz.explorer(layered(1, 1), TOKENS).add(layered(1, 1, seed=3), TOKENS)
    assert [s.name for s in page.sections] == ["attention", "attention (2)"]


def test_page_size_for_a_bert_sized_model():
    """6 layers x 12 heads x 128 tokens of diffuse random attention (it compresses worse than a
    real model's) stays a few MB at 16 bits, about half at 8."""
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(6, 12, 128, 128)).astype(np.float32)
    weights = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
    tokens = [f"t{i}" for i in range(128)]
    sixteen = len(viz.explorer(weights, tokens).to_html().encode())
    eight = len(viz.explorer(weights, tokens, precision=8).to_html().encode())
    assert sixteen < 4_000_000 and eight < 0.6 * sixteen
