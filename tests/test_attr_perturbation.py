"""The perturbation methods of `keraslens.attribute`, each against an independent oracle."""

from __future__ import annotations

from itertools import combinations
from math import factorial

import keras
import numpy as np
import pytest

import keraslens
from keraslens.attr.rise import rise_masks
from keraslens.attr.segments import grid_segments
from keraslens.errors import KeraslensError

PERTURBATION = ["occlusion", "rise", "kernelshap", "lime", "sobol", "hsic"]
FAST = {
    "occlusion": {"patch": 2},
    "rise": {"masks": 64, "grid": 2},
    "kernelshap": {"samples": 64, "segments": 2},
    "lime": {"samples": 64, "segments": 2},
    "sobol": {"grid_size": 2, "nb_design": 8},
    "hsic": {"grid_size": 2, "nb_design": 64},
}


def _mlp(shape: tuple, hidden: int | None = 4) -> keras.Model:
    """Flatten -> [Dense relu] -> Dense(3, softmax): logits computable in NumPy."""
    layers = [keras.Input(shape), keras.layers.Flatten()]
    if hidden:
        layers.append(keras.layers.Dense(hidden, activation="relu"))
    layers.append(keras.layers.Dense(3, activation="softmax"))
    return keras.Sequential(layers)


def _numpy_logits(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """The pre-softmax scores of an `_mlp`, in NumPy."""
    out = x.reshape(len(x), -1).astype(np.float64)
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    for layer in dense:
        kernel, bias = layer.get_weights()
        out = out @ kernel + bias
        if layer is not dense[-1]:
            out = np.maximum(out, 0.0)
    return out


@pytest.fixture
def images(rng) -> np.ndarray:
    return rng.uniform(0, 1, (3, 6, 6, 2)).astype("float32")


@pytest.mark.parametrize("value", [0.25, "mean"])
def test_occlusion_equals_a_brute_force_loop_over_patches(images, value):
    model = _mlp((6, 6, 2))
    fill = images.mean(axis=(1, 2), keepdims=True) if value == "mean" else value
    targets = np.array([0, 1, 2])
    rows = np.arange(len(images))
    clean = _numpy_logits(model, images)[rows, targets]
    expected = np.zeros(images.shape)
    for top in (0, 3, 4):  # every 3 positions, plus one patch flush with the edge
        for left in (0, 3, 4):
            occluded = images.copy()
            occluded[:, top : top + 2, left : left + 2, :] = 0
            occluded[:, top : top + 2, left : left + 2, :] += fill
            drop = clean - _numpy_logits(model, occluded)[rows, targets]
            expected[:, top : top + 2, left : left + 2, :] += drop[:, None, None, None]
    result = keraslens.attribute(
        model, images, "occlusion", targets, patch=2, stride=3, value=value
    )
    np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-5)


def test_occlusion_of_single_tokens_drops_their_share_of_a_mean_pooled_score():
    tokens = keras.Input((5,), dtype="int32")
    embedded = keras.layers.Embedding(7, 3, name="embed")(tokens)
    pooled = keras.layers.GlobalAveragePooling1D()(embedded)
    model = keras.Model(tokens, keras.layers.Dense(2, name="out")(pooled))
    x = np.array([[1, 2, 3, 4, 5], [6, 6, 1, 0, 2]])
    table = model.get_layer("embed").get_weights()[0]
    w = model.get_layer("out").get_weights()[0][:, 1]
    result = keraslens.attribute(model, x, "occlusion", targets=1, patch=1, stride=1)
    np.testing.assert_allclose(result, table[x] @ w / 5, rtol=1e-4, atol=1e-6)


def test_rise_equals_a_numpy_reference_given_the_same_masks(images):
    model = _mlp((6, 6, 2))
    masks = rise_masks(50, (6, 6), grid=3, keep=0.4, seed=5)
    scores = np.stack([_numpy_logits(model, images * m[..., None])[:, 2] for m in masks], 1)
    expected = np.einsum("nm,mhw->nhw", scores, masks) / (50 * 0.4)
    result = keraslens.attribute(model, images, "rise", 2, masks=50, grid=3, keep=0.4, seed=5)
    np.testing.assert_allclose(result, np.repeat(expected[..., None], 2, -1), rtol=1e-4, atol=1e-5)


def test_rise_masks_are_smooth_and_keep_about_keep_of_the_positions():
    masks = rise_masks(400, (12, 12), grid=4, keep=0.3, seed=0)
    assert masks.min() >= 0.0 and masks.max() <= 1.0
    assert 0.25 < masks.mean() < 0.35
    assert 0.0 < ((masks > 0) & (masks < 1)).mean() < 1.0  # interpolated edges, not blocks
    np.testing.assert_array_equal(
        rise_masks(400, (12, 12), grid=4, keep=0.3, seed=0, start=100, stop=150), masks[100:150]
    )


