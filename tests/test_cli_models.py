"""Models from the command line: no code runs unasked, custom objects by --import, and
what the report says about the data."""

from __future__ import annotations

import json
import sys

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from test_report_fixtures import DeadUnits, install_plugins, tiny_data, tiny_model

from keraslens import io
from keraslens.cli import cli
from keraslens.errors import KeraslensError


@pytest.fixture(autouse=True)
def fakes(monkeypatch):
    install_plugins(monkeypatch, DeadUnits)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sm")
    tiny_model().export(folder / "sm", verbose=False)
    np.save(folder / "x.npy", tiny_data())
    return folder


def test_a_saved_model_directory_needs_unsafe_and_says_why(saved_model, tmp_path):
    out = invoke(
        "report", saved_model / "sm", "--data", saved_model / "x.npy", "-o", tmp_path / "r.html"
    )
    assert out.exit_code == 2 and not (tmp_path / "r.html").exists()
    assert "loading a SavedModel runs its TensorFlow graph" in out.stderr
    assert "pass --unsafe" in out.stderr
    allowed = invoke(
        "report",
        saved_model / "sm",
        "--data",
        saved_model / "x.npy",
        "--unsafe",
        "-q",
        "-o",
        tmp_path / "r.html",
    )
    assert allowed.exit_code == 0, allowed.output


def test_a_tfsmlayer_in_a_keras_file_is_refused_by_its_name(saved_model, tmp_path):
    inputs = keras.Input((4,))
    wrapped = keras.layers.TFSMLayer(str(saved_model / "sm"), call_endpoint="serve")(inputs)
    keras.Model(inputs, wrapped).save(tmp_path / "wrapped.keras")
    with pytest.raises(KeraslensError, match="carries a TFSMLayer") as raised:
        io.load_model(tmp_path / "wrapped.keras")
    assert "Lambda" not in str(raised.value)


LAYERS_MODULE = """
import keras

@keras.saving.register_keras_serializable(package="cli_test")
class Doubling(keras.layers.Layer):
    def call(self, x):
        return 2 * x
"""


@pytest.fixture
def custom_model(tmp_path, monkeypatch):
    """A functional model with a registered custom layer whose module is then forgotten."""
    (tmp_path / "cli_test_layers.py").write_text(LAYERS_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import cli_test_layers

    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(3, activation="relu", name="hidden")(inputs)
    keras.Model(inputs, cli_test_layers.Doubling()(hidden)).save(tmp_path / "custom.keras")
    np.save(tmp_path / "x.npy", tiny_data())
    del keras.saving.get_custom_objects()["cli_test>Doubling"]
    del sys.modules["cli_test_layers"]
    return tmp_path


def test_import_registers_custom_objects_before_the_model_loads(custom_model):
    out = invoke("report", "custom.keras", "--data", "x.npy", "--import", "cli_test_layers", "-q")
    assert out.exit_code == 0, out.output
    assert (custom_model / "report.html").is_file()


def test_without_import_the_message_names_import_and_not_a_functional_model(custom_model):
    out = invoke("report", "custom.keras", "--data", "x.npy")
    assert out.exit_code == 2
    assert "built from 'Doubling'" in out.stderr and "--import MODULE" in out.stderr
    assert "functional" not in out.stderr


def test_an_import_that_raises_names_the_module_and_its_error(custom_model):
    (custom_model / "broken_layers.py").write_text("raise RuntimeError('no GPU here')\n")
    out = invoke("report", "custom.keras", "--data", "x.npy", "--import", "broken_layers")
    assert out.exit_code == 2 and "Traceback" not in out.output
    assert "Importing --import 'broken_layers' raised RuntimeError: no GPU here" in out.stderr


def test_non_finite_inputs_are_stated_in_the_json_the_report_and_a_warning(tmp_path):
    tiny_model().save(tmp_path / "m.keras")
    x = tiny_data().copy()
    x[[3, 3, 10], [0, 1, 2]] = [np.nan, np.inf, np.nan]
    np.save(tmp_path / "x.npy", x)
    out = invoke(
        "report",
        tmp_path / "m.keras",
        "--data",
        tmp_path / "x.npy",
        "-o",
        tmp_path / "r.html",
        "--json",
        tmp_path / "r.json",
    )
    assert out.exit_code == 0, out.output
    note = "3 non-finite values (NaN or Inf) in 2 samples"
    assert f"Warning: {tmp_path / 'x.npy'}: {note}" in out.stderr
    meta = json.loads((tmp_path / "r.json").read_text())["meta"]
    assert meta["non_finite"] == {
        "values": 3,
        "samples": 2,
        "inputs": [meta["non_finite"]["inputs"][0]],
    }
    assert note in meta["data_source"] and note in (tmp_path / "r.html").read_text()
