"""keraslens.attention returns softmax(QK^T / sqrt(d)) of every MultiHeadAttention call.

The oracle is NumPy on the layer's hand-set projection weights, with the masks applied
as the Keras docs define them (masked keys get no mass, fully masked query rows are 0).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keraslens
from keraslens.attention import AttentionCapture

TOKENS, FEATURES, HEADS, KEY_DIM = 5, 4, 2, 3


def _set_weights(layer: keras.layers.MultiHeadAttention, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    weights = [rng.normal(size=w.shape).astype("float32") for w in layer.get_weights()]
    layer.set_weights(weights)
    return weights


def _oracle(weights, query, value, mask=None, scale=1.0):
    """NumPy attention probabilities (batch, heads, T, S); `mask` (batch, T, S) bool."""
    wq, bq, wk, bk = weights[:4]
    q = np.einsum("btd,dnh->btnh", query, wq) + bq
    k = np.einsum("bsd,dnh->bsnh", value, wk) + bk
    scores = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(wq.shape[-1]) / scale
    if mask is not None:
        scores = np.where(mask[:, None], scores, -np.inf)
    scores = scores - scores.max(axis=-1, keepdims=True, where=np.isfinite(scores), initial=-1e30)
    e = np.exp(scores)
    total = e.sum(axis=-1, keepdims=True)
    return np.divide(e, total, out=np.zeros_like(e), where=total > 0)


def _self_attention_model(**call_kwargs):
    inputs = keras.Input((TOKENS, FEATURES))
    mha = keras.layers.MultiHeadAttention(HEADS, KEY_DIM, name="mha")
    outputs = mha(inputs, inputs, **call_kwargs)
    return keras.Model(inputs, outputs), mha


def _x(n=3, tokens=TOKENS, seed=1):
    return np.random.default_rng(seed).normal(size=(n, tokens, FEATURES)).astype("float32")


def test_probabilities_equal_numpy_softmax_of_scaled_dot_products():
    model, mha = _self_attention_model()
    weights = _set_weights(mha)
    x = _x()
    got = keraslens.attention(model, x)
    assert list(got) == ["mha"]
    np.testing.assert_allclose(got["mha"], _oracle(weights, x, x), atol=1e-5)


def test_causal_mask_leaves_no_mass_on_later_tokens():
    model, mha = _self_attention_model(use_causal_mask=True)
    weights = _set_weights(mha)
    x = _x()
    causal = np.tril(np.ones((TOKENS, TOKENS), bool))[None].repeat(len(x), 0)
    got = keraslens.attention(model, x)["mha"]
    np.testing.assert_allclose(got, _oracle(weights, x, x, causal), atol=1e-5)
    assert np.all(got[:, :, np.triu_indices(TOKENS, 1)[0], np.triu_indices(TOKENS, 1)[1]] == 0)


def test_attention_mask_input_is_applied():
    inputs = keras.Input((TOKENS, FEATURES))
    mask_in = keras.Input((TOKENS, TOKENS), dtype="bool")
    mha = keras.layers.MultiHeadAttention(HEADS, KEY_DIM, name="mha")
    model = keras.Model([inputs, mask_in], mha(inputs, inputs, attention_mask=mask_in))
    weights = _set_weights(mha)
    x = _x()
    mask = np.random.default_rng(2).random((len(x), TOKENS, TOKENS)) > 0.4
    mask[:, :, 0] = True  # every query may attend somewhere
    got = keraslens.attention(model, [x, mask])["mha"]
    np.testing.assert_allclose(got, _oracle(weights, x, x, mask), atol=1e-5)


def test_attention_mask_and_causal_mask_combine():
    inputs = keras.Input((TOKENS, FEATURES))
    mask_in = keras.Input((TOKENS, TOKENS), dtype="bool")
    mha = keras.layers.MultiHeadAttention(HEADS, KEY_DIM, name="mha")
    outputs = mha(inputs, inputs, attention_mask=mask_in, use_causal_mask=True)
    model = keras.Model([inputs, mask_in], outputs)
    weights = _set_weights(mha)
    x = _x()
    mask = np.random.default_rng(3).random((len(x), TOKENS, TOKENS)) > 0.3
    mask[:, :, 0] = True
    both = mask & np.tril(np.ones((TOKENS, TOKENS), bool))
    got = keraslens.attention(model, [x, mask])["mha"]
    np.testing.assert_allclose(got, _oracle(weights, x, x, both), atol=1e-5)


def test_keras_padding_mask_hides_padded_keys_and_zeroes_padded_queries():
    tokens = keras.Input((TOKENS,), dtype="int32")
    embed = keras.layers.Embedding(10, FEATURES, mask_zero=True, name="embed")
    mha = keras.layers.MultiHeadAttention(HEADS, KEY_DIM, name="mha")
    hidden = embed(tokens)
    model = keras.Model(tokens, mha(hidden, hidden))
    weights = _set_weights(mha)
    ids = np.array([[3, 4, 5, 0, 0], [1, 2, 3, 4, 5], [7, 0, 0, 0, 0]], "int32")
    vectors = embed.get_weights()[0][ids]
    keep = ids != 0
    mask = keep[:, :, None] & keep[:, None, :]
    got = keraslens.attention(model, ids)["mha"]
    np.testing.assert_allclose(got, _oracle(weights, vectors, vectors, mask), atol=1e-5)


def test_cross_attention_is_queries_by_keys():
    query_in = keras.Input((3, FEATURES))
    value_in = keras.Input((TOKENS, FEATURES))
    mha = keras.layers.MultiHeadAttention(HEADS, KEY_DIM, name="cross")
    model = keras.Model([query_in, value_in], mha(query_in, value_in))
    weights = _set_weights(mha)
    q, v = _x(tokens=3, seed=4), _x(seed=5)
    got = keraslens.attention(model, [q, v])["cross"]
    assert got.shape == (3, HEADS, 3, TOKENS)
    np.testing.assert_allclose(got, _oracle(weights, q, v), atol=1e-5)


@keras.saving.register_keras_serializable("keraslens_tests")
class Block(keras.layers.Layer):
    """A custom transformer block: its attention is a tracked sublayer, not a graph node."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.attn = keras.layers.MultiHeadAttention(HEADS, KEY_DIM, name="attn")
        self.norm = keras.layers.LayerNormalization(name="norm")

    def call(self, x):
        return self.norm(x + self.attn(x, x))