def _segment_sums(contribution: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Sum of `contribution` (N, H, W, C) over each segment, repeated over its positions."""
    per_position = contribution.sum(-1)
    sums = np.stack(
        [
            [per_position[i][ids == s].sum() for s in range(ids.max() + 1)]
            for i in range(len(per_position))
        ]
    )
    return np.repeat(sums[:, ids][..., None], contribution.shape[-1], -1)


@pytest.mark.parametrize("segments", [2, 3], ids=["all-coalitions", "sampled"])
def test_kernelshap_on_a_linear_model_gives_the_exact_shapley_values(images, segments):
    model = _mlp((6, 6, 2), hidden=None)
    w = model.layers[-1].get_weights()[0][:, 1].reshape(6, 6, 2)
    ids = grid_segments((6, 6), segments)
    expected = _segment_sums(w * (images - 0.5), ids)
    result = keraslens.attribute(
        model, images, "kernelshap", 1, samples=200, segments=segments, baseline=0.5
    )
    np.testing.assert_allclose(result, expected, rtol=1e-3, atol=1e-4)


def test_kernelshap_with_every_coalition_equals_the_shapley_formula_on_a_nonlinear_model(images):
    model = _mlp((6, 6, 2), hidden=8)
    ids = grid_segments((6, 6), 2)  # 4 segments: all 14 coalitions fit in the samples

    def score(kept: frozenset) -> np.ndarray:
        mask = np.isin(ids, list(kept))[None, :, :, None]
        return _numpy_logits(model, images * mask)[:, 1]

    expected = np.zeros((len(images), 4))
    for i in range(4):
        others = [j for j in range(4) if j != i]
        for size in range(4):
            weight = factorial(size) * factorial(3 - size) / factorial(4)
            for subset in combinations(others, size):
                expected[:, i] += weight * (
                    score(frozenset(subset) | {i}) - score(frozenset(subset))
                )
    result = keraslens.attribute(model, images, "kernelshap", 1, segments=2)
    np.testing.assert_allclose(result[:, ::3, ::3, 0].reshape(3, 4), expected, rtol=1e-4, atol=1e-5)


def test_kernelshap_values_sum_to_the_score_minus_the_baseline_score(images):
    model = _mlp((6, 6, 2), hidden=8)
    result = keraslens.attribute(model, images, "kernelshap", 0, samples=100, segments=3)
    gap = _numpy_logits(model, images)[:, 0] - _numpy_logits(model, 0 * images)[:, 0]
    per_segment = result[..., 0][:, ::2, ::2]  # one position of each of the 3x3 segments
    np.testing.assert_allclose(per_segment.reshape(3, -1).sum(1), gap, rtol=1e-4, atol=1e-5)


def test_kernelshap_takes_segment_ids_shaped_like_the_positions(images):
    model = _mlp((6, 6, 2), hidden=None)
    w = model.layers[-1].get_weights()[0][:, 0].reshape(6, 6, 2)
    ids = np.where(np.arange(6)[:, None] < 2, 7, 3) * np.ones((6, 6), int)  # rows 0-1 vs rest
    result = keraslens.attribute(model, images, "kernelshap", 0, segments=ids)
    expected = _segment_sums(w * images, (ids == 3).astype(int))
    np.testing.assert_allclose(result, expected, rtol=1e-3, atol=1e-4)


def test_lime_on_a_linear_model_ranks_segments_by_their_contribution(images):
    model = _mlp((6, 6, 2), hidden=None)
    w = model.layers[-1].get_weights()[0][:, 2].reshape(6, 6, 2)
    ids = grid_segments((6, 6), 3)
    truth = _segment_sums(w * images, ids)[..., 0][:, ::2, ::2].reshape(3, -1)
    result = keraslens.attribute(model, images, "lime", 2, samples=1000, segments=3, alpha=0.01)
    fitted = result[..., 0][:, ::2, ::2].reshape(3, -1)
    for found, true in zip(fitted, truth, strict=True):
        np.testing.assert_array_equal(np.argsort(found), np.argsort(true))
        assert np.corrcoef(found, true)[0, 1] > 0.99


def _planted_region_model() -> keras.Model:
    """(8, 8, 1) -> a score that depends only on the 2x2 block at rows 4-5, columns 2-3."""
    model = _mlp((8, 8, 1), hidden=4)
    hidden = model.layers[1]
    kernel, bias = hidden.get_weights()
    region = np.zeros((8, 8, 1), bool)
    region[4:6, 2:4] = True
    kernel[~region.reshape(-1)] = 0.0
    hidden.set_weights([np.abs(kernel) + region.reshape(-1, 1), bias])
    return model


@pytest.mark.parametrize("method", ["sobol", "hsic"])
def test_sensitivity_methods_rank_the_planted_deciding_region_first(method, rng):
    model = _planted_region_model()
    x = rng.uniform(0.5, 1, (2, 8, 8, 1)).astype("float32")
    result = keraslens.attribute(model, x, method, 0, grid_size=4)
    cells = result[..., 0][:, ::2, ::2].reshape(2, -1)
    assert (cells.argmax(axis=1) == 2 * 4 + 1).all()  # the cell at rows 4-5, columns 2-3
    assert (cells[:, 9] > 5 * np.delete(cells, 9, axis=1).max(axis=1)).all()


def test_hsic_index_equals_the_trace_estimator_with_explicit_kernels(rng):
    from keraslens.attr.hsic import Hsic

    design = rng.integers(0, 2, (40, 3)).astype(float)
    scores = rng.normal(size=(2, 40))
    n, centring = 40, np.eye(40) - 1 / 40
    expected = np.zeros((2, 3))
    for i, y in enumerate(scores):
        distance = np.abs(y[:, None] - y[None, :])
        width = np.median(distance[np.triu_indices(n, 1)])
        output_gram = np.exp(-(distance**2) / (2 * width**2))
        for cell in range(3):
            u = design[:, cell]
            mask_gram = 1.5 - (u[:, None] - u[None, :]) ** 2
            trace = np.trace(mask_gram @ centring @ output_gram @ centring)
            expected[i, cell] = trace / (n - 1) ** 2
    np.testing.assert_allclose(Hsic()._indices(design, scores), expected, rtol=1e-5)


def _sequence_model() -> keras.Model:
    return keras.Sequential(
        [keras.Input((6, 3)), keras.layers.Conv1D(4, 2, activation="relu"),
         keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(2, activation="softmax")]
    )  # fmt: skip


def _token_model() -> keras.Model:
    tokens = keras.Input((6,), dtype="int32")
    embedded = keras.layers.Embedding(9, 4)(tokens)
    pooled = keras.layers.GlobalMaxPooling1D()(embedded)
    return keras.Model(tokens, keras.layers.Dense(2, activation="softmax")(pooled))


KINDS = {
    "sequence": (_sequence_model, lambda rng: rng.normal(size=(2, 6, 3)), (2, 6, 3)),
    "tabular": (lambda: _mlp((5,)), lambda rng: rng.normal(size=(2, 5)), (2, 5)),
    "token": (_token_model, lambda rng: rng.integers(0, 9, (2, 6)), (2, 6)),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("method", PERTURBATION)
def test_every_perturbation_method_runs_on_sequences_tables_and_tokens(method, kind, rng):
    build, data, shape = KINDS[kind]
    x = data(rng)
    result = keraslens.attribute(build(), x.astype("int32" if kind == "token" else "float32"),
                                 method, **FAST[method])  # fmt: skip
    assert result.shape == shape and np.isfinite(result).all()
    assert np.abs(result).max() > 0


def test_a_per_position_value_is_repeated_over_the_channels(images):
    model = _mlp((6, 6, 2))
    result = keraslens.attribute(model, images, "rise", masks=32)
    np.testing.assert_array_equal(result[..., 0], result[..., 1])


@pytest.mark.parametrize("method", PERTURBATION)
def test_results_do_not_depend_on_the_internal_batch_size(method, images):
    model = _mlp((6, 6, 2))
    big = keraslens.attribute(model, images, method, **FAST[method])
    small = keraslens.attribute(model, images, method, batch_size=3, **FAST[method])
    np.testing.assert_allclose(small, big, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("method", "options", "message"),
    [
        ("occlusion", {"patch": 0}, "patch must be a positive int"),
        ("occlusion", {"patch": (2, 2, 2)}, "3 sizes for 2 position axes"),
        ("occlusion", {"value": "median"}, "number, 'mean' or an array"),
        ("kernelshap", {"segments": np.zeros((3, 3), int)}, "shaped like the positions"),
        ("lime", {"baseline": np.zeros(4)}, "got shape \\(4,\\)"),
        ("sobol", {"nb_design": 24}, "power of two"),
        ("hsic", {"perturbation": "noise"}, "allowed: inpainting, blur"),
    ],
)
def test_bad_options_are_named_with_the_fix(method, options, message, images):
    with pytest.raises(KeraslensError, match=message):
        keraslens.attribute(_mlp((6, 6, 2)), images, method, **options)


def test_a_multi_input_model_is_perturbed_in_one_input_with_the_others_fixed():
    a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
    joined = keras.layers.Concatenate()([a, b])
    model = keras.Model([a, b], keras.layers.Dense(2, name="out")(joined))
    w = model.get_layer("out").get_weights()[0][:, 1]
    xa, xb = np.ones((2, 4), "float32"), 2 * np.ones((2, 3), "float32")
    result = keraslens.attribute(model, {"a": xa, "b": xb}, "kernelshap", 1, segments=4)
    np.testing.assert_allclose(result["a"], xa * w[:4], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result["b"], xb * w[4:], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", PERTURBATION)
def test_no_pass_expands_more_than_a_few_batches_of_rows(method, images, monkeypatch):
    from keraslens.attr.scorer import GROUP_PASSES, Scorer

    sizes = []
    score = Scorer.score

    def recording(self, values, repeat=1, first=0):
        sizes.append(len(values))
        return score(self, values, repeat, first)

    monkeypatch.setattr(Scorer, "score", recording)
    keraslens.attribute(_mlp((6, 6, 2)), images, method, batch_size=4, **FAST[method])
    assert sizes and max(sizes) <= GROUP_PASSES * 4
