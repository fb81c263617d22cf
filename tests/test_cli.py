"""`keraslens` commands through click's CliRunner, with stand-in plugins."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from test_report_fixtures import Broken, DeadUnits, MeanPlot, install_plugins, tiny_data, tiny_model

from keraslens.cli import cli


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    tiny_model().save(folder / "tiny.keras")
    np.save(folder / "x.npy", tiny_data())
    np.savez(folder / "xy.npz", x=tiny_data(), y=np.arange(64) % 3)
    return folder


@pytest.fixture
def fakes(monkeypatch):
    install_plugins(monkeypatch, DeadUnits, MeanPlot)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".html", ".json"))


def test_report_writes_html_and_json_twin(files, fakes, tmp_path):
    out = invoke(
        "report",
        files / "tiny.keras",
        "--data",
        files / "x.npy",
        "-o",
        tmp_path / "r.html",
        "--json",
        tmp_path / "r.json",
    )
    assert out.exit_code == 0, out.output
    assert "Wrote" in out.output and "FAIL (1 errors" in out.output
    twin = json.loads((tmp_path / "r.json").read_text())
    assert twin["plugins"]["fake-dead"]["layers"]["hidden"]["dead_fraction"] == 0.375
    assert "fake-dead" in (tmp_path / "r.html").read_text()


def test_option_flag_overrides_the_config_file(files, fakes, tmp_path):
    config = tmp_path / "keraslens.toml"
    config.write_text('plugins = ["fake-dead"]\nseed = 3\n[options.fake-dead]\nthreshold = 0.9\n')
    out = invoke(
        "report",
        files / "tiny.keras",
        "--data",
        files / "x.npy",
        "--config",
        config,
        "--option",
        "fake-dead.threshold=0.5",
        "-o",
        tmp_path / "r.html",
        "--json",
        tmp_path / "r.json",
    )
    assert out.exit_code == 0, out.output
    twin = json.loads((tmp_path / "r.json").read_text())
    assert twin["plugins"]["fake-dead"]["options"] == {"threshold": 0.5}
    assert list(twin["plugins"]) == ["fake-dead"] and twin["meta"]["seed"] == 3


def test_samples_and_layers_are_stated_in_the_report(files, fakes, tmp_path):
    out = invoke(
        "report",
        files / "tiny.keras",
        "--data",
        files / "x.npy",
        "--samples",
        20,
        "--layers",
        "hid*",
        "-o",
        tmp_path / "r.html",
        "--json",
        tmp_path / "r.json",
    )
    assert out.exit_code == 0, out.output
    twin = json.loads((tmp_path / "r.json").read_text())
    assert twin["meta"]["samples"] == 20 and list(twin["layers"]) == ["hidden"]
    html = (tmp_path / "r.html").read_text()
    assert "20 samples (random subset)" in html and "hid*" in html


def test_minimal_skips_expensive_plugins(files, fakes, tmp_path):
    out = invoke(
        "report",
        files / "tiny.keras",
        "--data",
        files / "x.npy",
        "--minimal",
        "--json",
        tmp_path / "r.json",
        "-o",
        tmp_path / "r.html",
    )
    assert out.exit_code == 0, out.output
    assert list(json.loads((tmp_path / "r.json").read_text())["plugins"]) == ["fake-dead"]


def test_check_exits_1_when_a_rule_is_crossed_and_names_the_value(files, fakes, tmp_path):
    out = invoke(
        "check",
        files / "tiny.keras",
        "--data",
        files / "x.npy",
        "-p",
        "fake-dead",
        "--option",
        "fake-dead.threshold=0.9",
        "--fail-on",
        "fake-dead.dead_fraction>0.2",
        "-o",
        tmp_path / "gate.html",
    )
    assert out.exit_code == 1, out.output
    assert "FAIL fake-dead.dead_fraction>0.2: layer hidden measured 0.375" in out.output
    assert (tmp_path / "gate.html").exists()


def test_check_exits_0_when_clean(files, fakes):
    out = invoke(
        "check",
        files / "tiny.keras",
        "--data",
        files / "x.npy",
        "-p",
        "fake-dead",
        "--option",
        "fake-dead.threshold=0.9",
        "--fail-on",
        "fake-dead.dead_fraction>0.5",
    )
    assert out.exit_code == 0, out.output
    assert "PASS" in out.output


def test_check_fails_on_an_error_finding_without_rules(files, fakes):
    out = invoke("check", files / "tiny.keras", "--data", files / "x.npy", "-p", "fake-dead")
    assert out.exit_code == 1
    assert "ERROR fake-dead: hidden: 3 of 8 units never fire." in out.output


def test_check_fail_on_warning_turns_warnings_into_failures(files, monkeypatch):
    install_plugins(monkeypatch, MeanPlot)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(
                2, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(3.0)
            ),
        ]
    )
    folder = files / "warn"
    folder.mkdir(exist_ok=True)
    model.save(folder / "big.keras")
    np.save(folder / "x.npy", np.full((8, 4), 5.0, "float32"))
    args = ["check", folder / "big.keras", "--data", folder / "x.npy"]
    assert invoke(*args).exit_code == 0
    assert invoke(*args, "--fail-on-warning").exit_code == 1


def test_check_exits_3_when_a_plugin_cannot_run(files, monkeypatch):
    install_plugins(monkeypatch, DeadUnits, Broken)
    out = invoke("check", files / "tiny.keras", "--data", files / "x.npy", "--format", "json")
    assert out.exit_code == 3
    verdict = json.loads(out.stdout)
    assert verdict["status"] == "error"
    assert verdict["plugin_errors"] == {"fake-broken": "RuntimeError: this plugin always fails"}


def test_check_relative_rule_catches_a_regression_against_the_baseline(files, fakes, tmp_path):
    baseline = {
        "counts": {},
        "plugins": {"fake-dead": {"status": "ok", "layers": {"hidden": {"dead_fraction": 0.3}}}},
    }
    (tmp_path / "accepted.json").write_text(json.dumps(baseline))
    common = [
        "check",
        files / "tiny.keras",
        "--data",
        files / "x.npy",
        "-p",
        "fake-dead",
        "--option",
        "fake-dead.threshold=0.9",
        "--baseline",
        tmp_path / "accepted.json",
    ]
    worse = invoke(*common, "--fail-on", "fake-dead.dead_fraction>+0.05", "--format", "json")
    assert worse.exit_code == 1, worse.output
    (violation,) = json.loads(worse.stdout)["violations"]
    assert violation["layer"] == "hidden" and violation["baseline"] == 0.3
    assert violation["value"] == pytest.approx(0.375)
    assert invoke(*common, "--fail-on", "fake-dead.dead_fraction>+0.1").exit_code == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--fail-on", "fake-dead.dead_fraction=>1"], "is not a rule like"),
        (["--fail-on", "fake-dead.dead_fraction>+0.1"], "needs --baseline"),
        (["--fail-on", "fake-dead.nothing>1"], "reports no number 'nothing'"),
        (["--fail-on", "fake-deda.dead_fraction>1"], "'fake-deda' is not among the plugins"),
        (["--minimal", "--fail-on", "fake-plot.x>1"], "'fake-plot' is not among the plugins"),
    ],
)
def test_check_usage_errors_exit_2(files, fakes, extra, message):
    out = invoke("check", files / "tiny.keras", "--data", files / "x.npy", *extra)
    assert out.exit_code == 2
    assert message in out.output


def test_a_rule_on_a_plugin_that_will_not_run_is_refused_before_any_work(files, fakes, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("keraslens.io.load_model", never)
    out = invoke(
        "check",
        files / "tiny.keras",
        "--data",
        files / "x.npy",
        "-p",
        "fake-dead",
        "--fail-on",
        "fake-plot.x>1",
    )
    assert out.exit_code == 2 and "select it with --plugin" in out.output, out.output


def test_plugins_lists_loaded_and_failed_plugins_with_options(monkeypatch):
    install_plugins(monkeypatch, DeadUnits, MeanPlot)
    monkeypatch.setattr(DeadUnits, "api_version", 99)
    out = invoke("plugins")
    assert out.exit_code == 0
    assert "fake-dead  [failed]" in out.output and "targets plugin API 99" in out.output
    assert "fake-plot  [loaded]" in out.output and "expensive: skipped by --minimal" in out.output


def test_plugins_shows_each_option_with_type_and_default(fakes):
    out = invoke("plugins")
    assert (
        "fake-dead.threshold (float, default 0.1): Largest acceptable dead fraction." in out.output
    )


@pytest.mark.parametrize("command", [[], ["report"], ["check"], ["plugins"], ["demo"]])
def test_every_command_has_help_and_version(command):
    assert invoke(*command, "--help").exit_code == 0
    version = invoke(*command, "--version")
    assert version.exit_code == 0 and "keraslens, version" in version.output


def test_quiet_prints_nothing_on_success(files, fakes, tmp_path):
    out = invoke(
        "report", files / "tiny.keras", "--data", files / "x.npy", "-q", "-o", tmp_path / "r.html"
    )
    assert out.exit_code == 0 and out.output == ""


def test_multi_input_model_reads_one_npz_array_per_input(fakes, tmp_path):
    a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
    joined = keras.layers.Concatenate()([a, b])
    hidden = keras.layers.Dense(5, activation="relu", name="hidden")(joined)
    keras.Model([a, b], hidden, name="two").save(tmp_path / "two.keras")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", b=rng.normal(size=(9, 3)), a=rng.normal(size=(9, 4)))
    out = invoke(
        "report", tmp_path / "two.keras", "--data", tmp_path / "d.npz", "-o", tmp_path / "r.html"
    )
    assert out.exit_code == 0, out.output
    assert "d.npz[a, b]" in (tmp_path / "r.html").read_text()


def test_full_keeps_the_capture_histogram_in_the_json_twin(files, fakes, tmp_path):
    common = ["report", files / "tiny.keras", "--data", files / "x.npy", "-q"]
    common += ["-o", tmp_path / "r.html", "--json", tmp_path / "r.json"]
    assert invoke(*common).exit_code == 0
    default = json.loads((tmp_path / "r.json").read_text())["layers"]["hidden"]
    assert invoke(*common, "--full").exit_code == 0
    full = json.loads((tmp_path / "r.json").read_text())["layers"]["hidden"]
    assert "histogram" not in default and "histogram" in full
