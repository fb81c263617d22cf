"""Time of keraslens's text analyses on a 2-layer Transformer encoder, over one predict.

The encoder (random weights): token ids (256 samples x 128 tokens, vocabulary 1,000),
an embedding of width 64 plus a learned position embedding, two blocks of
`MultiHeadAttention` (4 heads) and a feed-forward layer, mean-pooled into 2 classes.
Each case runs over the same 256 samples with the same batch size as
`model.predict(x, batch_size=...)` (token attributions: 4 times that many rows per pass,
as their passes carry steps, draws or patches), is warmed up once (tracing), then timed in shuffled
rounds; printed is the median over rounds of its time divided by the predict's, on the
wall clock and on process CPU time (steadier on a shared machine).

    python benchmarks/text.py [--rounds 5] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keraslens  # noqa: E402

SAMPLES, TOKENS, VOCABULARY, WIDTH, HEADS, BLOCKS = 256, 128, 1000, 64, 4, 2

TOKEN_ATTRIBUTIONS = [
    ("saliency", {}),
    ("gradient-input", {}),
    ("integrated-gradients", {"steps": 16}),
    ("smoothgrad", {"samples": 8}),
    ("occlusion", {"patch": 8, "stride": 8}),
]
"""Token attributions timed (at the embedding, one value per token), with their settings."""


def build_encoder(seed: int = 0) -> keras.Model:
    """The benchmark's encoder: token ids (TOKENS,) -> 2 class scores."""
    keras.utils.set_random_seed(seed)
    tokens = keras.Input((TOKENS,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(VOCABULARY, WIDTH, name="embedding")(tokens)
    positions = keras.layers.Embedding(TOKENS, WIDTH, name="positions")(keras.ops.arange(TOKENS))
    x = x + positions
    for i in range(BLOCKS):
        attended = keras.layers.MultiHeadAttention(HEADS, WIDTH // HEADS, name=f"mha{i}")(x, x)
        x = keras.layers.LayerNormalization(name=f"norm{i}a")(x + attended)
        hidden = keras.layers.Dense(2 * WIDTH, activation="relu", name=f"ffn{i}a")(x)
        x = keras.layers.LayerNormalization(name=f"norm{i}b")(
            x + keras.layers.Dense(WIDTH, name=f"ffn{i}b")(hidden)
        )
    pooled = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model(tokens, keras.layers.Dense(2, name="logits")(pooled), name="encoder")


def cases(model: keras.Model, x: np.ndarray, batch_size: int) -> dict[str, Callable[[], object]]:
    """What is timed, by name; "predict" is the reference."""
    return {
        "predict": lambda: model.predict(x, batch_size=batch_size, verbose=0),
        "attention capture": lambda: keraslens.attention(model, x, batch_size=batch_size),
        "head statistics": lambda: keraslens.attention.head_statistics(
            model, x, batch_size=batch_size
        ),
        **{
            f"{method} {' '.join(f'{k}={v}' for k, v in options.items())}".strip(): (
                lambda method=method, options=options: keraslens.attribute(
                    model, x, method, 0, batch_size=batch_size * 4, **options
                )
            )
            for method, options in TOKEN_ATTRIBUTIONS
        },
    }


def _timed(run: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(
    runs: dict[str, Callable[[], object]], rounds: int
) -> dict[str, tuple[float, float, float]]:
    """Per case: median seconds, and median ratios to "predict" (wall, CPU) over rounds."""
    for run in runs.values():
        run()  # warm-up: tracing and caches
    order = list(runs)
    shuffle = random.Random(0).shuffle
    times: dict[str, list[tuple[float, float]]] = {key: [] for key in runs}
    for _ in range(rounds):
        shuffle(order)
        for key in order:
            times[key].append(_timed(runs[key]))
    reference = times["predict"]
    return {
        key: (
            statistics.median(w for w, _ in spent),
            statistics.median(w / r[0] for (w, _), r in zip(spent, reference, strict=True)),
            statistics.median(c / r[1] for (_, c), r in zip(spent, reference, strict=True)),
        )
        for key, spent in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    model = build_encoder()
    x = np.random.default_rng(0).integers(0, VOCABULARY, (SAMPLES, TOKENS)).astype("int32")
    results = measure(cases(model, x, args.batch_size), args.rounds)
    print(
        f"{BLOCKS}-block encoder, {SAMPLES} samples x {TOKENS} tokens, {HEADS} heads, "
        f"batch {args.batch_size}, median of {args.rounds} rounds"
    )
    print(f"{'case':<20} {'seconds':>8} {'/ predict (wall)':>17} {'/ predict (CPU)':>16}")
    for key, (seconds, wall, cpu) in results.items():
        print(f"{key:<20} {seconds:>8.3f} {wall:>17.2f} {cpu:>16.2f}")


if __name__ == "__main__":
    main()
