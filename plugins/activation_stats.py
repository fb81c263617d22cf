"""activation-stats: the distribution of every layer's outputs, summarised and drawn."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from keraslens.plugin import AnalysisContext, Finding, Plugin, PluginResult, Table
from plugins import _common

if TYPE_CHECKING:
    from keraslens.capture import LayerStats

HISTOGRAM_BINS = 64
"""Bins of the histogram kept in the JSON result (adjacent capture buckets merged)."""

_UNIT_STATISTICS = ("mean", "std", "min", "max", "firing rate", "non-finite rate")
_LAYER_STATISTICS = ("mean", "std", "min", "max", "sparsity", "firing rate", "non-finite")


def layer_summary(stats: LayerStats) -> dict[str, Any]:
    """Statistics of all of a layer's outputs together (units, samples and positions).

    `mean`, `std` (population), `min` and `max` are over finite outputs; `sparsity` is
    the fraction of finite outputs that are exactly zero (see `sparsity`); `nan_count`
    and `inf_count` count the non-finite ones; `histogram` holds at most
    `HISTOGRAM_BINS` bins of the outputs the capture histogram saw.
    """
    n = stats.finite_count
    total = int(n.sum())
    seen = n > 0
    mean = float((n * stats.mean).sum() / total) if total else math.nan
    # Pooled variance: each unit's own spread plus the spread of the unit means.
    m2 = float((stats.m2 + n * (stats.mean - mean) ** 2)[seen].sum()) if total else math.nan
    return {
        "layer_type": stats.layer_type,
        "activation": stats.activation,
        "unit_count": stats.units,
        "outputs": int(stats.count.sum()),
        "mean": mean,
        "std": math.sqrt(m2 / total) if total else math.nan,
        "min": float(stats.min[seen].min()) if total else math.nan,
        "max": float(stats.max[seen].max()) if total else math.nan,
        "sparsity": sparsity(stats),
        "firing_rate": _common.fraction(int(stats.positive_count.sum()), int(stats.count.sum())),
        "nan_count": int(stats.nan_count.sum()),
        "inf_count": int(stats.inf_count.sum()),
        "histogram": compact_histogram(stats, HISTOGRAM_BINS),
    }


def sparsity(stats: LayerStats) -> float:
    """The fraction of a layer's finite outputs that are exactly zero.

    Exact when the layer's outputs are never negative (ReLU, pooling of ReLU,
    sigmoid, ...): its zeros are then its finite outputs that are not > 0. Otherwise
    it is read from the capture histogram, which may see only some samples of each
    batch (`Lens(histogram_samples=...)`).
    """
    seen = stats.finite_count > 0
    if seen.any() and stats.min[seen].min() >= 0 and not stats.inf_count.any():
        finite = int(stats.finite_count.sum())
        return (finite - int(stats.positive_count.sum())) / finite
    return stats.zero_fraction


def compact_histogram(stats: LayerStats, max_bins: int) -> dict[str, np.ndarray]:
    """The non-empty bins of the layer histogram, at most `max_bins` of them.

    The capture histogram has fixed buckets, four per power of two of magnitude on
    each side of zero. Runs of `k` adjacent buckets (`k` a power of two, the smallest
    that leaves at most `max_bins` non-empty runs) are merged and empty runs left out,
    so the counts stay exact. Bin `i` holds the outputs in `[low[i], high[i])`
    (`(low[i], high[i]]` below zero).
    """
    from keraslens.capture.stats import histogram_edges

    edges = histogram_edges()
    counts = stats.hist_counts
    k = 1
    while np.count_nonzero(np.add.reduceat(counts, np.arange(0, counts.size, k))) > max_bins:
        k *= 2
    merged = np.add.reduceat(counts, np.arange(0, counts.size, k))
    groups = np.flatnonzero(merged)
    return {
        "counts": merged[groups],
        "low": edges[groups * k],
        "high": edges[np.minimum((groups + 1) * k, counts.size)],
    }


class ActivationStats(Plugin):
    """Summarise the distribution of every layer's outputs.

    Per layer: mean, std, min, max, sparsity (fraction of outputs that are exactly
    zero), firing rate (fraction > 0), NaN and Inf counts and a histogram. A layer with
    NaN or Inf outputs gets an error finding. Figures: a layer-by-statistic overview,
    and per layer a unit-by-statistic heatmap with the histogram.

    Example:

    ```python
    result = keraslens.analyze(model, x_val, plugins=["activation-stats"])
    result.to_dict()["plugins"]["activation-stats"]["layers"]["dense"]["sparsity"]
    ```
    """

    name = "activation-stats"
    title = "Activation statistics"
    description = "Mean, spread, sparsity, NaN/Inf counts and the distribution of each layer."
    needs = frozenset({"stats"})

    def analyze(self, ctx: AnalysisContext) -> PluginResult:
        """Summarise every captured layer."""
        layers = {key: layer_summary(stats) for key, stats in ctx.stats.items()}
        findings = [
            _non_finite_finding(key, ctx.stats[key], entry)
            for key, entry in layers.items()
            if entry["nan_count"] or entry["inf_count"]
        ]
        rows = [_row(key, entry) for key, entry in layers.items()]
        result = PluginResult(
            data={"layers": layers},
            findings=findings,
            tables=[Table("Activation statistics per layer", _COLUMNS, rows)],
        )
        if not ctx.minimal and layers:
            result.figures = _figures(ctx.stats, layers)
        return result


_COLUMNS = "layer type activation units mean std min max sparsity NaN Inf".split()


def _row(key: str, entry: dict[str, Any]) -> list[Any]:
    numbers = [_round(entry[k]) for k in ("mean", "std", "min", "max", "sparsity")]
    return [
        key,
        entry["layer_type"],
        entry["activation"] or "",
        entry["unit_count"],
        *numbers,
        entry["nan_count"],
        entry["inf_count"],
    ]


def _round(value: float) -> float:
    return float(f"{value:.4g}") if math.isfinite(value) else value


def _non_finite_finding(key: str, stats: LayerStats, entry: dict[str, Any]) -> Finding:
    bad = entry["nan_count"] + entry["inf_count"]
    units = _common.unit_indices((stats.nan_count + stats.inf_count) > 0)
    return Finding(
        severity="error",
        message=(
            f"Layer {key!r} produced {entry['nan_count']} NaN and {entry['inf_count']} Inf "
            f"outputs ({bad} of {entry['outputs']}), in {len(units)} of {stats.units} units."
        ),
        layer=key,
        units=units,
        value=bad,
        threshold=0,
        label="non-finite outputs",
        fix="Check the inputs for NaN/Inf; lower the learning rate or clip gradients; "
        "guard divisions, logs and square roots.",
    )


LAYER_FIGURES = 6
"""Per-layer figures drawn: the layers with the most non-finite, then the most zero outputs."""


def _figures(stats: dict[str, LayerStats], layers: dict[str, dict[str, Any]]) -> list:
    figures = [_overview_figure(layers)]
    scores = {
        key: entry["nan_count"] + entry["inf_count"] + entry["sparsity"]
        for key, entry in layers.items()
    }
    shown = _common.top_layers(scores, LAYER_FIGURES)
    figures += [_layer_figure(stats[key], layers[key]) for key in shown]
    if len(layers) > len(shown):
        figures[0].caption += (
            f" Per-layer figures are drawn for the {len(shown)} of {len(layers)} layers with "
            "the most non-finite, then the most zero outputs; the table lists them all."
        )
    return figures


def _scaled_rows(matrix: np.ndarray) -> np.ndarray:
    """Each row scaled to [0, 1] over its finite values, so colours compare within a row."""
    scaled = np.full(matrix.shape, np.nan)
    for i, row in enumerate(matrix):
        finite = np.isfinite(row)
        if finite.any():
            low, high = row[finite].min(), row[finite].max()
            scaled[i, finite] = (row[finite] - low) / (high - low) if high > low else 0.5
    return scaled


def _overview_figure(layers: dict[str, dict[str, Any]]) -> Any:
    import seaborn as sns

    keys = list(layers)[: _common.MAX_OVERVIEW_LAYERS]
    values = np.array([[_layer_value(layers[k], s) for s in _LAYER_STATISTICS] for k in keys])
    fig = _common.new_figure(7.5, 1.2 + 0.28 * len(keys))
    ax = fig.add_subplot()
    sns.heatmap(
        _scaled_rows(values.T).T,
        ax=ax,
        cmap="mako",
        annot=values,
        fmt=".2g",
        annot_kws={"fontsize": 7},
        cbar=False,
        xticklabels=_LAYER_STATISTICS,
        yticklabels=keys,
    )
    ax.tick_params(labelsize=8)
    ax.xaxis.tick_top()
    caption = "Colours compare layers within a column (each column scaled to its own range)."
    note = _common.capped_caption(len(keys), len(layers), "layers")
    return _common.render(fig, "Activation statistics per layer", f"{caption} {note}".strip())


def _layer_value(entry: dict[str, Any], statistic: str) -> float:
    if statistic == "non-finite":
        return entry["nan_count"] + entry["inf_count"]
    return entry[statistic.replace(" ", "_")]


def _unit_matrix(stats: LayerStats, shown: int) -> np.ndarray:
    per_unit = stats.per_unit()
    return np.array([per_unit[name][:shown] for name in _UNIT_STATISTICS])


def _layer_figure(stats: LayerStats, entry: dict[str, Any]) -> Any:
    import seaborn as sns

    shown = min(stats.units, _common.MAX_HEATMAP_UNITS)
    matrix = _unit_matrix(stats, shown)
    fig = _common.new_figure(7.5, 4.2)
    heat, hist = fig.subplots(2, 1, gridspec_kw={"height_ratios": [1.2, 1]})
    ranges = [
        f"{name} [{np.nanmin(row):.2g}, {np.nanmax(row):.2g}]" if np.isfinite(row).any() else name
        for name, row in zip(_UNIT_STATISTICS, matrix, strict=True)
    ]
    sns.heatmap(
        _scaled_rows(matrix),
        ax=heat,
        cmap="mako",
        cbar=False,
        yticklabels=ranges,
        xticklabels=max(1, shown // 16),
    )
    heat.tick_params(labelsize=7)
    heat.set_xlabel("unit", fontsize=8)
    _draw_histogram(hist, entry)
    fig.subplots_adjust(left=0.22, right=0.98, top=0.97, bottom=0.1, hspace=0.55)
    caption = "Each row of the heatmap is scaled to its own range, given in its label."
    note = _common.capped_caption(shown, stats.units, "units (the first ones)")
    return _common.render(
        fig, f"Activations of {stats.path}", f"{caption} {note}".strip(), layer=stats.path
    )


def _draw_histogram(ax: Any, entry: dict[str, Any]) -> None:
    from matplotlib.ticker import FuncFormatter

    histogram = entry["histogram"]
    counts, low, high = histogram["counts"], histogram["low"], histogram["high"]
    title = f"sparsity {entry['sparsity']:.1%}, mean {entry['mean']:.3g}, std {entry['std']:.3g}"
    ax.set_title(title, fontsize=8)
    if counts.size == 0:
        return
    # Bins are logarithmic in magnitude and some are tiny (the zeros): one line per bin,
    # on a symmetric log axis, shows each of them.
    ax.vlines((low + high) / 2, 0.5, counts, color="#3b6e8f", linewidth=2)
    largest = float(np.max(np.abs(np.concatenate([low, high]))))
    ax.set_xscale("symlog", linthresh=max(largest * 1e-4, np.finfo(np.float32).tiny))
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.5)
    # Plain tick labels: minor ticks and mathtext labels of log axes cost most of the time.
    ax.minorticks_off()
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.set_xlabel("output value (symmetric log scale)", fontsize=8)
    ax.set_ylabel("outputs", fontsize=8)
    ax.tick_params(labelsize=7)
