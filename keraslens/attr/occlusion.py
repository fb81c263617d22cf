"""Occlusion (Zeiler & Fergus, 2014): the score drop when a patch of positions is hidden."""

from __future__ import annotations

from typing import Any

import numpy as np

from keraslens.attr.masking import (
    fill_values,
    perturbed_scores,
    position_shape,
    repeat_over_channels,
    weighted_mask_sum,
)
from keraslens.attr.method import AttributionMethod
from keraslens.attr.scorer import Scorer
from keraslens.errors import KeraslensError
from keraslens.plugin import Option


class Occlusion(AttributionMethod):
    """Each position gets the sum of score(x) - score(x occluded) over the patches covering it.

    A patch is a box of `patch` positions per position axis (height and width of an image,
    steps of a sequence or of tokens, features of a table), all channels at once, set to
    `value`. Patches start every `stride` positions; when the last one would not reach the
    end of an axis, one more patch ending at the edge is added, so that every position is
    covered and every patch has its full size.

    Returns the per-position sums repeated over the channels: shaped like the explained
    value.

    Args:
        patch: patch size, one int for every position axis or one per axis.
        stride: step between patches, likewise.
        value: what occluded positions take: a number, `"mean"` (each sample's mean over
            its positions, per channel; for tokens its mean embedding row) or an array.

    Example:

    ```python
    occ = keraslens.attribute(model, images, "occlusion", targets=labels, patch=4, stride=2)
    ```
    """

    name = "occlusion"
    title = "Occlusion"
    citation = "Zeiler & Fergus (2014), Visualizing and Understanding Convolutional Networks."
    per_position = True
    options = {
        "patch": Option(object, 4, "Patch size in positions: an int, or one per position axis."),
        "stride": Option(object, 2, "Step between patches: an int, or one per position axis."),
        "value": Option(object, 0.0, "What occluded positions take: a number, 'mean', an array."),
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        for key in ("patch", "stride"):
            sizes = np.atleast_1d(np.asarray(getattr(self, key), dtype=object))
            if sizes.ndim != 1 or not all(_positive_int(s) for s in sizes):
                raise KeraslensError(
                    f"Occlusion: {key} must be a positive int or a tuple of them (one per "
                    f"position axis); got {getattr(self, key)!r}."
                )

    def attribute(self, scorer: Scorer) -> np.ndarray:
        x = scorer.value
        positions = position_shape(x.shape[1:])
        patch, stride = self._per_axis("patch", positions), self._per_axis("stride", positions)
        corners = _patch_corners(positions, patch, stride)
        fill = fill_values(self.value, x, "Occlusion: value")

        def boxes(start: int, stop: int) -> np.ndarray:
            out = np.zeros((stop - start, *positions), np.float32)
            for row, corner in enumerate(corners[start:stop]):
                out[(row, *(slice(c, c + p) for c, p in zip(corner, patch, strict=True)))] = 1
            return out

        occluded = perturbed_scores(scorer, len(corners), lambda a, b: 1 - boxes(a, b), fill)
        clean = scorer.logits[np.arange(scorer.samples), scorer.targets]
        drops = clean[:, None] - occluded
        return repeat_over_channels(weighted_mask_sum(drops, len(corners), boxes), x.shape[1:])

    def _per_axis(self, key: str, positions: tuple) -> tuple:
        sizes = [int(s) for s in np.atleast_1d(np.asarray(getattr(self, key), dtype=object))]
        if len(sizes) == 1:
            sizes *= len(positions)
        if len(sizes) != len(positions):
            raise KeraslensError(
                f"Occlusion: {key} has {len(sizes)} sizes for {len(positions)} position axes "
                f"{positions}; give one int, or one per axis."
            )
        return tuple(min(s, n) for s, n in zip(sizes, positions, strict=True))


def _patch_corners(positions: tuple, patch: tuple, stride: tuple) -> list[tuple]:
    """The first position of every patch: every `stride`, plus one flush with the end."""
    starts = []
    for length, size, step in zip(positions, patch, stride, strict=True):
        axis = list(range(0, length - size + 1, step))
        if axis[-1] != length - size:
            axis.append(length - size)
        starts.append(axis)
    grid = np.meshgrid(*starts, indexing="ij")
    return [tuple(int(c) for c in corner) for corner in np.stack(grid, -1).reshape(-1, len(grid))]


def _positive_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1
