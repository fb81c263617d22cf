"""Segments of the positions, and the surrogate methods that explain one value per segment.

KernelSHAP and LIME switch whole segments on (kept) and off (set to a baseline), score
the switched inputs, and fit a weighted linear model of the score on the switches; the
fitted coefficients are the segments' attributions. They share everything here and
differ in how coalitions are drawn and weighted and how the model is fitted.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np

from keraslens.attr.masking import (
    fill_values,
    perturbed_scores,
    position_shape,
    repeat_over_channels,
)
from keraslens.attr.method import AttributionMethod
from keraslens.attr.scorer import Scorer
from keraslens.errors import KeraslensError
from keraslens.plugin import Option


def grid_segments(positions: tuple, cells: int) -> np.ndarray:
    """Segment ids shaped `positions`: a grid of `cells` near-equal blocks along each axis.

    An axis shorter than `cells` gets one block per position.

    Example:

    ```python
    grid_segments((4, 4), 2)  # [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    ```
    """
    blocks = [np.arange(length) * min(cells, length) // length for length in positions]
    counts = [min(cells, length) for length in positions]
    return np.ravel_multi_index(np.meshgrid(*blocks, indexing="ij"), counts).astype(np.int64)


def segment_ids(segments: Any, positions: tuple, title: str) -> tuple[np.ndarray, int]:
    """`(ids, count)`: ids `0..count-1` shaped like the positions, from an option value.

    Args:
        segments: an int (a grid of that many cells per position axis) or an integer array
            of segment ids shaped like the positions (any labels; relabelled in order).
        positions: the position axes of one sample.
        title: the method's title, for errors.
    """
    if isinstance(segments, (int, np.integer)) and not isinstance(segments, bool):
        if segments < 1:
            raise KeraslensError(f"{title}: segments must be >= 1 cells per axis; got {segments}.")
        ids = grid_segments(positions, int(segments))
    else:
        ids = np.asarray(segments)
        if not np.issubdtype(ids.dtype, np.integer) or ids.shape != positions:
            raise KeraslensError(
                f"{title}: segments must be an int (cells per axis) or an integer array of "
                f"segment ids shaped like the positions {positions}; got "
                f"{getattr(ids, 'dtype', type(segments))} of shape {ids.shape}."
            )
    labels, ids = np.unique(ids, return_inverse=True)
    return ids.reshape(positions), len(labels)


class CoalitionMethod(AttributionMethod):
    """Scores of segments switched on and off, fitted by a linear model per sample.

    Subclasses draw the coalitions (`_coalitions`) and fit them (`_fit`). Attributions are
    one value per segment, repeated over its positions and channels: shaped like the
    explained value.
    """

    per_position = True
    options = {
        "samples": Option(int, 800, "Coalitions scored per input.", min=2, max=1_000_000),
        "segments": Option(object, 8, "Cells per position axis, or segment ids per position."),
        "baseline": Option(
            object, 0.0, "What switched-off segments take: a number, 'mean', an array."
        ),
        "seed": Option(int, 0, "Seed of the coalitions.", min=0),
    }

    def attribute(self, scorer: Scorer) -> np.ndarray:
        x = scorer.value
        positions = position_shape(x.shape[1:])
        ids, count = segment_ids(self.segments, positions, self.title)
        fill = fill_values(self.baseline, x, f"{self.title}: baseline")
        coalitions, weights = self._coalitions(count, np.random.default_rng(self.seed))
        design = np.concatenate([coalitions, np.ones((1, count)), np.zeros((1, count))])
        scores = perturbed_scores(scorer, len(design), lambda a, b: design[a:b][:, ids], fill)
        values = self._fit(coalitions, weights, scores[:, :-2], scores[:, -2], scores[:, -1])
        return repeat_over_channels(values[:, ids], x.shape[1:])

    @abstractmethod
    def _coalitions(self, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """`(z, w)`: `(M, count)` 0/1 coalitions and their `(M,)` regression weights."""

    @abstractmethod
    def _fit(
        self,
        z: np.ndarray,
        weights: np.ndarray,
        scores: np.ndarray,
        full: np.ndarray,
        empty: np.ndarray,
    ) -> np.ndarray:
        """`(N, count)` segment values from the `(N, M)` coalition scores, the scores with
        every segment on (`full`, `(N,)`) and with none (`empty`)."""
