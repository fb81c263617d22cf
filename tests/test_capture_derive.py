"""Outputs that repeat or join outputs already read (Dropout, a linear Activation, a
Concatenate along units) are summarised from their sources, and still match NumPy on
their own values."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_capture import assert_matches_numpy, outputs_of

from keraslens import Lens

BOUNDS = {
    "relu": None,
    "sigmoid": (0.0, 1.0),
    "dropout": None,
    "linear": (0.0, 1.0),  # the sigmoid's output, as passed on
    "joined": None,
    "with_input": None,
    "sigmoid_again": (0.0, 1.0),
    "out": None,
}


def build_joining() -> keras.Model:
    """Two convolutions (relu, sigmoid), the identities of one, and joins along units:
    of captured outputs only, and with the model's input (which no layer outputs)."""
    layers = keras.layers
    x = keras.Input((5, 5, 3))
    relu = layers.Conv2D(4, 3, padding="same", activation="relu", name="relu")(x)
    sigmoid = layers.Conv2D(5, 1, activation="sigmoid", name="sigmoid")(relu)
    dropout = layers.Dropout(0.5, name="dropout")(relu)
    linear = layers.Activation("linear", name="linear")(sigmoid)
    joined = layers.Concatenate(name="joined")([dropout, sigmoid, relu])
    with_input = layers.Concatenate(name="with_input")([x, relu])
    again = layers.Activation("sigmoid", name="sigmoid_again")(linear)
    out = layers.Concatenate(name="out")([joined, with_input, again])
    return keras.Model(x, out, name="joining")


@pytest.fixture(scope="module")
def model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return build_joining()


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    values = np.random.default_rng(2).normal(size=(37, 5, 5, 3)).astype(np.float32)
    values[3, 1, 1, 0] = np.nan
    values[8, 2, 0, 1] = np.inf
    return values


def kernel_calls(lens: Lens, x: np.ndarray) -> int:
    spec = tf.TensorSpec([None, *x.shape[1:]], tf.float32)
    graph = lens.recorder._stats_step.get_concrete_function(spec).graph
    return sum(op.type in ("PyFunc", "PyFuncStateless") for op in graph.get_operations())


@pytest.mark.parametrize("histogram_samples", [None, 4])
def test_repeated_and_joined_outputs_match_numpy(model, x, histogram_samples):
    stats = Lens(model, histogram_samples=histogram_samples).capture(x, batch_size=16)

    for name, bounds in BOUNDS.items():
        values = outputs_of(model.inputs, model.get_layer(name).output, x)
        if histogram_samples is None:
            assert_matches_numpy(stats[name], values, bounds)
        else:
            counts = stats[name].hist_counts
            per_batch = [values[s : s + histogram_samples] for s in range(0, len(x), 16)]
            expected = sum(np.isfinite(v).sum() for v in per_batch)
            assert counts.sum() == expected, name


def test_only_outputs_with_new_values_are_read(model, x):
    lens = Lens(model)
    lens.capture(x, batch_size=16)

    # dropout, linear, joined and out repeat or join captured outputs; with_input holds
    # the model's input, sigmoid_again new values.
    assert len(lens.sites) == 8
    assert kernel_calls(lens, x) == 8 - 4
