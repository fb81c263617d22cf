"""Models whose explanations have known answers, shared by the metric tests."""

from __future__ import annotations

import keras
import numpy as np

import keraslens
from keraslens.attr import AttributionMethod


def planted(size: int, samples: int = 12, seed: int = 0):
    """A softmax model that decides on one square region, its inputs and that region.

    Class 1's logit is 4 * mean(region) - 4 * mean(rest) - 1, class 0's is 0: inputs have
    a bright region (1.0) on a background in [0, 0.5), so class 1 wins with logit ~2.
    Returns `(model, x, region)`, region an `(size, size)` bool mask.
    """
    side = size // 4
    region = np.zeros((size, size), bool)
    region[side : 2 * side, side : 2 * side] = True
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 0.5, (samples, size, size, 1)).astype("float32")
    x[:, region] = 1.0
    model = keras.Sequential(
        [keras.Input((size, size, 1)), keras.layers.Flatten(), keras.layers.Dense(2, "softmax")]
    )
    weights = np.where(region.ravel(), 4.0 / region.sum(), -4.0 / (~region).sum())
    kernel = np.stack([np.zeros(size * size), weights], axis=1).astype("float32")
    model.layers[-1].set_weights([kernel, np.array([0.0, -1.0], "float32")])
    return model, x, region


def planted_logit(x: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Class 1's logit of `planted`, in NumPy."""
    images = x[..., 0]
    return 4 * images[:, region].mean(1) - 4 * images[:, ~region].mean(1) - 1


def linear(shape: tuple, classes: int = 5, seed: int = 0) -> keras.Model:
    """Flatten -> Dense(classes, softmax) with random weights: logits x @ W + b."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input(shape), keras.layers.Flatten(), keras.layers.Dense(classes, "softmax")]
    )


def constant(shape: tuple, classes: int = 5) -> keras.Model:
    """A model whose output ignores its input: a zero kernel, random biases."""
    model = linear(shape, classes)
    kernel, bias = model.layers[-1].get_weights()
    model.layers[-1].set_weights([np.zeros_like(kernel), np.arange(classes, dtype="float32")])
    return model


class Echo(AttributionMethod):
    """A 'method' that returns the input itself: it explains the image, not the model."""

    name = "echo"
    title = "Echo"
    citation = "none"

    def attribute(self, scorer):
        return scorer.value.copy()


class Noise(AttributionMethod):
    """A 'method' that returns fresh noise at every call."""

    name = "noise"
    title = "Noise"
    citation = "none"

    def __init__(self) -> None:
        super().__init__()
        self.rng = np.random.default_rng(0)

    def attribute(self, scorer):
        return self.rng.standard_normal(scorer.value.shape).astype("float32")


def evaluate_one(model, x, maps, metric: str, **options) -> dict:
    """The entry of one metric of `keraslens.evaluate`, with that metric's options."""
    return keraslens.evaluate(model, x, maps, {metric: options})[metric]
