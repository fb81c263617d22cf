"""Per-unit statistics of one layer: the schema of the capture's rows and `LayerStats`.

A unit is the last axis of a layer's output (a Dense unit, a conv channel);
spatial positions and sequence steps pool into their unit.

`STATISTICS` declares, once, each per-unit row the capture kernel (`_kernel.c`)
computes: its name, how two parts of the data merge, and the `LayerStats` field it
fills. The kernel's buffers, the merges (`Sums.add`, `LayerStats.merge`, the
distributed capture's all-reduce) and `LayerStats`'s fields all follow from it.
Adding a statistic is a row in the kernel, a `Statistic` here and its field below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Literal, NamedTuple

import numpy as np

from keraslens.errors import KeraslensError
from keraslens.jsonable import to_jsonable

HIST_BINS = 2048
_FINITE_MAGNITUDES = 1020  # float32 exponent 255 (inf, NaN) starts at bucket 1020

Merge = Literal["sum", "shifted", "min", "max"]
"""How a row of two parts of the data merges: `sum` adds; `shifted` is a sum of
powers of `x - shift`, which adds once both parts are moved to one shift; `min` and
`max` keep the extreme."""


@dataclass(frozen=True)
class Statistic:
    """One per-unit row of the capture kernel's output.

    Args:
        name: the row's name, as the kernel exports it (`_kernel.ROWS`).
        merge: how the row merges over parts of the data (see `Merge`).
        field: the `LayerStats` field the row fills.
    """

    name: str
    merge: Merge
    field: str


STATISTICS: tuple[Statistic, ...] = (
    Statistic("n", "sum", "finite_count"),
    Statistic("s1", "shifted", "mean"),  # sum of (x - shift) over finite x
    Statistic("s2", "shifted", "m2"),  # sum of (x - shift)^2 over finite x
    Statistic("min", "min", "min"),
    Statistic("max", "max", "max"),
    Statistic("pos", "sum", "positive_count"),
    Statistic("sample_pos", "sum", "sample_positive_count"),
    Statistic("nan", "sum", "nan_count"),
    Statistic("inf", "sum", "inf_count"),
    Statistic("lower", "sum", "lower_count"),
    Statistic("upper", "sum", "upper_count"),
)
"""The kernel's rows, in its order (`_kernel.ROWS`)."""

ROW = {s.name: i for i, s in enumerate(STATISTICS)}
"""The index of each row, by name."""

ADDED_ROWS = tuple(i for i, s in enumerate(STATISTICS) if s.merge in ("sum", "shifted"))
"""Rows that parts sharing one shift merge by adding."""

MIN_ROWS = tuple(i for i, s in enumerate(STATISTICS) if s.merge == "min")
MAX_ROWS = tuple(i for i, s in enumerate(STATISTICS) if s.merge == "max")

COUNT_FIELDS = ("count", *(s.field for s in STATISTICS if s.merge == "sum"))
"""The per-unit integer counts of a `LayerStats`, which merge by addition: `count`
(every output: finite, NaN or Inf) and the fields of the summed rows."""

_EXTREME_FIELDS = {s.field: s.merge for s in STATISTICS if s.merge in ("min", "max")}


def empty_rows(units: int) -> np.ndarray:
    """The rows of no data at all: 0, and +inf or -inf for the minima and maxima."""
    rows = np.zeros((len(STATISTICS), units))
    rows[list(MIN_ROWS)] = np.inf
    rows[list(MAX_ROWS)] = -np.inf
    return rows


def _combine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rows of two parts that share one shift, merged row by row."""
    merged = a + b
    merged[list(MIN_ROWS)] = np.minimum(a[list(MIN_ROWS)], b[list(MIN_ROWS)])
    merged[list(MAX_ROWS)] = np.maximum(a[list(MAX_ROWS)], b[list(MAX_ROWS)])
    return merged


class Sums(NamedTuple):
    """One call site's kernel outputs, over one batch or several.

    `rows` holds the float64 `(len(STATISTICS), units)` rows, the `shifted` ones
    around `shift` (float64, per unit); `hist` the int64 layer histogram.
    """

    rows: np.ndarray
    shift: np.ndarray
    hist: np.ndarray

    def add(self, other: Sums) -> Sums:
        """Both parts together, their shifted sums moved (in float64) to the mean of both.

        Moving to the mean so far, not to a fixed shift, is Chan et al.'s merge in the
        form of shifted sums: a far first shift costs digits once, not at every batch.
        Unlike a `LayerStats.merge` per batch it builds nothing, which keeps a capture's
        Python work per batch small.
        """
        n = self.rows[ROW["n"]] + other.rows[ROW["n"]]
        with np.errstate(invalid="ignore", divide="ignore"):
            total = _total(self) + _total(other)
            shift = np.where(n > 0, total / np.maximum(n, 1), self.shift)
        rows = _combine_rows(_moved(self, shift), _moved(other, shift))
        return Sums(rows, shift, self.hist + other.hist)


def _total(part: Sums) -> np.ndarray:
    return part.shift * part.rows[ROW["n"]] + part.rows[ROW["s1"]]


def _moved(part: Sums, shift: np.ndarray) -> np.ndarray:
    """`part`'s rows with its shifted sums taken around `shift` instead of its own."""
    d = part.shift - shift
    n, s1, s2 = part.rows[ROW["n"]], part.rows[ROW["s1"]], part.rows[ROW["s2"]]
    rows = part.rows.copy()
    rows[ROW["s1"]] = s1 + n * d
    rows[ROW["s2"]] = s2 + d * (2.0 * s1 + n * d)
    return rows


