"""Complexity as the entropy of the map (Bhatt, Weller & Moura, 2020)."""

from __future__ import annotations

import numpy as np

from keraslens.metrics import _plumbing
from keraslens.metrics.metric import Explained, Metric, Score


class Complexity(Metric):
    """Shannon entropy (nats) of p = |relevance| / sum |relevance| over the positions
    (Bhatt et al., 2020, def. 4): 0 for one position, log d for a uniform map; lower is
    simpler. NaN for an all-zero map."""

    name = "complexity"
    title = "Complexity (entropy)"
    citation = (
        "Bhatt, Weller & Moura (2020), Evaluating and Aggregating Feature-based Model Explanations."
    )
    better = "lower"
    perturbs = False

    def score(self, explained: Explained) -> Score:
        values = np.abs(_plumbing.flat(explained.relevance))
        total = values.sum(axis=1, keepdims=True)
        p = np.divide(values, total, out=np.full_like(values, np.nan), where=total > 0)
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
        return Score(np.where(total[:, 0] > 0, -terms.sum(axis=1), np.nan))
