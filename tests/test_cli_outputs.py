"""Nothing of the user's is overwritten: inputs stay inputs, special files are refused,
and the HTML report and its JSON twin are replaced together or not at all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from test_cli_startup import keraslens, loaded_modules
from test_report_fixtures import DeadUnits, install_plugins, tiny_data, tiny_model

from keraslens import atomic
from keraslens.cli import cli
from keraslens.errors import KeraslensError


@pytest.fixture
def inputs(tmp_path):
    """Stand-in input files: the checks run before anything is read."""
    for name in ("m.keras", "x.npy", "accepted.json", "probe.py", "mylayers.py", "old.html"):
        (tmp_path / name).write_text("original")
    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    (tmp_path / "imgs" / "cat" / "0.png").write_text("original")
    (tmp_path / "sm" / "variables").mkdir(parents=True)
    (tmp_path / "sm" / "saved_model.pb").write_text("original")
    return tmp_path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["check", "m.keras", "--data", "x.npy", "--baseline", "accepted.json"]
            + ["--json", "accepted.json"],
            "--json 'accepted.json' is the --baseline file",
        ),
        (
            ["report", "m.keras", "--data", "imgs", "-o", "imgs/cat/0.png"],
            "-o/--output 'imgs/cat/0.png' lies inside the --data folder 'imgs'",
        ),
        (
            ["report", "sm", "--data", "x.npy", "-o", "sm/saved_model.pb"],
            "-o/--output 'sm/saved_model.pb' lies inside the MODEL folder 'sm'",
        ),
        (
            ["report", "m.keras", "--data", "probe:load", "-o", "probe.py"],
            "-o/--output 'probe.py' is the --data file",
        ),
        (
            ["report", "m.keras", "--data", "x.npy", "--import", "mylayers", "--json"]
            + ["mylayers.py"],
            "--json 'mylayers.py' is the --import file",
        ),
        (
            ["report", "m.keras", "--data", "x.npy", "--config", "accepted.json", "-o"]
            + ["accepted.json"],
            "-o/--output 'accepted.json' is the --config file",
        ),
    ],
)
def test_an_input_is_never_an_output(inputs, args, message):
    process = keraslens(*args, cwd=inputs)
    assert process.returncode == 2, process.stderr
    assert message in process.stderr
    assert "tensorflow" not in loaded_modules(process)
    for path in inputs.rglob("*"):
        assert not path.is_file() or path.read_text() == "original", path


def test_a_hard_link_to_an_input_is_not_an_output(inputs):
    os.link(inputs / "x.npy", inputs / "linked.html")
    process = keraslens("report", "m.keras", "--data", "x.npy", "-o", "linked.html", cwd=inputs)
    assert process.returncode == 2 and "is the --data file" in process.stderr
    assert (inputs / "x.npy").read_text() == "original"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: os.symlink(p.parent / "old.html", p), "it is a symbolic link"),
        (lambda p: os.mkfifo(p), "it is a FIFO (named pipe)"),
        (lambda p: p.mkdir(), "it is a folder"),
    ],
)
def test_an_existing_special_file_as_output_is_refused_not_replaced(inputs, make, message):
    make(inputs / "out.html")
    process = keraslens("report", "m.keras", "--data", "x.npy", "-o", "out.html", cwd=inputs)
    assert process.returncode == 2 and message in process.stderr
    assert (inputs / "old.html").read_text() == "original"


def test_a_device_as_output_is_refused():
    with pytest.raises(KeraslensError, match="it is a character device"):
        atomic.write_atomic("/dev/null", "x")


def test_an_output_ending_in_a_slash_names_a_folder_and_is_refused(inputs):
    process = keraslens("report", "m.keras", "--data", "x.npy", "-o", "newdir/", cwd=inputs)
    assert process.returncode == 2
    assert "-o/--output 'newdir/' names a folder; name a file in it" in process.stderr
    assert not (inputs / "newdir").exists()


@pytest.mark.parametrize("role", ["model", "data", "output folder"])
def test_a_symlink_loop_gets_one_line(inputs, role):
    os.symlink("loop", inputs / "loop")
    args = {
        "model": ["loop", "--data", "x.npy"],
        "data": ["m.keras", "--data", "loop"],
        "output folder": ["m.keras", "--data", "x.npy", "-o", "loop/r.html"],
    }[role]
    process = keraslens("report", *args, cwd=inputs)
    assert process.returncode == 2
    assert "symbolic link loop" in process.stderr and "Traceback" not in process.stderr


@pytest.mark.parametrize("role", ["model", "data"])
def test_a_fifo_as_input_is_refused_instead_of_hanging(inputs, role):
    os.mkfifo(inputs / "pipe.keras")
    args = ["pipe.keras", "--data", "x.npy"] if role == "model" else ["m.keras", "--data"]
    args += [] if role == "model" else ["pipe.keras"]
    process = keraslens("report", *args, cwd=inputs, timeout=60)
    assert process.returncode == 2
    assert "is a FIFO (named pipe), not a regular file" in process.stderr


def test_two_files_are_replaced_together_or_neither_on_a_full_file_system(tmp_path):
    """The JSON does not fit (RLIMIT_FSIZE stands in for a full disk): the HTML, which
    would fit, is not replaced either."""
    (tmp_path / "r.html").write_text("old html")
    (tmp_path / "r.json").write_text("old json")
    code = (
        "import resource, signal\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))\n"
        "from keraslens.atomic import write_together\n"
        "write_together({'r.html': 'new html', 'r.json': 'x' * 5000})\n"
    )
    process = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True
    )
    assert process.returncode != 0
    assert "Cannot write" in process.stderr and "r.json" in process.stderr
    assert "No output file was changed" in process.stderr
    assert (tmp_path / "r.html").read_text() == "old html"
    assert (tmp_path / "r.json").read_text() == "old json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html", "r.json"]


def test_a_signal_during_the_final_rename_leaves_no_temporary_file(tmp_path):
    code = (
        "import os, signal\n"
        "from keraslens.atomic import write_together\n"
        "real = os.replace\n"
        "def replace(source, target):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    real(source, target)\n"
        "os.replace = replace\n"
        "write_together({'r.html': 'new html', 'r.json': 'new json'})\n"
        "print('not reached')\n"
    )
    process = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True
    )
    assert process.returncode == -signal.SIGTERM and "not reached" not in process.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html", "r.json"]
    assert (tmp_path / "r.html").read_text() == "new html"


def test_a_failed_rename_puts_back_the_file_already_replaced(tmp_path, monkeypatch):
    (tmp_path / "a.html").write_text("old a")
    real, calls = os.replace, []

    def second_fails(source, target):
        calls.append(target)
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        real(source, target)

    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(KeraslensError, match="b.json'.*Input/output error"):
        atomic.write_together({tmp_path / "a.html": "new a", tmp_path / "b.json": "new b"})
    monkeypatch.undo()
    assert (tmp_path / "a.html").read_text() == "old a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.html"]


def test_an_old_report_keeps_its_file_mode_and_a_new_one_follows_the_umask(tmp_path):
    old = tmp_path / "old.html"
    old.write_text("old")
    old.chmod(0o640)
    previous = os.umask(0o027)
    try:
        atomic.write_together({old: "new", tmp_path / "new.html": "new"})
    finally:
        os.umask(previous)
    assert old.stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "new.html").stat().st_mode & 0o777 == 0o640  # 0o666 & ~0o027


class ChangesDirectory(DeadUnits):
    """A plugin that moves the working directory while it runs."""

    name = "fake-chdir"

    def analyze(self, ctx):
        os.chdir(os.environ["ELSEWHERE"])
        return super().analyze(ctx)


@pytest.fixture
def model_files(tmp_path):
    tiny_model().save(tmp_path / "tiny.keras")
    np.save(tmp_path / "x.npy", tiny_data())
    return tmp_path


def test_a_plugin_changing_the_working_directory_does_not_move_the_outputs(
    model_files, monkeypatch
):
    install_plugins(monkeypatch, ChangesDirectory)
    (model_files / "elsewhere").mkdir()
    monkeypatch.setenv("ELSEWHERE", str(model_files / "elsewhere"))
    monkeypatch.chdir(model_files)
    out = CliRunner().invoke(
        cli, ["report", "tiny.keras", "--data", "x.npy", "-o", "r.html", "--json", "r.json"]
    )
    assert out.exit_code == 0, out.output
    assert (model_files / "r.html").is_file() and (model_files / "r.json").is_file()
    assert list((model_files / "elsewhere").iterdir()) == []


def test_a_report_that_cannot_be_serialised_changes_neither_file(model_files, monkeypatch):
    install_plugins(monkeypatch, DeadUnits)
    (model_files / "r.html").write_text("old html")
    (model_files / "r.json").write_text("old json")

    def not_serialisable(self, full=False):
        return json.dumps({"units": {1, 2}})

    monkeypatch.setattr("keraslens.result.AnalysisResult.to_json_text", not_serialisable)
    out = CliRunner().invoke(
        cli,
        ["report", str(model_files / "tiny.keras"), "--data", str(model_files / "x.npy")]
        + ["-o", str(model_files / "r.html"), "--json", str(model_files / "r.json")],
    )
    assert out.exit_code == 4
    assert (model_files / "r.html").read_text() == "old html"
    assert (model_files / "r.json").read_text() == "old json"


def test_a_missing_config_beside_an_existing_output_is_named_not_an_internal_error(inputs):
    process = keraslens(
        "report",
        "m.keras",
        "--data",
        "x.npy",
        "--config",
        "absent.toml",
        "-o",
        "old.html",
        cwd=inputs,
    )
    assert process.returncode == 2, process.stderr
    assert "Config file 'absent.toml' does not exist." in process.stderr
