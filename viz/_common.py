"""Shared plumbing for the pictures: input checks, figures, thinned ticks and the matrix painter.

Nothing here touches pyplot: figures are built with ``matplotlib.figure.Figure`` so that no
global state leaks between calls and the module works under any backend (Agg included) without
selecting one.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure, FigureBase
from matplotlib.image import AxesImage

# A torch tensor, a numpy array or anything np.asarray understands (nested lists).
ArrayLike = Any
Tokens = Optional[Sequence[Any]]

# Beyond this many labels an axis becomes a smear of overlapping text; every k-th one is shown.
MAX_TICK_LABELS = 40
# Numbers fit in a cell only while both axes are this short.
MAX_ANNOTATED_CELLS = 16
# Light grey sits outside every sequential colormap we default to, so a masked cell never reads
# as a small weight.
MASKED_COLOR = "#c8c8c8"


def is_array(value: Any) -> bool:
    """True for a numpy array or a torch tensor (as opposed to a list of per-layer arrays)."""
    torch = sys.modules.get("torch")
    return isinstance(value, np.ndarray) or (torch is not None and isinstance(value, torch.Tensor))


def to_numpy(value: ArrayLike, name: str) -> np.ndarray:
    """``value`` as a numpy array: floats stay floats (float16 widened), bools stay bools.

    Tensors are detached and copied to the CPU. Integers become float64.
    """
    # Recognise tensors without importing torch: if torch was never imported, no tensor exists.
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        if value.is_complex():
            raise TypeError(f"{name} must hold real numbers, got a complex tensor of dtype {value.dtype}")
        value = value.detach()
        # bfloat16 and float16 have no (or poor) numpy support, so widen them to float32.
        return value.cpu().numpy() if value.dtype == torch.bool else value.float().cpu().numpy()
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a tensor or array of numbers, got {type(value).__name__}: {err}") from err
    if array.dtype == np.bool_:
        return array
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32) if array.dtype == np.float16 else array
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.float64)
    raise TypeError(
        f"{name} must be a tensor or array of real numbers, got {type(value).__name__} with dtype {array.dtype}"
    )


def as_float_array(
    value: ArrayLike, name: str, ndims: Union[int, Tuple[int, ...]], expected: str, hint: str = ""
) -> np.ndarray:
    """``value`` as a floating array with one of the allowed numbers of dimensions.

    ``expected`` is the shape the caller documents (``"[Nq, Nk]"``), quoted in the error with
    ``hint`` (how to get there from what users usually hold).
    """
    array = to_numpy(value, name)
    if array.dtype == np.bool_:
        array = array.astype(np.float64)
    allowed = (ndims,) if isinstance(ndims, int) else ndims
    if array.ndim not in allowed:
        raise ValueError(
            f"{name} must have shape {expected} ({' or '.join(map(str, allowed))}-D), "
            f"got {array.ndim}-D shape {tuple(array.shape)}" + (f"; {hint}" if hint else "")
        )
    if array.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(array.shape)}")
    return array


def check_bool_mask_dtype(array: np.ndarray, name: str) -> np.ndarray:
    """``array`` itself if it is bool (True = attend), otherwise a TypeError saying how to get there."""
    if array.dtype != np.bool_:
        raise TypeError(
            f"{name} must be a bool mask with True = attend, got dtype {array.dtype}; "
            f"for an additive float mask pass `{name} > -inf` (e.g. torch.isfinite(m))"
        )
    return array


def as_bool_mask(value: ArrayLike, name: str, shape: Tuple[int, ...], expected: str) -> np.ndarray:
    """A bool mask (True = attended) of exactly ``shape``; nothing is broadcast."""
    array = check_bool_mask_dtype(to_numpy(value, name), name)
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {expected} = {tuple(shape)}, got {tuple(array.shape)}")
    return array


def as_labels(tokens: Tokens, name: str, length: int, axis: str) -> List[str]:
    """Token labels as strings, checked against the length of the axis they label.

    ``None`` labels positions 0..length-1.
    """
    if tokens is None:
        return [str(i) for i in range(length)]
    if isinstance(tokens, (str, bytes)):
        raise TypeError(
            f"{name} must be a sequence of token labels, got a single string {tokens[:40]!r}; "
            f"split it first, e.g. sentence.split()"
        )
    if hasattr(tokens, "tolist"):  # tensors and arrays of token ids
        tokens = tokens.tolist()
    try:
        labels = [str(t) for t in tokens]
    except TypeError as err:
        raise TypeError(f"{name} must be a sequence of token labels, got {type(tokens).__name__}") from err
    if len(labels) != length:
        raise ValueError(f"{name} has {len(labels)} labels but the weights have {length} {axis}")
    return labels


def key_labels(tokens_q: Tokens, tokens_k: Tokens, num_queries: int, num_keys: int) -> Tuple[List[str], List[str]]:
    """Query and key labels; keys reuse the query labels (self-attention) when ``tokens_k`` is None."""
    labels_q = as_labels(tokens_q, "tokens_q", num_queries, "queries (rows)")
    if tokens_k is None and tokens_q is not None:
        if num_keys != num_queries:
            raise ValueError(
                f"tokens_k is None, so the keys would reuse tokens_q ({num_queries} labels), "
                f"but the weights have {num_keys} keys; pass tokens_k"
            )
        return labels_q, list(labels_q)
    return labels_q, as_labels(tokens_k, "tokens_k", num_keys, "keys (columns)")


def root_figure(ax: Axes) -> Figure:
    """The top-level Figure an axes lives in (also when it sits in a SubFigure)."""
    return ax.figure.figure


def new_figure(width: float, height: float) -> Figure:
    """A pyplot-free figure; constrained layout keeps colorbars and rotated labels inside it."""
    return Figure(figsize=(width, height), layout="constrained")


def check_ax(ax: Any) -> None:
    if ax is not None and not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes, got {type(ax).__name__}")


def check_fig(fig: Any) -> None:
    if fig is not None and not isinstance(fig, FigureBase):
        raise TypeError(f"fig must be a matplotlib Figure or SubFigure, got {type(fig).__name__}")


def matrix_figure_size(rows: int, cols: int) -> Tuple[float, float]:
    """Roughly square cells for short inputs, a fixed comfortable size for long ones."""
    width = min(max(0.45 * cols + 2.5, 4.5), 10.0)
    height = min(max(0.45 * rows + 1.5, 3.5), 9.0)
    return width, height


def thinned_ticks(labels: Sequence[str], max_labels: int = MAX_TICK_LABELS) -> Tuple[List[int], List[str]]:
    """Every k-th position and its label, so that at most ``max_labels`` are shown."""
    if max_labels < 1:
        raise ValueError(f"max_labels must be at least 1, got {max_labels}")
    step = max(1, math.ceil(len(labels) / max_labels))
    positions = list(range(0, len(labels), step))
    return positions, [labels[i] for i in positions]


def set_token_ticks(ax: Axes, axis: str, labels: Sequence[str], max_labels: int = MAX_TICK_LABELS) -> None:
    """Put token labels on an axis of cells centred at 0..len-1, thinned when long."""
    positions, shown = thinned_ticks(labels, max_labels)
    if axis == "x":
        # Tokens are words: rotate them once they would collide horizontally.
        wide = len(shown) > 6 or any(len(s) > 4 for s in shown)
        ax.set_xticks(positions, labels=shown, rotation=90 if wide else 0)
    else:
        ax.set_yticks(positions, labels=shown)


def resolve_cmap(cmap: Union[str, Colormap], bad_color: str = MASKED_COLOR) -> Colormap:
    """A copy of ``cmap`` whose "bad" colour (masked cells) is ``bad_color``; the caller's object is untouched."""
    base = colormaps[cmap] if isinstance(cmap, str) else cmap
    if not isinstance(base, Colormap):
        raise TypeError(f"cmap must be a colormap name or a matplotlib Colormap, got {type(cmap).__name__}")
    return base.with_extremes(bad=bad_color)


