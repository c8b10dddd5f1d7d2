"""attnlens.viz.positional: the positional-encoding heatmap, curves and similarity, rendered and read back."""

import numpy as np
import pytest
import torch

from attnlens import viz

from .figures import image_axes, render, sinusoidal


def test_positional_encoding_heatmap():
    pe = sinusoidal(50, 16)
    ax = image_axes(render(viz.positional_encoding_heatmap(torch.tensor(pe, dtype=torch.float32))))[0]
    np.testing.assert_allclose(ax.images[0].get_array(), pe, rtol=1e-6, atol=1e-7)
    # Symmetric limits keep 0 at the middle of the diverging colormap.
    bound = np.abs(pe).max()
    assert ax.images[0].get_clim() == pytest.approx((-bound, bound), rel=1e-6)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("dimension", "position")


def test_positional_encoding_curves_plot_the_chosen_dimensions():
    pe = sinusoidal(40, 16)
    ax = render(viz.positional_encoding_curves(pe, [0, 5, 14])).axes[0]
    assert len(ax.lines) == 3
    for line, dim in zip(ax.lines, [0, 5, 14]):
        np.testing.assert_array_equal(line.get_xdata(), np.arange(40))
        np.testing.assert_allclose(line.get_ydata(), pe[:, dim])
        assert line.get_label() == f"dim {dim}"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["dim 0", "dim 5", "dim 14"]
    default = render(viz.positional_encoding_curves(pe)).axes[0]
    assert [line.get_label() for line in default.lines] == ["dim 0", "dim 2", "dim 4", "dim 8"]


@pytest.mark.parametrize("dims", [[16], [-1], [1.5], []])
def test_positional_encoding_curves_reject_bad_dims(dims):
    with pytest.raises(ValueError, match="dims"):
        viz.positional_encoding_curves(sinusoidal(10, 16), dims)


def test_positional_encoding_similarity_is_cosine_of_pe_pe_t():
    pe = sinusoidal(30, 16)
    pe[7] = 0.0  # a zero vector has no direction
    norms = np.linalg.norm(pe, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = (pe @ pe.T) / np.outer(norms, norms)
    ax = image_axes(render(viz.positional_encoding_similarity(pe)))[0]
    drawn = ax.images[0].get_array()
    assert drawn.shape == (30, 30)
    np.testing.assert_allclose(drawn.compressed(), expected[np.isfinite(expected)])
    assert np.ma.getmaskarray(drawn)[7].all() and np.ma.getmaskarray(drawn)[:, 7].all()
    assert ax.images[0].get_clim() == (-1.0, 1.0)
    np.testing.assert_allclose(np.diag(drawn)[np.arange(30) != 7], 1.0)
    np.testing.assert_allclose(viz.positional_similarity_matrix(pe, normalize=False), pe @ pe.T)
    raw = image_axes(render(viz.positional_encoding_similarity(pe, normalize=False)))[0].images[0]
    np.testing.assert_allclose(raw.get_array(), pe @ pe.T)
    bound = np.abs(pe @ pe.T).max()
    assert raw.get_clim() == pytest.approx((-bound, bound))


def test_positional_functions_reject_a_batched_buffer():
    with pytest.raises(ValueError, match=r"pe\[0\]"):
        viz.positional_encoding_heatmap(np.zeros((1, 10, 4)))
