"""Per-image time of every `keraslens.attribute` method, and of the shared ones against
tf-keras-vis, on a digits CNN at 32x32.

The model is the issue's setting: a CNN with a softmax head and about 28k parameters,
trained for 2 epochs on scikit-learn's digits upscaled to 32x32; 64 validation images are
explained for their true labels, every method with its default options (occlusion patch
4 stride 2, RISE 2000 masks, KernelSHAP 800 samples, ...). Each method is first called on
two images (its functions are traced then), then timed on the 64, `--rounds` times; the
medians are printed in ms per image, on the wall clock and in process CPU time, next to
Xplique 2.0.2's figures from issue 16 (same model kind, same kind of machine, not run
here). For the methods tf-keras-vis also has, both libraries explain the same batch in
alternating rounds (tf-keras-vis built once, with `ReplaceToLinear` as its model
modifier, maps not normalised), and the ratio is the median of keraslens time /
tf-keras-vis time.

    python benchmarks/attribution.py [--rounds 3] [--images 64] [--methods occlusion,...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tf_keras_vis.gradcam import Gradcam  # noqa: E402
from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus  # noqa: E402
from tf_keras_vis.layercam import Layercam  # noqa: E402
from tf_keras_vis.saliency import Saliency  # noqa: E402
from tf_keras_vis.utils.model_modifiers import ReplaceToLinear  # noqa: E402
from tf_keras_vis.utils.scores import CategoricalScore  # noqa: E402

import keraslens  # noqa: E402
from keraslens.attr import METHODS  # noqa: E402

LAYER = "conv2"
XPLIQUE_WALL = {  # ms per image, Xplique 2.0.2, issue 16
    "saliency": 0.38,
    "gradient-input": 0.40,
    "integrated-gradients": 33.5,
    "smoothgrad": 13.2,
    "vargrad": 29.7,
    "guided-backprop": 0.43,
    "occlusion": 85,
    "rise": 638,
    "kernelshap": 186,
    "sobol": 261,
    "hsic": 1108,
}
# keraslens method -> (tf-keras-vis class, its call options)
SHARED = {
    "saliency": (Saliency, {"normalize_map": False}),
    "smoothgrad": (
        Saliency,
        {"smooth_samples": 20, "smooth_noise": 0.2, "normalize_map": False},
    ),
    "gradcam": (Gradcam, {"penultimate_layer": LAYER, "normalize_cam": False}),
    "gradcam++": (GradcamPlusPlus, {"penultimate_layer": LAYER, "normalize_cam": False}),
    "layercam": (Layercam, {"penultimate_layer": LAYER, "normalize_cam": False}),
}


def digits_32(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits in [0, 1], bilinearly upscaled to (n, 32, 32, 1), shuffled."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = tf.image.resize((bunch.images / 16.0)[..., None].astype("float32"), (32, 32))
    order = np.random.default_rng(seed).permutation(len(bunch.target))
    return np.asarray(images)[order], bunch.target[order].astype("int64")


def trained_cnn(x: np.ndarray, y: np.ndarray, epochs: int = 2) -> keras.Model:
    """The benchmark's CNN (28,168 parameters), trained for `epochs` epochs."""
    keras.utils.set_random_seed(0)
    layers = [
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", name=LAYER),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(26, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ]
    inputs = outputs = keras.Input((32, 32, 1))
    for layer in layers:
        outputs = layer(outputs)
    # Functional: tf-keras-vis's ReplaceToLinear reads `output_names`, which a Keras 3
    # Sequential lacks.
    model = keras.Model(inputs, outputs, name="digits_cnn_32")
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, batch_size=64, epochs=epochs, verbose=0)
    return model


def _timed(run) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_methods(model, x, targets, methods, rounds) -> list[tuple]:
    """(method, wall ms/image, CPU ms/image): medians over rounds after a traced warm-up."""
    rows = []
    for name in methods:
        keraslens.attribute(model, x[:2], name, targets[:2])
        times = [
            _timed(lambda n=name: keraslens.attribute(model, x, n, targets)) for _ in range(rounds)
        ]
        wall, cpu = (statistics.median(t[k] for t in times) / len(x) * 1e3 for k in (0, 1))
        rows.append((name, wall, cpu))
        print(f"{name:<22}{wall:>10.2f}{cpu:>10.2f}{_xplique(name):>12}", flush=True)
    return rows


def bench_shared(model, x, targets, rounds) -> None:
    """keraslens / tf-keras-vis time on the same batch, in alternating rounds."""
    score = CategoricalScore(targets.tolist())
    for name, (visualizer, options) in SHARED.items():
        theirs = visualizer(model, model_modifier=ReplaceToLinear(), clone=True)
        layer = {"layer": LAYER} if "penultimate_layer" in options else {}
        runs = {
            "keraslens": lambda n=name, o=layer: keraslens.attribute(model, x, n, targets, **o),
            "tf-keras-vis": lambda t=theirs, o=options: t(score, x, **o),
        }
        for run in runs.values():
            run()
        times = {key: [] for key in runs}
        for _ in range(rounds):
            for key, run in runs.items():
                times[key].append(_timed(run))
        ratios = [
            statistics.median(a[k] / b[k] for a, b in zip(*times.values(), strict=True))
            for k in (0, 1)
        ]
        ours, others = (statistics.median(t[0] for t in v) / len(x) * 1e3 for v in times.values())
        print(f"{name:<22}{ours:>10.2f}{others:>14.2f}{ratios[0]:>9.2f}x{ratios[1]:>7.2f}x")


def _xplique(name: str) -> str:
    return f"{XPLIQUE_WALL[name]:.2f}" if name in XPLIQUE_WALL else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()

    start = time.perf_counter()
    images, labels = digits_32()
    split = len(images) - 360
    model = trained_cnn(images[:split], labels[:split])
    x, targets = images[split:][: args.images], labels[split:][: args.images]
    accuracy = (model.predict(images[split:], verbose=0).argmax(1) == labels[split:]).mean()
    print(
        f"digits CNN 32x32, {model.count_params():,} parameters, validation accuracy "
        f"{accuracy:.2f}; {len(x)} images, true-label targets, medians of {args.rounds} rounds"
    )
    print(f"{'method':<22}{'wall':>10}{'CPU':>10}{'Xplique':>12}   (ms per image)")
    bench_methods(model, x, targets, args.methods.split(","), args.rounds)
    print(f"\n{'vs tf-keras-vis':<22}{'keraslens':>10}{'tf-keras-vis':>14}{'wall':>10}{'CPU':>8}")
    bench_shared(model, x, targets, args.rounds)
    print("ratio: median over rounds of keraslens time / tf-keras-vis time")
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
