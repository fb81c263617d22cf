"""Cost of `LensCallback` inside `model.fit`, next to a fit without it, in one run.

The reference CNN (32x32x3 input, Conv 32-32-pool-64-64-pool, Dense 256, Dense 10)
trains on 10,000 random samples; the callback analyses a 512-sample probe every
epoch with dead-neurons, saturation and activation-stats. Keras' own TensorBoard
callback with `histogram_freq=1` is timed too, for comparison. Every fit starts
from the same weights; the setups take turns for `--rounds` rounds and each keeps its
fastest fit; the first round's LensCallback fit, which traces the capture, is printed
apart. Both wall-clock and process CPU time (every thread of this process) are
printed; on a machine shared with other work the CPU time is the fairer ratio, since
waiting for a core does not count in it.

    python benchmarks/callback.py [--epochs 2] [--rounds 2] [--samples 10000]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from keraslens.callback import LensCallback

PLUGINS = ["dead-neurons", "saturation", "activation-stats"]


def reference_cnn() -> keras.Model:
    """The reference CNN of the benchmarks."""
    conv = {"kernel_size": 3, "padding": "same", "activation": "relu"}
    return keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(32, **conv),
            keras.layers.Conv2D(32, **conv),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, **conv),
            keras.layers.Conv2D(64, **conv),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="reference_cnn",
    )


def batches(x, y, batch_size: int) -> tf.data.Dataset:
    """The training data as batches, without tf.data's autotuner.

    Keras makes an autotuned dataset of NumPy arrays, and deleting an epoch's iterator
    waits for the autotuner's next wake-up (10, 20, 40, ... ms after the start): measured
    here, a 6.6 s epoch took 10.3 s, which would swamp the callback's cost.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).prefetch(2)
    return data.with_options(options)


def timed_fit(data: tf.data.Dataset, epochs: int, callbacks) -> tuple[float, float]:
    """Wall-clock and CPU seconds of one fit of a fresh reference CNN (same seed every time)."""
    keras.utils.set_random_seed(0)
    model = reference_cnn()
    model.compile("adam", "sparse_categorical_crossentropy")
    started, cpu = time.perf_counter(), time.process_time()
    model.fit(data, epochs=epochs, verbose=0, callbacks=callbacks)
    return time.perf_counter() - started, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--probe", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.samples, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, size=args.samples)
    probe = x[: args.probe]

    with tempfile.TemporaryDirectory() as out:
        setups = {
            "no callback": lambda: [],
            "LensCallback": lambda: [
                LensCallback(probe, plugins=PLUGINS, out_dir=f"{out}/lens", report=None)
            ],
            "LensCallback + tensorboard": lambda: [
                LensCallback(
                    probe, plugins=PLUGINS, out_dir=f"{out}/lens-tb", report=None, tensorboard=True
                )
            ],
            "keras TensorBoard(histogram_freq=1)": lambda: [
                keras.callbacks.TensorBoard(f"{out}/keras-tb", histogram_freq=1)
            ],
        }
        # A first fit pays TensorFlow's one-off start-up costs, so every setup is timed fairly.
        timed_fit(batches(x[:256], y[:256], args.batch_size), 1, [])
        data = batches(x, y, args.batch_size)
        wall = {name: math.inf for name in setups}
        cpu = dict(wall)
        first: dict[str, tuple[float, float]] = {}
        for _ in range(args.rounds):
            for name, make in setups.items():
                fit_wall, fit_cpu = timed_fit(data, args.epochs, make())
                first.setdefault(name, (fit_wall, fit_cpu))
                wall[name], cpu[name] = min(wall[name], fit_wall), min(cpu[name], fit_cpu)

    print(
        f"model.fit, reference CNN, {args.samples} samples, {args.epochs} epochs, "
        f"batch {args.batch_size}, best of {args.rounds}; probe {args.probe} samples every epoch "
        f"({', '.join(PLUGINS)})"
    )
    print(f"{'setup':<38} {'wall s':>8} {'ratio':>7} {'CPU s':>8} {'ratio':>7}")
    for name in setups:
        print(
            f"{name:<38} {wall[name]:8.1f} {wall[name] / wall['no callback']:7.3f} "
            f"{cpu[name]:8.1f} {cpu[name] / cpu['no callback']:7.3f}"
        )
    overhead = cpu["LensCallback"] / cpu["no callback"] - 1
    verdict = "met" if overhead <= 0.10 else "NOT met"
    print(f"LensCallback overhead (CPU time) {overhead:+.1%}, goal <= 10%: {verdict}")
    # Later fits reuse the capture's traced steps (cached per process and batch shape).
    (ours_wall, ours_cpu), (base_wall, base_cpu) = first["LensCallback"], first["no callback"]
    print(
        f"first fit of the process (LensCallback traces the capture): "
        f"wall {ours_wall / base_wall - 1:+.1%}, CPU {ours_cpu / base_cpu - 1:+.1%}"
    )


if __name__ == "__main__":
    main()
