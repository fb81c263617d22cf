"""`Lens`: wrap a Keras model and stream per-unit statistics of its layers."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keraslens.capture import distributed, reduce
from keraslens.capture.activations import identify
from keraslens.capture.data import (
    arrange_inputs,
    check_inputs,
    iterate_batches,
    to_input_tensors,
)
from keraslens.capture.intercept import Summarize, has_units, record_calls
from keraslens.capture.stats import LayerStats
from keraslens.capture.traversal import LayerSelector, select
from keraslens.errors import KeraslensError

Progress = Callable[[int, "int | None"], None]


@dataclass(frozen=True)
class CallSite:
    """One call of a captured layer in the forward pass."""

    key: str
    path: str
    layer: keras.layers.Layer
    activation: str | None
    bounds: tuple[float, float] | None
    shape: tuple[int | None, ...]
    units: int


class Lens:
    """Capture per-unit statistics of a Keras model's layers, without modifying it.

    Works on Sequential, Functional, nested, multi-input/output and subclassed
    models: it records layer outputs by intercepting layer calls while the model
    runs in inference mode, and reduces them inside one compiled function, so
    memory is bounded by the number of units, not by the number of samples.

    Args:
        model: a Keras 3 model (built, or buildable from the first batch).
        layers: which layers to capture: None (every layer that computes
            something), or names, paths (`"encoder/conv1"`), globs, layer
            classes or predicates, alone or in a list.
        epsilon: distance from an activation's bound (on its output scale) that
            counts as "at the bound".
        histogram_samples: how many samples of each batch feed the layer
            histogram (None: all). The other statistics always use every sample;
            the default keeps the histogram's cost small (its bucketing, a scatter,
            costs about as much per value as every other statistic together) while
            sampling every batch.

    Example:

    ```python
    lens = keraslens.Lens(model, layers="conv*")
    stats = lens.capture(x_val, batch_size=256)
    stats["conv1"].firing_rate
    ```
    """

    def __init__(
        self,
        model: keras.Model,
        layers: LayerSelector | Iterable[LayerSelector] | None = None,
        *,
        epsilon: float = 0.01,
        histogram_samples: int | None = 32,
    ) -> None:
        if not isinstance(model, keras.layers.Layer):
            raise KeraslensError(
                f"Lens needs a Keras model, got {type(model).__name__}. Load it with "
                "keras.saving.load_model first."
            )
        if not (isinstance(epsilon, (int, float)) and 0 <= epsilon < 1):
            raise KeraslensError(f"epsilon must be a number in [0, 1), got {epsilon!r}.")
        if histogram_samples is not None and (
            not isinstance(histogram_samples, int) or histogram_samples < 1
        ):
            raise KeraslensError(
                f"histogram_samples must be None or a positive integer, got {histogram_samples!r}."
            )
        self.model = model
        self.epsilon = float(epsilon)
        self.histogram_samples = histogram_samples
        self.layers = select(model, layers)
        self.sites: list[CallSite] = []
        self._stats_step = tf.function(self._forward_stats)
        self._activations_step = tf.function(self._forward_activations)
        self._distributed_capture = None

    @property
    def paths(self) -> list[str]:
        """Paths of the selected layers, in model order."""
        return [path for path, _ in self.layers]

    def capture(
        self,
        data: Any,
        batch_size: int = 256,
        *,
        progress: Progress | None = None,
        strategy: tf.distribute.Strategy | None = None,
    ) -> dict[str, LayerStats]:
        """Run the model over `data` in inference mode and return statistics per call site.

        Args:
            data: NumPy array, tuple/dict of arrays, `tf.data.Dataset` or `PyDataset`.
            batch_size: samples per step for array data (datasets keep their batching).
            progress: called as `progress(samples_done, total_or_None)` after each batch.
            strategy: a `tf.distribute.Strategy` to run the capture on (`MirroredStrategy`,
                `MultiWorkerMirroredStrategy`); None: the one of an enclosing
                `capture_strategy(...)` block or `strategy.scope()`, if any. Distributed, `batch_size` is the global batch
                and datasets are re-batched (see docs/scale.md).

        Returns:
            A dict from layer path (`path@i` for the i-th call of a shared layer)
            to `LayerStats`, in model order.
        """
        strategy = strategy or distributed.current_strategy()
        if strategy is not None:
            return self._distributed(strategy).capture(data, batch_size, progress)
        batches, total = iterate_batches(data, batch_size, self._input_rank())
        sums: dict[str, reduce.Sums] = {}
        done = 0
        for batch in batches:
            batch = self._prepare(batch)
            size = int(tf.nest.flatten(batch)[0].shape[0])
            if size == 0:  # nothing to add, and oneDNN's fused convolutions fail on it
                continue
            with _running(self.model, batch):
                outputs = _traced(self._stats_step, batch)
            for site in self.sites:
                part = reduce.Sums(*(t.numpy() for t in outputs[site.key]))
                sums[site.key] = sums[site.key].add(part) if site.key in sums else part
            done += size
            if progress is not None:
                progress(done, total)
        if done == 0:
            raise KeraslensError("The data is empty: there are no samples to capture.")
        return {site.key: _layer_stats(site, sums[site.key], done, self.epsilon) for site in self.sites}

    def _distributed(self, strategy: tf.distribute.Strategy) -> distributed.DistributedCapture:
        if self._distributed_capture is None or self._distributed_capture.strategy is not strategy:
            self._distributed_capture = distributed.DistributedCapture(self, strategy)
        return self._distributed_capture

    def activations(self, x: Any) -> dict[str, np.ndarray]:
        """Raw activations of a small batch, as a dict from call-site key to array.

        Meant for a few samples (per-sample maps); use `capture` for statistics.
        """
        batch = next(iter(iterate_batches(x, 1 << 30, self._input_rank())[0]), None)
        if batch is None or int(tf.nest.flatten(batch)[0].shape[0]) == 0:
            raise KeraslensError("The data is empty: there are no samples to record.")
        batch = self._prepare(batch)
        with _running(self.model, batch):
            recorded = _traced(self._activations_step, batch)
        return {key: value.numpy() for key, value in recorded.items()}

    def _input_rank(self) -> int | None:
        try:
            inputs = self.model.inputs
        except (AttributeError, ValueError):
            inputs = None
        if inputs:
            return len(inputs[0].shape)
        # A built subclassed model has no symbolic inputs; Keras keeps the shape it was
        # built with (`Layer._build_shapes_dict`), which is all an input rank needs.
        build_shapes = getattr(self.model, "_build_shapes_dict", None) or {}
        built_with = next(iter(build_shapes.values()), None)
        if isinstance(built_with, (tuple, list)) and all(
            d is None or isinstance(d, int) for d in built_with
        ):
            return len(built_with)
        return None

    def _prepare(self, batch: Any) -> Any:
        batch = arrange_inputs(self.model, batch)
        check_inputs(self.model, batch)
        batch = to_input_tensors(self.model, batch)
        if not self.model.built and int(tf.nest.flatten(batch)[0].shape[0]) > 0:
            self._run_eagerly_once(tf.nest.map_structure(lambda t: t[:1], batch))
        return batch

    def _run_eagerly_once(self, batch: Any) -> None:
        with _running(self.model, batch):
            self.model(batch, training=False)

    def _record(
        self, x: Any, summarize: Summarize | None = None
    ) -> dict[str, tuple[CallSite, tf.Tensor, Any]]:
        """Run the model on `x`, recording each call site's output and its summary."""
        layers = [layer for _, layer in self.layers]
        with record_calls(layers, summarize) as record, _running(self.model, x):
            self.model(x, training=False)
        sites: dict[str, tuple[CallSite, tf.Tensor, Any]] = {}
        for path, layer in self.layers:
            calls = [(t, s) for t, s in record[id(layer)] if has_units(t)]
            for index, (tensor, summary) in enumerate(calls):
                key = path if len(calls) == 1 else f"{path}@{index}"
                activation, bounds = identify(layer)
                site = CallSite(
                    key=key,
                    path=path,
                    layer=layer,
                    activation=activation,
                    bounds=bounds,
                    shape=tuple(tensor.shape[1:]),
                    units=int(tensor.shape[-1]),
                )
                sites[key] = (site, tensor, summary)
        if not sites:
            raise KeraslensError(
                f"None of the selected layers of {self.model.name!r} produced a floating-point "
                "output with a units axis; select other layers."
            )
        return sites

    def _forward_stats(self, x: Any) -> dict[str, tuple[tf.Tensor, tf.Tensor, tf.Tensor]]:
        recorded = self._record(x, self._summarize)
        self.sites = [site for site, _, _ in recorded.values()]
        return {key: summary for key, (_, _, summary) in recorded.items()}

    def _summarize(self, layer: keras.layers.Layer, tensor: tf.Tensor):
        """One call's batch statistics: (moments, shift, histogram)."""
        values = tf.cast(tensor, tf.float32)
        values = tf.reshape(values, [tf.shape(values)[0], -1, int(tensor.shape[-1])])
        _, bounds = identify(layer)
        if bounds is not None:
            bounds = (bounds[0] + self.epsilon, bounds[1] - self.epsilon)
        return reduce.batch_summary(values, bounds, self.histogram_samples)

    def _forward_activations(self, x: Any) -> dict[str, tf.Tensor]:
        return {key: tensor for key, (_, tensor, _) in self._record(x).items()}


