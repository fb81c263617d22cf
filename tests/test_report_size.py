"""The report of a big model stays small and readable: worst layers first, long tables
folded with a count, per-unit arrays of big layers only in the full JSON twin."""

from __future__ import annotations

import dataclasses
import json
import re

import keras
import numpy as np
import pytest
from test_report_fixtures import install_plugins

import keraslens
from keraslens.plugin import Finding, Plugin, PluginResult, Table
from keraslens.report import render_html, view
from keraslens.result import FULL_UNITS
from plugins.activation_stats import ActivationStats
from plugins.dead_neurons import DeadNeurons
from plugins.saturation import Saturation


class Flags(Plugin):
    """A warning on every layer whose name ends in an odd digit; a long table."""

    name = "fake-flags"
    title = "Flags (test stand-in)"

    def analyze(self, ctx):
        findings = [
            Finding("warning", f"Layer {p} is odd. Details follow here.", layer=p, units=[5, 2])
            for p in ctx.stats
            if p[-1] in "13579"
        ]
        rows = [[i, i * i] for i in range(30)]
        return PluginResult(findings=findings, tables=[Table("Squares", ["n", "n^2"], rows)])


def _deep_model(depth: int = 20, width: int = 8, wide: int = 100) -> keras.Model:
    """Dense layers named d0..d{depth-1}, then one of `wide` units named 'wide'."""
    keras.utils.set_random_seed(0)
    layers = [keras.Input((4,))]
    layers += [keras.layers.Dense(width, activation="relu", name=f"d{i}") for i in range(depth)]
    layers.append(keras.layers.Dense(wide, name="wide"))
    return keras.Sequential(layers, name="deep")


@pytest.fixture(scope="module")
def result():
    with pytest.MonkeyPatch.context() as patch:
        install_plugins(patch, Flags)
        x = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
        return keraslens.analyze(_deep_model(), x)


@pytest.fixture(scope="module")
def html(result):
    return render_html(result)


def _layers_section(html):
    return html[html.index('<section id="layers">') :]


def test_layers_with_findings_come_first_and_the_others_share_one_table(html):
    layers = _layers_section(html)
    sections = re.findall(r'<section id="layer-([^"]+)" class="layer', layers)
    assert sections == ["d1", "d3", "d5", "d7", "d9", "d11", "d13", "d15", "d17", "d19"]
    other = layers[layers.index('id="other-layers"') :]
    assert "11 other layers" in other and '<tr id="layer-d0">' in other
    assert '<tr id="layer-wide">' in other and 'id="layer-d1"' not in other


def test_the_contents_list_flagged_layers_and_count_the_others(html):
    toc = html[html.index('<nav id="toc"') : html.index("</nav>")]
    assert '<a href="#layer-d1"' in toc and '<a href="#layer-d0"' not in toc
    assert '<a href="#other-layers">11 other layers</a>' in toc


def test_a_long_table_is_folded_behind_its_title_and_row_count(html):
    assert re.search(
        r'<details class="table"><summary><span class="table-title">Squares'
        r"</span> \(30 rows\)</summary>",
        html,
    )


def test_findings_beyond_the_first_few_are_folded_with_a_count(html):
    verdict = html[html.index('id="verdict"') : html.index('id="plugins"')]
    shown, folded = verdict.split('<details class="more">')
    assert shown.count('<tr class="sev-warning">') == view.OPEN_FINDINGS
    assert f"<summary>{10 - view.OPEN_FINDINGS} more findings</summary>" in folded
    assert folded.count('<tr class="sev-warning">') == 10 - view.OPEN_FINDINGS


def test_a_finding_shows_its_first_sentence_and_folds_the_rest(html):
    assert (
        'Layer d1 is odd.<details class="more-text"><summary>more</summary>'
        "Details follow here.</details>"
    ) in html


def test_per_unit_tables_list_the_flagged_units_first_and_at_most_32(monkeypatch):
    install_plugins(monkeypatch, Flags)
    x = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    html = render_html(keraslens.analyze(_deep_model(depth=2, width=40), x))
    section = html[html.index('id="layer-d1"') :]
    table = section[section.index("Per-unit statistics") :]
    table = table[: table.index("</table>")]
    units = [int(u) for u in re.findall(r"<tr><td>(\d+)</td>", table)]
    assert units[:2] == [5, 2] and len(units) == view.MAX_UNIT_ROWS
    assert units[2:] == [u for u in range(40) if u not in (5, 2)][: view.MAX_UNIT_ROWS - 2]
    assert "Per-unit statistics (40 units)" in section and "8 more rows" in section


def test_each_plugin_says_how_long_it_took(result, html):
    seconds = result.plugins["fake-flags"].seconds
    assert f'took <span class="seconds">{seconds:.1f} s</span>' in html


def test_the_json_twin_is_compact_and_leaves_big_layers_per_unit_arrays_to_the_full_one(
    result, tmp_path
):
    text = result.to_json(tmp_path / "r.json").read_text()
    assert text.count("\n") == 1 and ", " not in text[:200]
    layers = json.loads(text)["layers"]
    assert len(layers["wide"]) < len(layers["d0"])  # 100 > FULL_UNITS units
    assert "mean" not in layers["wide"] and "mean" in layers["d0"]
    assert "histogram" in layers["wide"]["omitted"] and "mean" in layers["wide"]["omitted"]
    full = json.loads(result.to_json(tmp_path / "f.json", full=True).read_text())["layers"]
    assert len(full["wide"]["mean"]) == 100 > FULL_UNITS
    np.testing.assert_allclose(full["wide"]["mean"], result.stats["wide"].mean, rtol=1e-6)
    assert full["d0"]["histogram"]["counts"]


@pytest.mark.slow
def test_a_500_layer_report_is_at_most_3_mb_of_html_and_5_mb_of_json(monkeypatch, tmp_path):
    # The statistics of a 5-layer capture stand for 500 layers (100 copies under their
    # own paths), analysed by the built-in statistical plugins as a real run would be;
    # Flags puts a finding on 200 of them.
    keras.utils.set_random_seed(0)
    model = _deep_model(depth=4, width=128, wide=256)
    x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    captured = keraslens.Lens(model).capture(x)
    stats = {
        f"block{i}/{key}": dataclasses.replace(s, path=f"block{i}/{key}")
        for i in range(100)
        for key, s in captured.items()
    }
    install_plugins(monkeypatch, ActivationStats, DeadNeurons, Saturation, Flags)
    analysis = keraslens.Analysis(model)
    monkeypatch.setattr(analysis.lens, "capture", lambda *args, **kwargs: stats)
    result = analysis.run(x)
    assert len(result.stats) == 500 and result.findings and not result.errors
    html = result.to_html(tmp_path / "r.html").stat().st_size
    twin = result.to_json(tmp_path / "r.json").stat().st_size
    assert html <= 3e6 and twin <= 5e6, (html, twin)


@pytest.mark.slow
def test_a_real_default_report_on_a_keras_application_has_no_plugin_error(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV3Small(
        weights=None, input_shape=(32, 32, 3), classes=4, minimalistic=True
    )
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
    result = keraslens.analyze(model, x)
    assert {"activation-maximization", "data-checks", "heatmaps"} <= set(result.plugins)
    assert [run.name for run in result.errors] == []
    assert all(run.seconds > 0 for run in result.plugins.values())
    html = result.to_html(tmp_path / "r.html").stat().st_size
    twin = result.to_json(tmp_path / "r.json").stat().st_size
    assert html <= 3e6 and twin <= 5e6, (html, twin)
