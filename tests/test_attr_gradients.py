"""The gradient methods of `keraslens.attribute`, each against an independent oracle."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.ndimage import zoom

import keraslens
from keraslens.attr import METHODS
from keraslens.attr.graph import score_graph
from keraslens.attr.inputs import model_inputs
from keraslens.errors import KeraslensError


def _softmax_cnn() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((8, 8, 2)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax", name="head"),
        ]
    )


def _logits(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """Pre-softmax scores, computed apart from the engine: every layer but the head's softmax."""
    hidden = keras.Sequential(model.layers[:-1])(x)
    head = model.layers[-1]
    return np.asarray(hidden @ head.kernel + head.bias)


@pytest.fixture
def images(rng) -> np.ndarray:
    return rng.uniform(0, 1, (6, 8, 8, 2)).astype("float32")


def test_integrated_gradients_are_complete_within_one_percent_at_256_steps(images):
    model = _softmax_cnn()
    targets = np.array([0, 1, 2, 0, 1, 2])
    ig = keraslens.attribute(model, images, "integrated-gradients", targets, steps=256)
    rows = np.arange(len(images))
    expected = _logits(model, images)[rows, targets] - _logits(model, 0 * images)[rows, targets]
    np.testing.assert_allclose(ig.reshape(len(images), -1).sum(1), expected, rtol=0.01, atol=1e-4)


def test_integrated_gradients_take_an_array_baseline(images):
    model = _softmax_cnn()
    baseline = np.full(images.shape[1:], 0.5, "float32")
    ig = keraslens.attribute(model, images, "integrated-gradients", 1, steps=256, baseline=baseline)
    expected = _logits(model, images)[:, 1] - _logits(model, images * 0 + 0.5)[:, 1]
    np.testing.assert_allclose(ig.reshape(len(images), -1).sum(1), expected, rtol=0.01, atol=1e-4)


def test_gradient_input_equals_a_hand_written_tape_gradient_times_the_input(images):
    model = _softmax_cnn()
    hidden, head = keras.Sequential(model.layers[:-1]), model.layers[-1]
    x = tf.constant(images)
    with tf.GradientTape() as tape:
        tape.watch(x)
        score = tf.reduce_sum((hidden(x) @ head.kernel + head.bias)[:, 2])
    expected = images * tape.gradient(score, x).numpy()
    result = keraslens.attribute(model, images, "gradient-input", targets=2)
    np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-6)


def test_saliency_is_the_gradient_magnitude_of_the_predicted_class(images):
    model = _softmax_cnn()
    predicted = _logits(model, images).argmax(1)
    signed = keraslens.attribute(model, images, "gradient-input", predicted) / images
    np.testing.assert_allclose(
        keraslens.attribute(model, images, "saliency"), np.abs(signed), rtol=1e-3, atol=1e-5
    )


def _relu_net() -> keras.Model:
    """x (3,) -> Dense relu (2) with hand-set weights -> Dense linear (1)."""
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(2, activation="relu"), keras.layers.Dense(1)]
    )
    model.layers[0].set_weights([np.array([[1.0, -1.0], [2.0, 1.0], [-1.0, 3.0]]), np.zeros(2)])
    model.layers[1].set_weights([np.array([[1.0], [-2.0]]), np.zeros(1)])
    return model


def test_guided_backprop_passes_positive_gradients_at_active_units_only():
    model = _relu_net()
    x = np.array([[1.0, 1.0, 1.0]], "float32")  # hidden pre-activations: 2 and 3, both active
    w1 = model.layers[0].get_weights()[0]
    upstream = np.array([1.0, -2.0])  # d score / d hidden
    guided = keraslens.attribute(model, x, "guided-backprop", targets=0)
    np.testing.assert_allclose(guided[0], w1 @ np.maximum(upstream, 0) * 1.0)
    x_off = np.array([[-1.0, 0.0, 0.0]], "float32")  # hidden: -1 (off) and 1 (on)
    guided_off = keraslens.attribute(model, x_off, "guided-backprop", targets=0)
    np.testing.assert_allclose(guided_off[0], np.zeros(3))  # unit 0 off, unit 1's gradient < 0


