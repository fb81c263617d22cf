"""`Lens.capture` against an independent oracle.

The oracle runs `keras.Model(inputs, layer.output)` — a model of its own over the same
layer objects, with no interception — and computes every statistic with NumPy in float64.
The oracle's model runs compiled, as the capture does: TensorFlow's eager kernels can round
a fused activation differently by an ulp.
"""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keraslens import KeraslensError, Lens
from keraslens.capture import histogram_edges
from keraslens.capture.stats import COUNT_FIELDS

N = 40
BATCH = 20
EPSILON = 0.01

COUNTS = COUNT_FIELDS
MOMENTS = ("mean", "var", "min", "max")
RATES = ("firing_rate", "sample_firing_rate", "lower_rate", "upper_rate")


# ---------------------------------------------------------------- the oracle


def outputs_of(inputs: list, tensor, x) -> np.ndarray:
    """What `tensor` holds when `x` is fed to `inputs`, through a plain compiled Keras model.

    Compiled as `predict` and the capture run it: TensorFlow's graph kernels (fused
    MatMul+BiasAdd+Tanh, say) can round differently from eager ones by an ulp, which is
    enough to move a value across a histogram bucket's edge.
    """
    inputs = inputs[0] if len(inputs) == 1 else inputs
    probe = keras.Model(inputs, tensor)
    return keras.ops.convert_to_numpy(tf.function(probe)(x, training=False))


def numpy_histogram(values: np.ndarray) -> np.ndarray:
    """Counts of finite values per bucket of `histogram_edges()`, computed by `np.histogram`.

    Buckets left of zero are right-closed, `(-v(m+1), -v(m)]`, and a value's side is its
    sign bit. Mirroring the negative values onto the left-closed positive buckets
    `[v(m), v(m+1))` lets `np.histogram`'s own rule place them exactly.
    """
    values = np.asarray(values, np.float32).ravel()
    values = values[np.isfinite(values)]
    edges = histogram_edges()
    negative = np.signbit(values)
    positive_side = np.histogram(values[~negative], bins=edges)[0]
    negative_side = np.histogram(-values[negative], bins=edges)[0][::-1]
    return positive_side + negative_side


def numpy_stats(acts: np.ndarray, bounds=None, epsilon: float = EPSILON) -> dict:
    """Every `LayerStats` statistic of `acts` (samples first, units last), in float64."""
    acts = np.asarray(acts)
    units = acts.shape[-1]
    per_sample = acts.astype(np.float64).reshape(len(acts), -1, units)
    flat = per_sample.reshape(-1, units)
    finite = np.where(np.isfinite(flat), flat, np.nan)
    positive = flat > 0
    if bounds is None:
        lower = upper = np.zeros(units, np.int64)
    else:
        lower = (flat <= bounds[0] + epsilon).sum(0)
        upper = (flat >= bounds[1] - epsilon).sum(0)
    return {
        "samples": len(acts),
        "units": units,
        "shape": acts.shape[1:],
        "count": np.full(units, flat.shape[0]),
        "finite_count": np.isfinite(flat).sum(0),
        "positive_count": positive.sum(0),
        "sample_positive_count": (per_sample > 0).any(1).sum(0),
        "nan_count": np.isnan(flat).sum(0),
        "inf_count": np.isinf(flat).sum(0),
        "lower_count": lower,
        "upper_count": upper,
        "mean": np.nanmean(finite, 0),
        "var": np.nanvar(finite, 0),
        "min": np.nanmin(finite, 0),
        "max": np.nanmax(finite, 0),
        "firing_rate": positive.mean(0),
        "sample_firing_rate": (per_sample > 0).any(1).mean(0),
        "lower_rate": lower / flat.shape[0],
        "upper_rate": upper / flat.shape[0],
        "hist_counts": numpy_histogram(acts),
    }


def assert_matches_numpy(stats, acts: np.ndarray, bounds=None, epsilon: float = EPSILON) -> None:
    expected = numpy_stats(acts, bounds, epsilon)
    assert (stats.samples, stats.units) == (expected["samples"], expected["units"])
    assert stats.shape == expected["shape"]
    for name in (*COUNTS, "hist_counts"):
        np.testing.assert_array_equal(getattr(stats, name), expected[name], err_msg=name)
    for name in (*MOMENTS, *RATES):
        np.testing.assert_allclose(
            getattr(stats, name), expected[name], rtol=1e-5, atol=1e-5, err_msg=name
        )


