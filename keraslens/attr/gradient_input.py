"""Gradient x input (Shrikumar et al., 2016)."""

from __future__ import annotations

import numpy as np

from keraslens.attr.method import AttributionMethod
from keraslens.attr.scorer import Scorer


class GradientInput(AttributionMethod):
    """x * d score / d x: first-order contribution of each input value (Shrikumar et al., 2016)."""

    reads_gradients = True
    name = "gradient-input"
    title = "Gradient x input"
    citation = "Shrikumar et al. (2016), Not Just a Black Box (arXiv:1605.01713)."

    def attribute(self, scorer: Scorer) -> np.ndarray:
        return scorer.value * scorer.gradient(scorer.value)
