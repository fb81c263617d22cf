"""LensCallback never stops training over its own business: real `model.fit` runs on digits."""

from __future__ import annotations

import json
import os
import warnings

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

from keraslens import registry
from keraslens.callback import LensCallback
from keraslens.errors import KeraslensError
from keraslens.plugin import Option, Plugin, PluginResult
from keraslens.training.history import HISTORY_FILE

PROBE = 128


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    return (x / 16).astype("float32"), y


def mlp(learning_rate: float = 0.05) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(32, activation="relu", name="h1"),
            keras.layers.Dense(10, activation="softmax", name="out"),
        ]
    )
    model.compile(keras.optimizers.SGD(learning_rate), "sparse_categorical_crossentropy")
    return model


def fit(model, digits, callbacks, epochs=2, **kwargs):
    x, y = digits
    return model.fit(x, y, epochs=epochs, batch_size=64, verbose=0, callbacks=callbacks, **kwargs)


def fit_warnings(model, digits, callbacks, **kwargs):
    """The fit's history and the keraslens RuntimeWarnings it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = fit(model, digits, callbacks, **kwargs)
    messages = [
        str(w.message)
        for w in caught
        if issubclass(w.category, RuntimeWarning) and "keraslens" in str(w.message)
    ]
    return history, messages


def h1_epochs(callback):
    return [row["epoch"] for row in callback.history if row["layer"] == "h1"]


def logged(out_dir):
    return [json.loads(line) for line in (out_dir / HISTORY_FILE).read_bytes().splitlines()]


@pytest.mark.parametrize("report", ["final", None])
def test_out_dir_under_a_regular_file_warns_once_and_training_completes(digits, tmp_path, report):
    (tmp_path / "file").write_text("not a folder")
    callback = LensCallback(
        digits[0][:PROBE],
        plugins=["dead-neurons"],
        out_dir=tmp_path / "file" / "logs",
        report=report,
    )
    history, messages = fit_warnings(mlp(), digits, [callback], epochs=3)
    assert history.epoch == [0, 1, 2]
    assert h1_epochs(callback) == [0, 1, 2, 3]
    assert len(messages) == 1 and "cannot write" in messages[0]
    assert callback.errors == []
    assert (tmp_path / "file").read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_dir_warns_once_and_training_completes(digits, tmp_path):
    tmp_path.chmod(0o555)
    try:
        callback = LensCallback(digits[0][:PROBE], plugins=["dead-neurons"], out_dir=tmp_path)
        history, messages = fit_warnings(mlp(), digits, [callback])
    finally:
        tmp_path.chmod(0o755)
    assert history.epoch == [0, 1]
    assert len(messages) == 1 and "cannot write" in messages[0]
    assert list(tmp_path.iterdir()) == []


def test_a_log_that_fails_mid_training_warns_once_and_the_history_goes_on(digits, tmp_path):
    (tmp_path / HISTORY_FILE).symlink_to("/dev/full")  # every write: "No space left on device"
    callback = LensCallback(
        digits[0][:PROBE], plugins=["dead-neurons"], out_dir=tmp_path, report=None
    )
    history, messages = fit_warnings(mlp(), digits, [callback], epochs=3)
    assert history.epoch == [0, 1, 2]
    assert h1_epochs(callback) == [0, 1, 2, 3]
    assert len(messages) == 1 and "cannot write" in messages[0]


def test_resume_skips_corrupt_lines_with_one_warning_that_counts_them(digits, tmp_path):
    probe = digits[0][:PROBE]
    model = mlp()
    first = LensCallback(probe, plugins=["dead-neurons"], out_dir=tmp_path, report=None)
    fit(model, digits, [first], epochs=3)
    lines = (tmp_path / HISTORY_FILE).read_bytes().splitlines(keepends=True)
    corrupt = [b"\xff\xfe not UTF-8\n", b"[1, 2]\n", b"not json\n", b'{"kind": "layer"}\n']
    (tmp_path / HISTORY_FILE).write_bytes(b"".join(lines[:2] + corrupt + lines[2:]))
    resumed = LensCallback(probe, plugins=["dead-neurons"], out_dir=tmp_path, report=None)
    history, messages = fit_warnings(model, digits, [resumed], epochs=4, initial_epoch=2)
    assert history.epoch == [2, 3]
    assert len(messages) == 1 and "skipped 4 line(s)" in messages[0]
    assert h1_epochs(resumed) == [0, 1, 2, 3, 4]
    assert [r for r in resumed.history if r["epoch"] <= 2] == [
        r for r in first.history if r["epoch"] <= 2
    ]
    assert [e["epoch"] for e in logged(tmp_path) if e.get("layer") == "h1"] == [0, 1, 2, 3, 4]


def test_a_second_callback_on_an_out_dir_being_written_is_refused_at_construction(digits, tmp_path):
    refused = []

    def construct_another(epoch, logs):
        try:
            LensCallback(digits[0][:PROBE], plugins=["dead-neurons"], out_dir=tmp_path)
        except KeraslensError as error:
            refused.append(str(error))

    writer = LensCallback(
        digits[0][:PROBE], plugins=["dead-neurons"], out_dir=tmp_path, report=None
    )
    fit(mlp(), digits, [writer, keras.callbacks.LambdaCallback(on_epoch_end=construct_another)])
    assert len(refused) == 2
    assert "is being written by another LensCallback; give each callback its own" in refused[0]
    LensCallback(digits[0][:PROBE], plugins=["dead-neurons"], out_dir=tmp_path)  # free again


def test_two_callbacks_in_one_fit_leave_one_intact_log(digits, tmp_path):
    probe = digits[0][:PROBE]
    one = LensCallback(probe, plugins=["dead-neurons"], out_dir=tmp_path, report=None)
    two = LensCallback(probe, plugins=["dead-neurons"], out_dir=tmp_path, report=None)
    history, messages = fit_warnings(mlp(), digits, [one, two], epochs=3)
    assert history.epoch == [0, 1, 2]
    assert len(messages) == 1 and "being written by another LensCallback" in messages[0]
    assert logged(tmp_path) == one._record.entries
    assert h1_epochs(two) == [0, 1, 2, 3]


def test_fail_fast_says_training_stops_and_stops_it(digits, tmp_path, capsys):
    callback = LensCallback(
        digits[0][:PROBE],
        plugins=["dead-neurons"],
        out_dir=tmp_path,
        report=None,
        fail_fast=True,
        verbose=1,
    )
    history = fit(mlp(3.0), digits, [callback], epochs=10)
    printed = [line for line in capsys.readouterr().out.splitlines() if "keraslens" in line]
    assert history.epoch == [0]
    assert printed and all(line.endswith("; training stops (fail_fast=True).") for line in printed)


class Exploding(Plugin):
    name = "exploding"
    title = "Exploding"

    def analyze(self, ctx):
        raise RuntimeError("boom")


class PeakOutput(Plugin):
    """A third-party plugin that adds a figure to the training history."""

    name = "peak-output"
    title = "Peak output"
    options = {"limit": Option(float, 100.0, "Peak above which a layer alerts.", min=0.0)}
    training_metrics = {"peak": "limit"}

    def analyze(self, ctx):
        layers = {key: {"peak": float(s.max.max())} for key, s in ctx.stats.items()}
        return PluginResult(data={"layers": layers})


@pytest.fixture
def installed(monkeypatch):
    """Register extra plugins through the entry-point discovery keraslens uses."""

    def install(*classes):
        found = registry.entry_points

        class EntryPoint:
            def __init__(self, cls):
                self.name, self.value, self.dist, self._cls = cls.name, "tests:x", None, cls

            def load(self):
                return self._cls

        extra = [EntryPoint(cls) for cls in classes]
        monkeypatch.setattr(registry, "entry_points", lambda group: [*found(group=group), *extra])

    return install


@pytest.mark.parametrize(("fail_fast", "epochs"), [(True, [0]), (False, [0, 1])])
def test_failed_plugin_message_says_what_happens_to_training(
    digits, tmp_path, capsys, installed, fail_fast, epochs
):
    installed(Exploding)
    callback = LensCallback(
        digits[0][:PROBE],
        plugins=["exploding"],
        out_dir=tmp_path,
        report=None,
        fail_fast=fail_fast,
        verbose=1,
    )
    history = fit(mlp(), digits, [callback])
    printed = [line for line in capsys.readouterr().out.splitlines() if "keraslens" in line]
    assert history.epoch == epochs
    ending = "training stops (fail_fast=True)." if fail_fast else "training goes on."
    assert printed[0] == (
        f"Epoch 0: keraslens plugin 'exploding' failed (RuntimeError: boom); {ending}"
    )


def test_a_plugin_figure_joins_the_history_with_its_threshold_option(digits, tmp_path, installed):
    installed(PeakOutput)
    probe = digits[0][:PROBE]
    callback = LensCallback(
        probe, plugins=["peak-output"], options={"peak-output": {"limit": 0.5}}, out_dir=tmp_path
    )
    model = mlp()
    fit(model, digits, [callback])
    h1 = keras.Model(model.inputs, model.get_layer("h1").output).predict(probe, verbose=0)
    last = [row for row in callback.history if row["layer"] == "h1"][-1]
    assert last["peak"] == pytest.approx(float(h1.max()))
    assert callback.thresholds == {"peak": 0.5}
    assert ("h1", "peak", 0) in [(a["layer"], a["metric"], a["epoch"]) for a in callback.alerts]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["training"]["history"][-1]["peak"] == pytest.approx(callback.history[-1]["peak"])


def test_a_callback_refit_after_an_interrupted_fit_keeps_writing_its_log(digits, tmp_path):
    callback = LensCallback(
        digits[0][:PROBE], plugins=["dead-neurons"], out_dir=tmp_path, report=None
    )

    def interrupt(epoch, logs):
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        fit(mlp(), digits, [callback, keras.callbacks.LambdaCallback(on_epoch_end=interrupt)])
    history, messages = fit_warnings(mlp(), digits, [callback])
    assert history.epoch == [0, 1] and messages == []
    assert [e["epoch"] for e in logged(tmp_path) if e.get("layer") == "h1"] == [0, 1, 2]


class BadFigures(Plugin):
    name = "bad-figures"
    title = "Bad figures"
    training_metrics = {"peak": "no_such_option"}

    def analyze(self, ctx):
        return PluginResult()


def test_a_plugin_naming_a_missing_threshold_option_is_refused_at_construction(installed):
    installed(BadFigures)
    with pytest.raises(KeraslensError, match="Plugin 'bad-figures' declares training_metrics"):
        LensCallback(np.zeros((4, 64), "float32"), plugins=["bad-figures"])
