"""Recording what chosen layers output, by wrapping their `call` for the duration of a trace.

Keras 3 has no forward hooks. Wrapping the instance's `call` works for every
kind of model, including subclassed ones with no functional graph, because
`Layer.__call__` looks `self.call` up at each call. Like fastai's `Hooks`, the
context manager always restores what it replaced, even when the body raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import keras
import tensorflow as tf


def first_float_tensor(outputs):
    """The first floating-point tensor of a layer's output structure, or None."""
    for tensor in tf.nest.flatten(outputs):
        if tf.is_tensor(tensor) and tensor.dtype.is_floating:
            return tensor
    return None


@contextlib.contextmanager
def record_calls(layers: Sequence[keras.layers.Layer]) -> Iterator[dict[int, list[tf.Tensor]]]:
    """Within the block, every call of one of `layers` appends its output to the record.

    Yields a dict from `id(layer)` to the list of its outputs, one per call site.
    """
    record: dict[int, list[tf.Tensor]] = {id(layer): [] for layer in layers}
    originals = []
    try:
        for layer in layers:
            own = layer.__dict__.get("call")
            originals.append((layer, own))
            object.__setattr__(layer, "call", _recording(layer, record[id(layer)]))
        yield record
    finally:
        for layer, own in originals:
            if own is None:
                object.__delattr__(layer, "call")
            else:
                object.__setattr__(layer, "call", own)


def _recording(layer: keras.layers.Layer, sink: list):
    call = type(layer).call.__get__(layer) if "call" not in layer.__dict__ else layer.__dict__["call"]

    def call_and_record(*args, **kwargs):
        outputs = call(*args, **kwargs)
        sink.append(first_float_tensor(outputs))
        return outputs

    return call_and_record
