"""attnlens.tiny.tour, the visual tour (`make demo`): it trains, captures through the kernels and
writes a page of pictures whose every image exists and whose captions describe the run, and the
interactive explorer page that the index links to."""

from __future__ import annotations

import base64
import html
import json
import os
import re
import zlib

import numpy as np
import pytest
import torch

import attnlens
from attnlens.__main__ import main
from attnlens.tiny import tour

SMALL = dict(steps=25, d_model=32, nhead=2, num_layers=1, progress=False)
EXPECTED_PICTURES = {
    "masks.png",
    "positional_heatmap.png",
    "positional_curves.png",
    "positional_similarity.png",
    "training_curves.png",
    "cross_attention.png",
    "encoder_heads.png",
    "encoder_layers.png",
    "decoder_self_layers.png",
    "cross_layers.png",
    "rollout.png",
    "attention_received.png",
    "statistics.png",
    "long_input.png",
}


@pytest.fixture(scope="module")
def small_tour(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("tour")
    return out, tour.run_tour(str(out), sentence="a b c b d", seed=1, **SMALL)


def test_every_picture_is_written_and_shown_in_order(small_tour):
    out, result = small_tour
    names = [os.path.basename(p) for p in result.pictures]
    assert set(names) == EXPECTED_PICTURES
    for path in result.pictures:
        with open(path, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n", path
    page = open(result.index, encoding="utf-8").read()
    shown = re.findall(r'<img src="([^"]+)"', page)
    assert shown == names  # every picture, once, in the order written
    assert len(re.findall(r"<h2>", page)) == len(names)
    # each section has a caption paragraph of real text
    captions = re.findall(r"</h2>\n<p>(.*?)</p>", page, flags=re.S)
    assert len(captions) == len(names) and all(len(c) > 80 for c in captions)


def test_page_reports_the_run(small_tour):
    _, result = small_tour
    page = open(result.index, encoding="utf-8").read()
    assert result.source == ["a", "b", "c", "b", "d"]
    assert html.escape(" ".join(result.prediction)) in page
    assert "a b c b d" in page
    assert f"{result.val_accuracy:.1%}" in page
    assert 0.0 <= result.val_accuracy <= 1.0
    assert result.train_backend == "torch"  # the CPU path: the interpreter is too slow to train with
    assert result.capture_backend == attnlens.selected_backend(torch.device("cpu"))
    assert f"{result.capture_backend} path" in page


def test_words_map_to_distinct_content_tokens():
    ids, names = tour._words_to_ids(["x", "y", "x", "z"], vocab_size=16)
    assert ids == [3, 4, 3, 5]
    assert names[3] == "x" and names[0] == "<pad>" and names[1] == "<bos>" and names[2] == "<eos>"
    with pytest.raises(ValueError, match="distinct words"):
        tour._words_to_ids([str(i) for i in range(20)], vocab_size=16)


def test_mirror_head_finds_the_anti_diagonal():
    cross = torch.full((2, 3, 4, 4), 0.25)
    cross[1, 2] = torch.eye(4).flip(1)
    assert tour._mirror_head(cross, 4) == (1, 2, 1.0)


def test_sharpest_head_is_the_most_decisive():
    weights = torch.full((2, 3, 4, 5), 0.2)
    weights[1, 0] = torch.eye(4, 5)  # every query puts all its weight on one key
    weights[0, 2, :, 0], weights[0, 2, :, 1:] = 0.6, 0.1
    assert tour._sharpest_head(weights) == (1, 0)


def test_sentence_longer_than_training_data_is_refused(tmp_path):
    with pytest.raises(ValueError, match="sentence has 11 words"):
        tour.run_tour(str(tmp_path), sentence=" ".join("abcdefghijk"), long_input=False, **{**SMALL, "steps": 1})


def test_command_line(tmp_path, capsys):
    assert (
        main(
            [
                "demo",
                "--out",
                str(tmp_path),
                "--steps",
                "2",
                "--d-model",
                "16",
                "--heads",
                "2",
                "--layers",
                "1",
                "--sentence",
                "p q r",
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "input:  p q r" in printed
    assert os.path.exists(tmp_path / "index.html")
    with pytest.raises(SystemExit):
        main(["demo", "--task", "no-such-task"])


def read_page(page: str):
    """(header, raw bytes) an explorer page embeds (the format tests/viz/test_explorer.py checks)."""
    header = json.loads(re.search(r'<script type="application/json" id="ax-header">(.*?)</script>', page, re.S)[1])
    data = re.search(r'<script type="application/octet-stream" id="ax-data">(.*?)</script>', page, re.S)[1]
    return header, zlib.decompress(base64.b64decode("".join(data.split())))


def shown_matrices(page: str, section: int) -> np.ndarray:
    """A section's stored weights (16-bit pages: two byte planes), ``[M, Nq, Nk]``."""
    header, raw = read_page(page)
    meta = header["sections"][section]
    offset, count = meta["codes"]
    assert header["bits"] == 16
    high = np.frombuffer(raw, np.uint8, count, offset).astype(np.uint32)
    low = np.frombuffer(raw, np.uint8, count, offset + count).astype(np.uint32)
    return ((high << 8 | low) / 65535.0).reshape(-1, meta["nq"], meta["nk"])


def test_explorer_page_is_written_and_linked(small_tour):
    out, result = small_tour
    assert result.explorer == str(out / "explorer.html")
    index = open(result.index, encoding="utf-8").read()
    assert '<a href="explorer.html">' in index
    page = open(result.explorer, encoding="utf-8").read()
    header, _ = read_page(page)
    cross, encoder, decoder = header["sections"]
    target = ["<bos>"] + [t for t in result.prediction if t != "<eos>"]
    assert cross["name"].startswith("decoder cross-attention") and not cross["self"]
    assert (cross["tokens_q"], cross["tokens_k"]) == (target, result.source)
    assert (cross["layers"], cross["heads"]) == (SMALL["num_layers"], SMALL["nhead"])
    assert cross["layer_names"] == ["decoder_layers.0.multihead_attn"]
    assert encoder["tokens_q"] == result.source and encoder["self"]
    assert decoder["tokens_q"] == target
    # the decoder's causal mask is drawn, and its weights respect it
    _, raw = read_page(page)
    offset, count = decoder["mask"]
    nt = len(target)
    causal = np.frombuffer(raw, np.uint8, count, offset).reshape(nt, nt)
    np.testing.assert_array_equal(causal, np.tril(np.ones((nt, nt), np.uint8)))
    decoder_weights = shown_matrices(page, 2)[: SMALL["nhead"]]
    assert np.all(decoder_weights[:, causal == 0] == 0)
    np.testing.assert_allclose(shown_matrices(page, 0)[: SMALL["nhead"]].sum(-1), 1.0, atol=1e-4)


def test_look_inside_a_trained_model():
    trained = tour.train_tour_model("copy", steps=2, d_model=16, nhead=2, num_layers=1, progress=False)
    assert trained.backend == "torch" and trained.model.training is False  # the CPU path
    inside = tour.look_inside(trained.model, ["x", "y", "x"])
    assert inside.source == ["x", "y", "x"]
    nt = len(inside.target)
    assert inside.target[0] == "<bos>" and nt == len([t for t in inside.prediction if t != "<eos>"]) + 1
    assert inside.encoder_self.shape == (1, 2, 3, 3)
    assert inside.decoder_self.shape == (1, 2, nt, nt) and inside.cross.shape == (1, 2, nt, 3)
    assert torch.all(inside.decoder_self.triu(1) == 0)  # the decoder cannot look ahead
    torch.testing.assert_close(inside.cross.sum(-1), torch.ones(1, 2, nt))
    page = inside.explorer()
    assert page.sections[0].weights.shape == (1, 2, nt, 3)
    assert page.start == {"section": 0, "layer": 0, "head": tour._sharpest_head(inside.cross)[1]}
    with pytest.raises(ValueError, match="at least one word"):
        tour.look_inside(trained.model, [])
    with pytest.raises(ValueError, match="sentence has 11 words; the model reads at most 10"):
        tour.look_inside(trained.model, list("abcdefghijk"))
