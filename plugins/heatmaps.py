"""heatmaps: where the model looks, per method, with a sanity check and a faithfulness score."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from keraslens.attr.registry import METHODS
from keraslens.errors import KeraslensError
from keraslens.metrics import METRICS, best_method, verdict
from keraslens.plugin import AnalysisContext, Figure, Finding, Option, Plugin, PluginResult, Table

CASCADE_LAYERS = 24
"""Layers with weights up to which `metrics=auto` adds cascading randomisation (one fresh
attribution per layer and method)."""
AUTO_METRICS = ("deletion", "insertion", "mufidelity", "sparseness", "complexity")

SMALL_MODEL = 1_000_000
"""Parameters up to which methods keep their default steps, draws and masks."""
SIZED_OPTIONS = ("steps", "samples", "masks")
MIN_SIZED = 8
"""The fewest steps, draws or subsets a size rule chooses (a curve or a correlation needs a
few points)."""

UPSAMPLED = 4
"""A map upsampled this many times or more from under 7 positions is called coarse."""

DEFAULT_METHODS = ["gradcam", "gradcam++", "integrated-gradients", "saliency", "guided-backprop"]
"""Guided backprop is the randomisation test's known failing control (Adebayo et al., 2018):
with it in the table, the report shows that the check can fail."""


class Heatmaps(Plugin):
    """Attribution heatmaps of a few samples, and whether to trust each method.

    Every method of `keraslens.attribute` can be drawn. For each: the maps of the shown
    samples (a grid of input | overlay), the model-parameter randomisation test of Adebayo
    et al. (2018) (rank correlation between the maps of the model and of a copy with
    permuted weights; a method above `similarity_threshold` is flagged) and deletion /
    insertion AUC (Petsiuk et al., 2018). CAM methods need a layer with positions; on a
    model without one they are skipped, with the reason, and the gradient methods still
    run. Token models are explained at their embedding, one value per token. A model with
    several outputs has each explained in turn unless `output` names one.

    Example:

    ```python
    result = keraslens.analyze(model, x_val, labels=y_val, plugins=["heatmaps"],
                               options={"heatmaps": {"methods": ["gradcam", "smoothgrad"],
                                        "method_options": ["smoothgrad.samples=8"]}})
    result.to_dict()["plugins"]["heatmaps"]["methods"]["gradcam"]["rank_correlation"]
    ```
    """

    name = "heatmaps"
    title = "Attribution heatmaps"
    description = "Every attribution method (Grad-CAM to integrated gradients), sanity-checked."
    needs = frozenset({"sample", "labels", "gradients"})
    expensive = True
    options = {
        "methods": Option(list, DEFAULT_METHODS, "Methods to run.", choices=tuple(METHODS)),
        "method_options": Option(
            list, [], "Per-method options, 'method.option=value' (integrated-gradients.steps=32)."
        ),
        "layer": Option(
            str, "", "Layer path for CAM methods (backbone/conv); empty: last spatial layer."
        ),
        "output": Option(str, "", "Output to explain (name or index); empty: each output."),
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
        "faithfulness_steps": Option(
            int,
            0,
            "Deletion / insertion steps; 0: 16, fewer on models above 1M parameters.",
            min=0,
            max=256,
        ),
        "vocab": Option(str, "", "Token model: a text file, line i the token of id i."),
        "metrics": Option(
            list,
            ["auto"],
            "Explanation metrics per method; auto: the cheap ones, plus cascading "
            f"randomisation on models of at most {CASCADE_LAYERS} layers with weights.",
            choices=("auto", *METRICS),
        ),
    }

    @classmethod
    def parse_options(cls, raw: dict[str, Any]) -> dict[str, Any]:
        options = super().parse_options(raw)
        method_options(options["method_options"])  # refused before any work
        return options

    @classmethod
    def validate(cls, model: Any, options: dict[str, Any]) -> None:
        """Refuse a `layer` the model lacks, or a `class_index` beyond its classes."""
        from keraslens.attr.compat import check_path, parse_output

        if options["layer"]:
            check_path(model, options["layer"].split("/"))
        classes = _class_count(model, parse_output(options["output"]))
        if classes is not None and options["class_index"] >= classes:
            raise KeraslensError(
                f"heatmaps.class_index={options['class_index']} is not a class of the explained "
                f"output, which has {classes}: use 0 to {classes - 1}, or -1 for each sample's own."
            )

    def analyze(self, ctx: AnalysisContext) -> PluginResult:
        from keraslens.attr.compat import parse_output
        from keraslens.attr.inputs import model_inputs

        options = ctx.options
        specs, arrays = model_inputs(ctx.model, ctx.sample)
        labels = _class_labels(ctx.labels)
        shown = _pick_samples(labels, len(arrays[0]), options["per_class"], options["max_samples"])
        sample = [a[shown] for a in arrays]
        outputs = _outputs(ctx.model, parse_output(options["output"]))
        targets = _targets(options, None if labels is None else labels[shown])
        result = PluginResult(data={"samples": shown})
        explained = [None] if len(specs) == 1 else [s.key for s in specs]
        permuted: dict = {}  # permuted weights per seed, shared by every input, output, method
        for index, key in enumerate(explained):
            x = sample[index]
            tokens = np.issubdtype(x.dtype, np.integer)
            layer = options["layer"] or None
            if layer is None and key is None and not tokens:
                layer = _default_layer(ctx.model, x)
            if layer and key is None and not tokens:
                result.findings += _resolution_findings(ctx.model, x, layer)
            data = result.data if key is None else result.data.setdefault("inputs", {})
            data = data if key is None else data.setdefault(key, {})
            data["layer"] = layer
            for output in outputs:
                where = Explained(
                    sample if key is not None else x, x, key, output, layer, tokens, permuted
                )
                part = self._explain_output(ctx, where, targets, labels, shown)
                if len(outputs) == 1:
                    data.update(part.data)
                else:
                    data.setdefault("outputs", {})[str(output)] = part.data
                result.findings += part.findings
                result.tables += part.tables
                result.figures += part.figures
        return result

    def _explain_output(self, ctx, where: Explained, targets, labels, shown) -> PluginResult:
        options = ctx.options
        per_method = method_options(options["method_options"])
        chosen = resolve_metrics(ctx.model, options["metrics"], where.tokens)
        per_metric = metric_options(ctx.model, chosen, options["faithfulness_steps"])
        result = PluginResult(data={"methods": {}, "metric_options": per_metric})
        maps, prediction = {}, None
        for method in options["methods"]:
            uses_layer = METHODS[method].uses_layer
            try:
                if uses_layer and where.layer is None and (where.tokens or where.input):
                    raise KeraslensError(_no_cam_layer(where))
                report, explanation, scores = self._assess(
                    ctx, where, method, targets, per_method.get(method, {}), per_metric
                )
            except KeraslensError as error:
                result.data["methods"][method] = {"skipped": str(error)}
                result.findings.append(_skip_finding(method, str(error)))
                continue
            result.data["methods"][method] = report
            result.data.setdefault("metrics", {})[method] = scores
            maps[METHODS[method].title] = explanation.maps
            if prediction is None:
                prediction = explanation
            result.findings += _sanity_findings(method, report, options["similarity_threshold"])
        suffix = where.suffix
        result.tables.append(_table(result.data["methods"], suffix))
        metrics = result.data.get("metrics", {})
        assessed = {m: v for m, v in metrics.items() if "error" not in v}
        if assessed:
            best = best_method(assessed)
            result.data["best_method"] = best
            result.tables.append(
                _metrics_table(assessed, result.data["methods"], best, per_metric, suffix)
            )
            curves = _cascading_figure(assessed, suffix)
            if curves is not None and not ctx.minimal:
                result.figures.append(curves)
        if prediction is not None:
            result.data.update(
                predicted=prediction.predicted, scores=prediction.scores, targets=prediction.targets
            )
            x = where.array
            if not ctx.minimal and not where.tokens:
                result.figures.append(
                    _grid(x, maps, prediction, labels, shown, where.layer, suffix)
                )
            elif where.tokens:
                vocabulary = read_vocabulary(options["vocab"])
                result.tables.append(_token_table(x, maps, prediction, vocabulary, suffix))
                if not ctx.minimal:
                    result.figures.append(_token_figure(x, maps, prediction, vocabulary, suffix))
        return result

    def _assess(self, ctx, where: Explained, method, targets, overrides, per_metric) -> tuple:
        from keraslens.vis.heatmap import explain
        from keraslens.vis.sanity import randomization_test

        options = ctx.options
        settings = {"seed": ctx.seed} if "seed" in METHODS[method].options else {}
        settings.update(sized_options(ctx.model, METHODS[method].options))
        settings.update(overrides)
        layer = where.layer if METHODS[method].uses_layer else None
        common = {"output": where.output, "input": where.input, **settings}
        correlation = trustworthy = None
        nonfinite = 0
        if options["sanity_check"]:
            test = randomization_test(
                ctx.model,
                where.x,
                method,
                targets,
                layer,
                randomized=where.randomized(ctx.model, ctx.seed),
                **common,
            )
            explanation, correlation = test.trained, test.mean_correlation
            trustworthy, nonfinite = test.passes(options["similarity_threshold"]), test.nonfinite
        else:
            explanation = explain(ctx.model, where.x, method, targets, layer, **common)
        scores = self._metrics(ctx, where, method, explanation, layer, settings, per_metric)
        mean = {name: entry.get("mean") for name, entry in scores.items()}
        report = {
            "options": explanation.settings,
            "flat_maps": int(
                np.sum(np.ptp(explanation.maps.reshape(len(explanation.maps), -1), axis=1) == 0)
            ),
            "nonfinite_maps": nonfinite,
            "rank_correlation": correlation,
            "trustworthy": trustworthy,
            "deletion_auc": mean.get("deletion"),
            "insertion_auc": mean.get("insertion"),
            "verdict": verdict(scores) if scores else "not assessed",
        }
        return report, explanation, scores

    def _metrics(
        self, ctx, where, method, explanation, layer, settings, per_metric
    ) -> dict[str, Any]:
        """`keraslens.evaluate` of the method on the shown samples, for the same targets."""
        from keraslens.metrics import evaluate

        # Metrics that read the map alone take the attributions already computed; only those
        # whose definition needs fresh ones (randomisation, ...) run the method again.
        fresh = any(METRICS[name].needs_method for name in per_metric)
        given = {"layer": layer, **settings} if fresh else {}
        try:
            return evaluate(
                ctx.model,
                where.x,
                method if fresh else explanation.values,
                per_metric,
                explanation.targets,
                output=where.output,
                input=where.input,
                **given,
            )
        except KeraslensError as error:
            return {"error": {"mean": None, "message": str(error)}}


def method_options(items: list[str]) -> dict[str, dict[str, Any]]:
    """`["integrated-gradients.steps=32"]` as `{"integrated-gradients": {"steps": 32}}`.

    Each value is parsed and validated by the method's own option, so a bad one is refused
    before any work.
    """
    parsed: dict[str, dict[str, Any]] = {}
    for item in items:
        method, dot, rest = item.partition(".")
        name, equals, value = rest.partition("=")
        if not dot or not equals or method not in METHODS:
            raise ValueError(
                f"heatmaps.method_options item {item!r} is not 'method.option=value' with a "
                f"method of: {', '.join(METHODS)}."
            )
        declared = METHODS[method].options
        if name not in declared:
            raise ValueError(
                f"heatmaps.method_options: {METHODS[method].title} has no option {name!r}; its "
                f"options: {', '.join(declared) or 'none'}."
            )
        option = declared[name]
        parsed.setdefault(method, {})[name] = (
            _literal(value) if option.type is object else option.parse(name, value)
        )
    return parsed


def _literal(text: str) -> Any:
    """A free-form option from the command line: a JSON number or list (`4`, `[4, 2]`),
    else the text itself (`mean`)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _outputs(model, output) -> list:
    if output is not None:
        return [output]
    try:
        names = list(model.output_names) if len(model.outputs) > 1 else []
    except (AttributeError, ValueError, TypeError):
        names = []
    return names or [None]


