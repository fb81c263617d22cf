"""The CI gate: a baseline from another model is refused, and the verdict line is one word."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from test_report_fixtures import DeadUnits, install_plugins, tiny_data, tiny_model

from keraslens import gate
from keraslens.cli import cli
from keraslens.errors import KeraslensError


def twin(model, inputs, layers):
    return {
        "meta": {"model": model, "input_shapes": inputs},
        "plugins": {"p": {"layers": {name: {"x": 0.1} for name in layers}}},
        "layers": {name: {} for name in layers},
    }


def test_a_baseline_of_another_model_is_refused_naming_what_differs():
    accepted = twin("cat_net", [[None, 8]], ["conv_a", "dense_b"])
    current = twin("tiny", [[None, 4]], ["hidden", "out"])
    with pytest.raises(KeraslensError) as raised:
        gate.check_baseline(accepted, current, "accepted.json")
    message = str(raised.value)
    assert "'accepted.json' is from another model" in message
    assert "input shapes and layers (none in common) differ" in message
    assert "model 'cat_net', inputs (None, 8), layers conv_a, dense_b" in message
    assert "model 'tiny', inputs (None, 4), layers hidden, out" in message


def test_a_baseline_of_the_same_model_with_a_new_layer_is_accepted():
    accepted = twin("v1", [[None, 4]], ["hidden", "out"])
    gate.check_baseline(accepted, twin("v2", [[None, 4]], ["hidden", "extra", "out"]))


def test_a_baseline_with_other_input_shapes_is_refused_even_with_the_same_layer_names():
    with pytest.raises(KeraslensError, match="its input shapes differ"):
        gate.check_baseline(twin("m", [[None, 8]], ["dense"]), twin("m", [[None, 4]], ["dense"]))


@pytest.fixture
def files(tmp_path, monkeypatch):
    install_plugins(monkeypatch, DeadUnits)
    tiny_model().save(tmp_path / "tiny.keras")
    np.save(tmp_path / "x.npy", tiny_data())
    return tmp_path


def check(files, *args):
    return CliRunner().invoke(
        cli,
        ["check", str(files / "tiny.keras"), "--data", str(files / "x.npy"), "-p", "fake-dead"]
        + ["--option", "fake-dead.threshold=0.9", *map(str, args)],
    )


def test_check_refuses_a_baseline_from_another_model(files):
    (files / "other.json").write_text(json.dumps(twin("cat_net", [[None, 8]], ["conv_a"])))
    out = check(
        files, "--baseline", files / "other.json", "--fail-on", "fake-dead.dead_fraction>+0.05"
    )
    assert out.exit_code == 2, out.output
    assert "is from another model" in out.stderr and "PASS" not in out.output


def test_a_gate_failed_by_a_rule_alone_does_not_print_pass(files):
    out = check(files, "--fail-on", "fake-dead.dead_fraction>0.2")
    assert out.exit_code == 1
    assert out.stdout.splitlines()[-1] == (
        "FAIL: 1 rule crossed, 0 errors, 0 warnings, 0 plugin errors"
    )
    assert "PASS" not in out.output


def _metrics_twin(mufidelity: float) -> dict:
    summary = {"mean": mufidelity, "low": mufidelity - 0.1, "high": mufidelity + 0.1}
    return {"plugins": {"heatmaps": {"metrics": {"gradcam++": {"mufidelity": summary}}}}}


def test_a_dotted_rule_reads_a_metric_mean_and_gates_against_a_baseline_model():
    rule = gate.Rule.parse("heatmaps.metrics.gradcam++.mufidelity<0.1")
    assert gate.evaluate([rule], _metrics_twin(0.3)) == []
    assert [v.value for v in gate.evaluate([rule], _metrics_twin(0.05))] == [0.05]
    worse = gate.Rule.parse("heatmaps.metrics.gradcam++.mufidelity<-0.2")
    violations = gate.evaluate([worse], _metrics_twin(0.3), baseline=_metrics_twin(0.6))
    assert len(violations) == 1 and violations[0].baseline == 0.6


def test_a_dotted_rule_on_a_missing_method_names_what_is_reported():
    rule = gate.Rule.parse("heatmaps.metrics.saliency.mufidelity<0.1")
    with pytest.raises(KeraslensError, match="reports no number"):
        gate.evaluate([rule], _metrics_twin(0.3))
