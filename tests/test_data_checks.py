"""data-checks: input scaling, collapsed predictions and BatchNorm mismatch, on planted cases."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keraslens


def _labels(result):
    return [f.label for f in result.plugins["data-checks"].result.findings]


def _run(model, x, labels=None):
    result = keraslens.analyze(model, x, plugins=["data-checks"], labels=labels)
    assert result.plugins["data-checks"].error is None
    return result


def _image_model(*front):
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            *front,
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )


@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(0).integers(0, 256, (64, 8, 8, 1)).astype(np.float32)


def test_data_scaled_to_0_1_before_a_rescaling_by_1_over_255_is_scaled_twice(pixels):
    model = _image_model(keras.layers.Rescaling(1 / 255))
    assert "inputs scaled twice" in _labels(_run(model, pixels / 255))


def test_raw_pixels_before_a_rescaling_layer_are_what_it_expects(pixels):
    model = _image_model(keras.layers.Rescaling(1 / 255))
    labels = _labels(_run(model, pixels))
    assert "inputs scaled twice" not in labels and "inputs look unscaled" not in labels


def test_raw_pixels_without_a_rescaling_layer_look_unscaled(pixels):
    assert "inputs look unscaled" in _labels(_run(_image_model(), pixels))


def test_data_in_0_1_without_a_rescaling_layer_is_fine(pixels):
    assert "inputs look unscaled" not in _labels(_run(_image_model(), pixels / 255))


def test_data_unlike_what_a_normalization_layer_was_adapted_to_is_flagged():
    x = np.random.default_rng(1).normal(5.0, 2.0, (64, 6)).astype(np.float32)
    norm = keras.layers.Normalization()
    norm.adapt(x)
    model = keras.Sequential([keras.Input((6,)), norm, keras.layers.Dense(3, activation="softmax")])
    assert "inputs scaled unlike training" in _labels(_run(model, x * 100))
    assert "inputs scaled unlike training" not in _labels(_run(model, x))


def _dense_head(bias):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, activation="softmax")])
    kernel, _ = model.layers[0].get_weights()
    model.layers[0].set_weights([kernel, np.asarray(bias, np.float32)])
    return model


def test_predictions_of_one_class_for_every_sample_have_collapsed():
    x = np.random.default_rng(2).normal(size=(64, 6)).astype(np.float32)
    result = _run(_dense_head([0.0, 50.0, 0.0]), x)
    (finding,) = [f for f in result.findings if f.label == "collapsed predictions"]
    assert finding.value == 1.0 and "class 1" in finding.message
    (entry,) = result.plugins["data-checks"].result.data["predictions"].values()
    assert entry["top_class"] == 1 and entry["classes_predicted"] == 1


def test_predictions_spread_over_classes_have_not_collapsed():
    x = np.random.default_rng(2).normal(size=(64, 6)).astype(np.float32)
    model = _dense_head([0.0, 0.0, 0.0])
    counts = np.bincount(model.predict(x, verbose=0).argmax(axis=1), minlength=3)
    assert counts.max() / 64 < 0.95  # the oracle: NumPy's own count of the predictions
    assert "collapsed predictions" not in _labels(_run(model, x))


def _batchnorm_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, name="dense"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Dense(3, activation="softmax", name="head"),
        ]
    )


def test_batchnorm_whose_moving_statistics_were_never_updated_is_named():
    # Inputs 100 times smaller than the initial moving variance of 1 allows: the layer's
    # outputs collapse (std about 0.01), as in a model trained with frozen BatchNorm.
    x = np.random.default_rng(3).normal(size=(128, 6)).astype(np.float32) * 0.01
    result = _run(_batchnorm_model(), x)
    (finding,) = [f for f in result.findings if f.label == "BatchNorm train/inference mismatch"]
    assert finding.layer == "bn" and "collapse" in finding.message
    ratio = result.plugins["data-checks"].result.data["batchnorm"]["bn"]["std_ratio"]
    dense = _batchnorm_model().get_layer("dense")(x).numpy()
    np.testing.assert_allclose(ratio, np.median(dense.std(axis=0)), rtol=1e-3)


def test_batchnorm_with_moving_statistics_of_the_data_is_fine():
    x = np.random.default_rng(3).normal(size=(128, 6)).astype(np.float32)
    model = _batchnorm_model()
    dense = model.get_layer("dense")(x).numpy()
    bn = model.get_layer("bn")
    gamma, beta, _, _ = bn.get_weights()
    bn.set_weights([gamma, beta, dense.mean(axis=0), dense.var(axis=0)])
    result = _run(model, x)
    assert "BatchNorm train/inference mismatch" not in _labels(result)
    entry = result.plugins["data-checks"].result.data["batchnorm"]["bn"]
    assert entry["std_ratio"] == pytest.approx(1.0, abs=0.01)
    assert entry["mean_shift"] == pytest.approx(0.0, abs=0.01)
