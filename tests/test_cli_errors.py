"""User errors: one clear line, a non-zero exit, no traceback, and no output file left."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from test_report_fixtures import DeadUnits, install_plugins, tiny_data, tiny_model

from keraslens.cli import cli


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("errors")
    tiny_model().save(folder / "tiny.keras")
    np.save(folder / "x.npy", tiny_data())
    np.save(folder / "wrong.npy", np.zeros((5, 7), "float32"))
    np.save(folder / "empty.npy", np.zeros((0, 4), "float32"))
    np.savez(folder / "two.npz", a=tiny_data(), b=tiny_data())
    lambda_model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Lambda(lambda x: x * 2), keras.layers.Dense(2)]
    )
    lambda_model.save(folder / "lambda.keras")
    return folder


@pytest.fixture(autouse=True)
def fakes(monkeypatch):
    install_plugins(monkeypatch, DeadUnits)


def run_report(files, tmp_path, *args, model="tiny.keras", data="x.npy"):
    out = CliRunner().invoke(
        cli,
        [
            "report",
            str(files / model),
            "--data",
            str(files / data),
            "-o",
            str(tmp_path / "r.html"),
            "--json",
            str(tmp_path / "r.json"),
            *map(str, args),
        ],
    )
    assert list(tmp_path.iterdir()) == [], "a failed run must not leave an output file"
    assert "Traceback" not in out.output
    return out


def error_line(out):
    lines = [line for line in out.output.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, out.output
    return lines[0]


def test_missing_model_file(files, tmp_path):
    out = run_report(files, tmp_path, model="absent.keras")
    assert out.exit_code == 2
    assert "absent.keras' does not exist" in error_line(out)


def test_missing_data_file(files, tmp_path):
    out = run_report(files, tmp_path, data="absent.npy")
    assert out.exit_code == 2 and "absent.npy' does not exist" in error_line(out)


def test_wrong_shape_names_the_expected_one(files, tmp_path):
    out = run_report(files, tmp_path, data="wrong.npy")
    assert out.exit_code == 2
    assert "has shape (5, 7); the model expects (None, 4)" in error_line(out)


def test_empty_data(files, tmp_path):
    out = run_report(files, tmp_path, data="empty.npy")
    assert out.exit_code == 2 and "is empty" in error_line(out)


def test_unknown_plugin_lists_the_available_ones(files, tmp_path):
    out = run_report(files, tmp_path, "-p", "no-such-plugin")
    assert out.exit_code == 2
    assert "Unknown plugin 'no-such-plugin'. Installed plugins: fake-dead." in error_line(out)


def test_bad_option_value_is_rejected_before_any_work(files, tmp_path):
    out = run_report(files, tmp_path, "--option", "fake-dead.threshold=lots")
    assert out.exit_code == 2 and "expects float, got 'lots'" in error_line(out)


def test_unwritable_output_path(files, tmp_path):
    out = CliRunner().invoke(
        cli,
        [
            "report",
            str(files / "tiny.keras"),
            "--data",
            str(files / "x.npy"),
            "-o",
            str(tmp_path / "missing-folder" / "r.html"),
        ],
    )
    assert out.exit_code == 2 and "does not exist" in error_line(out)
    assert list(tmp_path.iterdir()) == []


def test_npz_with_several_arrays_needs_data_key(files, tmp_path):
    out = run_report(files, tmp_path, data="two.npz")
    assert out.exit_code == 2 and "choose one with --data-key" in error_line(out)


def test_model_with_code_is_refused_and_names_unsafe(files, tmp_path):
    out = run_report(files, tmp_path, model="lambda.keras")
    assert out.exit_code == 2
    assert "carries a Lambda layer" in error_line(out)
    assert "--unsafe" in error_line(out)


def test_verbose_shows_the_traceback(files, tmp_path):
    out = CliRunner().invoke(
        cli,
        [
            "report",
            str(files / "absent.keras"),
            "--data",
            "x.npy",
            "-v",
            "-o",
            str(tmp_path / "r.html"),
        ],
    )
    assert out.exit_code == 2 and "Traceback" in out.output


def test_demo_refuses_an_unwritable_output_before_training(tmp_path):
    out = CliRunner().invoke(cli, ["demo", "-o", str(tmp_path / "absent" / "demo.html")])
    assert out.exit_code == 2 and "does not exist" in error_line(out)
    assert "Training" not in out.output and list(tmp_path.iterdir()) == []


def test_garbage_model_file_says_it_is_not_an_archive(files, tmp_path):
    garbage = tmp_path.parent / f"{tmp_path.name}-garbage.keras"
    garbage.write_text("hello")
    out = run_report(files, tmp_path, model=garbage)
    assert out.exit_code == 2
    assert "garbage.keras': it is not a zip archive" in error_line(out)


def test_malformed_baseline_is_refused_before_the_analysis(files, tmp_path):
    baseline = tmp_path.parent / f"{tmp_path.name}-baseline.json"
    baseline.write_text('{"plugins": {"fake-dead": 5}}')
    out = run_check(files, tmp_path, "--baseline", baseline)
    assert out.exit_code == 2
    assert "plugins['fake-dead'] is int, not an object" in error_line(out)


def test_unbalanced_parenthesis_in_a_rule_is_malformed(files, tmp_path):
    out = run_check(files, tmp_path, "--fail-on", "fake-dead.dead_fraction>(-5")
    assert out.exit_code == 2 and "is not a rule like" in error_line(out)


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_seed_outside_32_bits_is_refused_by_click(files, tmp_path, seed):
    out = run_report(files, tmp_path, "--seed", seed)
    assert out.exit_code == 2
    assert "Invalid value for '--seed'" in out.output and "0<=x<=4294967295" in out.output


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("seed = -1", "seed must be from 0 to 4294967295, got -1"),
        ("seed = 4294967296", "seed must be from 0 to 4294967295"),
        ("batch_size = 0", "batch_size must be 1 or more, got 0"),
        ("samples = -3", "samples must be 1 or more, got -3"),
    ],
)
def test_config_values_out_of_range_are_refused(files, tmp_path, setting, message):
    config = files / f"config-{abs(hash(setting))}.toml"
    config.write_text(setting + "\n")
    out = run_report(files, tmp_path, "--config", config)
    assert out.exit_code == 2 and message in error_line(out)


def test_output_equal_to_json_is_refused(files, tmp_path):
    same = tmp_path / "r.html"
    out = run_report(files, tmp_path, "-o", same, "--json", same)  # the later options win
    assert out.exit_code == 2 and "-o/--output and --json both name" in error_line(out)
    assert list(tmp_path.iterdir()) == []


def test_output_equal_to_the_data_file_is_refused(files, tmp_path):
    data = tmp_path / "x.npy"
    np.save(data, tiny_data())
    out = CliRunner().invoke(
        cli, ["report", str(files / "tiny.keras"), "--data", str(data), "-o", str(data)]
    )
    assert out.exit_code == 2 and "is the --data file" in error_line(out)
    np.testing.assert_array_equal(np.load(data), tiny_data())


def test_empty_output_is_refused(files, tmp_path):
    out = run_report(files, tmp_path, "-o", "")
    assert out.exit_code == 2 and "-o/--output is empty" in error_line(out)


def run_check(files, tmp_path, *args):
    out = CliRunner().invoke(
        cli,
        [
            "check",
            str(files / "tiny.keras"),
            "--data",
            str(files / "x.npy"),
            "-o",
            str(tmp_path / "r.html"),
            *map(str, args),
        ],
    )
    assert list(tmp_path.iterdir()) == [], "a failed run must not leave an output file"
    assert "Traceback" not in out.output and "PASS" not in out.output
    return out
