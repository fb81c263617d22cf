"""LensCallback on a frozen backbone: the frozen part's statistics are reused, and equal
to a full capture of the trained model."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keraslens import Lens
from keraslens.callback import LensCallback
from keraslens.training.fixed import FixedPart

FIGURES = ("count", "mean", "std", "min", "max", "firing_rate")


def transfer_model(frozen: bool = True) -> keras.Model:
    """A small conv backbone (BatchNorm included) under a new dense head."""
    keras.utils.set_random_seed(0)
    backbone = keras.Sequential(
        [
            keras.Input((12, 12, 3)),
            keras.layers.Conv2D(8, 3, name="conv"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.ReLU(name="relu"),
            keras.layers.Conv2D(8, 3, activation="relu", name="conv2"),
        ],
        name="backbone",
    )
    backbone.trainable = not frozen
    inputs = keras.Input((12, 12, 3))
    features = keras.layers.GlobalAveragePooling2D(name="pool")(backbone(inputs, training=False))
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(features)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="out")(hidden))
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    return model


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 12, 12, 3)).astype("float32")
    return x, rng.integers(0, 3, size=96)


def assert_same_stats(got, expected):
    assert list(got) == list(expected)
    for key, stats in expected.items():
        for figure in FIGURES:
            np.testing.assert_allclose(
                getattr(got[key], figure), getattr(stats, figure), rtol=1e-4, atol=1e-5
            )


def test_frozen_backbone_is_captured_once_and_matches_a_full_capture_after_training(data, tmp_path):
    x, y = data
    model = transfer_model()
    callback = LensCallback(x[:64], out_dir=tmp_path, report=None, verbose=0)
    model.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[callback])
    fixed = callback._fixed
    assert fixed is not None and fixed.full_captures == 1
    frozen = {"backbone/conv", "backbone/bn", "backbone/relu", "backbone/conv2", "pool"}
    assert set(fixed.fixed_keys) == frozen
    # The head trained (its statistics moved); the oracle is a fresh Lens on the trained model.
    assert_same_stats(callback.result.stats, Lens(model).capture(x[:64]))
    epochs = {row["epoch"] for row in callback.history if row["layer"] == "hidden"}
    assert epochs == {0, 1, 2, 3}


def test_a_changed_frozen_weight_means_a_full_capture_again(data):
    x, _ = data
    model = transfer_model()
    lens = Lens(model)
    fixed = FixedPart.find(lens, x)
    fixed.capture(x, 32)
    fixed.capture(x, 32)
    assert fixed.full_captures == 1
    kernel = model.get_layer("backbone").get_layer("conv").kernel
    kernel.assign(kernel.numpy() * 2)  # e.g. weights loaded between fits
    stats = fixed.capture(x, 32)
    assert fixed.full_captures == 2
    assert_same_stats(stats, Lens(model).capture(x, 32))


def test_outputs_from_the_handed_over_values_equal_predict(data):
    x, _ = data
    model = transfer_model()
    fixed = FixedPart.find(Lens(model), x)
    fixed.capture(x, 32)
    np.testing.assert_allclose(fixed.outputs(x[:10]), model.predict(x[:10], verbose=0), rtol=1e-5)


def test_nothing_is_reused_when_every_layer_trains_or_the_probe_is_a_dataset(data):
    import tensorflow as tf

    x, _ = data
    assert FixedPart.find(Lens(transfer_model(frozen=False)), x) is None
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(32)
    assert FixedPart.find(Lens(transfer_model()), dataset) is None


def test_a_changed_weight_of_a_layer_not_captured_still_means_a_full_capture(data):
    x, _ = data
    model = transfer_model()
    chosen = ["backbone/conv2", "hidden", "out"]
    fixed = FixedPart.find(Lens(model, chosen), x)
    fixed.capture(x, 32)
    kernel = model.get_layer("backbone").get_layer("conv").kernel  # shapes the handover
    kernel.assign(-kernel.numpy())
    stats = fixed.capture(x, 32)
    assert fixed.full_captures == 2
    assert_same_stats(stats, Lens(model, chosen).capture(x, 32))


def test_an_input_read_by_a_trained_layer_is_handed_over_beside_the_frozen_branch():
    rng = np.random.default_rng(1)
    frozen_in, trained_in = keras.Input((4,), name="a"), keras.Input((3,), name="b")
    frozen = keras.layers.Dense(5, name="frozen", trainable=False)(frozen_in)
    trained = keras.layers.Dense(5, name="trained")(trained_in)
    joined = keras.layers.Concatenate(name="join")([frozen, trained])
    model = keras.Model([frozen_in, trained_in], keras.layers.Dense(2, name="out")(joined))
    x = [rng.normal(size=(40, 4)).astype("float32"), rng.normal(size=(40, 3)).astype("float32")]
    fixed = FixedPart.find(Lens(model), x)
    assert fixed.fixed_keys == ["frozen"]
    fixed.capture(x, 16)
    model.get_layer("trained").kernel.assign(np.ones((3, 5), "float32"))  # as training would
    assert_same_stats(fixed.capture(x, 16), Lens(model).capture(x, 16))
    assert fixed.full_captures == 1
