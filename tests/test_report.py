"""The HTML report: self-contained, escaped, complete, deterministic, written atomically."""

from __future__ import annotations

import json
import math
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_report_fixtures import (
    XSS,
    Broken,
    DeadUnits,
    HostileNames,
    MeanPlot,
    install_plugins,
    tiny_data,
    tiny_model,
)

import keraslens
from keraslens.callback import LensCallback
from keraslens.jsonable import to_jsonable
from keraslens.plugin import Plugin, PluginResult
from keraslens.report import render_html


@pytest.fixture
def result(monkeypatch):
    install_plugins(monkeypatch, DeadUnits, MeanPlot, Broken, HostileNames)
    return keraslens.analyze(tiny_model(), tiny_data(), seed=7)


@pytest.fixture
def html(result):
    return render_html(result)


def without_date(text):
    """The report without what changes from run to run: the date and the timings."""
    text = re.sub(r'<span class="seconds">[^<]*</span>', "TIME", text)
    return re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", "DATE", text)


def test_markup_in_names_renders_as_text(html):
    assert XSS not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html


def test_content_security_policy_forbids_every_request(html):
    (policy,) = re.findall(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html)
    assert "default-src 'none'" in policy and "img-src data:" in policy
    assert "script-src" not in policy


def test_no_resource_is_fetched_from_anywhere(html):
    references = re.findall(r'(?:src|href)="([^"]*)"', html) + re.findall(r"url\(([^)]*)\)", html)
    assert references, "the report links its sections"
    assert all(ref.startswith(("#", "data:image/png;base64,")) for ref in references)
    assert "http://" not in html and "https://" not in html


def test_header_states_model_data_versions_and_seed(html):
    for text in (
        "tiny (Functional)",
        "(None, 4)",
        "in-memory data, 64 samples",
        "<th>Seed</th><td>7",
    ):
        assert text in html


def test_verdict_lists_failing_findings_first_each_linked_to_its_layer(html):
    verdict = html[html.index('id="verdict"') : html.index('id="plugins"')]
    assert 'Verdict: <span class="status">ERROR' in verdict
    assert verdict.index("sev-error") < verdict.index("sev-warning")
    assert '<a href="#layer-hidden">dead units</a>' in verdict
    assert 'id="layer-hidden"' in html


def test_finding_names_value_threshold_setting_default_and_fix(html):
    row = html[html.index('<tr class="sev-error">') :].split("</tr>")[0]
    for text in (
        "units 0, 1, 2",
        "0.375",
        "<code>fake-dead.threshold</code> = 0.1",
        "(default 0.1)",
        "Use LeakyReLU or a lower learning rate.",
    ):
        assert text in row


def test_plugin_error_is_its_own_entry_not_a_missing_section(html):
    assert '<a href="#plugin-fake-broken"><code>fake-broken</code></a>' in html
    section = html[html.index('id="plugin-fake-broken"') :]
    assert "This plugin could not run.</strong> RuntimeError: this plugin always fails" in section


def test_each_plugin_has_a_section_with_its_tables_and_figures(html):
    for name in ("fake-dead", "fake-plot", "fake-broken", "fake-xss"):
        assert f'id="plugin-{name}"' in html
    assert "<h4>Dead fraction per layer" in html
    assert '<img src="data:image/png;base64,' in html


def test_layer_view_has_histogram_and_per_unit_table(html):
    layer = html[html.index('id="layer-hidden"') : html.index('id="layer-probabilities"')]
    assert '<svg class="chart"' in layer and 'class="bar"' in layer
    assert "Per-unit statistics (8 units)" in layer and "<th>firing rate</th>" in layer
    assert "37.5% are exactly zero" not in layer  # zeros are per output, not per unit
    assert "% are exactly zero" in layer


