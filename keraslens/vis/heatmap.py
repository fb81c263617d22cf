"""`heatmap()`: attribution maps for a batch, by method name."""

from __future__ import annotations

import inspect
from typing import Any

import keras
import numpy as np

from keraslens.errors import KeraslensError
from keraslens.vis.cam import FasterScoreCAM, GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM
from keraslens.vis.compat import build_graph, input_shape_of, require_continuous_input
from keraslens.vis.layers import last_spatial_layer, require_spatial
from keraslens.vis.method import Explanation, Method
from keraslens.vis.saliency import Saliency, SmoothGrad
from keraslens.vis.targets import as_targets

METHODS: dict[str, type[Method]] = {
    method.name: method
    for method in (
        GradCAM,
        GradCAMPlusPlus,
        ScoreCAM,
        FasterScoreCAM,
        LayerCAM,
        Saliency,
        SmoothGrad,
    )
}
"""Attribution methods by name."""


def build_method(
    model: keras.Model,
    method: str | type[Method],
    input_shape: tuple,
    layer: str | None = None,
    output: int | str | None = None,
    **options: Any,
) -> Method:
    """Build the attribution `method` for `model`, once, to explain many batches.

    Args:
        model: a Functional, Sequential or subclassed Keras model with one input.
        method: a name from `METHODS`, or a `Method` subclass.
        input_shape: the shape of one sample.
        layer: path of the layer CAM methods take their map at (`"backbone/Conv_1"`);
            None for the last layer with a spatial output. Ignored by saliency methods.
        output: which output to explain (index or name) for a multi-output model.
        **options: the method's own options (e.g. `max_channels`, `samples`, `seed`).

    Raises:
        KeraslensError: for an unknown method or option, a layer path that does not exist,
            or a CAM method on a layer (or model) without spatial output.
    """
    cls = method if isinstance(method, type) and issubclass(method, Method) else None
    if cls is None and method not in METHODS:
        raise KeraslensError(
            f"Unknown heatmap method {method!r}; choose one of: {', '.join(METHODS)}."
        )
    cls = cls or METHODS[method]
    _check_options(cls, options)
    require_continuous_input(model)
    if cls.uses_layer:
        suggestion = last_spatial_layer(model, input_shape)
        if layer is None and suggestion is None:
            raise KeraslensError(
                f"{cls.title} needs a layer with a spatial output (batch, height, width, "
                f"channels) and model {model.name!r} has none; use method='saliency'."
            )
        graph = build_graph(model, input_shape, output, layer or suggestion)
        require_spatial(graph.layer_path, graph.target_layer.output.shape, cls.title, suggestion)
    else:
        graph = build_graph(model, input_shape, output)
    if len(graph.logits.shape) != 2:
        raise KeraslensError(
            f"The explained output has shape {tuple(graph.logits.shape)}; heatmaps explain "
            "class scores of shape (batch, classes). Choose another output with output=."
        )
    return cls(graph, **options)


def _check_options(cls: type[Method], options: dict[str, Any]) -> None:
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "graph")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise KeraslensError(
            f"{cls.title} has no option {unknown[0]!r}; its options: "
            f"{', '.join(accepted) or 'none'}."
        )


def explain(
    model: keras.Model,
    x: np.ndarray,
    method: str | type[Method] = "gradcam",
    targets: Any = None,
    layer: str | None = None,
    *,
    output: int | str | None = None,
    batch_size: int = 32,
    **options: Any,
) -> Explanation:
    """Like `heatmap`, but also returns the explained, predicted classes and scores."""
    x = np.asarray(x, dtype=np.float32)
    explainer = build_method(model, method, input_shape_of(model, x), layer, output, **options)
    classes = explainer.graph.logits.shape[-1]
    return explainer.explain(x, as_targets(targets, len(x), classes), batch_size=batch_size)


def heatmap(
    model: keras.Model,
    x: np.ndarray,
    method: str = "gradcam",
    targets: Any = None,
    layer: str | None = None,
    *,
    output: int | str | None = None,
    batch_size: int = 32,
    **options: Any,
) -> np.ndarray:
    """Attribution maps of a batch, normalised to [0, 1] per sample.

    Works on Functional, Sequential and subclassed Keras 3 models, with a softmax head or
    not (gradients are taken on the pre-activation score), and with the layer inside a
    nested backbone. The model is never modified.

    Args:
        model: a Keras model with one channels-last input.
        x: a batch of inputs, `(N, H, W, C)` for images.
        method: one of `"gradcam"`, `"gradcam++"`, `"scorecam"`, `"faster-scorecam"`,
            `"layercam"`, `"saliency"`, `"smoothgrad"`.
        targets: the class to explain: None for each sample's predicted class, one class
            index, one index per sample, or one-hot labels.
        layer: for CAM methods, the path of the layer to take the map at
            (`"conv2"`, `"mobilenetv2_1.00_96/Conv_1"`); None for the last layer with a
            spatial output.
        output: the output to explain (index or name) when the model has several.
        batch_size: samples explained together in one pass.
        **options: the method's own options: `max_channels` and `mask_batch_size` (Score-CAM
            variants), `samples`, `noise` and `seed` (SmoothGrad).

    Returns:
        Maps of shape `(N, H, W)` for images (the input without its channel axis).

    Example:

    ```python
    maps = keraslens.heatmap(model, images[:8], method="gradcam++")
    maps = keraslens.heatmap(model, images[:8], layer="mobilenetv2_1.00_96/Conv_1",
                             targets=labels[:8])
    ```
    """
    return explain(
        model, x, method, targets, layer, output=output, batch_size=batch_size, **options
    ).maps
