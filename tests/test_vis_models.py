"""The models people bring: Sequential and subclassed with a softmax head, nested backbones."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.ndimage import zoom
from tf_keras_vis.gradcam import Gradcam
from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
from tf_keras_vis.utils.scores import CategoricalScore

from keraslens.attr.compat import build_graph
from keraslens.attr.layers import last_spatial_layer
from keraslens.errors import KeraslensError
from keraslens.vis import heatmap, maximize

TARGETS = [2, 0, 1]


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(5).random((3, 12, 12, 3), dtype=np.float32)


def _layers():
    keras.utils.set_random_seed(6)
    return (
        keras.layers.Conv2D(5, 3, activation="relu", name="conv"),
        keras.layers.GlobalAveragePooling2D(name="pool"),
        keras.layers.Dense(3, activation="softmax", name="head"),
    )


class Classifier(keras.Model):
    """A subclassed model: no `inputs`, no `outputs`, softmax inside `call`."""

    def __init__(self):
        super().__init__()
        self.conv, self.pool, self.head = _layers()

    def call(self, x):
        return self.head(self.pool(self.conv(x)))


class Opaque(Classifier):
    """A subclassed model with a raw TensorFlow op in `call`: it cannot be traced."""

    def call(self, x):
        return self.head(tf.reduce_mean(self.conv(x), axis=(1, 2)))


def _functional_twin(conv, pool, head):
    """The same layers (same weights) as a Functional model: the oracle's input."""
    inputs = keras.Input((12, 12, 3))
    return keras.Model(inputs, head(pool(conv(inputs))))


def _logits_by_hand(conv, head, x):
    features = np.asarray(conv(x)).mean(axis=(1, 2))
    kernel, bias = head.get_weights()
    return features @ kernel + bias


@pytest.fixture(scope="module")
def sequential(images):
    layers = _layers()
    model = keras.Sequential(list(layers))
    model(images)
    return model, layers


@pytest.fixture(scope="module")
def subclassed(images):
    model = Classifier()
    model(images)
    return model, (model.conv, model.pool, model.head)


def test_tf_keras_vis_linear_head_fails_on_keras3_sequential(sequential):
    # The reason keraslens has its own linear-score path (keep: it documents the gap).
    with pytest.raises(AttributeError, match="output_names"):
        Gradcam(sequential[0], model_modifier=ReplaceToLinear(), clone=False)


@pytest.mark.parametrize("kind", ["sequential", "subclassed"])
def test_score_is_the_pre_softmax_logit(request, images, kind):
    model, (conv, _, head) = request.getfixturevalue(kind)
    graph = build_graph(model, images.shape[1:])
    logits = np.asarray(graph.score_model()([images]))
    np.testing.assert_allclose(logits, _logits_by_hand(conv, head, images), rtol=1e-5)
    np.testing.assert_allclose(graph.to_probability(logits), model(images), rtol=1e-5)


@pytest.mark.parametrize("kind", ["sequential", "subclassed"])
def test_gradcam_equals_tf_keras_vis_on_the_functional_twin(request, images, kind):
    model, layers = request.getfixturevalue(kind)
    expected = Gradcam(_functional_twin(*layers), model_modifier=ReplaceToLinear(), clone=True)(
        CategoricalScore(TARGETS), images, penultimate_layer="conv"
    )
    np.testing.assert_allclose(
        heatmap(model, images, targets=TARGETS), expected, rtol=1e-3, atol=1e-4
    )


def test_user_model_is_left_untouched(sequential, images):
    sequential, _ = sequential
    before = np.asarray(sequential(images))
    heatmap(sequential, images, "saliency")
    assert sequential.layers[-1].activation is keras.activations.softmax
    np.testing.assert_array_equal(sequential(images), before)


def test_untraceable_subclassed_model_still_gets_saliency(images):
    model = Opaque()
    model(images)
    assert heatmap(model, images, "saliency").shape == (3, 12, 12)
    with pytest.raises(KeraslensError, match="use method='saliency'"):
        heatmap(model, images, "gradcam")


