"""attnlens.viz: every picture is rendered to PNG with Agg and checked for what it draws.

The checks read the drawn artists back (tick labels, image arrays, colour limits, bar heights,
line data, table cells), so a picture that silently shows the wrong numbers fails.
"""

from __future__ import annotations

import io
import sys

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from attnlens import viz
from attnlens.viz._common import MASKED_COLOR

TOKENS = ["the", "cat", "sat", "on", "the", "mat"]
N = len(TOKENS)
CAUSAL = np.tril(np.ones((N, N), dtype=bool))


def softmax(scores: np.ndarray, allowed: np.ndarray | None = None) -> np.ndarray:
    """Row softmax; forbidden cells get exactly 0, as the kernel returns them."""
    if allowed is not None:
        scores = np.where(allowed, scores, -np.inf)
    exp = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def random_weights(*shape: int, allowed: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    return softmax(np.random.default_rng(seed).normal(size=shape) * 2.0, allowed)


def render(fig: Figure) -> Figure:
    """Draw the figure to PNG bytes with Agg, as a user saving it would; the drawn state stays readable."""
    assert isinstance(fig, Figure)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=40)
    assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
    return fig


def image_axes(fig: Figure) -> list:
    """The panels holding a picture (colorbar axes hold no image)."""
    return [ax for ax in fig.axes if ax.images]


def xlabels(ax) -> list:
    return [t.get_text() for t in ax.get_xticklabels()]


def ylabels(ax) -> list:
    return [t.get_text() for t in ax.get_yticklabels()]


def sinusoidal(max_len: int, d: int) -> np.ndarray:
    position = np.arange(max_len)[:, None]
    pair = (np.arange(d) // 2)[None, :]
    angle = position / 10000 ** (2 * pair / d)
    return np.where(np.arange(d) % 2 == 0, np.sin(angle), np.cos(angle))


# ---------------------------------------------------------------------------------------------
# attention_heatmap
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_tensor", [False, True], ids=["numpy", "torch"])
def test_heatmap_draws_weights_with_token_labels(as_tensor):
    weights = random_weights(N, N)
    given = torch.tensor(weights) if as_tensor else weights
    fig = render(viz.attention_heatmap(given, TOKENS))
    (ax,) = image_axes(fig)
    np.testing.assert_allclose(ax.images[0].get_array(), weights, rtol=1e-6)
    assert xlabels(ax) == TOKENS
    assert ylabels(ax) == TOKENS
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("key", "query")
    # Row 0 (the first query) is drawn at the top.
    assert ax.images[0].origin == "upper"


def test_heatmap_colorbar_starts_at_zero_and_ends_at_the_largest_weight():
    weights = random_weights(N, N)
    fig = render(viz.attention_heatmap(weights, TOKENS))
    image = image_axes(fig)[0].images[0]
    assert image.get_clim() == pytest.approx((0.0, weights.max()))
    assert image.colorbar is not None
    assert len(fig.axes) == 2  # the map and its colorbar
    fig = render(viz.attention_heatmap(weights, TOKENS, vmin=0.1, vmax=0.5, colorbar=False))
    assert fig.axes[0].images[0].get_clim() == (0.1, 0.5)
    assert len(fig.axes) == 1


def test_heatmap_bfloat16_tensor_is_widened():
    weights = torch.tensor(random_weights(N, N), dtype=torch.bfloat16)
    fig = render(viz.attention_heatmap(weights, TOKENS))
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), weights.float().numpy())


def test_heatmap_writes_values_in_short_maps():
    weights = random_weights(N, N)
    ax = image_axes(render(viz.attention_heatmap(weights, TOKENS)))[0]
    assert len(ax.texts) == N * N
    by_cell = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert by_cell[(2, 1)] == f"{weights[2, 1]:.2f}"
    ax = image_axes(render(viz.attention_heatmap(weights, TOKENS, annotate=False)))[0]
    assert len(ax.texts) == 0


