"""Bool attention masks drawn as the kernel reads them: True = this query may attend to this key."""

from __future__ import annotations

from typing import List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure, FigureBase
from matplotlib.patches import Patch

from attnlens.viz._common import (
    MASKED_COLOR,
    MAX_TICK_LABELS,
    ArrayLike,
    Tokens,
    check_ax,
    check_bool_mask_dtype,
    check_fig,
    is_array,
    key_labels,
    matrix_figure_size,
    new_figure,
    root_figure,
    set_token_ticks,
    to_numpy,
)

# Blocked cells share the heatmaps' grey for masked cells, so the two pictures read alike.
BLOCKED_COLOR = MASKED_COLOR
ATTEND_COLOR = "#2c7fb8"
# Cell outlines help counting positions only while cells are big enough to see them.
MAX_OUTLINED_CELLS = 32

# What mask_picture draws: one bool mask, or several as a dict {title: mask} or a list.
OneOrMoreMasks = Union[ArrayLike, Mapping[str, ArrayLike], Sequence[ArrayLike]]
# The alias's former name; attnlens.tiny.EncoderDecoderMasks is the masks of a token batch.
Masks = OneOrMoreMasks


def _named_masks(mask: OneOrMoreMasks) -> List[Tuple[str, np.ndarray]]:
    """``(title, bool [Nq, Nk])`` pairs from one mask, a dict of named masks or a list of masks."""
    if isinstance(mask, Mapping):
        if not mask:
            raise ValueError("mask is an empty mapping: there is nothing to draw")
        items = [(str(name), value, f"mask[{name!r}]") for name, value in mask.items()]
    elif isinstance(mask, (list, tuple)) and mask and all(is_array(m) for m in mask):
        items = [(f"mask {i}", value, f"mask[{i}]") for i, value in enumerate(mask)]
    else:  # one mask: a tensor, an array or nested lists of bools
        items = [("", mask, "mask")]
    named = []
    for title, value, name in items:
        array = check_bool_mask_dtype(to_numpy(value, name), name)
        if array.ndim == 1:
            raise ValueError(
                f"{name} must have shape [Nq, Nk], got 1-D shape {tuple(array.shape)}; a "
                f"key_padding_mask [Nk] means True = padding, so draw "
                f"~key_padding_mask[None, :].expand(Nq, Nk) (numpy: np.broadcast_to)"
            )
        if array.ndim != 2:
            raise ValueError(
                f"{name} must have shape [Nq, Nk], got {array.ndim}-D shape {tuple(array.shape)}; "
                f"select one example and head first (m[0, 0])"
            )
        if array.size == 0:
            raise ValueError(f"{name} must not be empty, got shape {tuple(array.shape)}")
        named.append((title, array))
    return named


def _draw_mask(
    ax: Axes, allowed: np.ndarray, labels_q: Sequence[str], labels_k: Sequence[str], max_labels: int
) -> None:
    cmap = ListedColormap([BLOCKED_COLOR, ATTEND_COLOR])
    # The image holds 1 where the query attends and 0 where it is blocked.
    ax.imshow(
        allowed.astype(np.float64),
        cmap=cmap,
        norm=BoundaryNorm([-0.5, 0.5, 1.5], 2),
        aspect="auto",
        interpolation="nearest",
    )
    set_token_ticks(ax, "y", labels_q, max_labels)
    set_token_ticks(ax, "x", labels_k, max_labels)
    num_queries, num_keys = allowed.shape
    if max(num_queries, num_keys) <= MAX_OUTLINED_CELLS:
        ax.set_xticks(np.arange(num_keys + 1) - 0.5, minor=True)
        ax.set_yticks(np.arange(num_queries + 1) - 0.5, minor=True)
        ax.grid(which="minor", color="white", linewidth=1)
        ax.tick_params(which="minor", length=0)
    ax.set_xlabel("key")
    ax.set_ylabel("query")


def mask_picture(
    mask: OneOrMoreMasks,
    tokens_q: Tokens = None,
    tokens_k: Tokens = None,
    *,
    ax: Optional[Axes] = None,
    fig: Optional[FigureBase] = None,
    title: Optional[str] = None,
    max_labels: int = MAX_TICK_LABELS,
) -> Figure:
    """Bool attention masks as the kernel sees them: blue = attend (True), grey = blocked (False).

    Args:
        mask: a bool ``[Nq, Nk]`` tensor/array with True = attend (torch's ``attn_mask``
            convention), or several to draw side by side: a dict ``{"causal": m1, "padding": m2,
            "combined": m1 & m2}`` (keys become panel titles) or a list of tensors/arrays
            (``mask 0``, ``mask 1``, ...). A ``key_padding_mask`` (True = padding) must be
            turned into this convention first: ``~kpm[None, :].expand(Nq, Nk)``.
        tokens_q, tokens_k: row and column labels (None for positions); ``tokens_k`` None
            reuses ``tokens_q``. Every mask must match them.
        ax: draw a single mask into this axes.
        fig: an empty Figure or SubFigure to draw into; otherwise a new Figure.

    Returns:
        The Figure, one panel per mask; ``ax.images[0]`` holds the mask as 1.0 (attend) and 0.0
        (blocked). A legend names the two colours.
    """
    check_ax(ax)
    check_fig(fig)
    named = _named_masks(mask)
    if ax is not None and len(named) > 1:
        raise ValueError(f"ax draws one mask but mask holds {len(named)}; pass fig= (or nothing) instead")
    if ax is not None and fig is not None:
        raise ValueError("pass ax= or fig=, not both")
    labels = [key_labels(tokens_q, tokens_k, *allowed.shape) for _, allowed in named]
    if ax is not None:
        axes = [ax]
    else:
        if fig is None:
            panel_w, panel_h = matrix_figure_size(*named[0][1].shape)
            fig = new_figure(min(panel_w * len(named) + 1.0, 24.0), panel_h)
        axes = [fig.add_subplot(1, len(named), i + 1) for i in range(len(named))]
    for panel, (name, allowed), (labels_q, labels_k) in zip(axes, named, labels):
        _draw_mask(panel, allowed, labels_q, labels_k, max_labels)
        if name:
            panel.set_title(name)
    handles = [
        Patch(facecolor=ATTEND_COLOR, label="attend (True)"),
        Patch(facecolor=BLOCKED_COLOR, label="blocked (False)"),
    ]
    axes[-1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize="small")
    if title is not None:
        if len(axes) == 1 and not named[0][0]:
            axes[0].set_title(title)
        else:
            axes[0].figure.suptitle(title)
    return root_figure(axes[0])
