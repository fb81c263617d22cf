"""`keraslens.evaluate`: what it accepts, what it refuses, its intervals and verdicts."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from metrics_cases import planted

import keraslens
from keraslens.errors import KeraslensError
from keraslens.metrics import METRICS, best_method, verdict
from keraslens.metrics._plumbing import interval


@pytest.fixture
def case():
    model, x, region = planted(8, samples=6)
    return model, x, np.broadcast_to(region, x.shape[:3]).astype(float)


def test_a_method_name_gives_what_its_precomputed_attributions_give(case):
    model, x, _ = case
    by_name = keraslens.evaluate(model, x, "saliency", ["deletion", "sparseness"])
    maps = keraslens.attribute(model, x, "saliency")
    by_array = keraslens.evaluate(model, x, maps, ["deletion", "sparseness"])
    for name in by_name:
        np.testing.assert_allclose(by_name[name]["per_sample"], by_array[name]["per_sample"])


@pytest.mark.parametrize("layout", ["like x", "no channel", "one channel"])
def test_maps_with_or_without_a_channel_axis_score_alike(case, layout):
    model, x, right = case
    rgb = np.concatenate([x, x, x], axis=-1)
    model3 = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Lambda(lambda t: t[..., :1]), model]
    )
    maps = {
        "like x": np.stack([right, 0 * right, 0 * right], -1),
        "no channel": right,
        "one channel": right[..., None],
    }[layout]
    scores = keraslens.evaluate(model3, rgb, maps, ["deletion", "complexity"])
    reference = keraslens.evaluate(model, x, right, ["deletion", "complexity"])
    for name in scores:
        np.testing.assert_allclose(scores[name]["per_sample"], reference[name]["per_sample"])


def test_the_default_metrics_of_an_array_are_those_that_need_no_fresh_attributions(case):
    model, x, right = case
    scores = keraslens.evaluate(model, x, right)
    assert set(scores) == {n for n, cls in METRICS.items() if not cls.needs_method}


@pytest.mark.parametrize(
    ("maps", "metrics", "options", "message"),
    [
        (np.zeros((6, 7, 8)), ["deletion"], {}, "do not match inputs"),
        (None, ["no-such-metric"], {}, "Unknown metric"),
        (None, ["randomisation"], {}, "pass a method name"),
        (None, {"insertion": {"start": "sepia"}}, {}, "Unknown start image"),
        (None, {"deletion": {"steps": 0}}, {}, "must be >= 1"),
        (None, {"road": {"colour": 1}}, {}, "has no option 'colour'"),
        (None, ["deletion"], {"steps": 4}, "given with an array"),
        (np.full((6, 8, 8), np.nan), ["deletion"], {}, "NaN"),
    ],
)
def test_user_errors_name_the_fix(case, maps, metrics, options, message):
    model, x, right = case
    with pytest.raises(KeraslensError, match=message):
        keraslens.evaluate(model, x, right if maps is None else maps, metrics, **options)


def test_a_multi_input_model_asks_which_input_is_explained(rng):
    a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
    out = keras.layers.Dense(2, "softmax")(keras.layers.Concatenate()([a, b]))
    model = keras.Model([a, b], out)
    data = {"a": rng.random((5, 4)).astype("float32"), "b": rng.random((5, 3)).astype("float32")}
    with pytest.raises(KeraslensError, match="input="):
        keraslens.evaluate(model, data, "saliency", ["mufidelity"])
    scores = keraslens.evaluate(model, data, "gradient-input", ["mufidelity"], input="b")
    np.testing.assert_allclose(scores["mufidelity"]["per_sample"], 1.0, atol=1e-4)


def test_neither_the_inputs_nor_the_maps_are_modified(case):
    model, x, right = case
    x_before, maps_before = x.copy(), right.copy()
    keraslens.evaluate(model, x, right, ["deletion", "insertion", "road", "average-drop"])
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(right, maps_before)


def test_the_interval_of_the_mean_matches_normal_theory_on_a_large_sample():
    values = np.random.default_rng(5).normal(3.0, 2.0, 400)
    mean, low, high = interval(values)
    assert low < 3.0 < high and low < mean < high
    assert high - low == pytest.approx(2 * 1.96 * 2.0 / np.sqrt(400), rel=0.15)
    assert interval(np.full(7, 0.25)) == (0.25, 0.25, 0.25)


def test_every_entry_holds_mean_low_high_and_per_sample(case):
    model, x, right = case
    for entry in keraslens.evaluate(model, x, right).values():
        assert entry["low"] <= entry["mean"] <= entry["high"]
        assert len(entry["per_sample"]) == len(x) and entry["better"] in ("higher", "lower")


def _entry(mean):
    return {"mean": mean, "low": mean, "high": mean, "per_sample": [mean]}


def test_verdicts_follow_the_documented_rule():
    trusted = {"mufidelity": _entry(0.6), "randomisation": _entry(0.1)}
    assert verdict(trusted) == "trust"
    assert verdict({**trusted, "randomisation": _entry(0.7)}) == "fails randomisation"
    assert verdict({**trusted, "random-logit": _entry(0.5)}) == "fails randomisation"
    assert verdict({**trusted, "mufidelity": _entry(0.05)}) == "weak on faithfulness"
    assert verdict({"insertion": _entry(0.3), "deletion": _entry(0.4)}) == "weak on faithfulness"
    assert verdict({"road": _entry(-0.1)}) == "weak on faithfulness"
    assert verdict({"sparseness": _entry(0.9)}) == "not assessed"


def test_the_best_method_is_trusted_first_then_most_faithful():
    results = {
        "saliency": {"mufidelity": _entry(0.4), "randomisation": _entry(0.2)},
        "gradcam": {"mufidelity": _entry(0.7), "randomisation": _entry(0.1)},
        "guided-backprop": {"mufidelity": _entry(0.9), "randomisation": _entry(0.9)},
    }
    assert best_method(results) == "gradcam"
    assert best_method({}) is None


def test_evaluate_and_verdict_agree_on_a_planted_case_end_to_end(case):
    model, x, right = case
    good = keraslens.evaluate(model, x, right, ["mufidelity", "insertion", "deletion"])
    noise = np.random.default_rng(0).random(right.shape)
    bad = keraslens.evaluate(model, x, noise, ["mufidelity", "insertion", "deletion"])
    assert verdict(good) == "trust" and verdict(bad) == "weak on faithfulness"
    assert best_method({"planted": good, "noise": bad}) == "planted"


def _sequence_model() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((12, 3)),
            keras.layers.Conv1D(4, 3, activation="relu"),
            keras.layers.GRU(4),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )


@pytest.mark.parametrize("kind", ["table", "nested", "subclassed", "sequence", "multi-io"])
def test_every_default_metric_runs_on_every_model_kind(kind, rng):
    from conftest import TinySubclassed, build_nested, build_sequential, build_two_in_two_out

    options = {}
    if kind == "table":
        model, x = build_sequential(), rng.random((4, 6))
    elif kind == "nested":
        model, x = build_nested(), rng.random((4, 6, 6, 2))
    elif kind == "subclassed":
        model, x = TinySubclassed(), rng.random((4, 6))
        model(x)
    elif kind == "sequence":
        model, x = _sequence_model(), rng.random((4, 12, 3))
    else:
        model = build_two_in_two_out()
        x = {"wide": rng.random((4, 6)), "narrow": rng.random((4, 5))}
        options = {"input": "narrow", "output": "out_sigmoid"}
    scores = keraslens.evaluate(model, x, "saliency", **options)
    has_positions = kind in ("nested", "sequence")
    expected = {n for n, cls in METRICS.items() if has_positions or not cls.needs_positions}
    assert set(scores) == expected
    for name, entry in scores.items():
        assert len(entry["per_sample"]) == 4 and np.isfinite(entry["mean"]), name


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        (["road"], "needs neighbouring positions"),
        ({"insertion": {"start": "blur"}}, "blurred start needs inputs with positions"),
    ],
)
def test_metrics_that_need_positions_refuse_a_table(rng, metrics, message):
    from conftest import build_sequential

    with pytest.raises(KeraslensError, match=message):
        keraslens.evaluate(build_sequential(), rng.random((4, 6)), "saliency", metrics)


def test_insertion_on_a_table_starts_from_zeros_by_default(rng):
    from conftest import build_sequential

    model, x = build_sequential(), rng.random((4, 6)).astype("float32")
    maps = rng.random((4, 6))
    auto = keraslens.evaluate(model, x, maps, ["insertion"])["insertion"]
    zeros = keraslens.evaluate(model, x, maps, {"insertion": {"start": "zeros"}})["insertion"]
    assert auto["per_sample"] == zeros["per_sample"]


def test_a_dataset_scores_as_its_arrays(case):
    import tensorflow as tf

    model, x, _ = case
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(4)
    from_dataset = keraslens.evaluate(model, dataset, "saliency", ["deletion"])["deletion"]
    from_array = keraslens.evaluate(model, x, "saliency", ["deletion"])["deletion"]
    np.testing.assert_allclose(from_dataset["per_sample"], from_array["per_sample"])


def test_a_new_metric_is_one_class_and_one_registry_line(case, monkeypatch):
    from keraslens.metrics import Metric, Score

    class PeakShare(Metric):
        name, title, better, citation = "peak-share", "Share of the peak", "higher", "none"

        def score(self, explained):
            values = np.abs(explained.relevance.reshape(len(explained.x), -1))
            return Score(values.max(axis=1) / values.sum(axis=1))

    monkeypatch.setitem(METRICS, "peak-share", PeakShare)
    model, x, right = case
    entry = keraslens.evaluate(model, x, right, ["peak-share"])["peak-share"]
    np.testing.assert_allclose(entry["per_sample"], 1 / right[0].sum())  # the region's 4 pixels