def test_heatmap_masked_cells_are_masked_not_small():
    weights = random_weights(N, N, allowed=CAUSAL)  # forbidden cells are exactly 0
    fig = render(viz.attention_heatmap(weights, TOKENS, mask=torch.tensor(CAUSAL)))
    ax = image_axes(fig)[0]
    drawn = ax.images[0].get_array()
    np.testing.assert_array_equal(np.ma.getmaskarray(drawn), ~CAUSAL)
    np.testing.assert_allclose(drawn.compressed(), weights[CAUSAL])
    # Masked cells get their own colour, one no weight can take.
    assert ax.images[0].cmap.get_bad() == pytest.approx(to_rgba(MASKED_COLOR))
    assert "masked" in ax.images[0].colorbar.ax.get_ylabel()
    # Masked cells carry no number.
    assert len(ax.texts) == CAUSAL.sum()


def test_heatmap_nan_and_inf_cells_are_masked():
    scores = np.random.default_rng(1).normal(size=(N, N))
    scores[~CAUSAL] = -np.inf  # pre-softmax scores of a causal map
    scores[0, 0] = np.nan
    ax = image_axes(render(viz.attention_heatmap(scores, TOKENS)))[0]
    expected = ~CAUSAL
    expected[0, 0] = True
    np.testing.assert_array_equal(np.ma.getmaskarray(ax.images[0].get_array()), expected)
    # Colour limits come from the visible cells only, and go below 0 for negative scores.
    visible = scores[~expected]
    assert ax.images[0].get_clim() == pytest.approx((min(0.0, visible.min()), visible.max()))


def test_heatmap_cross_attention_labels_keys_separately():
    keys = ["a", "b", "c", "d", "e", "f", "g", "h"]
    weights = random_weights(3, len(keys))
    ax = image_axes(render(viz.attention_heatmap(weights, TOKENS[:3], keys)))[0]
    assert ylabels(ax) == TOKENS[:3]
    assert xlabels(ax) == keys
    with pytest.raises(ValueError, match="tokens_k"):
        viz.attention_heatmap(weights, TOKENS[:3])


def test_heatmap_none_tokens_label_positions():
    ax = image_axes(render(viz.attention_heatmap(random_weights(3, 4), None, None)))[0]
    assert ylabels(ax) == ["0", "1", "2"]
    assert xlabels(ax) == ["0", "1", "2", "3"]


def test_heatmap_draws_into_given_axes_and_returns_its_root_figure():
    fig = Figure()
    left, right = fig.subfigures(1, 2)
    ax = right.add_subplot()
    returned = viz.attention_heatmap(random_weights(N, N), TOKENS, ax=ax)
    assert returned is fig
    assert ax.images and xlabels(ax) == TOKENS
    render(fig)


def test_long_inputs_draw_one_image_with_thinned_labels_and_no_text():
    length = 600
    tokens = [f"t{i}" for i in range(length)]
    allowed = np.tril(np.ones((length, length), dtype=bool))
    weights = random_weights(length, length, allowed=allowed)
    ax = image_axes(render(viz.attention_heatmap(weights, tokens, mask=allowed)))[0]
    assert len(ax.images) == 1 and not ax.patches and not ax.collections
    assert len(ax.texts) == 0
    for labels, ticks in ((xlabels(ax), ax.get_xticks()), (ylabels(ax), ax.get_yticks())):
        assert 10 <= len(labels) <= 40
        # Each shown label names the token at its position.
        assert labels == [tokens[int(p)] for p in ticks]
        assert labels[0] == "t0"
    np.testing.assert_array_equal(np.ma.getmaskarray(ax.images[0].get_array()), ~allowed)