def normal_data(rng, n: int = N, features: int = 6, scale: float = 2.0) -> np.ndarray:
    return (rng.normal(size=(n, features)) * scale).astype(np.float32)


def linear_model(features: int = 4) -> keras.Model:
    """Input -> `linear` (an identity activation), so captured values are exactly the data."""
    x = keras.Input((features,))
    return keras.Model(x, keras.layers.Activation("linear", name="linear")(x))


SEQUENTIAL_BOUNDS = {"dense_relu": None, "dense_tanh": (-1.0, 1.0), "logits": None}


def assert_sequential_matches_numpy(stats, model, x) -> None:
    assert list(stats) == list(SEQUENTIAL_BOUNDS)
    for name, bounds in SEQUENTIAL_BOUNDS.items():
        acts = outputs_of(model.inputs, model.get_layer(name).output, x)
        assert_matches_numpy(stats[name], acts, bounds)


# ---------------------------------------------------------------- model types


def test_sequential_statistics_match_numpy(make_sequential, rng):
    model = make_sequential()
    x = normal_data(rng)
    assert_sequential_matches_numpy(Lens(model).capture(x, batch_size=BATCH), model, x)


def test_two_input_two_output_statistics_match_numpy(make_two_in_two_out, rng):
    model = make_two_in_two_out()
    x = (normal_data(rng), normal_data(rng, features=5))
    stats = Lens(model).capture(x, batch_size=BATCH)
    bounds = {
        "dense_wide": None,
        "dense_narrow": None,
        "add": None,
        "out_linear": None,
        "out_sigmoid": (0.0, 1.0),
    }
    assert list(stats) == list(bounds)
    for name, layer_bounds in bounds.items():
        acts = outputs_of(model.inputs, model.get_layer(name).output, x)
        assert_matches_numpy(stats[name], acts, layer_bounds)


def test_nested_model_layers_are_captured_under_their_path(make_nested, rng):
    model = make_nested()
    x = rng.normal(size=(N, 6, 6, 2)).astype(np.float32)
    stats = Lens(model).capture(x, batch_size=BATCH)
    assert list(stats) == ["pre", "encoder/conv1", "encoder/conv2", "pool", "head"]
    encoder = model.get_layer("encoder")
    encoder_input = outputs_of(model.inputs, model.get_layer("pre").output, x)
    for name in ("conv1", "conv2"):
        acts = outputs_of(encoder.inputs, encoder.get_layer(name).output, encoder_input)
        assert_matches_numpy(stats[f"encoder/{name}"], acts)
    for name in ("pre", "pool", "head"):
        assert_matches_numpy(stats[name], outputs_of(model.inputs, model.get_layer(name).output, x))


def test_an_empty_batch_in_a_dataset_adds_nothing(make_nested, rng):
    # A fused Conv2D+ReLU fails on zero samples under oneDNN (TensorFlow 2.21).
    model = make_nested()
    x = rng.normal(size=(N, 6, 6, 2)).astype(np.float32)
    empty = tf.data.Dataset.from_tensors(x[:0])
    data = empty.concatenate(tf.data.Dataset.from_tensor_slices(x).batch(BATCH)).concatenate(empty)
    stats = Lens(model).capture(data)
    encoder = model.get_layer("encoder")
    encoder_input = outputs_of(model.inputs, model.get_layer("pre").output, x)
    acts = outputs_of(encoder.inputs, encoder.get_layer("conv1").output, encoder_input)
    assert_matches_numpy(stats["encoder/conv1"], acts)


class _NoUnits(keras.layers.Layer):
    def call(self, x):
        return x[:, :0]


def test_a_layer_with_zero_units_is_left_out(rng):
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(3, name="dense")(inputs)
    model = keras.Model(inputs, [_NoUnits(name="empty")(inputs), dense])
    x = normal_data(rng, features=4)
    stats = Lens(model).capture(x, batch_size=BATCH)
    assert list(stats) == ["dense"]
    assert_matches_numpy(stats["dense"], outputs_of(model.inputs, dense, x))


