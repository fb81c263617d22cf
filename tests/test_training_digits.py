"""A real training case: dead-neurons tells a sane learning rate from a destructive one.

The same small ReLU MLP is trained on scikit-learn's bundled digits with Adam at 1e-3
and with SGD at a learning rate of 10, whose first updates push the hidden units'
pre-activations below zero for good.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

import keraslens

HIDDEN = ("hidden1", "hidden2")


def _train(optimizer: keras.optimizers.Optimizer) -> tuple[keras.Model, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(64, activation="relu", name="hidden1"),
            keras.layers.Dense(64, activation="relu", name="hidden2"),
            keras.layers.Dense(10, activation="softmax", name="out"),
        ]
    )
    model.compile(optimizer, "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=4, batch_size=64, verbose=0)
    return model, x


def _dead_neurons(model: keras.Model, x: np.ndarray) -> dict:
    result = keraslens.analyze(
        model, x, plugins=["dead-neurons"], layers=list(HIDDEN), minimal=True
    )
    return result.to_dict()["plugins"]["dead-neurons"]


def _never_fired(model: keras.Model, x: np.ndarray, name: str) -> list[int]:
    raw = keras.Model(model.inputs[0], model.get_layer(name).output)(x).numpy()
    return np.flatnonzero((raw <= 0).all(axis=0)).tolist()


@pytest.fixture(scope="module")
def sane():
    model, x = _train(keras.optimizers.Adam(1e-3))
    return model, x, _dead_neurons(model, x)


@pytest.fixture(scope="module")
def destructive():
    model, x = _train(keras.optimizers.SGD(10.0))
    return model, x, _dead_neurons(model, x)


@pytest.mark.parametrize("run", ["sane", "destructive"])
def test_dead_units_after_training_are_those_that_never_fire_on_the_digits(run, request):
    model, x, entry = request.getfixturevalue(run)

    for name in HIDDEN:
        assert entry["layers"][name]["dead_units"] == _never_fired(model, x, name)


def test_sane_learning_rate_leaves_few_dead_units_and_no_finding(sane):
    _, _, entry = sane

    assert all(entry["layers"][name]["dead_fraction"] < 0.2 for name in HIDDEN)
    assert entry["findings"] == []


def test_destructive_learning_rate_kills_most_hidden_units_and_is_an_error(destructive):
    _, _, entry = destructive

    assert all(entry["layers"][name]["dead_fraction"] > 0.9 for name in HIDDEN)
    severities = {f["layer"]: f["severity"] for f in entry["findings"]}
    assert all(severities.get(name) == "error" for name in HIDDEN)