def test_same_seed_gives_the_same_bytes_apart_from_the_date_and_timings(monkeypatch):
    install_plugins(monkeypatch, DeadUnits, MeanPlot)
    first = render_html(keraslens.analyze(tiny_model(), tiny_data(), seed=3, samples=40))
    second = render_html(keraslens.analyze(tiny_model(), tiny_data(), seed=3, samples=40))
    assert without_date(first) == without_date(second)


@pytest.mark.parametrize(
    ("data", "samples", "count", "subset", "header"),
    [
        (tiny_data(64), 40, 40, "random", "40 samples (random subset)"),
        (tiny_data(64), 64, 64, None, "64 samples<"),
        (tiny_data(64), 500, 64, None, "64 samples<"),
        ("dataset", 40, 40, "first", "40 samples (the first of the dataset)"),
        ("dataset", 500, 64, None, "64 samples<"),
    ],
)
def test_the_header_says_how_the_samples_were_drawn(
    monkeypatch, data, samples, count, subset, header
):
    install_plugins(monkeypatch, DeadUnits)
    if isinstance(data, str):
        data = tf.data.Dataset.from_tensor_slices(tiny_data(64)).batch(16)
    result = keraslens.analyze(tiny_model(), data, samples=samples)
    assert result.meta["samples"] == count and result.meta["subset"] == subset
    assert result.meta["sampled"] is (subset is not None)
    assert header in render_html(result)


def test_samples_of_a_py_dataset_are_refused_not_ignored(monkeypatch):
    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            return tiny_data(32)

    install_plugins(monkeypatch, DeadUnits)
    with pytest.raises(keraslens.KeraslensError, match="leave samples out"):
        keraslens.analyze(tiny_model(), Batches(), samples=10)


def test_to_html_failure_leaves_the_previous_file_untouched(result, tmp_path, monkeypatch):
    target = tmp_path / "report.html"
    target.write_text("old")

    def explode(_):
        raise RuntimeError("boom")

    monkeypatch.setattr("keraslens.report.render_html", explode)
    with pytest.raises(RuntimeError):
        result.to_html(target)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_training_section_from_lens_callback(monkeypatch, tmp_path):
    install_plugins(monkeypatch, DeadUnits)
    model = tiny_model()
    model.compile("sgd", "sparse_categorical_crossentropy")
    callback = LensCallback(
        tiny_data(32),
        plugins=["fake-dead"],
        out_dir=tmp_path,
        report="final",
        thresholds={"firing_rate": 0.1},
        verbose=0,
    )
    model.fit(tiny_data(32), np.zeros(32), epochs=3, verbose=0, callbacks=[callback])
    html = (tmp_path / "report.html").read_text()
    training = html[html.index('id="training"') :]
    assert "3 epochs recorded" in training or "4 epochs recorded" in training
    assert "<code>firing_rate</code> &gt; 0.1: first crossed at epoch 0" in training
    assert 'class="band"' in training and "<polyline" in training


class FindsNothing(Plugin):
    name = "finds-nothing"
    needs = frozenset()

    def analyze(self, ctx):
        return PluginResult()


def test_report_without_stats_or_findings_says_so(monkeypatch):
    install_plugins(monkeypatch, FindsNothing)
    html = render_html(
        keraslens.analyze(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), tiny_data())
    )
    assert 'Verdict: <span class="status">PASS' in html and "No findings" in html


@pytest.mark.parametrize(
    "value",
    [
        np.array([[1.5, np.nan], [np.inf, -np.inf]], np.float32),
        np.array([0.25, 2.0]),
        np.arange(6).reshape(2, 3),
        np.array([True, False]),
        np.array(["a", "b"]),
        np.zeros((0, 2), np.float32),
    ],
)
def test_arrays_become_the_same_json_as_element_by_element(value):
    # Oracle: each element converted on its own (NaN and Inf as None, as JSON has none).
    def one(v):
        if isinstance(v, list):
            return [one(x) for x in v]
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        return v

    assert to_jsonable(value) == one(value.tolist())
    json.dumps(to_jsonable(value), allow_nan=False)
