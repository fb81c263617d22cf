"""A token model from the CLI: integer `.npy` data, a vocabulary, and its entries as text."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from test_report_browser import CHROMIUM, needs_chromium, open_in_chromium

pytestmark = pytest.mark.slow

HOSTILE = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def token_files(tmp_path_factory):
    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("tokens")
    tokens = keras.Input((4,), dtype="int32")
    hidden = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(5, 4)(tokens))
    model = keras.Model(tokens, keras.layers.Dense(2, activation="softmax")(hidden))
    model.save(folder / "tokens.keras")
    ids = np.random.default_rng(0).integers(0, 5, (12, 4)).astype("int32")
    ids[:, 0] = 1  # the hostile entry in every sample; the table lists up to 5 tokens each
    np.save(folder / "ids.npy", ids)
    (folder / "vocab.txt").write_text("\n".join(["pad", HOSTILE, "cat", "dog", "fish"]) + "\n")
    command = Path(sys.executable).with_name("keraslens")
    done = subprocess.run(
        [
            str(command),
            "report",
            "tokens.keras",
            "--data",
            "ids.npy",
            "--vocab",
            "vocab.txt",
            "--plugin",
            "heatmaps",
            "-o",
            "report.html",
            "--json",
            "report.json",
            "--option",
            "heatmaps.methods=integrated-gradients,occlusion",
        ],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return folder, done


def test_report_explains_integer_token_data_per_token_with_the_vocabulary(token_files):
    folder, done = token_files
    assert done.returncode == 0, done.stderr[-2000:]
    twin = json.loads((folder / "report.json").read_text())
    heatmaps = twin["plugins"]["heatmaps"]
    assert heatmaps["status"] != "error"
    assert set(heatmaps["metrics"]) == {"integrated-gradients", "occlusion"}
    html = (folder / "report.html").read_text()
    assert "Deciding tokens" in html and "onerror=alert(1)>" not in html


@needs_chromium
@pytest.mark.browser
def test_a_hostile_vocabulary_entry_renders_as_text_in_chromium(token_files, tmp_path):
    folder, _ = token_files
    assert CHROMIUM is not None
    opened = open_in_chromium(folder / "report.html", tmp_path, "--dump-dom")
    assert "CONSOLE" not in opened.stderr
    assert "<img src=x" not in opened.stdout
    assert "&lt;img src=x onerror=alert(1)&gt;" in opened.stdout


def test_the_text_demo_names_the_deciding_token_first(tmp_path):
    from click.testing import CliRunner

    from keraslens.cli import cli

    with CliRunner().isolated_filesystem(temp_dir=tmp_path):
        done = CliRunner().invoke(cli, ["demo", "--text", "-o", "t.html", "--json", "t.json"])
        assert done.exit_code == 0, done.output
        heatmaps = json.loads(Path("t.json").read_text())["plugins"]["heatmaps"]
    assert heatmaps["best_method"] in ("integrated-gradients", "occlusion", "saliency")
    table = next(t for t in heatmaps["tables"] if t["title"].startswith("Deciding tokens"))
    positives = [row for row in table["rows"] if row[1] == 1]
    assert positives and all(row[2].startswith("DECIDING") for row in positives)
