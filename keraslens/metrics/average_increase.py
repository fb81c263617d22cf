"""Average Increase in confidence (Chattopadhay et al., 2018)."""

from __future__ import annotations

from keraslens.metrics.metric import Explained, Metric, Score


class AverageIncrease(Metric):
    """1 where the input times its map scaled to [0, 1] gets a higher target probability
    than the input, else 0: the mean is the fraction of such samples; higher is better."""

    name = "average-increase"
    title = "Average Increase"
    citation = "Chattopadhay et al. (2018), Grad-CAM++: Improved Visual Explanations."
    better = "higher"

    def score(self, explained: Explained) -> Score:
        shown = explained.masked_probability()
        return Score((shown > explained.clean_probability()).astype(float))
