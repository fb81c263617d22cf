"""activation-stats summarises each layer's outputs exactly as NumPy does on the raw values."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import keraslens


def _model() -> keras.Model:
    """Input (6, 6, 3) -> `conv` relu (4) -> `pool` -> `dense` tanh (8) -> `head` (3)."""
    inputs = keras.Input((6, 6, 3))
    conv = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(conv)
    hidden = keras.layers.Dense(8, activation="tanh", name="dense")(pooled)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(hidden))


class Log(keras.layers.Layer):
    """The natural logarithm: NaN below zero, -Inf at zero."""

    def call(self, x):
        return keras.ops.log(x)


def _log_model() -> keras.Model:
    inputs = keras.Input((4,))
    return keras.Model(inputs, Log(name="log")(inputs))


BATCH = 100


def _stats(model: keras.Model, x: np.ndarray, minimal: bool = True) -> keraslens.AnalysisResult:
    return keraslens.analyze(
        model, x, plugins=["activation-stats"], batch_size=BATCH, minimal=minimal
    )


def _histogram_samples(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """The samples the capture histogram sees: the first `histogram_samples` of each batch."""
    per_batch = keraslens.Lens(model).histogram_samples or BATCH
    return x[np.arange(len(x)) % BATCH < per_batch]


def _outputs(model: keras.Model, name: str, x: np.ndarray) -> np.ndarray:
    """The layer's outputs, compiled as the capture runs them (eager kernels round otherwise)."""
    probe = keras.Model(model.input, model.get_layer(name).output)
    return tf.function(probe)(x).numpy()


@pytest.fixture(scope="module")
def conv_run():
    model = _model()
    x = np.random.default_rng(3).normal(size=(300, 6, 6, 3)).astype("float32")
    entry = _stats(model, x).to_dict()["plugins"]["activation-stats"]
    return model, x, entry


@pytest.mark.parametrize("name", ["conv", "pool", "dense", "head"])
def test_layer_statistics_match_numpy_on_the_raw_outputs(conv_run, name):
    model, x, entry = conv_run

    layer = entry["layers"][name]

    raw = _outputs(model, name, x).astype(np.float64)
    assert layer["outputs"] == raw.size
    assert layer["unit_count"] == raw.shape[-1]
    assert layer["mean"] == pytest.approx(raw.mean(), rel=1e-5, abs=1e-7)
    assert layer["std"] == pytest.approx(raw.std(), rel=1e-5)
    assert (layer["min"], layer["max"]) == (raw.min(), raw.max())
    assert layer["firing_rate"] == np.mean(raw > 0)
    assert (layer["nan_count"], layer["inf_count"]) == (0, 0)


@pytest.mark.parametrize("name", ["conv", "pool"])
def test_sparsity_of_a_never_negative_layer_is_its_exact_fraction_of_zero_outputs(conv_run, name):
    model, x, entry = conv_run

    raw = _outputs(model, name, x)

    assert entry["layers"][name]["sparsity"] == np.mean(raw == 0)
    assert entry["layers"]["conv"]["sparsity"] > 0.2


def test_sparsity_of_a_layer_with_negative_outputs_is_read_from_the_histogram():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(4, name="linear")(inputs))
    x = np.random.default_rng(6).normal(size=(300, 4)).astype("float32")
    x[::3] = 0.0  # a zero input gives a zero output (the bias is zero)

    layer = _stats(model, x).to_dict()["plugins"]["activation-stats"]["layers"]["linear"]

    raw = _outputs(model, "linear", _histogram_samples(model, x))
    assert raw.min() < 0
    assert layer["sparsity"] == np.mean(raw == 0)
    assert 0.3 < layer["sparsity"] < 0.4


@pytest.mark.parametrize("name", ["conv", "dense"])
def test_histogram_counts_every_sampled_output_in_its_bin(conv_run, name):
    model, x, entry = conv_run

    histogram = entry["layers"][name]["histogram"]

    raw = _outputs(model, name, _histogram_samples(model, x)).ravel()
    low, high, counts = (np.array(histogram[k]) for k in ("low", "high", "counts"))
    # Bins below zero hold (low, high], the others [low, high): as float32 buckets do.
    negative = np.signbit(raw)
    expected = [
        np.sum(negative & (raw > lo) & (raw <= hi))
        if hi <= 0 and lo < 0
        else np.sum(~negative & (raw >= lo) & (raw < hi))
        for lo, hi in zip(low, high, strict=True)
    ]
    assert counts.tolist() == expected
    assert counts.sum() == raw.size
    assert len(counts) <= 64
    assert np.all(low < high)


def test_nan_and_inf_outputs_are_counted_and_reported_as_an_error():
    x = np.random.default_rng(4).normal(size=(200, 4)).astype("float32")
    x[:20, 1] = 0.0  # log(0) = -inf

    entry = _stats(_log_model(), x).to_dict()["plugins"]["activation-stats"]

    raw = _outputs(_log_model(), "log", x)
    finite = raw[np.isfinite(raw)].astype(np.float64)
    layer = entry["layers"]["log"]
    assert (layer["nan_count"], layer["inf_count"]) == (np.isnan(raw).sum(), np.isinf(raw).sum())
    assert layer["inf_count"] == 20
    assert layer["mean"] == pytest.approx(finite.mean(), rel=1e-5)
    assert layer["std"] == pytest.approx(finite.std(), rel=1e-5)
    finding = next(f for f in entry["findings"] if f["layer"] == "log")
    assert finding["severity"] == "error"
    assert finding["label"] == "non-finite outputs"
    assert finding["value"] == np.sum(~np.isfinite(raw))
    assert finding["units"] == np.flatnonzero(~np.isfinite(raw).all(axis=0)).tolist()


def test_unit_heatmap_of_a_wide_layer_is_capped_and_says_so():
    inputs = keras.Input((8,))
    wide = keras.layers.Dense(100, activation="relu", name="wide")(inputs)
    model = keras.Model(inputs, [wide, keras.layers.Dense(4, name="head")(inputs)])
    x = np.random.default_rng(5).normal(size=(64, 8)).astype("float32")

    figures = _stats(model, x, minimal=False).plugins["activation-stats"].result.figures

    by_layer = {figure.layer: figure for figure in figures}
    assert "Showing 64 of 100 units" in by_layer["wide"].caption
    assert "Showing" not in by_layer["head"].caption
    assert by_layer[None].title == "Activation statistics per layer"


def test_per_layer_figures_go_to_the_layers_with_the_most_zeros():
    from plugins.activation_stats import LAYER_FIGURES

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    x = inputs
    for i in range(LAYER_FIGURES + 3):
        x = keras.layers.Dense(8, name=f"linear{i}")(x)
    # Shifted down, many of its outputs are zeros after the ReLU; the linear layers have none.
    sparse = keras.layers.Dense(8, activation="relu", bias_initializer="zeros", name="sparse")
    model = keras.Model(inputs, sparse(keras.layers.Lambda(lambda t: t - 1.0)(x)))
    data = np.random.default_rng(6).normal(size=(64, 8)).astype("float32")

    figures = _stats(model, data, minimal=False).plugins["activation-stats"].result.figures

    drawn = [figure.layer for figure in figures if figure.layer is not None]
    assert len(drawn) == LAYER_FIGURES and "sparse" in drawn
    assert f"the {LAYER_FIGURES} of" in figures[0].caption
