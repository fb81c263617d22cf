"""Per-image time of each heatmap method through keraslens vs tf-keras-vis called directly.

Both sides explain the same batch, for the same classes, on the same Functional
MobileNetV2 (random weights, 96x96, softmax head), in every round, in shuffled order, so
that load from other processes hits both alike. tf-keras-vis gets its documented setup:
a clone with `ReplaceToLinear`; keraslens gets the model as is. Each side's visualiser
is built once, as a user would in a loop; keraslens's `heatmap()` builds its compiled graph
on the first call and reuses it. The ratios are medians over rounds of keraslens / tf-keras-vis,
on the wall clock and on process CPU time (steadier on a shared machine). Then
activation maximization: steps per second of `keraslens.maximize` and of tf-keras-vis's
`ActivationMaximization` with the same settings.

    python benchmarks/heatmaps.py [--rounds 7] [--images 8] [--steps 10] [--methods gradcam,...]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from tf_keras_vis.activation_maximization import ActivationMaximization  # noqa: E402
from tf_keras_vis.activation_maximization.input_modifiers import Jitter  # noqa: E402
from tf_keras_vis.activation_maximization.regularizers import Norm, TotalVariation2D  # noqa: E402
from tf_keras_vis.gradcam import Gradcam  # noqa: E402
from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus  # noqa: E402
from tf_keras_vis.layercam import Layercam  # noqa: E402
from tf_keras_vis.saliency import Saliency  # noqa: E402
from tf_keras_vis.scorecam import Scorecam  # noqa: E402
from tf_keras_vis.utils.model_modifiers import ReplaceToLinear  # noqa: E402
from tf_keras_vis.utils.scores import CategoricalScore  # noqa: E402

from keraslens.vis import heatmap, maximize  # noqa: E402

LAYER = "Conv_1"
SCORECAM_LAYER = "block_16_project"  # 112 channels: full Score-CAM over 1280 takes minutes
# (keraslens method, options, tf-keras-vis class, its call arguments, images used)
CASES = [
    ("gradcam", {}, Gradcam, {"penultimate_layer": LAYER}, None),
    ("gradcam++", {}, GradcamPlusPlus, {"penultimate_layer": LAYER}, None),
    ("layercam", {}, Layercam, {"penultimate_layer": LAYER}, None),
    (
        "faster-scorecam",
        {"max_channels": 10},
        Scorecam,
        {"penultimate_layer": LAYER, "max_N": 10},
        None,
    ),
    ("scorecam", {}, Scorecam, {"penultimate_layer": SCORECAM_LAYER}, 2),
    ("saliency", {}, Saliency, {}, None),
    ("smoothgrad", {"samples": 10}, Saliency, {"smooth_samples": 10}, None),
]


def _timed(run) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def _measure(runs: dict, rounds: int) -> tuple[dict, float, float]:
    """Median wall seconds of each run, and the median over rounds of the first run's time
    over the second's, on the wall clock and on process CPU time (which load from other
    processes on a shared machine inflates much less). Every round runs each once, in a
    shuffled order."""
    for run in runs.values():
        run()  # warm-up: the first call traces functions and fills caches
    order = list(runs)
    times = {key: [] for key in runs}
    shuffle = random.Random(0).shuffle
    for _ in range(rounds):
        shuffle(order)
        for key in order:
            times[key].append(_timed(runs[key]))
    ours, theirs = (times[key] for key in list(runs)[:2])
    ratios = [
        statistics.median(a[clock] / b[clock] for a, b in zip(ours, theirs, strict=True))
        for clock in (0, 1)
    ]
    walls = {key: statistics.median(wall for wall, _ in t) for key, t in times.items()}
    return walls, ratios[0], ratios[1]


def _runs(model, linear, case, x, targets) -> dict:
    name, options, visualizer, direct_options, count = case
    images, classes = x[:count], targets[:count]
    layer = direct_options.get("penultimate_layer")
    direct = visualizer(linear, clone=False)
    score = CategoricalScore(classes.tolist())
    return {
        "keraslens": lambda: heatmap(model, images, name, classes, layer, **options),
        "tf-keras-vis": lambda: direct(score, images, **direct_options),
    }


def bench_heatmaps(model, linear, x, targets, rounds, methods):
    rows = []
    for case in (case for case in CASES if case[0] in methods):
        images = len(x[: case[-1]])
        seconds, wall, cpu = _measure(_runs(model, linear, case, x, targets), rounds)
        ms = {key: value / images * 1e3 for key, value in seconds.items()}
        rows.append((case[0], ms["keraslens"], ms["tf-keras-vis"], wall, cpu))
    return rows


def bench_maximization(model, linear, steps, rounds):
    units = [1, 2, 3, 4]
    start = np.random.default_rng(0).uniform(-1, 1, (len(units), 96, 96, 3)).astype(np.float32)

    def ours():
        maximize(model, None, units, steps, seed=0, input_range=(-1.0, 1.0), jitter=4)

    def theirs():
        # keraslens's defaults for this range: Adam 0.05 * 2, penalties divided by the span 2.
        ActivationMaximization(linear, clone=False)(
            CategoricalScore(units),
            seed_input=start,
            input_range=(-1.0, 1.0),
            input_modifiers=[Jitter(jitter=4)],
            regularizers=[TotalVariation2D(weight=2.5), Norm(weight=0.25, p=2)],
            steps=steps,
            optimizer=keras.optimizers.Adam(0.1),
        )

    seconds, wall, cpu = _measure({"keraslens": ours, "tf-keras-vis": theirs}, rounds)
    return steps / seconds["keraslens"], steps / seconds["tf-keras-vis"], wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--methods", default=",".join(case[0] for case in CASES))
    args = parser.parse_args()

    keras.utils.disable_interactive_logging()  # Score-CAM's predict() progress bars
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(
        weights=None, input_shape=(96, 96, 3), alpha=0.35, classes=10
    )
    linear = keras.models.clone_model(model)
    linear.set_weights(model.get_weights())
    ReplaceToLinear()(linear)
    x = np.random.default_rng(0).uniform(-1, 1, (args.images, 96, 96, 3)).astype(np.float32)
    targets = np.arange(args.images) % 10

    print(
        f"MobileNetV2 0.35 96x96 (random weights), batch of {args.images} "
        f"(Score-CAM: 2), medians of {args.rounds} rounds"
    )
    header = f"{'':<16}{'heatmap()':>11}{'tf-keras-vis':>14}"
    print(f"{header}{'ratio':>8}{'ratio':>8}")
    print(f"{'method':<16}{'ms/image':>11}{'ms/image':>14}{'wall':>8}{'CPU':>8}")
    for name, ours, theirs, wall, cpu in bench_heatmaps(
        model, linear, x, targets, args.rounds, args.methods.split(",")
    ):
        print(f"{name:<16}{ours:>11.1f}{theirs:>14.1f}{wall:>7.2f}x{cpu:>7.2f}x", flush=True)
    ours, theirs, wall, cpu = bench_maximization(model, linear, args.steps, args.rounds)
    print(f"\nactivation maximization, 4 classes at once, {args.steps} steps")
    print(f"{'steps/s':<16}{ours:>11.2f}{theirs:>14.2f}{'':>11}{wall:>7.2f}x{cpu:>7.2f}x")
    print("ratio: median over rounds of keraslens time / tf-keras-vis time (goal <= 1.10)")


if __name__ == "__main__":
    main()
