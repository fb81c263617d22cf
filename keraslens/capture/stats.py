"""Per-unit statistics of one layer: a mergeable accumulator.

A unit is the last axis of a layer's output (a Dense unit, a conv channel);
spatial positions and sequence steps pool into their unit.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from keraslens.errors import KeraslensError

HIST_BINS = 2048
_FINITE_MAGNITUDES = 1020  # float32 exponent 255 (inf, NaN) starts at bucket 1020


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


COUNT_FIELDS = (
    "count",
    "finite_count",
    "positive_count",
    "sample_positive_count",
    "nan_count",
    "inf_count",
    "lower_count",
    "upper_count",
)
"""The per-unit integer counts of a `LayerStats`, which merge by addition."""


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

    _COUNTS = COUNT_FIELDS

    def __post_init__(self) -> None:
        units = self.units
        for name in self._COUNTS:
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(units, np.int64))
        for name, fill in (("mean", 0.0), ("m2", 0.0), ("min", np.inf), ("max", -np.inf)):
            if getattr(self, name) is None:
                setattr(self, name, np.full(units, fill, np.float64))
        if self.hist_counts is None:
            self.hist_counts = np.zeros(HIST_BINS, np.int64)

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

    def histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """Counts and edges of the non-empty span of the layer histogram."""
        nonzero = np.flatnonzero(self.hist_counts)
        edges = histogram_edges()
        if nonzero.size == 0:
            return np.zeros(0, np.int64), np.zeros(0)
        lo, hi = nonzero[0], nonzero[-1] + 1
        return self.hist_counts[lo:hi].copy(), edges[lo : hi + 1].copy()

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
            min=np.minimum(self.min, other.min),
            max=np.maximum(self.max, other.max),
            hist_counts=self.hist_counts + other.hist_counts,
        )
        for name in self._COUNTS:
            merged[name] = getattr(self, name) + getattr(other, name)
        return LayerStats(**merged)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form: per-unit lists and the non-empty histogram span."""
        from keraslens.plugin import to_jsonable

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
        for name in self._COUNTS:
            out[name] = getattr(self, name)
        return to_jsonable(out)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.maximum(denominator, 1), np.nan)
