"""Attention probabilities of every `MultiHeadAttention` call, in one compiled pass."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keraslens.attention.intercept import MHA, as_matrices, scoring
from keraslens.attr.graph import score_graph
from keraslens.attr.inputs import model_inputs
from keraslens.attr.targets import as_targets
from keraslens.capture.data import (
    arrange_inputs,
    check_inputs,
    input_rank,
    iterate_batches,
    to_input_tensors,
)
from keraslens.capture.recorder import running, traced
from keraslens.capture.traversal import LayerSelector, select, walk
from keraslens.errors import KeraslensError


def attention_layers(
    model: keras.layers.Layer, layers: LayerSelector | Iterable[LayerSelector] | None = None
) -> list[tuple[str, MHA]]:
    """`(path, layer)` for the chosen `MultiHeadAttention` layers (subclasses included).

    Raises:
        KeraslensError: when the model has none, or none of them is chosen.
    """
    found = [(path, lay) for path, lay in walk(model) if isinstance(lay, MHA)]
    if not found:
        raise KeraslensError(
            f"Model {model.name!r} has no keras.layers.MultiHeadAttention layer (nor a "
            "subclass of it), so it has no attention to capture."
        )
    if layers is None:
        return found
    chosen = {id(lay) for _, lay in select(model, layers)}
    picked = [(path, lay) for path, lay in found if id(lay) in chosen]
    if not picked:
        raise KeraslensError(
            f"None of the selected layers is a MultiHeadAttention layer; those of "
            f"{model.name!r}: {', '.join(path for path, _ in found)}."
        )
    return picked


class AttentionCapture:
    """Attention probabilities of a model's `MultiHeadAttention` layers, compiled once.

    The model runs in inference mode inside one `tf.function` (traced once per input
    signature), while each attention layer computes its probabilities explicitly
    (see `keraslens.attention.intercept`); the model is never modified.

    Args:
        model: a Keras 3 model: Sequential, Functional, nested or subclassed.
        layers: which attention layers: None (all), or names, paths, globs, classes or
            predicates, alone or in a list.

    Example:

    ```python
    capture = AttentionCapture(model)
    probabilities = capture(tokens)      # {"encoder/mha": (N, heads, T, T)}
    ```
    """

    def __init__(
        self,
        model: keras.layers.Layer,
        layers: LayerSelector | Iterable[LayerSelector] | None = None,
    ) -> None:
        self.model = model
        self.layers = attention_layers(model, layers)
        self.keys: list[str] = []
        self._step = tf.function(self._probabilities, reduce_retracing=True)
        self._gradient_steps: dict[int, Any] = {}
        self._summary_steps: dict[Callable, Any] = {}

    def __call__(self, x: Any, batch_size: int = 32) -> dict[str, np.ndarray]:
        """Probabilities of every sample of `x`: call-site key -> (N, heads, query, key).

        A layer called several times (shared) gives one entry per call, `path@i`.
        """
        parts: dict[str, list[np.ndarray]] = {}
        for batch in self.batches(x, batch_size):
            for key, value in batch.items():
                parts.setdefault(key, []).append(value)
        return {key: np.concatenate(values) for key, values in parts.items()}

    def batches(
        self, x: Any, batch_size: int = 32, summarize: Callable | None = None
    ) -> Iterator[dict[str, Any]]:
        """Probabilities batch by batch, for statistics that must not hold all of them.

        Args:
            x: the inputs, as for `__call__`.
            batch_size: samples per compiled step.
            summarize: None, or a function of one batch's probabilities tensor returning
                a dict of tensors, run inside the compiled step (one trace per function);
                then each batch yields key -> that dict as NumPy instead of the maps.
        """
        step = self._step if summarize is None else self._summary_step(summarize)
        batches, _ = iterate_batches(x, batch_size, input_rank(self.model))
        empty = True
        for batch in batches:
            batch = self._prepare(batch)
            if int(tf.nest.flatten(batch)[0].shape[0]) == 0:
                continue
            empty = False
            recorded = self._run(step, batch)
            yield tf.nest.map_structure(lambda t: t.numpy(), recorded)
        if empty:
            raise KeraslensError("The data is empty: there are no samples to run.")

    def _summary_step(self, summarize: Callable) -> Any:
        if summarize not in self._summary_steps:
            self._summary_steps[summarize] = tf.function(
                lambda x: {key: summarize(p) for key, p in self._probabilities(x).items()},
                reduce_retracing=True,
            )
        return self._summary_steps[summarize]

    def gradients(
        self, x: Any, targets: Any = None, output: int | str | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
        """Probabilities, the gradient of the target logit with respect to them, targets.

        The score is the chosen output's pre-activation logit of the target class (the
        graph `keraslens.attribute` explains), summed over the batch, so each sample's
        gradient is its own.

        Args:
            x: a batch of inputs (all of it runs at once).
            targets: None for each sample's predicted class, one class index for all,
                one per sample, or one-hot labels.
            output: the output to explain (index or name) of a multi-output model.

        Returns:
            `(probabilities, gradients, targets)`: two dicts keyed like `__call__`, and
            the class explained for each sample.
        """
        specs, arrays = model_inputs(self.model, x)
        graph = score_graph(self.model, specs, 0, output=output)
        # A token model's graph also takes an embedding shift: zero.
        feeds = [tf.convert_to_tensor(a) for a in [*arrays, *graph.zero_shift(len(arrays[0]))]]
        chosen = as_targets(targets, len(arrays[0]), graph.classes)
        if chosen is None:
            chosen = np.asarray(graph.outputs(feeds, graph.weights())[0]).argmax(axis=1)
        step = self._gradient_steps.get(id(graph.model))
        if step is None:
            step = self._gradient_steps[id(graph.model)] = tf.function(
                lambda feeds, targets: self._forward_gradients(graph.model, feeds, targets),
                reduce_retracing=True,
            )
        probabilities, grads = self._run(step, feeds, tf.constant(chosen, tf.int32))
        numpy = {key: value.numpy() for key, value in probabilities.items()}
        return numpy, {key: value.numpy() for key, value in grads.items()}, chosen

    def _prepare(self, batch: Any) -> Any:
        batch = arrange_inputs(self.model, batch)
        check_inputs(self.model, batch)
        batch = to_input_tensors(self.model, batch)
        if not self.model.built and int(tf.nest.flatten(batch)[0].shape[0]) > 0:
            self.model(tf.nest.map_structure(lambda t: t[:1], batch), training=False)
        return batch

    def _run(self, step, *args):
        with running(self.model, args[0]):
            return traced(lambda: step(*args))

    def _record(self, x: Any, model: keras.Model | None = None) -> tuple[Any, list]:
        """Run `model` (default: the model) on `x`: outputs, `(key, layer, probabilities)`."""
        paths = {id(layer): path for path, layer in self.layers}
        with scoring([layer for _, layer in self.layers]) as record:
            outputs = (model or self.model)(x, training=False)
        if not record:
            raise KeraslensError(
                f"Model {self.model.name!r} ran without calling its attention layers "
                f"({', '.join(paths.values())}) in its graph; nothing was captured."
            )
        calls = [paths[id(layer)] for layer, _ in record]
        seen: dict[str, int] = {}
        keyed = []
        for (layer, probabilities), path in zip(record, calls, strict=True):
            index = seen[path] = seen.get(path, -1) + 1
            key = path if calls.count(path) == 1 else f"{path}@{index}"
            keyed.append((key, layer, probabilities))
        self.keys = [key for key, _, _ in keyed]
        return outputs, keyed

    def _probabilities(self, x: Any) -> dict[str, tf.Tensor]:
        _, keyed = self._record(x)
        return {key: as_matrices(layer, p) for key, layer, p in keyed}

    def _forward_gradients(self, model: keras.Model, feeds: list, targets: tf.Tensor):
        with tf.GradientTape() as tape:
            outputs, keyed = self._record(feeds, model)
            logits = tf.nest.flatten(outputs)[0]  # a score graph's: the logits first
            score = tf.reduce_sum(tf.gather(logits, targets[:, None], batch_dims=1))
        grads = tape.gradient(score, [p for _, _, p in keyed])
        probabilities, by_key = {}, {}
        for (key, layer, p), grad in zip(keyed, grads, strict=True):
            probabilities[key] = as_matrices(layer, p)
            by_key[key] = as_matrices(layer, tf.zeros_like(p) if grad is None else grad)
        return probabilities, by_key


_CAPTURES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def capture_for(
    model: keras.layers.Layer, layers: LayerSelector | Iterable[LayerSelector] | None = None
) -> AttentionCapture:
    """The `AttentionCapture` of `model` for this selection, built once and kept."""
    capture = AttentionCapture(model, layers)
    kept = _CAPTURES.setdefault(model, {})
    return kept.setdefault(tuple(path for path, _ in capture.layers), capture)


def attention(
    model: keras.layers.Layer,
    x: Any,
    layers: LayerSelector | Iterable[LayerSelector] | None = None,
    batch_size: int = 32,
) -> dict[str, np.ndarray]:
    """Attention probabilities of every `MultiHeadAttention` call of `model` on `x`.

    Covers subclasses (keras-hub's transformer layers, `CachedMultiHeadAttention`) and
    layers nested in sub-models, custom layers and subclassed models. The probabilities
    are `softmax(Q K^T / sqrt(key_dim))` with the layer's masks, computed from its own
    projections even where Keras would use a fused or flash kernel; the model is not
    modified. The compiled pass is kept per model, so a second call does not retrace.

    Args:
        model: a Keras 3 model.
        x: its inputs: an array, a tuple/list/dict of arrays, or a `tf.data.Dataset`.
        layers: which attention layers (None: all).
        batch_size: samples per compiled step.

    Returns:
        Call-site key (the layer's path, `path@i` for the i-th call of a shared layer)
        -> float32 array shaped (batch, heads, query, key), in call order.

    Example:

    ```python
    probabilities = keraslens.attention(model, tokens[:8])
    probabilities["encoder/mha"].shape     # (8, 4, 128, 128)
    ```
    """
    return capture_for(model, layers)(x, batch_size)
