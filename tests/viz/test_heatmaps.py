"""attnlens.viz.heatmaps: attention_heatmap, attention_heads and attention_layers, rendered and read back."""

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from attnlens import viz
from attnlens.viz._common import MASKED_COLOR

from .figures import CAUSAL, TOKENS, N, image_axes, random_weights, render, xlabels, ylabels


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
