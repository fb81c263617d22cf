"""The compiled capture steps of one model and layer selection, shared by every `Lens` on it.

A `tf.function` traces once per input signature, and a trace of a large model costs
seconds. The steps are therefore kept per model (weakly: they go with the model) and
per capture settings, so a second `Lens` on the same model, layers and settings reuses
the first one's traces instead of retracing.
"""

from __future__ import annotations

import contextlib
import functools
import re
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keraslens.capture import reduce
from keraslens.capture.activations import identify_output
from keraslens.capture.data import arrange_inputs, check_inputs, input_rank, to_input_tensors
from keraslens.capture.derive import Summaries
from keraslens.capture.intercept import has_units, record_calls
from keraslens.capture.stats import LayerStats, Sums
from keraslens.errors import KeraslensError


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

    def describe(self, epsilon: float) -> dict[str, Any]:
        """The `LayerStats` fields that describe this call site."""
        return {
            "path": self.key,
            "layer_type": type(self.layer).__name__,
            "activation": self.activation,
            "bounds": self.bounds,
            "epsilon": epsilon,
            "shape": self.shape,
            "units": self.units,
        }


_RECORDERS: weakref.WeakKeyDictionary[keras.layers.Layer, dict[tuple, Recorder]] = (
    weakref.WeakKeyDictionary()
)


def recorder_for(
    model: keras.layers.Layer,
    layers: Sequence[tuple[str, keras.layers.Layer]],
    epsilon: float,
    histogram_samples: int | None,
) -> Recorder:
    """The `Recorder` of `model` for these layers and settings, made on first use."""
    key = (tuple((path, id(layer)) for path, layer in layers), epsilon, histogram_samples)
    per_model = _RECORDERS.setdefault(model, {})
    if key not in per_model:
        per_model[key] = Recorder(model, layers, epsilon, histogram_samples)
    return per_model[key]


