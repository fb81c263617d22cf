"""`LayerStats.merge`: statistics of parts of the data, merged, equal one pass over all of it.

One Lens serves the whole module, and the data is small, so each batch size traces once.
"""

from __future__ import annotations

import copy

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keraslens import KeraslensError, LayerStats, Lens
from keraslens.capture.stats import COUNT_FIELDS

N = 8
PER_UNIT = (*COUNT_FIELDS, "hist_counts")
PROPERTY = settings(
    max_examples=15,
    deadline=None,
    database=None,
    # The autouse seed fixture is per test, not per example; no example depends on it.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def lens() -> Lens:
    keras.utils.set_random_seed(0)
    x = keras.Input((5,))
    # tanh, not relu6: oneDNN's fused MatMul+ReLU6 turns NaN into 0, tanh passes it on.
    hidden = keras.layers.Dense(4, activation="tanh", name="hidden")(x)
    out = keras.layers.Dense(4, activation="relu6", name="out")(hidden)
    return Lens(keras.Model(x, out))


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    """Spread wide enough to reach both tanh bounds, with a NaN row and an Inf."""
    x = (np.random.default_rng(0).normal(size=(N, 5)) * 3).astype(np.float32)
    x[2, 0] = np.nan
    x[6, 3] = np.inf
    return x


@pytest.fixture(scope="module")
def one_pass(lens, data) -> dict[str, LayerStats]:
    return lens.capture(data, batch_size=N)


def assert_same_stats(actual: LayerStats, expected: LayerStats) -> None:
    assert actual.samples == expected.samples
    for name in PER_UNIT:
        np.testing.assert_array_equal(getattr(actual, name), getattr(expected, name), name)
    for name in ("mean", "var", "min", "max"):
        np.testing.assert_allclose(
            getattr(actual, name), getattr(expected, name), rtol=1e-5, atol=1e-6, err_msg=name
        )


def test_the_data_reaches_both_bounds_and_the_non_finite_path(one_pass):
    stats = one_pass["hidden"]
    assert stats.lower_count.sum() > 0 and stats.upper_count.sum() > 0
    assert stats.nan_count.sum() > 0


@PROPERTY
@given(
    split=st.integers(1, N - 1),
    first_batch=st.integers(1, N),
    second_batch=st.integers(1, N),
)
def test_merging_two_parts_equals_one_pass(lens, data, one_pass, split, first_batch, second_batch):
    first = lens.capture(data[:split], batch_size=first_batch)
    second = lens.capture(data[split:], batch_size=second_batch)
    for key, expected in one_pass.items():
        assert_same_stats(first[key].merge(second[key]), expected)


@settings(PROPERTY, max_examples=10)
@given(cuts=st.lists(st.integers(1, N - 1), min_size=2, max_size=2, unique=True).map(sorted))
def test_merging_is_independent_of_order_and_grouping(lens, data, one_pass, cuts):
    a, b, c = (lens.capture(part, batch_size=N)["out"] for part in np.split(data, cuts))
    for merged in (a.merge(b).merge(c), a.merge(b.merge(c)), c.merge(a).merge(b)):
        assert_same_stats(merged, one_pass["out"])


def test_merge_leaves_both_parts_unchanged(lens, data):
    first = lens.capture(data[:6], batch_size=N)["out"]
    second = lens.capture(data[6:], batch_size=N)["out"]
    first_before, second_before = copy.deepcopy(first), copy.deepcopy(second)
    first.merge(second)
    assert_same_stats(first, first_before)
    assert_same_stats(second, second_before)


def empty_stats(units: int = 4, epsilon: float = 0.01) -> LayerStats:
    return LayerStats(
        path="out",
        layer_type="Dense",
        activation="relu6",
        bounds=(0.0, 6.0),
        epsilon=epsilon,
        shape=(units,),
        units=units,
    )


def test_empty_statistics_are_the_identity_of_merge(one_pass):
    assert_same_stats(empty_stats().merge(one_pass["out"]), one_pass["out"])
    assert_same_stats(one_pass["out"].merge(empty_stats()), one_pass["out"])


@pytest.mark.parametrize(
    "other", [empty_stats(units=3), empty_stats(epsilon=0.1)], ids=["units", "epsilon"]
)
def test_merging_statistics_captured_differently_raises(other, one_pass):
    with pytest.raises(KeraslensError, match="Cannot merge"):
        one_pass["out"].merge(other)
