"""A third-party plugin, installed with pip as its own distribution, is found and run."""

from __future__ import annotations

import fcntl
import importlib
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import keras
import numpy as np
import pytest

import keraslens
from keraslens import registry

EXAMPLE = Path(__file__).parent / "example_plugin"
DISTRIBUTION = "keraslens-example-plugin"


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, capture_output=True)


@contextmanager
def _locked(path: Path):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def example_plugin_installed(tmp_path_factory):
    """pip-install tests/example_plugin into this environment; uninstall it afterwards.

    pytest-xdist workers share the installation: a count of users, kept under a file
    lock in the run's temporary directory (the workers' common parent), says when the
    last one is done.
    """
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    lock, users = shared / "example-plugin.lock", shared / "example-plugin.users"
    with _locked(lock):
        count = int(users.read_text()) if users.exists() else 0
        if count == 0:
            # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
            source = shutil.copytree(EXAMPLE, tmp_path_factory.mktemp("src") / "example_plugin")
            _pip("install", "--no-deps", "--no-build-isolation", "-q", str(source))
        users.write_text(str(count + 1))
    importlib.invalidate_caches()
    yield
    with _locked(lock):
        count = int(users.read_text()) - 1
        users.write_text(str(count))
        if count == 0:
            _pip("uninstall", "-y", "-q", DISTRIBUTION)
    importlib.invalidate_caches()


def _model() -> keras.Model:
    inputs = keras.Input((6,))
    return keras.Model(inputs, keras.layers.Dense(5, activation="relu", name="hidden")(inputs))


def _data() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(64, 6)).astype("float32")


def test_pip_installed_plugin_is_discovered_through_its_entry_point(example_plugin_installed):
    info = {i.name: i for i in registry.available()}["unit-count"]

    assert info.status == "loaded", info.error
    assert (info.distribution, info.version) == (DISTRIBUTION, "0.1.0")
    assert info.target == "keraslens_example_plugin:UnitCount"
    assert info.title == "Units per layer"


def test_pip_installed_plugin_runs_and_its_result_is_present(example_plugin_installed):
    model, x = _model(), _data()

    result = keraslens.analyze(model, x, plugins=["unit-count"], minimal=True)

    entry = result.to_dict()["plugins"]["unit-count"]
    fired = int((model(x).numpy() > 0).any(axis=0).sum())
    assert entry["status"] == "ok"
    assert entry["distribution"] == DISTRIBUTION
    assert entry["layers"] == {"hidden": {"units": 5, "fired": fired}}
    assert entry["options"] == {"min_units": 1, "threshold": 0.5}
