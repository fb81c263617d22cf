"""The demo behind `keraslens demo`: a small CNN trained on scikit-learn's digits.

The digits (8x8 grey images, 1,797 of them) ship with scikit-learn, so the demo
needs no download. Training takes a few seconds on a laptop CPU.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from keraslens.result import AnalysisResult
from keraslens.runner import analyze

EPOCHS = 4


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
