"""Loss and accuracy over training steps."""

from __future__ import annotations

from typing import Any, List, Optional

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure, FigureBase

from attnlens.viz._common import check_fig, new_figure, to_numpy

KNOWN_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "step", "val_step")


def _series(history: Any, key: str) -> Optional[np.ndarray]:
    """``history[key]`` as a 1-D float array, or None when the key is absent."""
    if key not in history:
        return None
    values = to_numpy(history[key], f"history[{key!r}]")
    if values.ndim != 1:
        raise ValueError(
            f"history[{key!r}] must be a 1-D sequence (one value per step), got shape {tuple(values.shape)}"
        )
    return values.astype(np.float64)


def _validation_steps(history: Any, key: str, values: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Where validation values were measured: ``val_step``, or the training steps if one per step."""
    val_steps = _series(history, "val_step")
    if val_steps is None:
        if len(values) != len(steps):
            raise ValueError(
                f"history[{key!r}] has {len(values)} values but history['loss'] has {len(steps)}; "
                "give history['val_step'] with the step of each validation value "
                "(or pad with NaN to one value per step)"
            )
        return steps
    if len(val_steps) != len(values):
        raise ValueError(f"history['val_step'] has {len(val_steps)} values but history[{key!r}] has {len(values)}")
    return val_steps


def _panel(ax: Axes, history: Any, key: str, steps: np.ndarray, ylabel: str) -> None:
    train = _series(history, key)
    if train is not None:
        if len(train) != len(steps):
            raise ValueError(
                f"history[{key!r}] has {len(train)} values but history['loss'] has {len(steps)}; "
                "training metrics are one value per step"
            )
        ax.plot(steps, train, label="train")
    validation = _series(history, f"val_{key}")
    if validation is not None:
        ax.plot(
            _validation_steps(history, f"val_{key}", validation, steps),
            validation,
            marker="o",
            markersize=3,
            label="validation",
        )
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")


def training_curves(history: Any, *, fig: Optional[FigureBase] = None, title: Optional[str] = None) -> Figure:
    """Training loss and, when recorded, accuracy per step: one panel each, side by side.

    Args:
        history: a mapping (a dict of lists, or a pandas DataFrame) with 1-D sequences:
            ``loss`` (required, one value per step); optional ``accuracy`` (one per step),
            ``val_loss`` and ``val_accuracy``, ``step`` (the x value of each training entry;
            default 0..len(loss)-1) and ``val_step`` (the step of each validation entry; needed
            when validation ran less often than every step, else NaN-pad the validation lists).
        fig: an empty Figure or SubFigure to draw into; otherwise a new Figure.

    Returns:
        The Figure: a ``loss`` panel, plus an ``accuracy`` panel when ``accuracy`` or
        ``val_accuracy`` is present. In each, the line labelled ``train`` plots the training
        values against ``step`` and the one labelled ``validation`` the validation values.
    """
    check_fig(fig)
    # Mappings and DataFrames both have keys(), membership and item access; lists do not.
    if not all(hasattr(history, attr) for attr in ("keys", "__getitem__", "__contains__")):
        raise TypeError(
            f"history must be a mapping of metric name to values (a dict or DataFrame), got {type(history).__name__}"
        )
    loss = _series(history, "loss")
    if loss is None:
        raise ValueError(f"history must contain 'loss'; it has {_keys(history)} (known: {', '.join(KNOWN_KEYS)})")
    if loss.size == 0:
        raise ValueError("history['loss'] is empty: there is nothing to draw")
    steps = _series(history, "step")
    if steps is None:
        steps = np.arange(len(loss), dtype=np.float64)
    elif len(steps) != len(loss):
        raise ValueError(f"history['step'] has {len(steps)} values but history['loss'] has {len(loss)}")

    has_accuracy = "accuracy" in history or "val_accuracy" in history
    num_panels = 2 if has_accuracy else 1
    if fig is None:
        fig = new_figure(5.0 * num_panels + 0.5, 3.8)
    loss_ax = fig.add_subplot(1, num_panels, 1)
    _panel(loss_ax, history, "loss", steps, "loss")
    if has_accuracy:
        accuracy_ax = fig.add_subplot(1, num_panels, 2)
        _panel(accuracy_ax, history, "accuracy", steps, "accuracy")
    if title is not None:
        fig.suptitle(title)
    return fig.figure


def _keys(history: Any) -> List[str]:
    return [str(k) for k in history.keys()]
