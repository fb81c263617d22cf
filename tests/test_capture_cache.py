"""The compiled capture step is traced once per model, layers, settings and input signature.

The oracle is the Python body of a layer's `call`: it runs when TensorFlow traces the
model, never when a traced graph executes, so its count is the number of traces.
"""

from __future__ import annotations

import gc
import weakref

import keras
import numpy as np

from keraslens import Lens


class Counting(keras.layers.Layer):
    """A Dense-like layer that counts how often its Python `call` runs."""

    def __init__(self, units: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.units = units
        self.calls = 0

    def build(self, input_shape) -> None:
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units))

    def call(self, x):
        self.calls += 1
        return keras.ops.matmul(x, self.kernel)


def counting_model() -> tuple[keras.Model, Counting]:
    layer = Counting(3, name="counting")
    x = keras.Input((5,))
    model = keras.Model(x, keras.layers.Dense(2, name="head")(layer(x)))
    return model, layer


def data(n: int) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 5)).astype(np.float32)


def test_a_second_lens_on_the_same_model_does_not_retrace():
    model, layer = counting_model()
    first = Lens(model).capture(data(8), batch_size=8)
    traced = layer.calls

    second = Lens(model).capture(data(8), batch_size=8)

    assert layer.calls == traced
    np.testing.assert_array_equal(second["counting"].mean, first["counting"].mean)


def test_the_last_smaller_batch_and_another_batch_size_reuse_the_trace():
    model, layer = counting_model()
    lens = Lens(model)
    lens.capture(data(8), batch_size=8)
    traced = layer.calls

    lens.capture(data(10), batch_size=4)  # batches of 4, 4 and 2

    assert layer.calls == traced


def test_other_layers_or_settings_trace_their_own_step():
    model, layer = counting_model()
    Lens(model).capture(data(8), batch_size=8)
    traced = layer.calls

    stats = Lens(model, layers="counting", epsilon=0.05).capture(data(8), batch_size=8)

    assert layer.calls > traced
    assert list(stats) == ["counting"] and stats["counting"].epsilon == 0.05


def test_the_cache_does_not_keep_the_model_alive():
    model, _ = counting_model()
    Lens(model).capture(data(8), batch_size=8)
    gone = weakref.ref(model)

    del model
    gc.collect()

    assert gone() is None
