"""Random-logit and model randomisation: maps that ignore the class or the weights fail."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from metrics_cases import Echo, constant, linear
from scipy.stats import spearmanr

import keraslens


@pytest.fixture
def x(rng):
    return rng.uniform(0, 1, (6, 6, 6, 1)).astype("float32")


def _two_layers() -> keras.Model:
    keras.utils.set_random_seed(3)
    return keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(5, activation="softmax", name="head"),
        ]
    )


def test_saliency_of_a_linear_model_depends_on_the_class(x):
    entry = keraslens.evaluate(linear((6, 6, 1), 10), x, "saliency", ["random-logit"])
    assert entry["random-logit"]["mean"] < 0.5


def test_a_map_that_ignores_the_class_fails_the_random_logit_test(x):
    entry = keraslens.evaluate(linear((6, 6, 1), 10), x, Echo(), ["random-logit"])
    np.testing.assert_allclose(entry["random-logit"]["per_sample"], 1.0)


def test_a_constant_model_fails_random_logit_and_randomisation(x):
    scores = keraslens.evaluate(
        constant((6, 6, 1)), x, "saliency", ["random-logit", "randomisation"]
    )
    np.testing.assert_allclose(scores["random-logit"]["per_sample"], 1.0)
    np.testing.assert_allclose(scores["randomisation"]["per_sample"], 1.0)
    assert keraslens.metrics.verdict(scores) == "fails randomisation"


def test_randomisation_explains_the_randomised_weights_not_the_original_ones(x):
    # Saliency of a linear model is |W[:, target]|. Had the metric kept the original
    # weights (Xplique's bug), it would correlate exactly 1 with itself; it must equal
    # the correlation with the kernel permuted as the metric permutes it (TensorFlow's
    # stateless shuffle of its entries, seed (0, its index among the trainable tensors)).
    model = linear((6, 6, 1), 3)
    kernel = model.layers[-1].get_weights()[0]
    entry = keraslens.evaluate(model, x, "saliency", ["randomisation"], targets=0)
    shuffled = tf.random.experimental.stateless_shuffle(kernel.ravel(), seed=[0, 0])
    permuted = np.asarray(shuffled).reshape(kernel.shape)
    expected = spearmanr(np.abs(kernel[:, 0]), np.abs(permuted[:, 0])).statistic
    np.testing.assert_allclose(entry["randomisation"]["per_sample"], expected, atol=1e-9)
    assert expected < 0.5
    np.testing.assert_array_equal(model.layers[-1].get_weights()[0], kernel)  # model untouched


def test_a_map_of_the_input_survives_every_stage_of_randomisation(x):
    entry = keraslens.evaluate(_two_layers(), x, Echo(), ["randomisation"])["randomisation"]
    assert entry["layers"] == ["head", "conv"]
    np.testing.assert_allclose(entry["cascading"]["mean"], 1.0)
    np.testing.assert_allclose(entry["independent"]["mean"], 1.0)


def test_cascading_randomisation_of_saliency_falls_below_the_limit(x):
    model = _two_layers()
    before = [w.copy() for w in model.get_weights()]
    entry = keraslens.evaluate(model, x, "saliency", ["randomisation"])["randomisation"]
    assert len(entry["cascading"]["mean"]) == 2 and entry["mean"] < 0.5
    for kept, now in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(kept, now)


def test_full_randomisation_agrees_with_the_independent_sanity_check_of_vis(x):
    from keraslens.vis.sanity import randomization_test

    # Both permute each trainable tensor's entries with the same seeded shuffle.
    model = _two_layers()
    ours = keraslens.evaluate(model, x, "saliency", ["randomisation"], targets=2)
    theirs = randomization_test(model, x, "saliency", targets=2)  # the tf-keras-vis path
    np.testing.assert_allclose(ours["randomisation"]["per_sample"], theirs.correlation, atol=1e-6)


def test_flat_trained_maps_are_counted_and_fail(x):
    scores = keraslens.evaluate(constant((6, 6, 1)), x, "saliency", ["randomisation"])
    assert scores["randomisation"]["flat_maps"] == len(x)
