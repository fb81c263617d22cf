"""Attention probabilities of every `MultiHeadAttention` call, in one compiled pass."""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keraslens.attention.intercept import MHA, as_matrices, scoring
from keraslens.capture.data import arrange_inputs, check_inputs, iterate_batches, to_input_tensors
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
        self._step = tf.function(self._forward, reduce_retracing=True)
        self._gradient_step = tf.function(self._forward_gradients, reduce_retracing=True)

    def __call__(self, x: Any, batch_size: int = 32) -> dict[str, np.ndarray]:
        """Probabilities of every sample of `x`: call-site key -> (N, heads, query, key).

        A layer called several times (shared) gives one entry per call, `path@i`.
        """
        parts: dict[str, list[np.ndarray]] = {}
        for batch in self.batches(x, batch_size):
            for key, value in batch.items():
                parts.setdefault(key, []).append(value)
        return {key: np.concatenate(values) for key, values in parts.items()}

    def batches(self, x: Any, batch_size: int = 32) -> Iterator[dict[str, np.ndarray]]:
        """Probabilities batch by batch, for statistics that must not hold all of them."""
        batches, _ = iterate_batches(x, batch_size)
        empty = True
        for batch in batches:
            batch = self._prepare(batch)
            if int(tf.nest.flatten(batch)[0].shape[0]) == 0:
                continue
            empty = False
            _, recorded = self._run(self._step, batch)
            yield {key: value.numpy() for key, value in recorded.items()}
        if empty:
            raise KeraslensError("The data is empty: there are no samples to run.")

    def gradients(
        self, x: Any, targets: np.ndarray | None = None, output: int = 0
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
        """Probabilities, the gradient of the target score with respect to them, targets.

        The score of a sample is its model output at the target class (the predicted
        class when `targets` is None), summed over the batch, so each sample's gradient
        is its own.

        Args:
            x: a batch of inputs (all of it runs at once).
            targets: one class index per sample, or None for the predicted class.
            output: which model output holds the class scores.
        """
        batch = self._prepare(next(iter(iterate_batches(x, 1 << 30)[0])))
        count = int(tf.nest.flatten(batch)[0].shape[0])
        if targets is None:
            targets = np.full(count, -1)
        targets = np.asarray(targets).reshape(-1)
        if targets.shape != (count,):
            raise KeraslensError(
                f"targets has {targets.size} entries for {count} samples; give one class "
                "index per sample, or None for the predicted class."
            )
        result = self._run(self._gradient_step, batch, tf.constant(targets, tf.int32), output)
        chosen, probabilities, grads = result
        numpy = {key: value.numpy() for key, value in probabilities.items()}
        return numpy, {key: value.numpy() for key, value in grads.items()}, chosen.numpy()

    def _prepare(self, batch: Any) -> Any:
        batch = arrange_inputs(self.model, batch)
        check_inputs(self.model, batch)
        batch = to_input_tensors(self.model, batch)
        if not self.model.built and int(tf.nest.flatten(batch)[0].shape[0]) > 0:
            self.model(tf.nest.map_structure(lambda t: t[:1], batch), training=False)
        return batch

    def _run(self, step, *args):
        try:
            return step(*args)
        except KeraslensError:
            raise
        except Exception as error:  # autograph wraps errors raised while tracing
            cause = error.__cause__ or error.__context__
            if isinstance(cause, KeraslensError):
                raise cause from None
            raise

    def _record(self, x: Any) -> tuple[Any, list[tuple[str, MHA, tf.Tensor]]]:
        """Run the model on `x`: its outputs and `(key, layer, probabilities)` per call."""
        paths = {id(layer): path for path, layer in self.layers}
        with scoring([layer for _, layer in self.layers]) as record:
            outputs = self.model(x, training=False)
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

    def _forward(self, x: Any) -> tuple[Any, dict[str, tf.Tensor]]:
        outputs, keyed = self._record(x)
        return outputs, {key: as_matrices(layer, p) for key, layer, p in keyed}

    def _forward_gradients(self, x: Any, targets: tf.Tensor, output: int):
        with tf.GradientTape() as tape:
            outputs, keyed = self._record(x)
            scores = _class_scores(outputs, output)
            chosen = tf.where(targets < 0, tf.argmax(scores, -1, output_type=tf.int32), targets)
            score = tf.reduce_sum(tf.gather(scores, chosen, batch_dims=1))
        grads = tape.gradient(score, [p for _, _, p in keyed])
        probabilities, by_key = {}, {}
        for (key, layer, p), grad in zip(keyed, grads, strict=True):
            probabilities[key] = as_matrices(layer, p)
            by_key[key] = as_matrices(layer, tf.zeros_like(p) if grad is None else grad)
        return chosen, probabilities, by_key


def _class_scores(outputs: Any, output: int) -> tf.Tensor:
    flat = tf.nest.flatten(outputs)
    if not -len(flat) <= output < len(flat):
        raise KeraslensError(
            f"output={output} is out of range: the model has {len(flat)} output(s)."
        )
    scores = tf.cast(flat[output], tf.float32)
    return tf.reshape(scores, [tf.shape(scores)[0], -1])


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
