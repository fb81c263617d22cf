"""Metrics of the map alone (sparseness, complexity) and of its stability."""

from __future__ import annotations

import numpy as np
import pytest
from metrics_cases import Noise, evaluate_one, linear
from scipy.stats import entropy

import keraslens


@pytest.fixture
def case(rng):
    model = linear((6, 6, 1))
    return model, rng.uniform(0, 1, (5, 6, 6, 1)).astype("float32")


def _one_hot(x):
    maps = np.zeros(x.shape[:3])
    maps[:, 2, 3] = 5.0
    return maps


def test_a_one_hot_map_has_gini_one_minus_one_over_d_and_a_uniform_map_zero(case):
    model, x = case
    d = 36
    one_hot = evaluate_one(model, x, _one_hot(x), "sparseness")
    uniform = evaluate_one(model, x, np.full(x.shape[:3], -2.0), "sparseness")
    np.testing.assert_allclose(one_hot["per_sample"], (d - 1) / d)
    np.testing.assert_allclose(uniform["per_sample"], 0.0, atol=1e-12)


def test_gini_equals_the_mean_absolute_difference_over_twice_the_mean(case, rng):
    model, x = case
    maps = rng.standard_normal(x.shape[:3])
    a = np.abs(maps.reshape(len(x), -1))
    expected = np.abs(a[:, :, None] - a[:, None, :]).mean((1, 2)) / (2 * a.mean(1))
    np.testing.assert_allclose(evaluate_one(model, x, maps, "sparseness")["per_sample"], expected)


def test_complexity_is_zero_for_one_position_log_d_for_uniform_and_scipy_entropy_else(case, rng):
    model, x = case
    np.testing.assert_allclose(evaluate_one(model, x, _one_hot(x), "complexity")["per_sample"], 0)
    uniform = evaluate_one(model, x, np.ones(x.shape), "complexity")["per_sample"]
    np.testing.assert_allclose(uniform, np.log(36))
    maps = rng.standard_normal(x.shape[:3])
    expected = entropy(np.abs(maps.reshape(len(x), -1)), axis=1)
    np.testing.assert_allclose(evaluate_one(model, x, maps, "complexity")["per_sample"], expected)


def test_an_all_zero_map_has_undefined_sparseness_left_out_of_the_mean(case):
    model, x = case
    maps = _one_hot(x)
    maps[0] = 0.0
    entry = evaluate_one(model, x, maps, "sparseness")
    assert np.isnan(entry["per_sample"][0]) and entry["mean"] == pytest.approx(35 / 36)


def test_saliency_of_a_linear_model_has_max_sensitivity_zero(case):
    model, x = case
    entry = keraslens.evaluate(model, x, "saliency", ["max-sensitivity"])["max-sensitivity"]
    np.testing.assert_allclose(entry["per_sample"], 0.0, atol=1e-6)


def test_gradient_times_input_sensitivity_stays_within_the_noise_bound(case):
    model, x = case
    radius = 0.05
    entry = keraslens.evaluate(
        model, x, "gradient-input", {"max-sensitivity": {"radius": radius}}, targets=1
    )["max-sensitivity"]
    w = model.layers[-1].get_weights()[0][:, 1]
    flat = x.reshape(len(x), -1)
    bound = radius * np.ptp(flat, axis=1) * np.linalg.norm(w) / np.linalg.norm(w * flat, axis=1)
    values = np.array(entry["per_sample"])
    assert (values > 0).all() and (values <= bound * (1 + 1e-5)).all()


def test_a_map_of_fresh_noise_has_a_large_max_sensitivity(case):
    model, x = case
    entry = keraslens.evaluate(model, x, Noise(), ["max-sensitivity"])["max-sensitivity"]
    assert entry["low"] > 1.0  # two independent normal maps differ by about sqrt(2) times one
