"""Capture under tf.distribute equals the single-device capture, on really distributed runs.

MirroredStrategy runs over 2 to 4 logical CPU devices and MultiWorkerMirroredStrategy over
two worker processes on 127.0.0.1; both need TensorFlow's devices set up before it starts,
so they run `distributed_worker.py` in subprocesses (one for every mirrored case, two for
the cluster). The oracle is `Lens.capture` on one device in this process, on the same saved
model and data; `test_capture.py` checks that one against NumPy. Sample counts never divide
evenly across replicas, and the last step leaves some replicas without data.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import build_nested, build_sequential, build_two_in_two_out

from keraslens import Lens
from keraslens.capture.stats import COUNT_FIELDS

WORKER = Path(__file__).with_name("distributed_worker.py")
TIMEOUT = 600
COUNTS = ("samples", *COUNT_FIELDS, "hist_counts")


def save_case(folder: Path, name: str, model: keras.Model, inputs: dict, **case) -> dict:
    """Save the model and the data of one case; return the case for the worker."""
    model_path, data_path = folder / f"{name}.keras", folder / f"{name}.npz"
    model.save(model_path)
    np.savez(data_path, **inputs)
    return {"name": name, "model": str(model_path), "data": str(data_path), **case}


def single_device(case: dict, model_path: str | None = None) -> dict:
    """The oracle: statistics of the case captured on one device, in this process."""
    model = keras.saving.load_model(model_path or case["model"])
    with np.load(case["data"]) as arrays:
        inputs = {name: arrays[name] for name in arrays.files}
    data = inputs["x"] if list(inputs) == ["x"] else inputs
    lens = Lens(model, histogram_samples=case.get("histogram_samples"))
    return lens.capture(data, case["batch_size"])


def run_worker(cases: list[dict], folder: Path, *args: str, env: dict | None = None):
    path = folder / f"cases-{len(list(folder.glob('cases-*')))}.json"
    path.write_text(json.dumps(cases))
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def results_of(process: subprocess.Popen) -> list[dict]:
    out, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def assert_same_stats(got: dict, expected: dict, histogram: bool = True) -> None:
    """Counts (and the histogram) exactly equal; moments to float32 tolerance."""
    assert list(got) == list(expected)
    for key, stats in expected.items():
        for name in COUNTS if histogram else COUNTS[:-1]:
            np.testing.assert_array_equal(got[key][name], getattr(stats, name), err_msg=key)
        for name in ("mean", "min", "max"):
            np.testing.assert_allclose(
                got[key][name], getattr(stats, name), rtol=1e-5, atol=1e-6, err_msg=key
            )
        np.testing.assert_allclose(got[key]["m2"], stats.m2, rtol=1e-5, atol=1e-5, err_msg=key)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory) -> dict[str, tuple[dict, dict]]:
    """Every mirrored case run in one worker process: {name: (case, worker result)}."""
    folder = tmp_path_factory.mktemp("mirrored")
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    images = rng.normal(size=(9, 6, 6, 2)).astype(np.float32)
    images[2, 1, 1, 0] = np.nan
    images[5, 0, 3, 1] = np.inf
    two_inputs = {
        "wide": rng.normal(size=(40, 6)).astype(np.float32),
        "narrow": rng.normal(size=(40, 5)).astype(np.float32),
    }
    sequential = build_sequential()
    cases = [
        save_case(
            folder,
            "two_devices",
            sequential,
            {"x": rng.normal(2.0, 3.0, size=(47, 6)).astype(np.float32)},
            batch_size=10,
            devices=2,
        ),
        save_case(folder, "empty_replicas", build_nested(), {"x": images}, batch_size=8, devices=4),
        save_case(
            folder,
            "dataset_two_inputs",
            build_two_in_two_out(),
            two_inputs,
            batch_size=12,
            devices=3,
            dataset=True,
        ),
        save_case(
            folder,
            "sampled_histogram",
            sequential,
            {"x": rng.normal(size=(47, 6)).astype(np.float32)},
            batch_size=12,
            devices=4,
            histogram_samples=5,
        ),
        save_case(
            folder,
            "many_samples",
            sequential,
            {"x": rng.normal(size=(470, 6)).astype(np.float32)},
            batch_size=10,
            devices=2,
        ),
    ]
    cases.append(
        save_case(
            folder,
            "fit",
            sequential,
            {"x": rng.normal(size=(30, 6)).astype(np.float32)},
            batch_size=8,
            devices=3,
            fit=str(folder),
        )
    )
    results = results_of(run_worker(cases, folder, "--devices", "4"))
    return {case["name"]: (case, result) for case, result in zip(cases, results, strict=True)}


@pytest.mark.parametrize(
    ("name", "replicas"), [("two_devices", 2), ("empty_replicas", 4), ("dataset_two_inputs", 3)]
)
def test_mirrored_capture_equals_single_device(mirrored, name: str, replicas: int) -> None:
    case, result = mirrored[name]
    assert result["replicas"] == replicas
    assert_same_stats(result["stats"], single_device(case))


def test_sampled_histogram_takes_the_first_samples_of_each_global_batch(mirrored) -> None:
    # 4 replicas of 3 samples: the first 5 of each batch of 12 are replica 0's three and
    # replica 1's first two, as on one device, and the last, short batch's too.
    case, result = mirrored["sampled_histogram"]
    assert result["replicas"] == 4
    assert_same_stats(result["stats"], single_device(case))


def test_callback_probes_under_the_mirrored_strategy_of_the_fit(mirrored) -> None:
    case, result = mirrored["fit"]
    assert (result["distributed_strategy"], result["replicas"]) == ("MirroredStrategy", 3)
    trained = single_device(case, str(Path(case["fit"]) / "trained-0.keras"))
    # The callback's Lens samples its histogram (the first 32 samples of each batch), the
    # oracle's takes every sample, so it is left out here.
    assert_same_stats(result["stats"], trained, histogram=False)


def test_bytes_exchanged_do_not_grow_with_the_number_of_samples(mirrored) -> None:
    few, many = mirrored["two_devices"][1], mirrored["many_samples"][1]
    assert many["stats"]["dense_relu"]["samples"] == 10 * few["stats"]["dense_relu"]["samples"]
    assert many["exchanged_bytes"] == few["exchanged_bytes"]
    # Per unit: 9 summed rows, 2 extremes and 2 for the shift; per layer its histogram; the
    # sample count once.
    units = 3 * 4
    assert few["exchanged_bytes"] == 8 * (9 + 2) * units + 8 * 2 * units + 8 * (3 * 2048 + 1)


def test_multiworker_capture_and_callback_on_two_processes_equal_single_device(tmp_path) -> None:
    keras.utils.set_random_seed(0)
    images = np.random.default_rng(1).normal(size=(23, 6, 6, 2)).astype(np.float32)
    images[4, 2, 2, 1] = np.nan
    case = save_case(tmp_path, "cluster", build_nested(), {"x": images}, batch_size=6)
    fit = save_case(
        tmp_path,
        "cluster_fit",
        build_sequential(),
        {"x": np.random.default_rng(3).normal(size=(24, 6)).astype(np.float32)},
        batch_size=8,
        fit=str(tmp_path),
    )
    workers = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    processes = [
        run_worker(
            [case, fit],
            tmp_path,
            "--multiworker",
            env={
                "TF_CONFIG": json.dumps(
                    {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
                )
            },
        )
        for index in range(2)
    ]
    try:
        results = [results_of(process) for process in processes]
    finally:
        for process in processes:
            process.kill()
    expected = single_device(case)
    trained = single_device(fit, str(tmp_path / "trained-0.keras"))
    for capture, probe in results:
        assert capture["replicas"] == probe["replicas"] == 2
        assert probe["distributed_strategy"] == tf.distribute.MultiWorkerMirroredStrategy.__name__
        assert_same_stats(capture["stats"], expected)
        assert_same_stats(probe["stats"], trained, histogram=False)


def test_capture_in_a_strategy_scope_runs_under_that_strategy() -> None:
    keras.utils.set_random_seed(0)
    model = build_sequential()
    x = np.random.default_rng(2).normal(size=(30, 6)).astype(np.float32)
    expected = Lens(model, histogram_samples=None).capture(x, batch_size=8)
    lens = Lens(model, histogram_samples=None)
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        got = lens.capture(x, batch_size=8)
    assert lens._distributed_capture is not None
    assert_same_stats({key: vars(stats) for key, stats in got.items()}, expected)


def test_cli_strategy_flag_distributes_the_capture_and_keeps_the_report(tmp_path, monkeypatch):
    from click.testing import CliRunner
    from test_report_fixtures import DeadUnits, install_plugins, tiny_data, tiny_model

    from keraslens.capture.distributed import DistributedCapture
    from keraslens.cli import cli

    install_plugins(monkeypatch, DeadUnits)
    tiny_model().save(tmp_path / "tiny.keras")
    np.save(tmp_path / "x.npy", tiny_data())
    strategies = []
    capture = DistributedCapture.capture
    monkeypatch.setattr(
        DistributedCapture,
        "capture",
        lambda self, *a: strategies.append(type(self.strategy).__name__) or capture(self, *a),
    )
    twins = []
    for extra in ([], ["--strategy", "mirrored"]):
        json_path = tmp_path / f"r{len(twins)}.json"
        args = ["report", tmp_path / "tiny.keras", "--data", tmp_path / "x.npy", "--json"]
        args += [json_path, "-o", tmp_path / "r.html", *extra]
        out = CliRunner().invoke(cli, [str(a) for a in args])
        assert out.exit_code == 0, out.output
        entry = json.loads(json_path.read_text())["plugins"]["fake-dead"]
        entry.pop("seconds")  # the plugin's run time
        twins.append(entry)
    assert strategies == ["MirroredStrategy"]
    assert twins[1] == twins[0]