def masked_values(values: np.ndarray, allowed: Optional[np.ndarray]) -> np.ma.MaskedArray:
    """Cells the mask forbids (False) and non-finite cells (NaN, +-inf scores) are masked."""
    hidden = ~np.isfinite(values)
    if allowed is not None:
        hidden |= ~allowed
    return np.ma.masked_array(values, mask=hidden)


def color_limits(data: np.ma.MaskedArray, vmin: Optional[float], vmax: Optional[float]) -> Tuple[float, float]:
    """Colour limits: from 0 (or the smallest value, if negative) to the largest visible value.

    Starting at 0 keeps "dark" meaning "no attention" instead of "the least of this picture".
    """
    if vmin is not None and vmax is not None and not vmin < vmax:
        raise ValueError(f"vmin must be below vmax, got vmin={vmin} and vmax={vmax}")
    visible = data.compressed()
    if vmin is None:
        vmin = min(0.0, float(visible.min())) if visible.size else 0.0
    if vmax is None:
        vmax = float(visible.max()) if visible.size else 1.0
        if vmax <= vmin:
            vmax = vmin + 1.0
    return float(vmin), float(vmax)


def annotate_cells(ax: Axes, image: AxesImage, data: np.ma.MaskedArray, value_format: str) -> None:
    """Write each visible cell's value in it, dark on light cells and light on dark ones."""
    rows, cols = data.shape
    fontsize = 8 if max(rows, cols) <= 8 else 6
    rgba = image.cmap(image.norm(data))
    for i in range(rows):
        for j in range(cols):
            if data.mask[i, j]:
                continue
            red, green, blue = rgba[i, j, :3]
            luminance = 0.299 * red + 0.587 * green + 0.114 * blue
            ax.text(
                j,
                i,
                value_format.format(float(data[i, j])),
                ha="center",
                va="center",
                fontsize=fontsize,
                color="black" if luminance > 0.5 else "white",
            )


