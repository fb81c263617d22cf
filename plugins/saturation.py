"""saturation: units of bounded activations stuck at a bound, where gradients vanish."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from keraslens.plugin import AnalysisContext, Option, Plugin, PluginResult, Table
from plugins import _common

if TYPE_CHECKING:
    from keraslens.capture import LayerStats

_FIX = (
    "Scale the inputs (standardise them), use Glorot initialisation, add normalisation "
    "(BatchNormalization/LayerNormalization) before the activation, or use a "
    "non-saturating activation (ReLU, GELU)."
)
_OUTPUT_NOTE = (
    " The layer is an output of the model: a confident classifier saturates its outputs "
    "by design, so this is only a concern if the predictions are poor."
)


def saturated_units(
    stats: LayerStats, saturated_rate: float
) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """Per unit of a bounded layer: the fraction of outputs at a bound, and which bound.

    An output is at a bound when it lies within `stats.epsilon` of it (on the
    activation's output scale). A unit is saturated when at least `saturated_rate` of
    its outputs are at a bound (either one). A capped ReLU (relu6) saturates at its cap
    only: at 0 it is inactive, as any ReLU is, which the dead-neuron analysis covers.

    Returns:
        The per-unit fraction of outputs at a bound, the mask of saturated units, and
        per unit the bound most of those outputs sit at: "lower", "upper", "both" (as
        many at each) or None (never at a bound).
    """
    lower = np.nan_to_num(stats.lower_rate) * saturates_at_lower(stats)
    upper = np.nan_to_num(stats.upper_rate)
    at_bound = lower + upper
    bound = [
        "lower" if lo > up else "upper" if up > lo else "both" if lo > 0 else None
        for lo, up in zip(lower, upper, strict=True)
    ]
    return at_bound, at_bound >= saturated_rate, bound


def saturates_at_lower(stats: LayerStats) -> bool:
    """Whether outputs at the activation's lower bound are saturated (not for a ReLU)."""
    from keraslens.capture.activations import RELU_FAMILY

    return stats.activation not in RELU_FAMILY


class Saturation(Plugin):
    """Find units of bounded activations that sit at a bound, where gradients vanish.

    Bounded activations are sigmoid, hard_sigmoid, tanh, hard_tanh, softsign, relu6
    (at its upper bound only) and softmax. Per layer: `units` (per-unit fraction of
    outputs within `epsilon` of a bound), `bound` (which bound, per unit), `saturated_units` and
    `saturated_fraction`. A layer whose saturated fraction exceeds `threshold` gets a
    finding: a warning, or an error when more than half of its units are saturated;
    "info" for a layer that is an output of the model.

    Example:

    ```python
    result = keraslens.analyze(model, x_val, plugins=["saturation"],
                               options={"saturation": {"epsilon": 0.05}})
    result.to_dict()["plugins"]["saturation"]["layers"]["dense"]["saturated_fraction"]
    ```
    """

    name = "saturation"
    title = "Saturation"
    description = "Units of bounded activations (sigmoid, tanh, ...) stuck at a bound."
    needs = frozenset({"stats"})
    training_metrics = {"saturated_fraction": "threshold"}
    options = {
        "epsilon": Option(
            float,
            0.01,
            "Distance from a bound (on the activation's output scale) that counts as at it.",
            min=0.0,
            max=0.25,
        ),
        "saturated_rate": Option(
            float,
            0.5,
            "A unit is saturated when at least this fraction of its outputs are at a bound.",
            min=0.0,
            max=1.0,
        ),
        "threshold": Option(
            float,
            0.2,
            "Saturated fraction of a layer above which it gets a finding.",
            min=0.0,
            max=1.0,
        ),
    }

    @classmethod
    def capture_settings(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """The capture counts outputs within `epsilon` of a bound."""
        return {"epsilon": options["epsilon"]}

    def analyze(self, ctx: AnalysisContext) -> PluginResult:
        """Measure saturation in every captured layer with a bounded activation."""
        rate, threshold = ctx.options["saturated_rate"], ctx.options["threshold"]
        outputs = _common.model_output_keys(ctx)
        layers, findings, rows = {}, [], []
        for key, stats in ctx.stats.items():
            if stats.bounds is None:
                continue
            at_bound, saturated, bound = saturated_units(stats, rate)
            entry = {
                "activation": stats.activation,
                "bounds": list(stats.bounds),
                "epsilon": stats.epsilon,
                "unit_count": stats.units,
                "saturated_units": _common.unit_indices(saturated),
                "saturated_fraction": _common.fraction(saturated.sum(), stats.units),
                "units": at_bound,
                "bound": bound,
            }
            layers[key] = entry
            rows.append(_row(key, entry))
            finding = _finding(key, stats, entry, rate, threshold, key in outputs)
            if finding is not None:
                findings.append(finding)
        result = PluginResult(
            data={"layers": layers},
            findings=findings,
            tables=[Table("Saturated units per bounded layer", _COLUMNS, rows)],
        )
        if not ctx.minimal and layers:
            result.figures = _figures(layers, threshold)
        return result


_COLUMNS = ["layer", "activation", "units", "saturated", "saturated fraction", "mostly at"]


def _row(key: str, entry: dict[str, Any]) -> list[Any]:
    at = [entry["bound"][u] for u in entry["saturated_units"]]
    mostly = max(("lower", "upper", "both"), key=at.count) if at else ""
    return [
        key,
        entry["activation"],
        entry["unit_count"],
        len(entry["saturated_units"]),
        round(entry["saturated_fraction"], 4),
        mostly,
    ]


def _finding(key, stats: LayerStats, entry, rate: float, threshold: float, is_output: bool):
    units, share = entry["saturated_units"], entry["saturated_fraction"]
    low, high = stats.bounds
    bounds = f"a bound ({low:g} or {high:g})" if saturates_at_lower(stats) else f"its cap {high:g}"
    message = (
        f"{len(units)} of {stats.units} units of layer {key!r} ({stats.activation}) are within "
        f"{stats.epsilon:g} of {bounds} in at least {rate:.0%} of their "
        f"outputs: {share:.0%} saturated, above the threshold of {threshold:.0%}. Gradients "
        "through saturated units vanish, so they barely learn."
    )
    return _common.layer_fraction_finding(
        plugin=Saturation.name,
        layer=key,
        units=units,
        value=share,
        threshold=threshold,
        label="saturated units",
        message=message + (_OUTPUT_NOTE if is_output else ""),
        fix=_FIX,
        severity="info" if is_output else None,
    )


def _figures(layers: dict[str, dict[str, Any]], threshold: float) -> list:
    figures = [
        _common.layer_bars_figure(
            {"saturated": {key: e["saturated_fraction"] for key, e in layers.items()}},
            threshold=threshold,
            title="Saturated units per bounded layer",
            xlabel="fraction of the layer's units",
            caption="The dashed line is saturation.threshold.",
        )
    ]
    mean_at_bound = {key: float(np.mean(e["units"])) for key, e in layers.items()}
    for key in _common.top_layers(mean_at_bound, _common.MAX_LAYER_FIGURES, positive=True):
        figures.append(
            _common.unit_grid_figure(
                np.asarray(layers[key]["units"]),
                title=f"Outputs at a bound, per unit of {key}",
                layer=key,
                cmap="rocket_r",
                vmin=0,
                vmax=1,
                colorbar_label="fraction of outputs at a bound",
            )
        )
    return figures
