"""Faithfulness metrics against planted deciding regions and linear models."""

from __future__ import annotations

import numpy as np
import pytest
from metrics_cases import evaluate_one, linear, planted, planted_logit

import keraslens
from keraslens.metrics import _plumbing
from keraslens.metrics.road import impute


def _maps(x, region, seed=1):
    """The right map (the region), a random one and the inverted one, per sample."""
    right = np.broadcast_to(region, x.shape[:3]).astype(float)
    return right, np.random.default_rng(seed).random(x.shape[:3]), 1.0 - right


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def test_deleting_the_planted_region_first_drops_the_score_faster_than_random_pixels():
    model, x, region = planted(8)
    right, random, inverted = _maps(x, region)
    scores = [evaluate_one(model, x, m, "deletion")["mean"] for m in (right, random, inverted)]
    assert scores[0] < 0.3 < scores[1] - 0.2
    assert scores[2] > scores[1]  # the inverted map deserves the worst score, and gets it


@pytest.mark.parametrize("size", [8, 32])
@pytest.mark.parametrize("start", ["blur", "zeros"])
def test_insertion_separates_the_planted_region_from_a_random_map(size, start):
    model, x, region = planted(size)
    right, random, inverted = _maps(x, region)
    scores = [
        evaluate_one(model, x, m, "insertion", start=start)["mean"]
        for m in (right, random, inverted)
    ]
    assert scores[0] > scores[1] + 0.15 and scores[1] > scores[2]


def test_the_blurred_insertion_start_loses_the_prediction_where_a_fixed_blur_keeps_it():
    model, x, region = planted(32)
    explained = keraslens.metrics.Explained(
        model, _scorer(model, x), np.zeros(x.shape), None, {}, [x]
    )
    start = _plumbing.start_image("blur", explained)
    assert (planted_logit(start, region) < 0).all()  # class 0 (logit 0) wins on every start
    from scipy.ndimage import gaussian_filter

    fixed = gaussian_filter(x, (0, 1, 1, 0))  # the old start: sigma = max(1, size / 32)
    assert (planted_logit(fixed, region) > 0).all()


def test_the_blur_search_runs_once_for_the_same_samples_and_targets(monkeypatch):
    model, x, _ = planted(8)
    searches = []
    search = _plumbing._search_blur
    monkeypatch.setattr(_plumbing, "_search_blur", lambda e: searches.append(1) or search(e))

    def start(samples):
        explained = keraslens.metrics.Explained(
            model, _scorer(model, samples), np.zeros(samples.shape), None, {}, [samples]
        )
        return _plumbing.start_image("blur", explained)

    first = start(x)
    np.testing.assert_array_equal(start(x.copy()), first)  # another method, the same samples
    assert len(searches) == 1
    start(x[::-1].copy())
    assert len(searches) == 2


def _scorer(model, x):
    from keraslens.attr import Scorer
    from keraslens.attr.graph import score_graph
    from keraslens.attr.inputs import model_inputs

    specs, feeds = model_inputs(model, x)
    return Scorer(model, score_graph(model, specs, 0), feeds)


def test_deletion_keeps_per_sample_values_and_a_curve_from_the_clean_probability():
    model, x, region = planted(8)
    entry = evaluate_one(model, x, _maps(x, region)[0], "deletion", steps=8)
    assert len(entry["per_sample"]) == len(x) and len(entry["curve"]) == 9
    clean = _sigmoid(planted_logit(x, region)).mean()
    assert entry["curve"][0] == pytest.approx(clean, rel=1e-5)


@pytest.mark.parametrize("metric", ["deletion", "insertion"])
def test_a_curve_passes_only_its_painted_rows_and_ends_at_the_clean_probability(
    metric, monkeypatch
):
    from keraslens.attr import Scorer

    model, x, region = planted(8)
    rows = []
    outputs = Scorer.outputs
    monkeypatch.setattr(
        Scorer, "outputs", lambda self, v, *a: rows.append(len(v)) or outputs(self, v, *a)
    )
    zero_start = {"baseline" if metric == "deletion" else "start": "zeros"}
    entry = evaluate_one(model, x, _maps(x, region)[0], metric, steps=8, **zero_start)
    monkeypatch.undo()
    clean = _sigmoid(planted_logit(x, region)).mean()
    assert entry["curve"][0 if metric == "deletion" else -1] == pytest.approx(clean, rel=1e-5)
    zeros = _sigmoid(planted_logit(np.zeros_like(x), region)).mean()
    assert entry["curve"][-1 if metric == "deletion" else 0] == pytest.approx(zeros, rel=1e-5)
    assert sum(rows) == 8 * len(x)  # 9 points, the clean one without a pass


