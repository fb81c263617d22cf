"""Deletion (Petsiuk, Das & Saenko, 2018, RISE): the score as the most relevant go first."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import numpy as np

from keraslens.metrics import _plumbing
from keraslens.metrics.metric import Explained, Metric, Score
from keraslens.plugin import Option


class Deletion(Metric):
    """Area under the target probability as positions, most relevant first, are replaced
    by a baseline (zeros, as in the paper); lower is better.

    The curve is sampled at `steps + 1` evenly spaced fractions of the positions (0 to
    all); the area is the trapezoid rule over [0, 1]. Per sample, the mean curve is kept.
    """

    name = "deletion"
    title = "Deletion AUC"
    citation = "Petsiuk, Das & Saenko (2018), RISE: Randomized Input Sampling for Explanation."
    better = "lower"
    options = {
        "steps": Option(int, 16, "Points of the curve after the first.", min=1, max=4096),
        "baseline": Option(
            object,
            "zeros",
            "What removed positions become: zeros, mean, "
            "blur, a number or an array shaped like one sample.",
        ),
    }

    clean_row: ClassVar[int] = 0
    """The row of the curve that is the unperturbed input, scored without a pass."""

    def score(self, explained: Explained) -> Score:
        curves = self.curves(explained, explained.probability, explained.clean_probability())
        return Score(_plumbing.auc(curves), {"curve": curves.mean(axis=0).tolist()})

    def endpoints(self, explained: Explained) -> tuple[np.ndarray, np.ndarray]:
        """`(source, canvas)`: what is painted, position by position, over what."""
        return _plumbing.start_image(self.baseline, explained), explained.x

    def curves(self, explained: Explained, score: Callable, clean: np.ndarray) -> np.ndarray:
        """`(N, steps + 1)` scores as the positions are painted in order of relevance;
        `score` scores painted rows, `clean` is its value on the unperturbed input."""
        source, canvas = self.endpoints(explained)
        rank = _plumbing.ranks(explained.relevance)
        counts = _plumbing.step_counts(rank.shape[1], self.steps)
        painted = np.delete(np.arange(len(counts)), self.clean_row)

        def build(group: slice) -> np.ndarray:
            return _plumbing.painted(source[group], canvas[group], rank[group], counts[painted])

        curves = np.empty((len(rank), len(counts)), np.float32)
        curves[:, painted] = explained.expanded(build, len(painted), score)
        curves[:, self.clean_row] = clean
        return curves
