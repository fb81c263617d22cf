"""Attention probabilities out of `MultiHeadAttention`, by replacing `_compute_attention`.

Keras 3's `MultiHeadAttention.call` hands its projected query, key and value to
`_compute_attention`, which calls the fused `ops.dot_product_attention` (flash attention
where the backend has it) and so returns no probabilities. For the duration of a trace,
`scoring` gives each chosen layer an instance attribute `_compute_attention` that computes
the same attention the way Keras's own non-fused path does (the path it takes with
`return_attention_scores=True`): `softmax(Q K^T / sqrt(key_dim))` with the layer's mask,
its `use_causal_mask` and the Keras masks of its inputs (already merged into
`attention_mask` by `call`), then the probabilities times the values. The layer's
output is computed from those probabilities, so it differs from the fused kernel's by
rounding only and gradients reach them. A subclass that overrides `_compute_attention`
(a custom attention) is asked for its own scores with `return_attention_scores=True`.
Like `keraslens.capture.intercept`, the context manager always removes what it installed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keraslens.errors import KeraslensError

MHA = keras.layers.MultiHeadAttention


@contextlib.contextmanager
def scoring(layers: Sequence[MHA]) -> Iterator[list[tuple[MHA, tf.Tensor]]]:
    """Within the block, every call of one of `layers` appends `(layer, probabilities)`.

    The probabilities are the tensor the layer's output is computed from, in the
    layer's own layout (batch, heads, *query axes, *key axes), in call order.
    """
    record: list[tuple[MHA, tf.Tensor]] = []
    graph = None if tf.executing_eagerly() else tf.compat.v1.get_default_graph()
    replaced = []
    try:
        for layer in layers:
            own = layer.__dict__.get("_compute_attention")
            replaced.append((layer, own))
            object.__setattr__(layer, "_compute_attention", _scored(layer, own, record, graph))
        yield record
    finally:
        for layer, own in replaced:
            if own is None:
                object.__delattr__(layer, "_compute_attention")
            else:
                object.__setattr__(layer, "_compute_attention", own)


def _scored(layer: MHA, own, record: list, graph: tf.Graph | None):
    overridden = own is not None or type(layer)._compute_attention is not MHA._compute_attention
    original = own or type(layer)._compute_attention.__get__(layer)

    def compute_attention(
        query,
        key,
        value,
        attention_mask=None,
        training=None,
        return_attention_scores=False,
        use_causal_mask=False,
    ):
        if overridden:
            causal = {"use_causal_mask": True} if use_causal_mask else {}
            output, probabilities = original(
                query, key, value, attention_mask, training, True, **causal
            )
            if probabilities is None:
                raise KeraslensError(
                    f"Layer {layer.name!r} ({type(layer).__name__}) overrides "
                    "_compute_attention and returns no scores when asked for them; exclude "
                    "it with layers=, or make it honour return_attention_scores=True."
                )
        else:
            output, probabilities = explicit_attention(
                layer, query, key, value, attention_mask, use_causal_mask
            )
        if graph is None or probabilities.graph is graph:
            # Inside a loop of the model's graph (a decoding loop) the tensor cannot
            # leave it; such calls are not recorded.
            record.append((layer, probabilities))
        return output, (probabilities if return_attention_scores else None)

    return compute_attention


def explicit_attention(layer: MHA, query, key, value, attention_mask=None, use_causal_mask=False):
    """Keras's non-fused `MultiHeadAttention` attention: `(output, probabilities)`.

    Follows `MultiHeadAttention._compute_attention` of Keras 3.15 in inference mode
    (attention dropout is the identity there).
    """
    if use_causal_mask:
        causal = layer._compute_causal_mask(query, value)
        attention_mask = (
            causal
            if attention_mask is None
            else ops.logical_and(ops.cast(attention_mask, "bool"), causal)
        )
    query = ops.multiply(query, ops.cast(layer._inverse_sqrt_key_dim, query.dtype))
    scores = ops.einsum(layer._dot_product_equation, key, query)
    probabilities = layer._masked_softmax(scores, attention_mask)
    output = ops.einsum(layer._combine_equation, probabilities, value)
    return output, probabilities


def as_matrices(layer: MHA, probabilities: tf.Tensor) -> tf.Tensor:
    """Probabilities as float32 `(batch, heads, queries, keys)`.

    Several attention axes (attention over an image's rows and columns) are flattened
    into one query and one key axis, in row-major order.
    """
    axes = len(layer._attention_axes)
    rank = probabilities.shape.rank
    batch_axes = rank - 1 - 2 * axes
    if batch_axes != 1:
        raise KeraslensError(
            f"Layer {layer.name!r} attends over axes {layer._attention_axes} and keeps "
            f"{batch_axes - 1} other axis as a batch axis; keraslens returns attention as "
            "(batch, heads, query, key). Exclude the layer with layers=."
        )
    shape = tf.shape(probabilities)
    queries = tf.reduce_prod(shape[2 : 2 + axes])
    keys = tf.reduce_prod(shape[2 + axes :])
    matrices = tf.reshape(probabilities, tf.stack([shape[0], shape[1], queries, keys]))
    static = probabilities.shape.as_list()
    known = [_product(static[2 : 2 + axes]), _product(static[2 + axes :])]
    return tf.cast(tf.ensure_shape(matrices, static[:2] + known), tf.float32)


def _product(dims: list) -> int | None:
    return None if None in dims else int(np.prod(dims))