def _magnitude_edges() -> np.ndarray:
    """Lower edge of each magnitude bucket: exponent and two top mantissa bits."""
    bits = (np.arange(_FINITE_MAGNITUDES + 1, dtype=np.uint32) << np.uint32(21)).view(np.float32)
    return bits.astype(np.float64)  # the last one is +inf


def histogram_edges() -> np.ndarray:
    """The 2049 fixed edges of the layer histogram (data-independent, so mergeable).

    Buckets follow the float32 bit pattern: four per power of two on each side of
    zero (relative width <= 25%), from the smallest subnormal to the largest float.
    Buckets `1024 + m` hold `[v(m), v(m+1))`; buckets `1023 - m` hold `(-v(m+1), -v(m)]`.
    """
    magnitudes = _magnitude_edges()
    padded = np.concatenate([magnitudes, np.full(1024 - _FINITE_MAGNITUDES, np.inf)])
    return np.concatenate([-padded[:0:-1], [0.0], padded[1:]])


BAND_SIGMAS = (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5)
"""Percentiles of a distribution band, at the normal CDF of these sigmas, as TensorBoard's
Distributions dashboard draws them (0.0668, 0.1587, 0.3085, 0.5, 0.6915, 0.8413, 0.9332)."""

BAND_KEYS = ("min", "p-1.5", "p-1", "p-0.5", "p0", "p+0.5", "p+1", "p+1.5", "max")
"""The keys of `LayerStats.band()`: the layer's minimum, the `BAND_SIGMAS` percentiles
and its maximum."""


