"""`LayerStats`' layer-wide figures (pooled moments, range, bands) against NumPy on the raw
values, and the capture core's independence from the layers above it."""

from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import pytest

from keraslens import Lens
from keraslens.capture.stats import BAND_KEYS, LayerStats


@pytest.fixture(scope="module")
def values() -> np.ndarray:
    """Four units on different scales and offsets, so the pooled spread is not a unit's."""
    rng = np.random.default_rng(3)
    return (rng.normal(size=(500, 4)) * [1.0, 3.0, 0.5, 10.0] + [0.0, 5.0, -2.0, 1.0]).astype(
        np.float32
    )


@pytest.fixture(scope="module")
def stats(values) -> LayerStats:
    x = keras.Input((4,))
    model = keras.Model(x, keras.layers.Activation("linear", name="linear")(x))
    return Lens(model, histogram_samples=None).capture(values, batch_size=128)["linear"]


def test_pooled_mean_and_std_are_those_of_every_output_together(stats, values):
    mean, std = stats.pooled()

    every = values.astype(np.float64).ravel()
    assert mean == pytest.approx(every.mean(), rel=1e-6)
    assert std == pytest.approx(every.std(), rel=1e-6)


def test_value_range_is_the_smallest_and_largest_output(stats, values):
    assert stats.value_range() == (float(values.min()), float(values.max()))


def test_band_percentiles_lie_within_their_histogram_bucket_of_numpys(stats, values):
    band = stats.band()

    assert list(band) == list(BAND_KEYS)
    assert (band["min"], band["max"]) == (float(values.min()), float(values.max()))
    quantiles = {"p-1.5": 0.0668, "p-1": 0.1587, "p-0.5": 0.3085, "p0": 0.5, "p+0.5": 0.6915}
    quantiles.update({"p+1": 0.8413, "p+1.5": 0.9332})
    for key, q in quantiles.items():
        expected = np.quantile(values.astype(np.float64), q)
        # Buckets are at most 25% wide relative to their edge (four per power of two).
        assert band[key] == pytest.approx(expected, rel=0.25, abs=1e-3), key
    assert list(band.values()) == sorted(band.values())


def test_rebinned_histogram_keeps_every_count_over_the_range(stats, values):
    rows = stats.rebinned(30)

    assert rows.shape == (30, 3)
    assert (rows[0, 0], rows[-1, 1]) == (float(values.min()), float(values.max()))
    assert rows[:, 2].sum() == pytest.approx(values.size)


def test_a_layer_without_finite_outputs_has_no_band_and_nan_moments():
    empty = LayerStats("x", "Dense", None, None, 0.01, (3,), 3)

    assert empty.band() is None and empty.rebinned(30) is None and empty.value_range() is None
    assert all(np.isnan(empty.pooled()))


def test_the_capture_core_imports_nothing_above_it():
    code = (
        "import sys, numpy as np\n"
        "from keraslens.capture import LayerStats, Lens\n"
        "LayerStats('x', 'Dense', None, None, 0.01, (3,), 3).to_dict()\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('keraslens'))))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = run.stdout.split()
    outside = [m for m in loaded if not m.startswith("keraslens.capture")]
    assert outside == ["keraslens", "keraslens.errors", "keraslens.jsonable"]
