"""`Lens`: wrap a Keras model and stream per-unit statistics of its layers."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keraslens.capture import distributed
from keraslens.capture.data import iterate_batches
from keraslens.capture.recorder import CallSite, per_site, recorder_for
from keraslens.capture.stats import LayerStats, Sums
from keraslens.capture.traversal import LayerSelector, select
from keraslens.errors import KeraslensError

Progress = Callable[[int, "int | None"], None]


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
        # Shared by every Lens on this model, layers and settings: no second trace.
        self.recorder = recorder_for(model, self.layers, self.epsilon, histogram_samples)
        self._distributed_capture: distributed.DistributedCapture | None = None

    @property
    def sites(self) -> list[CallSite]:
        """The call sites of the last capture (empty before the first)."""
        return self.recorder.sites

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
                `capture_strategy(...)` block or `strategy.scope()`, if any. Distributed,
                `batch_size` is the global batch and datasets are re-batched (see
                docs/scale.md).

        Returns:
            A dict from layer path (`path@i` for the i-th call of a shared layer)
            to `LayerStats`, in model order.
        """
        strategy = strategy or distributed.current_strategy()
        if strategy is not None:
            return self._distributed(strategy).capture(data, batch_size, progress)
        return self._capture(data, batch_size, progress, outputs=None)

    def capture_with_outputs(
        self,
        data: Any,
        batch_size: int = 256,
        *,
        limit: int | None = None,
        progress: Progress | None = None,
    ) -> tuple[dict, Any]:
        """`capture`, and the model's outputs on the samples of `data` from the same pass.

        The outputs grow with the data (as `model.predict`'s do): keep those of the first
        `limit` samples only for a large one.

        Returns:
            `(stats, outputs)`: the statistics as `capture` returns them, and the outputs
            as NumPy arrays in the structure of the model's outputs.
        """
        outputs: list = []
        stats = self._capture(data, batch_size, progress, outputs, limit)
        joined = tf.nest.map_structure(lambda *parts: np.concatenate(parts), *outputs)
        return stats, joined

    def _capture(
        self,
        data: Any,
        batch_size: int,
        progress: Progress | None,
        outputs: list | None,
        limit: int | None = None,
    ) -> dict[str, LayerStats]:
        recorder = self.recorder
        batches, total = iterate_batches(data, batch_size, recorder.input_rank())
        total_sums: Sums | None = None
        sites: list[CallSite] = []
        done = 0
        for batch in batches:
            batch = recorder.prepare(batch)
            size = int(tf.nest.flatten(batch)[0].shape[0])
            if size == 0:  # nothing to add, and oneDNN's fused convolutions fail on it
                continue
            batch_sites, part, batch_outputs = recorder.batch_sums(batch)
            kept = size if limit is None else min(size, limit - done)
            if outputs is not None and kept > 0:
                outputs.append(
                    tf.nest.map_structure(lambda t, k=kept: t[:k].numpy(), batch_outputs)
                )
            if total_sums is None:
                sites, total_sums = batch_sites, part
            else:
                _check_same_units(sites, batch_sites)
                total_sums = total_sums.add(part)
            done += size
            if progress is not None:
                progress(done, total)
        if total_sums is None:
            raise KeraslensError("The data is empty: there are no samples to capture.")
        return per_site(total_sums, sites, done, self.epsilon)

    def _distributed(self, strategy: tf.distribute.Strategy) -> distributed.DistributedCapture:
        if self._distributed_capture is None or self._distributed_capture.strategy is not strategy:
            self._distributed_capture = distributed.DistributedCapture(self.recorder, strategy)
        return self._distributed_capture

    def input_rank(self) -> int | None:
        """The rank (batch axis included) of the model's first input, when it is known."""
        return self.recorder.input_rank()

    def activations(self, x: Any) -> dict[str, np.ndarray]:
        """Raw activations of a small batch, as a dict from call-site key to array.

        Meant for a few samples (per-sample maps); use `capture` for statistics.
        """
        recorder = self.recorder
        batch = next(iter(iterate_batches(x, 1 << 30, recorder.input_rank())[0]), None)
        if batch is None or int(tf.nest.flatten(batch)[0].shape[0]) == 0:
            raise KeraslensError("The data is empty: there are no samples to record.")
        recorded = recorder.activations(recorder.prepare(batch))
        return {key: value.numpy() for key, value in recorded.items()}


def _check_same_units(sites: list[CallSite], others: list[CallSite]) -> None:
    if [s.units for s in sites] != [s.units for s in others]:
        raise KeraslensError(
            "The layers' numbers of units changed between batches of one capture: give "
            "every batch the same input shape (batch size aside)."
        )
