"""The demos behind `keraslens demo`: a small CNN trained on scikit-learn's digits, and
(`--text`) a small Transformer encoder trained on generated token sequences.

The digits (8x8 grey images, 1,797 of them) ship with scikit-learn and the token data is
generated, so neither demo needs a download. Training takes seconds on a laptop CPU.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import keras
import numpy as np

from keraslens.result import AnalysisResult
from keraslens.runner import analyze

EPOCHS = 4

VOCABULARY, LENGTH, DECIDING = 48, 16, 1
"""The text demo: token ids 2..47 at random, label 1 when the deciding token (id 1) occurs;
id 0 is padding."""


def digits(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`(x_train, y_train, x_val, y_val)`: digits scaled to [0, 1], shaped (n, 8, 8, 1)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype("float32")[..., None]
    y = bunch.target.astype("int64")
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    split = int(0.8 * len(x))
    return x[:split], y[:split], x[split:], y[split:]


def build_model(seed: int = 0) -> keras.Model:
    """A small CNN for 8x8x1 digits (about 12,000 parameters)."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1), name="digit"),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(name="pool"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(32, activation="relu", name="dense"),
            keras.layers.Dense(10, activation="softmax", name="digits"),
        ],
        name="digits_cnn",
    )


def train(seed: int = 0, epochs: int = EPOCHS) -> tuple[keras.Model, np.ndarray, np.ndarray]:
    """Train the demo CNN; return it with the validation images and labels."""
    x_train, y_train, x_val, y_val = digits(seed)
    model = build_model(seed)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, batch_size=64, epochs=epochs, shuffle=False, verbose=0)
    return model, x_val, y_val


def run(
    seed: int = 0,
    epochs: int = EPOCHS,
    minimal: bool = False,
    plugins: list[str] | None = None,
    **analyze_kwargs: Any,
) -> AnalysisResult:
    """Train the demo CNN and analyse it with every installed plugin (or `plugins`).

    Example:

    ```python
    keraslens.demo.run().to_html("demo-report.html")
    ```
    """
    model, x_val, y_val = train(seed, epochs)
    return analyze(
        model,
        x_val,
        plugins,
        labels=y_val,
        seed=seed,
        minimal=minimal,
        data_source="scikit-learn digits, validation split",
        **analyze_kwargs,
    )


def planted_tokens(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`(tokens, labels)`: random sequences, half of them with the deciding token planted
    at a random position, the tails padded with zeros."""
    rng = np.random.default_rng(seed)
    x = rng.integers(2, VOCABULARY, (count, LENGTH))
    y = rng.integers(0, 2, count)
    x[y == 1, rng.integers(0, LENGTH // 2, int(y.sum()))] = DECIDING
    for row, length in enumerate(rng.integers(LENGTH // 2, LENGTH + 1, count)):
        x[row, length:] = 0
    return x.astype("int32"), y.astype("int64")


def build_text_model(seed: int = 0) -> keras.Model:
    """Embedding (padding masked), one MultiHeadAttention block, max-pooled to 2 classes."""
    keras.utils.set_random_seed(seed)
    tokens = keras.Input((LENGTH,), dtype="int32", name="tokens")
    embedded = keras.layers.Embedding(VOCABULARY, 16, mask_zero=True, name="embedding")(tokens)
    attended = keras.layers.MultiHeadAttention(2, 8, name="attention")(embedded, embedded)
    hidden = keras.layers.LayerNormalization(name="norm")(embedded + attended)
    hidden = keras.layers.Dense(16, activation="relu", name="dense")(hidden)
    pooled = keras.layers.GlobalMaxPooling1D(name="pool")(hidden)
    outputs = keras.layers.Dense(2, activation="softmax", name="label")(pooled)
    return keras.Model(tokens, outputs, name="planted_token_encoder")


def vocabulary() -> list[str]:
    """The text demo's token strings, id by id."""
    return ["<pad>", "DECIDING", *(f"w{i}" for i in range(2, VOCABULARY))]


def run_text(
    seed: int = 0, epochs: int = EPOCHS, minimal: bool = False, **analyze_kwargs: Any
) -> AnalysisResult:
    """Train the text demo and analyse it: token attributions name the deciding token.

    Example:

    ```python
    keraslens.demo.run_text().to_html("text-report.html")
    ```
    """
    x, y = planted_tokens(1600, seed)
    model = build_text_model(seed)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(x[:1280], y[:1280], batch_size=64, epochs=epochs, verbose=0)
    with tempfile.TemporaryDirectory() as folder:
        vocab = Path(folder) / "vocab.txt"
        vocab.write_text("\n".join(vocabulary()) + "\n", encoding="utf-8")
        methods = ["integrated-gradients", "occlusion", "saliency"]
        return analyze(
            model,
            x[1280:],
            labels=y[1280:],
            seed=seed,
            minimal=minimal,
            options={"heatmaps": {"methods": methods, "vocab": str(vocab)}},
            data_source="generated token sequences (label: the deciding token occurs)",
            **analyze_kwargs,
        )
