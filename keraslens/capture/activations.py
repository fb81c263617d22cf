"""Which activation function a layer applies, and the bounds of bounded ones."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

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
    fn = (
        getattr(cell, "activation", None)
        if cell is not None
        else getattr(layer, "activation", None)
    )
    name = _function_name(fn)
    if name == "relu" and getattr(fn, "keywords", {}).get("max_value") == 6:
        name = "relu6"
    return name, BOUNDS.get(name) if name else None


# TensorFlow ops that apply an activation, by op type: what `keras.ops.relu`,
# `keras.activations.sigmoid`, `tf.nn.tanh` and the like leave in a traced graph.
_OPS = {
    "Relu": "relu",
    "Relu6": "relu6",
    "LeakyRelu": "leaky_relu",
    "Elu": "elu",
    "Selu": "selu",
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "Softmax": "softmax",
    "Softplus": "softplus",
    "Softsign": "softsign",
}
# Ops that pass a value through unchanged in range: a cast to a policy's dtype, an identity.
_PASS_THROUGH = frozenset({"Identity", "Cast", "IdentityN"})


def identify_output(
    layer: keras.layers.Layer, output: tf.Tensor | None
) -> tuple[str | None, tuple[float, float] | None]:
    """`identify(layer)`, or, for a layer with no declared activation, the activation op
    its traced `output` comes from.

    A custom layer may apply its activation inside `call` (`keras.ops.relu(x)`); its
    output tensor, while the capture traces the model, is then the output of a `Relu`
    op. Only the op that produced the output counts: a `relu` followed by anything
    else (a residual add) leaves the layer unbounded.
    """
    name, bounds = identify(layer)
    if name not in (None, "linear") or output is None:
        return name, bounds
    op = _producer(output)
    while op is not None and op.type in _PASS_THROUGH and op.inputs:
        op = _producer(op.inputs[0])
    found = _OPS.get(op.type) if op is not None else None
    if found is None:
        return name, bounds
    return found, BOUNDS.get(found)


def _producer(tensor: tf.Tensor):
    """The graph op that produced `tensor`; None for an eager tensor."""
    try:
        return tensor.op
    except AttributeError:  # eager tensors have no op
        return None
