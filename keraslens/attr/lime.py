"""LIME (Ribeiro, Singh & Guestrin, 2016): a local weighted ridge model of segments."""

from __future__ import annotations

import numpy as np

from keraslens.attr.segments import CoalitionMethod
from keraslens.plugin import Option


class Lime(CoalitionMethod):
    """Coefficients of a ridge regression of the score on which segments are kept.

    Coalitions are uniform random on/off switches of the segments (the first keeps all),
    switched-off segments take the baseline. Each is weighted by an exponential kernel on
    its cosine distance d to the all-on coalition, sqrt(exp(-d^2 / width^2)), and the fit
    is ridge regression with an intercept, as in the `lime` package's image explainer
    (kernel width 0.25, alpha 1). Coefficients are in score units per segment, shrunk by
    the ridge penalty: they rank segments, they do not sum to a score difference.

    Returns one value per segment repeated over its positions and channels: shaped like
    the explained value.

    Example:

    ```python
    lime = keraslens.attribute(model, images, "lime", samples=1000, segments=8)
    ```
    """

    name = "lime"
    title = "LIME"
    citation = 'Ribeiro, Singh & Guestrin (2016), "Why Should I Trust You?".'
    options = {
        **CoalitionMethod.options,
        "kernel_width": Option(float, 0.25, "Width of the kernel on cosine distance.", min=1e-6),
        "alpha": Option(float, 1.0, "Ridge penalty.", min=0.0),
    }

    def _coalitions(self, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        z = rng.integers(0, 2, (self.samples, count)).astype(np.float32)
        z[0] = 1.0
        kept = z.sum(axis=1)
        distance = 1.0 - np.sqrt(kept / count)  # cosine distance to the all-ones coalition
        return z, np.sqrt(np.exp(-(distance**2) / self.kernel_width**2))

    def _fit(self, z, weights, scores, full, empty):
        share = weights / weights.sum()
        centred = z - share @ z
        targets = scores - (scores @ share)[:, None]
        gram = centred.T @ (weights[:, None] * centred) + self.alpha * np.eye(z.shape[1])
        return np.linalg.solve(gram, centred.T @ (weights[:, None] * targets.T)).T
