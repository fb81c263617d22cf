"""Which activation function a layer applies, and the bounds of bounded ones."""

from __future__ import annotations

from typing import Any

import keras

# Output range of bounded activations: a unit sitting at either end is saturated.
BOUNDS: dict[str, tuple[float, float]] = {
    "sigmoid": (0.0, 1.0),
    "hard_sigmoid": (0.0, 1.0),
    "softmax": (0.0, 1.0),
    "tanh": (-1.0, 1.0),
    "hard_tanh": (-1.0, 1.0),
    "softsign": (-1.0, 1.0),
    "relu6": (0.0, 6.0),
}

RELU_FAMILY = frozenset({"relu", "relu6", "leaky_relu", "prelu", "threshold_relu"})
"""Activations whose units 'fire' when their output is > 0 and die at 0."""


def _function_name(fn: Any) -> str | None:
    if fn is None:
        return None
    name = getattr(fn, "__name__", None) or type(fn).__name__
    name = name.lower()
    return {"swish": "silu", "hard_swish": "hard_silu"}.get(name, name)


def identify(layer: keras.layers.Layer) -> tuple[str | None, tuple[float, float] | None]:
    """Return the activation applied by `layer` and its output bounds, if bounded.

    Looks at, in order: activation layers (`ReLU`, `LeakyReLU`, `ELU`, `PReLU`,
    `Softmax`), a recurrent layer's output (bounded by its `activation`), and the
    `activation` argument of any other layer (`Dense`, `Conv2D`, `Activation`, ...).
    """
    layers = keras.layers
    if isinstance(layer, layers.ReLU):
        max_value = layer.max_value
        if layer.negative_slope:
            return "leaky_relu", None
        if max_value is not None:
            max_value = float(max_value)
            name = "relu6" if max_value == 6.0 else "relu"
            return name, (0.0, max_value)
        return "relu", None
    if isinstance(layer, layers.LeakyReLU):
        return "leaky_relu", None
    if isinstance(layer, layers.PReLU):
        return "prelu", None
    if isinstance(layer, layers.ELU):
        return "elu", None
    if isinstance(layer, layers.Softmax):
        return "softmax", BOUNDS["softmax"]
    cell = getattr(layer, "cell", None)
    fn = getattr(cell, "activation", None) if cell is not None else getattr(layer, "activation", None)
    name = _function_name(fn)
    if name == "relu" and getattr(fn, "keywords", {}).get("max_value") == 6:
        name = "relu6"
    return name, BOUNDS.get(name) if name else None
