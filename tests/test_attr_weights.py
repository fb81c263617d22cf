"""Attributions with other weights (`Weights`), and graphs that serve more than one need."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import keraslens
from keraslens.attr.graph import score_graph
from keraslens.attr.inputs import model_inputs
from keraslens.attr.weights import Weights, permuted_weights


def _relu_cnn() -> keras.Model:
    """Fused ReLUs (guided backprop rewrites those layers) and a softmax head."""
    keras.utils.set_random_seed(3)
    return keras.Sequential(
        [
            keras.Input((8, 8, 2)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv2"),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax", name="head"),
        ]
    )


@pytest.fixture
def images(rng) -> np.ndarray:
    return rng.uniform(0, 1, (5, 8, 8, 2)).astype("float32")


def _copy_with(model: keras.Model, weights: Weights) -> keras.Model:
    """The oracle: a real copy of the model holding the given values."""
    copy = keras.models.clone_model(model)
    copy.set_weights([np.asarray(weights.value(v)) for v in model.weights])
    return copy


@pytest.mark.parametrize("method", ["saliency", "guided-backprop", "gradcam", "occlusion"])
def test_other_weights_explain_as_a_copy_holding_them_would(method, images):
    model = _relu_cnn()
    before = [np.array(w) for w in model.get_weights()]
    keraslens.attribute(model, images, method, targets=1)  # traced with the trained weights
    randomised = permuted_weights(model, seed=4)
    ours = keraslens.attribute(model, images, method, targets=1, weights=randomised)
    theirs = keraslens.attribute(_copy_with(model, randomised), images, method, targets=1)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)
    for kept, now in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(kept, now)  # the model itself was not changed


def test_permuted_weights_permute_each_trainable_tensor_and_nothing_else():
    model = _relu_cnn()
    randomised = permuted_weights(model, seed=0)
    for variable in model.trainable_weights:
        trained, permuted = np.asarray(variable), np.asarray(randomised.value(variable))
        np.testing.assert_array_equal(np.sort(trained.ravel()), np.sort(permuted.ravel()))
        assert variable.shape == permuted.shape
        if len(np.unique(trained)) > 1:  # a zero bias permutes to itself
            assert not np.array_equal(trained, permuted)


def test_a_graph_sees_weights_changed_after_it_was_traced(images):
    # Guided backprop runs copies of the fused-ReLU layers; they must read the layer's
    # current weights (a callback explains the model again after each epoch of training).
    model = _relu_cnn()
    keraslens.attribute(model, images, "guided-backprop", targets=0)
    changed = permuted_weights(model, seed=9)
    model.set_weights([np.asarray(changed.value(v)) for v in model.weights])
    ours = keraslens.attribute(model, images, "guided-backprop", targets=0)
    fresh = _copy_with(model, Weights([]))
    np.testing.assert_allclose(
        ours, keraslens.attribute(fresh, images, "guided-backprop", targets=0), rtol=1e-4
    )


def test_gradients_at_the_input_come_from_a_layers_graph_without_a_second_trace(images):
    model = _relu_cnn()
    keraslens.attribute(model, images, "gradcam", targets=2, layer="conv2")
    specs = model_inputs(model, images)[0]
    layer_graph = score_graph(model, specs, 0, layer="conv2")
    traces = layer_graph.compiled.gradient_fn.experimental_get_tracing_count()
    saliency = keraslens.attribute(model, images, "saliency", targets=2)
    assert score_graph(model, specs, 0).compiled is layer_graph.compiled
    assert layer_graph.compiled.gradient_fn.experimental_get_tracing_count() == traces
    hidden, head = keras.Sequential(model.layers[:-1]), model.layers[-1]
    x = tf.constant(images)
    with tf.GradientTape() as tape:
        tape.watch(x)
        logit = (hidden(x) @ head.kernel + head.bias)[:, 2]
    np.testing.assert_allclose(saliency, np.abs(tape.gradient(logit, x)), rtol=1e-4, atol=1e-7)