class Encoder(keras.Model):
    """A subclassed model holding two custom blocks."""

    def __init__(self):
        super().__init__(name="encoder")
        self.first = Block(name="first")
        self.second = Block(name="second")
        self.head = keras.layers.Dense(2)

    def call(self, x):
        return self.head(keras.ops.mean(self.second(self.first(x)), axis=1))


def test_attention_inside_custom_layers_of_a_subclassed_model():
    model = Encoder()
    x = _x()
    model(x)
    first = _set_weights(model.first.attn, 0)
    got = keraslens.attention(model, x)
    assert list(got) == ["first/attn", "second/attn"]
    np.testing.assert_allclose(got["first/attn"], _oracle(first, x, x), atol=1e-5)
    second_input = keras.ops.convert_to_numpy(model.first(x))
    second = model.second.attn.get_weights()
    np.testing.assert_allclose(
        got["second/attn"], _oracle(second, second_input, second_input), atol=1e-5
    )


def test_attention_in_a_nested_functional_backbone_is_named_by_path():
    inner_in = keras.Input((TOKENS, FEATURES))
    mha = keras.layers.MultiHeadAttention(HEADS, KEY_DIM, name="mha")
    backbone = keras.Model(inner_in, mha(inner_in, inner_in), name="backbone")
    outer_in = keras.Input((TOKENS, FEATURES))
    model = keras.Model(outer_in, keras.layers.Dense(2)(backbone(outer_in)))
    weights = _set_weights(mha)
    x = _x()
    got = keraslens.attention(model, x)
    np.testing.assert_allclose(got["backbone/mha"], _oracle(weights, x, x), atol=1e-5)


def test_shared_layer_gives_one_entry_per_call():
    a, b = keras.Input((TOKENS, FEATURES)), keras.Input((TOKENS, FEATURES))
    mha = keras.layers.MultiHeadAttention(HEADS, KEY_DIM, name="mha")
    model = keras.Model([a, b], [mha(a, a), mha(b, b)])
    weights = _set_weights(mha)
    xa, xb = _x(seed=6), _x(seed=7)
    got = keraslens.attention(model, [xa, xb])
    assert sorted(got) == ["mha@0", "mha@1"]
    # Keys follow the order in which the graph runs the calls, not the order of building.
    first, second = (xa, xb) if np.allclose(got["mha@0"], _oracle(weights, xa, xa)) else (xb, xa)
    np.testing.assert_allclose(got["mha@0"], _oracle(weights, first, first), atol=1e-5)
    np.testing.assert_allclose(got["mha@1"], _oracle(weights, second, second), atol=1e-5)


