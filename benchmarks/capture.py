"""Capture cost against `model.predict`, measured side by side in one run.

For each model given with --model (the reference CNN by default; MobileNetV2 at 96x96,
ResNet50, EfficientNetB0 and DenseNet121 at 64x64, random weights), prints (median of
--repeats after a warm-up, runs interleaved):
  - capture-all-layers time / plain `model.predict` time, and the range of that ratio
    over the rounds (each round times both back to back, in alternating order, so the
    per-round ratio is free of the machine's drift between rounds);
  - with --loaded, the same again while another CPU-bound process runs (a busy loop);
  - for the reference CNN, the same ratio for the naive approach (one multi-output model
    keeping every activation, statistics in NumPy), timed in rounds of its own after
    those (see `compare`), against the same `predict` times;
  - two probes of the machine's state at that moment, as the ratio depends on it: the
    reductions read memory, the convolutions mostly compute (GB/s of a compiled sum over
    34 MB, GFLOP/s of a 1024x1024 matmul);
  - for the reference CNN, peak RSS of a capture for N = 2,000, 10,000 and 40,000
    samples, each in its own process (median of --rss-repeats: the heap's fragmentation
    varies by run), with the data generated batch by batch so it is never all in memory,
    next to a plain compiled forward pass over the same batches; once with glibc's
    default malloc settings, once with its mmap threshold fixed (see `peak_rss`).

With --breakdown, instead: where one compiled capture step's time goes, per batch
(alternating rounds, ratios to the plain forward pass of each round): the forward pass;
the forward pass with every captured output handed to a no-op `tf.numpy_function` (the
cost of reading the outputs at all: the fusions TensorFlow loses when intermediate outputs
have a consumer, and the calls); the capture step; and the kernel alone on the same
outputs as NumPy arrays, summed over the layers.

Usage: python benchmarks/capture.py [--model reference ResNet50 ...] [--samples 2048]
  [--batch N] [--repeats 7] [--loaded] [--rss-repeats 3]  (--rss-repeats 0: timings only)
  [--breakdown]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keraslens  # noqa: E402
from keraslens.capture import _kernel, intercept, reduce  # noqa: E402
from keraslens.capture.stats import HIST_BINS  # noqa: E402

BATCH = 256


def reference_cnn() -> keras.Model:
    """32x32x3 -> Conv32-Conv32-Pool-Conv64-Conv64-Pool-Flatten-Dense256-Dense10."""
    layers = keras.layers
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(256, activation="relu"),
            layers.Dense(10, activation="softmax"),
        ],
        name="reference_cnn",
    )


def application(name: str, size: int):
    def build() -> keras.Model:
        keras.utils.set_random_seed(0)
        return getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))

    return build


# name -> (builder, input side, default batch)
MODELS = {
    "reference": (reference_cnn, 32, BATCH),
    "MobileNetV2": (application("MobileNetV2", 96), 96, 128),
    "ResNet50": (application("ResNet50", 64), 64, 64),
    "EfficientNetB0": (application("EfficientNetB0", 64), 64, 64),
    "DenseNet121": (application("DenseNet121", 64), 64, 64),
}


def random_batches(n: int, side: int = 32, batch: int = BATCH) -> tf.data.Dataset:
    """N random images, generated batch by batch (memory independent of N)."""
    starts = tf.data.Dataset.range(0, n, batch)

    def make(start):
        size = tf.minimum(tf.constant(batch, tf.int64), n - start)
        return tf.random.stateless_uniform(
            tf.stack([tf.cast(size, tf.int32), side, side, 3]), seed=tf.stack([start, 7])
        )

    # tf.data's autotuner delays the deletion of each iterator to its next wake-up
    # (10, 20, 40, ... ms after the start), which Lens.capture avoids but
    # model.predict does not: off for both, the ratio compares the computation.
    options = tf.data.Options()
    options.autotune.enabled = False
    return starts.map(make).prefetch(2).with_options(options)


def naive_stats(model: keras.Model, data: tf.data.Dataset) -> dict:
    """What one writes by hand: every activation kept, then NumPy per unit."""
    probe = keras.Model(model.inputs, [layer.output for layer in model.layers])
    outputs = probe.predict(data, verbose=0)
    stats = {}
    for layer, values in zip(model.layers, outputs, strict=True):
        flat = values.reshape(-1, values.shape[-1]).astype(np.float64)
        stats[layer.name] = (
            flat.mean(0),
            flat.var(0),
            flat.min(0),
            flat.max(0),
            (flat > 0).mean(0),
        )
    return stats


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def machine_probes(repeats: int = 9) -> tuple[float, float]:
    """(GB/s read by a compiled sum over 34 MB, GFLOP/s of a float32 1024x1024 matmul)."""
    values = tf.random.uniform((256 * 1024, 32))
    total = tf.function(lambda v: tf.reduce_sum(v, 0), jit_compile=True)
    a = tf.random.uniform((1024, 1024))
    product = tf.function(lambda m: tf.reduce_sum(tf.matmul(m, m)))
    total(values).numpy(), product(a).numpy()
    read = statistics.median(timed(lambda: total(values).numpy()) for _ in range(repeats))
    mult = statistics.median(timed(lambda: product(a).numpy()) for _ in range(repeats))
    return values.numpy().nbytes / read / 1e9, 2 * 1024**3 / mult / 1e9


def compare(model: keras.Model, data, repeats: int, naive: bool) -> dict[str, list[float]]:
    """Seconds per run: `predict` and `capture` in alternating order, round by round; then
    `naive`, whose rounds come last: it leaves gigabytes of freed activations behind,
    and whatever runs after it runs slower (a `predict` by 10-25%), which flattered the
    capture's ratio when the three took turns in one round."""
    lens = keraslens.Lens(model)
    runs = {
        "predict": lambda: model.predict(data, verbose=0),
        "capture": lambda: lens.capture(data),
        # A new Lens each time: it must reuse the first one's trace, not retrace.
        "fresh": lambda: keraslens.Lens(model).capture(data),
    }
    for fn in runs.values():  # warm-up: traces
        fn()
    times = {name: [] for name in runs}
    pairs = list(runs.items())
    for index in range(repeats):
        for name, fn in pairs if index % 2 == 0 else pairs[::-1]:
            times[name].append(timed(fn))
    if naive:
        run_naive = lambda: naive_stats(model, data)  # noqa: E731
        run_naive()
        times["naive"] = [timed(run_naive) for _ in range(repeats)]
    return times


