"""The "Training" section: what the training callback recorded, epoch by epoch.

`result.extra["training"]` is a dict with
- `history`: rows `{epoch, layer, dead_fraction, saturated_fraction, mean, std, firing_rate}`;
- `bands` (optional): rows `{epoch, layer, values}` where `values` holds nine numbers:
  min, the values at -1.5/-1/-0.5/0/+0.5/+1/+1.5 standard deviations, and max;
- `thresholds` (optional): metric -> threshold (e.g. `{"dead_fraction": 0.1}`), from
  which the first epoch at which each layer crossed it is derived.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

from keraslens.report import charts

TREND_METRICS = ("dead_fraction", "saturated_fraction", "firing_rate", "mean", "std")


def training_view(training: Any, anchor: Callable[[str, str], str]) -> dict[str, Any] | None:
    """Per-layer trend charts, distribution bands and first crossings, or None."""
    if not isinstance(training, Mapping):
        return None
    history = training.get("history") or []
    by_layer: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in history:
        by_layer[str(row.get("layer"))].append(row)
    band_rows: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in training.get("bands") or []:
        band_rows[str(row.get("layer"))].append(row)
    thresholds = dict(training.get("thresholds") or {})
    layers = []
    for layer in dict.fromkeys([*by_layer, *band_rows]):
        rows = sorted(by_layer.get(layer, []), key=lambda r: r.get("epoch", 0))
        bands = sorted(band_rows.get(layer, []), key=lambda r: r.get("epoch", 0))
        layers.append(
            {
                "name": layer,
                "anchor": anchor("training", layer),
                "trends": _trends(rows),
                "band": charts.bands(
                    [r.get("epoch") for r in bands], [r.get("values") for r in bands]
                )
                if bands
                else None,
                "crossings": _first_crossings(rows, thresholds),
            }
        )
    if not layers:
        return None
    return {
        "epochs": len({r.get("epoch") for r in history}),
        "layers": layers,
        "thresholds": thresholds,
    }


def _trends(rows: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One chart for the fractions (shared 0..1 scale) and one for mean and std."""
    groups = (
        ("Fractions", ("dead_fraction", "saturated_fraction", "firing_rate")),
        ("Mean and std", ("mean", "std")),
    )
    charts_out = []
    for title, metrics in groups:
        series = {
            m: [(r["epoch"], r[m]) for r in rows if r.get(m) is not None and "epoch" in r]
            for m in metrics
        }
        chart = charts.lines({m: pts for m, pts in series.items() if pts})
        if chart is not None:
            charts_out.append({"title": title, "chart": chart})
    return charts_out


def _first_crossings(
    rows: list[Mapping[str, Any]], thresholds: Mapping[str, float]
) -> list[dict[str, Any]]:
    crossings = []
    for metric, threshold in thresholds.items():
        epoch = next(
            (
                r.get("epoch")
                for r in rows
                if isinstance(r.get(metric), (int, float)) and r[metric] > threshold
            ),
            None,
        )
        crossings.append({"metric": metric, "threshold": threshold, "epoch": epoch})
    return crossings
