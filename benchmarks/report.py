"""Time and size of a full default report on a keras.applications model, against predict.

Runs what `keraslens report` runs (`keraslens.analyze` with the default plugins, then
the HTML and the JSON twin) on a random-weight model and random data, and
`model.predict` over the same data (the fastest of three calls before the report and
three after), in one process; `--repeats` times (default 2), each on a freshly built
model, so that every report pays its own traces. Prints, per report, its time divided by
the predict time (wall-clock, and CPU time of every thread), the CPU time the hypervisor
gave to other guests meanwhile (on a shared virtual machine the same run varies by
half), each plugin's time, and then the best ratio and the sizes of the HTML and the
JSON twin (and of the full JSON, `to_json(full=True)`).

With `--maximize`: milliseconds per step of `keraslens.maximize` on the digits CNN at
32x32 (scikit-learn's digits upscaled, 10 classes in one batch), against tf-keras-vis's
`ActivationMaximization` with the same settings (the loop keraslens used before).

    python benchmarks/report.py [--model ResNet50] [--size 64] [--samples 512] [--repeats 2]
    python benchmarks/report.py --maximize [--steps 50]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keraslens  # noqa: E402


def build(name: str, size: int, classes: int) -> keras.Model:
    """A random-weight keras.applications model with a softmax head."""
    keras.utils.set_random_seed(0)
    return getattr(keras.applications, name)(
        weights=None, input_shape=(size, size, 3), classes=classes
    )


def digits_cnn() -> tuple[keras.Model, np.ndarray]:
    """A small CNN briefly trained on scikit-learn's digits upscaled to 32x32."""
    from sklearn.datasets import load_digits

    keras.utils.set_random_seed(0)
    data = load_digits()
    x = np.kron(data.images / 16.0, np.ones((4, 4))).astype(np.float32)[..., None]
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((32, 32, 1)),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(64, activation="relu"),
            layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, data.target, epochs=1, batch_size=64, verbose=0)
    return model, x


def per_step(steps: int) -> None:
    """Milliseconds per step, keraslens against tf-keras-vis, 10 classes in one batch."""
    from tf_keras_vis.activation_maximization import ActivationMaximization
    from tf_keras_vis.activation_maximization.regularizers import Norm, TotalVariation2D
    from tf_keras_vis.utils.scores import CategoricalScore

    from keraslens.attr.compat import build_graph

    model, _ = digits_cnn()
    classes = list(range(10))
    keraslens.maximize(model, None, classes, steps=2)  # trace once, as a second call would
    started = time.perf_counter()
    keraslens.maximize(model, None, classes, steps=steps)
    ours = (time.perf_counter() - started) / steps * 1e3
    # Both sides ascend the same pre-softmax scores (tf-keras-vis's ReplaceToLinear needs
    # `output_names`, which a Keras 3 Sequential lacks).
    scores = build_graph(model, (32, 32, 1)).score_model()
    visualizer = ActivationMaximization(scores, clone=False)
    seed = np.random.default_rng(0).uniform(0, 1, (10, 32, 32, 1)).astype(np.float32)
    arguments = dict(
        seed_input=seed,
        input_range=(0.0, 1.0),
        regularizers=[Norm(0.5), TotalVariation2D(5.0)],
        optimizer=keras.optimizers.Adam(0.05),
    )
    visualizer(CategoricalScore(classes), steps=2, **arguments)
    arguments["optimizer"] = keras.optimizers.Adam(0.05)
    started = time.perf_counter()
    visualizer(CategoricalScore(classes), steps=steps, **arguments)
    theirs = (time.perf_counter() - started) / steps * 1e3
    print(f"digits CNN 32x32, 10 classes in one batch, {steps} steps")
    print(f"keraslens.maximize      {ours:7.2f} ms per step")
    print(f"tf-keras-vis            {theirs:7.2f} ms per step  ({theirs / ours:.1f} x keraslens)")


def best_predict(model: keras.Model, x: np.ndarray, repeats: int = 3) -> tuple[float, float]:
    """Wall and CPU seconds of the fastest of `repeats` `model.predict` calls over `x`: the
    fairest denominator on a shared machine, where a slow call is another process's doing."""
    times = []
    for _ in range(repeats):
        started, cpu = time.perf_counter(), time.process_time()
        model.predict(x, batch_size=256, verbose=0)
        times.append((time.perf_counter() - started, time.process_time() - cpu))
    return min(times)


def steal_seconds() -> float:
    """CPU time the hypervisor gave to other guests so far (Linux `/proc/stat`), or 0."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def one_report(args: argparse.Namespace, x: np.ndarray) -> dict:
    """A full default report on a freshly built model (nothing traced yet), with the
    fastest `predict` of six around it."""
    model = build(args.model, args.size, args.classes)
    model.predict(x[:32], verbose=0)  # compile once, as a report's capture would
    predict = best_predict(model, x)
    stolen = steal_seconds()
    started, cpu = time.perf_counter(), time.process_time()
    result = keraslens.analyze(model, x)
    analysed = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        html, twin, full = Path(tmp, "r.html"), Path(tmp, "r.json"), Path(tmp, "full.json")
        result.to_html(html)
        result.to_json(twin)
        total = time.perf_counter() - started
        total_cpu = time.process_time() - cpu
        stolen = steal_seconds() - stolen
        result.to_json(full, full=True)
        sizes = [p.stat().st_size / 1e6 for p in (html, twin, full)]
    predict = min(predict, best_predict(model, x))  # before and after: the fastest of six
    return dict(
        result=result,
        predict=predict,
        total=total,
        cpu=total_cpu,
        analysed=analysed,
        stolen=stolen,
        sizes=sizes,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ResNet50")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2, help="Reports, each on a fresh model.")
    parser.add_argument("--maximize", action="store_true", help="Time activation maximization.")
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    if args.maximize:
        per_step(args.steps)
        return
    x = np.random.default_rng(0).uniform(0, 1, (args.samples, args.size, args.size, 3))
    x = x.astype(np.float32)
    runs = [one_report(args, x) for _ in range(args.repeats)]
    print(f"{args.model} {args.size}x{args.size}, {args.samples} samples", end="")
    print(f", {len(runs[0]['result'].stats)} layers, {len(runs)} reports on fresh models")
    for index, run in enumerate(runs, start=1):
        predict, total, result = run["predict"], run["total"], run["result"]
        print(f"report {index}: predict {predict[0]:.2f} s wall {predict[1]:.2f} s CPU")
        print(
            f"  report         {total:8.2f} s wall {run['cpu']:8.2f} s CPU  = "
            f"{total / predict[0]:.1f} x predict (wall), {run['cpu'] / predict[1]:.1f} x (CPU)"
            f"; {run['stolen']:.1f} s stolen by the hypervisor"
        )
        print(f"  analyze        {run['analysed']:8.2f} s")
        print(f"  render, write  {total - run['analysed']:8.2f} s")
        for name, plugin in result.plugins.items():
            state = "" if plugin.error is None else f"  ERROR {plugin.error[:80]}"
            print(f"  {name:24s} {plugin.seconds:6.2f} s{state}")
    best = min(runs, key=lambda run: run["total"] / run["predict"][0])
    sizes = best["sizes"]
    print(
        f"best: {best['total'] / best['predict'][0]:.1f} x predict (wall), "
        f"{best['cpu'] / best['predict'][1]:.1f} x (CPU)"
    )
    print(f"HTML {sizes[0]:.2f} MB, JSON {sizes[1]:.2f} MB, full JSON {sizes[2]:.2f} MB")
    print(f"status {best['result'].status}, counts {best['result'].counts}")


if __name__ == "__main__":
    main()
