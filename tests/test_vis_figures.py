"""Figures draw what the data is: images as images, sequences and vectors as lines."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from keraslens.vis.figures import MAX_LINES, heatmap_grid, maximization_montage


def _cell(fig: Figure, index: int = 0):
    return fig.axes[index]


def test_an_image_is_drawn_as_an_image():
    fig = heatmap_grid(np.random.rand(1, 6, 6, 1), {"map": np.random.rand(1, 6, 6)}, ["a"])
    assert len(_cell(fig).images) == 1 and not _cell(fig).lines
    assert len(_cell(fig, 1).images) == 2  # the input, then the map over it


@pytest.mark.parametrize(("shape", "lines"), [((20, 3), 3), ((20,), 1), ((20, 12), MAX_LINES)])
def test_a_sequence_or_vector_is_drawn_as_lines_one_per_feature(shape, lines):
    x = np.random.rand(2, *shape)
    fig = maximization_montage(x, np.ones(2), [0, 1], x, np.ones(2))
    assert len(_cell(fig).lines) == lines and not _cell(fig).images


def test_a_line_follows_the_sequence_step_by_step():
    x = np.arange(10, dtype=float)[None, :, None] * [[[1.0, -2.0]]]
    fig = maximization_montage(x, np.ones(1), [0], x, np.ones(1))
    first, second = _cell(fig).lines
    np.testing.assert_array_equal(first.get_ydata(), np.arange(10))
    np.testing.assert_array_equal(second.get_ydata(), -2 * np.arange(10))


def test_a_map_over_a_sequence_is_a_band_behind_its_lines():
    x = np.random.rand(1, 16, 2)
    fig = heatmap_grid(x, {"saliency": np.linspace(0, 1, 16)[None]}, ["a"])
    overlaid = _cell(fig, 1)
    assert len(overlaid.lines) == 2 and len(overlaid.images) == 1
    np.testing.assert_allclose(overlaid.images[0].get_array()[0], np.linspace(0, 1, 16))
    assert overlaid.images[0].get_zorder() < overlaid.lines[0].get_zorder()
