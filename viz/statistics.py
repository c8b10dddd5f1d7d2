"""How much attention each key token receives: a bar chart, the numbers, and the numbers as a table."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from attnlens.viz._common import (
    MAX_TICK_LABELS,
    ArrayLike,
    Tokens,
    as_bool_mask,
    as_float_array,
    as_labels,
    check_ax,
    new_figure,
    root_figure,
    set_token_ticks,
)

Head = Union[int, str, None]
STATISTICS = ("mean", "std", "min", "max")


def _select_heads(weights: ArrayLike, head: Head) -> Tuple[np.ndarray, List[Optional[int]]]:
    """The series to summarise as ``[S, Nq, Nk]`` and, per series, its head index (None: no/avg head).

    ``[Nq, Nk]`` input is one series. ``[H, Nq, Nk]`` input gives every head (``head=None``),
    the average of the heads (``head="mean"``) or one head (``head=h``).
    """
    values = as_float_array(weights, "weights", (2, 3), "[Nq, Nk] or [H, Nq, Nk]")
    if values.ndim == 2:
        if head is not None and head != "mean":
            raise ValueError(f"head={head!r} needs per-head weights [H, Nq, Nk], got shape {values.shape}")
        return values[None], [None]
    num_heads = values.shape[0]
    if head is None:
        return values, list(range(num_heads))
    if isinstance(head, str):
        if head != "mean":
            raise ValueError(f"head must be None (every head), 'mean' or an int in [0, {num_heads}), got {head!r}")
        return values.mean(axis=0)[None], [None]
    if not isinstance(head, (int, np.integer)) or isinstance(head, bool) or not 0 <= head < num_heads:
        raise ValueError(f"head must be None (every head), 'mean' or an int in [0, {num_heads}), got {head!r}")
    return values[int(head)][None], [int(head)]


def _excluded_cells(series: np.ndarray, mask: Optional[ArrayLike]) -> np.ndarray:
    """Cells left out of the statistics: non-finite ones and those the mask forbids (False)."""
    excluded = ~np.isfinite(series)
    if mask is not None:
        excluded |= ~as_bool_mask(mask, "mask", series.shape[-2:], "[Nq, Nk]")
    return excluded


def _series_to_summarise(
    weights: ArrayLike, tokens: Tokens, head: Head, mask: Optional[ArrayLike]
) -> Tuple[np.ndarray, List[Optional[int]], List[str], np.ndarray]:
    """What both the bars and the statistics read: the series ``[S, Nq, Nk]`` and their heads (see
    ``_select_heads``), the ``Nk`` key labels, and the cells left out ``[S, Nq, Nk]``."""
    series, heads = _select_heads(weights, head)
    labels = as_labels(tokens, "tokens", series.shape[-1], "keys (columns)")
    return series, heads, labels, _excluded_cells(series, mask)


def _column_statistics(values: np.ndarray, excluded: np.ndarray) -> Dict[str, np.ndarray]:
    """Mean, population std (ddof=0), min and max of each column over the counted rows.

    A column with no counted cell gets NaN everywhere (and no "empty slice" warnings).
    """
    counted = (~excluded).sum(axis=0)
    kept = np.where(excluded, 0.0, values).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = kept.sum(axis=0) / counted
        deviation = np.where(excluded, 0.0, values - mean)
        std = np.sqrt((deviation**2).sum(axis=0) / counted)
    empty = counted == 0
    low = np.where(empty, np.nan, np.where(excluded, np.inf, values).min(axis=0))
    high = np.where(empty, np.nan, np.where(excluded, -np.inf, values).max(axis=0))
    return {"mean": mean, "std": std, "min": low.astype(np.float64), "max": high.astype(np.float64)}


def attention_received_bar(
    weights: ArrayLike,
    tokens: Tokens,
    *,
    head: Head = None,
    mask: Optional[ArrayLike] = None,
    ax: Optional[Axes] = None,
    uniform_line: bool = True,
    title: Optional[str] = None,
    max_labels: int = MAX_TICK_LABELS,
) -> Figure:
    """Average attention each key token receives: one bar per key, the mean of its column over queries.

    Args:
        weights: ``[Nq, Nk]``, or ``[H, Nq, Nk]`` per head.
        tokens: ``Nk`` key labels (None for positions).
        head: for per-head weights: None draws grouped bars, one colour per head; ``"mean"``
            averages the heads first; an int draws that head alone.
        mask: optional bool ``[Nq, Nk]``, True = attended; False cells, and NaN cells, are left
            out of the averages (masked zeros from the kernel otherwise count as zeros).
        ax: draw into this axes; otherwise a new Figure.
        uniform_line: a dashed line at ``1/Nk``, what every key would get from evenly spread
            attention (also the average bar height when every row sums to 1).
        max_labels: at most this many tick labels; longer inputs show every k-th token.

    Returns:
        The Figure; ``ax.containers[s]`` is the bar series ``s`` (one per head drawn), whose bar
        heights are the column means.
    """
    check_ax(ax)
    series, heads, labels, excluded = _series_to_summarise(weights, tokens, head, mask)
    num_keys = series.shape[-1]
    if ax is None:
        ax = new_figure(min(max(0.35 * num_keys * max(1, len(heads) / 2) + 2.0, 5.0), 14.0), 4.0).add_subplot()
    positions = np.arange(num_keys)
    group_width = 0.8
    bar_width = group_width / len(heads)
    for s, head_index in enumerate(heads):
        means = _column_statistics(series[s], excluded[s])["mean"]
        # Centre each head's bar within the key's group.
        offset = (s - (len(heads) - 1) / 2) * bar_width
        label = f"head {head_index}" if head_index is not None else ("mean of heads" if head == "mean" else None)
        ax.bar(positions + offset, means, width=bar_width, label=label)
    if uniform_line:
        ax.axhline(1.0 / num_keys, color="black", linestyle="--", linewidth=1, label=f"uniform (1/{num_keys})")
    set_token_ticks(ax, "x", labels, max_labels)
    ax.set_xlim(-0.5, num_keys - 0.5)
    ax.set_xlabel("key token")
    ax.set_ylabel("mean attention received")
    if title is not None:
        ax.set_title(title)
    if len(heads) > 1 or uniform_line:
        ax.legend(fontsize="small", ncol=min(len(heads) + 1, 5))
    return root_figure(ax)


def _statistics_rows(weights: ArrayLike, tokens: Tokens, head: Head, mask: Optional[ArrayLike]) -> List[Dict[str, Any]]:
    series, heads, labels, excluded = _series_to_summarise(weights, tokens, head, mask)
    rows = []
    for s, head_index in enumerate(heads):
        stats = _column_statistics(series[s], excluded[s])
        for position, token in enumerate(labels):
            row: Dict[str, Any] = {} if head_index is None else {"head": head_index}
            row.update(position=position, token=token)
            row.update({name: float(stats[name][position]) for name in STATISTICS})
            rows.append(row)
    return rows


def attention_statistics(
    weights: ArrayLike,
    tokens: Tokens,
    *,
    head: Head = None,
    mask: Optional[ArrayLike] = None,
    as_frame: Optional[bool] = None,
) -> Any:
    """Per key token: mean, std, min and max of the attention it receives over the queries.

    Args:
        weights: ``[Nq, Nk]``, or ``[H, Nq, Nk]`` per head.
        tokens: ``Nk`` key labels (None for positions).
        head: for per-head weights: None gives one row per (head, key); ``"mean"`` averages the
            heads first; an int keeps that head.
        mask: optional bool ``[Nq, Nk]``, True = attended; False cells and NaN cells are left out.
        as_frame: True returns a ``pandas.DataFrame``, False a list of dicts; None (default) a
            DataFrame when pandas is installed, otherwise the list.

    Returns:
        One record per key token (per head and key when ``head=None`` with per-head weights), in
        key order, with fields ``head`` (per-head rows only), ``position`` (key index, since
        tokens may repeat), ``token``, ``mean``, ``std`` (population, ddof=0), ``min``, ``max``
        as Python floats; NaN for a key that no counted query attends to.
    """
    rows = _statistics_rows(weights, tokens, head, mask)
    if as_frame is False:
        return rows
    try:
        import pandas
    except ImportError:
        if as_frame:
            raise ImportError(
                "attention_statistics(as_frame=True) needs pandas; install it or pass "
                "as_frame=False for a list of dicts"
            ) from None
        return rows
    return pandas.DataFrame.from_records(rows)


def attention_statistics_table(
    weights: ArrayLike,
    tokens: Tokens,
    *,
    head: Head = None,
    mask: Optional[ArrayLike] = None,
    ax: Optional[Axes] = None,
    precision: int = 3,
    max_rows: int = 40,
    title: Optional[str] = None,
) -> Figure:
    """:func:`attention_statistics` drawn as a matplotlib table.

    Arguments as in :func:`attention_statistics`, plus:
        ax: draw into this axes (its frame is hidden); otherwise a new Figure.
        precision: decimals shown.
        max_rows: longer tables keep the ``max_rows`` keys receiving the most attention (highest
            mean), sorted by mean, and the title says so; shorter ones stay in key order.

    Returns:
        The Figure; ``ax.tables[0]`` has a header row (``head``, ``position``, ``token``, ``mean``,
        ``std``, ``min``, ``max``; no ``head`` for single-series input) and one row per record.
    """
    check_ax(ax)
    if not isinstance(max_rows, int) or max_rows < 1:
        raise ValueError(f"max_rows must be a positive int, got {max_rows!r}")
    rows = _statistics_rows(weights, tokens, head, mask)
    total = len(rows)
    truncated = total > max_rows
    if truncated:
        # NaN means sort last: a key nobody attends to is the least interesting row.
        rows = sorted(rows, key=lambda r: -np.inf if np.isnan(r["mean"]) else r["mean"], reverse=True)[:max_rows]
    columns = list(rows[0])
    cells = [[_format_cell(row[c], precision) for c in columns] for row in rows]
    if ax is None:
        ax = new_figure(1.0 * len(columns) + 0.4, 0.25 * (len(rows) + 1) + 0.5).add_subplot()
    ax.set_axis_off()
    # The table fills the axes, so the figure's height sets the row height.
    table = ax.table(cellText=cells, colLabels=columns, bbox=(0.0, 0.0, 1.0, 1.0), cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    default_title = "attention received per key token"
    if truncated:
        default_title += f" (top {max_rows} of {total} rows by mean)"
    ax.set_title(title if title is not None else default_title)
    return root_figure(ax)


def _format_cell(value: Any, precision: int) -> str:
    if isinstance(value, float):
        return f"{value:.{precision}f}"
    return str(value)
