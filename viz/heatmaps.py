"""Attention weights as heatmaps: one map, all heads of a layer, and the layers x heads grid."""

from __future__ import annotations

import dataclasses
import math
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Colormap
from matplotlib.figure import Figure, FigureBase
from matplotlib.image import AxesImage

from attnlens.viz._common import (
    MAX_TICK_LABELS,
    ArrayLike,
    MatrixStyle,
    Tokens,
    as_bool_mask,
    as_float_array,
    check_ax,
    check_fig,
    color_limits,
    colorbar_label,
    draw_matrix,
    is_array,
    key_labels,
    masked_values,
    matrix_picture,
    new_figure,
    to_numpy,
)

WEIGHT_LABEL = "attention weight"


def attention_heatmap(
    weights: ArrayLike,
    tokens_q: Tokens,
    tokens_k: Tokens = None,
    *,
    mask: Optional[ArrayLike] = None,
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
    """One attention matrix: queries on the y axis (top to bottom), keys on the x axis.

    Args:
        weights: ``[Nq, Nk]`` real tensor or array; row ``i`` is how query ``i`` spreads its
            attention over the keys. Select one example and head first (``w[0, h]``).
        tokens_q: ``Nq`` labels for the rows, or None for positions 0..Nq-1.
        tokens_k: ``Nk`` labels for the columns; None reuses ``tokens_q`` (self-attention).
        mask: optional bool ``[Nq, Nk]``, True = attended (torch's ``attn_mask`` convention).
            Cells where it is False, and NaN or infinite cells, are drawn grey, distinct from a
            small weight.
        ax: draw into this axes (its figure is returned); otherwise a new Figure is made.
        vmin, vmax: colour limits; by default 0 (or the minimum, if negative) to the largest
            visible weight.
        annotate: write each value in its cell; None does so when both axes have <= 16 tokens.
        value_format: format of those values.
        colorbar: add a colorbar beside the axes.
        max_labels: at most this many tick labels per axis; longer inputs show every k-th token.

    Returns:
        The Figure drawn into. ``ax.images[0]`` holds the weights as a masked array.
    """
    check_ax(ax)
    values = as_float_array(
        weights, "weights", 2, "[Nq, Nk]", "select one example and head first, e.g. weights[0, h] of [B, H, Nq, Nk]"
    )
    num_queries, num_keys = values.shape
    labels_q, labels_k = key_labels(tokens_q, tokens_k, num_queries, num_keys)
    allowed = None if mask is None else as_bool_mask(mask, "mask", values.shape, "[Nq, Nk]")
    return matrix_picture(
        ax,
        values,
        MatrixStyle(cmap, vmin, vmax, annotate, value_format, max_labels),
        xlabel="key",
        ylabel="query",
        title=title,
        colorbar_base=WEIGHT_LABEL if colorbar else None,
        allowed=allowed,
        row_labels=labels_q,
        col_labels=labels_k,
    )


def _per_head_mask(mask: Optional[ArrayLike], shape: tuple, name: str, expected: str) -> Optional[np.ndarray]:
    """A mask shared by all heads ``[Nq, Nk]`` or one per head ``[H, Nq, Nk]``, as ``[H, Nq, Nk]``."""
    if mask is None:
        return None
    array = to_numpy(mask, name)
    if array.ndim == 2:
        shared = as_bool_mask(array, name, shape[-2:], "[Nq, Nk]")
        return np.broadcast_to(shared, shape)
    return as_bool_mask(array, name, shape, expected)


def _shared_scale(values: np.ndarray, allowed: Optional[np.ndarray], style: MatrixStyle) -> Tuple[MatrixStyle, str]:
    """One colour scale for every panel, so equal colours mean equal weights across heads and layers:
    ``style`` with its limits fixed from all panels' visible cells, and the colorbar's label."""
    data = masked_values(values, allowed)
    low, high = color_limits(data, style.vmin, style.vmax)
    return dataclasses.replace(style, vmin=low, vmax=high), colorbar_label(WEIGHT_LABEL, data)


def _finish_panels(fig: FigureBase, image: AxesImage, axes: List[Axes], label: str, title: Optional[str]) -> Figure:
    """One colorbar for all panels, the suptitle, and the root figure."""
    fig.colorbar(image, ax=axes, label=label)
    if title is not None:
        fig.suptitle(title)
    return fig.figure


def attention_heads(
    weights: ArrayLike,
    tokens: Tokens,
    tokens_k: Tokens = None,
    *,
    mask: Optional[ArrayLike] = None,
    fig: Optional[FigureBase] = None,
    ncols: Optional[int] = None,
    cmap: Union[str, Colormap] = "viridis",
    vmin: Optional[float] = None,
    vmax: Optional[float] = None,
    annotate: Optional[bool] = None,
    value_format: str = "{:.2f}",
    title: Optional[str] = None,
    max_labels: int = MAX_TICK_LABELS,
) -> Figure:
    """All heads of one layer side by side, on one shared colour scale with one colorbar.

    Args:
        weights: ``[H, Nq, Nk]``; for a single head pass ``w[None]``.
        tokens: ``Nq`` query labels (None for positions); ``tokens_k`` the ``Nk`` key labels,
            None to reuse ``tokens``.
        mask: optional bool, True = attended: ``[Nq, Nk]`` shared by the heads or ``[H, Nq, Nk]``.
        fig: an empty Figure or SubFigure to draw into; otherwise a new Figure.
        ncols: panels per row; by default ``min(H, 4)``.
        Other arguments as in :func:`attention_heatmap`.

    Returns:
        The Figure: ``H`` panels titled ``head 0``..``head H-1`` plus one colorbar. Every panel
        shows key labels; the first column shows query labels.
    """
    check_fig(fig)
    values = as_float_array(
        weights,
        "weights",
        3,
        "[H, Nq, Nk]",
        "select one example first, e.g. weights[0] of [B, H, Nq, Nk]; one head: weights[None]",
    )
    num_heads, num_queries, num_keys = values.shape
    labels_q, labels_k = key_labels(tokens, tokens_k, num_queries, num_keys)
    allowed = _per_head_mask(mask, values.shape, "mask", "[H, Nq, Nk]")
    if ncols is None:
        ncols = min(num_heads, 4)
    if not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols must be a positive int, got {ncols!r}")
    ncols = min(ncols, num_heads)
    nrows = math.ceil(num_heads / ncols)
    style, bar_label = _shared_scale(values, allowed, MatrixStyle(cmap, vmin, vmax, annotate, value_format, max_labels))

    if fig is None:
        # Panels share one colorbar and the query labels, so each needs less room than a lone map.
        panel_w = min(max(0.35 * num_keys + 1.0, 2.8), 5.0)
        panel_h = min(max(0.35 * num_queries + 1.2, 2.8), 5.0)
        fig = new_figure(min(panel_w * ncols + 1.5, 24.0), min(panel_h * nrows + 0.3, 24.0))
    grid = fig.add_gridspec(nrows, ncols)
    axes: List[Axes] = []
    for head in range(num_heads):
        row, col = divmod(head, ncols)
        ax = fig.add_subplot(grid[row, col])
        image = draw_matrix(
            ax,
            values[head],
            style,
            allowed=None if allowed is None else allowed[head],
            row_labels=labels_q if col == 0 else None,
            col_labels=labels_k,
        )
        if col != 0:
            ax.set_yticks([])
        else:
            ax.set_ylabel("query")
        ax.set_xlabel("key")
        ax.set_title(f"head {head}")
        axes.append(ax)
    return _finish_panels(fig, image, axes, bar_label, title)


def _stack_layers(per_layer_weights: Union[ArrayLike, Sequence[ArrayLike]]) -> np.ndarray:
    """``[L, H, Nq, Nk]`` from a 4-D array or a sequence of equally shaped ``[H, Nq, Nk]`` layers."""
    if is_array(per_layer_weights):
        return as_float_array(per_layer_weights, "per_layer_weights", 4, "[L, H, Nq, Nk]")
    if not isinstance(per_layer_weights, (list, tuple)) or not per_layer_weights:
        raise TypeError(
            "per_layer_weights must be a [L, H, Nq, Nk] tensor/array or a non-empty list of "
            f"[H, Nq, Nk] tensors/arrays, got {type(per_layer_weights).__name__}"
        )
    layers = [as_float_array(w, f"per_layer_weights[{i}]", 3, "[H, Nq, Nk]") for i, w in enumerate(per_layer_weights)]
    for i, layer in enumerate(layers):
        if layer.shape != layers[0].shape:
            raise ValueError(
                f"per_layer_weights[{i}] has shape {layer.shape} but per_layer_weights[0] has "
                f"{layers[0].shape}; every layer must have the same [H, Nq, Nk]"
            )
    return np.stack(layers)


def attention_layers(
    per_layer_weights: Union[ArrayLike, Sequence[ArrayLike]],
    tokens: Tokens,
    tokens_k: Tokens = None,
    *,
    mask: Optional[ArrayLike] = None,
    fig: Optional[FigureBase] = None,
    cmap: Union[str, Colormap] = "viridis",
    vmin: Optional[float] = None,
    vmax: Optional[float] = None,
    annotate: bool = False,
    value_format: str = "{:.2f}",
    cell_inches: float = 2.2,
    title: Optional[str] = None,
    max_labels: int = MAX_TICK_LABELS,
) -> Figure:
    """The model view: a grid with one row per layer and one column per head.

    Args:
        per_layer_weights: a ``[L, H, Nq, Nk]`` tensor/array, or a list of ``L`` equally shaped
            ``[H, Nq, Nk]`` ones (what a model returns per layer for one example).
        tokens: ``Nq`` query labels (None for positions); ``tokens_k`` the key labels, None to
            reuse ``tokens``.
        mask: optional bool, True = attended: ``[Nq, Nk]`` shared by all panels.
        fig: an empty Figure or SubFigure to draw into; otherwise a new Figure.
        annotate: write values in cells (off by default: the panels are small).
        cell_inches: size of each panel in a new figure.
        Other arguments as in :func:`attention_heatmap`.

    Returns:
        The Figure: ``L * H`` panels on one shared colour scale plus one colorbar. Key labels sit
        under the bottom row, query labels left of the first column, which is labelled
        ``layer i``; the top row is titled ``head j``.
    """
    check_fig(fig)
    values = _stack_layers(per_layer_weights)
    num_layers, num_heads, num_queries, num_keys = values.shape
    labels_q, labels_k = key_labels(tokens, tokens_k, num_queries, num_keys)
    allowed = None
    if mask is not None:
        allowed = np.broadcast_to(as_bool_mask(mask, "mask", (num_queries, num_keys), "[Nq, Nk]"), values.shape)
    style, bar_label = _shared_scale(values, allowed, MatrixStyle(cmap, vmin, vmax, annotate, value_format, max_labels))

    if fig is None:
        fig = new_figure(min(cell_inches * num_heads + 1.5, 30.0), min(cell_inches * num_layers + 0.5, 30.0))
    grid = fig.add_gridspec(num_layers, num_heads)
    axes: List[Axes] = []
    for layer in range(num_layers):
        for head in range(num_heads):
            ax = fig.add_subplot(grid[layer, head])
            first_col, last_row = head == 0, layer == num_layers - 1
            image = draw_matrix(
                ax,
                values[layer, head],
                style,
                allowed=None if allowed is None else allowed[layer, head],
                row_labels=labels_q if first_col else None,
                col_labels=labels_k if last_row else None,
            )
            if not first_col:
                ax.set_yticks([])
            else:
                ax.set_ylabel(f"layer {layer}")
            if not last_row:
                ax.set_xticks([])
            if layer == 0:
                ax.set_title(f"head {head}")
            axes.append(ax)
    return _finish_panels(fig, image, axes, bar_label, title)