def test_layer_names_that_keras_would_pick_itself_do_not_clash(images):
    keras.utils.set_random_seed(9)
    model = keras.Sequential(
        [
            keras.Input((12, 12, 3)),
            keras.layers.Conv2D(4, 3, name="identity"),
            keras.layers.Flatten(name="rescaling"),
            keras.layers.Dense(3, activation="softmax", name="dense"),
        ]
    )
    assert heatmap(model, images, "gradcam").shape == (3, 12, 12)
    assert maximize(model, "identity", [0], steps=1).inputs.shape == (1, 12, 12, 3)


# --- a backbone nested as one layer (tf-keras-vis issue #63) --------------------------------


@pytest.fixture(scope="module")
def transfer():
    keras.utils.set_random_seed(7)
    backbone = keras.applications.MobileNetV2(
        weights=None, include_top=False, input_shape=(96, 96, 3)
    )
    inputs = keras.Input((96, 96, 3))
    features = keras.layers.GlobalAveragePooling2D()(backbone(inputs))
    outputs = keras.layers.Dense(4, activation="softmax", name="head")(features)
    return keras.Model(inputs, outputs), backbone


@pytest.fixture(scope="module")
def photos():
    return np.random.default_rng(8).uniform(-1, 1, (2, 96, 96, 3)).astype(np.float32)


def _gradcam_by_hand(features, head, x, targets):
    """Grad-CAM written out: weights = mean gradient of the logit over positions."""
    with tf.GradientTape() as tape:
        activation = features(x)
        tape.watch(activation)
        logits = head(activation)
        score = tf.gather(logits, targets, batch_dims=1)
    grads = tape.gradient(score, activation)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = np.maximum(np.sum(activation * weights, axis=-1), 0)
    cam = zoom(cam, (1, x.shape[1] / cam.shape[1], x.shape[2] / cam.shape[2]), order=1)
    low = cam.min(axis=(1, 2), keepdims=True)
    high = cam.max(axis=(1, 2), keepdims=True)
    # Exact: random MobileNetV2 activations are ~1e-11, where an epsilon would be the map.
    return (cam - low) / np.where(high > low, high - low, 1.0)


def _logits(model, pooled):
    kernel, bias = model.get_layer("head").get_weights()
    return tf.matmul(tf.reduce_mean(pooled, axis=(1, 2)), kernel) + bias


def test_tf_keras_vis_alone_cannot_reach_into_the_backbone(transfer, photos):
    model, backbone = transfer
    with pytest.raises(ValueError, match="not connected"):
        Gradcam(model, clone=False)(CategoricalScore([0, 1]), photos)


def test_auto_layer_inside_backbone_equals_handwritten_gradcam(transfer, photos):
    model, backbone = transfer
    assert last_spatial_layer(model, (96, 96, 3)) == "mobilenetv2_1.00_96/out_relu"
    targets = np.array([1, 3])
    expected = _gradcam_by_hand(backbone, lambda a: _logits(model, a), photos, targets)
    np.testing.assert_allclose(
        heatmap(model, photos, targets=targets), expected, rtol=1e-3, atol=1e-4
    )


def test_layer_named_by_path_equals_handwritten_gradcam(transfer, photos):
    model, backbone = transfer
    assert backbone.name == "mobilenetv2_1.00_96"
    conv = keras.Model(backbone.input, backbone.get_layer("Conv_1").output)

    def rest(activation):
        bn = backbone.get_layer("Conv_1_bn")(activation, training=False)
        return _logits(model, backbone.get_layer("out_relu")(bn))

    targets = np.array([0, 2])
    expected = _gradcam_by_hand(conv, rest, photos, targets)
    maps = heatmap(model, photos, targets=targets, layer="mobilenetv2_1.00_96/Conv_1")
    np.testing.assert_allclose(maps, expected, rtol=1e-3, atol=1e-4)


def test_unknown_layer_in_backbone_lists_what_is_there(transfer, photos):
    model, _ = transfer
    with pytest.raises(KeraslensError, match="no 'Conv_9' inside 'mobilenetv2_1.00_96'.*Conv_1"):
        heatmap(model, photos, layer="mobilenetv2_1.00_96/Conv_9")
