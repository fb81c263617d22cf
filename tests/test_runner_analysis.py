"""`Analysis`: plugins found and checked once, each given what it needs and nothing more."""

from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import pytest
from test_report_fixtures import install_plugins

import keraslens
from keraslens import registry
from keraslens.plugin import Option, Plugin, PluginResult
from keraslens.runner import SAMPLE_SIZE

SEEN: dict[str, dict[str, object]] = {}
"""Plugin name -> the context fields it was given (None or the value)."""


class _Recorder(Plugin):
    options = {"threshold": Option(float, 0.25, "Unused; shows its default.", min=0, max=1)}

    def analyze(self, ctx):
        SEEN[self.name] = {"stats": ctx.stats, "sample": ctx.sample, "labels": ctx.labels}
        SEEN[self.name]["outputs"] = ctx.outputs
        return PluginResult()


class NeedsStats(_Recorder):
    name = "needs-stats"
    needs = frozenset({"stats"})


class NeedsSample(_Recorder):
    name = "needs-sample"
    needs = frozenset({"sample", "labels"})


class NeedsOutputs(_Recorder):
    name = "needs-outputs"
    needs = frozenset({"stats", "outputs"})


class NeedsNothing(_Recorder):
    name = "needs-nothing"
    needs = frozenset()


class CountingData(keras.utils.PyDataset):
    """`batches` batches of `size` samples of (6,) inputs; counts the batches read."""

    def __init__(self, batches: int = 3, size: int = SAMPLE_SIZE) -> None:
        super().__init__()
        self.x = np.random.default_rng(1).normal(size=(batches * size, 6)).astype("float32")
        self.size, self.reads = size, 0

    def __len__(self) -> int:
        return len(self.x) // self.size

    def __getitem__(self, index: int) -> np.ndarray:
        self.reads += 1
        return self.x[index * self.size : (index + 1) * self.size]


def _model() -> keras.Model:
    inputs = keras.Input((6,))
    return keras.Model(inputs, keras.layers.Dense(4, activation="relu", name="hidden")(inputs))


@pytest.fixture(autouse=True)
def _recorders(monkeypatch):
    install_plugins(monkeypatch, NeedsStats, NeedsSample, NeedsOutputs, NeedsNothing)
    SEEN.clear()


def test_each_plugin_is_given_only_what_it_needs():
    x = np.random.default_rng(0).normal(size=(100, 6)).astype("float32")
    y = np.arange(100) % 3

    keraslens.analyze(_model(), x, labels=y)

    assert set(SEEN["needs-stats"]["stats"]) == {"hidden"}
    assert SEEN["needs-stats"]["sample"] is None and SEEN["needs-stats"]["labels"] is None
    np.testing.assert_array_equal(SEEN["needs-sample"]["sample"], x[:SAMPLE_SIZE])
    np.testing.assert_array_equal(SEEN["needs-sample"]["labels"], y[:SAMPLE_SIZE])
    assert SEEN["needs-sample"]["stats"] is None
    assert all(value is None for value in SEEN["needs-nothing"].values())


def test_outputs_on_arrays_come_from_the_capture_pass_and_equal_predict(monkeypatch):
    model = _model()
    x = np.random.default_rng(0).normal(size=(300, 6)).astype("float32")
    expected = model.predict(x[:SAMPLE_SIZE], verbose=0)
    monkeypatch.setattr(model, "predict", lambda *a, **k: pytest.fail("predict was called"))

    keraslens.analyze(model, x, plugins=["needs-outputs"], batch_size=50)

    np.testing.assert_allclose(SEEN["needs-outputs"]["outputs"], expected, rtol=1e-6)


def test_outputs_of_a_dataset_come_from_predict_on_the_sample():
    # A dataset may shuffle between two passes, so its capture cannot stand for the sample.
    model = _model()
    data = CountingData(batches=3)

    keraslens.analyze(model, data, plugins=["needs-outputs"])

    expected = model.predict(data.x[:SAMPLE_SIZE], verbose=0)
    np.testing.assert_allclose(SEEN["needs-outputs"]["outputs"], expected, rtol=1e-6)


def test_plugins_that_need_statistics_only_read_the_data_once():
    data = CountingData(batches=3)

    keraslens.analyze(_model(), data, plugins=["needs-stats"])

    assert data.reads == 3


def test_a_plugin_that_needs_a_sample_costs_one_more_batch_not_a_pass():
    data = CountingData(batches=3)

    keraslens.analyze(_model(), data, plugins=["needs-stats", "needs-sample"])

    assert data.reads == 3 + 1


def test_plugins_that_need_no_data_read_none():
    data = CountingData(batches=3)

    result = keraslens.analyze(_model(), data, plugins=["needs-nothing"])

    assert data.reads == 0 and result.plugins["needs-nothing"].error is None


def test_an_analysis_discovers_its_plugins_once_however_often_it_runs(monkeypatch):
    calls = []
    available = registry.available
    monkeypatch.setattr(registry, "available", lambda: calls.append(1) or available())
    x = np.ones((8, 6), "float32")

    analysis = keraslens.Analysis(_model(), plugins=["needs-stats"])
    first, second = analysis.run(x), analysis.run(x)

    assert len(calls) == 1
    assert (
        first.plugins["needs-stats"].error is None and second.plugins["needs-stats"].error is None
    )


def test_results_carry_their_option_defaults_so_the_report_needs_no_registry(monkeypatch, tmp_path):
    result = keraslens.analyze(
        _model(),
        np.ones((8, 6), "float32"),
        plugins=["needs-stats"],
        options={"needs-stats": {"threshold": 0.5}},
    )
    monkeypatch.setattr(registry, "available", lambda: pytest.fail("the report asked the registry"))

    html = result.to_html(tmp_path / "r.html").read_text()

    assert result.plugins["needs-stats"].defaults == {"threshold": 0.25}
    assert "<td><code>needs-stats.threshold</code></td><td>0.5</td><td>0.25</td>" in html


@pytest.mark.parametrize("limit", [0, -1.0, float("inf"), True, "60"])
def test_time_limit_that_is_not_a_positive_number_is_refused(limit):
    with pytest.raises(keraslens.KeraslensError, match="time_limit must be a positive number"):
        keraslens.Analysis(_model(), plugins=["needs-stats"], time_limit=limit)


@pytest.mark.slow
def test_the_report_depends_on_results_not_on_the_runner_or_the_callback():
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, keraslens.report; print(sorted(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    assert "'keraslens.result'" in loaded
    assert "'keraslens.runner'" not in loaded and "'keraslens.callback'" not in loaded