def colorbar_label(base: str, data: np.ma.MaskedArray) -> str:
    """Say what grey means on the colorbar, but only when something is masked."""
    return f"{base} (grey = masked)" if np.ma.count_masked(data) else base


@dataclasses.dataclass(frozen=True)
class MatrixStyle:
    """How ``draw_matrix`` paints a matrix: the keyword arguments the matrix pictures share.

    ``cmap``: a colormap name or Colormap. ``vmin``/``vmax``: colour limits (None: from 0, or the
    minimum if negative, to the largest visible value). ``annotate``: write values in the cells
    (None: only when both axes have at most 16 entries), formatted by ``value_format``.
    ``max_labels``: at most this many tick labels per axis.
    """

    cmap: Union[str, Colormap] = "viridis"
    vmin: Optional[float] = None
    vmax: Optional[float] = None
    annotate: Optional[bool] = None
    value_format: str = "{:.2f}"
    max_labels: int = MAX_TICK_LABELS


def draw_matrix(
    ax: Axes,
    values: np.ndarray,
    style: MatrixStyle,
    *,
    allowed: Optional[np.ndarray] = None,
    row_labels: Optional[Sequence[str]] = None,
    col_labels: Optional[Sequence[str]] = None,
) -> AxesImage:
    """Paint a [rows, cols] matrix as one image (never per-cell patches, so 1000s of tokens stay cheap).

    Row 0 is at the top. Cells where ``allowed`` is False, and non-finite cells, are masked (grey).
    Labels are thinned to ``style.max_labels``.
    """
    data = masked_values(values, allowed)
    low, high = color_limits(data, style.vmin, style.vmax)
    image = ax.imshow(
        data,
        cmap=resolve_cmap(style.cmap),
        norm=Normalize(low, high),
        aspect="auto",
        interpolation="nearest" if max(values.shape) <= 256 else "antialiased",
    )
    if row_labels is not None:
        set_token_ticks(ax, "y", row_labels, style.max_labels)
    if col_labels is not None:
        set_token_ticks(ax, "x", col_labels, style.max_labels)
    annotate = style.annotate
    if annotate is None:
        annotate = max(values.shape) <= MAX_ANNOTATED_CELLS
    if annotate:
        annotate_cells(ax, image, data, style.value_format)
    return image


def matrix_picture(
    ax: Optional[Axes],
    values: np.ndarray,
    style: MatrixStyle,
    *,
    xlabel: str,
    ylabel: str,
    title: Optional[str],
    colorbar_base: Optional[str],
    allowed: Optional[np.ndarray] = None,
    row_labels: Optional[Sequence[str]] = None,
    col_labels: Optional[Sequence[str]] = None,
    figsize: Optional[Tuple[float, float]] = None,
) -> Figure:
    """A one-panel matrix picture: ``draw_matrix`` into ``ax`` (or into a new figure of ``figsize``,
    by default sized for the matrix), the axis names, the title (when not None or empty) and a
    colorbar labelled ``colorbar_base`` (none when it is None). Returns the root figure."""
    if ax is None:
        ax = new_figure(*(figsize or matrix_figure_size(*values.shape))).add_subplot()
    image = draw_matrix(ax, values, style, allowed=allowed, row_labels=row_labels, col_labels=col_labels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if colorbar_base is not None:
        ax.figure.colorbar(image, ax=ax, label=colorbar_label(colorbar_base, image.get_array()))
    return root_figure(ax)
