"""Milliseconds per image of each explanation metric, for Grad-CAM and saliency maps.

The model is a digits CNN at 32x32 (scikit-learn's digits upscaled, softmax head, about
25k parameters, trained for a few epochs); 64 validation images, true-label targets.
Each method's maps are computed once; then every metric scores them, and the time of
`metric.score` alone is taken (the median of `--rounds` runs after one warm-up run that
traces the compiled functions), on the wall clock and in process CPU time (steadier on a
shared machine). The metrics that need fresh attributions (max-sensitivity,
random-logit, randomisation) include them. The reference: Xplique 2.0.2's deletion plus
insertion at 16 steps costs 8.3 ms per image on this kind of machine (issue 17).

    python benchmarks/metrics.py [--rounds 5] [--images 64] [--epochs 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keraslens  # noqa: E402
from keraslens.attr.api import build_method  # noqa: E402
from keraslens.attr.graph import score_graph  # noqa: E402
from keraslens.attr.inputs import model_inputs  # noqa: E402
from keraslens.attr.scorer import Scorer  # noqa: E402
from keraslens.metrics import METRICS, Explained, verdict  # noqa: E402

XPLIQUE_DELETION_INSERTION_MS = 8.3


def digits_32(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits, bilinearly upscaled to 32x32, in [0, 1]: train and validation."""
    import tensorflow as tf
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = tf.image.resize(bunch.images[..., None] / 16.0, (32, 32)).numpy().astype("float32")
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], bunch.target[order]
    split = int(0.8 * len(x))
    return x[:split], y[:split], x[split:], y[split:]


def digits_cnn(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((32, 32, 1)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax", name="digits"),
        ]
    )


def explained(model, x, y, method_name) -> Explained:
    """The batch with its maps, as `keraslens.evaluate` builds it."""
    method = build_method(method_name, {})
    specs, feeds = model_inputs(model, x)
    scorer = Scorer(model, score_graph(model, specs, 0), feeds, y)
    maps = keraslens.attribute(model, x, method, scorer.targets)
    return Explained(model, scorer, maps, method, {"input": 0}, feeds)


def time_metric(metric, batch: Explained, rounds: int) -> tuple[float, float, float]:
    """Median wall and process-CPU seconds of `metric.score(batch)` over `rounds`, after a
    warm-up, and the metric's mean."""
    score = metric.score(batch)
    wall, cpu = [], []
    for _ in range(rounds):
        fresh = dataclasses.replace(batch)  # an empty cache: shared work is timed every round
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        metric.score(fresh)
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    mean = float(np.nanmean(np.asarray(score.per_sample, dtype=float)))
    return statistics.median(wall), statistics.median(cpu), mean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    x_train, y_train, x_val, y_val = digits_32()
    model = digits_cnn()
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=64, verbose=0)
    accuracy = model.evaluate(x_val, y_val, verbose=0)[1]
    x, y = x_val[: args.images], y_val[: args.images]
    print(f"digits CNN 32x32, {model.count_params()} parameters, val accuracy {accuracy:.3f}")
    print(f"{len(x)} images, median of {args.rounds} rounds; ms per image, wall / CPU, and mean")
    print(f"{'metric':<18}" + "".join(f"{m:>28}" for m in ("gradcam", "saliency")))
    batches = {name: explained(model, x, y, name) for name in ("gradcam", "saliency")}
    ms = {name: {} for name in batches}
    means = {name: {} for name in batches}
    for metric_name, cls in METRICS.items():
        cells = []
        for method_name, batch in batches.items():
            wall, cpu, mean = time_metric(cls(), batch, args.rounds)
            ms[method_name][metric_name] = (wall / len(x) * 1e3, cpu / len(x) * 1e3)
            means[method_name][metric_name] = {"mean": mean}
            cells.append(f"{wall / len(x) * 1e3:7.2f} / {cpu / len(x) * 1e3:6.2f}  {mean:8.3f}")
        print(f"{metric_name:<18}" + "".join(f"{c:>28}" for c in cells))
    for method_name in batches:
        wall, cpu = (
            ms[method_name]["deletion"][i] + ms[method_name]["insertion"][i] for i in (0, 1)
        )
        print(
            f"{method_name}: deletion + insertion (16 steps) {wall:.2f} ms per image wall, "
            f"{cpu:.2f} CPU ({wall / XPLIQUE_DELETION_INSERTION_MS:.2f} x Xplique's 8.3 wall); "
            f"verdict: {verdict(means[method_name])}"
        )


if __name__ == "__main__":
    main()
