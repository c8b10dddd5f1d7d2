"""attnlens.viz.statistics: attention received per key as bars, numbers and a table."""

import sys

import numpy as np
import pytest
import torch

from attnlens import viz

from .figures import CAUSAL, TOKENS, N, random_weights, render, xlabels


def bar_heights(container) -> np.ndarray:
    return np.array([patch.get_height() for patch in container.patches])


def test_received_bar_heights_are_column_means():
    weights = random_weights(N, N, allowed=CAUSAL)
    ax = render(viz.attention_received_bar(torch.tensor(weights), TOKENS)).axes[0]
    assert len(ax.containers) == 1
    np.testing.assert_allclose(bar_heights(ax.containers[0]), weights.mean(axis=0), rtol=1e-6)
    assert xlabels(ax) == TOKENS
    # The dashed reference line sits at the uniform share 1/Nk.
    (uniform,) = ax.lines
    assert uniform.get_ydata()[0] == pytest.approx(1 / N)


def test_received_bar_per_head_grouped_mean_and_single():
    weights = random_weights(3, N, N)
    ax = render(viz.attention_received_bar(weights, TOKENS)).axes[0]
    assert len(ax.containers) == 3
    for head, container in enumerate(ax.containers):
        np.testing.assert_allclose(bar_heights(container), weights[head].mean(axis=0))
        assert container.get_label() == f"head {head}"
    # Bars of one key sit side by side, centred on the key's tick.
    centres = [container.patches[2].get_x() + container.patches[2].get_width() / 2 for container in ax.containers]
    assert np.mean(centres) == pytest.approx(2.0)
    ax = render(viz.attention_received_bar(weights, TOKENS, head="mean")).axes[0]
    np.testing.assert_allclose(bar_heights(ax.containers[0]), weights.mean(axis=0).mean(axis=0))
    ax = render(viz.attention_received_bar(weights, TOKENS, head=2, uniform_line=False)).axes[0]
    np.testing.assert_allclose(bar_heights(ax.containers[0]), weights[2].mean(axis=0))
    assert len(ax.lines) == 0


def test_received_bar_mask_leaves_cells_out():
    weights = random_weights(N, N, allowed=CAUSAL)
    ax = render(viz.attention_received_bar(weights, TOKENS, mask=CAUSAL)).axes[0]
    expected = [weights[CAUSAL[:, k], k].mean() for k in range(N)]
    np.testing.assert_allclose(bar_heights(ax.containers[0]), expected)


def test_received_bar_long_input_thins_labels():
    tokens = [f"t{i}" for i in range(600)]
    ax = render(viz.attention_received_bar(random_weights(4, 600), tokens)).axes[0]
    assert len(xlabels(ax)) <= 40
    assert xlabels(ax) == [tokens[int(p)] for p in ax.get_xticks()]


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: viz.attention_received_bar(random_weights(N, N), TOKENS, head=0), ["head=0", "[H, Nq, Nk]"]),
        (lambda: viz.attention_received_bar(random_weights(2, N, N), TOKENS, head=2), ["head", "[0, 2)"]),
        (lambda: viz.attention_received_bar(random_weights(2, N, N), TOKENS, head="max"), ["head", "'max'"]),
        (lambda: viz.attention_received_bar(random_weights(N, N), TOKENS[:2]), ["tokens", "2 labels"]),
        (lambda: viz.attention_statistics(random_weights(N), TOKENS), ["weights", "1-D"]),
    ],
)
def test_received_rejects_bad_input(call, words):
    with pytest.raises(ValueError) as info:
        call()
    for word in words:
        assert word in str(info.value)


def test_statistics_match_numpy():
    weights = random_weights(4, N)
    records = viz.attention_statistics(weights, TOKENS, as_frame=False)
    assert isinstance(records, list) and len(records) == N
    assert [r["token"] for r in records] == TOKENS
    assert [r["position"] for r in records] == list(range(N))
    for name, reduce in (("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max)):
        np.testing.assert_allclose([r[name] for r in records], reduce(weights, axis=0))
    assert all(type(r["mean"]) is float for r in records)


def test_statistics_frame_and_per_head_rows():
    pandas = pytest.importorskip("pandas")
    weights = random_weights(2, 3, N)
    frame = viz.attention_statistics(torch.tensor(weights), TOKENS)
    assert isinstance(frame, pandas.DataFrame)
    assert list(frame.columns) == ["head", "position", "token", "mean", "std", "min", "max"]
    assert len(frame) == 2 * N
    second = frame[frame["head"] == 1]
    np.testing.assert_allclose(second["std"], weights[1].std(axis=0), rtol=1e-6)
    averaged = viz.attention_statistics(weights, TOKENS, head="mean")
    assert "head" not in averaged.columns
    np.testing.assert_allclose(averaged["max"], weights.mean(axis=0).max(axis=0))


def test_statistics_without_pandas(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # makes `import pandas` fail
    records = viz.attention_statistics(random_weights(3, N), TOKENS)
    assert isinstance(records, list) and records[0]["token"] == "the"
    with pytest.raises(ImportError, match="as_frame=False"):
        viz.attention_statistics(random_weights(3, N), TOKENS, as_frame=True)


def test_statistics_leave_out_masked_and_nan_cells():
    weights = random_weights(N, N, allowed=CAUSAL)
    weights[N - 1, 0] = np.nan
    records = viz.attention_statistics(weights, TOKENS, mask=CAUSAL, as_frame=False)
    counted = CAUSAL & np.isfinite(weights)
    for k, record in enumerate(records):
        column = weights[counted[:, k], k]
        assert record["mean"] == pytest.approx(column.mean())
        assert record["std"] == pytest.approx(column.std())
        assert record["min"] == pytest.approx(column.min())
    # A key no counted query attends to has no statistics.
    nobody = viz.attention_statistics(weights, TOKENS, mask=np.zeros((N, N), bool), as_frame=False)
    assert all(np.isnan(r["mean"]) and np.isnan(r["max"]) for r in nobody)


def table_rows(ax) -> list:
    cells = ax.tables[0].get_celld()
    num_rows = 1 + max(r for r, _ in cells)
    num_cols = 1 + max(c for _, c in cells)
    return [[cells[r, c].get_text().get_text() for c in range(num_cols)] for r in range(num_rows)]


def test_statistics_table_shows_the_statistics():
    weights = random_weights(5, N)
    ax = render(viz.attention_statistics_table(weights, TOKENS, precision=4)).axes[0]
    rows = table_rows(ax)
    assert rows[0] == ["position", "token", "mean", "std", "min", "max"]
    assert [row[1] for row in rows[1:]] == TOKENS
    assert [row[2] for row in rows[1:]] == [f"{m:.4f}" for m in weights.mean(axis=0)]
    assert [row[5] for row in rows[1:]] == [f"{m:.4f}" for m in weights.max(axis=0)]


def test_statistics_table_keeps_the_most_attended_keys_when_long():
    weights = random_weights(8, 100)
    tokens = [f"k{i}" for i in range(100)]
    ax = render(viz.attention_statistics_table(weights, tokens, max_rows=10)).axes[0]
    rows = table_rows(ax)
    assert len(rows) == 11
    top = np.argsort(-weights.mean(axis=0))[:10]
    assert [row[1] for row in rows[1:]] == [tokens[i] for i in top]
    assert "top 10 of 100" in ax.get_title()
