"""Token attributions on a planted answer: the label is whether one token occurs.

On both a MultiHeadAttention encoder and a BiLSTM, integrated gradients and occlusion
(at the embedding, one value per token) must rank the planted token first.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keraslens

pytestmark = pytest.mark.slow

VOCAB, LENGTH, PLANTED = 40, 12, 7


def _planted_tokens(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x = rng.integers(8, VOCAB, (count, LENGTH))  # ids 1..7 never occur at random
    y = rng.integers(0, 2, count)
    x[y == 1, rng.integers(0, LENGTH, int(y.sum()))] = PLANTED
    return x.astype("int32"), y


def _encoder() -> keras.Model:
    tokens = keras.Input((LENGTH,), dtype="int32")
    h = keras.layers.Embedding(VOCAB, 16)(tokens)
    attended = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8)(h, h)
    h = keras.layers.LayerNormalization()(h + attended)
    h = keras.layers.GlobalMaxPooling1D()(keras.layers.Dense(16, activation="relu")(h))
    return keras.Model(tokens, keras.layers.Dense(2, activation="softmax")(h))


def _bilstm() -> keras.Model:
    tokens = keras.Input((LENGTH,), dtype="int32")
    h = keras.layers.Embedding(VOCAB, 16)(tokens)
    h = keras.layers.Bidirectional(keras.layers.LSTM(8))(h)
    return keras.Model(tokens, keras.layers.Dense(2, activation="softmax")(h))


@pytest.fixture(scope="module", params=[_encoder, _bilstm], ids=["mha-encoder", "bilstm"])
def trained(request):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x, y = _planted_tokens(1200, rng)
    model = request.param()
    model.compile(
        keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    model.fit(x, y, epochs=6, batch_size=64, verbose=0)
    test_x, test_y = _planted_tokens(120, rng)
    assert model.evaluate(test_x, test_y, verbose=0)[1] > 0.97
    return model, test_x[test_y == 1]


@pytest.mark.parametrize(
    ("method", "options"),
    [("integrated-gradients", {"steps": 32}), ("occlusion", {"patch": 1, "stride": 1})],
)
def test_the_planted_token_ranks_first_in_95_percent_of_positive_samples(trained, method, options):
    model, positives = trained
    values = keraslens.attribute(model, positives, method, targets=1, **options)
    assert values.shape == positives.shape
    first = values.argmax(axis=1)
    hit = positives[np.arange(len(positives)), first] == PLANTED
    assert hit.mean() >= 0.95
