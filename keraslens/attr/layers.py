"""Finding the layer a class activation map is taken at."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import keras

from keraslens.attr.compat import functional_view, is_opaque
from keraslens.errors import KeraslensError

FINE_POSITIONS = 7
"""Fewer positions than this along an axis make a coarse map (ResNet50's 2x2 at 64x64)."""


def is_spatial(shape: Sequence) -> bool:
    """True for an output with positions and channels: `(batch, height, width, channels)` of
    more than one position, or `(batch, steps, channels)` of more than one step (Conv1D)."""
    if len(shape) == 4:
        return (shape[1] or 2) * (shape[2] or 2) > 1
    return len(shape) == 3 and (shape[1] or 2) > 1


def layer_shapes(model: keras.Model, input_shape: Sequence) -> Iterator[tuple[str, tuple]]:
    """Yield `(path, output_shape)` of every computing layer and operation, in execution order.

    Nested models are entered rather than listed, so a backbone's last layer comes out as
    `backbone/out_relu`, not `backbone`. Operations count too: ConvNeXt's blocks end in an
    `Add` operation (`inputs + layer(x)`), which is the block's output.
    """
    yield from _walk(functional_view(model, input_shape), "")


def _walk(view: keras.Model, prefix: str) -> Iterator[tuple[str, tuple]]:
    for layer in view.operations:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.Model) and layer.layers:
            # A backbone built as keras.Model(seq.inputs, ...) has a list of one input.
            first = layer.input[0] if isinstance(layer.input, (list, tuple)) else layer.input
            inner = functional_view(layer, first.shape[1:])
            if not is_opaque(inner, layer):
                yield from _walk(inner, f"{prefix}{layer.name}/")
                continue
        yield f"{prefix}{layer.name}", tuple(layer.output.shape)


def spatial_layers(model: keras.Model, input_shape: Sequence) -> list[tuple[str, tuple]]:
    """`(path, shape)` of every layer with positions, in execution order."""
    return [(path, shape) for path, shape in layer_shapes(model, input_shape) if is_spatial(shape)]


def last_spatial_layer(model: keras.Model, input_shape: Sequence) -> str | None:
    """Path of the last layer with positions (the usual Grad-CAM layer), or None.

    The one default every plugin uses (heatmaps and activation maximization alike).
    """
    spatial = spatial_layers(model, input_shape)
    return spatial[-1][0] if spatial else None


def finer_spatial_layer(model: keras.Model, input_shape: Sequence) -> str | None:
    """The last layer with at least `FINE_POSITIONS` positions along each axis, or None."""
    fine = [
        path
        for path, shape in spatial_layers(model, input_shape)
        if all((d or FINE_POSITIONS) >= FINE_POSITIONS for d in shape[1:-1])
    ]
    return fine[-1] if fine else None


def require_spatial(path: str, shape: Sequence, method: str, suggestion: str | None) -> None:
    """Raise when a CAM method is pointed at a layer without positions."""
    if not is_spatial(shape):
        fix = f"use layer={suggestion!r}" if suggestion else "use method='saliency'"
        raise KeraslensError(
            f"{method} needs a layer with output (batch, height, width, channels) or (batch, "
            f"steps, channels), but layer {path!r} outputs {tuple(shape)}; {fix}."
        )
