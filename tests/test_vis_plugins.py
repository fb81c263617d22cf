"""The heatmaps and activation-maximization plugins, through the contract and the runner."""

from types import SimpleNamespace

import keras
import numpy as np
import pytest

import keraslens
from keraslens.plugin import AnalysisContext
from plugins.activation_maximization import ActivationMaximization
from plugins.heatmaps import DEFAULT_METHODS, Heatmaps


def _conv_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((10, 10, 1)),
            keras.layers.Conv2D(6, 3, activation="relu", name="conv1"),
            keras.layers.Conv2D(6, 3, activation="relu", name="conv2"),
            keras.layers.GlobalAveragePooling2D(name="pool"),
            keras.layers.Dense(3, activation="softmax", name="head"),
        ]
    )


def _dense_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(5, activation="relu", name="hidden"),
            keras.layers.Dense(3, activation="softmax", name="head"),
        ]
    )


def _context(plugin, model, x, labels=None, stats=None, **options):
    return AnalysisContext(
        model=model,
        lens=None,
        stats=stats,
        sample=x,
        labels=labels,
        options=plugin.parse_options(options),
        seed=0,
    )


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((24, 10, 10, 1), dtype=np.float32)


def test_heatmaps_show_a_few_samples_per_class_with_every_check(images):
    labels = np.arange(24) % 3
    ctx = _context(Heatmaps, _conv_model(), images, labels, per_class=2, faithfulness_steps=4)
    result = Heatmaps().analyze(ctx)
    assert result.data["layer"] == "conv2"
    assert result.data["samples"] == [0, 1, 2, 3, 4, 5]
    assert list(result.data["methods"]) == DEFAULT_METHODS
    for report in result.data["methods"].values():
        assert 0 <= report["deletion_auc"] <= 1 and 0 <= report["insertion_auc"] <= 1
        assert report["trustworthy"] in (True, False)
    assert [row[0] for row in result.tables[0].rows] == [
        "Grad-CAM",
        "Grad-CAM++",
        "Integrated gradients",
        "Saliency",
        "Guided backprop",
    ]
    assert sorted(f.title for f in result.figures) == ["Cascading randomisation", "Heatmaps"]
    assert all(f.png.startswith(b"\x89PNG") for f in result.figures)
    gradcam = result.data["metrics"]["gradcam"]
    assert {"deletion", "insertion", "mufidelity", "randomisation"} <= set(gradcam)
    assert (
        gradcam["mufidelity"]["low"]
        <= gradcam["mufidelity"]["mean"]
        <= gradcam["mufidelity"]["high"]
    )
    assert len(gradcam["mufidelity"]["per_sample"]) == 6
    assert result.data["best_method"] in DEFAULT_METHODS
    assert result.data["methods"]["guided-backprop"]["verdict"] in (
        "fails randomisation",
        "weak on faithfulness",
        "trust",
    )


def test_heatmaps_skip_cam_on_a_dense_model_with_the_reason():
    x = np.random.default_rng(1).random((16, 6), dtype=np.float32)
    ctx = _context(Heatmaps, _dense_model(), x, methods=["gradcam", "smoothgrad"])
    result = Heatmaps().analyze(ctx)
    assert "no layer with a spatial output" not in result.data["methods"]["gradcam"]["skipped"]
    assert "use method='saliency'" in result.data["methods"]["gradcam"]["skipped"]
    assert "rank_correlation" in result.data["methods"]["smoothgrad"]
    assert any("Grad-CAM skipped" in f.message for f in result.findings)
    assert result.tables[0].rows[0][3] == "skipped"


def _token_model():
    tokens = keras.Input((7,), dtype="int32")
    hidden = keras.layers.LSTM(4)(keras.layers.Embedding(9, 4, mask_zero=True)(tokens))
    return keras.Model(tokens, keras.layers.Dense(3, activation="softmax")(hidden))


def test_maximization_skips_a_model_of_token_ids_with_the_reason():
    x = np.random.default_rng(2).integers(0, 9, size=(12, 7)).astype(np.int32)
    plugin = ActivationMaximization
    result = plugin().analyze(_context(plugin, _token_model(), x, stats={}))
    assert "int32 inputs" in result.data["skipped"]
    assert "no gradient" in result.findings[0].message


def test_heatmaps_explain_a_token_model_per_token_and_skip_cams_with_the_reason():
    x = np.random.default_rng(2).integers(1, 9, size=(12, 7)).astype(np.int32)
    ctx = _context(Heatmaps, _token_model(), x, methods=["gradcam", "integrated-gradients"])
    result = Heatmaps().analyze(ctx)
    assert "positions" in result.data["methods"]["gradcam"]["skipped"]
    assert result.data["methods"]["integrated-gradients"]["options"]["steps"] == 50
    assert [t.columns for t in result.tables][-1] == ["sample", "predicted", "top tokens"]


