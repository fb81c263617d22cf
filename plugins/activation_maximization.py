"""activation-maximization: the inputs that most excite chosen units, next to the data's best."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from keraslens.errors import KeraslensError
from keraslens.plugin import AnalysisContext, Figure, Finding, Option, Plugin, PluginResult, Table

if TYPE_CHECKING:
    from keraslens.capture import LayerStats

FULL_STEPS = 100
"""Steps of a model up to `SMALL_MODEL` parameters."""
MIN_STEPS = 20
"""The fewest steps chosen automatically, however large the model."""
SMALL_MODEL = 1_000_000
"""Parameters up to which a model gets `FULL_STEPS`; beyond, steps fall as 1/sqrt(size)."""


def auto_steps(parameters: int) -> int:
    """Steps chosen for a model of `parameters` weights.

    A step costs one batched forward and backward pass, roughly proportional to the
    model's size, and larger models reach their best input in fewer steps of the same
    relative size: `FULL_STEPS` up to `SMALL_MODEL` parameters, then
    `FULL_STEPS * sqrt(SMALL_MODEL / parameters)`, at least `MIN_STEPS` (ResNet50: 20).
    """
    if parameters <= SMALL_MODEL:
        return FULL_STEPS
    return max(MIN_STEPS, int(FULL_STEPS * math.sqrt(SMALL_MODEL / parameters)))


class ActivationMaximization(Plugin):
    """Synthesise the input that maximises each chosen unit.

    Units: the output classes (their pre-softmax scores) of each output, or of the one
    named, and, per selected layer, the `units_per_end` most and least active units of the
    capture statistics. All units of a layer are optimised in one batch by one compiled
    loop (`keraslens.maximize`). Inputs stay within the range of the data, start from a
    seeded uniform draw and are regularised by total variation and an L2 norm. Each unit's
    reached activation is compared with the best natural sample of the data sample; a unit
    the optimisation could not push past the data gets a finding.

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
            list, [], "Layer paths whose units to maximise; empty: the heatmaps' default layer."
        ),
        "units_per_end": Option(
            int, 2, "Most and least active units taken per layer.", min=1, max=16
        ),
        "classes": Option(list, [], "Output classes to maximise; empty: the first max_classes."),
        "max_classes": Option(
            int, 10, "Classes maximised per output when none are listed.", min=0, max=64
        ),
        "output": Option(str, "", "Output (name or index) to explain; empty: each output."),
        "steps": Option(
            int, 0, "Gradient-ascent steps; 0: chosen for the model's size.", min=0, max=10000
        ),
        "learning_rate": Option(float, 0.05, "Adam step, per unit of input range.", min=0.0),
        "tv_weight": Option(float, 5.0, "Total-variation penalty weight.", min=0.0),
        "l2_weight": Option(float, 0.5, "L2 penalty weight.", min=0.0),
    }

    @classmethod
    def validate(cls, model: Any, options: dict[str, Any]) -> None:
        """Refuse a path in `layers` that the model does not have, listing what it has."""
        from keraslens.attr.compat import check_path

        for layer in options["layers"]:
            check_path(model, layer.split("/"))

    def analyze(self, ctx: AnalysisContext) -> PluginResult:
        from keraslens.attr.compat import input_shape_of

        reason = _skip_reason(ctx)
        if reason is not None:
            return PluginResult(
                data={"skipped": reason},
                findings=[Finding(severity="info", message=f"Skipped: {reason}", label="skipped")],
            )
        options = ctx.options
        x = ctx.sample.astype(np.float32)
        shape = input_shape_of(ctx.model, x)
        chosen = _chosen(ctx.model, options)
        settings = {
            "steps": chosen["steps"]["value"],
            "seed": ctx.seed,
            "input_range": (float(x.min()), float(x.max())),
            "input_shape": shape,
            "learning_rate": options["learning_rate"],
            "tv_weight": options["tv_weight"],
            "l2_weight": options["l2_weight"],
        }
        targets = _targets(ctx, x, shape, options)
        result = PluginResult(
            data={"input_range": list(settings["input_range"]), "chosen": chosen, "layers": {}}
        )
        rows = []
        synthesised = _synthesise(ctx.model, targets, settings)
        natural = _natural(ctx.model, x, targets)
        for name, (layer, _, units) in targets.items():
            if len(units) == 0:
                continue
            report, figure = _report(
                x, name, layer, units, synthesised[name], natural[name], settings
            )
            result.data["layers"][name] = report
            rows += [[name, *row] for row in _rows(report)]
            result.findings += _findings(name, layer, report)
            if not ctx.minimal:
                result.figures.append(figure)
        result.tables += [
            Table(
                title="Reached activation vs the best natural sample",
                columns=["layer", "unit", "reached", "best in data", "best sample"],
                rows=rows,
            ),
            Table(
                title="Settings chosen for this model",
                columns=["setting", "value", "why"],
                rows=[[key, c["value"], c["why"]] for key, c in chosen.items()],
            ),
        ]
        return result


def _skip_reason(ctx: AnalysisContext) -> str | None:
    from keraslens.attr.compat import require_continuous_input

    if not isinstance(ctx.sample, np.ndarray):
        return "the model takes several inputs; activation maximization needs one."
    try:
        require_continuous_input(ctx.model, ctx.sample)
    except KeraslensError as error:
        return str(error)
    return None