@contextlib.contextmanager
def busy_process() -> Iterator[None]:
    """Within the block, another process keeps one core busy (a pure-Python loop)."""
    process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        yield
    finally:
        process.kill()
        process.wait()


def print_ratios(title: str, times: dict[str, list[float]]) -> None:
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(title)
    print(f"{'method':<34}{'seconds':>10}{'/ predict':>12}{'per round':>16}")
    labels = {
        "predict": "model.predict",
        "capture": "keraslens capture (all layers)",
        "fresh": "the same, a new Lens each time",
        "naive": "naive (all activations + NumPy)",
    }
    for name in times:
        rounds = [t / p for t, p in zip(times[name], times["predict"], strict=True)]
        spread = f"{min(rounds):.2f}-{max(rounds):.2f}"
        ratio = medians[name] / medians["predict"]
        print(f"{labels[name]:<34}{medians[name]:>10.3f}{ratio:>12.2f}{spread:>16}")


def breakdown(model: keras.Model, batch: tf.Tensor, repeats: int, steps: int = 4) -> None:
    """Print where the time of one compiled capture step goes (see the module docstring)."""
    lens = keraslens.Lens(model)
    recorder = lens.recorder
    recorder.trace(batch)
    chosen = [layer for _, layer in lens.layers]

    def read_only(x: tf.Tensor) -> list:
        def touch(layer: keras.layers.Layer, tensor: tf.Tensor) -> tf.Tensor:
            return tf.numpy_function(lambda a: np.zeros(1), [tensor], [tf.float64])[0]

        with intercept.record_calls(chosen, touch) as record:
            model(x, training=False)
        return [summary for calls in record.values() for _, summary in calls if summary is not None]

    runs = {
        "forward pass": tf.function(lambda x: model(x, training=False)),
        "outputs read, nothing reduced": tf.function(read_only),
        "capture step": lambda x: recorder._stats_step(x),
    }
    times = {name: [] for name in runs}
    for fn in runs.values():
        tf.nest.map_structure(lambda t: t.numpy(), fn(batch))
    pairs = list(runs.items())
    for index in range(repeats):
        for name, fn in pairs if index % 2 == 0 else pairs[::-1]:
            start = time.perf_counter()
            for _ in range(steps):
                out = fn(batch)
            tf.nest.map_structure(lambda t: t.numpy(), out)
            times[name].append((time.perf_counter() - start) / steps)
    outputs = [a.reshape(len(a), -1, a.shape[-1]) for a in lens.activations(batch).values()]
    kernel = sum(min(timed(lambda a=a: _kernel_pass(a)) for _ in range(3)) for a in outputs)
    forward = times["forward pass"]
    print(f"{'per batch':<34}{'ms':>10}{'/ forward':>12}{'per round':>16}")
    for name, values in times.items():
        rounds = [t / f for t, f in zip(values, forward, strict=True)]
        ratio = statistics.median(rounds)
        spread = f"{min(rounds):.2f}-{max(rounds):.2f}"
        print(f"{name:<34}{statistics.median(values) * 1e3:>10.1f}{ratio:>12.2f}{spread:>16}")
    total = sum(a.nbytes for a in outputs)
    print(
        f"{'kernel alone, all outputs':<34}{kernel * 1e3:>10.1f}"
        f"{kernel / statistics.median(forward):>12.2f}"
        f"   ({len(outputs)} outputs, {total / 1e6:.0f} MB, {total / kernel / 1e9:.1f} GB/s)"
    )


