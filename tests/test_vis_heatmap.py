"""heatmap(): the same maps as tf-keras-vis used directly, and clear errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from tf_keras_vis.gradcam import Gradcam
from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
from tf_keras_vis.layercam import Layercam
from tf_keras_vis.saliency import Saliency
from tf_keras_vis.scorecam import Scorecam
from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
from tf_keras_vis.utils.scores import CategoricalScore

from keraslens.errors import KeraslensError
from keraslens.vis import explain, heatmap

TARGETS = np.array([0, 1, 2, 1])


@pytest.fixture(scope="module")
def functional():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(8, 3, activation="relu", name="conv1")(inputs)
    h = keras.layers.Conv2D(8, 3, activation="relu", name="conv2")(h)
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(h)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((4, 16, 16, 3), dtype=np.float32)


def _direct(visualizer, model, images, **kwargs):
    """tf-keras-vis on its own, the way its docs recommend: a linear head, a named layer."""
    vis = visualizer(model, model_modifier=ReplaceToLinear(), clone=True)
    return vis(CategoricalScore(TARGETS.tolist()), images, **kwargs)


@pytest.mark.parametrize(
    ("method", "visualizer", "options", "direct_options"),
    [
        ("gradcam", Gradcam, {}, {"penultimate_layer": "conv2"}),
        ("gradcam++", GradcamPlusPlus, {}, {"penultimate_layer": "conv2"}),
        ("layercam", Layercam, {}, {"penultimate_layer": "conv2"}),
        ("scorecam", Scorecam, {}, {"penultimate_layer": "conv2"}),
        ("saliency", Saliency, {}, {}),
    ],
)
def test_maps_equal_tf_keras_vis_used_directly(
    functional, images, method, visualizer, options, direct_options
):
    ours = heatmap(functional, images, method, targets=TARGETS, layer="conv2", **options)
    expected = _direct(visualizer, functional, images, **direct_options)
    # tf-keras-vis adds 1e-7 to (max - min) when it normalises; keraslens does not.
    np.testing.assert_allclose(ours, expected, rtol=1e-3, atol=1e-4)


def test_faster_scorecam_equals_tf_keras_vis_max_n_sample_by_sample(functional, images):
    # tf-keras-vis keeps the union of every sample's top channels; keraslens each sample's
    # own, so that a map does not depend on the rest of its batch. One sample: the same.
    for i in range(len(images)):
        ours = heatmap(functional, images[i : i + 1], "faster-scorecam", TARGETS[i], max_channels=4)
        vis = Scorecam(functional, model_modifier=ReplaceToLinear(), clone=True)
        expected = vis(
            CategoricalScore([int(TARGETS[i])]),
            images[i : i + 1],
            penultimate_layer="conv2",
            max_N=4,
        )
        np.testing.assert_allclose(ours, expected, rtol=1e-3, atol=1e-4)


def test_smoothgrad_is_the_magnitude_of_the_mean_gradient_of_noisy_copies(functional, images):
    ours = heatmap(functional, images, "smoothgrad", targets=TARGETS, samples=4, seed=7)
    x = images.reshape(4, -1)
    sigma = 0.2 * (x.max(1) - x.min(1))
    noise = np.random.default_rng(7).standard_normal((4, 4, 16, 16, 3), np.float32)
    noisy = images[:, None] + sigma[:, None, None, None, None] * noise
    head = functional.get_layer("head")
    hidden = keras.Model(functional.inputs, functional.get_layer("pool").output)
    value = tf.constant(noisy.reshape(-1, 16, 16, 3))
    with tf.GradientTape() as tape:
        tape.watch(value)
        logits = hidden(value) @ head.kernel + head.bias
        score = tf.reduce_sum(tf.gather(logits, np.repeat(TARGETS, 4)[:, None], batch_dims=1))
    grads = tape.gradient(score, value).numpy().reshape(4, 4, 16, 16, 3).mean(1)
    expected = np.abs(grads).max(-1)
    low, high = expected.min((1, 2), keepdims=True), expected.max((1, 2), keepdims=True)
    np.testing.assert_allclose(ours, (expected - low) / (high - low), rtol=1e-3, atol=1e-4)


def test_smoothgrad_leaves_the_global_numpy_stream_alone(functional, images):
    np.random.seed(3)
    expected = np.random.random()
    np.random.seed(3)
    heatmap(functional, images, "smoothgrad", samples=2, seed=11)
    assert np.random.random() == expected


def test_maps_are_per_sample_normalised_images(functional, images):
    maps = heatmap(functional, images)
    assert maps.shape == (4, 16, 16)
    np.testing.assert_allclose(maps.max(axis=(1, 2)), 1.0, atol=1e-3)
    np.testing.assert_allclose(maps.min(axis=(1, 2)), 0.0, atol=1e-6)


def test_default_layer_is_the_last_spatial_one(functional, images):
    np.testing.assert_array_equal(
        heatmap(functional, images, targets=TARGETS),
        heatmap(functional, images, targets=TARGETS, layer="conv2"),
    )


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "faster-scorecam", "smoothgrad"])
def test_prediction_comes_with_the_map(functional, images, method):
    # Score-CAM reads it from clean rows riding along its masked inputs' pass.
    probabilities = functional.predict(images, verbose=0)
    result = explain(functional, images, method)
    np.testing.assert_array_equal(result.predicted, probabilities.argmax(axis=1))
    np.testing.assert_array_equal(result.targets, result.predicted)
    np.testing.assert_allclose(result.scores, probabilities.max(axis=1), rtol=1e-5)
    by_class = heatmap(functional, images, method, targets=result.predicted)
    np.testing.assert_allclose(result.maps, by_class, atol=1e-5)


def test_one_hot_labels_and_a_single_index_are_targets(functional, images):
    one_hot = np.eye(3)[TARGETS]
    np.testing.assert_array_equal(explain(functional, images, targets=one_hot).targets, TARGETS)
    np.testing.assert_array_equal(explain(functional, images, targets=2).targets, [2, 2, 2, 2])


def test_batches_give_the_same_maps_as_one_pass(functional, images):
    np.testing.assert_allclose(
        heatmap(functional, images, "gradcam++", batch_size=3),
        heatmap(functional, images, "gradcam++"),
        atol=1e-6,
    )


def test_multi_output_model_explains_the_chosen_output(images):
    keras.utils.set_random_seed(2)
    inputs = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(6, 3, activation="relu", name="conv")(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    kind = keras.layers.Dense(3, activation="softmax", name="kind")(h)
    colour = keras.layers.Dense(2, activation="softmax", name="colour")(h)
    model = keras.Model(inputs, [kind, colour])
    alone = keras.Model(inputs, colour)
    expected = Gradcam(alone, model_modifier=ReplaceToLinear(), clone=True)(
        CategoricalScore([1, 0, 1, 0]), images, penultimate_layer="conv"
    )
    for output in ("colour", 1):
        maps = heatmap(model, images, targets=[1, 0, 1, 0], output=output)
        np.testing.assert_allclose(maps, expected, rtol=1e-3, atol=1e-4)
    with pytest.raises(KeraslensError, match="2 outputs"):
        heatmap(model, images)
    with pytest.raises(KeraslensError, match="no output 'size'"):
        heatmap(model, images, output="size")


def test_dense_only_model_has_saliency_but_no_cam():
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [keras.Input((10,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)]
    )
    x = np.random.default_rng(1).random((5, 10), dtype=np.float32)
    assert heatmap(model, x, "saliency").shape == (5, 10)
    with pytest.raises(KeraslensError, match="has none; use method='saliency'"):
        heatmap(model, x, "gradcam")


def test_sequence_model_saliency_is_one_value_per_step():
    keras.utils.set_random_seed(4)
    model = keras.Sequential(
        [
            keras.Input((12, 4)),
            keras.layers.Conv1D(6, 3, activation="relu"),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    x = np.random.default_rng(2).random((3, 12, 4), dtype=np.float32)
    assert heatmap(model, x, "saliency").shape == (3, 12)
    cam = heatmap(model, x, "gradcam")  # at the Conv1D's 10 steps, resized to 12
    assert cam.shape == (3, 12) and np.isfinite(cam).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "gradcamm"}, "Unknown heatmap method 'gradcamm'; choose one of: gradcam"),
        ({"layer": "conv9"}, "no 'conv9' in model"),
        ({"layer": "pool"}, r"layer 'pool' outputs \(None, 8\); use layer='conv2'"),
        ({"layer": "conv2/kernel"}, "not a model"),
        ({"method": "scorecam", "samples": 3}, "Score-CAM has no option 'samples'"),
        ({"targets": [0, 1]}, r"4 class indices"),
        ({"targets": 3}, r"in \[0, 2\]"),
    ],
)
def test_bad_arguments_name_the_problem_and_the_fix(functional, images, kwargs, message):
    with pytest.raises(ValueError, match=message):
        heatmap(functional, images, **kwargs)


def test_wrong_input_shape_is_rejected(functional, images):
    with pytest.raises(ValueError, match=r"takes batches of shape \(N, 16, 16, 3\)"):
        heatmap(functional, images[..., :1])
    with pytest.raises(ValueError, match=r"x\[None\]"):
        heatmap(functional, images[0])
