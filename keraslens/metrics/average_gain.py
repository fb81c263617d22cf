"""Average Gain (Zhang et al., 2024, Opti-CAM), the complement of Average Drop."""

from __future__ import annotations

import numpy as np

from keraslens.metrics.metric import Explained, Metric, Score


class AverageGain(Metric):
    """max(0, O - Y) / (1 - Y) per sample, Y the target probability of the input and O
    that of the input times its map scaled to [0, 1]; higher is better.

    Proposed beside Chattopadhay et al.'s Average Drop and Increase by Zhang et al.
    (2024), who found that Average Drop alone rewards maps that show the whole image.
    """

    name = "average-gain"
    title = "Average Gain"
    citation = "Zhang et al. (2024), Opti-CAM: Optimizing saliency maps for interpretability."
    better = "higher"

    def score(self, explained: Explained) -> Score:
        clean, shown = explained.clean_probability(), explained.masked_probability()
        return Score(np.maximum(shown - clean, 0.0) / np.maximum(1.0 - clean, 1e-12))