def test_shared_layer_is_captured_at_each_call_site(make_shared, rng):
    model = make_shared()
    x = normal_data(rng, features=4)
    stats = Lens(model).capture(x, batch_size=BATCH)
    assert list(stats) == ["shared@0", "shared@1", "act"]
    first_call = outputs_of(model.inputs, model.get_layer("act").input, x)
    second_call = outputs_of(model.inputs, model.outputs[0], x)
    assert_matches_numpy(stats["shared@0"], first_call)
    assert_matches_numpy(stats["shared@1"], second_call)


def subclassed_rebuild(model) -> tuple[list, list]:
    """`TinySubclassed.call` as a functional graph over the very same layer objects."""
    x = keras.Input((6,))
    d1 = model.d1(x)
    d2 = model.d2(d1 * 2.0)
    return [x], [d1, d2]


def test_subclassed_model_statistics_match_a_functional_rebuild(make_subclassed, rng):
    model = make_subclassed()
    x = normal_data(rng)
    model(x[:1])
    stats = Lens(model).capture(x, batch_size=BATCH)
    inputs, (d1, d2) = subclassed_rebuild(model)
    assert list(stats) == ["d1", "d2"]
    assert_matches_numpy(stats["d1"], outputs_of(inputs, d1, x))
    assert_matches_numpy(stats["d2"], outputs_of(inputs, d2, x))


def test_never_built_subclassed_model_is_built_from_the_first_batch(make_subclassed, rng):
    model = make_subclassed()
    x = normal_data(rng)
    stats = Lens(model).capture(x, batch_size=BATCH)
    assert model.built
    inputs, (d1, d2) = subclassed_rebuild(model)
    assert_matches_numpy(stats["d1"], outputs_of(inputs, d1, x))
    assert_matches_numpy(stats["d2"], outputs_of(inputs, d2, x))


# ---------------------------------------------------------------- data


def nan_inf_data(rng) -> np.ndarray:
    x = normal_data(rng, features=4)
    x[3, 0] = x[25, 0] = np.nan
    x[7, 1] = np.inf
    x[30, 2] = -np.inf
    return x


def test_nan_and_inf_are_counted_per_unit(rng):
    stats = Lens(linear_model()).capture(nan_inf_data(rng), batch_size=BATCH)["linear"]
    np.testing.assert_array_equal(stats.nan_count, [2, 0, 0, 0])
    np.testing.assert_array_equal(stats.inf_count, [0, 1, 1, 0])
    np.testing.assert_array_equal(stats.finite_count, [N - 2, N - 1, N - 1, N])
    np.testing.assert_array_equal(stats.count, [N] * 4)


def test_moments_ignore_nan_and_inf(rng):
    x = nan_inf_data(rng)
    stats = Lens(linear_model()).capture(x, batch_size=BATCH)["linear"]
    assert_matches_numpy(stats, x)


def test_nan_and_inf_propagated_through_a_dense_layer_match_numpy(rng):
    inputs = keras.Input((4,))
    # Linear: oneDNN's fused MatMul+ReLU turns NaN into 0, so a ReLU would hide them.
    dense = keras.layers.Dense(4, name="dense")(inputs)
    model = keras.Model(inputs, dense)
    x = nan_inf_data(rng)
    stats = Lens(model).capture(x, batch_size=BATCH)["dense"]
    assert stats.nan_count.sum() > 0 and stats.inf_count.sum() > 0
    assert_matches_numpy(stats, outputs_of(model.inputs, dense, x))


def test_batch_size_that_does_not_divide_the_sample_count(make_sequential, rng):
    model = make_sequential()
    x = normal_data(rng, n=50)
    assert_sequential_matches_numpy(Lens(model).capture(x, batch_size=BATCH), model, x)


def test_batched_dataset(make_sequential, rng):
    model = make_sequential()
    x = normal_data(rng)
    data = tf.data.Dataset.from_tensor_slices(x).batch(BATCH)
    assert_sequential_matches_numpy(Lens(model).capture(data), model, x)


