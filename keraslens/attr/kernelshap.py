"""KernelSHAP (Lundberg & Lee, 2017): Shapley values of segments by weighted least squares."""

from __future__ import annotations

from math import comb

import numpy as np

from keraslens.attr.segments import CoalitionMethod


class KernelShap(CoalitionMethod):
    """Shapley values of segments, from scores of coalitions of segments kept, the rest set
    to the baseline.

    The fit is the Shapley kernel's weighted least squares with the efficiency constraint
    (the values sum to score(x) - score(baseline)) eliminated exactly, as in Lundberg & Lee
    (2017), eq. 9 and the `shap` package. When every coalition fits in `samples` (2^d - 2
    of them for d segments) they are all scored with their kernel weights and the values
    are exact; otherwise coalition sizes are drawn in proportion to the kernel's mass per
    size, subsets uniformly within a size, each paired with its complement, equally
    weighted. On a model linear in its input, the value of a segment is the sum of
    w * (x - baseline) over it.

    Returns one value per segment repeated over its positions and channels: shaped like
    the explained value.

    Example:

    ```python
    shap = keraslens.attribute(model, images, "kernelshap", samples=800, segments=8)
    ```
    """

    name = "kernelshap"
    title = "KernelSHAP"
    citation = "Lundberg & Lee (2017), A Unified Approach to Interpreting Model Predictions."

    def _coalitions(self, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        sizes = np.arange(1, count)
        if len(sizes) == 0:
            return np.zeros((0, count)), np.zeros(0)
        size_mass = (count - 1) / (sizes * (count - sizes))
        if 2**count - 2 <= self.samples:
            z = (np.arange(1, 2**count - 1)[:, None] >> np.arange(count)) & 1
            size = z.sum(axis=1)
            weights = size_mass[size - 1] / np.array([comb(count, int(s)) for s in size])
            return z.astype(np.float32), weights
        drawn = rng.choice(sizes, (self.samples + 1) // 2, p=size_mass / size_mass.sum())
        order = rng.random((len(drawn), count)).argsort(axis=1)
        z = (order < drawn[:, None]).astype(np.float32)
        z = np.concatenate([z, 1.0 - z])[: self.samples]
        return z, np.ones(len(z))

    def _fit(self, z, weights, scores, full, empty):
        total = full - empty
        if z.shape[1] == 1 or len(z) == 0:
            return np.broadcast_to(total[:, None], (len(total), z.shape[1])).copy()
        # phi_last = total - sum(others): regress on z_j - z_last (Lundberg & Lee, eq. 9)
        reduced = z[:, :-1] - z[:, -1:]
        target = (scores - empty[:, None]) - z[None, :, -1] * total[:, None]
        root = np.sqrt(weights)[:, None]
        others = np.linalg.lstsq(root * reduced, root * target.T, rcond=None)[0].T
        return np.concatenate([others, (total - others.sum(axis=1))[:, None]], axis=1)