def test_deconvnet_ignores_the_forward_sign():
    model = _relu_net()
    x_off = np.array([[-1.0, 0.0, 0.0]], "float32")  # unit 0 inactive, still passes
    w1 = model.layers[0].get_weights()[0]
    result = keraslens.attribute(model, x_off, "deconvnet", targets=0)
    np.testing.assert_allclose(result[0], w1 @ np.array([1.0, 0.0]))


def test_guided_backprop_leaves_the_model_untouched():
    model = _relu_net()
    x = np.array([[-1.0, 0.5, 0.0]], "float32")
    keraslens.attribute(model, x, "guided-backprop", targets=0)
    assert keras.activations.serialize(model.layers[0].activation) == "relu"
    value = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(value)
        out = model(value)[:, 0]
    expected = tape.gradient(out, value).numpy() * x
    np.testing.assert_allclose(keraslens.attribute(model, x, "gradient-input", targets=0), expected)


def test_gradcam_equals_numpy_on_the_layer_activations_and_gradients(images):
    model = _softmax_cnn()
    conv, rest = model.layers[0], keras.Sequential(model.layers[1:-1])
    head = model.layers[-1]
    with tf.GradientTape() as tape:
        activation = conv(tf.constant(images))
        tape.watch(activation)
        score = tf.reduce_sum((rest(activation) @ head.kernel + head.bias)[:, 1])
    a, g = activation.numpy(), tape.gradient(score, activation).numpy()
    cam = np.maximum((g.mean(axis=(1, 2), keepdims=True) * a).sum(-1), 0)
    expected = zoom(cam, (1, 8 / 6, 8 / 6), order=1)[..., None]  # as tf-keras-vis resizes
    result = keraslens.attribute(model, images, "gradcam", targets=1, layer="conv")
    np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-6)


def test_token_ids_get_one_value_per_token_from_the_embedding():
    tokens = keras.Input((5,), dtype="int32")
    embedded = keras.layers.Embedding(7, 3, name="embed")(tokens)
    pooled = keras.layers.GlobalAveragePooling1D()(embedded)
    model = keras.Model(tokens, keras.layers.Dense(2)(pooled))
    x = np.array([[1, 2, 3, 4, 5], [6, 6, 1, 0, 2]])
    result = keraslens.attribute(model, x, "gradient-input", targets=0)
    table = model.get_layer("embed").get_weights()[0]
    w = model.layers[-1].get_weights()[0][:, 0]
    expected = (table[x] * w).sum(-1) / 5  # linear in the embedding: IG = grad x input
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-7)


def test_a_multi_input_model_is_explained_per_input_with_the_others_fixed():
    a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
    joined = keras.layers.Concatenate()([a, b])
    model = keras.Model([a, b], keras.layers.Dense(2, name="out")(joined))
    w = model.get_layer("out").get_weights()[0][:, 1]
    xa, xb = np.ones((2, 4), "float32"), 2 * np.ones((2, 3), "float32")
    result = keraslens.attribute(model, {"b": xb, "a": xa}, "gradient-input", targets=1)
    np.testing.assert_allclose(result["a"], xa * w[:4])
    np.testing.assert_allclose(result["b"], xb * w[4:])
    only_b = keraslens.attribute(model, [xa, xb], "saliency", targets=1, input="b")
    np.testing.assert_allclose(only_b, np.abs(np.broadcast_to(w[4:], (2, 3))))


def test_a_second_call_with_the_same_shapes_does_not_retrace(images):
    model = _softmax_cnn()
    keraslens.attribute(model, images, "smoothgrad", samples=4)
    specs, _ = model_inputs(model, images)
    graph = score_graph(model, specs, 0)
    traces = graph.compiled.gradient_fn.experimental_get_tracing_count()
    keraslens.attribute(model, images[:3], "smoothgrad", samples=4)
    keraslens.attribute(model, images, "integrated-gradients", steps=8)
    assert graph.compiled.gradient_fn.experimental_get_tracing_count() == traces