def test_heatmap_of_token_ids_is_one_value_per_token_and_maximize_refuses_them():
    x = np.ones((2, 7), np.int32)
    assert keraslens.heatmap(_token_model(), x, "saliency").shape == (2, 7)
    with pytest.raises(keraslens.KeraslensError, match="continuous input"):
        keraslens.maximize(_token_model(), None, [0], steps=1)


def test_heatmaps_flag_a_method_that_ignores_the_weights(images):
    ctx = _context(Heatmaps, _conv_model(), images, methods=["saliency"], similarity_threshold=0.0)
    findings = Heatmaps().analyze(ctx).findings
    assert [f.threshold_name for f in findings] == ["heatmaps.similarity_threshold"]


def test_heatmaps_options_are_checked_before_any_work():
    with pytest.raises(ValueError, match="allowed: gradcam"):
        Heatmaps.parse_options({"methods": ["gradcam", "guided-backprob"]})
    with pytest.raises(ValueError, match="Integrated gradients has no option 'step'"):
        Heatmaps.parse_options({"method_options": ["integrated-gradients.step=3"]})
    with pytest.raises(ValueError, match="must be >= 1"):
        Heatmaps.parse_options({"method_options": ["integrated-gradients.steps=0"]})


def test_maximization_takes_the_most_and_least_active_units_of_the_statistics(images):
    mean = np.array([0.5, 3.0, -1.0, 2.0, 0.0, 1.0])
    stats = {"conv2": SimpleNamespace(mean=mean)}
    ctx = _context(ActivationMaximization, _conv_model(), images, stats=stats, steps=3)
    result = ActivationMaximization().analyze(ctx)
    assert result.data["layers"]["conv2"]["units"] == [1, 3, 4, 2]  # by decreasing mean
    assert result.data["layers"]["output classes"]["units"] == [0, 1, 2]
    assert result.data["input_range"] == [float(images.min()), float(images.max())]
    assert len(result.figures) == 2
    assert {row[0] for row in result.tables[0].rows} == {"output classes", "conv2"}


@pytest.mark.slow
def test_both_plugins_run_through_analyze(images):
    result = keraslens.analyze(
        _conv_model(),
        images,
        plugins=["heatmaps", "activation-maximization"],
        labels=np.arange(24) % 3,
        options={
            "heatmaps": {"methods": ["gradcam"], "faithfulness_steps": 2},
            "activation-maximization": {"steps": 2, "max_classes": 1},
        },
        minimal=False,
    )
    for name in ("heatmaps", "activation-maximization"):
        assert result.plugins[name].error is None, result.plugins[name].traceback


class SubclassedCNN(keras.Model):
    """Conv -> pooling -> linear head, built only by calling it: no declared input."""

    def __init__(self):
        super().__init__()
        self.conv = keras.layers.Conv2D(4, 3, activation="relu", name="conv")
        self.pool = keras.layers.GlobalAveragePooling2D(name="pool")
        self.head = keras.layers.Dense(2, name="head")

    def call(self, inputs):
        return self.head(self.pool(self.conv(inputs)))


@pytest.mark.slow
def test_maximization_of_a_subclassed_model_reads_the_input_shape_from_the_data(images):
    keras.utils.set_random_seed(0)
    model = SubclassedCNN()
    run = keraslens.analyze(
        model,
        images,
        plugins=["activation-maximization"],
        options={"activation-maximization": {"steps": 30}},
        seed=0,
    ).plugins["activation-maximization"]
    assert run.error is None, run.traceback
    classes = run.result.data["layers"]["output classes"]
    # The documented start: a uniform draw over the data range from default_rng(seed).
    low, high = float(images.min()), float(images.max())
    start = np.random.default_rng(0).uniform(low, high, (2, 10, 10, 1)).astype(np.float32)
    start_scores = keras.ops.convert_to_numpy(model(start))[[0, 1], [0, 1]]
    assert classes["units"] == [0, 1]
    assert np.all(np.asarray(classes["reached"]) > start_scores)


def test_maximize_asks_for_the_input_shape_of_a_subclassed_model_it_cannot_read():
    with pytest.raises(keraslens.KeraslensError, match=r"declares no input.*pass input_shape="):
        keraslens.maximize(SubclassedCNN(), None, [0], steps=1)


def test_a_rank_1_output_is_one_score_maximised_as_unit_0():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    dense = keras.layers.Dense(3, name="dense")
    total = keras.layers.Lambda(lambda t: keras.ops.sum(t, axis=-1), name="total")
    model = keras.Model(inputs, total(dense(inputs)))
    x = np.random.default_rng(3).uniform(-1.0, 1.0, (16, 5)).astype(np.float32)
    ctx = _context(ActivationMaximization, model, x, layers=["dense"], steps=50)
    score = ActivationMaximization().analyze(ctx).data["layers"]["output classes"]
    # The score is linear, sum(kernel.T @ x + bias): over the box of the data range it
    # peaks at the corner that takes `high` where the summed weight is positive.
    kernel, bias = dense.get_weights()
    weight, low, high = kernel.sum(axis=1), x.min(), x.max()
    box_max = bias.sum() + np.where(weight > 0, high, low) @ weight
    best = keras.ops.convert_to_numpy(model(x)).max()
    assert score["units"] == [0]
    assert score["best_natural"][0] == pytest.approx(best, rel=1e-5)
    assert best < score["reached"][0] <= box_max + 1e-5