def test_gradient_times_input_on_a_linear_model_has_mufidelity_one(rng):
    model = linear((6, 6, 2))
    x = rng.uniform(0, 1, (8, 6, 6, 2)).astype("float32")
    entry = keraslens.evaluate(model, x, "gradient-input", ["mufidelity"])["mufidelity"]
    np.testing.assert_allclose(entry["per_sample"], 1.0, atol=1e-4)


def test_w_times_x_minus_baseline_has_mufidelity_one_for_that_baseline(rng):
    model = linear((6, 6, 2))
    x = rng.uniform(0, 1, (8, 6, 6, 2)).astype("float32")
    targets = rng.integers(0, 5, len(x))
    kernel = model.layers[-1].get_weights()[0].reshape(6, 6, 2, 5)
    maps = np.moveaxis(kernel[..., targets], -1, 0) * (x - 0.3)
    entry = keraslens.evaluate(model, x, maps, {"mufidelity": {"baseline": 0.3}}, targets)
    np.testing.assert_allclose(entry["mufidelity"]["per_sample"], 1.0, atol=1e-4)


def test_a_random_map_has_mufidelity_about_zero(rng):
    model = linear((6, 6, 2))
    x = rng.uniform(0, 1, (16, 6, 6, 2)).astype("float32")
    entry = evaluate_one(model, x, rng.standard_normal(x.shape), "mufidelity")
    assert abs(entry["mean"]) < 0.1 and entry["low"] < 0 < entry["high"]


def test_average_drop_increase_and_gain_of_the_planted_map_match_numpy():
    model, x, region = planted(8)
    right, _, inverted = _maps(x, region)
    clean = _sigmoid(planted_logit(x, region))
    # Masked by the region, the input is the region alone: logit 4 * 1 - 0 - 1 = 3.
    expected_gain = (_sigmoid(3.0) - clean) / (1 - clean)
    scores = keraslens.evaluate(
        model, x, right, ["average-drop", "average-increase", "average-gain"]
    )
    np.testing.assert_allclose(scores["average-drop"]["per_sample"], 0.0)
    np.testing.assert_allclose(scores["average-increase"]["per_sample"], 1.0)
    np.testing.assert_allclose(scores["average-gain"]["per_sample"], expected_gain, rtol=1e-4)
    # Masked by the inverted map, the region goes dark: the drop is the oracle's.
    shown = _sigmoid(planted_logit(x * (1 - region)[None, :, :, None], region))
    worst = keraslens.evaluate(
        model, x, inverted, ["average-drop", "average-increase", "average-gain"]
    )
    np.testing.assert_allclose(
        worst["average-drop"]["per_sample"], (clean - shown) / clean, rtol=1e-4
    )
    assert worst["average-increase"]["mean"] == 0.0 and worst["average-gain"]["mean"] == 0.0


def test_road_rewards_the_planted_map_and_punishes_the_inverted_one():
    model, x, region = planted(8)
    right, random, inverted = _maps(x, region)
    scores = [evaluate_one(model, x, m, "road") for m in (right, random, inverted)]
    assert scores[0]["mean"] > 0.3 and scores[2]["mean"] < -0.3
    assert abs(scores[1]["mean"]) < scores[0]["mean"] / 2
    assert scores[0]["morf"]["mean"] < scores[0]["lerf"]["mean"]
    assert len(scores[0]["curves"]["morf"]) == len(scores[0]["fractions"]) == 9


@pytest.mark.parametrize("shape", [(2, 9, 11, 3), (2, 15, 2)])
def test_noisy_linear_imputation_fills_interior_holes_of_a_ramp_exactly(shape):
    grids = np.meshgrid(*[np.arange(n, dtype=float) for n in shape[1:-1]], indexing="ij")
    ramp = sum((i + 1.5) * g for i, g in enumerate(grids))
    x = np.stack([ramp * (c + 1) for c in range(shape[-1])], axis=-1)
    x = np.stack([x, -x]).astype("float32")
    rng = np.random.default_rng(0)
    removed = np.zeros(shape[:-1], bool)
    interior = tuple(slice(1, n - 1) for n in shape[1:-1])
    removed[(slice(None), *interior)] = rng.random(removed[(slice(None), *interior)].shape) < 0.7
    filled = impute(x, removed, 0.0, rng)
    np.testing.assert_allclose(filled, x, atol=1e-3)


def test_pixel_flipping_aopc_ranks_the_planted_map_above_random_and_inverted():
    model, x, region = planted(8)
    right, random, inverted = _maps(x, region)
    scores = [evaluate_one(model, x, m, "pixel-flipping") for m in (right, random, inverted)]
    assert scores[0]["mean"] > scores[1]["mean"] + 1.0 > scores[2]["mean"] + 1.0
    assert scores[0]["curve"][0] == pytest.approx(planted_logit(x, region).mean(), rel=1e-5)