class _Repeat(keras.layers.Layer):
    """Applies its Dense three times in a graph loop (as a custom recurrent block would)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = keras.layers.Dense(4, activation="tanh", name="inner")

    def call(self, x):
        return keras.ops.fori_loop(0, 3, lambda i, h: self.inner(h), x)


def test_layer_called_inside_a_graph_loop_is_left_out(rng):
    x_in = keras.Input((4,))
    first = keras.layers.Dense(4, name="first")(x_in)
    model = keras.Model(x_in, _Repeat(name="repeat")(first))
    x = normal_data(rng, features=4)
    stats = Lens(model).capture(x, batch_size=BATCH)
    assert "first" in stats and not any(key.startswith("repeat/") for key in stats)
    assert_matches_numpy(stats["first"], outputs_of(model.inputs, first, x))


def test_capture_leaves_tf_data_autotuning_off_unless_the_dataset_chose(make_sequential, rng):
    # Deleting an autotuned iterator waits for the autotuner's next wake-up (up to the
    # time the pass has already taken); a dataset's own choice is kept.
    from keraslens.capture.data import without_autotune

    data = tf.data.Dataset.from_tensor_slices(normal_data(rng)).batch(BATCH)
    assert without_autotune(data).options().autotune.enabled is False
    chosen = tf.data.Options()
    chosen.autotune.enabled = True
    assert without_autotune(data.with_options(chosen)).options().autotune.enabled is True


def test_masks_flow_through_captured_layers(rng):
    # Capture makes each recorded output wait on the previous summary; the Keras mask
    # an Embedding(mask_zero=True) attaches must survive, or the LSTM would read padding.
    tokens = keras.Input((7,), dtype="int32")
    embedded = keras.layers.Embedding(9, 4, mask_zero=True, name="embed")(tokens)
    hidden = keras.layers.LSTM(3, return_sequences=True, name="lstm")(embedded)
    both = keras.layers.Bidirectional(keras.layers.GRU(2, return_sequences=True), name="bidi")(
        hidden
    )
    model = keras.Model(tokens, keras.layers.Dense(2, name="head")(both))
    x = rng.integers(1, 9, size=(40, 7)).astype(np.int32)
    x[:, 4:] = 0  # padding: masked steps repeat the last state
    stats = Lens(model).capture(x, batch_size=16)
    # Recurrent layers are captured whole: their cells run once per step, in a loop.
    assert list(stats) == ["embed", "lstm", "bidi", "head"]
    for name in stats:
        acts = outputs_of(model.inputs, model.get_layer(name).output, x.astype(np.float32))
        assert_matches_numpy(stats[name], acts)


def test_unbatched_dataset_is_batched_by_the_lens(make_sequential, rng):
    model = make_sequential()
    x = normal_data(rng)
    data = tf.data.Dataset.from_tensor_slices(x)
    assert_sequential_matches_numpy(Lens(model).capture(data, batch_size=BATCH), model, x)


def test_unbatched_dataset_on_a_built_subclassed_model(make_subclassed, rng):
    model = make_subclassed()
    x = normal_data(rng)
    model(x[:1])
    data = tf.data.Dataset.from_tensor_slices(x)
    stats = Lens(model).capture(data, batch_size=BATCH)
    inputs, (d1, _) = subclassed_rebuild(model)
    assert_matches_numpy(stats["d1"], outputs_of(inputs, d1, x))


def test_dataset_of_x_y_pairs_uses_x(make_sequential, rng):
    model = make_sequential()
    x = normal_data(rng)
    data = tf.data.Dataset.from_tensor_slices((x, np.arange(N))).batch(BATCH)
    assert_sequential_matches_numpy(Lens(model).capture(data), model, x)


def test_dict_of_arrays_feeds_inputs_by_name(make_two_in_two_out, rng):
    model = make_two_in_two_out()
    wide, narrow = normal_data(rng), normal_data(rng, features=5)
    stats = Lens(model).capture({"narrow": narrow, "wide": wide}, batch_size=BATCH)
    for name in ("dense_wide", "dense_narrow"):
        acts = outputs_of(model.inputs, model.get_layer(name).output, (wide, narrow))
        assert_matches_numpy(stats[name], acts)


def test_dataset_of_dict_inputs_and_labels(make_two_in_two_out, rng):
    model = make_two_in_two_out()
    wide, narrow = normal_data(rng), normal_data(rng, features=5)
    inputs = {"narrow": narrow, "wide": wide}
    data = tf.data.Dataset.from_tensor_slices((inputs, np.arange(N))).batch(BATCH)
    stats = Lens(model).capture(data)
    acts = outputs_of(model.inputs, model.get_layer("out_sigmoid").output, (wide, narrow))
    assert_matches_numpy(stats["out_sigmoid"], acts, (0.0, 1.0))


class ArrayBatches(keras.utils.PyDataset):
    """A PyDataset yielding `(x, y)` batches of an array."""

    def __init__(self, x: np.ndarray, batch_size: int) -> None:
        super().__init__()
        self.x, self.batch_size = x, batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, index: int):
        batch = self.x[index * self.batch_size : (index + 1) * self.batch_size]
        return batch, np.zeros(len(batch))


def test_pydataset(make_sequential, rng):
    model = make_sequential()
    x = normal_data(rng)
    assert_sequential_matches_numpy(Lens(model).capture(ArrayBatches(x, BATCH)), model, x)


def test_progress_reports_samples_done_and_total(make_sequential, rng):
    calls = []
    Lens(make_sequential()).capture(
        normal_data(rng), batch_size=BATCH, progress=lambda done, total: calls.append((done, total))
    )
    assert calls == [(20, 40), (40, 40)]


# ---------------------------------------------------------------- bounds


BOUNDED_LAYERS = {
    "tanh": (lambda: keras.layers.Dense(4, activation="tanh", name="bounded"), (-1.0, 1.0)),
    "sigmoid": (lambda: keras.layers.Dense(4, activation="sigmoid", name="bounded"), (0.0, 1.0)),
    "relu6": (lambda: keras.layers.Dense(4, activation="relu6", name="bounded"), (0.0, 6.0)),
    "relu_max_value": (lambda: keras.layers.ReLU(max_value=2.0, name="bounded"), (0.0, 2.0)),
}


def bounded_model(kind: str) -> keras.Model:
    x = keras.Input((6,))
    pre = keras.layers.Dense(4, name="pre")(x)
    return keras.Model(x, BOUNDED_LAYERS[kind][0]()(pre))


@pytest.mark.parametrize("kind", list(BOUNDED_LAYERS))
def test_bound_counts_match_numpy(kind, rng):
    model = bounded_model(kind)
    x = normal_data(rng, scale=4.0)
    stats = Lens(model, layers="bounded").capture(x, batch_size=BATCH)["bounded"]
    bounds = BOUNDED_LAYERS[kind][1]
    acts = outputs_of(model.inputs, model.outputs[0], x)
    expected = numpy_stats(acts, bounds)
    assert expected["lower_count"].sum() > 0 and expected["upper_count"].sum() > 0
    assert stats.bounds == bounds
    assert_matches_numpy(stats, acts, bounds)


def test_epsilon_sets_the_distance_from_the_bound(rng):
    model = bounded_model("tanh")
    x = normal_data(rng, scale=4.0)
    stats = Lens(model, layers="bounded", epsilon=0.25).capture(x, batch_size=BATCH)["bounded"]
    acts = outputs_of(model.inputs, model.outputs[0], x)
    assert_matches_numpy(stats, acts, (-1.0, 1.0), epsilon=0.25)


def test_unbounded_activation_has_no_bound_counts(make_sequential, rng):
    stats = Lens(make_sequential(), layers="dense_relu").capture(normal_data(rng), BATCH)
    relu = stats["dense_relu"]
    assert relu.bounds is None
    assert relu.lower_count.sum() == relu.upper_count.sum() == 0


# ---------------------------------------------------------------- histogram


def test_histogram_edges_are_four_per_power_of_two():
    edges = histogram_edges()
    assert len(edges) == 2049 and edges[1024] == 0.0
    for exponent in range(-126, 128):
        for quarter in range(4):
            bucket = 4 * (exponent + 127) + quarter
            value = 2.0**exponent * (1 + quarter / 4)
            assert edges[1024 + bucket] == value
            assert edges[1024 - bucket] == -value


def test_negative_values_fall_in_right_closed_buckets():
    x = np.full((N, 4), -1.0, np.float32)
    stats = Lens(linear_model()).capture(x, batch_size=BATCH)["linear"]
    (bucket,) = np.flatnonzero(stats.hist_counts)
    edges = histogram_edges()
    assert edges[bucket] < -1.0 == edges[bucket + 1]
    assert stats.hist_counts[bucket] == x.size


def test_histogram_counts_match_numpy_for_planted_and_random_values(rng):
    planted = [-1.0, -0.75, -0.0, 0.0, 0.5, 1.25, 1e-40, -1e-40, 3e38, -3e38, 6.0, -6.0]
    x = normal_data(rng, features=4, scale=10.0)
    x.ravel()[: len(planted)] = planted
    x[5, 1], x[9, 2], x[11, 3] = np.nan, np.inf, -np.inf
    stats = Lens(linear_model()).capture(x, batch_size=BATCH)["linear"]
    np.testing.assert_array_equal(stats.hist_counts, numpy_histogram(x))
    assert stats.hist_counts.sum() == x.size - 3


def test_histogram_samples_limits_the_histogram_to_the_first_samples_of_each_batch(rng):
    x = normal_data(rng, features=4)
    lens = Lens(linear_model(), histogram_samples=5)
    stats = lens.capture(x, batch_size=BATCH)["linear"]
    np.testing.assert_array_equal(stats.hist_counts, numpy_histogram(np.r_[x[:5], x[20:25]]))
    np.testing.assert_array_equal(stats.count, [N] * 4)


# ---------------------------------------------------------------- layer selection


@pytest.mark.parametrize(
    ("selector", "paths"),
    [
        ("conv1", ["encoder/conv1"]),
        ("encoder/conv2", ["encoder/conv2"]),
        ("encoder/*", ["encoder/conv1", "encoder/conv2"]),
        ("conv*", ["encoder/conv1", "encoder/conv2"]),
        (keras.layers.Conv2D, ["pre", "encoder/conv1", "encoder/conv2"]),
        (lambda layer: getattr(layer, "kernel_size", None) == (1, 1), ["pre"]),
        (["head", "pre"], ["pre", "head"]),
        (None, ["pre", "encoder/conv1", "encoder/conv2", "pool", "head"]),
    ],
    ids=["name", "path", "path-glob", "name-glob", "type", "predicate", "list", "default"],
)
def test_layers_are_selected_by(selector, paths, make_nested):
    assert Lens(make_nested(), layers=selector).paths == paths


def test_capture_returns_statistics_of_the_selected_layers_only(make_sequential, rng):
    stats = Lens(make_sequential(), layers=["logits", "dense_relu"]).capture(
        normal_data(rng), BATCH
    )
    assert list(stats) == ["dense_relu", "logits"]


def test_unknown_layer_name_error_lists_available_layers(make_nested):
    with pytest.raises(KeraslensError, match="No layer matches 'conv9'") as raised:
        Lens(make_nested(), layers="conv9")
    assert isinstance(raised.value, ValueError)
    for path in ("pre", "encoder", "encoder/conv1", "encoder/conv2", "pool", "head"):
        assert path in str(raised.value)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "data",
    [np.zeros((0, 6), np.float32), tf.data.Dataset.from_tensor_slices(np.zeros((0, 6))).batch(4)],
    ids=["array", "dataset"],
)
def test_empty_data_raises(data, make_sequential):
    with pytest.raises(KeraslensError, match="empty"):
        Lens(make_sequential()).capture(data)


def test_wrong_input_shape_error_names_the_expected_shape(make_sequential, rng):
    with pytest.raises(KeraslensError, match=r"expects shape \(None, 6\).*\(None, 5\)"):
        Lens(make_sequential()).capture(normal_data(rng, features=5))


def test_a_dict_without_an_input_name_is_an_error_naming_the_missing_key(make_two_in_two_out, rng):
    data = {"wide": normal_data(rng), "other": normal_data(rng, features=5)}
    lens = Lens(make_two_in_two_out())
    for run in (lens.capture, lens.activations):
        with pytest.raises(KeraslensError, match=r"no key 'narrow'.*\['wide', 'narrow'\]"):
            run(data)


@pytest.mark.parametrize(
    ("layers", "message"),
    [([], "selection is empty"), (3, "not a name, glob"), ("rank1", "units axis")],
    ids=["empty-list", "int", "rank-1-output"],
)
def test_a_selection_found_wanting_while_tracing_is_a_keraslens_error(layers, message, rng):
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(4, name="dense")(inputs)
    total = keras.layers.Lambda(lambda t: keras.ops.sum(t, axis=-1), name="rank1")(hidden)
    with pytest.raises(KeraslensError, match=message):
        Lens(keras.Model(inputs, total), layers=layers).capture(normal_data(rng))


def test_activations_of_empty_data_raise(make_sequential):
    with pytest.raises(KeraslensError, match="empty"):
        Lens(make_sequential()).activations(np.zeros((0, 6), np.float32))


def test_string_data_raises(make_sequential):
    with pytest.raises(KeraslensError, match="dtype"):
        Lens(make_sequential()).capture(np.full((N, 6), "a"))


def test_a_non_model_is_rejected():
    with pytest.raises(KeraslensError, match="Keras model"):
        Lens("model.keras")


# ---------------------------------------------------------------- numerics


def test_variance_is_accurate_for_a_large_mean_and_unit_spread(rng):
    x = (1e4 + rng.normal(size=(4096, 4))).astype(np.float32)
    stats = Lens(linear_model()).capture(x, batch_size=4096)["linear"]
    np.testing.assert_allclose(stats.var, x.astype(np.float64).var(0), rtol=1e-3)
    np.testing.assert_allclose(stats.mean, x.astype(np.float64).mean(0), rtol=1e-7)


def test_variance_is_accurate_when_a_batch_starts_with_nan(rng):
    # A shift of 0 instead of a unit's own value cancels 1e8 against 1e-4 in float32.
    x = (1e4 + 0.01 * rng.normal(size=(BATCH, 4))).astype(np.float32)
    x[0, :] = np.nan
    stats = Lens(linear_model()).capture(x, batch_size=BATCH)["linear"]
    np.testing.assert_allclose(stats.var, np.nanvar(x.astype(np.float64), 0), rtol=1e-2)
    np.testing.assert_array_equal(stats.nan_count, [1] * 4)


def test_variance_of_outputs_whose_squares_overflow_float32_is_exact(rng):
    x = (1e30 * rng.normal(size=(N, 4))).astype(np.float32)
    stats = Lens(linear_model()).capture(x, batch_size=BATCH)["linear"]
    np.testing.assert_allclose(stats.var, x.astype(np.float64).var(0), rtol=1e-6)
    np.testing.assert_allclose(stats.mean, x.astype(np.float64).mean(0), rtol=1e-6)
    assert stats.nan_count.sum() == stats.inf_count.sum() == 0


def test_integer_inputs_keep_the_dtype_the_model_declares():
    # 2**24 + 1 has no float32: cast to float, 16777217 % 7 would read 16777216 % 7.
    inputs = keras.Input((1,), dtype="int32")
    mod = keras.layers.Lambda(lambda t: keras.ops.cast(t % 7, "float32"), name="mod")(inputs)
    model = keras.Model(inputs, mod)
    x = np.array([[16777217], [16777219], [123456789]], np.int32)
    expected = (x.astype(np.int64) % 7).astype(np.float64)
    lens = Lens(model)
    np.testing.assert_array_equal(lens.capture(x)["mod"].mean, expected.mean(0))
    np.testing.assert_array_equal(lens.activations(x)["mod"], expected)


# ---------------------------------------------------------------- the model is left as it was


def all_layers(model) -> list:
    found = []
    for layer in model.layers:
        found.append(layer)
        if isinstance(layer, keras.Model):
            found.extend(all_layers(layer))
    return found


def test_capture_restores_every_layer_call(make_nested, rng):
    model = make_nested()
    Lens(model).capture(rng.normal(size=(N, 6, 6, 2)).astype(np.float32), batch_size=BATCH)
    assert [layer.name for layer in all_layers(model) if "call" in vars(layer)] == []


def test_capture_leaves_weights_unchanged(make_sequential, rng):
    model = make_sequential()
    before = [w.copy() for w in model.get_weights()]
    Lens(model).capture(normal_data(rng), batch_size=BATCH)
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)


def test_capture_leaves_model_outputs_unchanged(make_sequential, rng):
    model = make_sequential()
    x = normal_data(rng)
    before = keras.ops.convert_to_numpy(model(x))
    Lens(model).capture(x, batch_size=BATCH)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(x)), before)


def test_an_instance_level_call_override_is_kept(make_sequential, rng):
    model = make_sequential()
    layer = model.get_layer("dense_relu")
    override = layer.call
    object.__setattr__(layer, "call", override)
    Lens(model).capture(normal_data(rng), batch_size=BATCH)
    assert vars(layer)["call"] is override


class Exploding(keras.layers.Layer):
    """Passes its input through, or raises once `armed`."""

    armed = False

    def call(self, x):
        if self.armed:
            raise RuntimeError("boom")
        return x


def test_layer_calls_are_restored_when_the_forward_pass_raises(rng):
    x = keras.Input((6,))
    model = keras.Model(x, Exploding(name="exploding")(keras.layers.Dense(4, name="dense")(x)))
    model.get_layer("exploding").armed = True
    with pytest.raises(KeraslensError, match="could not run on inputs .*: boom") as raised:
        Lens(model).capture(normal_data(rng), batch_size=BATCH)
    assert isinstance(raised.value.__cause__, RuntimeError)
    assert [layer.name for layer in model.layers if "call" in vars(layer)] == []


# ---------------------------------------------------------------- other views of the same data


def test_activations_are_the_layer_outputs(make_sequential, rng):
    model = make_sequential()
    x = normal_data(rng, n=5)
    activations = Lens(model).activations(x)
    for name in SEQUENTIAL_BOUNDS:
        expected = outputs_of(model.inputs, model.get_layer(name).output, x)
        np.testing.assert_allclose(activations[name], expected, rtol=1e-6, atol=1e-6)


def test_to_dict_is_json_with_non_finite_values_as_null(rng):
    x = nan_inf_data(rng)
    x[:, 3] = np.nan
    stats = Lens(linear_model()).capture(x, batch_size=BATCH)["linear"]
    as_json = json.loads(json.dumps(stats.to_dict()))
    assert as_json["nan_count"] == [2, 0, 0, N]
    assert as_json["mean"][3] is None and as_json["var"][3] is None
    np.testing.assert_allclose(as_json["mean"][:3], numpy_stats(x[:, :3])["mean"], rtol=1e-5)


# ---------------------------------------------------------------- inputs as Keras takes them


def test_dict_inputs_keyed_by_the_models_keys_or_by_input_names(rng):
    wide, narrow = keras.Input((4,), name="x_wide"), keras.Input((3,), name="x_narrow")
    joined = keras.layers.Concatenate()([wide, narrow])
    dense = keras.layers.Dense(5, name="dense")(joined)
    model = keras.Model({"wide": wide, "narrow": narrow}, dense)
    arrays = {"wide": normal_data(rng, features=4), "narrow": normal_data(rng, features=3)}
    expected = keras.ops.convert_to_numpy(tf.function(model)(arrays))
    by_names = {"x_wide": arrays["wide"], "x_narrow": arrays["narrow"]}
    for data in (arrays, by_names):
        assert_matches_numpy(
            Lens(model, "dense").capture(data, batch_size=BATCH)["dense"], expected
        )


def test_a_one_input_model_takes_a_one_array_dict_under_any_key(make_sequential, rng):
    model = make_sequential()
    x = normal_data(rng)
    stats = Lens(model).capture({"features": x}, batch_size=BATCH)
    assert_sequential_matches_numpy(stats, model, x)


@pytest.mark.parametrize(
    ("layer", "x", "reason"),
    [
        (
            lambda: keras.layers.Conv2D(4, 5),
            np.ones((6, 2, 2, 3), np.float32),
            "Negative dimension size",
        ),
        (
            lambda: keras.layers.Embedding(10, 3),
            np.full((6, 5), 50, np.int32),
            r"indices\[0,0\] = 50 is not in \[0, 10\)",
        ),
    ],
    ids=["conv-on-too-small-images", "token-id-beyond-the-vocabulary"],
)
def test_a_built_model_that_cannot_run_on_the_data_names_the_reason(layer, x, reason):
    shape = (None,) * (x.ndim - 2) + (3,) if x.ndim == 4 else (5,)
    inputs = keras.Input(shape, dtype=x.dtype)
    model = keras.Model(inputs, layer()(inputs), name="tiny")
    with pytest.raises(KeraslensError, match=f"Model 'tiny' could not run on inputs .*: {reason}"):
        Lens(model).capture(x, batch_size=4)


class _Opaque(keras.layers.Layer):
    """Doubles its input through NumPy: TensorFlow knows neither its rank nor its units."""

    def call(self, x):
        return tf.numpy_function(lambda a: a * 2, [x], tf.float32)

    def compute_output_shape(self, shape):
        return shape


def test_an_output_of_unknown_shape_is_left_out(rng):
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(3, name="dense")(inputs)
    model = keras.Model(inputs, _Opaque(name="opaque")(dense))
    stats = Lens(model).capture(normal_data(rng, features=4), batch_size=BATCH)
    assert list(stats) == ["dense"]


def test_dates_are_refused_with_the_fix(make_sequential):
    dates = np.arange(12).reshape(2, 6).astype("datetime64[s]")
    with pytest.raises(KeraslensError, match=r"dtype datetime64\[s\].*np.asarray"):
        Lens(make_sequential()).capture(dates)
