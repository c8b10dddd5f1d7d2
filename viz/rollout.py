"""Attention rollout (Abnar & Zuidema, 2020): how much each input token flows into each position.

A single layer's weights say where a position looks in the layer below, not which input tokens
end up in it: after a few layers every position is a mixture. Rollout follows the mixing through
the stack. Each layer's head-averaged weights ``W`` are blended with the identity for the residual
connection, ``A = (1 - r) W + r I`` (``r = 0.5`` in the paper), each row renormalised, and the
layers multiplied from the first to the last: ``rollout = A_L @ ... @ A_2 @ A_1``.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Colormap
from matplotlib.figure import Figure

from attnlens.viz._common import (
    MAX_TICK_LABELS,
    ArrayLike,
    MatrixStyle,
    Tokens,
    as_float_array,
    as_labels,
    check_ax,
    is_array,
    matrix_picture,
)

PerLayerWeights = Union[ArrayLike, Sequence[ArrayLike]]


def _layer_matrices(per_layer_weights: PerLayerWeights) -> List[np.ndarray]:
    """Each layer's ``[N, N]`` weights, heads averaged, checked square, equal-sized and finite."""
    if is_array(per_layer_weights):
        stacked = as_float_array(per_layer_weights, "per_layer_weights", (3, 4), "[L, N, N] or [L, H, N, N]")
        layers = [(f"per_layer_weights[{i}]", stacked[i]) for i in range(stacked.shape[0])]
    elif isinstance(per_layer_weights, (list, tuple)) and per_layer_weights:
        layers = [
            (f"per_layer_weights[{i}]", as_float_array(w, f"per_layer_weights[{i}]", (2, 3), "[N, N] or [H, N, N]"))
            for i, w in enumerate(per_layer_weights)
        ]
    else:
        raise TypeError(
            "per_layer_weights must be a [L, N, N] or [L, H, N, N] tensor/array, or a non-empty "
            f"list of [N, N] or [H, N, N] ones, got {type(per_layer_weights).__name__}"
        )
    matrices = []
    for name, weights in layers:
        if weights.shape[-1] != weights.shape[-2]:
            raise ValueError(
                f"{name} has shape {weights.shape}: rollout needs self-attention, square [..., N, N] weights (Nq == Nk)"
            )
        if not np.all(np.isfinite(weights)):
            raise ValueError(
                f"{name} has NaN or infinite weights; rollout needs probabilities "
                "(masked cells as 0, as the kernel returns them)"
            )
        if np.any(weights < 0):
            raise ValueError(f"{name} has negative weights (min {weights.min():.3g}); rollout needs probabilities")
        # Heads are averaged, as in the paper, before the layers are chained.
        matrix = weights.astype(np.float64) if weights.ndim == 2 else weights.astype(np.float64).mean(axis=0)
        if matrices and matrix.shape != matrices[0].shape:
            raise ValueError(
                f"{name} covers {matrix.shape[0]} tokens but per_layer_weights[0] covers "
                f"{matrices[0].shape[0]}; every layer must see the same sequence"
            )
        matrices.append(matrix)
    return matrices


def attention_rollout(per_layer_weights: PerLayerWeights, *, residual: float = 0.5) -> np.ndarray:
    """Attention rollout: ``A_L @ ... @ A_1`` with ``A = row_normalise((1 - residual) W + residual I)``.

    Args:
        per_layer_weights: self-attention weights of one example, the first axis being the
            layer, first layer first: a list of ``[N, N]`` (heads averaged) or ``[H, N, N]``
            (heads are averaged here) tensors/arrays, or one ``[L, N, N]`` or ``[L, H, N, N]``
            tensor/array. Weights must be finite and non-negative.
        residual: share of the identity standing for the residual connection, in ``[0, 1]``;
            0.5 as in the paper.

    Returns:
        float64 ``[N, N]``: row ``i`` says how much of output position ``i`` after the last layer
        comes from each input token. Rows sum to 1 (a row that sums to 0 before normalising,
        possible only with ``residual=0``, stays 0).
    """
    if isinstance(residual, bool) or not isinstance(residual, (int, float)) or not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual must be a number in [0, 1], got {residual!r}")
    matrices = _layer_matrices(per_layer_weights)
    size = matrices[0].shape[0]
    identity = np.eye(size)
    rollout = identity
    for weights in matrices:
        blended = (1.0 - residual) * weights + residual * identity
        row_sums = blended.sum(axis=-1, keepdims=True)
        blended = np.divide(blended, row_sums, out=np.zeros_like(blended), where=row_sums > 0)
        # Later layers act on the mixture the earlier ones produced, so they multiply from the left.
        rollout = blended @ rollout
    return rollout


def attention_rollout_heatmap(
    per_layer_weights: PerLayerWeights,
    tokens: Tokens,
    *,
    residual: float = 0.5,
    ax: Optional[Axes] = None,
    cmap: Union[str, Colormap] = "viridis",
    vmin: Optional[float] = None,
    vmax: Optional[float] = None,
    annotate: Optional[bool] = None,
    value_format: str = "{:.2f}",
    colorbar: bool = True,
    title: Optional[str] = None,
    max_labels: int = MAX_TICK_LABELS,
) -> Figure:
    """:func:`attention_rollout` as a heatmap: output positions on the y axis, input tokens on the x axis.

    Args:
        per_layer_weights, residual: as in :func:`attention_rollout`.
        tokens: ``N`` labels (None for positions).
        Other arguments as in :func:`attention_heatmap`.

    Returns:
        The Figure; ``ax.images[0]`` holds the rollout matrix.
    """
    check_ax(ax)
    rollout = attention_rollout(per_layer_weights, residual=residual)
    size = rollout.shape[0]
    labels = as_labels(tokens, "tokens", size, "tokens (rows and columns)")
    if title is None:
        num_layers = len(per_layer_weights)
        title = f"attention rollout over {num_layers} layer{'s' if num_layers != 1 else ''}"
    return matrix_picture(
        ax,
        rollout,
        MatrixStyle(cmap, vmin, vmax, annotate, value_format, max_labels),
        xlabel="input token",
        ylabel="output position",
        title=title,
        colorbar_base="share of input token" if colorbar else None,
        row_labels=labels,
        col_labels=labels,
    )
