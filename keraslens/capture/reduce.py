"""Per-batch reductions of one layer's activations: one pass, each value read once.

The pass itself is `_kernel.summarize` (C, see `_kernel.c` for why), called from
inside the capture's `tf.function` through `tf.numpy_function`: TensorFlow hands
it the layer's output buffer without a copy, and it releases the GIL while it
runs, so the reductions of one layer overlap the forward pass of the next.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from keraslens.capture.stats import HIST_BINS

try:
    from keraslens.capture import _kernel
except ImportError as error:  # a source checkout used without installing it
    raise ImportError(
        "keraslens' C kernel (keraslens/capture/_kernel.c) is not built: install keraslens "
        "with pip (`pip install -e .` in a checkout), which compiles it."
    ) from error

# Beyond a few threads the memory bus, not the cores, bounds the pass, and each part
# must be worth a thread's start.
MAX_THREADS = 4

STAT_NAMES = ("n", "s1", "s2", "min", "max", "pos", "sample_pos", "nan", "inf", "lower", "upper")
SUMMED_ROWS = (0, 1, 2, 5, 6, 7, 8, 9, 10)  # the rows of STAT_NAMES that add up over parts


def batch_summary(
    values: tf.Tensor,
    bounds: tuple[float, float] | None,
    histogram_samples: int | None,
    shift: tf.Tensor | None = None,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Per-unit statistics of one `(samples, positions, units)` float32 batch.

    Returns `(moments, shift, hist)`: `moments` a float64 `(11, units)` tensor (rows
    `STAT_NAMES`: finite count, sum and sum of squares of `values - shift` over the
    finite values, finite min and max, positive count, samples with a positive
    position, NaN, Inf, and counts at the lower and upper bound, `bounds` already
    widened by epsilon); `shift` as float64, by default each unit's first finite
    value (0 where it has none), which keeps the float32 sums of squares free of
    cancellation; `hist` the int64 counts of the finite values of the first
    `histogram_samples` samples (None: all) in the buckets of `histogram_edges`.
    """
    units = int(values.shape[-1])
    given = shift is not None
    lower, upper = bounds if bounds is not None else (0.0, 0.0)
    hist_samples = -1 if histogram_samples is None else histogram_samples
    threads = reduction_threads()

    def run(batch: np.ndarray, start: np.ndarray):
        batch = np.ascontiguousarray(batch, np.float32)
        samples, positions, _ = batch.shape
        around = np.array(start, np.float32)  # a copy: the kernel fills it when not given
        moments = np.empty((len(STAT_NAMES), units))
        hist = np.empty(HIST_BINS, np.int64)
        limit = samples if hist_samples < 0 else hist_samples
        flags = (not given, bounds is not None, lower, upper, limit)
        _kernel.summarize(
            batch, samples, positions, units, around, *flags, moments, hist, threads
        )
        return moments, around.astype(np.float64), hist

    start = shift if given else tf.zeros([units], tf.float32)
    moments, used, hist = tf.numpy_function(
        run, [values, start], [tf.float64, tf.float64, tf.int64], stateful=False
    )
    moments.set_shape([len(STAT_NAMES), units])
    used.set_shape([units])
    hist.set_shape([HIST_BINS])
    return moments, used, hist


def reduction_threads() -> int:
    """Threads per reduction: TensorFlow's intra-op setting, else the usable cores, at
    most `MAX_THREADS`."""
    configured = tf.config.threading.get_intra_op_parallelism_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(MAX_THREADS, configured or cores or 1))


class Sums(NamedTuple):
    """One call site's `batch_summary` outputs, as NumPy, over one batch or several."""

    moments: np.ndarray  # float64 (11, units), rows STAT_NAMES, s1 and s2 around `shift`
    shift: np.ndarray  # float64 (units,)
    hist: np.ndarray  # int64 (HIST_BINS,)

    def add(self, other: Sums) -> Sums:
        """Both parts together, their sums moved (in float64) to the mean of both.

        Moving to the mean so far, not to a fixed shift, is Chan et al.'s merge in the
        form of shifted sums: a far first shift costs digits once, not at every batch.
        Unlike a `LayerStats.merge` per batch it builds nothing, which keeps a capture's
        Python work per batch small (docs/capture.md, "Performance").
        """
        n = self.moments[0] + other.moments[0]
        with np.errstate(invalid="ignore", divide="ignore"):
            total = self.shift * self.moments[0] + self.moments[1]
            total += other.shift * other.moments[0] + other.moments[1]
            shift = np.where(n > 0, total / np.maximum(n, 1), self.shift)
        moments = np.empty_like(self.moments)
        rows = list(SUMMED_ROWS)
        moments[rows] = self.moments[rows] + other.moments[rows]
        moments[1:3] = _moved(self, shift) + _moved(other, shift)
        np.minimum(self.moments[3], other.moments[3], out=moments[3])
        np.maximum(self.moments[4], other.moments[4], out=moments[4])
        return Sums(moments, shift, self.hist + other.hist)


def _moved(part: Sums, shift: np.ndarray) -> np.ndarray:
    """`part`'s sum and sum of squares around `shift` instead of its own."""
    d = part.shift - shift
    n, s1, s2 = part.moments[0], part.moments[1], part.moments[2]
    return np.stack([s1 + n * d, s2 + d * (2.0 * s1 + n * d)])
