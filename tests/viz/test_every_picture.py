"""attnlens.viz as a whole: every drawing function is covered, leaves pyplot alone and draws into a
given axes or subfigure."""

import matplotlib
import pytest
from matplotlib.figure import Figure

from attnlens import viz

from .figures import CAUSAL, TOKENS, N, random_weights, render, sinusoidal

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
# The interactive HTML page, not a matplotlib picture: tests/viz/test_explorer.py and test_explorer_browser.py.
INTERACTIVE = {"explorer", "Explorer"}


def test_every_drawing_function_is_covered():
    assert set(viz.__all__) - DATA_FUNCTIONS - INTERACTIVE == set(PICTURES)


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
