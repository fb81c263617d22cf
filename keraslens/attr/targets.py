"""Which class each sample is explained for."""

from __future__ import annotations

from typing import Any

import numpy as np

from keraslens.errors import KeraslensError


def as_targets(targets: Any, count: int, classes: int) -> np.ndarray | None:
    """Normalise `targets` to one class index per sample, or None for the predicted class.

    Args:
        targets: None, one class index for all samples, one index per sample, or one-hot
            labels of shape `(count, classes)`.
        count: number of samples.
        classes: number of classes of the explained output.
    """
    if targets is None:
        return None
    values = np.asarray(targets)
    if values.ndim == 2 and values.shape == (count, classes) and classes > 1:
        values = values.argmax(axis=1)
    if values.ndim == 0:
        values = np.full(count, values)
    if values.shape != (count,) or not np.issubdtype(values.dtype, np.integer):
        raise KeraslensError(
            f"targets must be a class index, {count} class indices or one-hot labels of "
            f"shape ({count}, {classes}); got an array of shape {values.shape} and dtype "
            f"{values.dtype}."
        )
    if values.min() < 0 or values.max() >= classes:
        raise KeraslensError(
            f"targets must lie in [0, {classes - 1}] (the output has {classes} classes); "
            f"got {values.min()}..{values.max()}."
        )
    return values.astype(np.int64)
