"""Per-head attention statistics, accumulated batch by batch and mergeable."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

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
        shape = np.shape(probabilities)
        if len(shape) != 4 or shape[0] == 0:
            raise KeraslensError(
                f"HeadStats.update takes probabilities shaped (batch, heads, query, key), "
                f"got shape {shape}."
            )
        sums = batch_sums(tf.constant(probabilities, tf.float64))
        return self.merge(HeadStats.from_sums({k: v.numpy() for k, v in sums.items()}))

    @classmethod
    def from_sums(cls, sums: dict[str, np.ndarray]) -> HeadStats:
        """The statistics of one batch from its `batch_sums` (as NumPy arrays)."""
        return cls(
            **{name: np.asarray(sums[name]) for name in _SUMS},
            samples=int(sums["samples"]),
            map_shape=tuple(int(d) for d in sums["map_shape"]),
        )

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
                f"ones shaped {self.map_shape}: merge statistics of one layer, on inputs "
                "of one sequence length (pad the data to one length)."
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


def batch_sums(probabilities: tf.Tensor) -> dict[str, tf.Tensor]:
    """The sums `HeadStats` keeps, of one batch of maps (batch, heads, query, key).

    TensorFlow ops, so that `head_statistics` runs them inside the compiled capture step
    and only the sums leave it; `HeadStats.update` runs them eagerly. float64 throughout.
    """
    p = tf.cast(probabilities, tf.float64)
    live = tf.reduce_sum(p, axis=-1) > _LIVE_ROW  # (batch, heads, query)
    entropy = -tf.reduce_sum(tf.math.xlogy(p, p), axis=-1)
    allowed = tf.reduce_sum(tf.cast(p > 0, tf.float64), axis=-1)
    choosing = live & (allowed > 1)
    uniformity = tf.math.divide_no_nan(entropy, tf.math.log(tf.maximum(allowed, 1.0)))
    diagonal = tf.linalg.diag_part(p)  # (batch, heads, min(query, key))
    diagonal_live = live[:, :, : diagonal.shape[-1]]
    pooled = _pooled(p)

    def total(values, where):
        return tf.reduce_sum(tf.where(where, values, tf.zeros_like(values)), axis=(0, 2))

    return {
        "rows": total(tf.ones_like(entropy), live),
        "entropy_sum": total(entropy, live),
        "uniformity_sum": total(uniformity, choosing),
        "uniformity_rows": total(tf.ones_like(entropy), choosing),
        "sink_sum": total(p[..., 0], live),
        "diagonal_sum": total(diagonal, diagonal_live),
        "diagonal_rows": total(tf.ones_like(diagonal), diagonal_live),
        "map_sum": tf.reduce_sum(pooled, axis=0),
        "map_square_sum": tf.reduce_sum(tf.square(pooled), axis=0),
        "samples": tf.shape(p)[0],
        "map_shape": tf.shape(p)[1:],
    }


def _pooled(p: tf.Tensor) -> tf.Tensor:
    """`p` on at most POOLED_CELLS x POOLED_CELLS blocks: query blocks averaged, key blocks
    summed (a block's mass), so a block of k keys weighs as k keys do in `variability`.
    Position i of n falls in block `i * POOLED_CELLS // n`."""
    for axis, equation, average in ((3, "bhqs,sk->bhqk", False), (2, "bhqk,qc->bhck", True)):
        size = p.shape[axis]
        if size is None:  # a trace for every sequence length: decided when it runs
            p = tf.cond(
                tf.shape(p)[axis] > POOLED_CELLS,
                lambda p=p, a=axis, e=equation, m=average: _pool_axis(p, a, e, m),
                lambda p=p: p,
            )
        elif size > POOLED_CELLS:
            p = _pool_axis(p, axis, equation, average)
    return p


def _pool_axis(p: tf.Tensor, axis: int, equation: str, average: bool) -> tf.Tensor:
    size = tf.shape(p)[axis]
    blocks = tf.one_hot(tf.range(size) * POOLED_CELLS // size, POOLED_CELLS, dtype=p.dtype)
    if average:
        blocks = tf.math.divide_no_nan(blocks, tf.reduce_sum(blocks, axis=0))
    return tf.einsum(equation, p, blocks)


def head_statistics(
    model: Any,
    x: Any,
    layers: Any = None,
    batch_size: int = 32,
) -> dict[str, HeadStats]:
    """`HeadStats` of every attention call of `model` over `x`, streamed batch by batch.

    The statistics of each batch are computed inside the compiled capture step, so only
    their sums leave it: memory is independent of the number of samples.

    Args:
        model: a Keras model with `MultiHeadAttention` layers.
        x: its inputs (arrays or a `tf.data.Dataset`).
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
    for batch in capture_for(model, layers).batches(x, batch_size, batch_sums):
        for key, sums in batch.items():
            stats.setdefault(key, HeadStats()).merge(HeadStats.from_sums(sums))
    return stats
