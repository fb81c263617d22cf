"""Summaries of layer outputs that repeat or join outputs the capture has already read.

A layer may return its input unchanged (`Dropout` and `SpatialDropout` at inference,
`Activation("linear")`), or join other layers' outputs along the units axis
(`Concatenate`, as DenseNet does in every block, its largest tensors). Per unit, such
an output holds exactly the values of its sources, sample by sample and position by
position, so its rows are theirs side by side and its histogram their sum: taking
them from the sources' summaries skips a pass over the tensor. Sums and sums of
squares agree with a pass of their own to float32 rounding (the kernel's blocks and
thread split differ), every count, extreme and histogram bucket exactly.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keraslens.capture.stats import ROW, STATISTICS

Bounds = tuple[float, float] | None
Summary = tuple[tf.Tensor, tf.Tensor, tf.Tensor]

# The kernel counts nothing at the bounds of an unbounded output.
_UNBOUNDED = np.ones((len(STATISTICS), 1))
_UNBOUNDED[[ROW["lower"], ROW["upper"]]] = 0.0


class Summaries:
    """The batch summaries of one trace, by the graph tensor each one summarizes."""

    def __init__(self) -> None:
        self._by_tensor: dict = {}

    def add(self, tensor: tf.Tensor, bounds: Bounds, summary: Summary) -> None:
        """Record `summary` as that of `tensor`, counted at the (widened) `bounds`."""
        self._by_tensor[_source(tensor).ref()] = (bounds, summary)

    def derived(self, tensor: tf.Tensor, bounds: Bounds) -> Summary | None:
        """The summary of `tensor` at `bounds` from those already recorded, or None.

        Found when `tensor` is a recorded tensor (through identities), or a
        concatenation of recorded tensors along its last axis; and when each source
        was counted at the same bounds or `tensor` is unbounded.
        """
        source = _source(tensor)
        parts = [source] if source.ref() in self._by_tensor else _joined(source)
        if not parts:
            return None
        summaries = [self._rebound(part, bounds) for part in parts]
        if any(summary is None for summary in summaries):
            return None
        if len(summaries) == 1:
            return summaries[0]
        rows, shifts, hists = zip(*summaries, strict=True)
        return tf.concat(rows, 1), tf.concat(shifts, 0), tf.add_n(hists)

    def _rebound(self, tensor: tf.Tensor, bounds: Bounds) -> Summary | None:
        known = self._by_tensor.get(_source(tensor).ref())
        if known is None:
            return None
        counted_at, (rows, shift, hist) = known
        if counted_at == bounds:
            return rows, shift, hist
        if bounds is None:
            return rows * _UNBOUNDED, shift, hist
        return None


def _source(tensor: tf.Tensor) -> tf.Tensor:
    """`tensor` with the identities that produced it stripped (the capture's own waits)."""
    while tensor.op.type == "Identity":
        tensor = tensor.op.inputs[0]
    return tensor


def _joined(tensor: tf.Tensor) -> list[tf.Tensor]:
    """The parts of a concatenation along the last axis, else none."""
    if tensor.op.type != "ConcatV2" or tensor.shape.rank is None:
        return []
    axis = tf.get_static_value(tensor.op.inputs[-1])
    if axis is None or int(axis) not in (-1, tensor.shape.rank - 1):
        return []
    return list(tensor.op.inputs[:-1])
