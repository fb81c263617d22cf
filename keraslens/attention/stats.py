"""Per-head attention statistics, accumulated batch by batch and mergeable."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from keraslens.errors import KeraslensError

_LIVE_ROW = 0.5
"""A row whose probabilities sum below this is a fully masked query (Keras zeroes it)."""

POOLED_CELLS = 64
"""Query and key blocks of the pooled map that `variability` is accumulated on."""


@dataclass
class HeadStats:
    """Streaming statistics of one attention layer's heads, over the rows of its maps.

    Every statistic is a sum over rows (one query of one sample) or over samples, kept in
    float64, so memory depends on the layer's shape only and `merge` adds two parts.
    Rows of fully masked queries (all zero: padding) are left out.

    Statistics per head (arrays of length `heads`):
    `entropy`: mean entropy of a row, in nats; `uniformity`: mean of a row's entropy over
    `log(keys it may attend to)` (1 for a uniform row); `sink`: mean mass on the first
    key (an "attention sink", Xiao et al. 2024); `diagonal`: mean mass of query i on key
    i; `variability`: mean over map cells of the standard deviation across samples,
    times the number of keys (0 for a pattern that is the same for every input). Maps
    larger than `POOLED_CELLS` a side are pooled first (mass summed over blocks of keys,
    averaged over blocks of queries), so memory stays within 2 x heads x 64 x 64 floats.

    Example:

    ```python
    stats = HeadStats()
    for batch in capture.batches(x):
        stats.update(batch["encoder/mha"])
    stats.dead_heads()
    ```
    """

    rows: np.ndarray | None = None
    entropy_sum: np.ndarray | None = None
    uniformity_sum: np.ndarray | None = None
    uniformity_rows: np.ndarray | None = None
    sink_sum: np.ndarray | None = None
    diagonal_sum: np.ndarray | None = None
    diagonal_rows: np.ndarray | None = None
    samples: int = 0
    map_shape: tuple[int, ...] | None = None
    map_sum: np.ndarray | None = field(default=None, repr=False)
    map_square_sum: np.ndarray | None = field(default=None, repr=False)

    def update(self, probabilities: np.ndarray) -> HeadStats:
        """Add a batch of maps shaped (batch, heads, query, key); returns self."""
        p = np.asarray(probabilities, dtype=np.float64)
        if p.ndim != 4 or p.shape[0] == 0:
            raise KeraslensError(
                f"HeadStats.update takes probabilities shaped (batch, heads, query, key), "
                f"got shape {p.shape}."
            )
        return self.merge(_batch_sums(p))

    def merge(self, other: HeadStats) -> HeadStats:
        """Add the sums of `other` (another part of the data) into these; returns self."""
        if other.samples == 0:
            return self
        if self.samples == 0:
            for name in _SUMS:
                setattr(self, name, getattr(other, name).copy())
            self.samples, self.map_shape = other.samples, other.map_shape
            return self
        if self.map_shape != other.map_shape:
            raise KeraslensError(
                f"Cannot merge head statistics of maps shaped {other.map_shape} into "
                f"ones shaped {self.map_shape}; merge statistics of the same layer."
            )
        for name in _SUMS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.samples += other.samples
        return self

    @property
    def heads(self) -> int:
        """The number of heads (0 before the first update)."""
        return 0 if self.rows is None else int(self.rows.size)

    @property
    def entropy(self) -> np.ndarray:
        """Mean row entropy per head, in nats."""
        return self._mean(self.entropy_sum, self.rows)

    @property
    def uniformity(self) -> np.ndarray:
        """Mean row entropy over its maximum, `log(keys the row may attend to)`.

        Rows that may attend to one key only (the first query under a causal mask) are
        left out: they have no choice to make.
        """
        return self._mean(self.uniformity_sum, self.uniformity_rows)

    @property
    def sink(self) -> np.ndarray:
        """Mean mass on the first key per head."""
        return self._mean(self.sink_sum, self.rows)

    @property
    def diagonal(self) -> np.ndarray:
        """Mean mass of query i on key i per head (queries past the last key excluded)."""
        return self._mean(self.diagonal_sum, self.diagonal_rows)

    @property
    def variability(self) -> np.ndarray:
        """Mean standard deviation across samples of a map cell, times the number of keys
        (of key blocks, for a pooled map)."""
        self._require()
        mean = self.map_sum / self.samples
        variance = np.maximum(self.map_square_sum / self.samples - mean**2, 0.0)
        return np.sqrt(variance).mean(axis=(1, 2)) * self.map_sum.shape[-1]

    def uniform_heads(self, threshold: float = 0.98) -> np.ndarray:
        """Indices of heads whose `uniformity` is at least `threshold`: they average
        their values instead of choosing among them."""
        return np.flatnonzero(self.uniformity >= threshold)

    def constant_heads(self, threshold: float = 0.01) -> np.ndarray:
        """Indices of heads whose `variability` is at most `threshold`: their pattern does
        not depend on the input. Empty below two samples (nothing to compare)."""
        if self.samples < 2:
            return np.array([], dtype=np.int64)
        return np.flatnonzero(self.variability <= threshold)

    def dead_heads(self, uniform: float = 0.98, constant: float = 0.01) -> np.ndarray:
        """Indices of heads that are near-uniform or constant (see the two methods above).

        Args:
            uniform: the `uniform_heads` threshold.
            constant: the `constant_heads` threshold.
        """
        return np.union1d(self.uniform_heads(uniform), self.constant_heads(constant))

    def _mean(self, total: np.ndarray | None, count: np.ndarray | None) -> np.ndarray:
        self._require()
        return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)

    def _require(self) -> None:
        if self.samples == 0:
            raise KeraslensError("No attention maps yet: call HeadStats.update first.")


_SUMS = (
    "rows",
    "entropy_sum",
    "uniformity_sum",
    "uniformity_rows",
    "sink_sum",
    "diagonal_sum",
    "diagonal_rows",
    "map_sum",
    "map_square_sum",
)


def _batch_sums(p: np.ndarray) -> HeadStats:
    live = p.sum(axis=-1) > _LIVE_ROW  # (batch, heads, query)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1)
    allowed = (p > 0).sum(axis=-1)
    choosing = live & (allowed > 1)
    uniformity = np.divide(
        entropy, np.log(np.maximum(allowed, 1)), out=np.zeros_like(entropy), where=choosing
    )
    diagonal_length = min(p.shape[2], p.shape[3])
    diagonal = np.diagonal(p, axis1=2, axis2=3)  # (batch, heads, min(query, key))
    diagonal_live = live[:, :, :diagonal_length]
    pooled = _pooled(p)
    return HeadStats(
        rows=live.sum(axis=(0, 2)).astype(np.float64),
        entropy_sum=(entropy * live).sum(axis=(0, 2)),
        uniformity_sum=(uniformity * choosing).sum(axis=(0, 2)),
        uniformity_rows=choosing.sum(axis=(0, 2)).astype(np.float64),
        sink_sum=(p[..., 0] * live).sum(axis=(0, 2)),
        diagonal_sum=(diagonal * diagonal_live).sum(axis=(0, 2)),
        diagonal_rows=diagonal_live.sum(axis=(0, 2)).astype(np.float64),
        samples=p.shape[0],
        map_shape=p.shape[1:],
        map_sum=pooled.sum(axis=0),
        map_square_sum=(pooled**2).sum(axis=0),
    )


def head_statistics(
    model: Any,
    x: Any,
    layers: Any = None,
    batch_size: int = 32,
) -> dict[str, HeadStats]:
    """`HeadStats` of every attention call of `model` over `x`, streamed batch by batch.

    Args:
        model: a Keras model with `MultiHeadAttention` layers.
        x: its inputs (arrays or a `tf.data.Dataset`); only one batch of maps is held.
        layers: which attention layers (None: all).
        batch_size: samples per compiled step.

    Example:

    ```python
    stats = head_statistics(model, tokens)
    stats["encoder/mha"].sink          # mass on the first token, per head
    ```
    """
    from keraslens.attention.capture import capture_for

    stats: dict[str, HeadStats] = {}
    for batch in capture_for(model, layers).batches(x, batch_size):
        for key, probabilities in batch.items():
            stats.setdefault(key, HeadStats()).update(probabilities)
    return stats


def _pooled(p: np.ndarray) -> np.ndarray:
    """`p` on at most POOLED_CELLS x POOLED_CELLS blocks: query blocks averaged, key blocks
    summed (a block's mass), so a block of k keys weighs as k keys do in `variability`."""
    for axis, reduce_mean in ((2, True), (3, False)):
        size = p.shape[axis]
        if size <= POOLED_CELLS:
            continue
        starts = np.linspace(0, size, POOLED_CELLS + 1).astype(int)[:-1]
        p = np.add.reduceat(p, starts, axis=axis)
        if reduce_mean:
            counts = np.diff(np.append(starts, size))
            p = p / counts[:, None]
    return p
