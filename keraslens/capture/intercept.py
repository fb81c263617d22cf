"""Recording what chosen layers output, by wrapping their `call` for the duration of a trace.

Keras 3 has no forward hooks. Wrapping the instance's `call` works for every
kind of model, including subclassed ones with no functional graph, because
`Layer.__call__` looks `self.call` up at each call. Like fastai's `Hooks`, the
context manager always restores what it replaced, even when the body raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import keras
import tensorflow as tf


def first_float_tensor(outputs):
    """The first floating-point tensor of a layer's output structure, or None."""
    for tensor in tf.nest.flatten(outputs):
        if tf.is_tensor(tensor) and tensor.dtype.is_floating:
            return tensor
    return None


def has_units(tensor: tf.Tensor | None) -> bool:
    """Whether a recorded output can be captured: rank >= 2, with a known, non-zero number
    of units on its last axis."""
    if tensor is None or tensor.shape.rank is None or tensor.shape.rank < 2:
        return False
    return tensor.shape[-1] is not None and tensor.shape[-1] > 0


Summarize = Callable[[keras.layers.Layer, tf.Tensor], Any]


@contextlib.contextmanager
def record_calls(
    layers: Sequence[keras.layers.Layer], summarize: Summarize | None = None
) -> Iterator[dict[int, list[tuple[tf.Tensor | None, Any]]]]:
    """Within the block, every call of one of `layers` appends its output to the record.

    Yields a dict from `id(layer)` to a list with one `(output, summary)` per call
    site. With `summarize`, each output that `has_units` is summarised in the graph as
    soon as the layer returns, and each recorded output waits for the summary of
    the call before it, so at most one summary runs behind the forward pass. Left
    free, TensorFlow's executor ordered summaries and layers differently from
    batch to batch and the process's peak memory kept creeping up with the number
    of batches; waiting on the summary of the same call instead costs about 8% of
    the time, as a summary can no longer overlap the next layer.
    """
    record: dict[int, list] = {id(layer): [] for layer in layers}
    originals = []
    previous: list = []
    graph = None if tf.executing_eagerly() else tf.compat.v1.get_default_graph()
    try:
        for layer in layers:
            own = layer.__dict__.get("call")
            originals.append((layer, own))
            object.__setattr__(
                layer, "call", _recording(layer, record[id(layer)], summarize, previous, graph)
            )
        yield record
    finally:
        for layer, own in originals:
            if own is None:
                object.__delattr__(layer, "call")
            else:
                object.__setattr__(layer, "call", own)


def _recording(
    layer: keras.layers.Layer,
    sink: list,
    summarize: Summarize | None,
    previous: list,
    graph: tf.Graph | None,
):
    call = (
        type(layer).call.__get__(layer) if "call" not in layer.__dict__ else layer.__dict__["call"]
    )

    def call_and_record(*args, **kwargs):
        outputs = call(*args, **kwargs)
        tensor = first_float_tensor(outputs)
        if graph is not None and tensor is not None and tensor.graph is not graph:
            # Called inside a loop or branch of the model's graph (an RNN's cell, once
            # per step): the tensor cannot leave it; its layer's own output covers it.
            tensor = None
        summary = None
        if summarize is not None and has_units(tensor):
            summary = summarize(layer, tensor)
            if previous:
                outputs = _after(tf.nest.flatten(previous[-1]), outputs)
            previous[:] = [summary]
        sink.append((tensor, summary))
        return outputs

    return call_and_record


def _after(dependencies: list, outputs):
    """`outputs` as identities that run only once `dependencies` have (Keras masks kept)."""

    def wait(value):
        if not tf.is_tensor(value):
            return value
        waited = tf.identity(value)
        mask = getattr(value, "_keras_mask", None)
        if mask is not None:
            waited._keras_mask = mask
        return waited

    with tf.control_dependencies(dependencies):
        return tf.nest.map_structure(wait, outputs)
