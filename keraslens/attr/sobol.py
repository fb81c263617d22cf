"""Sobol attribution (Fel et al., 2021): total-order Sobol indices of grid cells."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import qmc

from keraslens.attr.sensitivity import GridSensitivity
from keraslens.errors import KeraslensError


class Sobol(GridSensitivity):
    """The share of the score's variance that each grid cell explains, with its interactions.

    Total-order indices by the Jansen estimator on a scrambled Sobol design (Fel et al.,
    2021, eq. 5, their recommended setup, as in Xplique): matrices A and B of `nb_design`
    points in [0, 1]^d (d = grid cells), and for each cell i, A with column i taken from B.
    ST_i = sum_n (f(A_n) - f(A_n^(i)))^2 / (2 nb_design Var f(A)). That scores
    `nb_design * (d + 1)` perturbed inputs per sample (Xplique also scores B, unused by
    the estimator: `nb_design * (d + 2)`). Masks are continuous, in [0, 1].

    Returns the index of each position's cell repeated over the channels: shaped like the
    explained value; values are in [0, ~1], larger means more important.

    Args:
        grid_size: cells per position axis (8: an 8x8 grid on an image).
        nb_design: points of the design, a power of two (32).
        perturbation: `"inpainting"` (x * mask) or `"blur"`.
        seed: seed of the scrambling.

    Example:

    ```python
    sobol = keraslens.attribute(model, images, "sobol", grid_size=8, nb_design=32)
    ```
    """

    name = "sobol"
    title = "Sobol"
    citation = "Fel et al. (2021), Look at the Variance! Sobol-based Sensitivity Analysis."

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.nb_design & (self.nb_design - 1):
            raise KeraslensError(
                f"Sobol: nb_design must be a power of two (a Sobol sequence is balanced "
                f"only then), e.g. 32 or 64; got {self.nb_design}."
            )

    def _design(self, cells: int) -> np.ndarray:
        points = qmc.Sobol(2 * cells, scramble=True, seed=self.seed).random(self.nb_design)
        a, b = points[:, :cells], points[:, cells:]
        swapped = np.repeat(a[None], cells, axis=0)  # (cells, nb_design, cells)
        swapped[np.arange(cells), :, np.arange(cells)] = b.T
        return np.concatenate([a, swapped.reshape(-1, cells)])

    def _indices(self, design: np.ndarray, scores: np.ndarray) -> np.ndarray:
        n = self.nb_design
        base = scores[:, :n]
        swapped = scores[:, n:].reshape(len(scores), -1, n)  # (N, cells, nb_design)
        variance = np.maximum(base.var(axis=1, ddof=1), 1e-12)
        return ((base[:, None] - swapped) ** 2).sum(axis=2) / (2 * n * variance[:, None])