def test_max_labels_controls_thinning():
    tokens = [f"w{i}" for i in range(20)]
    ax = image_axes(render(viz.attention_heatmap(random_weights(20, 20), tokens, max_labels=5)))[0]
    assert xlabels(ax) == ["w0", "w4", "w8", "w12", "w16"]


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: viz.attention_heatmap(np.ones((2, N, N)), TOKENS), ValueError, ["weights", "[Nq, Nk]", "3-D"]),
        (lambda: viz.attention_heatmap(np.ones((N, N)), TOKENS[:-1]), ValueError, ["tokens_q", "5 labels", "6"]),
        (lambda: viz.attention_heatmap(np.ones((N, N)), "the cat sat on the mat"), TypeError, ["tokens_q", "split"]),
        (lambda: viz.attention_heatmap(np.ones((N, N)), TOKENS, mask=np.ones((N, N))), TypeError, ["mask", "bool"]),
        (lambda: viz.attention_heatmap(np.ones((N, N)), TOKENS, mask=CAUSAL[:3]), ValueError, ["mask", "(3, 6)"]),
        (lambda: viz.attention_heatmap(np.ones((0, 0)), []), ValueError, ["weights", "empty"]),
        (lambda: viz.attention_heatmap(np.array([["a", "b"]]), None), TypeError, ["weights"]),
        (lambda: viz.attention_heatmap(np.ones((N, N)), TOKENS, ax="left"), TypeError, ["ax", "Axes"]),
        (lambda: viz.attention_heatmap(np.ones((N, N)), TOKENS, cmap=3), TypeError, ["cmap"]),
    ],
)
def test_heatmap_rejects_bad_input_naming_the_argument(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value)


# ---------------------------------------------------------------------------------------------
# attention_heads and attention_layers
# ---------------------------------------------------------------------------------------------


def test_heads_side_by_side_on_one_scale():
    weights = random_weights(3, N, N)
    fig = render(viz.attention_heads(torch.tensor(weights), TOKENS))
    panels = image_axes(fig)
    assert len(panels) == 3
    assert len(fig.axes) == 4  # one shared colorbar
    for head, ax in enumerate(panels):
        assert ax.get_title() == f"head {head}"
        np.testing.assert_allclose(ax.images[0].get_array(), weights[head], rtol=1e-6)
        assert ax.images[0].get_clim() == pytest.approx((0.0, weights.max()))
        assert xlabels(ax) == TOKENS
    assert ylabels(panels[0]) == TOKENS
    assert ylabels(panels[1]) == []


def test_heads_wrap_into_rows():
    fig = render(viz.attention_heads(random_weights(6, N, N), TOKENS, ncols=4))
    panels = image_axes(fig)
    assert len(panels) == 6
    rows = sorted({round(ax.get_position().y0, 3) for ax in panels})
    assert len(rows) == 2
    # The first panel of the second row carries the query labels again.
    assert ylabels(panels[4]) == TOKENS


@pytest.mark.parametrize("per_head", [False, True])
def test_heads_mask_shared_or_per_head(per_head):
    mask = np.broadcast_to(CAUSAL, (2, N, N)).copy() if per_head else CAUSAL
    if per_head:
        mask[1, :, 0] = False
    weights = random_weights(2, N, N)
    panels = image_axes(render(viz.attention_heads(weights, TOKENS, mask=mask)))
    for head, ax in enumerate(panels):
        expected = ~(mask[head] if per_head else mask)
        np.testing.assert_array_equal(np.ma.getmaskarray(ax.images[0].get_array()), expected)


def test_heads_reject_a_single_map():
    with pytest.raises(ValueError, match=r"weights must have shape \[H, Nq, Nk\]"):
        viz.attention_heads(random_weights(N, N), TOKENS)


@pytest.mark.parametrize("as_stack", [False, True], ids=["list", "4d"])
def test_layers_grid(as_stack):
    per_layer = [random_weights(3, N, N, seed=layer) for layer in range(2)]
    given = torch.tensor(np.stack(per_layer)) if as_stack else per_layer
    fig = render(viz.attention_layers(given, TOKENS))
    panels = image_axes(fig)
    assert len(panels) == 2 * 3
    assert len(fig.axes) == 2 * 3 + 1
    overall_max = max(w.max() for w in per_layer)
    for index, ax in enumerate(panels):
        layer, head = divmod(index, 3)
        np.testing.assert_allclose(ax.images[0].get_array(), per_layer[layer][head], rtol=1e-6)
        assert ax.images[0].get_clim() == pytest.approx((0.0, overall_max))
        assert xlabels(ax) == (TOKENS if layer == 1 else [])
        assert ylabels(ax) == (TOKENS if head == 0 else [])
        if head == 0:
            assert ax.get_ylabel() == f"layer {layer}"
        if layer == 0:
            assert ax.get_title() == f"head {head}"


