"""maximize(): synthesised inputs beat every natural sample of a trained digits model."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

import keraslens
from keraslens.attr.layers import last_spatial_layer
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


def _conv1_means(model, x):
    """Oracle: conv1's filters averaged over positions, from a plain Keras sub-model."""
    conv1 = keras.Model(model.inputs[0], model.get_layer("conv1").output)
    return np.asarray(conv1(x)).mean(axis=(1, 2))


def _logits(model, x):
    """Oracle: the head's pre-softmax scores in NumPy, from conv2's output and its weights."""
    conv2 = keras.Model(model.inputs[0], model.get_layer("conv2").output)
    kernel, bias = model.get_layer("head").get_weights()
    return np.asarray(conv2(x)).reshape(len(x), -1) @ kernel + bias


def test_reached_activation_is_that_of_the_returned_input(digits):
    model, x = digits
    result = maximize(model, "conv1", [3], steps=5, seed=0)
    np.testing.assert_allclose(
        result.activations[0], _conv1_means(model, result.inputs)[0, 3], rtol=1e-5
    )
    np.testing.assert_allclose(
        unit_activations(model, "conv1", x[:50]), _conv1_means(model, x[:50]), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        unit_activations(model, None, x[:50]), _logits(model, x[:50]), rtol=1e-4, atol=1e-4
    )


def test_weights_changed_after_a_call_are_the_ones_maximised(digits):
    # The compiled step reads the model's weights at every call: a model trained (here:
    # given a new head) after a first call is maximised as it is now, not as it was.
    model, x = digits
    head = model.get_layer("head")
    kept = head.get_weights()
    maximize(model, None, [2], steps=2, seed=0)
    try:
        head.set_weights([-kept[0], kept[1] + 1.0])
        result = maximize(model, None, [2], steps=3, seed=0)
        np.testing.assert_allclose(
            result.activations, _logits(model, result.inputs)[:, 2], rtol=1e-4, atol=1e-4
        )
        np.testing.assert_allclose(
            unit_activations(model, None, x[:20]), _logits(model, x[:20]), rtol=1e-4, atol=1e-4
        )
    finally:
        head.set_weights(kept)


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


def test_auto_steps_fall_as_one_over_sqrt_of_the_parameters():
    from plugins.activation_maximization import auto_steps

    assert auto_steps(6_000) == 100
    assert auto_steps(1_000_000) == 100
    assert auto_steps(4_000_000) == 50  # 100 * sqrt(1/4)
    assert auto_steps(25_600_000) == 20  # ResNet50: 100 / 5.06 = 19.8, floored at 20


@pytest.mark.parametrize("shape", [(3, 6, 5, 2), (3, 7, 4), (3, 5)])
def test_the_penalty_gradient_is_that_of_the_penalties(shape):
    # Oracle: TensorFlow's autodiff of the penalties written out (L2 as the root mean
    # square, total variation as the mean absolute difference of neighbours per axis).
    from keraslens.vis.maximize import _penalty_gradient

    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    positions = tuple(range(1, len(shape) - 1))
    value = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(value)
        every = list(range(1, len(shape)))
        penalty = 0.3 * tf.sqrt(tf.reduce_mean(tf.square(value), axis=every))
        for axis in positions:
            ahead = tf.gather(value, tf.range(1, shape[axis]), axis=axis)
            behind = tf.gather(value, tf.range(0, shape[axis] - 1), axis=axis)
            penalty += 2.0 * tf.reduce_mean(tf.abs(ahead - behind), axis=every)
        total = tf.reduce_sum(penalty)
    expected = tape.gradient(total, value).numpy()
    np.testing.assert_allclose(
        _penalty_gradient(x, 0.3, 2.0, positions), expected, rtol=1e-5, atol=1e-7
    )


def test_a_second_call_neither_rebuilds_nor_retraces_and_heatmaps_share_the_trace(digits):
    from keraslens.vis.maximize import _graph

    model, x = digits
    maximize(model, "conv2", [0, 1], steps=2, seed=0)
    maximize(model, "conv2", [0, 1, 2, 3, 4], steps=3, seed=1, learning_rate=0.1)
    maximize(model, None, [3], steps=2, seed=0)  # classes: on the default layer's graph
    graph = _graph(model, "conv2", (8, 8, 1), None)
    assert graph.compiled is _graph(model, None, (8, 8, 1), None).compiled
    assert graph.compiled.gradient_fn.experimental_get_tracing_count() == 1
    keraslens.attribute(model, x[:4], "gradcam")  # the heatmaps' default layer: conv2
    keraslens.attribute(model, x[:4], "saliency")
    assert graph.compiled.gradient_fn.experimental_get_tracing_count() == 1


