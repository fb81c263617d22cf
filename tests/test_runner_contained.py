"""A plugin cannot end a run, hang it, break the gate or break the report.

The misbehaving plugins are a third-party distribution (`tests/hostile_plugin`) installed
with pip into a folder of its own, which only these tests put on the path: the rest of the
suite, which runs every installed plugin, never sees them.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

import keraslens
from keraslens.errors import KeraslensError

HOSTILE = Path(__file__).parent / "hostile_plugin"
DEAD_UNITS = 3
"""Hidden units planted dead (zero weights, negative bias): dead-neurons must find them."""


@pytest.fixture(scope="module")
def hostile_site(tmp_path_factory) -> Path:
    """tests/hostile_plugin pip-installed into a folder of its own (entry points included)."""
    source = shutil.copytree(HOSTILE, tmp_path_factory.mktemp("src") / "hostile_plugin")
    site = tmp_path_factory.mktemp("hostile_site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q"]
        + ["--target", str(site), str(source)],
        check=True,
        capture_output=True,
    )
    return site


@pytest.fixture(scope="module")
def hostile(hostile_site):
    """The hostile plugins are installed for the tests of this module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(hostile_site))
        importlib.invalidate_caches()
        yield importlib.import_module("keraslens_hostile_plugin")
        sys.modules.pop("keraslens_hostile_plugin", None)
    importlib.invalidate_caches()


def _model() -> keras.Model:
    """Input (6,) -> Dense(8, relu) whose first DEAD_UNITS units never fire -> Dense(3)."""
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")
    outputs = keras.layers.Dense(3, activation="softmax", name="out")(hidden(inputs))
    model = keras.Model(inputs, outputs, name="planted")
    kernel, bias = hidden.get_weights()
    kernel[:, :DEAD_UNITS], bias[:DEAD_UNITS] = 0.0, -1.0
    hidden.set_weights([kernel, bias])
    return model


def _data() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(32, 6)).astype("float32")


def _run(plugins: list[str], **kwargs) -> keraslens.AnalysisResult:
    return keraslens.analyze(_model(), _data(), plugins=[*plugins, "dead-neurons"], **kwargs)


def _dead_units_found(result: keraslens.AnalysisResult) -> list[int]:
    run = result.plugins["dead-neurons"]
    assert run.error is None, run.error
    return [u for f in run.result.findings if f.layer == "hidden" for u in f.units]


def test_sys_exit_in_a_plugin_is_its_error_and_the_others_run(hostile):
    result = _run(["exits"], options={"exits": {"code": 0}})

    assert result.plugins["exits"].error.startswith("called sys.exit(0)")
    assert _dead_units_found(result) == list(range(DEAD_UNITS))
    assert result.status == "error"


def test_sys_exit_in_capture_settings_is_its_error_and_the_others_run(hostile):
    result = _run(["exits"], options={"exits": {"code": 2, "early": True}})

    assert result.plugins["exits"].error.startswith("not usable: called sys.exit(2)")
    assert _dead_units_found(result) == list(range(DEAD_UNITS))


def test_keyboard_interrupt_in_a_plugin_stops_the_run(hostile):
    with pytest.raises(KeyboardInterrupt):
        _run(["interrupts"])


def test_plugin_past_its_time_limit_is_reported_and_stopped(hostile):
    started = time.perf_counter()

    result = _run(["hangs"], time_limit=1.0)

    assert time.perf_counter() - started < 60
    assert "time limit of 1 s" in result.plugins["hangs"].error
    assert _dead_units_found(result) == list(range(DEAD_UNITS))
    deadline = time.monotonic() + 10
    while hostile.Hangs.spinning.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not hostile.Hangs.spinning.is_set(), "the abandoned plugin is still spinning"


def test_plugin_blocked_in_c_is_abandoned_at_its_time_limit(hostile):
    result = _run(["hangs"], options={"hangs": {"how": "sleep"}}, time_limit=1.0)

    assert "time limit of 1 s" in result.plugins["hangs"].error
    assert 1.0 <= result.plugins["hangs"].seconds < 10
    assert _dead_units_found(result) == list(range(DEAD_UNITS))


@pytest.mark.parametrize(
    ("part", "error"),
    [
        ("rows", "rows must be a list of rows, got str"),
        ("short-row", "row 0 must be a list of 2 values"),
        ("set", "data['units'] is a set"),
        ("cycle", "data['looped'][0] contains itself"),
        ("mutated", "Finding severity must be one of"),
        ("nan", "Finding value must be a finite number or None, got nan"),
        ("not-a-result", "analyze() returned dict, not a PluginResult"),
    ],
)
def test_malformed_result_is_its_plugins_error_and_the_report_still_renders(
    hostile, part, error, tmp_path
):
    result = _run(["malformed"], options={"malformed": {"part": part}})

    assert error in result.plugins["malformed"].error
    assert _dead_units_found(result) == list(range(DEAD_UNITS))
    twin = json.loads(result.to_json(tmp_path / "r.json").read_text())
    assert twin["plugins"]["malformed"]["status"] == "error"
    assert "This plugin could not run." in result.to_html(tmp_path / "r.html").read_text()


def test_plugin_prints_go_to_stderr_not_stdout(hostile, capsys):
    result = _run(["prints"])

    captured = capsys.readouterr()
    assert "not JSON" not in captured.out
    assert "this line is not JSON {" in captured.err
    assert result.plugins["prints"].result.findings[0].message == "Printed to stdout."


def test_plugin_changing_directory_is_changed_back(hostile, tmp_path):
    before = os.getcwd()

    result = _run(["prints"], options={"prints": {"chdir": str(tmp_path)}})

    assert result.plugins["prints"].error is None
    assert os.getcwd() == before