def _kernel_pass(values: np.ndarray) -> None:
    """The kernel on one output, as `reduce.batch_summary` runs it (default settings)."""
    samples, positions, units = values.shape
    shift = np.zeros(units, np.float32)
    moments, hist = np.empty((len(_kernel.ROWS), units)), np.empty(HIST_BINS, np.int64)
    flags = (True, False, 0.0, 0.0, min(32, samples))
    threads = reduce.reduction_threads()
    _kernel.summarize(values, samples, positions, units, shift, *flags, moments, hist, threads)


def peak_rss_child(n: int, what: str) -> None:
    model = reference_cnn()
    if what == "capture":
        keraslens.Lens(model).capture(random_batches(n))
    else:
        forward = tf.function(lambda x: model(x, training=False))
        for batch in random_batches(n):
            forward(batch)
    print(json.dumps({"peak_rss_mb": _high_water_mark_mb()}))


def _high_water_mark_mb() -> float:
    # VmHWM belongs to this process's address space; getrusage's ru_maxrss would also
    # carry the parent's high-water mark across fork and exec.
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


MALLOC_SETTINGS = {
    # glibc gives each thread an arena and TensorFlow's pool threads free 30 MB
    # activation buffers in one arena and allocate in another: two arenas keep the
    # figures about the program (the same setting for every column).
    "default": {"MALLOC_ARENA_MAX": "2"},
    # glibc raises its mmap threshold (up to 32 MB) each time a large mmapped buffer is
    # freed, so later activation buffers of 8-17 MB come from the heap, which fragments
    # with the number of batches. A fixed threshold keeps every large buffer mmapped and
    # returned on free: what is left is the program's own memory.
    "fixed mmap threshold": {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "131072"},
}


def peak_rss(n: int, what: str, malloc: str) -> float:
    env = {**os.environ, **MALLOC_SETTINGS[malloc]}
    out = subprocess.run(
        [sys.executable, __file__, "--rss-child", str(n), "--rss-what", what],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_rss_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", choices=list(MODELS), default=["reference"])
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--batch", type=int, help="default: 256, MobileNetV2 128, others 64")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--loaded", action="store_true", help="also time under a busy process")
    parser.add_argument("--rss-repeats", type=int, default=3)
    parser.add_argument("--breakdown", action="store_true", help="where a step's time goes")
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rss-what", default="capture", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        peak_rss_child(args.rss_child, args.rss_what)
        return
    if args.breakdown:
        for name in args.model:
            build, side, batch = MODELS[name]
            batch = args.batch or batch
            print(f"\n{name} {side}x{side}, batch {batch}, median of {args.repeats}")
            breakdown(build(), tf.random.uniform((batch, side, side, 3)), args.repeats)
        return
    bandwidth, flops = machine_probes()
    print(f"machine probes before the runs: read {bandwidth:.1f} GB/s, matmul {flops:.0f} GFLOP/s")
    for name in args.model:
        build, side, batch = MODELS[name]
        batch = args.batch or batch
        model, data = build(), random_batches(args.samples, side, batch)
        title = f"{name} {side}x{side}, N={args.samples}, batch {batch}, median of {args.repeats}"
        naive = name == "reference"
        print_ratios(f"\n{title}", compare(model, data, args.repeats, naive))
        if args.loaded:
            with busy_process():
                times = compare(model, data, args.repeats, naive=False)
            print_ratios(f"{title}, another CPU-bound process running", times)
    if "reference" not in args.model or args.rss_repeats < 1:
        return
    sizes = (2_000, 10_000, 40_000)
    for malloc in MALLOC_SETTINGS:
        rss = {
            (n, what): statistics.median(peak_rss(n, what, malloc) for _ in range(args.rss_repeats))
            for n in sizes
            for what in ("capture", "forward")
        }
        print(f"\npeak RSS (MB), malloc {malloc}: {MALLOC_SETTINGS[malloc]}")
        print(f"{'N':>8}{'capture':>12}{'forward only':>16}")
        for n in sizes:
            print(f"{n:>8}{rss[n, 'capture']:>12.0f}{rss[n, 'forward']:>16.0f}")
        growth = {what: rss[40_000, what] - rss[2_000, what] for what in ("capture", "forward")}
        print(
            f"growth 2k -> 40k: capture {growth['capture']:.0f} MB, "
            f"forward only {growth['forward']:.0f} MB"
        )


if __name__ == "__main__":
    main()
