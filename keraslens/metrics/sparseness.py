"""Sparseness as the Gini index of the map (Chalasani et al., 2020)."""

from __future__ import annotations

import numpy as np

from keraslens.metrics import _plumbing
from keraslens.metrics.metric import Explained, Metric, Score


class Sparseness(Metric):
    """Gini index of |relevance| over the positions: 1 - 2 sum_k (a_(k) / ||a||_1)
    (d - k + 1/2) / d with a_(1) <= ... <= a_(d) (Chalasani et al., 2020, after Hurley &
    Rickard, 2009); 0 for a uniform map, (d - 1) / d for one position; higher is sparser.
    NaN for an all-zero map."""

    name = "sparseness"
    title = "Sparseness (Gini)"
    citation = "Chalasani et al. (2020), Concise Explanations of Neural Networks using Adversarial Training."
    better = "higher"
    perturbs = False

    def score(self, explained: Explained) -> Score:
        values = np.sort(np.abs(_plumbing.flat(explained.relevance)), axis=1)
        d = values.shape[1]
        total = values.sum(axis=1, keepdims=True)
        share = np.divide(values, total, out=np.full_like(values, np.nan), where=total > 0)
        k = np.arange(1, d + 1)
        return Score(1.0 - 2.0 * (share * (d - k + 0.5) / d).sum(axis=1))
