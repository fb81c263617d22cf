"""saturation finds units of bounded activations that sit at a bound, and only those.

Each case is one branch of one model, so that one analysis covers them all.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keraslens

RANGES = {
    "tanh": (-1.0, 1.0),
    "sigmoid": (0.0, 1.0),
    "hard_sigmoid": (0.0, 1.0),
    "relu6": (0.0, 6.0),
    "softsign": (-1.0, 1.0),
    "softmax": (0.0, 1.0),
}
LARGE = ["tanh", "sigmoid", "hard_sigmoid", "relu6", "softsign"]
BOTH_ENDS = [a for a in LARGE if a != "relu6"]
# branch name -> (activation, kernel scale)
BRANCHES = {
    **{f"large_{a}": (a, 1000.0) for a in LARGE},
    "scaled_tanh": ("tanh", 1.0),
    "scaled_sigmoid": ("sigmoid", 1.0),
    "planted": ("sigmoid", 1.0),  # units 1, 2 at the upper bound, unit 5 at the lower
    "mixed": ("tanh", 5.0),  # units from 30% to 65% of outputs at a bound
    "large_relu": ("relu", 1000.0),
    "relu6_at_zero": ("relu6", 1.0),  # every output 0: inactive, not saturated
}


def _model() -> keras.Model:
    """Input (8,) -> one Dense(16) per branch -> concatenated -> softmax `head` (saturated)."""
    inputs = keras.Input((8,))
    branches = []
    for name, (activation, scale) in BRANCHES.items():
        layer = keras.layers.Dense(16, activation=activation, name=name)
        branches.append(layer(inputs))
        kernel, bias = layer.get_weights()
        if name == "planted":
            kernel[:, [1, 2, 5]], bias[[1, 2, 5]] = 0.0, [20.0, 20.0, -20.0]
        if name == "relu6_at_zero":
            kernel, bias = np.zeros_like(kernel), np.full_like(bias, -1.0)
        layer.set_weights([kernel * scale, bias])
    joined = keras.layers.Concatenate(name="joined")(branches)
    head = keras.layers.Dense(4, activation="softmax", name="head")
    model = keras.Model(inputs, head(joined))
    head.set_weights([w * 1000.0 for w in head.get_weights()])
    return model


def _saturation(model: keras.Model, x: np.ndarray, layers: list[str], **options) -> dict:
    result = keraslens.analyze(
        model,
        x,
        plugins=["saturation"],
        options={"saturation": options},
        layers=layers,
        minimal=True,
    )
    return result.to_dict()["plugins"]["saturation"]


def _at_bounds(model: keras.Model, name: str, x: np.ndarray, epsilon: float = 0.01):
    """Per unit, the fraction of raw outputs within `epsilon` of the lower and upper bound."""
    layer = model.get_layer(name)
    raw = keras.Model(model.input, layer.output)(x).numpy()
    low, high = RANGES[layer.activation.__name__]
    # The capture compares in float32; so does the oracle.
    lower = (raw <= np.float32(low + epsilon)).mean(axis=0)
    upper = (raw >= np.float32(high - epsilon)).mean(axis=0)
    return lower, upper


@pytest.fixture(scope="module")
def analysed():
    model = _model()
    x = np.random.default_rng(2).normal(size=(512, 8)).astype("float32")
    return model, x, _saturation(model, x, [*BRANCHES, "head"])


@pytest.fixture(scope="module")
def with_options(analysed):
    """The `mixed` layer analysed with non-default epsilon, saturated_rate and threshold."""
    model, x, _ = analysed
    options = {"epsilon": 0.1, "saturated_rate": 0.4, "threshold": 1.0}
    return model, x, _saturation(model, x, ["mixed"], **options)


def _finding(entry: dict, layer: str) -> dict | None:
    return next((f for f in entry["findings"] if f["layer"] == layer), None)


@pytest.mark.parametrize("activation", BOTH_ENDS)
def test_layer_driven_by_large_weights_is_saturated(analysed, activation):
    model, x, entry = analysed
    name = f"large_{activation}"

    layer = entry["layers"][name]

    lower, upper = _at_bounds(model, name, x)
    assert layer["units"] == pytest.approx(lower + upper, abs=1e-12)
    assert layer["saturated_units"] == np.flatnonzero(lower + upper >= 0.5).tolist()
    assert layer["saturated_fraction"] == np.mean(lower + upper >= 0.5) > 0.9
    finding = _finding(entry, name)
    assert finding["severity"] == "error"
    assert finding["value"] == layer["saturated_fraction"]
    assert (finding["threshold"], finding["threshold_name"]) == (0.2, "saturation.threshold")
    assert finding["label"] == "saturated units"
    assert "normalisation" in finding["fix"] and "non-saturating activation" in finding["fix"]


def test_relu6_counts_as_saturated_at_its_cap_only(analysed):
    model, x, entry = analysed

    layer = entry["layers"]["large_relu6"]

    lower, upper = _at_bounds(model, "large_relu6", x)
    assert (lower > 0.2).all() and (upper > 0.2).all()  # both ends are reached
    assert layer["units"] == pytest.approx(upper, abs=1e-12)
    assert layer["saturated_units"] == np.flatnonzero(upper >= 0.5).tolist()
    assert set(layer["bound"]) <= {"upper", None}


def test_relu6_outputs_at_zero_are_not_saturation(analysed):
    _, _, entry = analysed

    layer = entry["layers"]["relu6_at_zero"]

    assert layer["units"] == [0.0] * 16
    assert layer["saturated_units"] == []
    assert _finding(entry, "relu6_at_zero") is None


@pytest.mark.parametrize("name", ["scaled_tanh", "scaled_sigmoid"])
def test_well_scaled_layer_is_not_saturated(analysed, name):
    model, x, entry = analysed

    layer = entry["layers"][name]

    lower, upper = _at_bounds(model, name, x)
    assert layer["units"] == pytest.approx(lower + upper, abs=1e-12)
    assert np.all(lower + upper < 0.5)
    assert layer["saturated_fraction"] == 0.0
    assert _finding(entry, name) is None


def test_saturated_units_and_their_bound_are_the_planted_ones(analysed):
    _, _, entry = analysed

    layer = entry["layers"]["planted"]

    assert layer["saturated_units"] == [1, 2, 5]
    assert layer["saturated_fraction"] == 3 / 16
    assert [layer["bound"][u] for u in (1, 2, 5)] == ["upper", "upper", "lower"]
    assert [layer["units"][u] for u in (1, 2, 5)] == [1.0, 1.0, 1.0]


def test_bound_per_unit_is_the_one_most_at_bound_outputs_sit_at(analysed):
    model, x, entry = analysed

    layer = entry["layers"]["mixed"]

    lower, upper = _at_bounds(model, "mixed", x)
    expected = [
        "lower" if lo > up else "upper" if up > lo else "both" if lo > 0 else None
        for lo, up in zip(lower, upper, strict=True)
    ]
    assert layer["bound"] == expected
    assert {"lower", "upper"} <= set(expected)


def test_epsilon_option_sets_the_distance_that_counts_as_at_the_bound(with_options):
    model, x, entry = with_options

    layer = entry["layers"]["mixed"]

    lower, upper = _at_bounds(model, "mixed", x, epsilon=0.1)
    assert layer["epsilon"] == 0.1
    assert layer["units"] == pytest.approx(lower + upper, abs=1e-12)


def test_saturated_rate_option_sets_how_many_outputs_at_a_bound_make_a_unit_saturated(
    analysed, with_options
):
    model, x, default = analysed
    _, _, chosen = with_options

    at_default = sum(_at_bounds(model, "mixed", x))
    at_chosen = sum(_at_bounds(model, "mixed", x, epsilon=0.1))
    expected_default = np.flatnonzero(at_default >= 0.5).tolist()
    assert default["layers"]["mixed"]["saturated_units"] == expected_default
    assert chosen["layers"]["mixed"]["saturated_units"] == np.flatnonzero(at_chosen >= 0.4).tolist()
    assert 0 < len(expected_default) < 16


def test_threshold_option_sets_the_saturated_fraction_that_gets_a_finding(with_options):
    _, _, entry = with_options

    assert entry["layers"]["mixed"]["saturated_fraction"] > 0.2  # the default would flag it
    assert entry["findings"] == []


def test_saturated_output_layer_is_reported_as_info(analysed):
    model, x, entry = analysed

    finding = _finding(entry, "head")

    lower, upper = _at_bounds(model, "head", x)
    assert finding["severity"] == "info"
    assert finding["value"] == np.mean(lower + upper >= 0.5)
    assert "output of the model" in finding["message"]


def test_layers_without_a_bounded_activation_are_left_out(analysed):
    _, _, entry = analysed

    assert set(entry["layers"]) == set(BRANCHES) - {"large_relu"} | {"head"}