def test_layers_reject_unequal_layers():
    with pytest.raises(ValueError, match=r"per_layer_weights\[1\]"):
        viz.attention_layers([random_weights(2, N, N), random_weights(3, N, N)], TOKENS)
    with pytest.raises(TypeError, match="per_layer_weights"):
        viz.attention_layers([], TOKENS)


def test_layers_draw_into_a_subfigure():
    fig = Figure()
    sub = fig.subfigures(1, 1)
    assert viz.attention_layers([random_weights(2, N, N)], TOKENS, fig=sub) is fig
    assert len(image_axes(render(fig))) == 2


# ---------------------------------------------------------------------------------------------
# positional encodings
# ---------------------------------------------------------------------------------------------


def test_positional_encoding_heatmap():
    pe = sinusoidal(50, 16)
    ax = image_axes(render(viz.positional_encoding_heatmap(torch.tensor(pe, dtype=torch.float32))))[0]
    np.testing.assert_allclose(ax.images[0].get_array(), pe, rtol=1e-6, atol=1e-7)
    # Symmetric limits keep 0 at the middle of the diverging colormap.
    bound = np.abs(pe).max()
    assert ax.images[0].get_clim() == pytest.approx((-bound, bound), rel=1e-6)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("dimension", "position")


def test_positional_encoding_curves_plot_the_chosen_dimensions():
    pe = sinusoidal(40, 16)
    ax = render(viz.positional_encoding_curves(pe, [0, 5, 14])).axes[0]
    assert len(ax.lines) == 3
    for line, dim in zip(ax.lines, [0, 5, 14]):
        np.testing.assert_array_equal(line.get_xdata(), np.arange(40))
        np.testing.assert_allclose(line.get_ydata(), pe[:, dim])
        assert line.get_label() == f"dim {dim}"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["dim 0", "dim 5", "dim 14"]
    default = render(viz.positional_encoding_curves(pe)).axes[0]
    assert [line.get_label() for line in default.lines] == ["dim 0", "dim 2", "dim 4", "dim 8"]


@pytest.mark.parametrize("dims", [[16], [-1], [1.5], []])
def test_positional_encoding_curves_reject_bad_dims(dims):
    with pytest.raises(ValueError, match="dims"):
        viz.positional_encoding_curves(sinusoidal(10, 16), dims)


