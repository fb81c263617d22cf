"""maximize(): synthesised inputs beat every natural sample of a trained digits model."""

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

from keraslens.errors import KeraslensError
from keraslens.vis import maximize
from keraslens.vis.maximize import unit_activations

pytestmark = pytest.mark.slow

STEPS = 60


@pytest.fixture(scope="module")
def digits():
    keras.utils.set_random_seed(0)
    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[..., None]
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, activation="relu", padding="same", name="conv1"),
            keras.layers.Conv2D(16, 3, activation="relu", name="conv2"),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax", name="head"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, data.target, epochs=4, batch_size=64, verbose=0)
    assert model.evaluate(x, data.target, verbose=0)[1] > 0.9
    return model, x


def test_class_scores_beat_every_digit_in_the_data(digits):
    model, x = digits
    classes = np.arange(10)
    result = maximize(model, None, classes, steps=STEPS, seed=0)
    natural = unit_activations(model, None, x)
    assert result.inputs.shape == (10, 8, 8, 1)
    assert np.all(result.activations > natural.max(axis=0))


def test_conv_filters_beat_every_digit_in_the_data(digits):
    model, x = digits
    natural = unit_activations(model, "conv2", x)
    live = np.flatnonzero(natural.max(axis=0) > 0)[:6]
    result = maximize(model, "conv2", live, steps=STEPS, seed=0)
    assert np.all(result.activations > natural.max(axis=0)[live])


def test_reached_activation_is_that_of_the_returned_input(digits):
    model, _ = digits
    result = maximize(model, "conv1", [3], steps=5, seed=0)
    recomputed = unit_activations(model, "conv1", result.inputs)[0, 3]
    np.testing.assert_allclose(result.activations[0], recomputed, rtol=1e-5)


def test_inputs_stay_in_the_data_range(digits):
    model, _ = digits
    inputs, _ = maximize(model, None, [0, 1], steps=10, seed=0, input_range=(0.0, 1.0))
    assert inputs.min() >= 0.0 and inputs.max() <= 1.0


def test_same_seed_same_inputs_other_seed_other_inputs(digits):
    model, _ = digits
    first = maximize(model, "conv1", [0, 5], steps=5, seed=4).inputs
    np.testing.assert_array_equal(maximize(model, "conv1", [0, 5], steps=5, seed=4).inputs, first)
    assert not np.allclose(maximize(model, "conv1", [0, 5], steps=5, seed=5).inputs, first)


def test_a_dead_unit_gives_a_finite_input(digits):
    keras.utils.set_random_seed(1)
    dead = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(2, 3, activation="relu", bias_initializer="zeros", name="conv"),
        ]
    )
    dead.layers[0].set_weights([-np.abs(dead.layers[0].get_weights()[0]), np.zeros(2)])
    result = maximize(dead, "conv", [0], steps=5, seed=0)
    assert np.isfinite(result.inputs).all()
    assert result.activations[0] == 0


@pytest.mark.parametrize(
    ("layer", "units", "message"),
    [
        ("conv2", [16], r"units must lie in \[0, 15\]: layer 'conv2' has 16 units"),
        (None, [-1], r"the output has 10 units"),
        ("conv3", [0], "no 'conv3'"),
    ],
)
def test_bad_units_and_layers_are_named(digits, layer, units, message):
    model, _ = digits
    with pytest.raises(KeraslensError, match=message):
        maximize(model, layer, units, steps=1)