@keras.saving.register_keras_serializable("keraslens_tests")
class TemperedAttention(keras.layers.MultiHeadAttention):
    """A subclass with its own `_compute_attention`: scores divided by a temperature."""

    def _compute_attention(
        self, query, key, value, attention_mask=None, training=None, return_attention_scores=False
    ):
        return super()._compute_attention(
            query / 2.0, key, value, attention_mask, training, return_attention_scores
        )


def test_subclass_with_its_own_attention_reports_its_own_probabilities():
    inputs = keras.Input((TOKENS, FEATURES))
    mha = TemperedAttention(HEADS, KEY_DIM, name="tempered")
    model = keras.Model(inputs, mha(inputs, inputs))
    weights = _set_weights(mha)
    x = _x()
    got = keraslens.attention(model, x)["tempered"]
    np.testing.assert_allclose(got, _oracle(weights, x, x, scale=2.0), atol=1e-5)


def test_two_attention_axes_are_flattened_row_major():
    inputs = keras.Input((2, 3, FEATURES))
    mha = keras.layers.MultiHeadAttention(HEADS, KEY_DIM, attention_axes=(1, 2), name="mha")
    model = keras.Model(inputs, mha(inputs, inputs))
    weights = _set_weights(mha)
    x = np.random.default_rng(8).normal(size=(2, 2, 3, FEATURES)).astype("float32")
    flat = x.reshape(2, 6, FEATURES)
    got = keraslens.attention(model, x)["mha"]
    np.testing.assert_allclose(got, _oracle(weights, flat, flat), atol=1e-5)


def test_flash_attention_layer_gives_the_equivalent_probabilities():
    inputs = keras.Input((TOKENS, FEATURES))
    mha = keras.layers.MultiHeadAttention(HEADS, KEY_DIM, flash_attention=True, name="mha")
    model = keras.Model(inputs, mha(inputs, inputs))
    weights = _set_weights(mha)
    x = _x()
    np.testing.assert_allclose(
        keraslens.attention(model, x)["mha"], _oracle(weights, x, x), atol=1e-5
    )


def test_capture_leaves_the_model_unchanged():
    model, mha = _self_attention_model(use_causal_mask=True)
    _set_weights(mha)
    x = _x()
    before = model.predict(x, verbose=0)
    keraslens.attention(model, x)
    assert "_compute_attention" not in vars(mha)
    np.testing.assert_array_equal(model.predict(x, verbose=0), before)


def test_second_call_with_the_same_shapes_does_not_retrace():
    model, _ = _self_attention_model()
    capture = AttentionCapture(model)
    capture(_x(4, seed=1), batch_size=4)
    capture(_x(4, seed=2), batch_size=4)
    assert capture._step.experimental_get_tracing_count() == 1


def test_batches_concatenate_to_the_whole():
    model, mha = _self_attention_model()
    weights = _set_weights(mha)
    x = _x(7)
    got = keraslens.attention(model, x, batch_size=3)["mha"]
    np.testing.assert_allclose(got, _oracle(weights, x, x), atol=1e-5)


def test_layers_selects_some_attention_layers():
    model = Encoder()
    model(_x())
    assert list(keraslens.attention(model, _x(), layers="second/*")) == ["second/attn"]


def test_model_without_attention_is_a_clear_error():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(keraslens.KeraslensError, match="no keras.layers.MultiHeadAttention"):
        keraslens.attention(model, np.zeros((2, 3), "float32"))


def _classifier(activation=None):
    inputs = keras.Input((TOKENS, FEATURES))
    mha = keras.layers.MultiHeadAttention(HEADS, KEY_DIM, name="mha")
    flat = keras.layers.Flatten()(mha(inputs, inputs))
    dense = keras.layers.Dense(3, activation=activation, name="logits")
    return keras.Model(inputs, dense(flat)), mha, dense


