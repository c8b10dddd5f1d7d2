"""Positional encodings: the table itself, a few of its dimensions as curves, and position similarity."""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Colormap
from matplotlib.figure import Figure

from attnlens.viz._common import (
    ArrayLike,
    MatrixStyle,
    as_float_array,
    check_ax,
    masked_values,
    matrix_picture,
    new_figure,
    root_figure,
)


def _as_encoding(pe: ArrayLike) -> np.ndarray:
    return as_float_array(pe, "pe", 2, "[max_len, d] (positions x dimensions; for a [1, max_len, d] buffer pass pe[0])")


def positional_encoding_heatmap(
    pe: ArrayLike,
    *,
    ax: Optional[Axes] = None,
    cmap: Union[str, Colormap] = "RdBu_r",
    colorbar: bool = True,
    title: Optional[str] = "positional encoding",
) -> Figure:
    """The encoding table: position on the y axis (0 at the top), dimension on the x axis.

    Args:
        pe: ``[max_len, d]`` real tensor/array, row ``p`` the vector added at position ``p``.
        ax: draw into this axes; otherwise a new Figure.
        cmap: a diverging colormap, centred on 0 (the limits are ``+-max|pe|``).

    Returns:
        The Figure; ``ax.images[0]`` holds ``pe``. For sinusoidal encodings the low dimensions
        oscillate fast down the positions and the high ones slowly.
    """
    check_ax(ax)
    values = _as_encoding(pe)
    data = masked_values(values, None)
    bound = float(np.abs(data).max()) if data.count() else 1.0
    bound = bound if bound > 0 else 1.0
    # Symmetric limits put 0 at the neutral middle colour of a diverging map.
    return matrix_picture(
        ax,
        values,
        MatrixStyle(cmap, vmin=-bound, vmax=bound, annotate=False),
        xlabel="dimension",
        ylabel="position",
        title=title,
        colorbar_base="value" if colorbar else None,
        figsize=(7.0, 5.0),
    )


def _default_dims(d: int) -> List[int]:
    """Dimensions 0, d/8, d/4 and d/2 (rounded down to even, the sines): for sinusoidal encodings
    their wavelengths grow geometrically, from a few positions to thousands, so the curves show
    fast, medium and slow waves within a typical sequence length.
    """
    return sorted({(d * k // 8) // 2 * 2 for k in (0, 1, 2, 4)} & set(range(d)))


def positional_encoding_curves(
    pe: ArrayLike,
    dims: Optional[Sequence[int]] = None,
    *,
    ax: Optional[Axes] = None,
    title: Optional[str] = "positional encoding by dimension",
) -> Figure:
    """Selected dimensions of the encoding as curves over position.

    Args:
        pe: ``[max_len, d]`` real tensor/array.
        dims: indices into the ``d`` dimensions, each in ``[0, d)``; by default 0, d/8, d/4
            and d/2 rounded down to even (fast to slow waves for sinusoidal encodings).
        ax: draw into this axes; otherwise a new Figure.

    Returns:
        The Figure; ``ax.lines[i]`` is ``pe[:, dims[i]]`` against positions ``0..max_len-1``,
        labelled ``dim {dims[i]}`` in the legend.
    """
    check_ax(ax)
    values = _as_encoding(pe)
    max_len, d = values.shape
    if dims is None:
        dims = _default_dims(d)
    if isinstance(dims, (int, np.integer)):
        dims = [int(dims)]
    dims = list(dims)
    if not dims:
        raise ValueError("dims must name at least one dimension, got an empty sequence")
    for dim in dims:
        if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or not 0 <= dim < d:
            raise ValueError(f"dims must hold ints in [0, {d}) for pe of shape {values.shape}, got {dim!r}")
    if ax is None:
        ax = new_figure(7.0, 4.0).add_subplot()
    positions = np.arange(max_len)
    for dim in dims:
        ax.plot(positions, values[:, dim], label=f"dim {int(dim)}")
    ax.set_xlabel("position")
    ax.set_ylabel("value")
    ax.legend(loc="upper right", fontsize="small")
    if title:
        ax.set_title(title)
    return root_figure(ax)


def positional_similarity_matrix(pe: ArrayLike, normalize: bool = True) -> np.ndarray:
    """``PE @ PE.T`` as float64 ``[max_len, max_len]``; cosine similarity when ``normalize``.

    A zero position vector has no direction: its cosine row and column are NaN.
    """
    values = _as_encoding(pe).astype(np.float64)
    gram = values @ values.T
    if not normalize:
        return gram
    norms = np.linalg.norm(values, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return gram / np.outer(norms, norms)


def positional_encoding_similarity(
    pe: ArrayLike,
    *,
    normalize: bool = True,
    ax: Optional[Axes] = None,
    cmap: Union[str, Colormap] = "RdBu_r",
    colorbar: bool = True,
    title: Optional[str] = None,
) -> Figure:
    """How alike every pair of positions is: the matrix ``PE PE^T`` as a heatmap.

    For sinusoidal encodings the similarity depends (almost) only on the distance between two
    positions, so the picture is a band along the diagonal: the encoding carries relative order.

    Args:
        pe: ``[max_len, d]`` real tensor/array.
        normalize: divide by the vector norms (cosine similarity, colour limits ``[-1, 1]``);
            otherwise raw dot products with limits ``+-max|PE PE^T|``.
        ax: draw into this axes; otherwise a new Figure.

    Returns:
        The Figure; ``ax.images[0]`` holds the ``[max_len, max_len]`` matrix (zero vectors masked).
    """
    check_ax(ax)
    similarity = positional_similarity_matrix(pe, normalize)
    if normalize:
        low, high = -1.0, 1.0
    else:
        finite = np.abs(similarity[np.isfinite(similarity)])
        high = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        low = -high
    if title is None:
        title = "cosine similarity of positions" if normalize else "dot product of positions (PE PE^T)"
    return matrix_picture(
        ax,
        similarity,
        MatrixStyle(cmap, vmin=low, vmax=high, annotate=False),
        xlabel="position",
        ylabel="position",
        title=title,
        colorbar_base=("cosine similarity" if normalize else "dot product") if colorbar else None,
        figsize=(6.0, 5.0),
    )
