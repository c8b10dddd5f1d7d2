"""attnlens.viz.training: training_curves from a history, a dict or a DataFrame."""

import numpy as np
import pytest
import torch

from attnlens import viz

from .figures import render


def test_training_curves_plot_the_history():
    history = {
        "step": [10, 20, 30, 40],
        "loss": [2.0, 1.5, 1.1, 0.9],
        "accuracy": [0.1, 0.4, 0.6, 0.7],
        "val_loss": [1.8, 1.2],
        "val_accuracy": [0.2, 0.6],
        "val_step": [20, 40],
    }
    fig = render(viz.training_curves(history))
    loss_ax, accuracy_ax = fig.axes
    for ax, key in ((loss_ax, "loss"), (accuracy_ax, "accuracy")):
        train, validation = ax.lines
        assert (train.get_label(), validation.get_label()) == ("train", "validation")
        np.testing.assert_array_equal(train.get_xdata(), history["step"])
        np.testing.assert_array_equal(train.get_ydata(), history[key])
        np.testing.assert_array_equal(validation.get_xdata(), history["val_step"])
        np.testing.assert_array_equal(validation.get_ydata(), history[f"val_{key}"])
        assert ax.get_title() == key


def test_training_curves_loss_only_is_one_panel():
    loss = torch.linspace(3, 1, 50)
    fig = render(viz.training_curves({"loss": loss}))
    (ax,) = fig.axes
    (line,) = ax.lines
    np.testing.assert_array_equal(line.get_xdata(), np.arange(50))
    np.testing.assert_allclose(line.get_ydata(), loss.numpy())


def test_training_curves_accept_a_dataframe_with_nan_padded_validation():
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame({"loss": [3.0, 2.0, 1.0], "val_loss": [np.nan, 2.5, np.nan]})
    (ax,) = render(viz.training_curves(frame)).axes
    np.testing.assert_array_equal(ax.lines[1].get_ydata(), frame["val_loss"].to_numpy())


@pytest.mark.parametrize(
    "history, error, words",
    [
        ({"accuracy": [0.5]}, ValueError, ["'loss'", "accuracy"]),
        ({"loss": []}, ValueError, ["empty"]),
        ({"loss": [1.0, 0.5], "step": [1]}, ValueError, ["history['step']", "1 values", "2"]),
        ({"loss": [1.0, 0.5], "accuracy": [0.5]}, ValueError, ["history['accuracy']", "1 values"]),
        ({"loss": [1.0, 0.5, 0.2], "val_loss": [0.9]}, ValueError, ["val_step"]),
        ({"loss": [[1.0, 0.5]]}, ValueError, ["history['loss']", "1-D"]),
        ([1.0, 0.5], TypeError, ["history", "mapping"]),
    ],
)
def test_training_curves_reject_bad_history(history, error, words):
    with pytest.raises(error) as info:
        viz.training_curves(history)
    for word in words:
        assert word in str(info.value)