@dataclass
class LayerStats:
    """Per-unit statistics of one layer call site, accumulated over a dataset.

    Per-unit arrays (length `units`): `count` (outputs seen), `finite_count`,
    `mean`, `var` (population variance over finite outputs), `min`, `max`,
    `positive_count`, `sample_positive_count`, `nan_count`, `inf_count`,
    `lower_count` and `upper_count` (outputs within `epsilon` of the activation's
    bounds; zero when unbounded). Per layer: `samples` and `hist_counts` over
    `histogram_edges()`.

    `a.merge(b)` equals one pass over both parts (Chan et al., 1979, for `var`).

    Example:

    >>> stats = LayerStats("dense", "Dense", "relu", None, 0.01, (2,), 2, samples=4,
    ...                    finite_count=np.array([4, 4]), positive_count=np.array([4, 0]))
    >>> stats.merge(stats).positive_count.tolist()
    [8, 0]
    """

    path: str
    layer_type: str
    activation: str | None
    bounds: tuple[float, float] | None
    epsilon: float
    shape: tuple[int | None, ...]
    units: int
    samples: int = 0
    count: np.ndarray = field(default=None)  # type: ignore[assignment]
    finite_count: np.ndarray = field(default=None)  # type: ignore[assignment]
    mean: np.ndarray = field(default=None)  # type: ignore[assignment]
    m2: np.ndarray = field(default=None)  # type: ignore[assignment]
    min: np.ndarray = field(default=None)  # type: ignore[assignment]
    max: np.ndarray = field(default=None)  # type: ignore[assignment]
    positive_count: np.ndarray = field(default=None)  # type: ignore[assignment]
    sample_positive_count: np.ndarray = field(default=None)  # type: ignore[assignment]
    nan_count: np.ndarray = field(default=None)  # type: ignore[assignment]
    inf_count: np.ndarray = field(default=None)  # type: ignore[assignment]
    lower_count: np.ndarray = field(default=None)  # type: ignore[assignment]
    upper_count: np.ndarray = field(default=None)  # type: ignore[assignment]
    hist_counts: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        units = self.units
        for name in COUNT_FIELDS:
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(units, np.int64))
        fills = {"mean": 0.0, "m2": 0.0}
        fills.update(
            {name: np.inf if rule == "min" else -np.inf for name, rule in _EXTREME_FIELDS.items()}
        )
        for name, fill in fills.items():
            if getattr(self, name) is None:
                setattr(self, name, np.full(units, fill, np.float64))
        if self.hist_counts is None:
            self.hist_counts = np.zeros(HIST_BINS, np.int64)

    @classmethod
    def from_sums(cls, sums: Sums, samples: int, **site: Any) -> LayerStats:
        """The statistics of one call site from its kernel `sums` over `samples` samples.

        Args:
            sums: the call site's rows, shift and histogram.
            samples: how many samples the sums cover.
            **site: the fields that describe the call site (`path`, `layer_type`,
                `activation`, `bounds`, `epsilon`, `shape`, `units`).
        """
        rows = sums.rows
        n, s1, s2 = rows[ROW["n"]], rows[ROW["s1"]], rows[ROW["s2"]]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(n > 0, sums.shift + s1 / np.maximum(n, 1), 0.0)
            m2 = np.where(n > 0, np.maximum(s2 - s1 * s1 / np.maximum(n, 1), 0.0), 0.0)
        values: dict[str, np.ndarray] = {"mean": mean, "m2": m2}
        for statistic, row in zip(STATISTICS, rows, strict=True):
            if statistic.merge == "sum":
                values[statistic.field] = np.rint(row).astype(np.int64)
            elif statistic.merge in ("min", "max"):
                values[statistic.field] = row
        values["count"] = values["finite_count"] + values["nan_count"] + values["inf_count"]
        return cls(**site, samples=samples, hist_counts=sums.hist.astype(np.int64), **values)

    @property
    def var(self) -> np.ndarray:
        """Population variance per unit over finite outputs (NaN where none)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.finite_count > 0, self.m2 / self.finite_count, np.nan)

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation per unit."""
        return np.sqrt(self.var)

    @property
    def firing_rate(self) -> np.ndarray:
        """Fraction of all of a unit's outputs (every sample and position) that are > 0."""
        return _ratio(self.positive_count, self.count)

    @property
    def sample_firing_rate(self) -> np.ndarray:
        """Fraction of samples in which the unit is > 0 at one position at least."""
        return _ratio(self.sample_positive_count, np.full(self.units, self.samples))

    @property
    def lower_rate(self) -> np.ndarray:
        """Fraction of outputs within `epsilon` of the lower bound."""
        return _ratio(self.lower_count, self.count)

    @property
    def upper_rate(self) -> np.ndarray:
        """Fraction of outputs within `epsilon` of the upper bound."""
        return _ratio(self.upper_count, self.count)

    @property
    def zero_fraction(self) -> float:
        """Fraction of the layer's finite outputs that are exactly zero (from the histogram)."""
        total = self.hist_counts.sum()
        return float(self.hist_counts[1023:1025].sum() / total) if total else float("nan")

    def per_unit(self) -> dict[str, np.ndarray]:
        """Each unit's summary, by the name tables and figures give it.

        `mean`, `std`, `min` and `max` of its finite outputs (NaN for a unit that had
        none), its `firing rate`, and its non-finite outputs as a count (`non-finite`) and
        as a fraction of all of its outputs (`non-finite rate`).
        """
        finite = self.finite_count > 0
        return {
            "mean": np.where(finite, self.mean, np.nan),
            "std": self.std,
            "min": np.where(finite, self.min, np.nan),
            "max": np.where(finite, self.max, np.nan),
            "firing rate": self.firing_rate,
            "non-finite": self.nan_count + self.inf_count,
            "non-finite rate": 1 - self.finite_count / np.maximum(self.count, 1),
        }

    def pooled(self) -> tuple[float, float]:
        """Mean and standard deviation of all of the layer's finite outputs together.

        The pooled variance is the within-unit spread plus the spread of the unit means;
        both are NaN when the layer has no finite output.
        """
        n = self.finite_count.astype(np.float64)
        total = n.sum()
        if total == 0:
            return math.nan, math.nan
        mean = float((self.mean * n).sum() / total)
        m2 = self.m2.sum() + (n * (self.mean - mean) ** 2).sum()
        return mean, float(math.sqrt(m2 / total))

    def value_range(self) -> tuple[float, float] | None:
        """The smallest and largest finite output of the layer, or None if it has none."""
        finite = self.finite_count > 0
        if not finite.any():
            return None
        return float(self.min[finite].min()), float(self.max[finite].max())

    def histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """Counts and edges of the non-empty span of the layer histogram."""
        nonzero = np.flatnonzero(self.hist_counts)
        edges = histogram_edges()
        if nonzero.size == 0:
            return np.zeros(0, np.int64), np.zeros(0)
        lo, hi = nonzero[0], nonzero[-1] + 1
        return self.hist_counts[lo:hi].copy(), edges[lo : hi + 1].copy()

    def band(self) -> dict[str, float] | None:
        """The layer's distribution band: min, the `BAND_SIGMAS` percentiles and max.

        Percentiles are interpolated linearly inside the histogram bucket that holds
        them, the buckets clipped to the layer's true range. None without data.
        """
        cdf = self._cdf()
        if cdf is None or cdf[0][-1] == 0:
            return None
        cumulative, edges, (low_end, high_end) = cdf
        quantiles = [0.5 * (1 + math.erf(s / math.sqrt(2))) for s in BAND_SIGMAS]
        targets = np.array(quantiles) * cumulative[-1]
        # The first bucket whose cumulative count reaches the target; linear inside it.
        index = np.clip(np.searchsorted(cumulative, targets, side="left"), 1, len(cumulative) - 1)
        below, above = cumulative[index - 1], cumulative[index]
        fraction = np.where(
            above > below, (targets - below) / np.maximum(above - below, 1e-300), 0.0
        )
        values = edges[index - 1] + fraction * (edges[index] - edges[index - 1])
        return dict(zip(BAND_KEYS, [low_end, *values.tolist(), high_end], strict=True))

    def rebinned(self, bins: int) -> np.ndarray | None:
        """The layer histogram in `bins` equal buckets over its range: rows (left, right,
        count); one row when every output is equal; None without data."""
        cdf = self._cdf()
        if cdf is None:
            return None
        cumulative, edges, (low_end, high_end) = cdf
        if low_end == high_end:
            return np.array([[low_end, high_end, cumulative[-1]]])
        bounds = np.linspace(low_end, high_end, bins + 1)
        counts = np.diff(np.interp(bounds, edges, cumulative))
        return np.stack([bounds[:-1], bounds[1:], counts], axis=1)

    def _cdf(self) -> tuple[np.ndarray, np.ndarray, tuple[float, float]] | None:
        """Cumulative counts at the histogram edges, the edges clipped to the layer's range,
        and that range."""
        span = self.value_range()
        if span is None:
            return None
        counts, edges = self.histogram()
        cumulative = np.concatenate([[0], np.cumsum(counts)]).astype(np.float64)
        return cumulative, np.clip(edges, *span), span

    def merge(self, other: LayerStats) -> LayerStats:
        """Return the statistics of both parts together (neither input changes)."""
        if (self.units, self.bounds, self.epsilon) != (other.units, other.bounds, other.epsilon):
            raise KeraslensError(
                f"Cannot merge statistics of {self.path!r} ({self.units} units, bounds "
                f"{self.bounds}) with {other.path!r} ({other.units} units, bounds {other.bounds}): "
                "merge statistics of the same layer captured with the same settings."
            )
        n_a, n_b = self.finite_count, other.finite_count
        n = n_a + n_b
        delta = other.mean - self.mean
        with np.errstate(invalid="ignore", divide="ignore"):
            weight_b = np.where(n > 0, n_b / np.maximum(n, 1), 0.0)
            mean = self.mean + delta * weight_b
            m2 = self.m2 + other.m2 + delta**2 * n_a * weight_b
        merged = {f.name: getattr(self, f.name) for f in fields(self)}
        merged.update(
            samples=self.samples + other.samples,
            mean=np.where(n > 0, mean, 0.0),
            m2=np.where(n > 0, m2, 0.0),
            hist_counts=self.hist_counts + other.hist_counts,
        )
        for name, rule in _EXTREME_FIELDS.items():
            keep = np.minimum if rule == "min" else np.maximum
            merged[name] = keep(getattr(self, name), getattr(other, name))
        for name in COUNT_FIELDS:
            merged[name] = getattr(self, name) + getattr(other, name)
        return LayerStats(**merged)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form: per-unit lists and the non-empty histogram span."""
        counts, edges = self.histogram()
        finite = self.finite_count > 0
        out = {
            "path": self.path,
            "layer_type": self.layer_type,
            "activation": self.activation,
            "bounds": self.bounds,
            "epsilon": self.epsilon,
            "shape": self.shape,
            "units": self.units,
            "samples": self.samples,
            "mean": np.where(finite, self.mean, np.nan),
            "var": self.var,
            "min": np.where(finite, self.min, np.nan),
            "max": np.where(finite, self.max, np.nan),
            "firing_rate": self.firing_rate,
            "sample_firing_rate": self.sample_firing_rate,
            "histogram": {"counts": counts, "edges": edges},
        }
        for name in COUNT_FIELDS:
            out[name] = getattr(self, name)
        return to_jsonable(out)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.maximum(denominator, 1), np.nan)