def test_bug_in_a_plugins_validate_is_its_error_and_the_others_run(hostile):
    result = _run(["validate-breaks"])

    assert result.plugins["validate-breaks"].error.startswith("not usable: ZeroDivisionError")
    assert _dead_units_found(result) == list(range(DEAD_UNITS))


def test_each_plugins_run_time_is_in_the_json_and_its_report_section(hostile, tmp_path):
    result = _run(["hangs"], options={"hangs": {"how": "sleep"}}, time_limit=1.5)

    twin = json.loads(result.to_json(tmp_path / "r.json").read_text())
    assert 1.5 <= twin["plugins"]["hangs"]["seconds"] < 10
    assert 0 < twin["plugins"]["dead-neurons"]["seconds"] < 1.5
    html = result.to_html(tmp_path / "r.html").read_text()
    assert f'took <span class="seconds">{twin["plugins"]["hangs"]["seconds"]:.1f} s</span>' in html


def test_sys_exit_in_a_plugin_does_not_end_training(hostile, tmp_path):
    callback = keraslens.LensCallback(
        _data(), plugins=["exits", "dead-neurons"], out_dir=tmp_path, report=None, verbose=0
    )
    model = _model()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    labels = np.zeros(len(_data()), "int64")

    history = model.fit(_data(), labels, epochs=2, verbose=0, callbacks=[callback])

    assert history.epoch == [0, 1]
    assert {e["source"] for e in callback.errors} == {"exits"}
    assert [e["epoch"] for e in callback.errors] == [0, 1, 2]


# The CLI, in real subprocesses ------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("cli")
    _model().save(folder / "model.keras")
    np.save(folder / "x.npy", _data())
    return folder / "model.keras", folder / "x.npy"


def _keraslens(hostile_site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(hostile_site), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-m", "keraslens", *args], capture_output=True, text=True, env=env
    )


@pytest.mark.slow
def test_sys_exit_in_a_plugin_cannot_pass_a_failing_check(hostile_site, files):
    model, data = files

    done = _keraslens(
        hostile_site,
        *("check", str(model), "--data", str(data), "-p", "exits", "-p", "dead-neurons"),
        *("--fail-on", "dead-neurons.dead_fraction>0.2", "--format", "json"),
    )

    assert done.returncode == 3, done.stderr
    verdict = json.loads(done.stdout)
    assert verdict["plugin_errors"]["exits"].startswith("called sys.exit(0)")
    assert [v["layer"] for v in verdict["violations"]] == ["hidden"]


@pytest.mark.slow
def test_printing_plugin_leaves_the_check_json_intact(hostile_site, files):
    model, data = files

    done = _keraslens(
        hostile_site,
        *("check", str(model), "--data", str(data), "-p", "prints", "-p", "dead-neurons"),
        *("--format", "json"),
    )

    verdict = json.loads(done.stdout)
    assert done.returncode == 0 and verdict["status"] == "pass", done.stderr
    assert "this line is not JSON {" in done.stderr
    assert "Printed to stdout." in [f["message"] for f in verdict["findings"]]


@pytest.mark.slow
def test_report_with_an_exiting_plugin_still_writes_the_report(hostile_site, files, tmp_path):
    model, data = files
    output = tmp_path / "report.html"

    done = _keraslens(
        hostile_site,
        *("report", str(model), "--data", str(data), "-p", "exits", "-p", "dead-neurons"),
        *("-o", str(output)),
    )

    assert done.returncode == 0, done.stderr
    assert "Plugin exits could not run: called sys.exit(0)" in done.stdout + done.stderr
    assert "This plugin could not run." in output.read_text()


# Results that look like a pass must be one ------------------------------------------------


def test_run_with_every_plugin_excluded_is_refused():
    with pytest.raises(KeraslensError, match="Every plugin is excluded"):
        keraslens.Analysis(_model(), plugins=["dead-neurons"], exclude=["dead-neurons"])


def test_minimal_run_of_expensive_plugins_only_is_refused():
    with pytest.raises(KeraslensError, match=r"Every selected plugin \(heatmaps\) is expensive"):
        keraslens.Analysis(_model(), plugins=["heatmaps"], minimal=True)


def test_heatmaps_layer_the_model_lacks_is_refused_listing_its_layers():
    with pytest.raises(KeraslensError) as refused:
        keraslens.Analysis(
            _model(), plugins=["heatmaps"], options={"heatmaps": {"layer": "nosuchlayer"}}
        )

    message = str(refused.value)
    assert message.startswith("heatmaps: ") and "'nosuchlayer' not found" in message
    assert "Layers there: hidden, out" in message


def test_heatmaps_class_index_beyond_the_classes_is_refused():
    with pytest.raises(KeraslensError, match=r"class_index=99 .* which has 3: use 0 to 2"):
        keraslens.Analysis(
            _model(), plugins=["heatmaps"], options={"heatmaps": {"class_index": 99}}
        )


def test_heatmaps_options_the_model_has_are_accepted():
    options = {"heatmaps": {"layer": "hidden", "class_index": 2}}

    analysis = keraslens.Analysis(_model(), plugins=["heatmaps"], options=options)

    assert [run.name for run in analysis.runs] == ["heatmaps"]


def test_activation_maximization_layer_the_model_lacks_is_refused():
    options = {"activation-maximization": {"layers": ["hidden", "nosuchlayer"]}}

    with pytest.raises(KeraslensError, match="activation-maximization: .*'nosuchlayer' not found"):
        keraslens.Analysis(_model(), plugins=["activation-maximization"], options=options)
