"""dead-neurons: units that never fire on the data, and units that almost never do."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from keraslens.plugin import AnalysisContext, Finding, Option, Plugin, PluginResult, Table
from plugins import _common

if TYPE_CHECKING:
    from keraslens.capture import LayerStats

_FIRES = "fires"
_CONSTANT = "constant"

_CAUSES = {
    _FIRES: (
        "Likely causes: a learning rate so high that an update pushed the pre-activations "
        "below zero for good, an initialisation that starts them there, or large negative "
        "biases.",
        "Lower the learning rate; use He initialisation and a zero or small positive bias "
        "initialiser; or switch to LeakyReLU/ELU, which keep a gradient below zero.",
    ),
    _CONSTANT: (
        "Likely causes: weights that collapsed to zero (a learning rate too high, too much "
        "weight decay) or an input that is itself constant (dead units upstream).",
        "Check the initialisation and the layers that feed it; lower the learning rate or "
        "the weight decay.",
    ),
}


def dead_units(stats: LayerStats, nearly_dead_rate: float) -> tuple[str, np.ndarray, np.ndarray]:
    """Classify the units of one layer as dead or nearly dead.

    A ReLU-family unit is dead when its output is never > 0 (positions pooled) on any
    sample, and nearly dead when it fires in fewer than `nearly_dead_rate` of the
    samples without being dead. Any other unit is dead when its finite outputs, two at
    least, are all equal (min == max); "nearly dead" does not apply to it.

    Returns:
        The rule applied ("fires" or "constant"), and the boolean masks of the dead
        and of the nearly dead units (disjoint).
    """
    from keraslens.capture.activations import RELU_FAMILY

    seen = stats.finite_count > 0
    if stats.activation in RELU_FAMILY:
        dead = seen & (stats.positive_count == 0)
        nearly = seen & ~dead & (stats.sample_firing_rate < nearly_dead_rate)
        return _FIRES, dead, nearly
    dead = _comparable(stats) & (stats.min == stats.max)
    return _CONSTANT, dead, np.zeros_like(dead)


def _comparable(stats: LayerStats) -> np.ndarray:
    """Mask of the units with two finite outputs or more (over samples and positions).

    A single output always equals itself (zero variance by construction): it says
    nothing about whether the unit is constant.
    """
    return stats.finite_count > 1


class DeadNeurons(Plugin):
    """Find units that never fire on the data (dead) or almost never (nearly dead).

    Per layer: `dead_units` and `nearly_dead_units` (unit indices) and their
    fractions of the layer's units. A layer whose dead fraction exceeds `threshold`
    gets a finding with likely causes and fixes: a warning, or an error when more
    than half of its units are dead.

    Example:

    ```python
    result = keraslens.analyze(model, x_val, plugins=["dead-neurons"],
                               options={"dead-neurons": {"threshold": 0.1}})
    result.to_dict()["plugins"]["dead-neurons"]["layers"]["dense"]["dead_units"]
    ```
    """

    name = "dead-neurons"
    title = "Dead neurons"
    description = "Units that never fire (ReLU family) or never change (others) on the data."
    needs = frozenset({"stats"})
    training_metrics = {"dead_fraction": "threshold"}
    options = {
        "threshold": Option(
            float, 0.2, "Dead fraction of a layer above which it gets a finding.", min=0.0, max=1.0
        ),
        "nearly_dead_rate": Option(
            float,
            0.01,
            "A ReLU-family unit firing in fewer than this fraction of samples is nearly dead.",
            min=0.0,
            max=1.0,
        ),
    }

    def analyze(self, ctx: AnalysisContext) -> PluginResult:
        """Classify every unit of every captured layer."""
        rate, threshold = ctx.options["nearly_dead_rate"], ctx.options["threshold"]
        layers, findings, rows, unchecked = {}, [], [], []
        for key, stats in ctx.stats.items():
            rule, dead, nearly = dead_units(stats, rate)
            entry = {
                "activation": stats.activation,
                "rule": rule,
                "unit_count": stats.units,
                "dead_units": _common.unit_indices(dead),
                "dead_fraction": _common.fraction(dead.sum(), stats.units),
                "nearly_dead_units": _common.unit_indices(nearly),
                "nearly_dead_fraction": _common.fraction(nearly.sum(), stats.units),
            }
            layers[key] = entry
            rows.append(_row(key, entry))
            finding = _finding(key, stats, entry, threshold, rate)
            if finding is not None:
                findings.append(finding)
            if rule == _CONSTANT and np.any((stats.finite_count > 0) & ~_comparable(stats)):
                unchecked.append(key)
        if unchecked:
            findings.append(_unchecked_finding(unchecked, ctx.stats[unchecked[0]].samples))
        result = PluginResult(
            data={"layers": layers, **_totals(layers)},
            findings=findings,
            tables=[Table("Dead and nearly dead units per layer", _COLUMNS, rows)],
        )
        if not ctx.minimal and layers:
            result.figures = _figures(layers, threshold)
        return result


_COLUMNS = ["layer", "activation", "rule", "units", "dead", "nearly dead", "dead fraction"]


def _row(key: str, entry: dict[str, Any]) -> list[Any]:
    return [
        key,
        entry["activation"] or "linear/none",
        entry["rule"],
        entry["unit_count"],
        len(entry["dead_units"]),
        len(entry["nearly_dead_units"]),
        round(entry["dead_fraction"], 4),
    ]


def _totals(layers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    units = sum(e["unit_count"] for e in layers.values())
    dead = sum(len(e["dead_units"]) for e in layers.values())
    nearly = sum(len(e["nearly_dead_units"]) for e in layers.values())
    return {
        "unit_count": units,
        "dead_count": dead,
        "dead_fraction": _common.fraction(dead, units),
        "nearly_dead_count": nearly,
        "nearly_dead_fraction": _common.fraction(nearly, units),
    }


def _samples(count: int) -> str:
    return f"{count} sample" if count == 1 else f"{count} samples"


def _finding(key: str, stats: LayerStats, entry: dict[str, Any], threshold: float, rate: float):
    dead, share = entry["dead_units"], entry["dead_fraction"]
    causes, fix = _CAUSES[entry["rule"]]
    fires = entry["rule"] == _FIRES
    what = "never fire (output > 0)" if fires else "always give the same output"
    activation = stats.activation or "no activation"
    message = (
        f"{len(dead)} of {stats.units} units of layer {key!r} ({activation}) {what} on the "
        f"{_samples(stats.samples)} analysed: {share:.0%} dead, above the threshold of "
        f"{threshold:.0%}. {causes}"
    )
    # A unit firing at just under nearly_dead_rate is expected to fire less than once
    # on fewer than 1 / rate samples: there, never firing does not mean dead.
    if fires and 0 < stats.samples * rate < 1:
        message += (
            f" {_samples(stats.samples)} cannot tell a dead unit from one firing "
            f"in fewer than {rate:.0%} of the samples: analyse {math.ceil(1 / rate)} samples "
            "or more to confirm."
        )
    return _common.layer_fraction_finding(
        plugin=DeadNeurons.name,
        layer=key,
        units=dead,
        value=share,
        threshold=threshold,
        label="dead units",
        message=message,
        fix=fix,
    )


def _unchecked_finding(layers: list[str], samples: int) -> Finding:
    names = ", ".join(repr(key) for key in layers)
    return Finding(
        severity="info",
        message=(
            f"Not checked for constant units: {names}, whose units have a single output "
            f"on the {_samples(samples)} analysed, and a single output always equals itself."
        ),
        label="too few samples",
        fix="Analyse 2 samples or more.",
    )


_STATE_COLORS = ["#4c9a5f", "#e0a030", "#b03030"]  # alive, nearly dead, dead


def _figures(layers: dict[str, dict[str, Any]], threshold: float) -> list:
    from matplotlib.colors import ListedColormap

    dead = {key: e["dead_fraction"] for key, e in layers.items()}
    nearly = {key: e["nearly_dead_fraction"] for key, e in layers.items()}
    figures = [
        _common.layer_bars_figure(
            {"dead": dead, "nearly dead": nearly},
            threshold=threshold,
            title="Dead units per layer",
            xlabel="fraction of the layer's units",
            caption="The dashed line is dead-neurons.threshold.",
        )
    ]
    totals = {key: dead[key] + nearly[key] for key in layers}
    for key in _common.top_layers(totals, _common.MAX_LAYER_FIGURES, positive=True):
        state = np.zeros(layers[key]["unit_count"])
        state[layers[key]["nearly_dead_units"]] = 1
        state[layers[key]["dead_units"]] = 2
        figures.append(
            _common.unit_grid_figure(
                state,
                title=f"Unit states of {key}",
                layer=key,
                cmap=ListedColormap(_STATE_COLORS),
                vmin=0,
                vmax=2,
                colorbar_label="",
                ticks=[1 / 3, 1, 5 / 3],
                ticklabels=["alive", "nearly dead", "dead"],
            )
        )
    return figures
