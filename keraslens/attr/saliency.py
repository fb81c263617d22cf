"""Saliency (Simonyan et al., 2014): the magnitude of the score's gradient."""

from __future__ import annotations

import numpy as np

from keraslens.attr.method import AttributionMethod
from keraslens.attr.scorer import Scorer


class Saliency(AttributionMethod):
    """|d score / d x|, per input value (Simonyan, Vedaldi & Zisserman, 2014)."""

    reads_gradients = True
    name = "saliency"
    title = "Saliency"
    citation = "Simonyan, Vedaldi & Zisserman (2014), Deep Inside Convolutional Networks."
    magnitude = True

    def attribute(self, scorer: Scorer) -> np.ndarray:
        return np.abs(scorer.gradient(scorer.value))
