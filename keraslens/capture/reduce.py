"""Per-batch reductions of one layer's activations: one pass, each value read once.

The pass itself is `_kernel.summarize` (C, see `_kernel.c` for why), called from
inside the capture's `tf.function` through `tf.numpy_function`: TensorFlow hands
it the layer's output buffer without a copy, and it releases the GIL while it
runs, so the reductions of one layer overlap the forward pass of the next.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from keraslens.capture.stats import HIST_BINS, STATISTICS

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


def batch_summary(
    values: tf.Tensor,
    bounds: tuple[float, float] | None,
    histogram_samples: int | tf.Tensor | None,
    shift: tf.Tensor | None = None,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Per-unit statistics of one `(samples, positions, units)` float32 batch.

    Returns `(rows, shift, hist)`: `rows` a float64 `(len(STATISTICS), units)` tensor
    (finite count, sum and sum of squares of `values - shift` over the finite values,
    finite min and max, positive count, samples with a positive position, NaN, Inf,
    and counts at the lower and upper bound, `bounds` already widened by epsilon);
    `shift` as float64, by default each unit's first finite
    value (0 where it has none), which keeps the float32 sums of squares free of
    cancellation; `hist` the int64 counts of the finite values of the first
    `histogram_samples` samples (None: all; a tensor: decided at run time) in the
    buckets of `histogram_edges`.
    """
    units = int(values.shape[-1])
    given = shift is not None
    lower, upper = bounds if bounds is not None else (0.0, 0.0)
    threads = reduction_threads()

    def run(batch: np.ndarray, start: np.ndarray, hist_samples: np.ndarray):
        batch = np.ascontiguousarray(batch, np.float32)
        samples, positions, _ = batch.shape
        around = np.array(start, np.float32)  # a copy: the kernel fills it when not given
        moments = np.empty((len(STATISTICS), units))
        hist = np.empty(HIST_BINS, np.int64)
        limit = samples if hist_samples < 0 else int(hist_samples)
        flags = (not given, bounds is not None, lower, upper, limit)
        _kernel.summarize(batch, samples, positions, units, around, *flags, moments, hist, threads)
        return moments, around.astype(np.float64), hist

    start = shift if given else np.zeros([units], np.float32)
    limit = -1 if histogram_samples is None else histogram_samples
    limit = tf.cast(limit, tf.int64) if tf.is_tensor(limit) else np.int64(limit)
    moments, used, hist = tf.numpy_function(
        run,
        [values, start, limit],
        [tf.float64, tf.float64, tf.int64],
        stateful=False,
    )
    moments.set_shape([len(STATISTICS), units])
    used.set_shape([units])
    hist.set_shape([HIST_BINS])
    return moments, used, hist


def reduction_threads() -> int:
    """Threads per reduction: TensorFlow's intra-op setting, else the usable cores, at
    most `MAX_THREADS`."""
    configured = tf.config.threading.get_intra_op_parallelism_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(MAX_THREADS, configured or cores or 1))