class Recorder:
    """Runs a model with its chosen layers recorded, in compiled steps traced once.

    Args:
        model: the Keras model; held weakly, so the cache never keeps it alive.
        layers: the `(path, layer)` pairs to record, in model order.
        epsilon: distance from an activation's bound that counts as at it.
        histogram_samples: samples of each batch that feed the layer histogram (None: all).
    """

    def __init__(
        self,
        model: keras.layers.Layer,
        layers: Sequence[tuple[str, keras.layers.Layer]],
        epsilon: float,
        histogram_samples: int | None,
    ) -> None:
        self._model = weakref.ref(model)
        self.layers = list(layers)
        self.epsilon = epsilon
        self.histogram_samples = histogram_samples
        self.sites: list[CallSite] = []
        self._traced_sites: list[CallSite] = []
        self._sites_by_spec: dict[tuple, list[CallSite]] = {}
        # Traced without autograph, as Keras traces its own predict step: the model runs as
        # `model.predict` runs it, and converting every layer call would double the trace.
        self._stats_step = tf.function(self._forward_stats, autograph=False)
        self._activations_step = tf.function(self._forward_activations, autograph=False)

    @property
    def model(self) -> keras.layers.Layer:
        """The recorded model."""
        model = self._model()
        if model is None:  # only reachable through a Recorder kept past its model
            raise KeraslensError("The model of this capture no longer exists; make a new Lens.")
        return model

    def input_rank(self) -> int | None:
        """The rank (batch axis included) of the model's first input, when it is known."""
        return input_rank(self.model)

    def prepare(self, batch: Any) -> Any:
        """`batch` checked and converted to the model's input tensors; the model built."""
        model = self.model
        batch = arrange_inputs(model, batch)
        check_inputs(model, batch)
        batch = to_input_tensors(model, batch)
        if not model.built and int(tf.nest.flatten(batch)[0].shape[0]) > 0:
            first = tf.nest.map_structure(lambda t: t[:1], batch)
            with running(model, first):
                model(first, training=False)
        return batch

    def trace(self, batch: Any) -> list[CallSite]:
        """Trace the statistics step for `batch`'s input signature, once; its call sites.

        The batch axis is left open, so the last, smaller batch of a dataset (and any
        later capture with another batch size) reuses the trace of the others.
        """
        return self._trace(batch, self._stats_step)

    def _trace(self, batch: Any, step: Any) -> list[CallSite]:
        specs = tf.nest.map_structure(lambda t: tf.TensorSpec([None, *t.shape[1:]], t.dtype), batch)
        signature = (id(step), *tf.nest.flatten(specs))
        if signature not in self._sites_by_spec:
            with running(self.model, batch):
                traced(lambda: step.get_concrete_function(specs))
            self._sites_by_spec[signature] = self._traced_sites
        self.sites = self._sites_by_spec[signature]
        return self.sites

    def batch_sums(self, batch: Any) -> tuple[list[CallSite], Sums, Any]:
        """The call sites, the kernel's outputs for all of them on `batch`, and the model's
        outputs from the same pass (tensors: a caller that wants them converts them).

        The sites' rows and shifts are side by side along the units axis, in site order,
        and their histograms one per row: one `Sums` for the whole model, so merging a
        batch is a few NumPy operations, not a few per layer.
        """
        sites = self._trace(batch, self._stats_step)
        with running(self.model, batch):
            rows, shift, hist, outputs = traced(lambda: self._stats_step(batch))
        return sites, Sums(rows.numpy(), shift.numpy(), hist.numpy()), outputs

    def activations(self, batch: Any) -> dict[str, tf.Tensor]:
        """The raw outputs of every call site on `batch`."""
        with running(self.model, batch):
            return traced(lambda: self._activations_step(batch))

    def record(self, x: Any, summarize: bool = False) -> dict[str, tuple[CallSite, tf.Tensor, Any]]:
        """Run the model on `x`, recording each call site's output (and its summary).

        Meant to be called while tracing; returns a dict from call-site key (`path@i`
        for the i-th call of a shared layer) to `(site, output, summary or None)`.
        """
        return self._record(x, summarize)[0]

    def _record(self, x: Any, summarize: bool) -> tuple[dict[str, tuple], Any]:
        """`record`'s dict, and the model's outputs."""
        chosen = [layer for _, layer in self.layers]
        summarized = functools.partial(self._summarize, Summaries()) if summarize else None
        with record_calls(chosen, summarized) as record:
            outputs = self.model(x, training=False)
        sites: dict[str, tuple[CallSite, tf.Tensor, Any]] = {}
        for path, layer in self.layers:
            calls = [(t, s) for t, s in record[id(layer)] if has_units(t)]
            for index, (tensor, summary) in enumerate(calls):
                key = path if len(calls) == 1 else f"{path}@{index}"
                activation, bounds = identify_output(layer, tensor)
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
        return sites, outputs

    def widened(self, bounds: tuple[float, float] | None) -> tuple[float, float] | None:
        """An activation's bounds moved inwards by `epsilon`: outputs beyond are at a bound."""
        if bounds is None:
            return None
        return bounds[0] + self.epsilon, bounds[1] - self.epsilon

    def _summarize(self, summaries: Summaries, layer: keras.layers.Layer, tensor: tf.Tensor):
        """The summary of one output: taken from outputs already read when it repeats or
        joins them (see `derive`), else the kernel's."""
        bounds = self.widened(identify_output(layer, tensor)[1])
        summary = summaries.derived(tensor, bounds)
        if summary is None:
            summary = reduce.batch_summary(by_unit(tensor), bounds, self.histogram_samples)
        summaries.add(tensor, bounds, summary)
        return summary

    def _forward_stats(self, x: Any) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, Any]:
        recorded, outputs = self._record(x, summarize=True)
        self._traced_sites = [site for site, _, _ in recorded.values()]
        rows, shifts, hists = zip(*(summary for _, _, summary in recorded.values()), strict=True)
        return tf.concat(rows, 1), tf.concat(shifts, 0), tf.stack(hists), outputs

    def _forward_activations(self, x: Any) -> dict[str, tf.Tensor]:
        return {key: tensor for key, (_, tensor, _) in self.record(x).items()}


def per_site(
    sums: Sums, sites: list[CallSite], samples: int, epsilon: float
) -> dict[str, LayerStats]:
    """The `LayerStats` of each call site from the sums of all of them side by side."""
    ends = np.cumsum([site.units for site in sites])
    stats = {}
    for index, (site, end) in enumerate(zip(sites, ends, strict=True)):
        units = slice(end - site.units, end)
        part = Sums(sums.rows[:, units], sums.shift[units], sums.hist[index])
        stats[site.key] = LayerStats.from_sums(part, samples, **site.describe(epsilon))
    return stats


def by_unit(tensor: tf.Tensor) -> tf.Tensor:
    """A layer output as float32 `(samples, positions, units)`."""
    values = tf.cast(tensor, tf.float32)
    inner = tensor.shape[1:-1]
    if inner.is_fully_defined():
        # A constant shape: one op, not four, in a step that has one per layer.
        return tf.reshape(values, [-1, inner.num_elements(), int(tensor.shape[-1])])
    return tf.reshape(values, [tf.shape(values)[0], -1, int(tensor.shape[-1])])


@contextlib.contextmanager
def running(model: keras.layers.Layer, x: Any) -> Iterator[None]:
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


def traced(step: Callable[[], Any]) -> Any:
    """`step()`, re-raising a `KeraslensError` from a trace as itself.

    Autograph wraps an exception raised while tracing in a `StagingError` unless the
    exception's type is one it knows, which would hide the message meant for the user.
    """
    try:
        return step()
    except KeraslensError:
        raise
    except Exception as error:
        cause = error.__cause__ or error.__context__
        if isinstance(cause, KeraslensError):
            raise cause from cause.__cause__
        raise