def test_all_units_are_one_batch_each_unit_its_own_input(digits):
    # The same unit twice in one batch from one seed gets different starts, and each
    # input is scored only for its own unit: maximising [3, 3] equals maximising 3 alone
    # for the first input.
    model, _ = digits
    pair = maximize(model, None, [3, 3], steps=5, seed=0)
    alone = maximize(model, None, [3], steps=5, seed=0)
    np.testing.assert_allclose(pair.inputs[0], alone.inputs[0], atol=1e-5)
    assert not np.allclose(pair.inputs[0], pair.inputs[1])


def test_units_and_classes_together_equal_each_maximised_alone(digits):
    from keraslens.vis.maximize import maximize_with_classes

    model, _ = digits
    units, classes = maximize_with_classes(model, "conv2", [1, 4], [0, 7], steps=6, seed=3)
    for together, alone in (
        (units, maximize(model, "conv2", [1, 4], steps=6, seed=3)),
        (classes, maximize(model, None, [0, 7], steps=6, seed=3)),
    ):
        np.testing.assert_allclose(together.inputs, alone.inputs, atol=1e-4)
        np.testing.assert_allclose(together.activations, alone.activations, rtol=1e-4, atol=1e-5)


def _two_output_model():
    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(x)
    h = keras.layers.GlobalAveragePooling2D()(h)
    a = keras.layers.Dense(3, activation="softmax", name="digit")(h)
    b = keras.layers.Dense(2, activation="softmax", name="parity")(h)
    return keras.Model(x, [a, b])


def test_a_multi_output_model_gets_each_output_explained_not_an_error():
    x = np.random.default_rng(0).random((16, 8, 8, 1), dtype=np.float32)
    result = keraslens.analyze(
        _two_output_model(),
        x,
        plugins=["activation-maximization"],
        options={"activation-maximization": {"steps": 3}},
    )
    run = result.plugins["activation-maximization"]
    assert run.error is None and result.status != "error"
    layers = run.result.data["layers"]
    assert layers["classes of output digit"]["units"] == [0, 1, 2]
    assert layers["classes of output parity"]["units"] == [0, 1]
    assert "conv" in layers


def test_the_output_option_explains_only_the_named_output():
    x = np.random.default_rng(0).random((16, 8, 8, 1), dtype=np.float32)
    result = keraslens.analyze(
        _two_output_model(),
        x,
        plugins=["activation-maximization"],
        options={"activation-maximization": {"steps": 2, "output": "parity"}},
    )
    layers = result.plugins["activation-maximization"].result.data["layers"]
    assert [k for k in layers if k.startswith("classes")] == ["classes of output parity"]


def test_the_default_layer_is_the_heatmaps_default_and_the_steps_are_reported():
    from keraslens.attr.layers import last_spatial_layer
    from plugins.activation_maximization import FULL_STEPS

    model = _two_output_model()
    x = np.random.default_rng(0).random((16, 8, 8, 1), dtype=np.float32)
    result = keraslens.analyze(model, x, plugins=["activation-maximization"])
    data = result.plugins["activation-maximization"].result.data
    assert last_spatial_layer(model, (8, 8, 1)) in data["layers"]
    assert data["chosen"]["steps"]["value"] == FULL_STEPS  # a model of 65 parameters
    settings = result.plugins["activation-maximization"].result.tables[1]
    assert settings.rows[0][:2] == ["steps", FULL_STEPS]


def test_a_time_series_model_is_maximised_over_its_sequence_quickly():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((24, 3)),
            keras.layers.Conv1D(8, 3, activation="relu"),
            keras.layers.GRU(6, name="gru"),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    x = np.random.default_rng(0).normal(size=(32, 24, 3)).astype(np.float32)
    result = keraslens.analyze(model, x, plugins=["activation-maximization"])
    run = result.plugins["activation-maximization"]
    assert run.error is None
    # The heatmaps' default layer: the Conv1D, the last with positions (steps).
    assert last_spatial_layer(model, (24, 3)) in run.result.data["layers"]
    assert run.seconds < 60  # 86 s with the eager loop of tf-keras-vis
