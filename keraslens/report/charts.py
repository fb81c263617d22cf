"""Chart geometry for the report: numbers in, SVG coordinates out.

The templates draw the shapes (`templates/charts.html.j2`); this module only computes
where they go, so charts are small inline SVG, identical for identical input, and
never fetch anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

WIDTH = 360
HEIGHT = 150
_PAD_LEFT, _PAD_RIGHT, _PAD_TOP, _PAD_BOTTOM = 44, 16, 8, 22
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b")

BAND_SIGMAS = (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5)
"""Where TensorBoard's Distributions dashboard draws its bands, in standard deviations."""


def fmt(value: float) -> str:
    """A number for an axis label: 4 significant digits, no trailing noise."""
    value = float(value)
    if value == 0 or not np.isfinite(value):
        return "0" if value == 0 else str(value)
    return f"{value:.3g}"


def _plot_box() -> tuple[float, float, float, float]:
    return _PAD_LEFT, WIDTH - _PAD_RIGHT, _PAD_TOP, HEIGHT - _PAD_BOTTOM


class _Scale:
    """Maps data [lo, hi] onto pixels [a, b] (a zero-width span is widened)."""

    def __init__(self, lo: float, hi: float, a: float, b: float) -> None:
        if not hi > lo:
            lo, hi = lo - 0.5, hi + 0.5
        self.lo, self.hi, self.a, self.b = lo, hi, a, b

    def __call__(self, value: float) -> float:
        return round(self.a + (value - self.lo) / (self.hi - self.lo) * (self.b - self.a), 2)

    def ticks(self, count: int = 4) -> list[tuple[float, str]]:
        values = np.linspace(self.lo, self.hi, count)
        return [(self(v), fmt(v)) for v in values]


def histogram(counts: np.ndarray, edges: np.ndarray, bins: int = 40) -> dict[str, object] | None:
    """Rebin the layer's log-spaced histogram buckets onto `bins` linear bins.

    Each bucket's count goes to the linear bin holding the bucket's centre; the
    outermost buckets, whose outer edge may be infinite, use their finite edge.
    Returns the bars and axis ticks, or None when the histogram is empty.
    """
    if len(counts) == 0 or counts.sum() == 0:
        return None
    lower, upper = edges[:-1], edges[1:]
    centres = np.where(
        np.isfinite(lower) & np.isfinite(upper),
        (lower + upper) / 2,
        np.where(np.isfinite(lower), lower, upper),
    )
    lo, hi = float(np.min(centres)), float(np.max(centres))
    # Exact zeros sit in a bucket whose centre is a subnormal; label that end as 0.
    lo, hi = (0.0 if abs(v) < 1e-6 * (hi - lo) else v for v in (lo, hi))
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    index = np.clip(((centres - lo) / (hi - lo) * bins).astype(int), 0, bins - 1)
    rebinned = np.bincount(index, weights=counts, minlength=bins)
    left, right, top, bottom = _plot_box()
    x = _Scale(lo, hi, left, right)
    y = _Scale(0, float(rebinned.max()), bottom, top)
    width = (right - left) / bins
    bars = [
        {
            "x": round(left + i * width, 2),
            "y": y(c),
            "w": round(width, 2),
            "h": round(bottom - y(c), 2),
            "label": f"{fmt(lo + i * (hi - lo) / bins)}: {int(c)}",
        }
        for i, c in enumerate(rebinned)
        if c > 0
    ]
    return _frame({"bars": bars, "xticks": x.ticks(5), "yticks": y.ticks(3)})


def lines(series: Mapping[str, Sequence[tuple[float, float]]]) -> dict[str, object] | None:
    """Polylines for several named series of `(x, y)` points on shared axes."""
    points = [(x, y) for pts in series.values() for x, y in pts if _finite(y)]
    if not points:
        return None
    xs, ys = zip(*points, strict=True)
    left, right, top, bottom = _plot_box()
    x = _Scale(min(xs), max(xs), left, right)
    y = _Scale(min(0.0, min(ys)), max(ys), bottom, top)
    paths = []
    for i, (name, pts) in enumerate(series.items()):
        kept = [(x(a), y(b)) for a, b in pts if _finite(b)]
        if kept:
            paths.append(
                {"name": name, "color": PALETTE[i % len(PALETTE)], "points": _points(kept)}
            )
    return _frame({"paths": paths, "xticks": _int_ticks(x, xs), "yticks": y.ticks(3)})


def bands(epochs: Sequence[float], values: Sequence[Sequence[float]]) -> dict[str, object] | None:
    """TensorBoard-style distribution bands over epochs.

    `values[i]` holds nine numbers for `epochs[i]`: min, the values at
    -1.5/-1/-0.5/0/+0.5/+1/+1.5 standard deviations, and max. Bands nest from
    [min, max] (lightest) to [-0.5, +0.5] sigma (darkest), with the median as a line.
    """
    table = np.asarray(values, dtype=np.float64)
    if table.ndim != 2 or table.shape[1] != 9 or len(epochs) != len(table):
        return None
    keep = np.all(np.isfinite(table), axis=1)
    table, epochs = table[keep], np.asarray(epochs, dtype=np.float64)[keep]
    if len(table) == 0:
        return None
    left, right, top, bottom = _plot_box()
    x = _Scale(float(epochs.min()), float(epochs.max()), left, right)
    y = _Scale(float(table.min()), float(table.max()), bottom, top)
    polygons = []
    for depth in range(4):
        low, high = table[:, depth], table[:, 8 - depth]
        outline = [(x(e), y(v)) for e, v in zip(epochs, high, strict=True)]
        outline += [(x(e), y(v)) for e, v in zip(epochs[::-1], low[::-1], strict=True)]
        polygons.append({"points": _points(outline), "opacity": 0.15 + 0.17 * depth})
    median = _points([(x(e), y(v)) for e, v in zip(epochs, table[:, 4], strict=True)])
    return _frame(
        {
            "polygons": polygons,
            "median": median,
            "xticks": _int_ticks(x, epochs),
            "yticks": y.ticks(3),
        }
    )


def _frame(chart: dict[str, object]) -> dict[str, object]:
    left, right, top, bottom = _plot_box()
    chart.update(width=WIDTH, height=HEIGHT, left=left, right=right, top=top, bottom=bottom)
    return chart


def _int_ticks(scale: _Scale, xs: Sequence[float]) -> list[tuple[float, str]]:
    unique = sorted(set(float(v) for v in xs))
    step = max(1, len(unique) // 6)
    return [(scale(v), fmt(v)) for v in unique[::step]]


def _points(pairs: Sequence[tuple[float, float]]) -> str:
    return " ".join(f"{a:g},{b:g}" for a, b in pairs)


def _finite(value: object) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and bool(np.isfinite(value))