def test_positional_encoding_similarity_is_cosine_of_pe_pe_t():
    pe = sinusoidal(30, 16)
    pe[7] = 0.0  # a zero vector has no direction
    norms = np.linalg.norm(pe, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = (pe @ pe.T) / np.outer(norms, norms)
    ax = image_axes(render(viz.positional_encoding_similarity(pe)))[0]
    drawn = ax.images[0].get_array()
    assert drawn.shape == (30, 30)
    np.testing.assert_allclose(drawn.compressed(), expected[np.isfinite(expected)])
    assert np.ma.getmaskarray(drawn)[7].all() and np.ma.getmaskarray(drawn)[:, 7].all()
    assert ax.images[0].get_clim() == (-1.0, 1.0)
    np.testing.assert_allclose(np.diag(drawn)[np.arange(30) != 7], 1.0)
    np.testing.assert_allclose(viz.positional_similarity_matrix(pe, normalize=False), pe @ pe.T)
    raw = image_axes(render(viz.positional_encoding_similarity(pe, normalize=False)))[0].images[0]
    np.testing.assert_allclose(raw.get_array(), pe @ pe.T)
    bound = np.abs(pe @ pe.T).max()
    assert raw.get_clim() == pytest.approx((-bound, bound))


def test_positional_functions_reject_a_batched_buffer():
    with pytest.raises(ValueError, match=r"pe\[0\]"):
        viz.positional_encoding_heatmap(np.zeros((1, 10, 4)))


# ---------------------------------------------------------------------------------------------
# attention received: bars, statistics, table
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# training curves
# ---------------------------------------------------------------------------------------------


def test_training_curves_plot_the_history():
    history = {
        "step": [10, 20, 30, 40],
        "loss": [2.0, 1.5, 1.1, 0.9],
        "accuracy": [0.1, 0.4, 0.6, 0.7],
        "val_loss": [1.8, 1.2],
        "val_accuracy": [0.2, 0.6],
        "val_step": [20, 40],
    }
    fig = render(viz.training_curves(history))
    loss_ax, accuracy_ax = fig.axes
    for ax, key in ((loss_ax, "loss"), (accuracy_ax, "accuracy")):
        train, validation = ax.lines
        assert (train.get_label(), validation.get_label()) == ("train", "validation")
        np.testing.assert_array_equal(train.get_xdata(), history["step"])
        np.testing.assert_array_equal(train.get_ydata(), history[key])
        np.testing.assert_array_equal(validation.get_xdata(), history["val_step"])
        np.testing.assert_array_equal(validation.get_ydata(), history[f"val_{key}"])
        assert ax.get_title() == key


def test_training_curves_loss_only_is_one_panel():
    loss = torch.linspace(3, 1, 50)
    fig = render(viz.training_curves({"loss": loss}))
    (ax,) = fig.axes
    (line,) = ax.lines
    np.testing.assert_array_equal(line.get_xdata(), np.arange(50))
    np.testing.assert_allclose(line.get_ydata(), loss.numpy())


def test_training_curves_accept_a_dataframe_with_nan_padded_validation():
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame({"loss": [3.0, 2.0, 1.0], "val_loss": [np.nan, 2.5, np.nan]})
    (ax,) = render(viz.training_curves(frame)).axes
    np.testing.assert_array_equal(ax.lines[1].get_ydata(), frame["val_loss"].to_numpy())


@pytest.mark.parametrize(
    "history, error, words",
    [
        ({"accuracy": [0.5]}, ValueError, ["'loss'", "accuracy"]),
        ({"loss": []}, ValueError, ["empty"]),
        ({"loss": [1.0, 0.5], "step": [1]}, ValueError, ["history['step']", "1 values", "2"]),
        ({"loss": [1.0, 0.5], "accuracy": [0.5]}, ValueError, ["history['accuracy']", "1 values"]),
        ({"loss": [1.0, 0.5, 0.2], "val_loss": [0.9]}, ValueError, ["val_step"]),
        ({"loss": [[1.0, 0.5]]}, ValueError, ["history['loss']", "1-D"]),
        ([1.0, 0.5], TypeError, ["history", "mapping"]),
    ],
)
def test_training_curves_reject_bad_history(history, error, words):
    with pytest.raises(error) as info:
        viz.training_curves(history)
    for word in words:
        assert word in str(info.value)


# ---------------------------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------------------------


def test_mask_picture_single_mask():
    ax = image_axes(render(viz.mask_picture(torch.tensor(CAUSAL), TOKENS)))[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), CAUSAL.astype(float))
    assert xlabels(ax) == TOKENS and ylabels(ax) == TOKENS
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["attend (True)", "blocked (False)"]
    # Attended and blocked cells get different colours.
    image = ax.images[0]
    assert image.cmap(image.norm(1.0)) != image.cmap(image.norm(0.0))


def test_mask_picture_named_masks_side_by_side():
    padding = np.ones((N, N), dtype=bool)
    padding[:, -2:] = False
    masks = {"causal": CAUSAL, "padding": padding, "combined": CAUSAL & padding}
    panels = image_axes(render(viz.mask_picture(masks, TOKENS)))
    assert [ax.get_title() for ax in panels] == list(masks)
    for ax, mask in zip(panels, masks.values()):
        np.testing.assert_array_equal(ax.images[0].get_array(), mask.astype(float))
    listed = image_axes(render(viz.mask_picture([torch.tensor(CAUSAL), padding])))
    assert [ax.get_title() for ax in listed] == ["mask 0", "mask 1"]


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: viz.mask_picture(CAUSAL.astype(float)), TypeError, ["mask", "bool", "True = attend"]),
        (lambda: viz.mask_picture(np.ones(N, dtype=bool)), ValueError, ["key_padding_mask", "True = padding"]),
        (lambda: viz.mask_picture(np.ones((1, N, N), dtype=bool)), ValueError, ["[Nq, Nk]", "3-D"]),
        (lambda: viz.mask_picture({"a": CAUSAL, "b": CAUSAL[:3]}, TOKENS), ValueError, ["tokens_q", "3"]),
        (lambda: viz.mask_picture({"a": CAUSAL, "b": CAUSAL}, ax=Figure().add_subplot()), ValueError, ["ax", "2"]),
        (lambda: viz.mask_picture({}), ValueError, ["empty"]),
    ],
)
def test_mask_picture_rejects_bad_input(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value)


