"""LensCallback: real `model.fit` runs on scikit-learn's digits, checked against the activations."""

from __future__ import annotations

import json
import math
import re
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

import keraslens.registry as registry
from keraslens.callback import LensCallback
from keraslens.capture.stats import BAND_KEYS, BAND_SIGMAS
from keraslens.errors import KeraslensError
from keraslens.plugin import Plugin
from keraslens.training.history import HISTORY_FILE

PLUGINS = ["dead-neurons", "saturation", "activation-stats"]
EPOCHS = 4
PROBE = 256


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    return (x / 16).astype("float32"), y


def mlp(learning_rate: float) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(64, activation="relu", name="h1"),
            keras.layers.Dense(64, activation="relu", name="h2"),
            keras.layers.Dense(10, activation="softmax", name="out"),
        ]
    )
    model.compile(keras.optimizers.SGD(learning_rate), "sparse_categorical_crossentropy")
    return model


def fit(model, digits, callback, epochs=EPOCHS, **kwargs):
    x, y = digits
    return model.fit(x, y, epochs=epochs, batch_size=64, verbose=0, callbacks=[callback], **kwargs)


def rows_of(callback, layer):
    return [row for row in callback.history if row["layer"] == layer]


def activations(model, layer, x):
    return keras.Model(model.inputs, model.get_layer(layer).output).predict(x, verbose=0)


