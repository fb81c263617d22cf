"""The three built-in analyses together: installed, stable JSON, deterministic, small figures."""

from __future__ import annotations

import json
from importlib.metadata import entry_points
from pathlib import Path

import keras
import numpy as np
import pytest

import keraslens
from keraslens import registry
from plugins import activation_stats

BUILTIN = ["activation-stats", "dead-neurons", "saturation"]


def _model() -> keras.Model:
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(inputs)
    return keras.Model(inputs, keras.layers.Dense(8, activation="tanh", name="squashed")(hidden))


def _cnn() -> keras.Model:
    """A small CNN: two ReLU convolutions, pooling, a tanh layer and a softmax."""
    inputs = keras.Input((8, 8, 3))
    x = inputs
    for i in range(2):
        x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name=f"conv{i}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(128, activation="tanh", name="dense")(x)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="out")(x))


def _data(shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(6).normal(size=shape).astype("float32")


def _without_date_and_timings(result: keraslens.AnalysisResult) -> dict:
    data = result.to_dict()
    data["meta"].pop("date")
    for entry in data["plugins"].values():
        entry.pop("seconds")
    return data


def test_builtin_analyses_are_installed_and_load():
    infos = {info.name: info for info in registry.available()}

    for name in BUILTIN:
        assert infos[name].status == "loaded", infos[name].error
        assert infos[name].distribution == "keraslens"


def test_builtin_entry_points_name_modules_of_the_plugins_folder():
    """From a source checkout (its root on sys.path) they import the same files."""
    root = Path(__file__).resolve().parents[1]
    builtin = [e for e in entry_points(group=registry.GROUP) if e.dist.name == "keraslens"]

    assert {e.name for e in builtin} >= set(BUILTIN)
    for entry in builtin:
        assert (root / (entry.module.replace(".", "/") + ".py")).is_file(), entry.value


@pytest.fixture(scope="module")
def minimal_run() -> keraslens.AnalysisResult:
    return keraslens.analyze(_model(), _data((64, 8)), plugins=BUILTIN, minimal=True)


def test_json_result_keeps_the_documented_keys(minimal_run, tmp_path):
    plugins = json.loads(minimal_run.to_json(tmp_path / "result.json").read_text())["plugins"]

    dead = plugins["dead-neurons"]["layers"]["hidden"]
    assert {"dead_units", "dead_fraction", "nearly_dead_units", "nearly_dead_fraction"} <= set(dead)
    saturated = plugins["saturation"]["layers"]["squashed"]
    assert {"saturated_fraction", "units", "bound"} <= set(saturated)
    assert len(saturated["units"]) == len(saturated["bound"]) == 8
    stats = plugins["activation-stats"]["layers"]["hidden"]
    assert {"mean", "std", "sparsity", "nan_count", "inf_count", "histogram"} <= set(stats)
    assert all(plugins[name]["findings"] == [] for name in BUILTIN)


def test_same_input_gives_identical_results_and_figures():
    model, x = _model(), _data((64, 8))

    first, second = (keraslens.analyze(model, x, plugins=BUILTIN) for _ in range(2))

    assert _without_date_and_timings(first) == _without_date_and_timings(second)
    for name in BUILTIN:
        pngs = [[f.png for f in run.plugins[name].result.figures] for run in (first, second)]
        assert pngs[0] == pngs[1] and pngs[0]


def test_minimal_run_draws_no_figures(minimal_run):
    assert all(minimal_run.plugins[name].result.figures == [] for name in BUILTIN)


def test_figures_of_a_cnn_stay_small():
    model = _cnn()
    # Saturate the tanh layer so every plugin draws its per-layer figures.
    dense = model.get_layer("dense")
    dense.set_weights([w * 100 for w in dense.get_weights()])

    result = keraslens.analyze(model, _data((32, 8, 8, 3)), plugins=BUILTIN)

    sizes = {name: [len(f.png) for f in result.plugins[name].result.figures] for name in BUILTIN}
    assert sum(map(sum, sizes.values())) < 400_000, sizes
    assert max(map(max, sizes.values())) < 60_000, sizes


def test_per_layer_figures_are_capped_and_the_overview_says_so(monkeypatch):
    monkeypatch.setattr(activation_stats, "LAYER_FIGURES", 1)

    result = keraslens.analyze(_model(), _data((64, 8)), plugins=["activation-stats"])

    overview, *per_layer = result.plugins["activation-stats"].result.figures
    assert [figure.layer for figure in per_layer] == ["hidden"]
    assert "the 1 of 2 layers with the most non-finite, then the most zero" in overview.caption


@pytest.mark.parametrize(
    ("plugin", "option", "value"),
    [("saturation", "epsilon", 0.5), ("dead-neurons", "nearly_dead_rate", 2.0)],
)
def test_out_of_range_option_is_rejected_before_any_work(plugin, option, value):
    with pytest.raises(ValueError, match=f"{plugin}.{option}"):
        keraslens.analyze(_model(), None, plugins=[plugin], options={plugin: {option: value}})
