"""Average Drop (Chattopadhay et al., 2018): confidence lost when only the map is shown."""

from __future__ import annotations

import numpy as np

from keraslens.metrics.metric import Explained, Metric, Score


class AverageDrop(Metric):
    """max(0, Y - O) / Y per sample, Y the target probability of the input and O that of
    the input times its map scaled to [0, 1]; a fraction (the paper gives percent), lower
    is better."""

    name = "average-drop"
    title = "Average Drop"
    citation = "Chattopadhay et al. (2018), Grad-CAM++: Improved Visual Explanations."
    better = "lower"

    def score(self, explained: Explained) -> Score:
        clean, shown = explained.clean_probability(), explained.masked_probability()
        return Score(np.maximum(clean - shown, 0.0) / np.maximum(clean, 1e-12))
