"""Cost of `LensCallback` inside `model.fit`, next to a fit without it, in one run.

The reference CNN (32x32x3 input, Conv 32-32-pool-64-64-pool, Dense 256, Dense 10)
trains on 10,000 random samples; the callback analyses a 512-sample probe every
epoch with dead-neurons, saturation and activation-stats. Keras' own TensorBoard
callback with `histogram_freq=1` is timed too, for comparison. Every fit starts
from the same weights; the setups take turns for `--rounds` rounds and each keeps its
fastest fit. Both wall-clock and process CPU time (every thread of this process) are
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


def timed_fit(x, y, epochs: int, batch_size: int, callbacks) -> tuple[float, float]:
    """Wall-clock and CPU seconds of one fit of a fresh reference CNN (same seed every time)."""
    keras.utils.set_random_seed(0)
    model = reference_cnn()
    model.compile("adam", "sparse_categorical_crossentropy")
    started, cpu = time.perf_counter(), time.process_time()
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0, callbacks=callbacks)
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
        timed_fit(x[:256], y[:256], 1, args.batch_size, [])
        wall = {name: math.inf for name in setups}
        cpu = dict(wall)
        for _ in range(args.rounds):
            for name, make in setups.items():
                fit_wall, fit_cpu = timed_fit(x, y, args.epochs, args.batch_size, make())
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


if __name__ == "__main__":
    main()
