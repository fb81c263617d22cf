"""Shared plumbing of the perturbation methods: positions, fill values, batched masked scores.

A perturbation method keeps or replaces whole *positions* of the explained value: pixels
`(H, W)` of an image `(N, H, W, C)`, steps `T` of a sequence or of token embeddings
`(N, T, F)`, features `F` of a table `(N, F)`. A position is kept or replaced with all its
channels, so masks are shaped like the positions, and per-position results are broadcast
back over the channels to the value's shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from keraslens.attr.scorer import GROUP_PASSES, Scorer
from keraslens.errors import KeraslensError

MaskRows = Callable[[int, int], np.ndarray]
"""`(start, stop) -> masks[start:stop]`, shaped `(stop - start, *positions)`: 1 keeps a
position, 0 replaces it by the fill value, fractions blend the two."""


def position_shape(value_shape: tuple) -> tuple:
    """The position axes of one sample: all but the last (channel) axis, or the one axis."""
    return tuple(value_shape) if len(value_shape) == 1 else tuple(value_shape[:-1])


def repeat_over_channels(maps: np.ndarray, value_shape: tuple) -> np.ndarray:
    """`(N, *positions)` maps repeated over the channels: `(N, *value_shape)`, float32."""
    maps = np.asarray(maps, dtype=np.float32)
    if len(value_shape) == 1:
        return maps
    return np.ascontiguousarray(np.broadcast_to(maps[..., None], (len(maps), *value_shape)))


def fill_values(fill: Any, x: np.ndarray, what: str) -> np.ndarray:
    """What replaced positions take: a number, `"mean"` or an array, broadcastable to `x`.

    `"mean"` is each sample's mean over its positions, channel by channel (for tokens: the
    mean of the sample's own embedding rows). An array is shaped like one sample or like
    the batch.

    Args:
        fill: the user's value.
        x: the explained value `(N, ...)`.
        what: the option's name and method, for the error (`"Occlusion: value"`).
    """
    if isinstance(fill, str):
        if fill != "mean":
            raise KeraslensError(f"{what} must be a number, 'mean' or an array; got {fill!r}.")
        axes = tuple(range(1, x.ndim - 1)) if x.ndim > 2 else (1,)
        return x.mean(axis=axes, keepdims=True)
    try:
        value = np.asarray(fill, dtype=np.float32)
    except (TypeError, ValueError):
        raise KeraslensError(
            f"{what} must be a number, 'mean' or an array; got {fill!r}."
        ) from None
    if value.ndim == 0 or value.shape == x.shape[1:]:
        return value[None] if value.ndim else value.reshape((1,) * x.ndim)
    if value.shape == x.shape:
        return value
    raise KeraslensError(
        f"{what} must be a number, 'mean', one sample of shape {x.shape[1:]} or the batch's "
        f"shape {x.shape}; got shape {value.shape}."
    )


def perturbed_scores(
    scorer: Scorer, count: int, masks: MaskRows, fill: np.ndarray | float = 0.0
) -> np.ndarray:
    """Target scores of every sample under `count` masks: `(N, count)`.

    Row `(i, m)` is `x_i * mask_m + fill_i * (1 - mask_m)`. Samples and masks are expanded
    a few passes' worth of rows at a time (sample-major, as `Scorer.score` takes them), so
    memory stays bounded however many masks there are.

    Args:
        scorer: the batch and its scores.
        count: the number of masks.
        masks: gives the masks `[start, stop)`, shaped `(k, *positions)`.
        fill: what masked positions take, broadcastable to `scorer.value`.
    """
    x = scorer.value
    fill = np.asarray(fill, dtype=np.float32)
    fill = fill.reshape((1,) * x.ndim) if fill.ndim == 0 else fill
    scores = np.empty((scorer.samples, count), np.float32)
    budget = GROUP_PASSES * scorer.batch_size
    for group in scorer.groups(count):
        samples = group.stop - group.start
        own_fill = fill[group] if len(fill) == scorer.samples else fill
        step = max(1, budget // samples)
        for start in range(0, count, step):
            stop = min(start + step, count)
            keep = _with_channels(masks(start, stop), x.ndim)
            rows = own_fill[:, None] + (x[group, None] - own_fill[:, None]) * keep[None]
            flat = rows.reshape(-1, *x.shape[1:])
            scores[group, start:stop] = scorer.score(flat, stop - start, group.start).reshape(
                samples, stop - start
            )
    return scores


def weighted_mask_sum(weights: np.ndarray, count: int, masks: MaskRows) -> np.ndarray:
    """`sum_m weights[:, m] * masks[m]`: `(N, *positions)`, masks taken in chunks."""
    total = None
    step = max(1, 2**22 // max(1, int(np.prod(masks(0, 1).shape[1:]))))
    for start in range(0, count, step):
        stop = min(start + step, count)
        part = np.tensordot(weights[:, start:stop], masks(start, stop), axes=(1, 0))
        total = part if total is None else total + part
    return total.astype(np.float32)


def _with_channels(masks: np.ndarray, ndim: int) -> np.ndarray:
    """`(k, *positions)` masks with a trailing axis for the channels when the value has one."""
    masks = np.asarray(masks, dtype=np.float32)
    return masks[..., None] if masks.ndim < ndim else masks
