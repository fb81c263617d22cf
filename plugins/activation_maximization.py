"""activation-maximization: the inputs that most excite chosen units, next to the data's best."""

from __future__ import annotations

from typing import Any

import numpy as np

from keraslens.capture import LayerStats
from keraslens.errors import KeraslensError
from keraslens.plugin import AnalysisContext, Figure, Finding, Option, Plugin, PluginResult, Table
from keraslens.vis.compat import input_shape_of, parse_output, require_continuous_input
from keraslens.vis.figures import maximization_montage
from keraslens.vis.layers import is_spatial, layer_shapes
from keraslens.vis.maximize import maximize, unit_activations


class ActivationMaximization(Plugin):
    """Synthesise the input that maximises each chosen unit, with tf-keras-vis.

    Units: the output classes (their pre-softmax scores) and, per selected layer, the
    `units_per_end` most and least active units of the capture statistics. Inputs stay
    within the range of the data, start from a seeded uniform draw and are regularised by
    total variation and an L2 norm. Each unit's reached activation is compared with the
    best natural sample of the data sample; a unit the optimisation could not push past
    the data gets a finding.

    Example:

    ```python
    result = keraslens.analyze(model, x_val, plugins=["activation-maximization"],
                               options={"activation-maximization": {"layers": ["conv2"]}})
    result.to_dict()["plugins"]["activation-maximization"]["layers"]["conv2"]["reached"]
    ```
    """

    name = "activation-maximization"
    title = "Activation maximization"
    description = "Inputs synthesised to maximise classes and units, against the data's best."
    needs = frozenset({"stats", "sample"})
    expensive = True
    options = {
        "layers": Option(
            list, [], "Layer paths whose units to maximise; empty: the last spatial layer."
        ),
        "units_per_end": Option(
            int, 2, "Most and least active units taken per layer.", min=1, max=16
        ),
        "classes": Option(list, [], "Output classes to maximise; empty: the first max_classes."),
        "max_classes": Option(int, 10, "Classes maximised when none are listed.", min=0, max=64),
        "output": Option(str, "", "Output (name or index) whose classes to maximise."),
        "steps": Option(int, 100, "Gradient-ascent steps.", min=1, max=10000),
        "learning_rate": Option(float, 0.05, "Adam step, per unit of input range.", min=0.0),
        "tv_weight": Option(float, 5.0, "Total-variation penalty weight.", min=0.0),
        "l2_weight": Option(float, 0.5, "L2 penalty weight.", min=0.0),
    }

    def analyze(self, ctx: AnalysisContext) -> PluginResult:
        reason = None
        if not isinstance(ctx.sample, np.ndarray):
            reason = "the model takes several inputs; activation maximization needs one."
        else:
            try:
                require_continuous_input(ctx.model, ctx.sample)
            except KeraslensError as error:
                reason = str(error)
        if reason is not None:
            return PluginResult(
                data={"skipped": reason},
                findings=[Finding(severity="info", message=f"Skipped: {reason}", label="skipped")],
            )
        options = ctx.options
        x = ctx.sample.astype(np.float32)
        output = parse_output(options["output"])
        settings = {
            "steps": options["steps"],
            "seed": ctx.seed,
            "input_range": (float(x.min()), float(x.max())),
            "input_shape": input_shape_of(ctx.model, x),
            "output": output,
            "learning_rate": options["learning_rate"],
            "tv_weight": options["tv_weight"],
            "l2_weight": options["l2_weight"],
        }
        targets = {None: _classes(ctx, x, options, output)}
        for layer in options["layers"] or _default_layers(ctx, x):
            targets[layer] = _extreme_units(ctx.stats, layer, ctx.model, x, options)
        result = PluginResult(data={"input_range": list(settings["input_range"]), "layers": {}})
        rows = []
        for layer, units in targets.items():
            if len(units) == 0:
                continue
            name = layer or "output classes"
            report, figure = _maximize_layer(ctx, x, layer, units, settings)
            result.data["layers"][name] = report
            rows += [[name, *row] for row in _rows(report)]
            result.findings += _findings(name, report)
            if not ctx.minimal:
                result.figures.append(figure)
        result.tables.append(
            Table(
                title="Reached activation vs the best natural sample",
                columns=["layer", "unit", "reached", "best in data", "best sample"],
                rows=rows,
            )
        )
        return result


