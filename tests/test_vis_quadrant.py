"""A planted answer: the class lives in the top-right quadrant, so the maps must too.

The same trained model checks the sanity measures: the randomisation test must tell its
maps from a weight-free method's, and deletion / insertion must rank Grad-CAM above noise.
"""

import keras
import numpy as np
import pytest

import keraslens
from keraslens.attr import AttributionMethod
from keraslens.vis import explain, heatmap
from keraslens.vis.sanity import SIMILARITY_THRESHOLD, randomization_test

pytestmark = pytest.mark.slow


def _stripes_in_top_right(count, rng):
    """Faint noise everywhere; the top-right quadrant holds stripes, vertical for class 1."""
    x = rng.normal(0, 0.05, (count, 16, 16, 1)).astype(np.float32)
    y = rng.integers(0, 2, count)
    for i in range(count):
        stripes = np.roll(np.arange(8) % 2, rng.integers(2)).astype(np.float32)
        x[i, :8, 8:, 0] = stripes[None, :] if y[i] else stripes[:, None]
    return x, y


@pytest.fixture(scope="module")
def planted():
    keras.utils.set_random_seed(0)
    x, y = _stripes_in_top_right(332, np.random.default_rng(0))
    model = keras.Sequential(
        [
            keras.Input((16, 16, 1)),
            keras.layers.Conv2D(8, 3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(8, 3, activation="relu", padding="same", name="conv2"),
            keras.layers.Flatten(),
            # Weight decay silences the positions that carry no information.
            keras.layers.Dense(
                2, activation="softmax", kernel_regularizer=keras.regularizers.L2(0.05)
            ),
        ]
    )
    model.compile(
        keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    model.fit(x[:300], y[:300], epochs=5, batch_size=32, verbose=0)
    assert model.evaluate(x[300:], y[300:], verbose=0)[1] == 1.0
    return model, x[300:], y[300:]


def _top_right_share(maps):
    return maps[:, :8, 8:].sum(axis=(1, 2)) / (maps.sum(axis=(1, 2)) + 1e-12)


@pytest.mark.parametrize("method", ["gradcam", "saliency"])
def test_most_of_the_map_lies_in_the_planted_quadrant(planted, method):
    model, x, y = planted
    share = _top_right_share(heatmap(model, x, method, targets=y))
    assert share.mean() > 0.6  # a map blind to location would put 0.25 there
    assert (share > 0.5).mean() >= 0.9


class InputIntensity(AttributionMethod):
    """A "method" that ignores the model: the randomisation test must reject it."""

    name = "input-intensity"
    title = "Input intensity"
    citation = "none"
    magnitude = True

    def attribute(self, scorer):
        return scorer.value


def test_randomisation_passes_gradcam_and_rejects_a_weight_free_map(planted):
    model, x, y = planted
    gradcam = randomization_test(model, x[:12], "gradcam", targets=y[:12], weights_seed=1)
    intensity = randomization_test(model, x[:12], InputIntensity(), targets=y[:12], weights_seed=1)
    assert gradcam.mean_correlation < SIMILARITY_THRESHOLD
    assert gradcam.passes()
    np.testing.assert_allclose(intensity.correlation, 1.0)
    assert not intensity.passes()


class Flat(InputIntensity):
    """A "method" whose maps highlight nothing."""

    def attribute(self, scorer):
        return np.zeros_like(scorer.value)


def test_flat_maps_cannot_pass(planted):
    model, x, y = planted
    flat = randomization_test(model, x[:3], Flat(), targets=y[:3])
    assert np.isnan(flat.correlation).all()
    assert not flat.informative and not flat.passes()


def test_randomised_copy_explains_the_same_targets_with_other_maps(planted):
    model, x, y = planted
    result = randomization_test(model, x[:4], "gradcam", targets=y[:4])
    np.testing.assert_array_equal(result.randomized.targets, y[:4])
    assert not np.allclose(result.randomized.maps, result.trained.maps)


def test_gradcam_beats_random_maps_on_deletion_and_insertion(planted):
    model, x, y = planted
    gradcam = explain(model, x[:12], "gradcam", targets=y[:12]).maps
    noise = np.random.default_rng(3).random(gradcam.shape)
    metrics = ["deletion", "insertion"]
    ours = keraslens.evaluate(model, x[:12], gradcam, metrics, y[:12])
    chance = keraslens.evaluate(model, x[:12], noise, metrics, y[:12])
    assert ours["deletion"]["mean"] < chance["deletion"]["mean"] - 0.1
    assert ours["insertion"]["mean"] > chance["insertion"]["mean"] + 0.1


def test_deletion_of_everything_ends_at_the_blank_image_score(planted):
    model, x, y = planted
    maps = heatmap(model, x[:3], "gradcam", targets=y[:3])
    probability = model.predict(np.zeros_like(x[:3]), verbose=0)[np.arange(3), y[:3]]
    full = model.predict(x[:3], verbose=0)[np.arange(3), y[:3]]
    one_step = keraslens.evaluate(model, x[:3], maps, {"deletion": {"steps": 1}}, y[:3])
    np.testing.assert_allclose(
        one_step["deletion"]["per_sample"], (full + probability) / 2, rtol=1e-5
    )
