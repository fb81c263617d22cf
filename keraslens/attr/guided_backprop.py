"""Guided backpropagation and deconvnet: gradients with a rule for every ReLU's backward pass.

Both run on the score graph every gradient method shares, whose ReLUs (layers and
`activation="relu"`) pass gradients by the rule the compiled gradient is called with
(`keraslens.attr.graph._RuleReLU`): no graph or trace of their own, and the model is never
modified.
They are the known failing controls of the randomisation sanity check (Adebayo et al.,
2018): their maps barely depend on the weights.
"""

from __future__ import annotations

import numpy as np

from keraslens.attr.method import AttributionMethod
from keraslens.attr.scorer import Scorer


class GuidedBackprop(AttributionMethod):
    """Gradient where each ReLU passes only positive gradient at positive inputs."""

    reads_gradients = True
    name = "guided-backprop"
    title = "Guided backprop"
    citation = "Springenberg et al. (2015), Striving for Simplicity: The All Convolutional Net."
    relu_rule = "guided"

    def attribute(self, scorer: Scorer) -> np.ndarray:
        return scorer.gradient(scorer.value)


class Deconvnet(GuidedBackprop):
    """Gradient where each ReLU passes only positive gradient, whatever its input."""

    name = "deconvnet"
    title = "Deconvnet"
    citation = "Zeiler & Fergus (2014), Visualizing and Understanding Convolutional Networks."
    relu_rule = "deconvnet"