def _classes(ctx: AnalysisContext, x: np.ndarray, options: dict[str, Any], output) -> list[int]:
    if options["classes"]:
        try:
            return [int(c) for c in options["classes"]]
        except ValueError:
            raise KeraslensError(
                f"activation-maximization.classes must be class indices, got {options['classes']}."
            ) from None
    count = unit_activations(ctx.model, None, x[:1], output).shape[1]
    return list(range(min(count, options["max_classes"])))


def _default_layers(ctx: AnalysisContext, x: np.ndarray) -> list[str]:
    """The last spatial layer, else the last captured layer before the output."""
    shapes = list(layer_shapes(ctx.model, input_shape_of(ctx.model, x)))[:-1]
    captured = [(path, shape) for path, shape in shapes if not ctx.stats or path in ctx.stats]
    spatial = [path for path, shape in captured if is_spatial(shape)]
    if spatial:
        return spatial[-1:]
    return [path for path, _ in captured][-1:]


def _extreme_units(
    stats: dict[str, LayerStats] | None, layer: str, model, x: np.ndarray, options
) -> list[int]:
    """The most and least active units by mean activation (capture statistics, else the
    sample), by decreasing mean."""
    if stats and layer in stats:
        mean = np.asarray(stats[layer].mean)
    else:
        mean = unit_activations(model, layer, x).mean(axis=0)
    order = np.argsort(-mean, kind="stable")
    per_end = options["units_per_end"]
    return list(dict.fromkeys([*order[:per_end].tolist(), *order[-per_end:].tolist()]))


def _maximize_layer(ctx, x, layer, units, settings) -> tuple[dict[str, Any], Figure]:
    synthesised = maximize(ctx.model, layer, units, **settings)
    natural = unit_activations(ctx.model, layer, x, settings["output"])[:, units]
    best = natural.argmax(axis=0)
    report = {
        "units": units,
        "reached": synthesised.activations,
        "best_natural": natural.max(axis=0),
        "best_sample": best,
    }
    unit_name = "class" if layer is None else "unit"
    figure = Figure.from_matplotlib(
        maximization_montage(
            synthesised.inputs,
            synthesised.activations,
            units,
            x[best],
            natural.max(axis=0),
            unit_name,
        ),
        title=f"Activation maximization: {layer or 'output classes'}",
        caption=(
            f"{settings['steps']} steps, seed {settings['seed']}. Top: synthesised input and "
            "the activation it reaches (pre-softmax score for classes, mean over positions for "
            "conv filters); bottom: the sample of the data sample that activates it most."
        ),
        layer=layer,
        dpi=72,
    )
    return report, figure


def _rows(report: dict[str, Any]) -> list[list[Any]]:
    return [
        [unit, float(reached), float(natural), int(sample)]
        for unit, reached, natural, sample in zip(
            report["units"],
            report["reached"],
            report["best_natural"],
            report["best_sample"],
            strict=True,
        )
    ]


def _findings(name: str, report: dict[str, Any]) -> list[Finding]:
    behind = [
        unit
        for unit, reached, natural in zip(
            report["units"], report["reached"], report["best_natural"], strict=True
        )
        # A unit at zero on the data and after ascent is dead: no gradient to follow.
        if reached <= natural and not reached == natural == 0
    ]
    if not behind:
        return []
    return [
        Finding(
            severity="info",
            message=(
                f"{name}: for {len(behind)} unit(s) the synthesised input does not beat the "
                "best natural sample, so these pictures show a local optimum, not the unit's "
                "preferred input."
            ),
            layer=None if name == "output classes" else name,
            units=behind,
            label="maximization below data",
            fix="Raise activation-maximization.steps or learning_rate, or lower the penalties.",
        )
    ]
