"""What the viz tests draw and how they read it back: example weights, token labels, the render step.

The checks read the drawn artists back (tick labels, image arrays, colour limits, bar heights,
line data, table cells), so a picture that silently shows the wrong numbers fails.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure

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
