"""Config files: an unreadable one gets one line naming it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from keraslens import config
from keraslens.errors import KeraslensError


def test_a_config_file_that_is_not_utf8_names_the_file(tmp_path):
    (tmp_path / "keraslens.toml").write_bytes(b'layers = ["caf\xe9"]\n')
    with pytest.raises(KeraslensError, match=r"keraslens.toml' is not UTF-8 text \(at byte 14\)"):
        config.read_config(tmp_path / "keraslens.toml")


def test_a_folder_as_config_file_is_refused(tmp_path):
    with pytest.raises(KeraslensError, match="is a folder, not a regular file"):
        config.read_config(tmp_path)


def test_a_fifo_as_config_file_is_refused_instead_of_hanging(tmp_path):
    os.mkfifo(tmp_path / "keraslens.toml")
    code = "from keraslens import config; config.read_config('keraslens.toml')"
    process = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert "is a FIFO (named pipe), not a regular file" in process.stderr


def test_an_unreadable_config_file_names_the_file(tmp_path):
    path = tmp_path / "keraslens.toml"
    path.write_text("seed = 1\n")
    path.chmod(0)
    if os.access(path, os.R_OK):
        pytest.skip("running as a user who can read any file")
    with pytest.raises(KeraslensError, match="Cannot read config file '.*keraslens.toml'"):
        config.read_config(path)
