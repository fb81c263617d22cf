"""Plumbing shared by the built-in analyses: unit masks, layer findings and small figures.

Figures are drawn on `matplotlib.figure.Figure` objects (no pyplot state), at a low
resolution and with capped sizes, so that a report of a large model stays small.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from keraslens.plugin import AnalysisContext, Figure, Finding

DPI = 72
MAX_HEATMAP_UNITS = 64
"""Units shown by a unit-by-statistic heatmap; the caption says when a layer has more."""
MAX_GRID_UNITS = 4096
"""Units shown by a unit grid (a 64 x 64 square at most)."""
MAX_LAYER_FIGURES = 16
"""Per-layer figures a plugin draws at most (the layers that matter most)."""
MAX_OVERVIEW_LAYERS = 64
"""Layers shown by a layer-by-layer overview at most."""
ERROR_FRACTION = 0.5
"""A layer finding is an error when more than this fraction of its units is affected."""


def unit_indices(mask: np.ndarray) -> list[int]:
    """The indices of the units selected by a boolean mask, as plain ints."""
    return [int(i) for i in np.flatnonzero(mask)]


def fraction(count: int, total: int) -> float:
    """`count / total`, 0.0 for an empty layer."""
    return float(count) / total if total else 0.0


def layer_fraction_finding(
    *,
    plugin: str,
    layer: str,
    units: list[int],
    value: float,
    threshold: float,
    label: str,
    message: str,
    fix: str,
    severity: str | None = None,
) -> Finding | None:
    """A finding when `value` (a fraction of the layer's units) exceeds `threshold`.

    The severity is "error" when more than `ERROR_FRACTION` of the units are
    affected and "warning" otherwise, unless `severity` is given.
    """
    if value <= threshold:
        return None
    if severity is None:
        severity = "error" if value > ERROR_FRACTION else "warning"
    return Finding(
        severity=severity,
        message=message,
        layer=layer,
        units=units,
        value=value,
        threshold=threshold,
        threshold_name=f"{plugin}.threshold",
        label=label,
        fix=fix,
    )


def model_output_keys(ctx: AnalysisContext) -> set[str]:
    """Call-site keys of the layers whose output is an output of the model.

    Empty when it cannot be told (a subclassed model, or no `Lens`).
    """
    try:
        producers = {id(t._keras_history.operation) for t in ctx.model.outputs}
    except (AttributeError, ValueError, TypeError):
        return set()
    sites = getattr(ctx.lens, "sites", None) or []
    return {site.key for site in sites if id(site.layer) in producers}


def top_layers(scores: Mapping[str, float], limit: int, positive: bool = False) -> list[str]:
    """The `limit` layers with the highest score (only positive ones if `positive`).

    Ties go to the earlier layer; the result keeps model order.
    """
    order = {key: i for i, key in enumerate(scores)}
    keys = [key for key, score in scores.items() if score > 0 or not positive]
    ranked = sorted(keys, key=lambda key: (-scores[key], order[key]))
    return sorted(ranked[:limit], key=order.__getitem__)


def capped_caption(shown: int, total: int, what: str) -> str:
    """A caption fragment saying how many of `total` items a figure shows."""
    return f"Showing {shown} of {total} {what}." if shown < total else ""


def new_figure(width: float, height: float) -> Any:
    """A matplotlib figure outside pyplot's global state."""
    from matplotlib.figure import Figure as MplFigure

    return MplFigure(figsize=(width, height))


def render(fig: Any, title: str, caption: str = "", layer: str | None = None) -> Figure:
    """A report figure from a matplotlib figure, at the shared low resolution."""
    return Figure.from_matplotlib(fig, title=title, caption=caption, layer=layer, dpi=DPI)


def layer_bars_figure(
    series: Mapping[str, Mapping[str, float]],
    *,
    threshold: float,
    title: str,
    xlabel: str,
    caption: str = "",
) -> Figure:
    """Stacked horizontal bars of per-layer fractions, with the threshold as a line.

    Args:
        series: bar segment name -> layer key -> fraction; every series has the same
            layers, in model order. At most `MAX_OVERVIEW_LAYERS` layers are shown
            (those with the highest total).
        threshold: drawn as a dashed vertical line.
        title: the figure title.
        xlabel: the x-axis label.
        caption: text under the figure.
    """
    import seaborn as sns

    first = next(iter(series.values()))
    totals = {key: sum(s[key] for s in series.values()) for key in first}
    shown = top_layers(totals, MAX_OVERVIEW_LAYERS)
    fig = new_figure(6.0, 1.0 + 0.22 * max(len(shown), 1))
    ax = fig.add_subplot()
    left = np.zeros(len(shown))
    for (name, values), color in zip(
        series.items(), sns.color_palette("rocket", len(series)), strict=True
    ):
        widths = np.array([values[key] for key in shown])
        ax.barh(shown, widths, left=left, label=name, color=color)
        left += widths
    ax.axvline(threshold, color="0.3", linestyle="--", linewidth=1, label="threshold")
    ax.set(xlim=(0, 1), xlabel=xlabel)
    ax.invert_yaxis()
    ax.legend(loc="lower right", fontsize="small")
    note = capped_caption(len(shown), len(first), "layers (the most affected)")
    return render(fig, title, " ".join(p for p in (caption, note) if p))


def unit_grid_figure(
    values: np.ndarray,
    *,
    title: str,
    layer: str,
    cmap: Any,
    vmin: float,
    vmax: float,
    colorbar_label: str,
    caption: str = "",
    ticks: Sequence[float] | None = None,
    ticklabels: Sequence[str] | None = None,
) -> Figure:
    """One cell per unit, row by row (unit index = row * columns + column).

    At most `MAX_GRID_UNITS` units are drawn; the caption says so when a layer has more.
    """
    import seaborn as sns

    shown = values[:MAX_GRID_UNITS].astype(float)
    columns = max(1, math.ceil(math.sqrt(shown.size)))
    rows = math.ceil(shown.size / columns)
    grid = np.full(rows * columns, np.nan)
    grid[: shown.size] = shown
    fig = new_figure(4.0, 0.6 + 3.2 * rows / columns)
    ax = fig.add_subplot()
    sns.heatmap(
        grid.reshape(rows, columns),
        ax=ax,
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        xticklabels=False,
        yticklabels=False,
        linewidths=0.3 if shown.size <= 1024 else 0,
        linecolor="white",
        cbar_kws={"label": colorbar_label, "ticks": ticks},
    )
    if ticklabels is not None:
        ax.collections[0].colorbar.set_ticklabels(list(ticklabels))
    ax.set_title(f"{layer}: {values.size} units, {columns} per row", fontsize="small")
    note = capped_caption(shown.size, values.size, "units")
    return render(fig, title, " ".join(p for p in (caption, note) if p), layer=layer)
