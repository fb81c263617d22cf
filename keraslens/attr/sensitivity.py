"""Shared plumbing of the sensitivity-analysis methods (Sobol, HSIC): masks over a grid.

Each grid cell of the positions is one random variable; a design of `nb_design` points
gives every cell a mask value per point (upsampled to the cell's positions, nearest, as
Xplique does), the perturbed inputs are scored, and an estimator turns the scores into
one index per cell. The index is returned for every position of its cell and every
channel: shaped like the explained value (Xplique resizes the cell grid to the input
with cubic interpolation instead).
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np
from scipy.ndimage import uniform_filter

from keraslens.attr.masking import perturbed_scores, position_shape, repeat_over_channels
from keraslens.attr.method import AttributionMethod
from keraslens.attr.scorer import Scorer
from keraslens.attr.segments import grid_segments
from keraslens.plugin import Option

BLUR_SIZE = 10
"""Box-filter width of the "blur" perturbation, in positions (Xplique's cv2.blur size)."""


class GridSensitivity(AttributionMethod):
    """Sensitivity indices of grid cells from scores of inputs perturbed by random masks.

    Perturbations: `"inpainting"` is x * mask (masked positions fade to 0); `"blur"` is
    x * mask + blur(x) * (1 - mask), blur a box filter of `BLUR_SIZE` positions per axis.
    """

    per_position = True
    magnitude = True
    options = {
        "grid_size": Option(int, 8, "Grid cells per position axis.", min=1, max=64),
        "nb_design": Option(int, 32, "Points of the design.", min=4, max=1_000_000),
        "perturbation": Option(str, "inpainting", "How masks act.", choices=("inpainting", "blur")),
        "seed": Option(int, 0, "Seed of the design's scrambling.", min=0),
    }

    def attribute(self, scorer: Scorer) -> np.ndarray:
        x = scorer.value
        positions = position_shape(x.shape[1:])
        cells = grid_segments(positions, self.grid_size)
        design = self._design(int(cells.max()) + 1).astype(np.float32)
        fill = 0.0 if self.perturbation == "inpainting" else _blurred(x, positions)
        scores = perturbed_scores(scorer, len(design), lambda a, b: design[a:b][:, cells], fill)
        return repeat_over_channels(self._indices(design, scores)[:, cells], x.shape[1:])

    @abstractmethod
    def _design(self, cells: int) -> np.ndarray:
        """`(M, cells)` mask values in [0, 1], one row per scored input."""

    @abstractmethod
    def _indices(self, design: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """`(N, cells)` indices from the `(N, M)` scores of the design's rows."""


def _blurred(x: np.ndarray, positions: tuple) -> np.ndarray:
    sizes = [min(BLUR_SIZE, n) for n in positions]
    channels = [1] if x.ndim > 2 else []
    return uniform_filter(x, size=[1, *sizes, *channels], mode="reflect")
