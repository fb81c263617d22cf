"""Rollout and gradient-weighted attention equal their papers' formulas in NumPy."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keraslens
from keraslens.attention import (
    attention_map,
    gradient_weighted,
    patch_heatmap,
    rollout,
    token_relevance,
)

BATCH, HEADS, TOKENS = 2, 3, 4


def _maps(seed: int) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(size=(BATCH, HEADS, TOKENS, TOKENS))
    return np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)


def test_rollout_is_the_product_of_renormalised_half_identity_mixtures():
    layers = {"a": _maps(0), "b": _maps(1), "c": _maps(2)}
    expected = []
    for sample in range(BATCH):
        joint = np.eye(TOKENS)
        for maps in layers.values():
            mixed = 0.5 * maps[sample].mean(axis=0) + 0.5 * np.eye(TOKENS)
            mixed /= mixed.sum(axis=1, keepdims=True)
            joint = mixed @ joint
        expected.append(joint)
    np.testing.assert_allclose(rollout(layers), np.array(expected), rtol=1e-12)


def test_rollout_rows_are_distributions():
    joint = rollout([_maps(3), _maps(4)])
    np.testing.assert_allclose(joint.sum(axis=-1), 1.0)
    assert joint.min() >= 0


def test_gradient_weighted_of_one_block_is_identity_plus_positive_mean():
    attention, grads = (
        _maps(5),
        np.random.default_rng(6).normal(size=(BATCH, HEADS, TOKENS, TOKENS)),
    )
    expected = np.eye(TOKENS) + np.maximum(grads * attention, 0).mean(axis=1)
    np.testing.assert_allclose(gradient_weighted([attention], [grads]), expected)


def test_gradient_weighted_accumulates_r_plus_abar_r():
    rng = np.random.default_rng(7)
    maps = [_maps(8), _maps(9)]
    grads = [rng.normal(size=m.shape) for m in maps]
    abar = [np.maximum(g * a, 0).mean(axis=1) for a, g in zip(maps, grads, strict=True)]
    r1 = np.eye(TOKENS) + abar[0]
    expected = r1 + abar[1] @ r1
    np.testing.assert_allclose(gradient_weighted(maps, grads), expected)


def test_rollout_refuses_cross_attention():
    with pytest.raises(keraslens.KeraslensError, match="self-attention"):
        rollout([_maps(0)[..., :3]])


def test_token_relevance_reads_a_row_or_the_mean():
    joint = rollout([_maps(0)])
    np.testing.assert_array_equal(token_relevance(joint, 0), joint[:, 0])
    np.testing.assert_allclose(token_relevance(joint), joint.mean(axis=1))


def test_patch_heatmap_puts_the_hot_patch_where_it_is():
    relevance = np.zeros((1, 1 + 16))  # a classification token, then a 4 x 4 grid
    relevance[0, 1 + 2 * 4 + 3] = 1.0  # row 2, column 3
    heat = patch_heatmap(relevance, (32, 32))
    assert heat.shape == (1, 32, 32)
    row, column = np.unravel_index(heat[0].argmax(), (32, 32))
    assert (row // 8, column // 8) == (2, 3)
    assert heat.min() == 0.0 and heat.max() == 1.0


def test_patch_heatmap_refuses_tokens_that_are_no_grid():
    with pytest.raises(keraslens.KeraslensError, match="grid"):
        patch_heatmap(np.ones((1, 7)), (8, 8))


def _vit(image=16, patch=4, width=8):
    """A tiny ViT: patches by a strided conv, two attention blocks, mean-pooled head."""
    inputs = keras.Input((image, image, 3))
    tokens = keras.layers.Conv2D(width, patch, strides=patch)(inputs)
    tokens = keras.layers.Reshape(((image // patch) ** 2, width))(tokens)
    for i in range(2):
        attended = keras.layers.MultiHeadAttention(2, 4, name=f"mha{i}")(tokens, tokens)
        tokens = keras.layers.LayerNormalization()(tokens + attended)
    pooled = keras.layers.GlobalAveragePooling1D()(tokens)
    return keras.Model(inputs, keras.layers.Dense(3)(pooled))


def test_attention_map_on_a_vit_gives_one_value_per_patch():
    model = _vit()
    images = np.random.default_rng(0).random((2, 16, 16, 3)).astype("float32")
    relevance = attention_map(model, images)
    np.testing.assert_allclose(
        relevance, rollout(keraslens.attention(model, images)).mean(axis=1), rtol=1e-6
    )
    assert patch_heatmap(relevance, (16, 16)).shape == (2, 16, 16)


def test_attention_map_gradient_method_runs_on_the_predicted_class():
    model = _vit()
    images = np.random.default_rng(1).random((2, 16, 16, 3)).astype("float32")
    relevance = attention_map(model, images, method="gradient")
    assert relevance.shape == (2, 16) and np.all(relevance >= 0)
