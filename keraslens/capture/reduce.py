"""Per-batch reductions of one layer's activations, fused so each value is read once.

TensorFlow runs one kernel per reduction and writes every elementwise
intermediate to fresh memory, which on a CPU costs more than the reduction
itself. Compiled with XLA over cache-sized chunks, all moments, extremes and
counts of a chunk are computed while it is in cache. The forward pass itself
stays outside XLA: TensorFlow's own convolutions are faster on a CPU.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keraslens.capture.stats import HIST_BINS

CHUNK_ELEMENTS = 65536
STAT_NAMES = ("n", "s1", "s2", "min", "max", "pos", "sample_pos", "nan", "inf", "lower", "upper")


def _chunk_stats(block, shift, bounds, masked: bool):
    """Statistics of a (samples, positions, units) block as an (11, units) tensor.

    Unmasked: float32. Masked (the batch holds NaN or Inf, or its float32 sums
    overflowed): float64, so that the squares of outputs beyond 1e19 stay finite.
    """
    if masked:
        block = tf.cast(block, tf.float64)
        shift = tf.cast(shift, tf.float64)
        finite = tf.math.is_finite(block)
        centred = tf.where(finite, block - shift, 0.0)
        n = tf.reduce_sum(tf.cast(finite, block.dtype), [0, 1])
        low = tf.reduce_min(tf.where(finite, block, np.inf), [0, 1])
        high = tf.reduce_max(tf.where(finite, block, -np.inf), [0, 1])
        sample_pos = tf.reduce_any(block > 0, 1)
        nan = tf.reduce_sum(tf.cast(tf.math.is_nan(block), block.dtype), [0, 1])
        inf = tf.reduce_sum(tf.cast(tf.math.is_inf(block), block.dtype), [0, 1])
    else:
        centred = block - shift
        n = tf.fill(tf.shape(shift), tf.cast(tf.shape(block)[0] * tf.shape(block)[1], tf.float32))
        low = tf.reduce_min(block, [0, 1])
        # The overall maximum from the per-sample maxima: one pass over the block serves both.
        sample_high = tf.reduce_max(block, 1)
        high = tf.reduce_max(sample_high, 0)
        sample_pos = sample_high > 0
        nan = inf = tf.zeros_like(shift)
    if bounds is None:
        lower = upper = tf.zeros_like(shift)
    else:
        lower = tf.reduce_sum(tf.cast(block <= bounds[0], block.dtype), [0, 1])
        upper = tf.reduce_sum(tf.cast(block >= bounds[1], block.dtype), [0, 1])
    return tf.stack(
        [
            n,
            tf.reduce_sum(centred, [0, 1]),
            tf.reduce_sum(tf.square(centred), [0, 1]),
            low,
            high,
            tf.reduce_sum(tf.cast(block > 0, block.dtype), [0, 1]),
            tf.reduce_sum(tf.cast(sample_pos, block.dtype), 0),
            nan,
            inf,
            lower,
            upper,
        ]
    )


def _combine(parts):
    """Combine chunk statistics of shape (chunks, 11, units): sums, min and max."""
    total = tf.reduce_sum(tf.cast(parts, tf.float64), 0)
    low = tf.cast(tf.reduce_min(parts[:, 3], 0), tf.float64)
    high = tf.cast(tf.reduce_max(parts[:, 4], 0), tf.float64)
    return tf.concat([total[:3], low[None], high[None], total[5:]], 0)


def _all_chunks(values, shift, bounds, masked: bool):
    batch, positions, units = values.shape
    group = min(batch, max(1, CHUNK_ELEMENTS // max(1, positions * units)))
    full = (batch // group) * group
    blocks = tf.reshape(values[:full], [batch // group, group, positions, units])
    parts = tf.map_fn(
        lambda block: _chunk_stats(block, shift, bounds, masked),
        blocks,
        fn_output_signature=tf.float64 if masked else tf.float32,
        parallel_iterations=4,
    )
    if full < batch:
        parts = tf.concat([parts, _chunk_stats(values[full:], shift, bounds, masked)[None]], 0)
    return _combine(parts)


def moments_around(
    values: tf.Tensor, shift: tf.Tensor, bounds: tuple[float, float] | None
) -> tf.Tensor:
    """Per-unit statistics of one batch `(samples, positions, units)` around `shift`.

    Returns a float64 tensor of shape (11, units): finite count, sum and sum of
    squares of `values - shift`, min, max, positive count, samples with a positive
    position, NaN, Inf, and counts at the lower and upper bound (`bounds` already
    widened by epsilon). With static shapes (compile it with `jit_compile=True`) the
    batch is reduced in cache-sized chunks; otherwise, as under a distribution
    strategy or for an empty replica batch, in one pass. A batch with NaN or Inf, or
    whose float32 sums overflow, takes the masked path, in float64.
    """
    if values.shape.is_fully_defined():
        fast = _all_chunks(values, shift, bounds, masked=False)

        def masked():
            return _all_chunks(values, shift, bounds, masked=True)
    else:
        fast = tf.cast(_chunk_stats(values, shift, bounds, masked=False), tf.float64)

        def masked():
            return tf.cast(_chunk_stats(values, shift, bounds, masked=True), tf.float64)

    clean = tf.reduce_all(tf.math.is_finite(fast[1:3]))
    return tf.cond(clean, lambda: fast, masked)


def batch_stats(
    values: tf.Tensor, bounds: tuple[float, float] | None
) -> tuple[tf.Tensor, tf.Tensor]:
    """`moments_around` the batch's own first value of each unit, and that shift.

    The shift (the unit's first finite value, or 0 when it has none) keeps the
    float32 sums of squares free of cancellation.
    """
    first = values[0, 0]
    shift = tf.cond(
        tf.reduce_all(tf.math.is_finite(first)), lambda: first, lambda: first_finite(values)
    )
    return moments_around(values, shift, bounds), tf.cast(shift, tf.float64)


def first_finite(values: tf.Tensor) -> tf.Tensor:
    """Per unit of a `(samples, positions, units)` batch: a finite value (0 where none is)."""
    rows = tf.reshape(values, [-1, tf.shape(values)[-1]])
    finite = tf.math.is_finite(rows)
    # Any finite value of the unit serves as a shift; argmax's pick among ties is one.
    row = tf.argmax(tf.cast(finite, tf.int32), axis=0, output_type=tf.int32)
    picked = tf.gather_nd(rows, tf.stack([row, tf.range(tf.shape(rows)[1])], axis=1))
    return tf.where(tf.reduce_any(finite, 0), picked, tf.zeros_like(picked))


def batch_summary(
    values: tf.Tensor,
    bounds: tuple[float, float] | None,
    histogram_samples: int | None,
    *,
    compiled: bool,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """`batch_stats` and the `histogram` of the first `histogram_samples` samples (None: all)."""
    moments, shift = batch_stats(values, bounds)
    sampled = values if histogram_samples is None else values[:histogram_samples]
    return moments, shift, histogram(sampled, compiled=compiled)


def histogram(values: tf.Tensor, *, compiled: bool = False) -> tf.Tensor:
    """Counts of finite values in the fixed float32-bit-pattern buckets of `histogram_edges`.

    `compiled`: the caller compiles with XLA, which cannot compile `bincount` (its
    length must be a constant) but runs a segment sum about 2.5x faster than
    TensorFlow's `bincount` on a CPU; outside XLA that segment sum is the slow one.
    """
    bits = tf.bitcast(tf.reshape(values, [-1]), tf.int32)
    magnitude = tf.bitwise.right_shift(tf.bitwise.bitwise_and(bits, 0x7FFFFFFF), 21)
    index = tf.where(bits < 0, 1023 - magnitude, 1024 + magnitude)
    index = tf.where(magnitude >= 1020, HIST_BINS, index)  # inf and NaN: counted elsewhere
    if compiled:
        counts = tf.math.unsorted_segment_sum(tf.ones_like(index), index, HIST_BINS + 1)
        return counts[:HIST_BINS]
    return tf.math.bincount(index, minlength=HIST_BINS, maxlength=HIST_BINS, dtype=tf.int32)
