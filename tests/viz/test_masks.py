"""attnlens.viz.masks: mask_picture draws bool masks (True = attend) as the kernel reads them."""

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from attnlens import viz

from .figures import CAUSAL, TOKENS, N, image_axes, render, xlabels, ylabels


def test_mask_picture_single_mask():
    ax = image_axes(render(viz.mask_picture(torch.tensor(CAUSAL), TOKENS)))[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), CAUSAL.astype(float))
    assert xlabels(ax) == TOKENS and ylabels(ax) == TOKENS
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["attend (True)", "blocked (False)"]
    # Attended and blocked cells get different colours.
    image = ax.images[0]
    assert image.cmap(image.norm(1.0)) != image.cmap(image.norm(0.0))


def test_mask_picture_named_masks_side_by_side():
    padding = np.ones((N, N), dtype=bool)
    padding[:, -2:] = False
    masks = {"causal": CAUSAL, "padding": padding, "combined": CAUSAL & padding}
    panels = image_axes(render(viz.mask_picture(masks, TOKENS)))
    assert [ax.get_title() for ax in panels] == list(masks)
    for ax, mask in zip(panels, masks.values()):
        np.testing.assert_array_equal(ax.images[0].get_array(), mask.astype(float))
    listed = image_axes(render(viz.mask_picture([torch.tensor(CAUSAL), padding])))
    assert [ax.get_title() for ax in listed] == ["mask 0", "mask 1"]


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: viz.mask_picture(CAUSAL.astype(float)), TypeError, ["mask", "bool", "True = attend"]),
        (lambda: viz.mask_picture(np.ones(N, dtype=bool)), ValueError, ["key_padding_mask", "True = padding"]),
        (lambda: viz.mask_picture(np.ones((1, N, N), dtype=bool)), ValueError, ["[Nq, Nk]", "3-D"]),
        (lambda: viz.mask_picture({"a": CAUSAL, "b": CAUSAL[:3]}, TOKENS), ValueError, ["tokens_q", "3"]),
        (lambda: viz.mask_picture({"a": CAUSAL, "b": CAUSAL}, ax=Figure().add_subplot()), ValueError, ["ax", "2"]),
        (lambda: viz.mask_picture({}), ValueError, ["empty"]),
    ],
)
def test_mask_picture_rejects_bad_input(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value)
