"""Pixel flipping as a curve (Bach et al., 2015; as AOPC, Samek et al., 2017)."""

from __future__ import annotations

import numpy as np

from keraslens.metrics.deletion import Deletion
from keraslens.metrics.metric import Explained, Score
from keraslens.plugin import Option


class PixelFlipping(Deletion):
    """The target logit as positions, most relevant first, are flipped to a baseline, and
    its area over the perturbation curve (AOPC); higher is better.

    AOPC = 1/(L+1) sum_{k=0..L} (f(x) - f(x after k steps)), with f the pre-activation
    score (Samek et al., 2017, eq. 12), so a flat softmax cannot hide a falling logit.
    `curve` holds the mean logit at each of the `steps + 1` points.
    """

    name = "pixel-flipping"
    title = "Pixel flipping (AOPC)"
    citation = (
        "Bach et al. (2015), On Pixel-Wise Explanations ... by Layer-Wise Relevance "
        "Propagation; Samek et al. (2017), Evaluating the Visualization of What a DNN Learned."
    )
    better = "higher"
    options = {**Deletion.options, "steps": Option(int, 32, "Flips after the first.", min=1)}

    def score(self, explained: Explained) -> Score:
        curves = self.curves(explained, explained.scorer.score, explained.clean_logit())
        aopc = np.mean(curves[:, :1] - curves, axis=1)
        return Score(aopc, {"curve": curves.mean(axis=0).tolist()})
