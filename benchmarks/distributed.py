"""Distributed capture on this machine: throughput for 1, 2 and 4 logical devices, and bytes.

Each device count runs in its own process (logical CPU devices must be set up before
TensorFlow starts). Per process, after a warm-up capture that compiles everything, in
rounds that time both back to back, in alternating order:
  - single-device `Lens.capture` throughput (samples/s, median of --repeats);
  - `Lens.capture(strategy=MirroredStrategy(devices))` throughput, its ratio to the above
    and the range of the per-round ratios;
  - the bytes each replica sends to the merge, for N and 4N samples (must not grow with N).

The logical devices share the same cores, so no speed-up is expected on a small machine:
the ratio shows the overhead of the distributed path.

Usage: python benchmarks/distributed.py [--samples 512] [--repeats 5] [--devices 1 2 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

BATCH = 256


def measure(devices: int, samples: int, repeats: int) -> dict:
    """Run in a child process: time both paths over `devices` logical CPUs."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * devices
    )
    import numpy as np

    import keraslens

    sys.path.insert(0, os.path.dirname(__file__))
    from capture import reference_cnn

    model = reference_cnn()
    x = np.random.default_rng(0).normal(size=(4 * samples, 32, 32, 3)).astype(np.float32)
    strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(devices)])
    single, distributed = keraslens.Lens(model), keraslens.Lens(model)

    runs = {
        "single": lambda: single.capture(x[:samples], BATCH),
        "distributed": lambda: distributed.capture(x[:samples], BATCH, strategy=strategy),
    }
    for run in runs.values():  # warm-up: traces and compiles
        run()
    times = {name: [] for name in runs}
    pairs = list(runs.items())
    for index in range(repeats):
        for name, run in pairs if index % 2 == 0 else pairs[::-1]:
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    rounds = [s / d for s, d in zip(times["single"], times["distributed"], strict=True)]
    few = distributed._distributed_capture.exchanged_bytes
    distributed.capture(x, BATCH, strategy=strategy)
    many = distributed._distributed_capture.exchanged_bytes
    return {
        "devices": devices,
        "single": samples / statistics.median(times["single"]),
        "distributed": samples / statistics.median(times["distributed"]),
        "rounds": (min(rounds), max(rounds)),
        "bytes_n": few,
        "bytes_4n": many,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.samples, args.repeats)))
        return
    n = args.samples
    print(
        f"reference CNN, N={n} (bytes also at 4N={4 * n}), batch {BATCH}, median of {args.repeats}"
    )
    print(
        f"{'devices':>7} {'single samples/s':>17} {'mirrored samples/s':>19} {'ratio':>6} "
        f"{'per round':>10} {'bytes/replica N':>16} {'bytes/replica 4N':>17}"
    )
    for devices in args.devices:
        child = [sys.executable, __file__, "--child", str(devices)]
        child += ["--samples", str(n), "--repeats", str(args.repeats)]
        out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        low, high = row["rounds"]
        print(
            f"{devices:>7} {row['single']:>17.0f} {row['distributed']:>19.0f} "
            f"{row['distributed'] / row['single']:>6.2f} {low:>5.2f}-{high:<4.2f} "
            f"{row['bytes_n']:>16,} {row['bytes_4n']:>17,}"
        )


if __name__ == "__main__":
    main()
