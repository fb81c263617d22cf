"""A broken plugin (import error, wrong API version, raising) does not stop the others."""

from __future__ import annotations

import sys
import textwrap
from importlib.metadata import EntryPoint

import keras
import numpy as np
import pytest

import keraslens
from keraslens import registry

BROKEN = {
    "kl_broken_import": "import keraslens_no_such_module  # noqa: F401\n",
    "kl_old_api": """
        from keraslens.plugin import Plugin

        class OldApi(Plugin):
            name = "old-api"
            api_version = 99
    """,
    "kl_raises": """
        from keraslens.plugin import Plugin

        class Raises(Plugin):
            name = "raises"

            def analyze(self, ctx):
                raise RuntimeError("boom: the analysis failed")
    """,
}

ENTRIES = [
    ("broken-import", "kl_broken_import:Anything"),
    ("old-api", "kl_old_api:OldApi"),
    ("raises", "kl_raises:Raises"),
    ("dead-neurons", "plugins.dead_neurons:DeadNeurons"),
]


@pytest.fixture(scope="module")
def with_broken_plugins(tmp_path_factory):
    """Entry points of three broken plugins (in a temporary directory) and a built-in one."""
    folder = tmp_path_factory.mktemp("broken_plugins")
    for module, source in BROKEN.items():
        (folder / f"{module}.py").write_text(textwrap.dedent(source))
    entries = [EntryPoint(name, value, registry.GROUP) for name, value in ENTRIES]
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(folder))
        patch.setattr(registry, "entry_points", lambda group: entries)
        yield
        for module in BROKEN:
            sys.modules.pop(module, None)


@pytest.fixture(scope="module")
def broken_run(with_broken_plugins):
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(5, activation="relu", name="hidden")(inputs))
    x = np.random.default_rng(0).normal(size=(64, 6)).astype("float32")
    return keraslens.analyze(model, x, minimal=True).to_dict()


def test_plugin_that_cannot_be_imported_is_listed_as_failed(with_broken_plugins):
    info = {i.name: i for i in registry.available()}["broken-import"]

    assert info.status == "failed"
    assert info.error == "ModuleNotFoundError: No module named 'keraslens_no_such_module'"


def test_plugin_that_cannot_be_imported_is_reported_and_the_others_run(broken_run):
    entry = broken_run["plugins"]["broken-import"]

    assert entry["status"] == "error"
    assert "ModuleNotFoundError" in entry["error"]
    assert "keraslens_no_such_module" in entry["error"]
    assert broken_run["plugins"]["dead-neurons"]["status"] == "ok"


def test_plugin_for_another_api_version_is_reported_and_the_others_run(broken_run):
    entry = broken_run["plugins"]["old-api"]

    assert entry["status"] == "error"
    assert "'old-api' targets plugin API 99" in entry["error"]
    assert broken_run["plugins"]["dead-neurons"]["status"] == "ok"


def test_plugin_that_raises_is_reported_and_the_others_run(broken_run):
    entry = broken_run["plugins"]["raises"]

    assert entry["status"] == "error"
    assert entry["error"] == "RuntimeError: boom: the analysis failed"
    assert set(broken_run["plugins"]["dead-neurons"]["layers"]) == {"hidden"}


def test_run_with_broken_plugins_has_error_status_and_counts_them(broken_run):
    assert broken_run["status"] == "error"
    assert broken_run["counts"]["plugin_errors"] == 3
