"""Finding a model's layers, naming them by path, and selecting some."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import keras

from keraslens.errors import KeraslensError

LayerSelector = str | type | Callable[[keras.layers.Layer], bool]


# Layers that run their sublayers once per time step or per slice (an LSTM's cell,
# a Bidirectional's two RNNs): the sublayer's calls happen inside a loop, and the
# one outside it (Keras calls an RNN cell once to learn its output shape) sees only
# the first step. Such layers are captured whole, as leaves.
_STEPPING = (keras.layers.RNN, keras.layers.Bidirectional, keras.layers.Wrapper)


def _children(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    if isinstance(layer, _STEPPING):
        return []
    # `_flatten_layers` is how Keras itself lists tracked sublayers of any layer,
    # including subclassed models and custom blocks that have no functional graph.
    return list(layer._flatten_layers(include_self=False, recursive=False))


def walk(model: keras.layers.Layer, prefix: str = "") -> Iterator[tuple[str, keras.layers.Layer]]:
    """Yield `(path, layer)` for every layer inside `model`, depth first, each layer once.

    A nested layer's path joins the names of its containers with "/":
    `encoder/conv1`.
    """
    seen: set[int] = set()

    def visit(
        container: keras.layers.Layer, prefix: str
    ) -> Iterator[tuple[str, keras.layers.Layer]]:
        for child in _children(container):
            if id(child) in seen:
                continue
            seen.add(id(child))
            path = f"{prefix}{child.name}"
            yield path, child
            yield from visit(child, path + "/")

    yield from visit(model, prefix)


def is_leaf(layer: keras.layers.Layer) -> bool:
    """True for a layer that computes rather than contains: no sublayers, not an input."""
    return not isinstance(layer, keras.layers.InputLayer) and not _children(layer)


def select(
    model: keras.layers.Layer,
    layers: LayerSelector | Iterable[LayerSelector] | None,
) -> list[tuple[str, keras.layers.Layer]]:
    """Resolve a layer selection into `(path, layer)` pairs, in model order.

    Args:
        model: the model to search.
        layers: None (every computing layer), or one or several of: a path or a name
            (`"encoder/conv1"`, `"conv1"`), a glob on paths or names (`"conv*"`), a
            layer class (`keras.layers.Dense`), or a predicate `layer -> bool`.
    """
    # Input layers are never called in the forward pass: there is nothing to capture.
    everything = [
        (p, lay) for p, lay in walk(model) if not isinstance(lay, keras.layers.InputLayer)
    ]
    if not everything:
        raise KeraslensError(
            f"Model {model.name!r} has no layers to capture. Build it (call it on data "
            "or give it an Input) before wrapping it in a Lens."
        )
    if layers is None:
        return [(p, lay) for p, lay in everything if is_leaf(lay)]
    selectors = _selectors(layers)
    chosen: dict[int, tuple[str, keras.layers.Layer]] = {}
    for selector in selectors:
        matches = [(p, lay) for p, lay in everything if _matches(selector, p, lay)]
        if not matches:
            raise KeraslensError(
                f"No layer matches {_describe(selector)}. Available layers: "
                + ", ".join(p for p, _ in everything[:40])
                + (" ..." if len(everything) > 40 else "")
            )
        for path, layer in matches:
            chosen.setdefault(id(layer), (path, layer))
    order = {id(lay): i for i, (_, lay) in enumerate(everything)}
    return sorted(chosen.values(), key=lambda item: order[id(item[1])])


def _selectors(layers: Any) -> list:
    if isinstance(layers, (str, type)) or callable(layers):
        return [layers]
    if not isinstance(layers, Iterable):
        raise KeraslensError(
            f"Layer selector {layers!r} is not a name, glob, layer class or predicate, "
            "nor a list of them."
        )
    selectors = list(layers)
    if not selectors:
        raise KeraslensError(
            "The layer selection is empty: pass None to capture every layer, or name some."
        )
    return selectors


def _matches(selector: LayerSelector, path: str, layer: keras.layers.Layer) -> bool:
    if isinstance(selector, str):
        return fnmatch.fnmatchcase(path, selector) or fnmatch.fnmatchcase(layer.name, selector)
    if isinstance(selector, type):
        return isinstance(layer, selector)
    if callable(selector):
        return bool(selector(layer))
    raise KeraslensError(
        f"Layer selector {selector!r} is not a name, glob, layer class or predicate."
    )


def _describe(selector: LayerSelector) -> str:
    if isinstance(selector, str):
        return f"{selector!r}"
    if isinstance(selector, type):
        return f"layer type {selector.__name__}"
    return f"predicate {getattr(selector, '__name__', selector)!r}"
