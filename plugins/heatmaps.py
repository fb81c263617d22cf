"""heatmaps: where the model looks, per method, with a sanity check and a faithfulness score."""

from __future__ import annotations

from typing import Any

import numpy as np

from keraslens.errors import KeraslensError
from keraslens.plugin import AnalysisContext, Figure, Finding, Option, Plugin, PluginResult, Table
from keraslens.vis.compat import (
    check_path,
    input_shape_of,
    parse_output,
    require_continuous_input,
)
from keraslens.vis.figures import heatmap_grid
from keraslens.vis.heatmap import METHODS, explain
from keraslens.vis.layers import last_spatial_layer
from keraslens.vis.sanity import deletion_insertion, randomization_test

DEFAULT_METHODS = ["gradcam", "gradcam++", "faster-scorecam", "saliency"]


class Heatmaps(Plugin):
    """Attribution heatmaps of a few samples, and whether to trust each method.

    For each method: the maps of the shown samples (a grid of input | overlay), the
    model-parameter randomisation test of Adebayo et al. (2018) (rank correlation between
    the maps of the model and of a copy with permuted weights; a method above
    `similarity_threshold` is flagged) and deletion / insertion AUC (Petsiuk et al.,
    2018). CAM methods need a layer with a spatial output; on a model without one they
    are skipped, with the reason, and saliency still runs.

    Example:

    ```python
    result = keraslens.analyze(model, x_val, labels=y_val, plugins=["heatmaps"],
                               options={"heatmaps": {"methods": ["gradcam", "smoothgrad"]}})
    result.to_dict()["plugins"]["heatmaps"]["methods"]["gradcam"]["rank_correlation"]
    ```
    """

    name = "heatmaps"
    title = "Attribution heatmaps"
    description = (
        "Grad-CAM, Grad-CAM++, Score-CAM, Layer-CAM, saliency, SmoothGrad; sanity-checked."
    )
    needs = frozenset({"sample", "labels", "gradients"})
    expensive = True
    options = {
        "methods": Option(list, DEFAULT_METHODS, "Methods to run.", choices=tuple(METHODS)),
        "layer": Option(
            str, "", "Layer path for CAM methods (backbone/conv); empty: last spatial layer."
        ),
        "output": Option(str, "", "Output to explain (name or index) of a multi-output model."),
        "target": Option(
            str, "predicted", "Class each map explains.", choices=("predicted", "label")
        ),
        "class_index": Option(int, -1, "Explain this class for every sample; -1: off.", min=-1),
        "per_class": Option(int, 2, "Samples shown per true class, with labels.", min=1),
        "max_samples": Option(int, 8, "Samples shown at most.", min=1, max=64),
        "sanity_check": Option(bool, True, "Run the weight-randomisation test."),
        "similarity_threshold": Option(
            float,
            0.5,
            "Rank correlation with the randomised model above which a method is flagged.",
            min=0.0,
            max=1.0,
        ),
        "faithfulness_steps": Option(int, 16, "Deletion / insertion steps.", min=1, max=256),
    }

    @classmethod
    def validate(cls, model: Any, options: dict[str, Any]) -> None:
        """Refuse a `layer` the model lacks, or a `class_index` beyond its classes."""
        if options["layer"]:
            check_path(model, options["layer"].split("/"))
        classes = _class_count(model, parse_output(options["output"]))
        if classes is not None and options["class_index"] >= classes:
            raise KeraslensError(
                f"heatmaps.class_index={options['class_index']} is not a class of the explained "
                f"output, which has {classes}: use 0 to {classes - 1}, or -1 for each sample's own."
            )

    def analyze(self, ctx: AnalysisContext) -> PluginResult:
        if not isinstance(ctx.sample, np.ndarray):
            return _skipped_all("the model takes several inputs; heatmaps explain one input.")
        try:
            require_continuous_input(ctx.model, ctx.sample)
        except KeraslensError as error:
            return _skipped_all(str(error))
        options = ctx.options
        labels = _class_labels(ctx.labels)
        shown = _pick_samples(labels, len(ctx.sample), options["per_class"], options["max_samples"])
        x = ctx.sample[shown]
        output = parse_output(options["output"])
        layer = options["layer"] or last_spatial_layer(ctx.model, input_shape_of(ctx.model, x))
        targets = _targets(options, None if labels is None else labels[shown])
        result = PluginResult(data={"layer": layer, "samples": shown, "methods": {}})
        maps, prediction = {}, None
        for method in options["methods"]:
            try:
                report, explanation = self._assess(ctx, x, method, targets, layer, output)
            except KeraslensError as error:
                result.data["methods"][method] = {"skipped": str(error)}
                result.findings.append(_skip_finding(method, str(error)))
                continue
            result.data["methods"][method] = report
            maps[METHODS[method].title] = explanation.maps
            if prediction is None:
                prediction = explanation
            result.findings += _sanity_findings(method, report, options["similarity_threshold"])
        result.tables.append(_table(result.data["methods"]))
        if prediction is not None:
            result.data.update(
                predicted=prediction.predicted, scores=prediction.scores, targets=prediction.targets
            )
            if not ctx.minimal:
                result.figures.append(_grid(x, maps, prediction, labels, shown, layer))
        return result

    def _assess(self, ctx, x, method, targets, layer, output) -> tuple[dict[str, Any], Any]:
        options = ctx.options
        layer = layer if METHODS[method].uses_layer else None
        seeded = {"seed": ctx.seed} if method == "smoothgrad" else {}
        correlation = trustworthy = None
        if options["sanity_check"]:
            test = randomization_test(
                ctx.model, x, method, targets, layer, output=output, weights_seed=ctx.seed, **seeded
            )
            explanation, correlation = test.trained, test.mean_correlation
            trustworthy = test.passes(options["similarity_threshold"])
        else:
            explanation = explain(ctx.model, x, method, targets, layer, output=output, **seeded)
        faithfulness = deletion_insertion(
            ctx.model,
            x,
            explanation.maps,
            explanation.targets,
            output=output,
            steps=options["faithfulness_steps"],
        )
        report = {
            "flat_maps": int(np.sum(np.ptp(explanation.maps.reshape(len(x), -1), axis=1) == 0)),
            "rank_correlation": correlation,
            "trustworthy": trustworthy,
            "deletion_auc": float(faithfulness.deletion.mean()),
            "insertion_auc": float(faithfulness.insertion.mean()),
        }
        return report, explanation


