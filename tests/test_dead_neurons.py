"""dead-neurons finds exactly the units that never fire, and says why it matters.

Each planted defect lives in its own branch of one model, so that one analysis
covers them all (capturing a layer compiles code: the fewer analyses, the faster).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keraslens

# branch name -> (activation, {unit: (kernel scale, bias)})
PLANTED = {
    "planted": ("relu", {u: (0.0, -1.0) for u in (3, 7, 20)}),
    "quarter_dead": ("relu", {u: (0.0, -1.0) for u in range(0, 32, 4)}),
    "mostly_dead": ("relu", {u: (0.0, -1.0) for u in range(20)}),
    "rare": ("relu", {}),  # units 0 and 1 fire on 3 and 10 samples, see _data
    "tanh": ("tanh", {2: (0.0, -1.0), 9: (0.0, -1.0), 4: (0.01, -5.0)}),
    "linear": (None, {2: (0.0, -1.0), 9: (0.0, -1.0), 4: (0.01, -5.0)}),
}


def _branches_model() -> keras.Model:
    """Input (8,) -> one Dense(32) branch per entry of PLANTED, each a model output."""
    inputs = keras.Input((8,))
    outputs = []
    for name, (activation, planted) in PLANTED.items():
        layer = keras.layers.Dense(32, activation=activation, name=name)
        outputs.append(layer(inputs))
        kernel, bias = layer.get_weights()
        for unit, (scale, unit_bias) in planted.items():
            kernel[:, unit] *= scale
            bias[unit] = unit_bias
        if name == "rare":  # fires only when x[:, 0] exceeds 2.5 (unit 0) or 1.5 (unit 1)
            kernel[:, :2], kernel[0, :2], bias[:2] = 0.0, 1.0, [-2.5, -1.5]
        layer.set_weights([kernel, bias])
    return keras.Model(inputs, outputs)


def _data() -> np.ndarray:
    x = np.random.default_rng(1).normal(size=(512, 8)).astype("float32")
    x[:, 0] = np.clip(x[:, 0], -1, 1)
    x[:3, 0], x[3:10, 0] = 3.0, 2.0
    return x


def _dead_neurons(model, x, layers=None, **options) -> dict:
    result = keraslens.analyze(
        model,
        x,
        plugins=["dead-neurons"],
        options={"dead-neurons": options},
        layers=layers,
        minimal=True,
    )
    return result.to_dict()["plugins"]["dead-neurons"]


def _outputs(model: keras.Model, name: str, x: np.ndarray) -> np.ndarray:
    """Raw outputs of one layer as (samples, positions, units)."""
    raw = keras.Model(model.input, model.get_layer(name).output)(x).numpy()
    return raw.reshape(len(x), -1, raw.shape[-1])


def _never_fired(model: keras.Model, name: str, x: np.ndarray) -> list[int]:
    return np.flatnonzero((_outputs(model, name, x) <= 0).all(axis=(0, 1))).tolist()


@pytest.fixture(scope="module")
def planted():
    model, x = _branches_model(), _data()
    return model, x, _dead_neurons(model, x)


@pytest.fixture(scope="module")
def with_options():
    """`rare` and `quarter_dead` analysed with a higher nearly_dead_rate and threshold."""
    model, x = _branches_model(), _data()
    entry = _dead_neurons(model, x, ["rare", "quarter_dead"], nearly_dead_rate=0.03, threshold=0.25)
    return model, x, entry


def _finding(entry: dict, layer: str) -> dict:
    (finding,) = [f for f in entry["findings"] if f["layer"] == layer]
    return finding


def test_planted_dead_dense_units_are_reported_exactly(planted):
    model, x, entry = planted

    layer = entry["layers"]["planted"]

    assert _never_fired(model, "planted", x) == [3, 7, 20]
    assert layer["dead_units"] == [3, 7, 20]
    assert layer["dead_fraction"] == 3 / 32
    assert layer["nearly_dead_units"] == []


def test_planted_dead_conv_channels_are_reported_exactly():
    inputs = keras.Input((6, 6, 3))
    conv = keras.layers.Conv2D(8, 3, activation="relu", name="conv")
    model = keras.Model(inputs, conv(inputs))
    kernel, bias = conv.get_weights()
    kernel[..., [1, 6]], bias[[1, 6]] = 0.0, -1.0
    conv.set_weights([kernel, bias])
    x = np.random.default_rng(1).normal(size=(128, 6, 6, 3)).astype("float32")

    layer = _dead_neurons(model, x)["layers"]["conv"]

    assert _never_fired(model, "conv", x) == [1, 6]
    assert layer["dead_units"] == [1, 6]
    assert layer["dead_fraction"] == 2 / 8


def test_layer_dead_beyond_the_threshold_gets_a_warning_with_causes_and_fixes(planted):
    _, _, entry = planted

    finding = _finding(entry, "quarter_dead")

    assert finding["severity"] == "warning"
    assert finding["units"] == list(range(0, 32, 4))
    assert (finding["value"], finding["threshold"]) == (8 / 32, 0.2)
    assert finding["threshold_name"] == "dead-neurons.threshold"
    assert finding["label"] == "dead units"
    assert "learning rate" in finding["message"] and "bias" in finding["message"]
    assert "LeakyReLU/ELU" in finding["fix"] and "He initialisation" in finding["fix"]


def test_layer_more_than_half_dead_gets_an_error(planted):
    _, _, entry = planted

    finding = _finding(entry, "mostly_dead")

    assert (finding["severity"], finding["value"]) == ("error", 20 / 32)


def test_layers_below_the_threshold_get_no_finding(planted):
    _, _, entry = planted

    flagged = {f["layer"] for f in entry["findings"]}

    assert flagged == {"quarter_dead", "mostly_dead"}


def test_threshold_option_sets_the_dead_fraction_that_gets_a_finding(with_options):
    _, _, entry = with_options

    assert entry["layers"]["quarter_dead"]["dead_fraction"] == 0.25
    assert entry["findings"] == []


@pytest.mark.parametrize(("run", "rate"), [("planted", 0.01), ("with_options", 0.03)])
def test_nearly_dead_units_fire_in_fewer_samples_than_the_rate(run, rate, request):
    model, x, entry = request.getfixturevalue(run)

    layer = entry["layers"]["rare"]

    sample_rate = (_outputs(model, "rare", x) > 0).any(axis=1).mean(axis=0)
    expected = np.flatnonzero((sample_rate > 0) & (sample_rate < rate)).tolist()
    assert sample_rate[[0, 1]].tolist() == [3 / 512, 10 / 512]
    assert layer["nearly_dead_units"] == expected == ([0] if rate == 0.01 else [0, 1])
    assert layer["nearly_dead_fraction"] == len(expected) / 32
    assert layer["dead_units"] == []


@pytest.mark.parametrize("name", ["tanh", "linear"])
def test_units_outside_the_relu_family_are_dead_only_when_constant(planted, name):
    model, x, entry = planted

    layer = entry["layers"][name]

    outputs = _outputs(model, name, x)
    constant = np.flatnonzero(outputs.min(axis=(0, 1)) == outputs.max(axis=(0, 1)))
    assert (outputs[..., 4] < 0).all()  # never > 0, yet it varies: alive
    assert constant.tolist() == [2, 9]
    assert layer["rule"] == "constant"
    assert layer["dead_units"] == [2, 9]
    assert layer["nearly_dead_units"] == []


def _one_sample_model() -> keras.Model:
    """Input (2, 3) -> linear (2 units per position) -> pooling -> relu -> softmax, by hand.

    On the sample [[1, 2, 3], [4, 5, 6]]: `linear` gives [0.5, 1] and [0.5, 4] at its two
    positions, `pool` [0.5, 2.5], `relu` max(0, [2.5, -2.5]) = [2.5, 0], `out` one
    softmax pair.
    """
    inputs = keras.Input((2, 3))
    linear = keras.layers.Dense(2, name="linear")
    relu = keras.layers.Dense(2, activation="relu", name="relu")
    pooled = keras.layers.GlobalAveragePooling1D(name="pool")(linear(inputs))
    outputs = keras.layers.Dense(2, activation="softmax", name="out")(relu(pooled))
    model = keras.Model(inputs, outputs)
    linear.set_weights(
        [np.array([[0, 1], [0, 0], [0, 0]], "float32"), np.array([0.5, 0], "float32")]
    )
    relu.set_weights([np.array([[0, 0], [1, -1]], "float32"), np.zeros(2, "float32")])
    return model


@pytest.fixture(scope="module")
def one_sample():
    model, x = _one_sample_model(), np.array([[[1, 2, 3], [4, 5, 6]]], "float32")
    return model, x, _dead_neurons(model, x)


def test_one_sample_gives_the_hand_computed_outputs(one_sample):
    model, x, _ = one_sample

    np.testing.assert_allclose(_outputs(model, "linear", x)[0], [[0.5, 1], [0.5, 4]])
    np.testing.assert_allclose(_outputs(model, "relu", x)[0], [[2.5, 0]])


def test_units_with_a_single_output_are_not_called_constant(one_sample):
    _, _, entry = one_sample

    assert entry["layers"]["pool"]["dead_units"] == []
    assert entry["layers"]["out"]["dead_units"] == []


def test_a_unit_constant_over_the_positions_of_one_sample_is_dead(one_sample):
    _, _, entry = one_sample

    assert entry["layers"]["linear"]["dead_units"] == [0]


def test_layers_with_a_single_output_per_unit_get_an_info_finding(one_sample):
    _, _, entry = one_sample

    (finding,) = [f for f in entry["findings"] if f["label"] == "too few samples"]

    assert finding["severity"] == "info"
    assert "'pool', 'out'" in finding["message"] and "1 sample analysed" in finding["message"]
    assert finding["fix"] == "Analyse 2 samples or more."


def test_a_relu_unit_silent_on_one_sample_is_dead_with_how_few_samples_it_rests_on(one_sample):
    _, _, entry = one_sample

    finding = _finding(entry, "relu")

    assert entry["layers"]["relu"]["dead_units"] == [1]
    assert (finding["severity"], finding["value"]) == ("warning", 1 / 2)
    assert "never fire (output > 0) on the 1 sample analysed" in finding["message"]
    assert "1 sample cannot tell a dead unit from one firing in fewer than 1%" in finding["message"]
    assert "analyse 100 samples or more" in finding["message"]


def test_enough_samples_for_the_nearly_dead_rate_carry_no_caveat(planted):
    _, x, entry = planted

    assert len(x) * 0.01 >= 1
    assert "cannot tell a dead unit" not in _finding(entry, "quarter_dead")["message"]
