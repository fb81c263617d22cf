"""Which class each sample is explained for, read from the same forward pass as the map."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf
from tf_keras_vis.utils.scores import Score

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


class TargetScore(Score):
    """The score of each sample's target class; the predicted class when none is given.

    It keeps the logits of its first call, so the predicted class and its score come from
    the very forward pass that produced the map. Methods whose passes see altered inputs
    set `logits` from a clean pass beforehand: Score-CAM from the clean rows it adds to its
    masked inputs' pass, SmoothGrad from one pass of its own.
    """

    def __init__(self, targets: np.ndarray | None) -> None:
        super().__init__("TargetScore")
        self.targets = targets
        self.logits: np.ndarray | None = None

    def __call__(self, output: tf.Tensor) -> tf.Tensor:
        if self.logits is None:
            self.logits = output.numpy()
        if self.targets is None:
            self.targets = self.logits.argmax(axis=-1)
        index = tf.constant(self.targets, dtype=tf.int32)[:, None]
        return tf.gather(output, index, batch_dims=1)[:, 0]
