"""Every `Example:` of the public API runs, on a small digits model, as the docstring has it."""

from __future__ import annotations

import inspect
import re

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

import keraslens

pytestmark = pytest.mark.slow

EXAMPLES = [
    (name, block)
    for name in keraslens.__all__
    if name not in ("__version__", "plugins")
    for block in re.findall(
        r"```python\n(.*?)```", inspect.getdoc(getattr(keraslens, name)) or "", re.S
    )
]


@pytest.fixture(scope="module")
def namespace(tmp_path_factory):
    digits = load_digits()
    x = (digits.images[:96, :, :, None] / 16.0).astype("float32")
    y = digits.target[:96]
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv1"),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax", name="dense"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    folder = tmp_path_factory.mktemp("examples")
    model.save(folder / "model.keras")
    np.save(folder / "x_val.npy", x[64:])
    from keraslens import Option, Plugin, PluginResult
    from keraslens.io import load_data

    names = {
        "keraslens": keraslens,
        "Plugin": Plugin,
        "Option": Option,
        "PluginResult": PluginResult,
        "load_data": load_data,
        "model": model,
        "x": x[:64],
        "y": y[:64],
        "x_train": x[:64],
        "y_train": y[:64],
        "x_val": x[64:],
        "images": x,
        "labels": y,
    }
    return folder, names


@pytest.mark.parametrize(("name", "code"), EXAMPLES, ids=[name for name, _ in EXAMPLES])
def test_the_example_runs(namespace, monkeypatch, name, code):
    folder, names = namespace
    monkeypatch.chdir(folder)
    exec(compile(code, f"<{name} example>", "exec"), dict(names))  # noqa: S102