def _chosen(model, options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Setting -> its value and why: the settings that depend on the model."""
    parameters = int(model.count_params())
    if options["steps"]:
        steps, why = options["steps"], "set by activation-maximization.steps"
    else:
        steps = auto_steps(parameters)
        why = (
            f"{parameters:,} parameters: {FULL_STEPS} steps up to {SMALL_MODEL:,}, "
            f"then fewer as 1/sqrt(parameters), at least {MIN_STEPS}"
        )
    return {"steps": {"value": steps, "why": why}}


def _targets(ctx: AnalysisContext, x: np.ndarray, shape: tuple, options) -> dict[str, tuple]:
    """Report name -> (layer or None, output, units): each output's classes, then the
    extreme units of each layer."""
    from keraslens.attr.compat import functional_view, parse_output

    names = functional_view(ctx.model, shape).output_names
    output = parse_output(options["output"])
    outputs = [output] if output is not None else (list(names) if len(names) > 1 else [None])
    targets = {}
    for chosen in outputs:
        name = "output classes" if chosen is None else f"classes of output {chosen}"
        targets[name] = (None, chosen, _classes(ctx, x, options, chosen))
    # A layer's units do not depend on the output; any one builds the layer's graph.
    any_output = None if len(names) == 1 else names[0]
    for layer in options["layers"] or _default_layers(ctx.model, shape):
        units = _extreme_units(ctx.stats, layer, ctx.model, x, options, any_output)
        targets[layer] = (layer, any_output, units)
    return targets


def _classes(ctx: AnalysisContext, x: np.ndarray, options: dict[str, Any], output) -> list[int]:
    from keraslens.attr.compat import input_shape_of
    from keraslens.vis.maximize import unit_count

    if options["classes"]:
        try:
            return [int(c) for c in options["classes"]]
        except ValueError:
            raise KeraslensError(
                f"activation-maximization.classes must be class indices, got {options['classes']}."
            ) from None
    # The class count is the score graph's width: no pass of the model is needed.
    count = unit_count(ctx.model, None, input_shape_of(ctx.model, x), output)
    return list(range(min(count, options["max_classes"])))


def _default_layers(model, shape: tuple) -> list[str]:
    """The heatmaps' default layer (the last spatial one), else the last layer before the
    output (a dense or recurrent model)."""
    from keraslens.attr.layers import last_spatial_layer, layer_shapes

    spatial = last_spatial_layer(model, shape)
    if spatial is not None:
        return [spatial]
    return [path for path, _ in layer_shapes(model, shape)][-2:-1]


def _extreme_units(
    stats: dict[str, LayerStats] | None, layer: str, model, x: np.ndarray, options, output
) -> list[int]:
    """The most and least active units by mean activation (capture statistics, else the
    sample), by decreasing mean."""
    from keraslens.vis.maximize import unit_activations

    if stats and layer in stats:
        mean = np.asarray(stats[layer].mean)
    else:
        mean = unit_activations(model, layer, x, output).mean(axis=0)
    order = np.argsort(-mean, kind="stable")
    per_end = options["units_per_end"]
    return list(dict.fromkeys([*order[:per_end].tolist(), *order[-per_end:].tolist()]))


def _synthesise(model, targets: dict[str, tuple], settings: dict[str, Any]) -> dict[str, Any]:
    """Report name -> its `Maximization`. A layer's units and the classes of the output its
    model ends at are maximised together (one trace, one batch per step); the rest alone."""
    from keraslens.vis.maximize import maximize, maximize_with_classes

    classes = {
        output: name
        for name, (layer, output, units) in targets.items()
        if layer is None and len(units)
    }
    found = {}
    for name, (layer, output, units) in targets.items():
        partner = classes.get(output)
        if layer is None or len(units) == 0 or partner is None or partner in found:
            continue
        found[name], found[partner] = maximize_with_classes(
            model, layer, units, targets[partner][2], output=output, **settings
        )
    for name, (layer, output, units) in targets.items():
        if name not in found and len(units):
            found[name] = maximize(model, layer, units, output=output, **settings)
    return found


def _natural(model, x: np.ndarray, targets: dict[str, tuple]) -> dict[str, np.ndarray]:
    """Report name -> `(N, units)` activations of its units on the data sample. A layer's
    units and its output's classes come from one pass (the graph gives both)."""
    from keraslens.vis.maximize import class_and_unit_activations

    layers = {output: layer for layer, output, units in targets.values() if layer and len(units)}
    passes: dict[tuple, tuple] = {}
    natural = {}
    for name, (layer, output, units) in targets.items():
        if len(units) == 0:
            continue
        at = layer or layers.get(output)
        if (at, output) not in passes:
            passes[at, output] = class_and_unit_activations(model, at, x, output)
        classes, values = passes[at, output]
        natural[name] = (values if layer else classes)[:, units]
    return natural


def _report(x, name, layer, units, synthesised, natural, settings) -> tuple[dict[str, Any], Figure]:
    from keraslens.vis.figures import maximization_montage

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
        title=f"Activation maximization: {name}",
        caption=(
            f"{settings['steps']} steps, seed {settings['seed']}, all {len(units)} units in "
            "one batch. Top: synthesised input and the activation it reaches (pre-softmax "
            "score for classes, mean over positions for conv filters); bottom: the sample, "
            f"of the {len(x)} of the data sample, that activates it most."
        ),
        layer=layer,
        dpi=64,
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


def _findings(name: str, layer: str | None, report: dict[str, Any]) -> list[Finding]:
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
            layer=layer,
            units=behind,
            label="maximization below data",
            fix="Raise activation-maximization.steps or learning_rate, or lower the penalties.",
        )
    ]