@pytest.mark.parametrize("head", [None, "softmax"])
def test_gradients_of_the_target_logit_equal_the_chain_rule(head):
    model, mha, dense = _classifier(head)
    weights = _set_weights(mha)
    x = _x()
    targets = np.array([0, 2, 1])
    _, grads, chosen = AttentionCapture(model).gradients(x, targets)
    np.testing.assert_array_equal(chosen, targets)
    wv, bv, wo = weights[4], weights[5], weights[6]
    v = np.einsum("bsd,dnh->bsnh", x, wv) + bv
    w = dense.get_weights()[0].reshape(TOKENS, FEATURES, 3)[..., targets]  # (T, D, batch)
    upstream = np.einsum("nhd,tdb->btnh", wo, w)  # d logit / d (A V), before any softmax
    expected = np.einsum("bsnh,btnh->bnts", v, upstream)
    np.testing.assert_allclose(grads["mha"], expected, rtol=1e-4, atol=1e-5)


def test_gradients_default_to_the_predicted_class():
    model, mha, _ = _classifier()
    _set_weights(mha)
    x = _x()
    _, _, chosen = AttentionCapture(model).gradients(x)
    np.testing.assert_array_equal(chosen, model.predict(x, verbose=0).argmax(-1))


def test_keras_hub_transformer_encoder_with_a_padding_mask():
    keras_hub = pytest.importorskip("keras_hub")
    inputs = keras.Input((TOKENS, FEATURES))
    padding = keras.Input((TOKENS,), dtype="bool")
    encoder = keras_hub.layers.TransformerEncoder(8, HEADS, name="encoder")
    model = keras.Model([inputs, padding], encoder(inputs, padding_mask=padding))
    weights = _set_weights(encoder._self_attention_layer)
    x = _x()
    keep = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], bool)
    got = keraslens.attention(model, [x, keep])
    mask = np.broadcast_to(keep[:, None, :], (len(x), TOKENS, TOKENS))  # keys only
    np.testing.assert_allclose(
        got["encoder/self_attention_layer"], _oracle(weights, x, x, mask), atol=1e-5
    )


def test_keras_hub_decoder_cached_attention_is_causal():
    keras_hub = pytest.importorskip("keras_hub")
    inputs = keras.Input((TOKENS, FEATURES))
    decoder = keras_hub.layers.TransformerDecoder(8, HEADS, name="decoder")
    model = keras.Model(inputs, decoder(inputs))
    attention_layer = decoder._self_attention_layer
    assert type(attention_layer).__name__ == "CachedMultiHeadAttention"
    weights = _set_weights(attention_layer)
    x = _x()
    causal = np.tril(np.ones((TOKENS, TOKENS), bool))[None].repeat(len(x), 0)
    got = keraslens.attention(model, x)
    np.testing.assert_allclose(
        got["decoder/self_attention"], _oracle(weights, x, x, causal), atol=1e-5
    )


def test_gradients_on_a_token_model_come_with_its_probabilities():
    tokens = keras.Input((TOKENS,), dtype="int32")
    hidden = keras.layers.Embedding(10, FEATURES, name="embed")(tokens)
    attended = keras.layers.MultiHeadAttention(HEADS, KEY_DIM, name="mha")(hidden, hidden)
    model = keras.Model(tokens, keras.layers.Dense(2)(keras.layers.Flatten()(attended)))
    ids = np.random.default_rng(9).integers(0, 10, (3, TOKENS)).astype("int32")
    probabilities, grads, _ = AttentionCapture(model).gradients(ids, targets=1)
    np.testing.assert_allclose(
        probabilities["mha"], keraslens.attention(model, ids)["mha"], atol=1e-6
    )
    assert grads["mha"].shape == (3, HEADS, TOKENS, TOKENS) and np.abs(grads["mha"]).sum() > 0


def test_unbatched_dataset_is_batched_like_arrays():
    import tensorflow as tf

    model, mha = _self_attention_model()
    weights = _set_weights(mha)
    x = _x(5)
    got = keraslens.attention(model, tf.data.Dataset.from_tensor_slices(x), batch_size=2)
    np.testing.assert_allclose(got["mha"], _oracle(weights, x, x), atol=1e-5)


def test_input_of_the_wrong_shape_is_a_clear_error():
    model, _ = _self_attention_model()
    with pytest.raises(keraslens.KeraslensError, match="shape"):
        keraslens.attention(model, np.zeros((2, TOKENS, FEATURES + 1), "float32"))