def _class_count(model: Any, output: int | str | None) -> int | None:
    """Classes of the output chosen by index (or the only one), None when it cannot be told."""
    try:
        outputs = list(model.outputs)
    except (AttributeError, ValueError, TypeError):  # a subclassed model has no symbolic outputs
        return None
    if output is None and len(outputs) == 1:
        return outputs[0].shape[-1]
    if isinstance(output, int) and -len(outputs) <= output < len(outputs):
        return outputs[output].shape[-1]
    return None


def _class_labels(labels: np.ndarray | None) -> np.ndarray | None:
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] > 1:
        return labels.argmax(axis=1)
    return labels.reshape(len(labels)).astype(np.int64)


def _pick_samples(labels: np.ndarray | None, count: int, per_class: int, limit: int) -> list[int]:
    """A few samples of each class, classes in turn, or the first ones without labels."""
    if labels is None:
        return list(range(min(limit, count)))
    by_class = [np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]
    rounds = [[int(group[i]) for group in by_class if i < len(group)] for i in range(per_class)]
    return sorted(sum(rounds, [])[:limit])


def _targets(options: dict[str, Any], labels: np.ndarray | None) -> Any:
    if options["class_index"] >= 0:
        return options["class_index"]
    if options["target"] == "label":
        if labels is None:
            raise KeraslensError(
                "heatmaps.target is 'label' but no labels were given; pass labels or use "
                "target='predicted'."
            )
        return labels
    return None


def _skip_finding(method: str, reason: str) -> Finding:
    return Finding(
        severity="info",
        message=f"{METHODS[method].title} skipped: {reason}",
        label="method skipped",
    )


def _sanity_findings(method: str, report: dict[str, Any], threshold: float) -> list[Finding]:
    title = METHODS[method].title
    findings = []
    if report["flat_maps"]:
        findings.append(
            Finding(
                severity="warning",
                message=(
                    f"{title} gives a flat map (nothing highlighted) for {report['flat_maps']} "
                    "of the shown samples: the weighted activations are all negative and its "
                    "ReLU removes them, common at a layer followed by Flatten and Dense."
                ),
                value=report["flat_maps"],
                label="flat heatmap",
                fix="Use layercam or gradcam++, or take the map at an earlier layer "
                "(heatmaps.layer).",
            )
        )
    correlation = report["rank_correlation"]
    if correlation is not None and correlation >= threshold:
        findings.append(
            Finding(
                severity="warning",
                message=(
                    f"{title} maps barely change when the model's weights are randomised (rank "
                    f"correlation {correlation:.2f} >= {threshold}): they show the input more "
                    "than what this model learned."
                ),
                value=correlation,
                threshold=threshold,
                threshold_name="heatmaps.similarity_threshold",
                label="untrustworthy heatmap",
                fix=f"Do not read {title} maps for this model; prefer a method that passes.",
            )
        )
    return findings


def _table(methods: dict[str, dict[str, Any]]) -> Table:
    rows = []
    for method, report in methods.items():
        if "skipped" in report:
            rows.append([METHODS[method].title, None, "skipped", None, None])
            continue
        verdict = {True: "passes", False: "flagged", None: "not run"}[report["trustworthy"]]
        rows.append(
            [
                METHODS[method].title,
                report["rank_correlation"],
                verdict,
                report["deletion_auc"],
                report["insertion_auc"],
            ]
        )
    return Table(
        title="Sanity checks (randomisation: lower correlation is better; deletion AUC: lower "
        "is better; insertion AUC: higher is better)",
        columns=[
            "method",
            "rank correlation",
            "randomisation test",
            "deletion AUC",
            "insertion AUC",
        ],
        rows=rows,
    )


def _grid(x, maps, prediction, labels, shown, layer) -> Figure:
    row_labels = [
        f"pred {p} ({s:.2f})" + ("" if labels is None else f"\ntrue {labels[i]}")
        for p, s, i in zip(prediction.predicted, prediction.scores, shown, strict=True)
    ]
    caption = f"CAM layer: {layer}. " if layer else ""
    return Figure.from_matplotlib(
        heatmap_grid(x, maps, row_labels),
        title="Heatmaps",
        caption=caption + "Each map is normalised to [0, 1] per sample.",
        dpi=72,
    )


def _skipped_all(reason: str) -> PluginResult:
    return PluginResult(
        data={"skipped": reason},
        findings=[Finding(severity="info", message=f"Heatmaps skipped: {reason}", label="skipped")],
    )