@pytest.fixture(scope="module")
def sane_run(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("sane")
    model = mlp(0.05)
    callback = LensCallback(
        digits[0][:PROBE], plugins=PLUGINS, out_dir=out, report=None, tensorboard=True
    )
    fit(model, digits, callback)
    return model, callback, out


@pytest.fixture(scope="module")
def destructive_run(digits, tmp_path_factory):
    model = mlp(3.0)
    callback = LensCallback(
        digits[0][:PROBE], plugins=PLUGINS, out_dir=tmp_path_factory.mktemp("bad"), report=None
    )
    fit(model, digits, callback)
    return model, callback


def test_destructive_learning_rate_kills_units_and_fires_the_alert(destructive_run):
    _, callback = destructive_run
    h2 = [row["dead_fraction"] for row in rows_of(callback, "h2")]
    assert [row["epoch"] for row in rows_of(callback, "h2")] == [0, 1, 2, 3, 4]
    assert h2[0] < 0.1  # 4 of 64 units at initialisation
    assert min(h2[1:]) > 0.9  # one epoch at lr=3 kills nearly all of them
    alerts = [(a["layer"], a["metric"], a["epoch"]) for a in callback.alerts]
    assert ("h2", "dead_fraction", 1) in alerts
    assert ("h1", "dead_fraction", 1) in alerts
    assert rows_of(callback, "h2")[1]["alerts"] == ["dead_fraction"]
    assert callback.training_section()["first_crossing"]["h2"] == {"dead_fraction": 1}


def test_sane_learning_rate_keeps_units_alive_without_alert(sane_run):
    _, callback, _ = sane_run
    for layer in ("h1", "h2"):
        dead = [row["dead_fraction"] for row in rows_of(callback, layer)]
        assert len(dead) == EPOCHS + 1
        assert max(dead) <= 0.2
    assert callback.alerts == []
    assert callback.errors == []


def test_final_figures_match_the_activations_of_the_trained_model(sane_run, digits):
    model, callback, _ = sane_run
    outputs = activations(model, "h1", digits[0][:PROBE])
    last = rows_of(callback, "h1")[-1]
    assert last["dead_fraction"] == pytest.approx(np.mean((outputs > 0).sum(axis=0) == 0))
    assert last["firing_rate"] == pytest.approx(np.mean(outputs > 0))
    assert last["mean"] == pytest.approx(outputs.mean(), rel=1e-4)
    assert last["std"] == pytest.approx(outputs.std(), rel=1e-4)


def test_bands_are_the_normal_cdf_percentiles_of_the_activations(sane_run, digits):
    model, callback, _ = sane_run
    outputs = activations(model, "out", digits[0][:PROBE]).ravel()
    band = callback.bands["out"][-1]
    assert list(band) == ["epoch", "step", *BAND_KEYS]
    assert band["epoch"] == EPOCHS
    assert band["min"] == pytest.approx(outputs.min(), rel=1e-5)
    assert band["max"] == pytest.approx(outputs.max(), rel=1e-5)
    for sigma, key in zip(BAND_SIGMAS, BAND_KEYS[1:-1], strict=True):
        expected = np.percentile(outputs, 100 * 0.5 * (1 + math.erf(sigma / math.sqrt(2))))
        # Histogram buckets are at most 25% wide relative to their value.
        assert band[key] == pytest.approx(expected, rel=0.25), key


def test_history_jsonl_holds_every_row(sane_run):
    _, callback, out = sane_run
    lines = [json.loads(line) for line in (out / HISTORY_FILE).read_text().splitlines()]
    layers = [line for line in lines if line["kind"] == "layer"]
    assert len(layers) == 3 * (EPOCHS + 1)
    for line, row in zip(layers, callback.history, strict=True):
        band = line.pop("band")
        line.pop("kind")
        assert line == row
        assert band == callback.bands[row["layer"]][row["epoch"]]


def test_tensorboard_events_hold_the_scalars_and_histograms(sane_run):
    _, callback, out = sane_run
    scalars, histograms = {}, {}
    for path in out.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                array = tf.make_ndarray(value.tensor)
                target = histograms if value.tag.endswith("/activations") else scalars
                target[(value.tag, event.step)] = array
    for row in callback.history:
        for metric in ("dead_fraction", "mean", "std", "firing_rate"):
            tag = f"keraslens/{row['layer']}/{metric}"
            assert float(scalars[(tag, row["epoch"])]) == pytest.approx(row[metric], rel=1e-6)
    buckets = histograms[("keraslens/h2/activations", EPOCHS)]
    assert buckets.shape == (30, 3)
    assert buckets[:, 2].sum() == callback.result.stats["h2"].hist_counts.sum()
    assert buckets[0, 0] == pytest.approx(callback.bands["h2"][-1]["min"])


class Exploding(Plugin):
    name = "exploding"
    title = "Exploding"

    def analyze(self, ctx):
        raise RuntimeError("boom")


class _EntryPoint:
    name, value, dist = "exploding", "tests:Exploding", None

    def load(self):
        return Exploding


def test_raising_plugin_is_recorded_and_fit_completes(digits, tmp_path, monkeypatch):
    installed = registry.entry_points
    monkeypatch.setattr(
        registry, "entry_points", lambda group: [*installed(group=group), _EntryPoint()]
    )
    callback = LensCallback(
        digits[0][:PROBE], plugins=["dead-neurons", "exploding"], out_dir=tmp_path, report=None
    )
    history = fit(mlp(0.05), digits, callback, epochs=2)
    assert history.epoch == [0, 1]
    assert [(e["epoch"], e["source"]) for e in callback.errors] == [
        (0, "exploding"),
        (1, "exploding"),
        (2, "exploding"),
    ]
    assert "RuntimeError: boom" in callback.errors[0]["error"]
    assert [row["epoch"] for row in rows_of(callback, "h1")] == [0, 1, 2]


def test_fail_fast_stops_training_at_the_first_alert(digits, tmp_path):
    callback = LensCallback(
        digits[0][:PROBE], plugins=["dead-neurons"], out_dir=tmp_path, report=None, fail_fast=True
    )
    history = fit(mlp(3.0), digits, callback, epochs=10)
    assert history.epoch == [0]
    assert {a["epoch"] for a in callback.alerts} == {1}


def test_alert_prints_one_line_unless_silenced(digits, tmp_path, capsys):
    loud = LensCallback(
        digits[0][:PROBE], plugins=["dead-neurons"], out_dir=tmp_path / "a", report=None, verbose=1
    )
    fit(mlp(3.0), digits, loud, epochs=1)
    printed = [line for line in capsys.readouterr().out.splitlines() if "keraslens" in line]
    assert printed == [
        f"Epoch 1: keraslens: layer {a['layer']!r} dead fraction {a['value']:.3f} > 0.2."
        for a in loud.alerts
    ]
    quiet = LensCallback(digits[0][:PROBE], plugins=["dead-neurons"], out_dir=tmp_path / "b")
    fit(mlp(3.0), digits, quiet, epochs=1)  # verbose="auto" follows fit's verbose=0
    assert "keraslens" not in capsys.readouterr().out
    assert len(quiet.alerts) == len(loud.alerts) > 0


def test_resumed_training_continues_the_history(digits, tmp_path):
    probe = digits[0][:PROBE]
    model = mlp(0.05)
    first = LensCallback(probe, plugins=["dead-neurons"], out_dir=tmp_path, report=None)
    fit(model, digits, first, epochs=3)
    resumed = LensCallback(probe, plugins=["dead-neurons"], out_dir=tmp_path, report=None)
    fit(model, digits, resumed, epochs=4, initial_epoch=2)
    assert [row["epoch"] for row in rows_of(resumed, "h1")] == [0, 1, 2, 3, 4]
    assert rows_of(resumed, "h1")[:3] == rows_of(first, "h1")[:3]
    assert rows_of(resumed, "h1")[3]["step"] == 3 * 29
    logged = [json.loads(line) for line in (tmp_path / HISTORY_FILE).read_text().splitlines()]
    assert [e["epoch"] for e in logged if e["layer"] == "h1"] == [0, 1, 2, 3, 4]


def test_every_steps_analyses_at_multiples_of_the_step(digits, tmp_path):
    callback = LensCallback(
        digits[0][:PROBE], every_steps=20, plugins=["dead-neurons"], out_dir=tmp_path, report=None
    )
    fit(mlp(0.05), digits, callback, epochs=2)  # 29 steps per epoch
    assert [(r["epoch"], r["step"]) for r in rows_of(callback, "h1")] == [
        (0, 0),
        (1, 20),
        (2, 40),
    ]


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(64, activation="relu", name="hidden")
        self.head = keras.layers.Dense(10, activation="softmax", name="head")

    def call(self, x):
        return self.head(self.hidden(x))


def test_subclassed_model_in_a_strategy_scope_with_validation_data(digits, tmp_path):
    x, y = digits
    keras.utils.set_random_seed(0)
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        model = Subclassed()
        model.compile("adam", "sparse_categorical_crossentropy")
    callback = LensCallback(x[:PROBE], plugins=["dead-neurons"], out_dir=tmp_path, report=None)
    history = fit(model, digits, callback, epochs=2, validation_data=(x[:200], y[:200]))
    assert callback.errors == []
    assert [row["layer"] for row in callback.history if row["epoch"] == 2] == ["hidden", "head"]
    hidden = model.hidden(tf.constant(x[:PROBE])).numpy()
    assert rows_of(callback, "hidden")[-1]["firing_rate"] == pytest.approx(np.mean(hidden > 0))
    assert len(history.history["val_loss"]) == 2


def test_final_report_json_holds_the_training_section(digits, tmp_path):
    callback = LensCallback(digits[0][:PROBE], every=2, plugins=["dead-neurons"], out_dir=tmp_path)
    fit(mlp(0.05), digits, callback, epochs=3)
    training = json.loads((tmp_path / "report.json").read_text())["training"]
    assert [row["epoch"] for row in training["history"] if row["layer"] == "h1"] == [0, 2, 3]
    assert [band["epoch"] for band in training["bands"]["h1"]] == [0, 2, 3]
    assert training["thresholds"] == {"dead_fraction": 0.2}
    assert training["alerts"] == [] and training["first_crossing"] == {}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"every": 0}, "every must be a positive integer, got 0"),
        ({"every_steps": 2.5}, "every_steps must be a positive integer, got 2.5"),
        ({"report": "html"}, "report must be 'final', 'every' or None, got 'html'"),
        ({"thresholds": {"dead": 0.1}}, "unknown figure 'dead'; allowed: dead_fraction"),
        ({"thresholds": {"std": "x"}}, "thresholds['std'] must be a finite number, got 'x'"),
        ({"plugins": ["nope"]}, "Unknown plugin 'nope'"),
        ({"options": {"dead-neurons": {"threshold": 2}}}, "must be <= 1.0, got 2.0"),
        ({"verbose": 3}, "verbose must be 'auto', 0, 1 or 2, got 3"),
    ],
)
def test_invalid_arguments_are_rejected_with_the_argument_named(kwargs, message):
    kwargs.setdefault("plugins", ["dead-neurons"])
    with pytest.raises(ValueError, match=re.escape(message)):
        LensCallback(np.zeros((4, 64), "float32"), **kwargs)


def test_tensorboard_without_the_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(KeraslensError, match=r'pip install "keraslens\[tensorboard\]"'):
        LensCallback(np.zeros((4, 64), "float32"), plugins=["dead-neurons"], tensorboard=True)
