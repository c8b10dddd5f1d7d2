"""attnlens.viz.rollout: attention rollout by hand, its identities, its errors and its heatmap."""

import numpy as np
import pytest
import torch

from attnlens import viz

from .figures import CAUSAL, TOKENS, N, image_axes, random_weights, render, xlabels, ylabels


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