@contextlib.contextmanager
def _running(model: keras.Model, x: Any) -> Iterator[None]:
    """Within the block, an error of `model` on `x` becomes a `KeraslensError` naming both."""
    try:
        yield
    except KeraslensError:
        raise
    except Exception as error:  # Keras and TensorFlow raise many types for a bad input.
        shapes = [tuple(t.shape) for t in tf.nest.flatten(x)]
        raise KeraslensError(
            f"Model {model.name!r} could not run on inputs of shape {shapes}: {_reason(error)}"
        ) from error


_NOISE = (
    "File ",
    "[[",
    "Graph execution error",
    "Detected at node",
    "Stack trace",
    "Exception encountered when calling",
    "in user code",
)


def _reason(error: Exception) -> str:
    """The line of a Keras or TensorFlow error message that says what went wrong.

    Keras adds the call's arguments after it, TensorFlow the Python frames and graph
    nodes around it; both colour their text for terminals.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).split("Arguments received")[0]
    lines = [line.strip() for line in text.splitlines()]
    useful = [line for line in lines if line and not line.startswith(_NOISE)]
    return useful[-1][:400] if useful else type(error).__name__


def _traced(step: Callable, batch: Any) -> Any:
    """`step(batch)`, re-raising a `KeraslensError` from its trace as itself.

    Autograph wraps an exception raised while tracing in a `StagingError` unless the
    exception's type is one it knows, which would hide the message meant for the user.
    """
    try:
        return step(batch)
    except KeraslensError:
        raise
    except Exception as error:
        cause = error.__cause__ or error.__context__
        if isinstance(cause, KeraslensError):
            raise cause from cause.__cause__
        raise


def _layer_stats(site: CallSite, sums: reduce.Sums, samples: int, epsilon: float) -> LayerStats:
    """The `LayerStats` of one call site from its sums over `samples` samples."""
    moments = sums.moments
    n, s1, s2 = moments[0], moments[1], moments[2]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, sums.shift + s1 / np.maximum(n, 1), 0.0)
        m2 = np.where(n > 0, np.maximum(s2 - s1 * s1 / np.maximum(n, 1), 0.0), 0.0)
    return LayerStats(
        path=site.key,
        layer_type=type(site.layer).__name__,
        activation=site.activation,
        bounds=site.bounds,
        epsilon=epsilon,
        shape=site.shape,
        units=site.units,
        samples=samples,
        count=_as_count(n + moments[7] + moments[8]),
        finite_count=_as_count(n),
        mean=mean,
        m2=m2,
        min=moments[3],
        max=moments[4],
        positive_count=_as_count(moments[5]),
        sample_positive_count=_as_count(moments[6]),
        nan_count=_as_count(moments[7]),
        inf_count=_as_count(moments[8]),
        lower_count=_as_count(moments[9]),
        upper_count=_as_count(moments[10]),
        hist_counts=sums.hist.astype(np.int64),
    )


def _as_count(row: np.ndarray) -> np.ndarray:
    return np.rint(row).astype(np.int64)
