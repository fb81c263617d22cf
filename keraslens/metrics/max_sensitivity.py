"""Max-sensitivity (Yeh et al., 2019): the largest change of the map in a small ball."""

from __future__ import annotations

import numpy as np

from keraslens.metrics import _plumbing
from keraslens.metrics.metric import Explained, Metric, Score
from keraslens.plugin import Option


class MaxSensitivity(Metric):
    """max over `samples` uniform draws of x + d, |d| <= radius * (max x - min x), of
    ||map(x + d) - map(x)|| / ||map(x)|| (Frobenius norms of the position maps, classes
    held fixed); lower is better.

    Yeh et al. (2019) take the unnormalised norm; dividing by the map's own norm makes
    methods of different scales comparable (as Quantus does). A map that is zero and stays
    zero scores 0; one that is zero and changes, NaN.
    """

    name = "max-sensitivity"
    title = "Max-sensitivity"
    citation = "Yeh et al. (2019), On the (In)fidelity and Sensitivity of Explanations."
    better = "lower"
    needs_method = True
    options = {
        "samples": Option(int, 10, "Perturbed copies per sample.", min=1, max=4096),
        "radius": Option(
            float,
            0.05,
            "Half-width of the noise, a fraction of each sample's value range.",
            min=0.0,
        ),
        "seed": Option(int, 0, "Seed of the noise.", min=0),
    }

    def score(self, explained: Explained) -> Score:
        x = explained.x
        spread = np.ptp(x.reshape(len(x), -1), axis=1).reshape((-1,) + (1,) * (x.ndim - 1))
        rng = np.random.default_rng(self.seed)
        noise = rng.uniform(-1.0, 1.0, (len(x), self.samples, *x.shape[1:])).astype(np.float32)
        noisy = (x[:, None] + self.radius * spread[:, None] * noise).reshape(-1, *x.shape[1:])
        fresh = _plumbing.flat(explained.reattribute(noisy, repeat=self.samples))
        clean = _plumbing.flat(explained.relevance)
        change = np.linalg.norm(fresh.reshape(len(x), self.samples, -1) - clean[:, None], axis=2)
        worst, norm = change.max(axis=1), np.linalg.norm(clean, axis=1)
        ratio = np.divide(worst, norm, out=np.full(len(x), np.nan), where=norm > 0)
        return Score(np.where((norm == 0) & (worst == 0), 0.0, ratio))