def _default_layer(model, x) -> str | None:
    from keraslens.attr.compat import input_shape_of
    from keraslens.attr.layers import last_spatial_layer

    return last_spatial_layer(model, input_shape_of(model, x))


def _resolution_findings(model, x, layer) -> list[Finding]:
    from keraslens.attr.compat import input_shape_of
    from keraslens.attr.layers import FINE_POSITIONS, finer_spatial_layer, layer_shapes

    shape = dict(layer_shapes(model, input_shape_of(model, x))).get(layer)
    if shape is None or len(shape) < 3:
        return []
    coarse = [
        (d or FINE_POSITIONS) < FINE_POSITIONS and size >= UPSAMPLED * d
        for d, size in zip(shape[1:-1], x.shape[1:-1], strict=False)
    ]
    if not any(coarse):
        return []
    finer = finer_spatial_layer(model, input_shape_of(model, x))
    if finer is None:
        return []  # nothing finer to suggest: the input itself is small
    positions = "x".join(str(d) for d in shape[1:-1])
    return [
        Finding(
            severity="info",
            message=(
                f"Class activation maps are taken at {layer!r}, which has {positions} positions: "
                "the maps are blobs at that resolution, upsampled."
            ),
            layer=layer,
            label="coarse heatmap",
            fix=f"Set heatmaps.layer={finer!r} for a finer map.",
        )
    ]


