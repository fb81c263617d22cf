"""`attribute()`: raw attributions of a batch, by method name."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from keraslens.attr.inputs import model_inputs
from keraslens.attr.layers import last_spatial_layer
from keraslens.attr.method import AttributionMethod
from keraslens.attr.registry import METHODS
from keraslens.attr.scorer import Scorer, make_scorer
from keraslens.attr.weights import Weights
from keraslens.errors import KeraslensError


def attribute(
    model: keras.Model,
    x: Any,
    method: str = "integrated-gradients",
    targets: Any = None,
    *,
    output: int | str | None = None,
    input: int | str | None = None,  # noqa: A002 - the issue's public name
    layer: str | None = None,
    batch_size: int | None = None,
    weights: Weights | None = None,
    **options: Any,
) -> np.ndarray | dict[str, np.ndarray]:
    """Raw, signed attributions of the target scores of `x`, shaped like the explained input.

    Scores are the chosen output's pre-activation logits (found through softmax or sigmoid
    heads), so attributions do not saturate. Nothing is normalised: integrated gradients
    sum to score(x) - score(baseline). The model is never modified; each method's compiled
    function is built once per model and input signature and reused.

    Args:
        model: any Keras 3 model: Sequential, Functional, nested, subclassed, multi-I/O.
        x: a batch: an array, a list/tuple or dict of arrays for a multi-input model, or a
            `tf.data.Dataset`. Images `(N, H, W, C)`, sequences `(N, T, F)`, tables `(N, F)`,
            integer tokens `(N, T)`.
        method: a name from `keraslens.attr.METHODS`.
        targets: the class explained: None for each sample's predicted class, one index for
            all, one index per sample, or one-hot labels.
        output: the output to explain (index or name) of a multi-output model.
        input: the input to explain (name or index) of a multi-input model, the others held
            fixed; None explains each input in turn.
        layer: take the attribution at this layer's output (`"backbone/conv"`) instead of
            the input; for CAM methods, the layer of the map (default: the last one with
            positions). Integer token inputs are explained at the output of the layer they
            feed (their embedding) and summed over its features: one value per token.
        batch_size: rows (samples x steps, draws, masks or patches) per internal pass; None
            sizes it by the input.
        weights: values to run the model with in place of some of its own (e.g.
            `keraslens.permuted_weights(model)`, a randomised model), through
            the same compiled functions; the model is not changed.
        **options: the method's options (see `docs/attribution.md`), e.g. `steps=128`.

    Returns:
        An array shaped like the explained input (`(N, T)` for tokens; `(N, H, W, 1)` for
        CAM methods), or for a multi-input model explained whole, a dict keyed by input.

    Example:

    ```python
    ig = keraslens.attribute(model, images[:8], "integrated-gradients", steps=64)
    occ = keraslens.attribute(model, images[:8], "occlusion", targets=labels[:8], patch=4)
    ```
    """
    explainer = build_method(method, options)
    specs, feeds = model_inputs(model, x)
    chosen = range(len(specs)) if input is None else [input_index(specs, input)]
    results = {}
    for index in chosen:
        scorer = method_scorer(
            model, explainer, specs, feeds, index, targets, output, layer, batch_size, weights
        )
        values = explainer.attribute(scorer)
        if specs[index].is_integer and layer is None and not explainer.uses_layer:
            values = per_token(values, explainer)
        results[specs[index].key] = values
    if input is not None or len(specs) == 1:
        return next(iter(results.values()))
    return results


def per_token(values: np.ndarray, method: AttributionMethod) -> np.ndarray:
    """Attributions at an embedding `(N, T, D)` as one value per token: summed over D, or
    the one value a perturbation method repeated over D."""
    return values[..., 0] if method.per_position else values.sum(axis=-1)


def build_method(method: str | AttributionMethod, options: dict[str, Any]) -> AttributionMethod:
    """The method instance for a name (options validated), or `method` itself."""
    if isinstance(method, AttributionMethod):
        if options:
            raise KeraslensError("Pass options to the method's constructor, not to attribute().")
        return method
    if method not in METHODS:
        raise KeraslensError(
            f"Unknown attribution method {method!r}; choose one of: {', '.join(METHODS)}."
        )
    return METHODS[method](**options)


def method_scorer(
    model, explainer, specs, feeds, index, targets, output, layer, batch_size, weights=None
) -> Scorer:
    """The `Scorer` `explainer` runs on: at the input, a layer, or the CAM layer."""
    if explainer.uses_layer and layer is None:
        layer = default_cam_layer(model, specs, index)
    return make_scorer(
        model,
        specs,
        feeds,
        index,
        targets,
        output=output,
        layer=layer,
        relu_rule=explainer.relu_rule,
        batch_size=batch_size,
        gradients=explainer.reads_gradients,
        weights=weights,
    )


def default_cam_layer(model, specs, index) -> str:
    """The last layer with positions (the usual Grad-CAM layer), or a clear error."""
    layer = last_spatial_layer(model, specs[index].shape)
    if layer is None:
        raise KeraslensError(
            f"Model {model.name!r} has no layer with positions (batch, height, width, "
            "channels) or (batch, steps, channels) for a class activation map; use a "
            "gradient method such as 'saliency' or 'integrated-gradients'."
        )
    return layer


def input_index(specs, input) -> int:  # noqa: A002
    keys = [s.key for s in specs]
    if isinstance(input, str):
        if input not in keys:
            raise KeraslensError(f"The model has no input {input!r}; its inputs: {keys}.")
        return keys.index(input)
    if isinstance(input, (int, np.integer)) and -len(keys) <= input < len(keys):
        return int(input) % len(keys)
    raise KeraslensError(f"input={input!r} is not one of the model's inputs {keys}.")
