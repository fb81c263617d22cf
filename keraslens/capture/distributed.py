"""Capture under a `tf.distribute` strategy: per-replica accumulators, merged by the strategy.

Each replica runs the model and the same reductions as `Lens.capture` on its own
batches, and adds them into accumulators of its own (sync-on-read variables, like
Keras metrics). Nothing crosses replicas until the end, except once at the first
step, when the replicas agree on a common shift per unit (the mean of the first
global batch, all-reduced). Every replica then accumulates sums of `x - shift`
and `(x - shift)^2`, so the partials of all replicas are plain sums: one
`strategy.reduce(SUM)` merges them exactly, whatever the split, and one
`strategy.gather` brings the per-replica minima and maxima. What is exchanged is
a few vectors per layer, independent of the number of samples.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

# PerReplicaSpec has no public name; it is how a step is traced once for every batch size.
from tensorflow.python.distribute import values as values_lib

from keraslens.capture import reduce
from keraslens.capture.data import (
    arrange_inputs,
    as_arrays,
    sample_count,
    to_input_tensors,
    without_autotune,
    x_of,
)
from keraslens.capture.recorder import CallSite, Recorder, by_unit, per_site
from keraslens.capture.stats import (
    ADDED_ROWS,
    HIST_BINS,
    MAX_ROWS,
    MIN_ROWS,
    ROW,
    STATISTICS,
    LayerStats,
    Sums,
    empty_rows,
)
from keraslens.errors import KeraslensError

_CAPTURE_STRATEGY: list[tf.distribute.Strategy] = []


@contextlib.contextmanager
def capture_strategy(strategy: tf.distribute.Strategy | None) -> Iterator[None]:
    """Within the block, `Lens.capture` runs under `strategy` unless given another one.

    Unlike `strategy.scope()`, it leaves everything else (variable creation, plugins'
    own TensorFlow code) on the default strategy. None changes nothing.
    """
    if strategy is not None:
        _CAPTURE_STRATEGY.append(strategy)
    try:
        yield
    finally:
        if strategy is not None:
            _CAPTURE_STRATEGY.pop()


def strategy_named(name: str | None) -> tf.distribute.Strategy | None:
    """`"mirrored"`: every local GPU (or the CPU); `"multiworker"`: the TF_CONFIG cluster."""
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name is None:
        return None
    raise KeraslensError(f"strategy must be 'mirrored' or 'multiworker', got {name!r}.")


def current_strategy() -> tf.distribute.Strategy | None:
    """The strategy of the innermost `capture_strategy` block, else of `strategy.scope()`."""
    if _CAPTURE_STRATEGY:
        return _CAPTURE_STRATEGY[-1]
    return tf.distribute.get_strategy() if tf.distribute.has_strategy() else None


@dataclass
class _Accumulators:
    """One replica's state for every call site, the sites' units side by side: shift, rows
    (len(STATISTICS), units), one histogram per site, samples.

    One state for all sites keeps a step's bookkeeping to a few operations per replica,
    not a few per site and replica.
    """

    shift: tf.Variable
    rows: tf.Variable
    hist: tf.Variable
    samples: tf.Variable


class DistributedCapture:
    """`Lens.capture` run by a `tf.distribute` strategy; built once per (lens, strategy).

    Args:
        recorder: the `Recorder` of the lens, whose model, layers and settings to use.
        strategy: a `tf.distribute.Strategy` (`MirroredStrategy`,
            `MultiWorkerMirroredStrategy`, ...).

    `exchanged_bytes` holds, after a capture, how many bytes each replica
    contributed to cross-replica operations (the shift agreement and the merge).
    """

    def __init__(self, recorder: Recorder, strategy: tf.distribute.Strategy) -> None:
        self.recorder = recorder
        self.strategy = strategy
        self.exchanged_bytes = 0
        self._sites: list[CallSite] = []
        self._state: _Accumulators | None = None
        run = strategy.run
        self._first_step = tf.function(lambda b: run(lambda x: self._replica_step(x, True), (b,)))
        self._step = tf.function(lambda b: run(lambda x: self._replica_step(x, False), (b,)))
        self._merged = tf.function(lambda: run(self._replica_merged))
        self._reset = tf.function(lambda: run(self._replica_reset))

    def capture(
        self, data: Any, batch_size: int, progress: Callable[[int, int | None], None] | None
    ) -> dict[str, LayerStats]:
        """Statistics of `data` per call site, equal to a single-device `Lens.capture`."""
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise KeraslensError(f"batch_size must be a positive integer, got {batch_size!r}.")
        own_pipeline = callable(data) and not isinstance(data, tf.data.Dataset)
        if own_pipeline or self.strategy.extended._in_multi_worker_mode():
            batches, total, spec = self._distribute(data, batch_size)
        else:
            batches, total, spec = self._split(data, batch_size)
        # One trace for every batch size: the last, partial batches included.
        for step in (self._first_step, self._step):
            step.get_concrete_function(spec)
        self._reset()
        done = 0
        for index, (batch, size) in enumerate(batches):
            (self._step if index else self._first_step)(batch)
            done += size
            if progress is not None:
                progress(done, total)
        return self._merge()

    # Data -------------------------------------------------------------------------------

    def _split(self, data: Any, batch_size: int):
        """One worker's batches, each split into one part per replica by this process.

        Steps take `batch_size / replicas` samples (rounded up) per replica; the last
        step gives the replicas past the end an empty part. No `tf.data` iterator is made
        across devices: creating one costs about a second per capture.

        Returns the batches (with their sizes), the sample count if known, and the spec
        of a batch.
        """
        replicas = self.strategy.num_replicas_in_sync
        per_replica = -(-batch_size // replicas)
        if isinstance(data, tf.data.Dataset):
            elements, total = _sample_dataset(data, self.recorder.input_rank())
            first = next(iter(elements.batch(1)), None)
            source = iter(without_autotune(elements.batch(per_replica * replicas)))
        else:
            structure, total = _arrays_of(data)
            first = tf.nest.map_structure(lambda a: a[:1], structure) if total else None
            step = per_replica * replicas
            source = (
                tf.nest.map_structure(lambda a, s=start: a[s : s + step], structure)
                for start in range(0, total, step)
            )
        if first is None:
            raise KeraslensError("The data is empty: there are no samples to capture.")
        self._prepare(first)

        def parts(batch: Any) -> tuple[Any, int]:
            def part(context: tf.distribute.experimental.ValueContext) -> Any:
                start = context.replica_id_in_sync_group * per_replica
                piece = slice(start, start + per_replica)
                inputs = tf.nest.map_structure(lambda a: tf.convert_to_tensor(a[piece]), batch)
                return inputs, tf.constant(start, tf.int64)

            split = self.strategy.experimental_distribute_values_from_function(part)
            return split, sample_count(batch)

        def open_spec(value: Any) -> values_lib.PerReplicaSpec:
            one = tf.TensorSpec([None, *value.shape[1:]], tf.convert_to_tensor(value).dtype)
            return values_lib.PerReplicaSpec(*[one] * replicas)

        offset = values_lib.PerReplicaSpec(*[tf.TensorSpec([], tf.int64)] * replicas)
        spec = (tf.nest.map_structure(open_spec, first), offset)
        return (parts(batch) for batch in source), total, spec

    def _distribute(self, data: Any, batch_size: int):
        """A distributed dataset of model inputs, for several workers or a callable `data`.

        Samples are batched `batch_size / replicas` per replica, and each input pipeline
        (one per worker) keeps every k-th of these batches. A callable `data` is used as is:
        `data(input_context)` returns that worker's per-replica batched dataset.

        Returns the batches (with their sizes on this worker), the sample count if known,
        and the spec of a batch.
        """
        total = None
        if callable(data) and not isinstance(data, tf.data.Dataset):
            make = data
            first = next(iter(data(tf.distribute.InputContext())), None)
        else:
            elements, total = _sample_dataset(data, self.recorder.input_rank())

            def make(context: tf.distribute.InputContext) -> tf.data.Dataset:
                per_replica = -(-batch_size // context.num_replicas_in_sync)
                # Sharding whole batches, not samples, keeps tf.data from handling each sample.
                batches = elements.batch(per_replica)
                return batches.shard(context.num_input_pipelines, context.input_pipeline_id)

            first = next(iter(elements.batch(1)), None)
        if first is None:
            raise KeraslensError("The data is empty: there are no samples to capture.")
        self._prepare(x_of(first))
        if self.strategy.extended._in_multi_worker_mode():  # each worker sees its own part
            total = None
        dataset = self.strategy.distribute_datasets_from_function(
            lambda context: without_autotune(make(context).map(x_of).map(_at_start))
        )
        local = self.strategy.experimental_local_results

        def sized(batch: Any) -> tuple[Any, int]:
            return batch, sum(int(t.shape[0]) for t in local(tf.nest.flatten(batch)[0]))

        return (sized(batch) for batch in dataset), total, dataset.element_spec

    def _prepare(self, batch: Any) -> None:
        """Build the model, find the call sites and create their accumulators (once)."""
        batch = self.recorder.prepare(batch)
        if self._state is not None:
            return
        self._sites = self.recorder.trace(batch)
        units = sum(site.units for site in self._sites)
        with self.strategy.scope():
            self._state = _accumulators(units, len(self._sites))

    # Replica functions ------------------------------------------------------------------

    def _replica_step(self, batch: tuple[Any, tf.Tensor], agree_shift: bool) -> None:
        """One replica's part of a step: `batch` is its inputs and the index, in the global
        batch, of its first sample."""
        inputs, offset = batch
        model = self.recorder.model
        values = self._replica_values(to_input_tensors(model, arrange_inputs(model, inputs)))
        samples = tf.cast(tf.shape(tf.nest.flatten(inputs)[0])[0], tf.float64)
        recorder = self.recorder
        histogram_samples = recorder.histogram_samples
        if histogram_samples is not None:
            # The histogram takes the first samples of the global batch, as on one device:
            # a replica whose part starts past them adds none.
            histogram_samples = tf.maximum(histogram_samples - offset, 0)
        state = self._state
        shifts = None if agree_shift else state.shift.read_value()
        summaries, end = [], 0
        for site in self._sites:
            shift = None if shifts is None else shifts[end : end + site.units]
            end += site.units
            summaries.append(
                reduce.batch_summary(
                    values[site.key], recorder.widened(site.bounds), histogram_samples, shift
                )
            )
        rows, used, hists = zip(*summaries, strict=True)
        rows = tf.concat(rows, 1)
        if agree_shift:
            rows = self._agree_shift(rows, tf.concat(used, 0))
        state.rows.assign(_accumulate(state.rows.read_value(), rows))
        state.hist.assign_add(tf.cast(tf.stack(hists), tf.float64))
        state.samples.assign_add(samples)

    def _replica_values(self, x: Any) -> dict[str, tf.Tensor]:
        """Each call site's outputs as `(samples, positions, units)`; none for an empty batch.

        A replica gets an empty batch whenever the last global batch has fewer samples than
        there are replicas. The model is not run on it: oneDNN's fused convolutions
        (TensorFlow 2.21) fail on a zero-sized batch ("input depth must be evenly divisible
        by filter depth"), and there is nothing to compute.
        """

        def run() -> dict[str, tf.Tensor]:
            return {key: by_unit(t) for key, (_, t, _) in self.recorder.record(x).items()}

        def skip() -> dict[str, tf.Tensor]:
            return {site.key: tf.zeros([0, 1, site.units]) for site in self._sites}

        return tf.cond(tf.shape(tf.nest.flatten(x)[0])[0] > 0, run, skip)

    def _agree_shift(self, rows: tf.Tensor, shift: tf.Tensor) -> tf.Tensor:
        """Set every replica's shift to the mean of the first global batch (0 where empty),
        and return this replica's first rows, summed around `shift`, moved to it.

        Each replica reduces its first batch around shifts of its own (the kernel's
        default), so the agreement costs one all-reduce of two numbers per unit and no
        second pass over the activations.
        """
        n = rows[ROW["n"]]
        summed = tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, tf.stack([n, shift * n + rows[ROW["s1"]]])
        )
        agreed = tf.cast(tf.math.divide_no_nan(summed[1], summed[0]), tf.float32)
        self._state.shift.assign(agreed)
        return _moved(rows, shift - tf.cast(agreed, tf.float64))

    def _replica_partials(self) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """This replica's sums (one flat vector), extremes (1, extreme rows * units), shifts.

        Every replica sums around the same shift, so the added rows merge by an all-reduce
        sum; the minima are negated, so that one gather and a maximum merge every extreme.
        """
        state = self._state
        rows = state.rows.read_value()
        sums = [
            tf.reshape(tf.gather(rows, ADDED_ROWS), [-1]),
            tf.reshape(state.hist.read_value(), [-1]),
            state.samples.read_value()[None],
        ]
        extremes = [-rows[i] for i in MIN_ROWS] + [rows[i] for i in MAX_ROWS]
        return tf.concat(sums, 0), tf.concat(extremes, 0)[None], state.shift.read_value()

    def _replica_merged(self) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Every replica's sums all-reduced, extremes all-gathered, and this one's shifts.

        Both exchanges run inside one compiled call: done eagerly from the host, as
        `strategy.reduce` and `strategy.gather` do, they cost seconds per capture.
        """
        sums, extremes, shifts = self._replica_partials()
        context = tf.distribute.get_replica_context()
        total = context.all_reduce(tf.distribute.ReduceOp.SUM, sums)
        return total, context.all_gather(extremes, axis=0), shifts

    def _replica_reset(self) -> None:
        state = self._state
        state.rows.assign(empty_rows(state.rows.shape[1]))
        state.hist.assign(tf.zeros_like(state.hist))
        state.samples.assign(tf.zeros_like(state.samples))

    # Merge ------------------------------------------------------------------------------

    def _merge(self) -> dict[str, LayerStats]:
        """All-reduce the sums, gather the extremes, and turn them into `LayerStats`."""
        local = self.strategy.experimental_local_results
        total, gathered, shifts = (local(value)[0].numpy() for value in self._merged())
        highest = gathered.max(axis=0)
        units = [site.units for site in self._sites]
        # Per replica: the shift agreement (a count and a sum per unit), then its sums and its
        # extremes, all float64.
        self.exchanged_bytes = 2 * sum(units) * 8 + total.nbytes + gathered[0].nbytes
        added, lowest, highest_rows = len(ADDED_ROWS), list(MIN_ROWS), list(MAX_ROWS)
        width = sum(units)
        samples = int(round(total[-1]))
        if samples == 0:
            raise KeraslensError("The data is empty: there are no samples to capture.")
        rows = np.empty((len(STATISTICS), width))
        rows[list(ADDED_ROWS)] = total[: added * width].reshape(added, width)
        extremes = highest.reshape(-1, width)
        rows[lowest], rows[highest_rows] = -extremes[: len(lowest)], extremes[len(lowest) :]
        hists = total[added * width : -1].reshape(len(units), HIST_BINS)
        sums = Sums(rows, shifts.astype(np.float64), hists)
        return per_site(sums, self._sites, samples, self.recorder.epsilon)


def _at_start(*inputs: Any) -> tuple[Any, tf.Tensor]:
    """A replica's own batch, whose histogram counts from its first sample (offset 0)."""
    return inputs if len(inputs) > 1 else inputs[0], tf.constant(0, tf.int64)


def _sample_dataset(data: Any, input_rank: int | None) -> tuple[tf.data.Dataset, int | None]:
    """`data` as a dataset of single samples (model inputs only), and its size when known."""
    if isinstance(data, tf.data.Dataset):
        spec = tf.nest.flatten(x_of(data.element_spec))[0]
        data = data.map(x_of)
        if input_rank is None or spec.shape.rank != input_rank - 1:
            data = data.unbatch()
        return data, None
    structure, total = _arrays_of(data)
    return tf.data.Dataset.from_tensor_slices(structure), total


def _arrays_of(data: Any) -> tuple[Any, int]:
    """`data` as an array or a structure of arrays, and its sample count."""
    if not isinstance(data, (np.ndarray, tuple, list, dict)) and not tf.is_tensor(data):
        raise KeraslensError(
            f"Distributed capture reads arrays and tf.data datasets, got {type(data).__name__}; "
            "wrap it in a tf.data.Dataset (e.g. Dataset.from_generator)."
        )
    structure = as_arrays(data)
    return structure, sample_count(structure)


def _accumulators(units: int, sites: int) -> _Accumulators:
    def variable(initial) -> tf.Variable:
        return tf.Variable(
            initial,
            trainable=False,
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.SUM,
        )

    return _Accumulators(
        shift=variable(tf.zeros(units, tf.float32)),
        rows=variable(empty_rows(units)),
        hist=variable(tf.zeros((sites, HIST_BINS), tf.float64)),
        samples=variable(tf.zeros((), tf.float64)),
    )


_ROW_MERGES = np.array([s.merge for s in STATISTICS])[:, None]


def _moved(rows: tf.Tensor, offset: tf.Tensor) -> tf.Tensor:
    """`rows` summed around `shift` moved to `shift - offset`, in float64 (`Sums.add`)."""
    n, s1, s2 = rows[ROW["n"]], rows[ROW["s1"]], rows[ROW["s2"]]
    moved = {ROW["s1"]: s1 + n * offset, ROW["s2"]: s2 + offset * (2.0 * s1 + n * offset)}
    return tf.stack([moved.get(i, row) for i, row in enumerate(tf.unstack(rows))])


def _accumulate(total: tf.Tensor, part: tf.Tensor) -> tf.Tensor:
    """`total` and `part` rows merged row by row (both around the same shift)."""
    merged = tf.where(_ROW_MERGES == "min", tf.minimum(total, part), total + part)
    return tf.where(_ROW_MERGES == "max", tf.maximum(total, part), merged)
