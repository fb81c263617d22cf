"""Per-sample maps built on captured attention: rollout and gradient-weighted attention."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from keraslens.errors import KeraslensError

Attentions = Mapping[str, np.ndarray] | Sequence[np.ndarray]


def _blocks(attentions: Attentions, what: str = "attentions") -> list[np.ndarray]:
    blocks = list(attentions.values() if isinstance(attentions, Mapping) else attentions)
    if not blocks:
        raise KeraslensError(f"{what} is empty: capture attention first.")
    shape = np.shape(blocks[0])
    for block in blocks:
        if np.ndim(block) != 4 or block.shape[2] != block.shape[3]:
            raise KeraslensError(
                f"Attention maps must be self-attention shaped (batch, heads, tokens, tokens), "
                f"got {np.shape(block)}; pass the self-attention layers only (layers=)."
            )
        if (block.shape[0], block.shape[2]) != (shape[0], shape[2]):
            raise KeraslensError(
                f"Attention maps of shapes {shape} and {block.shape} do not chain: every "
                "layer must attend over the same tokens of the same samples."
            )
    return [np.asarray(block, dtype=np.float64) for block in blocks]


def rollout(attentions: Attentions, residual: float = 0.5) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema, 2020): how much each token mixes into each.

    Each layer's heads are averaged, the residual connection is added as
    `(1 - residual) A + residual I`, rows are re-normalised to sum to 1, and the
    layers are multiplied from the first to the last: `R = A_L ... A_2 A_1`.

    Args:
        attentions: maps shaped (batch, heads, tokens, tokens), first layer first (the
            dict `keraslens.attention` returns is in call order).
        residual: the weight of the identity (0.5 in the paper).

    Returns:
        (batch, tokens, tokens): row i is the share of each input token in token i
        after the last layer.

    Example:

    ```python
    joint = rollout(keraslens.attention(vit, images))
    cls_relevance = joint[:, 0, 1:]
    ```
    """
    if not 0.0 <= residual <= 1.0:
        raise KeraslensError(f"residual must be in [0, 1], got {residual!r}.")
    blocks = _blocks(attentions)
    tokens = blocks[0].shape[-1]
    joint = np.broadcast_to(np.eye(tokens), (blocks[0].shape[0], tokens, tokens))
    for block in blocks:
        mixed = (1.0 - residual) * block.mean(axis=1) + residual * np.eye(tokens)
        mixed = mixed / mixed.sum(axis=-1, keepdims=True)
        joint = mixed @ joint
    return joint


def gradient_weighted(attentions: Attentions, gradients: Attentions) -> np.ndarray:
    """Gradient-weighted attention relevance (Chefer, Gur & Wolf, ICCV 2021, eqs. 5-6).

    "Generic Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder
    Transformers": per block, `Abar = mean over heads of (dScore/dA * A)^+`; starting
    from `R = I`, each self-attention block in order updates `R = R + Abar R`.

    Args:
        attentions: maps shaped (batch, heads, tokens, tokens), first layer first.
        gradients: the gradient of the explained score with respect to each map, same
            keys and shapes (`AttentionCapture.gradients` gives both).

    Returns:
        (batch, tokens, tokens) relevance; row i is what token i draws from each token.
    """
    blocks = _blocks(attentions)
    grads = _blocks(gradients, "gradients")
    if len(grads) != len(blocks) or any(
        g.shape != a.shape for g, a in zip(grads, blocks, strict=True)
    ):
        raise KeraslensError(
            "gradients must match attentions map for map; pass both from one "
            "AttentionCapture.gradients call."
        )
    tokens = blocks[0].shape[-1]
    relevance = np.broadcast_to(np.eye(tokens), (blocks[0].shape[0], tokens, tokens))
    for block, grad in zip(blocks, grads, strict=True):
        weighted = np.maximum(grad * block, 0.0).mean(axis=1)
        relevance = relevance + weighted @ relevance
    return relevance


def token_relevance(joint: np.ndarray, query: int | str = "mean") -> np.ndarray:
    """One value per token from a (batch, tokens, tokens) map.

    Args:
        joint: a rollout or gradient-weighted map.
        query: the row to read, by index (0 for a classification token), or "mean" for
            the mean over all rows (a model that pools its tokens).

    Returns:
        (batch, tokens).
    """
    if query == "mean":
        return joint.mean(axis=1)
    if not isinstance(query, (int, np.integer)) or not -joint.shape[1] <= query < joint.shape[1]:
        raise KeraslensError(
            f"query must be 'mean' or a token index below {joint.shape[1]}, got {query!r}."
        )
    return joint[:, query, :]


def patch_heatmap(
    relevance: np.ndarray, image_size: tuple[int, int], grid: tuple[int, int] | None = None
) -> np.ndarray:
    """Token relevance of a ViT-style model drawn over its image: (batch, height, width).

    The patch tokens are the last `rows * columns` tokens (a classification token in
    front is dropped), laid out row by row, then upsampled bilinearly to the image and
    scaled to [0, 1] per sample.

    Args:
        relevance: (batch, tokens), e.g. `token_relevance(rollout(maps), query=0)`.
        image_size: (height, width) of the input images.
        grid: patch rows and columns; None for a square grid of the largest square
            number of tokens.
    """
    import tensorflow as tf

    relevance = np.asarray(relevance, dtype=np.float32)
    tokens = relevance.shape[-1]
    side = int(np.sqrt(tokens))
    rows, columns = grid or (side, side)
    extra = tokens - rows * columns
    if rows * columns < 1 or extra < 0 or (grid is None and extra > 1):
        raise KeraslensError(
            f"{tokens} tokens do not form a square patch grid (with at most one extra "
            "classification token); pass grid=(rows, columns)."
        )
    patches = relevance[:, tokens - rows * columns :].reshape(-1, rows, columns, 1)
    image = tf.image.resize(patches, image_size, method="bilinear").numpy()[..., 0]
    low = image.min(axis=(1, 2), keepdims=True)
    span = image.max(axis=(1, 2), keepdims=True) - low
    return np.divide(image - low, span, out=np.zeros_like(image), where=span > 0)


def attention_map(
    model: Any,
    x: Any,
    method: str = "rollout",
    targets: np.ndarray | None = None,
    query: int | str = "mean",
    layers: Any = None,
) -> np.ndarray:
    """Per-token relevance of each sample from its attention: (batch, tokens).

    Args:
        model: a Keras model with self-attention `MultiHeadAttention` layers.
        x: a batch of inputs (one compiled run).
        method: "rollout" (Abnar & Zuidema, 2020) or "gradient" (Chefer et al., 2021).
        targets: for "gradient", the class explained per sample (None: predicted).
        query: the row read from the joint map: a token index or "mean".
        layers: which attention layers (None: all, in call order).

    Example:

    ```python
    relevance = attention_map(vit, images, method="gradient", query=0)
    heat = patch_heatmap(relevance, images.shape[1:3])
    ```
    """
    from keraslens.attention.capture import capture_for

    capture = capture_for(model, layers)
    if method == "rollout":
        joint = rollout(capture(x, batch_size=1 << 30))
    elif method == "gradient":
        probabilities, grads, _ = capture.gradients(x, targets)
        joint = gradient_weighted(probabilities, grads)
    else:
        raise KeraslensError(f"method must be 'rollout' or 'gradient', got {method!r}.")
    return token_relevance(joint, query)