# ---------------------------------------------------------------------------------------------
# attention rollout
# ---------------------------------------------------------------------------------------------


def test_rollout_two_layers_by_hand():
    # A = 0.5 W + 0.5 I, rows renormalised:
    #   W1 = [[0, 0], [.5, .5]] (row 0 fully masked) -> A1 = [[.5, 0], [.25, .75]] -> [[1, 0], [.25, .75]]
    #   W2 = [[.5, .5], [0, 1]]                      -> A2 = [[.75, .25], [0, 1]]
    #   A2 @ A1 = [[.75 + .0625, .1875], [.25, .75]]
    first = np.array([[0.0, 0.0], [0.5, 0.5]])
    second = np.array([[0.5, 0.5], [0.0, 1.0]])
    expected = np.array([[0.8125, 0.1875], [0.25, 0.75]])
    np.testing.assert_allclose(viz.attention_rollout([first, second]), expected)
    # Order matters: the first layer acts first.
    assert not np.allclose(viz.attention_rollout([second, first]), expected)
    # Per-head layers are averaged first: these two heads average to `first`.
    heads = np.array([[[0.0, 0.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]])
    np.testing.assert_allclose(viz.attention_rollout([torch.tensor(heads), second]), expected)


def test_rollout_identities():
    weights = np.stack([random_weights(3, 5, 5, seed=s) for s in range(4)])  # [L, H, N, N]
    rollout = viz.attention_rollout(torch.tensor(weights))
    assert rollout.dtype == np.float64 and rollout.shape == (5, 5)
    np.testing.assert_allclose(rollout.sum(axis=1), 1.0)
    assert (rollout >= 0).all()
    # The same layers given as a list of per-head arrays, or already head-averaged.
    np.testing.assert_allclose(viz.attention_rollout(list(weights)), rollout)
    np.testing.assert_allclose(viz.attention_rollout(weights.mean(axis=1)), rollout)
    # Attention to oneself only leaves every token where it was.
    np.testing.assert_allclose(viz.attention_rollout([np.eye(5)] * 3), np.eye(5))
    # Without the residual one layer is its own weights; with residual 1 nothing mixes.
    np.testing.assert_allclose(viz.attention_rollout([weights[0, 0]], residual=0.0), weights[0, 0])
    np.testing.assert_allclose(viz.attention_rollout(weights, residual=1.0), np.eye(5))


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: viz.attention_rollout([np.ones((2, 3))]), ValueError, ["per_layer_weights[0]", "square", "(2, 3)"]),
        (lambda: viz.attention_rollout([np.eye(2), np.eye(3)]), ValueError, ["per_layer_weights[1]", "3", "2"]),
        (lambda: viz.attention_rollout([np.full((2, 2), np.nan)]), ValueError, ["NaN"]),
        (lambda: viz.attention_rollout([-np.eye(2)]), ValueError, ["negative"]),
        (lambda: viz.attention_rollout(np.eye(3)), ValueError, ["[L, N, N]", "2-D"]),
        (lambda: viz.attention_rollout([np.ones((1, 1, 2, 2))]), ValueError, ["[H, N, N]", "4-D"]),
        (lambda: viz.attention_rollout([np.eye(2)], residual=1.5), ValueError, ["residual", "[0, 1]"]),
        (lambda: viz.attention_rollout([]), TypeError, ["per_layer_weights"]),
    ],
)
def test_rollout_rejects_bad_input(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value)


