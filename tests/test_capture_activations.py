"""Activations applied inside a custom layer's `call` are identified from the traced graph."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import keraslens
from keraslens import Lens


class Activated(keras.layers.Layer):
    """A Dense-like custom layer that applies `fn` to its output inside `call`."""

    def __init__(self, units: int, fn, **kwargs) -> None:
        super().__init__(**kwargs)
        self.units, self.fn = units, fn

    def build(self, input_shape) -> None:
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units))
        self.bias = self.add_weight(shape=(self.units,), initializer="zeros")

    def call(self, x):
        return self.fn(keras.ops.matmul(x, self.kernel) + self.bias)


def model_with(fn, units: int = 6) -> keras.Model:
    x = keras.Input((5,))
    return keras.Model(
        x, keras.layers.Dense(2, name="head")(Activated(units, fn, name="custom")(x))
    )


def data(n: int = 64) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 5)).astype(np.float32)


@pytest.mark.parametrize(
    ("fn", "name", "bounds"),
    [
        (keras.ops.relu, "relu", None),
        (keras.ops.relu6, "relu6", (0.0, 6.0)),
        (keras.ops.sigmoid, "sigmoid", (0.0, 1.0)),
        (keras.ops.tanh, "tanh", (-1.0, 1.0)),
        (keras.activations.softmax, "softmax", (0.0, 1.0)),
        (tf.nn.leaky_relu, "leaky_relu", None),
    ],
    ids=["ops.relu", "ops.relu6", "ops.sigmoid", "ops.tanh", "activations.softmax", "tf.nn"],
)
def test_an_activation_inside_call_is_identified_with_its_bounds(fn, name, bounds):
    stats = Lens(model_with(fn), layers="custom").capture(data())["custom"]

    assert (stats.activation, stats.bounds) == (name, bounds)


def test_a_relu_followed_by_more_work_is_not_the_layers_activation():
    stats = Lens(model_with(lambda t: keras.ops.relu(t) - 1.0), layers="custom").capture(data())

    assert stats["custom"].activation is None and stats["custom"].bounds is None


def test_outputs_at_the_bounds_of_an_inner_sigmoid_are_counted():
    model = model_with(keras.ops.sigmoid)
    layer = model.get_layer("custom")
    kernel, _ = layer.get_weights()
    layer.set_weights([kernel * 50.0, np.zeros(6, np.float32)])
    x = data()

    stats = Lens(model, layers="custom").capture(x)["custom"]

    raw = keras.Model(model.input, layer.output).predict(x, verbose=0)
    np.testing.assert_array_equal(stats.lower_count, (raw <= np.float32(0.01)).sum(0))
    np.testing.assert_array_equal(stats.upper_count, (raw >= np.float32(0.99)).sum(0))
    assert stats.upper_count.sum() > 0 and stats.lower_count.sum() > 0


def test_dead_and_nearly_dead_units_behind_an_inner_relu_are_found():
    model = model_with(keras.ops.relu)
    layer = model.get_layer("custom")
    kernel, bias = layer.get_weights()
    kernel[:, [0, 3]], bias[[0, 3]] = 0.0, [-1.0, -5.0]  # unit 0 never fires
    kernel[0, 3] = 1.0  # unit 3 fires on x[:, 0] > 5: one planted sample of 200
    layer.set_weights([kernel, bias])
    x = data(200)
    x[:, 0] = np.clip(x[:, 0], -3.0, 3.0)
    x[7, 0] = 10.0

    result = keraslens.analyze(model, x, plugins=["dead-neurons"], layers=["custom"])

    entry = result.to_dict()["plugins"]["dead-neurons"]["layers"]["custom"]
    assert (entry["activation"], entry["rule"]) == ("relu", "fires")
    assert (entry["dead_units"], entry["nearly_dead_units"]) == ([0], [3])
