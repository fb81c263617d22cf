"""The "Training" section: what `LensCallback` recorded, epoch by epoch.

`result.extra["training"]` is `LensCallback.training_section()`:
- `history`: rows `{epoch, step, layer, alerts}` plus the figures (`mean`, `std`,
  `firing_rate`, and each plugin's `training_metrics`, e.g. `dead_fraction`);
- `bands`: layer -> rows `{epoch, min, p-1.5, p-1, p-0.5, p0, p+0.5, p+1, p+1.5, max}`;
- `thresholds`: metric -> threshold, and `first_crossing`: layer -> metric -> epoch.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

from keraslens.capture.stats import BAND_KEYS
from keraslens.report import charts

_KEYS = ("epoch", "step", "layer", "alerts")
"""The keys of a history row that are not figures."""


def training_view(training: Any, anchor: Callable[[str, str], str]) -> dict[str, Any] | None:
    """Per-layer trend charts, distribution bands and first crossings, or None."""
    if not isinstance(training, Mapping):
        return None
    history = training.get("history") or []
    by_layer: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in history:
        by_layer[str(row.get("layer"))].append(row)
    band_rows = {str(layer): rows for layer, rows in (training.get("bands") or {}).items()}
    thresholds = dict(training.get("thresholds") or {})
    first = training.get("first_crossing") or {}
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
                    [r.get("epoch") for r in bands], [[r.get(k) for k in BAND_KEYS] for r in bands]
                )
                if bands
                else None,
                "crossings": [
                    {"metric": m, "threshold": t, "epoch": first.get(layer, {}).get(m)}
                    for m, t in thresholds.items()
                ],
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
    """One chart for the rates (the firing rate and the plugins' figures) and one for the
    mean and std, which have the layer's own scale."""
    moments = ("mean", "std")
    rates = [m for m in dict.fromkeys(k for r in rows for k in r) if m not in (*moments, *_KEYS)]
    groups = (("Rates", rates), ("Mean and std", moments))
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