def test_rollout_heatmap_draws_the_rollout():
    per_layer = [random_weights(2, N, N, allowed=CAUSAL, seed=s) for s in range(3)]
    ax = image_axes(render(viz.attention_rollout_heatmap(per_layer, TOKENS)))[0]
    rollout = viz.attention_rollout(per_layer)
    np.testing.assert_allclose(ax.images[0].get_array(), rollout)
    assert xlabels(ax) == TOKENS and ylabels(ax) == TOKENS
    assert ax.get_title() == "attention rollout over 3 layers"
    assert ax.images[0].get_clim() == pytest.approx((0.0, rollout.max()))
    # Causal layers keep the rollout causal.
    np.testing.assert_allclose(rollout[~CAUSAL], 0.0, atol=1e-12)
    with pytest.raises(ValueError, match="tokens"):
        viz.attention_rollout_heatmap(per_layer, TOKENS[:4])


# ---------------------------------------------------------------------------------------------
# the module as a whole
# ---------------------------------------------------------------------------------------------

# Every drawing function, called on small valid input; keyword arguments (ax=, fig=) pass through.
PICTURES = {
    "attention_heatmap": lambda **kw: viz.attention_heatmap(random_weights(N, N), TOKENS, **kw),
    "attention_heads": lambda **kw: viz.attention_heads(random_weights(2, N, N), TOKENS, **kw),
    "attention_layers": lambda **kw: viz.attention_layers([random_weights(2, N, N)] * 2, TOKENS, **kw),
    "positional_encoding_heatmap": lambda **kw: viz.positional_encoding_heatmap(sinusoidal(20, 8), **kw),
    "positional_encoding_curves": lambda **kw: viz.positional_encoding_curves(sinusoidal(20, 8), **kw),
    "positional_encoding_similarity": lambda **kw: viz.positional_encoding_similarity(sinusoidal(20, 8), **kw),
    "attention_received_bar": lambda **kw: viz.attention_received_bar(random_weights(2, N, N), TOKENS, **kw),
    "attention_statistics_table": lambda **kw: viz.attention_statistics_table(random_weights(N, N), TOKENS, **kw),
    "training_curves": lambda **kw: viz.training_curves({"loss": [1.0, 0.5], "accuracy": [0.2, 0.6]}, **kw),
    "mask_picture": lambda **kw: viz.mask_picture(CAUSAL, TOKENS, **kw),
    "attention_rollout_heatmap": lambda **kw: viz.attention_rollout_heatmap([random_weights(N, N)], TOKENS, **kw),
}
MULTI_PANEL = {"attention_heads": 2, "attention_layers": 4, "training_curves": 2}
DATA_FUNCTIONS = {"attention_rollout", "attention_statistics", "positional_similarity_matrix"}


def test_every_drawing_function_is_covered():
    assert set(viz.__all__) - DATA_FUNCTIONS == set(PICTURES)


def test_pictures_leave_pyplot_alone():
    pyplot = pytest.importorskip("matplotlib.pyplot")
    open_before = list(pyplot.get_fignums())
    backend = matplotlib.get_backend()
    for draw in PICTURES.values():
        render(draw())
    assert pyplot.get_fignums() == open_before
    assert matplotlib.get_backend() == backend


@pytest.mark.parametrize("name", sorted(set(PICTURES) - set(MULTI_PANEL)))
def test_single_panel_pictures_draw_into_a_given_axes(name):
    fig = Figure()
    fig.add_subplot(1, 2, 1).plot([0, 1], [0, 1])
    ax = fig.add_subplot(1, 2, 2)
    assert PICTURES[name](ax=ax) is fig
    assert ax.images or ax.lines or ax.containers or ax.tables
    assert len(fig.axes[0].lines) == 1  # the neighbouring panel is untouched
    render(fig)


@pytest.mark.parametrize("name", sorted(MULTI_PANEL))
def test_multi_panel_pictures_draw_into_a_given_subfigure(name):
    fig = Figure(layout="constrained")
    left, right = fig.subfigures(1, 2)
    left.add_subplot().plot([0, 1], [0, 1])
    assert PICTURES[name](fig=right) is fig
    drawn = [ax for ax in right.axes if ax.images or ax.lines]
    assert len(drawn) == MULTI_PANEL[name]
    assert len(left.axes) == 1
    render(fig)
