"""The part of a model that training cannot change, captured once per fit and reused.

In transfer learning most of the model is a frozen backbone: its layers have no
trainable weights, and every layer upstream of them is frozen too, so on the same probe
their outputs, and hence their statistics, are the same at every analysis. `FixedPart`
splits the model there into a prefix and a head (two functional models over the same
layers). It captures the prefix once, keeping its layers' statistics and, from the same
pass, the probe's values where the prefix hands over to the head; every analysis then
captures only the head, run from those values. Before each reuse it checks that every
weight of the prefix is still what it was; if one changed (a layer unfrozen, weights
loaded), the prefix is captured again.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keraslens.capture import LayerStats, Lens

MAX_HANDOVER_BYTES = 256 * 2**20
"""The largest probe values kept where the frozen part hands over (beyond, no reuse)."""


class FixedPart:
    """Reuse of a frozen prefix's statistics across a fit's analyses.

    Build it with `FixedPart.find`, which returns None when nothing can be reused (no
    frozen prefix, a subclassed model, a layer called twice, a probe that is not arrays).
    """

    def __init__(self, lens: Lens, fixed: list[str], prefix: keras.Model, head: keras.Model):
        self.lens = lens
        self.fixed_keys = fixed
        self.head = head
        settings = {"epsilon": lens.epsilon, "histogram_samples": lens.histogram_samples}
        chosen = set(fixed)
        self.prefix_lens = Lens(prefix, _among(lens, lambda path: path in chosen), **settings)
        self.head_lens = Lens(head, _among(lens, lambda path: path not in chosen), **settings)
        self.full_captures = 0
        self._stats: dict[str, LayerStats] = {}
        self._handover: Any = None
        self._fingerprint: str | None = None

    @classmethod
    def find(cls, lens: Lens, probe: Any) -> FixedPart | None:
        """The frozen prefix of `lens.model` as seen by `lens`, or None if none can be reused."""
        if not _is_arrays(probe):
            return None
        graph = _functional(lens.model)
        if graph is None:
            return None
        changing, handover = _split(graph)
        tops = {layer.name: id(layer) for layer in _direct(lens.model)}

        def is_fixed(path: str) -> bool:
            # A nested layer (`backbone/conv`) is fixed with the container that holds it.
            top = tops.get(path.split("/", 1)[0])
            return top is not None and top not in changing

        fixed = [path for path, _ in lens.layers if is_fixed(path)]
        if not fixed or len(fixed) == len(lens.layers) or not handover:
            return None
        calls = Counter(
            id(node.operation) for nodes in graph._nodes_by_depth.values() for node in nodes
        )
        if any(calls[id(layer)] > 1 for _, layer in lens.layers):
            return None  # a layer called on both sides of the split
        per_sample = sum(int(np.prod(t.shape[1:])) * 4 for t in handover)
        if per_sample * len(_first(probe)) > MAX_HANDOVER_BYTES:
            return None
        try:
            prefix = keras.Model(graph.inputs, handover)
            head = keras.Model(handover, graph.outputs)
        except (ValueError, TypeError):  # a graph Keras cannot cut there
            return None
        return cls(lens, fixed, prefix, head)

    def capture(self, probe: Any, batch_size: int) -> dict[str, LayerStats]:
        """Statistics of every layer of `lens` on `probe`, in model order: the prefix's
        reused while its weights are unchanged, the head's captured from the handed-over
        values."""
        fingerprint = _fingerprint(self.prefix_lens.model)
        if fingerprint != self._fingerprint:
            self._stats, self._handover = self.prefix_lens.capture_with_outputs(probe, batch_size)
            self.full_captures += 1
            self._fingerprint = fingerprint
        stats = {**self._stats, **self.head_lens.capture(self._handover, batch_size)}
        # Model order, as a full capture gives it: by layer, and by call (`path@i`) within.
        position = {path: index for index, (path, _) in enumerate(self.lens.layers)}
        return dict(sorted(stats.items(), key=lambda item: position[item[0].split("@", 1)[0]]))

    def outputs(self, sample: Any) -> Any:
        """The model's outputs on `sample`, the first samples of the last captured probe,
        computed from the handed-over values: the frozen part is not run again."""
        rows = len(_first(sample))
        handover = tf.nest.map_structure(lambda values: values[:rows], self._handover)
        return self.head.predict(handover, batch_size=max(rows, 1), verbose=0)


def _functional(model: keras.Model) -> Any:
    """The functional graph of `model` (a Sequential's inner one), or None.

    Keras 3 has no public walk of a functional graph; `_nodes_by_depth` is the one Keras
    itself runs the model through, so the split follows exactly what `model(x)` computes.
    """
    for graph in (model, getattr(model, "_functional", None)):
        if graph is not None and getattr(graph, "_nodes_by_depth", None):
            return graph
    return None


def _split(graph: Any) -> tuple[set[int], list[Any]]:
    """The ids of the layers training can change, and the tensors where the fixed part
    hands over to them (fixed outputs and model inputs read by a changing node); no
    tensors when a model output is fixed."""
    changing: set[int] = set()
    changing_nodes: set[int] = set()
    for depth in sorted(graph._nodes_by_depth, reverse=True):  # inputs first
        for node in graph._nodes_by_depth[depth]:
            operation = node.operation
            trains = bool(getattr(operation, "trainable_weights", None))
            if trains or any(id(parent) in changing_nodes for parent in node.parent_nodes):
                changing_nodes.add(id(node))
                changing.add(id(operation))
    handover: dict[int, Any] = {}
    for depth in graph._nodes_by_depth:
        for node in graph._nodes_by_depth[depth]:
            if id(node) not in changing_nodes:
                continue
            for tensor in node.input_tensors:
                # A model input read by a trained layer is handed over as it is.
                if id(tensor._keras_history.operation) not in changing:
                    handover[id(tensor)] = tensor
    for tensor in graph.outputs:
        if id(tensor._keras_history.operation) not in changing:
            return changing, []
    return changing, list(handover.values())


def _direct(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers `model` holds directly (a nested model, not its layers)."""
    return list(model._flatten_layers(include_self=False, recursive=False))


def _among(lens: Lens, keep) -> Any:
    """A selector of exactly those of the lens's layers whose path `keep` accepts."""
    chosen = {id(layer) for path, layer in lens.layers if keep(path)}
    return lambda layer: id(layer) in chosen


def _fingerprint(prefix: keras.Model) -> str:
    """A digest of every weight the prefix holds, the layers not captured included: all of
    them shape the values handed over."""
    digest = hashlib.blake2b(digest_size=16)
    for weight in prefix.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).data)
    return digest.hexdigest()


def _is_arrays(probe: Any) -> bool:
    """An array, or a list of arrays (a multi-input model's): what `predict` takes as is.
    A dataset may change between analyses, and then nothing could be reused."""
    if isinstance(probe, (list, tuple)):
        return bool(probe) and all(isinstance(v, np.ndarray) for v in probe)
    return isinstance(probe, np.ndarray)


def _first(probe: Any) -> np.ndarray:
    return probe if isinstance(probe, np.ndarray) else probe[0]
