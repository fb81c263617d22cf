"""RISE (Petsiuk, Das & Saenko, 2018): scores of randomly masked inputs, averaged per position."""

from __future__ import annotations

import numpy as np

from keraslens.attr.masking import (
    perturbed_scores,
    position_shape,
    repeat_over_channels,
    weighted_mask_sum,
)
from keraslens.attr.method import AttributionMethod
from keraslens.attr.scorer import Scorer
from keraslens.plugin import Option


class Rise(AttributionMethod):
    """sum_i score(x * M_i) M_i / (masks * keep): the mean score of masks keeping a position.

    The masks are those of the paper (section 3.2), built by `rise_masks`: a binary grid
    of `grid` cells per position axis, each kept with probability `keep`, upsampled by
    linear interpolation to `(grid + 1)` cells' worth of positions and cropped at a random
    shift of less than one cell, so that mask edges fall anywhere. Masked positions become 0
    (all channels). The result is not normalised (Xplique, by contrast, divides by the
    masks' sum per position).

    Returns the per-position saliency repeated over the channels: shaped like the
    explained value.

    Example:

    ```python
    saliency = keraslens.attribute(model, images, "rise", masks=2000, grid=7)
    ```
    """

    name = "rise"
    title = "RISE"
    citation = "Petsiuk, Das & Saenko (2018), RISE: Randomized Input Sampling for Explanation."
    per_position = True
    options = {
        "masks": Option(int, 2000, "Random masks scored per input.", min=1, max=1_000_000),
        "grid": Option(int, 7, "Grid cells per position axis before upsampling.", min=1),
        "keep": Option(float, 0.5, "Probability that a grid cell is kept.", min=1e-6, max=1.0),
        "seed": Option(int, 0, "Seed of the masks.", min=0),
    }

    def attribute(self, scorer: Scorer) -> np.ndarray:
        positions = position_shape(scorer.value.shape[1:])

        def masks(start: int, stop: int) -> np.ndarray:
            return rise_masks(
                self.masks, positions, grid=self.grid, keep=self.keep, seed=self.seed,
                start=start, stop=stop,
            )  # fmt: skip

        scores = perturbed_scores(scorer, self.masks, masks)
        saliency = weighted_mask_sum(scores, self.masks, masks) / (self.masks * self.keep)
        return repeat_over_channels(saliency, scorer.value.shape[1:])


def rise_masks(
    count: int,
    positions: tuple,
    *,
    grid: int = 7,
    keep: float = 0.5,
    seed: int = 0,
    start: int = 0,
    stop: int | None = None,
) -> np.ndarray:
    """Masks `start..stop` of the `count` RISE masks for `seed`: `(stop - start, *positions)`.

    The grids and shifts of all `count` masks are drawn first (they are small), so any
    slice of them is the same slice of the whole set.

    Args:
        count: number of masks in the set.
        positions: the position axes of one sample, e.g. `(H, W)`.
        grid: cells per axis (at most the axis length).
        keep: probability that a cell is kept.
        seed: seed of the draws.
        start: first mask returned.
        stop: one past the last mask returned (None: `count`).

    Example:

    ```python
    masks = rise_masks(2000, (32, 32), grid=7, keep=0.5, seed=0)  # (2000, 32, 32)
    ```
    """
    rng = np.random.default_rng(seed)
    cells = [min(grid, n) for n in positions]
    cell_sizes = [-(-n // c) for n, c in zip(positions, cells, strict=True)]
    grids = rng.random((count, *cells)) < keep
    shifts = rng.integers(0, cell_sizes, (count, len(positions)))
    chosen = slice(start, count if stop is None else stop)
    masks = grids[chosen].astype(np.float32)
    for axis, (length, cell, size) in enumerate(zip(positions, cells, cell_sizes, strict=True)):
        resize = _linear_resize((cell + 1) * size, cell)
        crop = resize[shifts[chosen, axis][:, None] + np.arange(length)]  # (k, length, cell)
        moved = np.moveaxis(masks, axis + 1, -1)
        masks = np.moveaxis(np.einsum("k...c,knc->k...n", moved, crop), -1, axis + 1)
    return masks.astype(np.float32)


def _linear_resize(size: int, cells: int) -> np.ndarray:
    """`(size, cells)` weights of linear interpolation from `cells` to `size` samples, with
    half-pixel centres and clamped edges, as `tf.image.resize(..., "bilinear")` per axis."""
    source = np.clip((np.arange(size) + 0.5) * cells / size - 0.5, 0, cells - 1)
    low = np.floor(source).astype(int)
    high = np.minimum(low + 1, cells - 1)
    frac = source - low
    weights = np.zeros((size, cells))
    np.add.at(weights, (np.arange(size), low), 1 - frac)
    np.add.at(weights, (np.arange(size), high), frac)
    return weights