def test_heatmaps_name_a_finer_layer_when_the_map_is_coarse():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((32, 32, 1)),
            keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="fine"),
            keras.layers.MaxPooling2D(8, name="pool"),
            keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="coarse"),
            keras.layers.Flatten(),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    x = np.random.default_rng(0).random((4, 32, 32, 1), dtype=np.float32)
    ctx = _context(Heatmaps, model, x, methods=["gradcam"], sanity_check=False)
    findings = [f for f in Heatmaps().analyze(ctx).findings if f.label == "coarse heatmap"]
    assert len(findings) == 1 and "4x4 positions" in findings[0].message
    assert "heatmaps.layer='pool'" not in findings[0].fix and "'fine'" in findings[0].fix


def test_a_method_whose_maps_are_not_finite_never_passes_the_randomisation_test():
    from keraslens.attr import AttributionMethod
    from keraslens.vis.sanity import randomization_test

    class Overflowing(AttributionMethod):
        name, title, citation = "overflowing", "Overflowing", "none"

        def attribute(self, scorer):
            values = scorer.gradient(scorer.value)
            values[:, 0] = np.nan  # as an exp() of a large logit gives
            return values

    x = np.random.default_rng(0).random((3, 10, 10, 1), dtype=np.float32)
    test = randomization_test(_conv_model(), x, Overflowing())
    assert test.nonfinite == 3 and not test.passes(1.0)


def test_free_form_method_options_from_the_command_line_are_read_as_numbers_or_text():
    from plugins.heatmaps import method_options

    parsed = method_options(["occlusion.patch=[2, 3]", "occlusion.value=mean", "rise.masks=50"])
    assert parsed == {"occlusion": {"patch": [2, 3], "value": "mean"}, "rise": {"masks": 50}}


def test_heatmaps_explain_each_input_of_a_multi_input_model_given_as_a_dict():
    keras.utils.set_random_seed(0)
    image = keras.Input((8, 8, 1), name="image")
    table = keras.Input((3,), name="table")
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, name="conv")(image))
    joined = keras.layers.Concatenate()([pooled, keras.layers.Dense(4)(table)])
    model = keras.Model([image, table], keras.layers.Dense(2, activation="softmax")(joined))
    rng = np.random.default_rng(0)
    x = {
        "table": rng.random((6, 3), dtype=np.float32),
        "image": rng.random((6, 8, 8, 1), dtype=np.float32),
    }
    ctx = _context(
        Heatmaps, model, x, methods=["gradcam", "integrated-gradients"], sanity_check=False
    )
    result = Heatmaps().analyze(ctx)
    inputs = result.data["inputs"]
    assert set(inputs) == {"image", "table"}
    assert "heatmaps.layer" in inputs["table"]["methods"]["gradcam"]["skipped"]
    assert "mufidelity" in inputs["table"]["metrics"]["integrated-gradients"]
    assert "rank_correlation" in inputs["image"]["methods"]["integrated-gradients"]


def test_large_models_get_fewer_steps_and_draws_and_the_table_says_so():
    from plugins.heatmaps import METHODS, sized_options

    small = _conv_model()
    assert sized_options(small, METHODS["integrated-gradients"].options) == {}
    big = keras.Sequential([keras.Input((2000,)), keras.layers.Dense(2000), keras.layers.Dense(2)])
    chosen = sized_options(big, METHODS["integrated-gradients"].options)
    assert chosen == {"steps": int(50 * (1_000_000 / big.count_params()) ** 0.5)}
    assert sized_options(big, METHODS["rise"].options)["masks"] < 2000
    assert sized_options(big, METHODS["saliency"].options) == {}


def test_large_models_get_fewer_metric_draws_never_below_eight():
    from plugins.heatmaps import metric_options

    # 4.0M parameters: sqrt(1M / 4.0M) is about a half.
    big = keras.Sequential([keras.Input((2000,)), keras.layers.Dense(2000), keras.layers.Dense(2)])
    scale = (1_000_000 / big.count_params()) ** 0.5
    chosen = metric_options(big, ["mufidelity", "deletion", "insertion", "sparseness"])
    assert chosen == {
        "mufidelity": {"samples": int(64 * scale)},
        "deletion": {"steps": 8},
        "insertion": {"steps": 8},
        "sparseness": {},
    }
    assert metric_options(big, ["deletion"], steps=16) == {"deletion": {"steps": 16}}
    assert metric_options(_conv_model(), ["mufidelity", "deletion"]) == {
        "mufidelity": {},
        "deletion": {},
    }
