"""Run `Lens.capture` under a tf.distribute strategy and print the statistics as JSON.

Launched by tests/test_distributed.py in a process of its own, because logical CPU
devices and a multi-worker cluster must be set up before TensorFlow starts its devices.

Usage:
    python distributed_worker.py CASES.json --devices 4   # MirroredStrategy over logical CPUs
    python distributed_worker.py CASES.json --multiworker # MultiWorkerMirroredStrategy (TF_CONFIG)

CASES.json lists cases `{"model": path.keras, "data": path.npz, "batch_size": int,
"devices": int (mirrored only), "dataset": bool, "fit": folder}`. With "fit", the model is
loaded under the strategy and trained one epoch with a `LensCallback` probing the data (under
MultiWorkerMirroredStrategy the callback's hooks are called as fit would, untrained); the
statistics are the callback's last capture, and the trained model is saved in the folder as
`trained-<task>.keras`. The output is one JSON line: a list with, per case,
`{"stats": {key: {field: value}}, "exchanged_bytes": int, "distributed_strategy": name,
"replicas": int}`.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

from keraslens.capture.stats import COUNT_FIELDS  # noqa: E402

FIELDS = ("samples", *COUNT_FIELDS, "mean", "m2", "min", "max", "hist_counts")


def strategies(args: argparse.Namespace):
    """A function from a case to its strategy; set up before TensorFlow starts its devices."""
    if args.multiworker:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        return lambda case: strategy
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * args.devices
    )
    made: dict[int, tf.distribute.Strategy] = {}

    def mirrored(case: dict) -> tf.distribute.Strategy:
        devices = case["devices"]
        if devices not in made:
            # Strategies in one process must not share collective group keys, else one of 4
            # devices joins a group of 2; TF's own tests (strategy_combinations) do the same.
            tf.distribute.MirroredStrategy._collective_key_base = 10_000 * len(made)
            made[devices] = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(devices)])
        return made[devices]

    return mirrored


def run_case(case: dict, strategy: tf.distribute.Strategy) -> dict:
    import keras
    import numpy as np

    from keraslens import Lens

    with np.load(case["data"]) as arrays:
        inputs = {name: arrays[name] for name in arrays.files}
    data = inputs["x"] if list(inputs) == ["x"] else inputs
    if case.get("fit"):
        lens, stats = fit_with_callback(case, data, strategy)
    else:
        model = keras.saving.load_model(case["model"])
        if case.get("dataset"):
            data = tf.data.Dataset.from_tensor_slices(data).batch(7)
        lens = Lens(model, histogram_samples=case.get("histogram_samples"))
        stats = lens.capture(data, case["batch_size"], strategy=strategy)
    return {
        "stats": {
            key: {name: np.asarray(getattr(s, name)).tolist() for name in FIELDS}
            for key, s in stats.items()
        },
        "exchanged_bytes": lens._distributed_capture.exchanged_bytes,
        "distributed_strategy": type(lens._distributed_capture.strategy).__name__,
        "replicas": strategy.num_replicas_in_sync,
    }


def fit_with_callback(case: dict, x, strategy: tf.distribute.Strategy):
    """Train one epoch under `strategy` with a LensCallback; its Lens and last statistics."""
    from pathlib import Path

    import keras
    import numpy as np

    from keraslens import LensCallback

    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {}).get("index", 0)
    folder = Path(case["fit"])
    with strategy.scope():
        model = keras.saving.load_model(case["model"])
        model.compile(optimizer="sgd", loss="mse")
    callback = LensCallback(
        x, out_dir=folder / f"logs-{task}", report=None, batch_size=case["batch_size"], verbose=0
    )
    y = np.zeros((len(x), model.output_shape[-1]), np.float32)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        # Keras 3.15's fit fails under this strategy before the first step (its
        # `_maybe_symbolic_build` reduces a PerReplica batch eagerly), so the hooks that
        # fit would call around one epoch are called here.
        callback.set_model(model)
        for hook, args in (("on_train_begin", ()), ("on_epoch_begin", (0,))):
            getattr(callback, hook)(*args)
        callback.on_epoch_end(0)
        callback.on_train_end()
    else:
        # Keras needs full batches that divide across replicas; the probe data need not.
        model.fit(x, y, epochs=1, batch_size=6, callbacks=[callback], verbose=0)
    model.save(folder / f"trained-{task}.keras")
    return callback._analysis.lens, callback.result.stats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cases")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--multiworker", action="store_true")
    args = parser.parse_args()
    strategy_for = strategies(args)
    with open(args.cases, encoding="utf-8") as file:
        cases = json.load(file)
    print(json.dumps([run_case(case, strategy_for(case)) for case in cases]))


if __name__ == "__main__":
    main()
