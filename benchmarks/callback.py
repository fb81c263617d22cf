"""Cost of `LensCallback` inside a short transfer-learning `model.fit`, next to a fit without it.

A MobileNetV2 backbone (random weights, frozen, 96x96x3 input) with a new head
(global average pooling, Dense 10) trains for a few epochs on random images; the
callback analyses a probe every epoch with its default plugins, plus once before the
first step. The default size (2048 samples, 5 epochs) makes a fit of about half a
minute, the length of the transfer-learning fit the callback is meant not to slow
down by more than 10%. Every fit builds a fresh model from the same seed, so each
LensCallback fit traces its capture once, as a user's fit does. The setups take turns
for `--rounds` rounds and each keeps its fastest fit. Wall-clock and process CPU time
(every thread of this process) are printed; on a machine shared with other work the
CPU time is the fairer ratio, since waiting for a core does not count in it. The cost
is then split into its parts: the first analysis (the frozen part captured, its trace
included), a later one (the frozen backbone reused) and an epoch of training.

    python benchmarks/callback.py [--samples 2048] [--probe 256] [--epochs 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import functools
import math
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from keraslens.callback import LensCallback

SIDE = 96


def transfer_model() -> keras.Model:
    """A frozen MobileNetV2 backbone with a new classification head, compiled."""
    keras.utils.set_random_seed(0)
    backbone = keras.applications.MobileNetV2(
        input_shape=(SIDE, SIDE, 3), include_top=False, weights=None
    )
    backbone.trainable = False
    inputs = keras.Input((SIDE, SIDE, 3))
    features = keras.layers.GlobalAveragePooling2D()(backbone(inputs, training=False))
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(features))
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


def batches(x, y, batch_size: int) -> tf.data.Dataset:
    """The training data as batches, without tf.data's autotuner.

    Keras makes an autotuned dataset of NumPy arrays, and deleting an epoch's iterator
    waits for the autotuner's next wake-up (10, 20, 40, ... ms after the start), which
    would add a delay to every epoch that has nothing to do with the callback.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).prefetch(2)
    return data.with_options(options)


def timed(action) -> tuple[float, float]:
    """Wall-clock and CPU seconds of `action()`."""
    started, cpu = time.perf_counter(), time.process_time()
    action()
    return time.perf_counter() - started, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--probe", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(args.samples, SIDE, SIDE, 3)).astype("float32")
    y = rng.integers(0, 10, size=args.samples)
    probe = x[: args.probe]

    with tempfile.TemporaryDirectory() as out:
        setups = {
            "no callback": lambda: [],
            "LensCallback(report=None)": lambda: [
                LensCallback(probe, out_dir=f"{out}/none", report=None)
            ],
            'LensCallback(report="final")': lambda: [
                LensCallback(probe, out_dir=f"{out}/final", report="final")
            ],
        }
        # A first fit pays TensorFlow's one-off start-up costs, so every setup is timed fairly.
        transfer_model().fit(batches(x[:64], y[:64], args.batch_size), verbose=0)
        data = batches(x, y, args.batch_size)
        wall = {name: math.inf for name in setups}
        cpu = dict(wall)
        for _ in range(args.rounds):
            for name, make in setups.items():
                model, callbacks = transfer_model(), make()
                fit = functools.partial(model.fit, data, epochs=args.epochs, verbose=0)
                fit_wall, fit_cpu = timed(functools.partial(fit, callbacks=callbacks))
                wall[name], cpu[name] = min(wall[name], fit_wall), min(cpu[name], fit_cpu)

    # The parts, through the hooks Keras calls: the first epoch's start runs the first
    # analysis, each epoch's end a later one.
    model = transfer_model()
    with tempfile.TemporaryDirectory() as out:
        callback = LensCallback(probe, out_dir=out, report=None, verbose=0)
        callback.set_model(model)
        callback.on_train_begin()
        first = timed(lambda: callback.on_epoch_begin(0))
        again = min(timed(lambda: callback.on_epoch_end(0)) for _ in range(args.rounds))
        callback.on_train_end()
    epoch = cpu["no callback"] / args.epochs

    print(
        f"model.fit, MobileNetV2 {SIDE}x{SIDE} frozen + new head, {args.samples} samples, "
        f"{args.epochs} epochs, batch {args.batch_size}, best of {args.rounds}; "
        f"probe {args.probe} samples every epoch and before the first (default plugins)"
    )
    print(f"{'setup':<30} {'wall s':>8} {'ratio':>7} {'CPU s':>8} {'ratio':>7}")
    for name in setups:
        print(
            f"{name:<30} {wall[name]:8.1f} {wall[name] / wall['no callback']:7.3f} "
            f"{cpu[name]:8.1f} {cpu[name] / cpu['no callback']:7.3f}"
        )
    overhead = cpu["LensCallback(report=None)"] / cpu["no callback"] - 1
    verdict = "met" if overhead <= 0.10 else "NOT met"
    print(f"LensCallback overhead (CPU time, report=None) {overhead:+.1%}, goal <= 10%: {verdict}")
    print(
        f"parts (CPU s): the first analysis {first[1]:.2f} (trace included), "
        f"a later one {again[1]:.2f} ({again[1] / epoch:.0%} of an epoch of training, "
        f"{epoch:.2f})"
    )


if __name__ == "__main__":
    main()
