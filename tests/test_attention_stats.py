"""HeadStats equals NumPy on the maps, finds planted dead and sink heads, merges exactly."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keraslens
from keraslens.attention import HeadStats, head_statistics

SAMPLES, HEADS, TOKENS = 6, 3, 5


def _maps(seed: int = 0) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(size=(SAMPLES, HEADS, TOKENS, TOKENS)) * 2
    return np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)


def _row_entropies(p: np.ndarray) -> np.ndarray:
    return np.array(
        [[[-sum(v * np.log(v) for v in row if v > 0) for row in head] for head in s] for s in p]
    )


def test_statistics_equal_numpy_on_the_maps():
    p = _maps()
    stats = HeadStats().update(p)
    entropy = _row_entropies(p)
    np.testing.assert_allclose(stats.entropy, entropy.mean(axis=(0, 2)))
    np.testing.assert_allclose(stats.uniformity, (entropy / np.log(TOKENS)).mean(axis=(0, 2)))
    np.testing.assert_allclose(stats.sink, p[..., 0].mean(axis=(0, 2)))
    diagonal = np.array([[np.trace(head) / TOKENS for head in s] for s in p])
    np.testing.assert_allclose(stats.diagonal, diagonal.mean(axis=0))
    np.testing.assert_allclose(stats.variability, p.std(axis=0).mean(axis=(1, 2)) * TOKENS)


def test_split_batches_merge_to_the_whole():
    p = _maps(1)
    whole = HeadStats().update(p)
    merged = HeadStats().update(p[:2]).merge(HeadStats().update(p[2:]))
    assert merged.samples == whole.samples
    for name in ("entropy", "uniformity", "sink", "diagonal", "variability"):
        np.testing.assert_allclose(getattr(merged, name), getattr(whole, name), rtol=1e-12)


def test_planted_uniform_and_constant_heads_are_dead():
    p = _maps(2)
    p[:, 0] = 1.0 / TOKENS  # averages its values
    p[:, 1] = np.eye(TOKENS)  # the same pattern whatever the input
    stats = HeadStats().update(p)
    assert stats.uniformity[0] == pytest.approx(1.0)
    assert stats.variability[1] == pytest.approx(0.0)
    assert stats.diagonal[1] == pytest.approx(1.0)
    assert stats.dead_heads().tolist() == [0, 1]


def test_planted_sink_head_puts_its_mass_on_the_first_token():
    p = _maps(3)
    p[:, 2] = 0.0
    p[:, 2, :, 0] = 1.0
    assert HeadStats().update(p).sink[2] == pytest.approx(1.0)


def test_fully_masked_query_rows_are_left_out():
    p = _maps(4)
    padded = p.copy()
    padded[:, :, -1] = 0.0  # the last query is padding: Keras zeroes its row
    expected = _row_entropies(p)[:, :, :-1].mean(axis=(0, 2))
    np.testing.assert_allclose(HeadStats().update(padded).entropy, expected)


def test_uniformity_divides_by_the_keys_a_row_may_attend_to():
    causal = np.tril(np.ones((TOKENS, TOKENS)))
    p = np.broadcast_to(causal / causal.sum(-1, keepdims=True), (2, 1, TOKENS, TOKENS))
    assert HeadStats().update(p).uniformity[0] == pytest.approx(1.0)


def test_constant_criterion_needs_two_samples():
    assert HeadStats().update(_maps()[:1]).dead_heads().size == 0


def test_variability_of_long_maps_is_taken_on_64_by_64_blocks():
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(4, 1, 100, 130)) * 3
    p = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    q_block = np.arange(100) * 64 // 100  # position i of n is in block i * 64 // n
    k_block = np.arange(130) * 64 // 130
    blocks = np.zeros((4, 64, 64))
    for qb in range(64):
        for kb in range(64):
            cell = p[:, 0][:, q_block == qb][:, :, k_block == kb]
            blocks[:, qb, kb] = cell.sum(axis=2).mean(axis=1)
    expected = blocks.std(axis=0).mean() * 64
    stats = HeadStats().update(p)
    assert stats.map_sum.shape == (1, 64, 64)
    np.testing.assert_allclose(stats.variability, [expected], rtol=1e-10)


def test_merging_other_layers_statistics_is_an_error():
    with pytest.raises(keraslens.KeraslensError, match="one layer"):
        HeadStats().update(_maps()).merge(HeadStats().update(_maps()[..., :3, :3]))


def test_head_statistics_stream_equal_statistics_of_all_maps():
    inputs = keras.Input((TOKENS, 4))
    mha = keras.layers.MultiHeadAttention(HEADS, 2, name="mha")
    model = keras.Model(inputs, mha(inputs, inputs))
    x = np.random.default_rng(5).normal(size=(7, TOKENS, 4)).astype("float32")
    streamed = head_statistics(model, x, batch_size=3)["mha"]
    whole = HeadStats().update(keraslens.attention(model, x)["mha"])
    np.testing.assert_allclose(streamed.entropy, whole.entropy, rtol=1e-6)
    np.testing.assert_allclose(streamed.variability, whole.variability, rtol=1e-6)


def test_head_statistics_of_a_model_taking_any_sequence_length():
    inputs = keras.Input((None, 4))
    mha = keras.layers.MultiHeadAttention(HEADS, 2, name="mha")
    model = keras.Model(inputs, mha(inputs, inputs))
    rng = np.random.default_rng(7)
    for length in (5, 100, 70):  # the second trace leaves the length open
        x = rng.normal(size=(3, length, 4)).astype("float32")
        streamed = head_statistics(model, x, batch_size=2)["mha"]
        whole = HeadStats().update(keraslens.attention(model, x)["mha"])
        np.testing.assert_allclose(streamed.variability, whole.variability, rtol=1e-6)
        np.testing.assert_allclose(streamed.entropy, whole.entropy, rtol=1e-6)
