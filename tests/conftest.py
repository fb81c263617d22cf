"""Shared fixtures: tiny models of every kind a Lens must handle, built in milliseconds.

Layers have few units (mostly 4), so every model traces and runs in milliseconds.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

SEED = 0


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test starts from the same Keras, NumPy and TensorFlow random state."""
    keras.utils.set_random_seed(SEED)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(SEED)


def build_sequential() -> keras.Sequential:
    """Input (6,) -> Dense relu (4) -> Dense tanh (4) -> Dense linear (4)."""
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(4, activation="relu", name="dense_relu"),
            keras.layers.Dense(4, activation="tanh", name="dense_tanh"),
            keras.layers.Dense(4, name="logits"),
        ],
        name="sequential",
    )


def build_two_in_two_out() -> keras.Model:
    """Inputs `wide` (6,) and `narrow` (5,) (not in alphabetical order), each through a relu
    Dense, added; outputs `out_linear` and `out_sigmoid` (4 units each)."""
    wide = keras.Input((6,), name="wide")
    narrow = keras.Input((5,), name="narrow")
    hidden_wide = keras.layers.Dense(4, activation="relu", name="dense_wide")(wide)
    hidden_narrow = keras.layers.Dense(4, activation="relu", name="dense_narrow")(narrow)
    joined = keras.layers.Add(name="add")([hidden_wide, hidden_narrow])
    out_linear = keras.layers.Dense(4, name="out_linear")(joined)
    out_sigmoid = keras.layers.Dense(4, activation="sigmoid", name="out_sigmoid")(joined)
    return keras.Model([wide, narrow], [out_linear, out_sigmoid], name="two_in_two_out")


def build_nested() -> keras.Model:
    """Input (6, 6, 2) -> `pre` 1x1 conv -> model `encoder` (`conv1`, `conv2`) -> pool -> `head`.

    Every conv outputs (6, 6, 4), so one compiled reduction serves all three.
    """
    encoder_in = keras.Input((6, 6, 4))
    conv1 = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(encoder_in)
    conv2 = keras.layers.Conv2D(4, 3, padding="same", name="conv2")(conv1)
    encoder = keras.Model(encoder_in, conv2, name="encoder")
    x = keras.Input((6, 6, 2))
    pre = keras.layers.Conv2D(4, 1, name="pre")(x)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(encoder(pre))
    head = keras.layers.Dense(4, name="head")(pooled)
    return keras.Model(x, head, name="nested")


def build_shared() -> keras.Model:
    """Input (4,) -> `shared` Dense -> `act` relu -> the same `shared` Dense again."""
    x = keras.Input((4,))
    shared = keras.layers.Dense(4, name="shared")
    first = shared(x)
    second = shared(keras.layers.Activation("relu", name="act")(first))
    return keras.Model(x, second, name="shared_model")


class TinySubclassed(keras.Model):
    """A subclassed model with no functional graph: `d1` relu, doubled, then `d2` linear."""

    def __init__(self) -> None:
        super().__init__(name="tiny_subclassed")
        self.d1 = keras.layers.Dense(4, activation="relu", name="d1")
        self.d2 = keras.layers.Dense(4, name="d2")

    def call(self, x):
        return self.d2(self.d1(x) * 2.0)


@pytest.fixture(scope="session")
def make_sequential():
    return build_sequential


@pytest.fixture(scope="session")
def make_two_in_two_out():
    return build_two_in_two_out


@pytest.fixture(scope="session")
def make_nested():
    return build_nested


@pytest.fixture(scope="session")
def make_shared():
    return build_shared


@pytest.fixture(scope="session")
def make_subclassed():
    """Builds a `TinySubclassed`, never called, so its layers are not built yet."""
    return TinySubclassed
