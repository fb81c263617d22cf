"""`heatmap()`: the picture of an attribution, one map per sample normalised to [0, 1].

The numbers come from `keraslens.attribute` (the engine in `keraslens.attr`); this module
only reduces them over channels and normalises them, so every attribution method is also a
heatmap method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from keraslens.attr.api import build_method, input_index, method_scorer, per_token
from keraslens.attr.inputs import model_inputs
from keraslens.attr.layers import last_spatial_layer, layer_shapes, require_spatial
from keraslens.attr.method import AttributionMethod
from keraslens.attr.registry import METHODS
from keraslens.attr.weights import Weights
from keraslens.errors import KeraslensError


@dataclass(frozen=True)
class Explanation:
    """Maps for a batch, with the classes they explain and what the model predicted.

    Args:
        maps: one map per sample, normalised to [0, 1]: `(N, H, W)` for images, `(N, T)`
            for sequences and tokens, `(N, F)` for tables.
        targets: the class each map explains.
        predicted: the class the model predicts.
        scores: the model's output (e.g. softmax probability) for `predicted`.
        layer: the layer CAM methods took their map at, or None.
        settings: the method's options in force.
        values: the raw attributions the maps were drawn from (`keraslens.attribute`'s).
    """

    maps: np.ndarray
    targets: np.ndarray
    predicted: np.ndarray
    scores: np.ndarray
    layer: str | None = None
    settings: dict | None = None
    values: np.ndarray | None = None


def explain(
    model: keras.Model,
    x: Any,
    method: str | AttributionMethod = "gradcam",
    targets: Any = None,
    layer: str | None = None,
    *,
    output: int | str | None = None,
    input: int | str | None = None,  # noqa: A002 - the name keraslens.attribute takes
    batch_size: int | None = None,
    weights: Weights | None = None,
    **options: Any,
) -> Explanation:
    """Like `heatmap`, but also returns the explained, predicted classes and scores;
    `weights` as for `keraslens.attribute`."""
    explainer = _method(method, options)
    specs, feeds = model_inputs(model, x)
    index = _one_input(model, specs, input)
    # The picture is of the input: `layer` only places a class activation map.
    layer = (
        _cam_layer(model, specs[index].shape, layer, explainer.title)
        if explainer.uses_layer
        else None
    )
    scorer = method_scorer(
        model, explainer, specs, feeds, index, targets, output, layer, batch_size, weights
    )
    tokens = specs[index].is_integer and layer is None
    values = explainer.attribute(scorer)
    values = per_token(values, explainer) if tokens else values
    probabilities = scorer.probabilities
    predicted = probabilities.argmax(axis=1)
    return Explanation(
        maps=picture(values, explainer, tokens=tokens),
        targets=scorer.targets.astype(np.int64),
        predicted=predicted,
        scores=probabilities[np.arange(len(predicted)), predicted],
        layer=layer if explainer.uses_layer else None,
        settings=explainer.settings(),
        values=values,
    )


def heatmap(
    model: keras.Model,
    x: Any,
    method: str = "gradcam",
    targets: Any = None,
    layer: str | None = None,
    *,
    output: int | str | None = None,
    input: int | str | None = None,  # noqa: A002
    batch_size: int | None = None,
    **options: Any,
) -> np.ndarray:
    """Attribution maps of a batch, normalised to [0, 1] per sample.

    Any method of `keraslens.attribute`, on any model it takes (Functional, Sequential,
    subclassed, nested backbones, multi-input with `input=`, token models). Gradient
    magnitudes (saliency, SmoothGrad, ...) are reduced by their largest |value| over
    channels, as tf-keras-vis does; signed contributions (integrated gradients, occlusion,
    ...) are summed over channels and their positive part (evidence for the class) kept.

    Args:
        model: a Keras model.
        x: a batch of inputs (see `keraslens.attribute`).
        method: a name from `keraslens.attr.METHODS`, e.g. `"gradcam"`, `"saliency"`,
            `"integrated-gradients"`, `"occlusion"`.
        targets: the class to explain: None for each sample's predicted class, one class
            index, one index per sample, or one-hot labels.
        layer: for CAM methods, the path of the layer to take the map at
            (`"conv2"`, `"mobilenetv2_1.00_96/Conv_1"`); None for the last layer with
            positions. Other methods draw the input and ignore it.
        output: the output to explain (index or name) when the model has several.
        input: the input to explain (name or index) of a multi-input model.
        batch_size: rows per internal pass (None: sized by the input).
        **options: the method's own options, e.g. `steps=` (integrated gradients),
            `samples=`, `noise=`, `seed=` (SmoothGrad), `patch=` (occlusion).

    Returns:
        Maps of shape `(N, H, W)` for images (the input without its channel axis),
        `(N, T)` for sequences and tokens.

    Example:

    ```python
    maps = keraslens.heatmap(model, images[:8], method="gradcam++")
    maps = keraslens.heatmap(model, images[:8], "integrated-gradients", labels[:8], steps=32)
    ```
    """
    return explain(
        model,
        x,
        method,
        targets,
        layer,
        output=output,
        input=input,
        batch_size=batch_size,
        **options,
    ).maps


def picture(values: np.ndarray, method: AttributionMethod, tokens: bool = False) -> np.ndarray:
    """Attributions reduced to one value per position and min-max normalised per sample."""
    values = np.asarray(values, dtype=np.float64)
    if method.uses_layer:
        maps = values[..., 0]
    elif tokens or values.ndim == 2:
        maps = np.abs(values) if method.magnitude else values
    elif method.magnitude:
        maps = np.abs(values).max(axis=-1)
    else:
        maps = values.sum(axis=-1)
    if not method.magnitude:
        maps = np.maximum(maps, 0.0)
    flat = maps.reshape(len(maps), -1)
    low, high = flat.min(axis=1), flat.max(axis=1)
    span = np.where(high > low, high - low, 1.0)
    shape = (-1,) + (1,) * (maps.ndim - 1)
    return ((maps - low.reshape(shape)) / span.reshape(shape)).astype(np.float32)


def _method(method: str | AttributionMethod, options: dict[str, Any]) -> AttributionMethod:
    if isinstance(method, str) and method not in METHODS:
        raise KeraslensError(
            f"Unknown heatmap method {method!r}; choose one of: {', '.join(METHODS)}."
        )
    return build_method(method, options)


def _one_input(model: keras.Model, specs, input) -> int:  # noqa: A002
    if input is None and len(specs) > 1:
        raise KeraslensError(
            f"Model {model.name!r} has {len(specs)} inputs "
            f"{[s.key for s in specs]}; choose the one to draw with input=<name>."
        )
    return 0 if input is None else input_index(specs, input)


def _cam_layer(model: keras.Model, input_shape: tuple, layer: str | None, title: str) -> str:
    suggestion = last_spatial_layer(model, input_shape)
    if layer is None:
        if suggestion is None:
            raise KeraslensError(
                f"{title} needs a layer with positions, (batch, height, width, channels) or "
                f"(batch, steps, channels), and model {model.name!r} has none; use "
                "method='saliency'."
            )
        return suggestion
    shapes = dict(layer_shapes(model, input_shape))
    if layer in shapes:
        require_spatial(layer, shapes[layer], title, suggestion)
    return layer
