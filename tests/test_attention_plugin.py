"""The attention plugin finds planted dead and sink heads, draws heads, skips without MHA."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keraslens
from keraslens.plugin import AnalysisContext
from plugins.attention import Attention

TOKENS, WIDTH, HEADS, KEY_DIM, BOS = 6, 8, 4, 4, 1


def _planted_model() -> keras.Model:
    """Head 0 has a zero query projection (uniform rows); head 1 looks at the first token.

    Token BOS, always first, is the only one with a non-zero embedding feature 0; head 1's
    query is a constant that matches the key of that feature, so its mass goes there.
    Heads 2 and 3 keep their random weights.
    """
    tokens = keras.Input((TOKENS,), dtype="int32")
    embed = keras.layers.Embedding(12, WIDTH, name="embed")
    mha = keras.layers.MultiHeadAttention(HEADS, KEY_DIM, name="mha")
    hidden = embed(tokens)
    pooled = keras.layers.GlobalAveragePooling1D()(mha(hidden, hidden))
    model = keras.Model(tokens, keras.layers.Dense(2)(pooled))
    table = embed.get_weights()[0] * 50  # Keras's small initial embeddings give uniform heads
    table[:, 0] = 0.0
    table[BOS, 0] = 10.0
    embed.set_weights([table])
    wq, bq, wk, bk, *rest = mha.get_weights()
    wq[:, 0], bq[0] = 0.0, 0.0
    wq[:, 1], bq[1] = 0.0, [5.0, 0.0, 0.0, 0.0]
    wk[:, 1] = 0.0
    wk[0, 1, 0] = 1.0
    mha.set_weights([wq, bq, wk, bk, *rest])
    return model


def _tokens(n: int = 16) -> np.ndarray:
    ids = np.random.default_rng(0).integers(2, 12, size=(n, TOKENS)).astype("int32")
    ids[:, 0] = BOS
    return ids


def _run(model, x, minimal=False, **options):
    ctx = AnalysisContext(
        model=model,
        lens=None,
        stats=None,
        sample=x,
        labels=None,
        options=Attention.parse_options(options),
        minimal=minimal,
    )
    return Attention().analyze(ctx)


def test_planted_uniform_head_is_dead_and_planted_sink_is_found():
    result = _run(_planted_model(), _tokens(), minimal=True, batch_size=5)
    layer = result.data["layers"]["mha"]
    assert layer["uniform_heads"] == [0]
    assert 0 in layer["dead_heads"] and not {2, 3} & set(layer["dead_heads"])
    assert layer["sink_heads"] == [1]
    labels = {f.label: f for f in result.findings}
    assert labels["dead heads"].units[0] == 0
    assert labels["attention sink"].units == [1]


def test_table_has_one_row_per_head_with_the_statistics():
    result = _run(_planted_model(), _tokens(), minimal=True)
    (table,) = result.tables
    assert [row[:2] for row in table.rows] == [["mha", h] for h in range(HEADS)]
    assert table.rows[0][3] == pytest.approx(1.0)  # head 0 uniformity
    assert table.rows[1][4] > 0.99  # head 1 first-token mass


def test_head_grid_is_drawn_for_one_sample():
    result = _run(_planted_model(), _tokens(4), sample_index=2)
    (figure,) = result.figures
    assert figure.png.startswith(b"\x89PNG") and "sample 2" in figure.caption


def test_model_without_attention_is_skipped_with_the_reason():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    result = _run(model, np.zeros((4, 3), "float32"))
    assert "MultiHeadAttention" in result.data["skipped"]
    assert [f.label for f in result.findings] == ["skipped"]


def test_image_model_with_patch_tokens_gets_a_rollout_figure():
    inputs = keras.Input((8, 8, 1))
    patches = keras.layers.Reshape((16, 4))(keras.layers.Conv2D(4, 2, strides=2)(inputs))
    attended = keras.layers.MultiHeadAttention(2, 2, name="mha")(patches, patches)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(attended)))
    images = np.random.default_rng(1).random((3, 8, 8, 1)).astype("float32")
    titles = [f.title for f in _run(model, images).figures]
    assert titles == ["Attention heads, one sample", "Attention rollout"]


def test_plugin_is_registered_and_runs_through_analyze():
    result = keraslens.analyze(_planted_model(), _tokens(), plugins=["attention"], minimal=True)
    assert result.to_dict()["plugins"]["attention"]["layers"]["mha"]["sink_heads"] == [1]
