"""HSIC attribution (Novello, Fel & Vigouroux, 2022): dependence of the score on each cell."""

from __future__ import annotations

import numpy as np
from scipy.stats import qmc

from keraslens.attr.sensitivity import GridSensitivity
from keraslens.plugin import Option


class Hsic(GridSensitivity):
    """The Hilbert-Schmidt independence criterion between each grid cell's mask and the score.

    Binary masks (each cell kept or set by the perturbation) from a Latin hypercube design
    thresholded at 1/2, as in the paper (Xplique's default is a Sobol sequence). Kernels:
    for a cell, the binary kernel of Xplique, k(u, v) = 3/2 - (u - v)^2; for the
    score, a Gaussian kernel whose width is the median distance between the scores (the
    usual median heuristic; Xplique takes the median score itself). The index is the
    biased estimator tr(K H L H) / (n - 1)^2, H the centring matrix; for binary masks
    H K H = 2 m m^T with m the centred mask column, so it is computed as
    2 m^T L m / (n - 1)^2 without forming K.

    Returns the index of each position's cell repeated over the channels: shaped like the
    explained value; larger means more important.

    Args:
        grid_size: cells per position axis (8).
        nb_design: scored masks per sample (1500). The estimator holds two
            `nb_design` x `nb_design` matrices per sample, hence the bound of 5000.
        perturbation: `"inpainting"` or `"blur"`.
        seed: seed of the design.

    Example:

    ```python
    hsic = keraslens.attribute(model, images, "hsic", grid_size=8, nb_design=1500)
    ```
    """

    name = "hsic"
    title = "HSIC"
    citation = "Novello, Fel & Vigouroux (2022), Making Sense of Dependence."
    options = {
        **GridSensitivity.options,
        "nb_design": Option(int, 1500, "Masks scored per input.", min=4, max=5000),
    }

    def _design(self, cells: int) -> np.ndarray:
        return qmc.LatinHypercube(cells, seed=self.seed).random(self.nb_design) > 0.5

    def _indices(self, design: np.ndarray, scores: np.ndarray) -> np.ndarray:
        n = len(design)
        masks = design - design.mean(axis=0)
        out = np.empty((len(scores), design.shape[1]), np.float32)
        for i, y in enumerate(scores.astype(np.float64)):
            distance = np.abs(y[:, None] - y[None, :])
            width = np.median(distance[np.triu_indices(n, 1)]) or 1.0
            gram = np.exp(-(distance**2) / (2 * width**2))
            out[i] = 2 * np.einsum("ni,ni->i", masks, gram @ masks) / (n - 1) ** 2
        return out
