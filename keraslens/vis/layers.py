"""Finding the layer a class activation map is taken at."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import keras

from keraslens.errors import KeraslensError
from keraslens.vis.compat import functional_view, is_opaque


def is_spatial(shape: Sequence) -> bool:
    """True for a channels-last image activation `(batch, height, width, channels)` of more
    than one position."""
    return len(shape) == 4 and (shape[1] or 2) * (shape[2] or 2) > 1


def layer_shapes(model: keras.Model, input_shape: Sequence) -> Iterator[tuple[str, tuple]]:
    """Yield `(path, output_shape)` of every computing layer, in execution order.

    Nested models are entered rather than listed, so a backbone's last layer comes out as
    `backbone/out_relu`, not `backbone`.
    """
    yield from _walk(functional_view(model, input_shape), "")


def _walk(view: keras.Model, prefix: str) -> Iterator[tuple[str, tuple]]:
    for layer in view.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.Model) and layer.layers:
            inner = functional_view(layer, layer.input.shape[1:])
            if not is_opaque(inner, layer):
                yield from _walk(inner, f"{prefix}{layer.name}/")
                continue
        yield f"{prefix}{layer.name}", tuple(layer.output.shape)


def last_spatial_layer(model: keras.Model, input_shape: Sequence) -> str | None:
    """Path of the last layer with a spatial output (the usual Grad-CAM layer), or None."""
    spatial = [path for path, shape in layer_shapes(model, input_shape) if is_spatial(shape)]
    return spatial[-1] if spatial else None


def require_spatial(path: str, shape: Sequence, method: str, suggestion: str | None) -> None:
    """Raise when a CAM method is pointed at a layer without height and width."""
    if not is_spatial(shape):
        fix = f"use layer={suggestion!r}" if suggestion else "use method='saliency'"
        raise KeraslensError(
            f"{method} needs a layer with output (batch, height, width, channels), but layer "
            f"{path!r} outputs {tuple(shape)}; {fix}."
        )
