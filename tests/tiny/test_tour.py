"""attnlens.tiny.tour, the visual tour (`make demo`): it trains, captures through the kernels and
writes a page of pictures whose every image exists and whose captions describe the run."""

from __future__ import annotations

import html
import os
import re

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