@dataclass(frozen=True)
class Explained:
    """What one pass of the plugin explains: the samples (all inputs), the explained
    input's array and key (None for a one-input model), the output and the CAM layer."""

    x: Any
    array: np.ndarray
    input: str | None
    output: int | str | None
    layer: str | None
    tokens: bool
    permuted: dict = field(default_factory=dict, compare=False)

    def randomized(self, model: Any, seed: int) -> Any:
        """The model's permuted weights, drawn once for every method of this pass."""
        from keraslens.attr.weights import permuted_weights

        if seed not in self.permuted:
            self.permuted[seed] = permuted_weights(model, seed)
        return self.permuted[seed]

    @property
    def suffix(self) -> str:
        """How tables and figures name this pass."""
        parts = [f"input {self.input}"] * (self.input is not None)
        parts += [f"output {self.output}"] * (self.output is not None)
        return f" ({', '.join(parts)})" if parts else ""


def _no_cam_layer(where: Explained) -> str:
    if where.tokens:
        return "class activation maps need positions; tokens have none."
    return (
        f"which layer belongs to input {where.input!r} is not known; name its CAM layer with "
        "heatmaps.layer."
    )


def sized_options(model: Any, declared: dict[str, Option]) -> dict[str, int]:
    """The cost options (`steps`, `samples`, `masks`) among `declared` (a method's or a
    metric's), chosen for the model's size.

    A step, draw, mask or subset costs one pass of the model, so above `SMALL_MODEL`
    parameters the default shrinks as `default * sqrt(SMALL_MODEL / parameters)`, to a
    quarter of it at least, and never below `MIN_SIZED` (ResNet50's 25M parameters:
    integrated gradients at 12 steps instead of 50, MuFidelity at 16 subsets instead of
    64, deletion and insertion at 8 steps instead of 16). The tables say what was chosen;
    `method_options` and `faithfulness_steps` override it.
    """
    parameters = int(sum(np.prod(w.shape) for w in model.weights))
    if parameters <= SMALL_MODEL:
        return {}
    scale = (SMALL_MODEL / parameters) ** 0.5
    sized = {}
    for name in SIZED_OPTIONS:
        default = declared[name].default if name in declared else None
        if isinstance(default, int) and not isinstance(default, bool):
            sized[name] = max(default // 4, int(default * scale), min(default, MIN_SIZED), 1)
    return sized


def metric_options(model: Any, chosen: list[str], steps: int = 0) -> dict[str, dict[str, int]]:
    """Each chosen metric's cost options for this model (`sized_options`); `steps` > 0
    sets the deletion / insertion curves' steps instead."""
    per_metric = {}
    for name in chosen:
        declared = METRICS[name].options
        options = sized_options(model, declared)
        if steps and name in ("deletion", "insertion"):
            options["steps"] = steps
        per_metric[name] = options
    return per_metric


def resolve_metrics(model: Any, chosen: list[str], tokens: bool = False) -> list[str]:
    """The metrics `chosen` names; "auto" is `AUTO_METRICS` (for token ids, which cannot be
    perturbed, those that read the map alone), with cascading randomisation on a model of
    at most `CASCADE_LAYERS` layers with weights."""
    from keraslens.metrics.randomisation import weighted_layers

    if "auto" not in chosen:
        return list(chosen)
    extra = [m for m in chosen if m != "auto"]
    cheap = len(weighted_layers(model)) <= CASCADE_LAYERS
    automatic = [m for m in AUTO_METRICS if not (tokens and METRICS[m].perturbs)]
    automatic += ["randomisation"] if cheap else []
    return list(dict.fromkeys(automatic + extra))


def _metrics_table(by_method, reports, best: str | None, per_metric, suffix: str) -> Table:
    names = list(dict.fromkeys(name for scores in by_method.values() for name in scores))
    rows = []
    for method, scores in by_method.items():
        rows.append(
            [METHODS[method].title, reports[method]["verdict"]]
            + [scores.get(name, {}).get("mean") for name in names]
        )
    title = f"Explanation metrics{suffix}: 95% intervals in the JSON twin"
    if best is not None:
        title += f"; the method to trust most for this model: {METHODS[best].title}"
    sized = [f"{n} {k}={v}" for n, o in per_metric.items() for k, v in o.items() if n in names]
    if sized:
        title += f"; cost settings (for the model's size, or as set): {', '.join(sized)}"
    return Table(
        title=title,
        columns=["method", "verdict"]
        + [f"{name} ({METRICS[name].better} is better)" for name in names],
        rows=rows,
    )


def _cascading_figure(by_method, suffix: str) -> Figure | None:
    from matplotlib.figure import Figure as MplFigure

    curves = {
        m: scores["randomisation"]["cascading"]
        for m, scores in by_method.items()
        if "randomisation" in scores and "cascading" in scores["randomisation"]
    }
    if not curves:
        return None
    figure = MplFigure(figsize=(6, 3.2))
    axes = figure.subplots()
    for method, curve in curves.items():
        axes.plot(np.arange(1, len(curve["mean"]) + 1), curve["mean"], label=METHODS[method].title)
    axes.set_xlabel("layers randomised, from the output down")
    axes.set_ylabel("rank correlation with the trained maps")
    axes.set_ylim(-1, 1)
    axes.legend(fontsize=7)
    return Figure.from_matplotlib(
        figure,
        title="Cascading randomisation" + suffix,
        caption="Maps that stay correlated as the weights are randomised explain the input, "
        "not the model (Adebayo et al., 2018).",
        dpi=72,
    )


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
    if report["nonfinite_maps"]:
        findings.append(
            Finding(
                severity="warning",
                message=(
                    f"{title} gives maps that are not finite (NaN or inf) for "
                    f"{report['nonfinite_maps']} of the shown samples, on the trained or the "
                    "randomised model: the randomisation test cannot pass."
                ),
                value=report["nonfinite_maps"],
                label="non-finite heatmap",
                fix="Check the model for overflow (huge logits) or use another method.",
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


def _verdict(report: dict[str, Any]) -> str:
    if report["nonfinite_maps"]:
        return "flagged: maps not finite"
    if report["trustworthy"] is None:
        return "not run"
    if report["trustworthy"]:
        return "passes"
    if report["rank_correlation"] is None or np.isnan(report["rank_correlation"]):
        return "flagged: flat maps"
    return "flagged"


def _table(methods: dict[str, dict[str, Any]], suffix: str = "") -> Table:
    rows = []
    for method, report in methods.items():
        if "skipped" in report:
            rows.append([METHODS[method].title, "", None, "skipped", None, None])
            continue
        settings = ", ".join(f"{k}={v}" for k, v in (report["options"] or {}).items())
        rows.append(
            [
                METHODS[method].title,
                settings,
                report["rank_correlation"],
                _verdict(report),
                report["deletion_auc"],
                report["insertion_auc"],
            ]
        )
    return Table(
        title="Sanity checks" + suffix + " (randomisation: lower correlation is better; "
        "deletion AUC: lower is better; insertion AUC: higher is better)",
        columns=[
            "method",
            "options",
            "rank correlation",
            "randomisation test",
            "deletion AUC",
            "insertion AUC",
        ],
        rows=rows,
    )


def read_vocabulary(path: str) -> list[str] | None:
    """The token of each id, one per line of `path` (None for no file).

    Raises:
        KeraslensError: when the file cannot be read.
    """
    if not path:
        return None
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return file.read().splitlines()
    except OSError as error:
        raise KeraslensError(
            f"heatmaps.vocab: cannot read {path!r} ({error.strerror}); give a text file "
            "with one token per line."
        ) from None


def _token_table(x, maps, prediction, vocabulary, suffix: str) -> Table:
    """Per shown sample, its tokens by decreasing attribution (the first method's map)."""
    from keraslens.vis.tokens import token_text

    title, values = next(iter(maps.items()))
    rows = []
    for row, (ids, weights) in enumerate(zip(x, values, strict=True)):
        order = np.argsort(-weights, kind="stable")[:5]
        words = token_text(ids[order], vocabulary)
        top = ", ".join(
            f"{word} @{int(i)} ({weights[i]:.2f})" for word, i in zip(words, order, strict=True)
        )
        rows.append([row, int(prediction.predicted[row]), top])
    return Table(
        title=f"Deciding tokens{suffix}: {title}, strongest first (token @position (weight))",
        columns=["sample", "predicted", "top tokens"],
        rows=rows,
    )


def _token_figure(x, maps, prediction, vocabulary, suffix: str) -> Figure:
    from keraslens.vis.tokens import token_figure, token_text

    title, values = next(iter(maps.items()))
    labels = [f"sample {i}: predicted {int(p)}" for i, p in enumerate(prediction.predicted)]
    return Figure.from_matplotlib(
        token_figure([token_text(ids, vocabulary) for ids in x], values, labels),
        title="Tokens" + suffix,
        caption=f"{title}, per token, normalised per sample (white 0, red 1).",
        dpi=72,
    )


def _grid(x, maps, prediction, labels, shown, layer, suffix: str = "") -> Figure:
    from keraslens.vis.figures import heatmap_grid

    row_labels = [
        f"pred {p} ({s:.2f})" + ("" if labels is None else f"\ntrue {labels[i]}")
        for p, s, i in zip(prediction.predicted, prediction.scores, shown, strict=True)
    ]
    caption = f"CAM layer: {layer}. " if layer else ""
    return Figure.from_matplotlib(
        heatmap_grid(x, maps, row_labels),
        title="Heatmaps" + suffix,
        caption=caption + "Each map is normalised to [0, 1] per sample.",
        dpi=72,
    )


def _skipped_all(reason: str) -> PluginResult:
    return PluginResult(
        data={"skipped": reason},
        findings=[Finding(severity="info", message=f"Heatmaps skipped: {reason}", label="skipped")],
    )
