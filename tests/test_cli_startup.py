"""Start-up of the real `keraslens` command: help without TensorFlow, errors by kind."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_report_fixtures import DeadUnits, install_plugins, tiny_data, tiny_model

from keraslens.cli import cli

# Runs the installed command's entry point, then says which heavy modules were imported.
_WITH_MODULES = """
import atexit, sys
atexit.register(lambda: print("LOADED", *sorted(
    m for m in ("tensorflow", "keras", "numpy") if m in sys.modules), file=sys.stderr))
sys.argv = ["keraslens", *sys.argv[1:]]
from keraslens.__main__ import main
main()
"""


ROOT = Path(__file__).resolve().parents[1]


def keraslens(*args, cwd=None, timeout=120, env=None):
    """Run `keraslens ARGS` in a fresh interpreter; stderr ends with the heavy modules loaded."""
    return subprocess.run(
        [sys.executable, "-c", _WITH_MODULES, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env=env,
    )


def loaded_modules(process) -> list[str]:
    (line,) = [x for x in process.stderr.splitlines() if x.startswith("LOADED")]
    return line.split()[1:]


@pytest.mark.parametrize("command", [[], ["report"], ["check"], ["plugins"], ["demo"]])
def test_help_loads_neither_tensorflow_nor_keras(command):
    process = keraslens(*command, "--help")
    assert process.returncode == 0, process.stderr
    assert "Usage: keraslens" in process.stdout
    assert "tensorflow" not in loaded_modules(process)
    assert "keras" not in loaded_modules(process)


def builtin_plugins() -> dict[str, type]:
    """Name -> class of every entry point pyproject.toml declares for the built-in plugins."""
    section = (ROOT / "pyproject.toml").read_text().split('"keraslens.plugins"]', 1)[1]
    entries = re.findall(r'^([a-z-]+) = "([\w.]+):(\w+)"$', section.split("\n[", 1)[0], re.M)
    return {name: getattr(importlib.import_module(module), cls) for name, module, cls in entries}


def test_listing_plugins_loads_neither_tensorflow_nor_keras():
    process = keraslens("plugins")
    assert process.returncode == 0, process.stderr
    assert "tensorflow" not in loaded_modules(process)
    assert "keras" not in loaded_modules(process)


def test_listing_plugins_shows_every_builtin_with_its_options():
    lines = keraslens("plugins").stdout.splitlines()
    plugins = builtin_plugins()
    assert len(plugins) == 7
    for name, plugin in plugins.items():
        start = lines.index(next(line for line in lines if line.startswith(f"{name}  ")))
        assert lines[start].startswith(f"{name}  [loaded]  keraslens ")
        end = next(
            (i for i in range(start + 1, len(lines)) if not lines[i].startswith("    ")),
            len(lines),
        )
        assert lines[start + 1 : end] == ["    expensive: skipped by --minimal"] * (
            plugin.expensive
        ) + [
            f"    {name}.{key} ({option.type.__name__}, default {option.default!r}): {option.help}"
            for key, option in plugin.options.items()
        ]


def test_a_plugin_that_imports_tensorflow_at_the_top_is_listed_and_tensorflow_is_quiet(
    tmp_path,
):
    (tmp_path / "heavy_plugin.py").write_text(
        "import tensorflow as tf\n"
        "from keraslens.plugin import Option, Plugin\n\n\n"
        "class Heavy(Plugin):\n"
        '    name, title = "heavy", "Heavy"\n'
        '    options = {"depth": Option(int, 3, "How deep.")}\n'
    )
    info = tmp_path / "heavy_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: heavy-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[keraslens.plugins]\nheavy = heavy_plugin:Heavy\n")
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    process = keraslens("plugins", env={**os.environ, "PYTHONPATH": path})
    assert process.returncode == 0, process.stderr
    assert "heavy  [loaded]  heavy-plugin 1.0" in process.stdout
    assert "    heavy.depth (int, default 3): How deep." in process.stdout
    assert "tensorflow" in loaded_modules(process)
    assert process.stderr.splitlines()[:-1] == []


def test_a_missing_model_is_refused_before_tensorflow_loads(tmp_path):
    process = keraslens("report", "absent.keras", "--data", "x.npy", cwd=tmp_path)
    assert process.returncode == 2
    assert "Error: Model 'absent.keras' does not exist." in process.stderr
    assert "tensorflow" not in loaded_modules(process)


@pytest.fixture
def files(tmp_path):
    tiny_model().save(tmp_path / "tiny.keras")
    np.save(tmp_path / "x.npy", tiny_data())
    return tmp_path


def test_a_library_bug_is_an_internal_error_with_its_traceback_not_a_usage_error(
    files, monkeypatch
):
    install_plugins(monkeypatch, DeadUnits)

    def bug(*args, **kwargs):
        raise ValueError("an index went wrong inside keraslens")

    monkeypatch.setattr("keraslens.io.load_model", bug)
    out = CliRunner().invoke(
        cli, ["report", str(files / "tiny.keras"), "--data", str(files / "x.npy"), "-q"]
    )
    assert out.exit_code == 4
    assert "Traceback" in out.stderr
    assert "Internal error: ValueError: an index went wrong inside keraslens" in out.stderr
    assert not [line for line in out.stderr.splitlines() if line.startswith("Error:")]


def test_progress_is_printed_as_plain_lines_when_not_on_a_terminal(files, monkeypatch):
    install_plugins(monkeypatch, DeadUnits)
    out = CliRunner().invoke(
        cli,
        [
            "report",
            str(files / "tiny.keras"),
            "--data",
            str(files / "x.npy"),
            "-o",
            str(files / "r.html"),
        ],
    )
    assert out.exit_code == 0, out.output
    lines = out.stderr.splitlines()
    assert f"Loading model {files / 'tiny.keras'} ..." in lines
    assert "Capturing: 64/64 samples" in lines
    assert "[1/1] fake-dead" in lines
    assert "Wrote" in out.stdout and "Capturing" not in out.stdout