def test_every_relu_rule_runs_on_one_trace_and_the_chain_rule_is_the_plain_gradient(images):
    # A backbone nested with ReLU layers and fused ReLUs: the shared graph rewrites them
    # all, and under the chain rule its gradient is the one TensorFlow gives the model.
    keras.utils.set_random_seed(3)
    backbone = keras.Sequential(
        [
            keras.Input((8, 8, 2)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Conv2D(4, 3),
            keras.layers.ReLU(),
        ],
        name="backbone",
    )
    x = keras.Input((8, 8, 2))
    model = keras.Model(x, keras.layers.Dense(3)(keras.layers.Flatten()(backbone(x))))
    value = tf.constant(images)
    with tf.GradientTape() as tape:
        tape.watch(value)
        score = tf.reduce_sum(model(value)[:, 1])
    expected = tape.gradient(score, value).numpy()
    gradient = keraslens.attribute(model, images, "gradient-input", targets=1) / images
    np.testing.assert_allclose(gradient, expected, rtol=1e-4, atol=1e-6)
    guided = keraslens.attribute(model, images, "guided-backprop", targets=1)
    deconvnet = keraslens.attribute(model, images, "deconvnet", targets=1)
    assert not np.allclose(guided, expected) and not np.allclose(deconvnet, guided)
    graph = score_graph(model, model_inputs(model, images)[0], 0)
    assert graph.compiled.gradient_fn.experimental_get_tracing_count() == 1


def test_a_gradient_method_traces_no_forward_pass_of_its_own(images):
    model = _softmax_cnn()
    predicted = _logits(model, images).argmax(1)
    signed = keraslens.attribute(model, images, "gradient-input")  # targets: predicted
    np.testing.assert_allclose(
        signed, keraslens.attribute(model, images, "gradient-input", predicted), atol=1e-6
    )
    graph = score_graph(model, model_inputs(model, images)[0], 0)
    assert "logits_fn" not in vars(graph.compiled)  # the clean logits came from the gradient pass


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_on_nested_subclassed_and_multi_output_models(method, images):
    inner = keras.Sequential(
        [keras.Input((8, 8, 2)), keras.layers.Conv2D(4, 3, activation="relu", name="c")],
        name="backbone",
    )
    x = keras.Input((8, 8, 2))
    pooled = keras.layers.GlobalAveragePooling2D()(inner(x))
    nested = keras.Model(
        x, [keras.layers.Dense(3, name="p")(pooled), keras.layers.Dense(1)(pooled)]
    )
    result = keraslens.attribute(nested, images, method, output="p")
    assert result.shape[:3] == images.shape[:3] and np.isfinite(result).all()


def test_unknown_methods_and_options_are_named():
    model = _relu_net()
    x = np.ones((1, 3), "float32")
    with pytest.raises(KeraslensError, match="Unknown attribution method 'igg'"):
        keraslens.attribute(model, x, "igg")
    with pytest.raises(KeraslensError, match="no option 'step'.*steps"):
        keraslens.attribute(model, x, "integrated-gradients", step=3)
    with pytest.raises(KeraslensError, match="steps"):
        keraslens.attribute(model, x, "integrated-gradients", steps=0)


def _list_input_backbone_model() -> keras.Model:
    """A backbone built as keras.Model(seq.inputs, ...): its input is a list of one."""
    seq = keras.Sequential(
        [keras.Input((8, 8, 2)), keras.layers.Conv2D(4, 3, activation="relu", name="c")]
    )
    backbone = keras.Model(seq.inputs, seq.get_layer("c").output, name="backbone")
    x = keras.Input((8, 8, 2))
    pooled = keras.layers.GlobalAveragePooling2D()(backbone(x))
    return keras.Model(x, keras.layers.Dense(3)(pooled))


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv = keras.layers.Conv2D(4, 3, activation="relu")
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.head = keras.layers.Dense(3, activation="softmax")

    def call(self, x):
        return self.head(self.pool(self.conv(x)))


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize(
    "build", [_list_input_backbone_model, _Subclassed], ids=["list-backbone", "subclassed"]
)
def test_every_method_runs_on_list_input_backbones_and_subclassed_models(method, build, images):
    model = build()
    model(images[:1])
    result = keraslens.attribute(model, images, method)
    assert result.shape[:3] == images.shape[:3] and np.isfinite(result).all()
    assert keraslens.heatmap(model, images, method).shape == images.shape[:3]


def test_a_dataset_is_explained_like_its_arrays(images):
    model = _softmax_cnn()
    dataset = tf.data.Dataset.from_tensor_slices((images, np.arange(6) % 3)).batch(4)
    np.testing.assert_allclose(
        keraslens.attribute(model, dataset, "saliency"),
        keraslens.attribute(model, images, "saliency"),
        rtol=1e-5,
    )
