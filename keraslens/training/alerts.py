"""Figure thresholds, and the alert raised when a layer's figure crosses one."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from keraslens.errors import KeraslensError


def check_thresholds(
    thresholds: Mapping[str, float] | None, figures: Iterable[str]
) -> dict[str, float]:
    """`thresholds` validated against the figures the history records, as floats.

    Args:
        thresholds: figure name -> value above which it alerts, or None.
        figures: the figures the history records, in the order an error lists them.
    """
    if thresholds is None:
        return {}
    if not isinstance(thresholds, Mapping):
        raise KeraslensError(
            f"thresholds must be a dict of figure name -> number, got {thresholds!r}."
        )
    figures = list(figures)
    checked = {}
    for metric, value in thresholds.items():
        if metric not in figures:
            raise KeraslensError(
                f"thresholds has unknown figure {metric!r}; allowed: {', '.join(figures)} "
                "(a plugin's figures need the plugin selected)."
            )
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise KeraslensError(f"thresholds[{metric!r}] must be a finite number, got {value!r}.")
        checked[metric] = float(value)
    return checked


class Alerts:
    """Raise an alert when a layer's figure goes above its threshold.

    A figure alerts when it is above its threshold and was not at the layer's previous
    analysis (or there was none), so a layer that stays above alerts once.

    Args:
        thresholds: figure name -> value above which it alerts.

    Example:

    ```python
    alerts = Alerts({"dead_fraction": 0.2})
    alerts.update({"epoch": 1, "step": 29, "layer": "h1", "dead_fraction": 0.9})
    # [{"epoch": 1, "step": 29, "layer": "h1", "metric": "dead_fraction", "value": 0.9, ...}]
    ```
    """

    def __init__(self, thresholds: Mapping[str, float]) -> None:
        self.thresholds = dict(thresholds)
        self._last: dict[str, Mapping[str, Any]] = {}

    def reset(self, rows: Iterable[Mapping[str, Any]] = ()) -> None:
        """Forget every layer, then take `rows` (a kept history) as the analyses so far."""
        self._last = {}
        for row in rows:
            self._last[row["layer"]] = row

    def update(self, row: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The alerts of one history row (`epoch`, `step`, `layer` and its figures)."""
        previous = self._last.get(row["layer"], {})
        self._last[row["layer"]] = row
        raised = []
        for metric, threshold in self.thresholds.items():
            value, before = row.get(metric), previous.get(metric)
            if value is None or value <= threshold or (before is not None and before > threshold):
                continue
            raised.append(
                {
                    "epoch": row["epoch"],
                    "step": row["step"],
                    "layer": row["layer"],
                    "metric": metric,
                    "value": value,
                    "threshold": threshold,
                }
            )
        return raised
