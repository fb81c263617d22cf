"""`maximize()`: synthesise the inputs that most activate chosen units.

All the chosen units are optimised together, one input each in one batch, by one compiled
gradient-ascent loop (`tf.function` over every step), so a call costs one trace and then
`steps` batched forward and backward passes.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from keraslens.attr.compat import build_graph, input_shape_of, require_continuous_input
from keraslens.errors import KeraslensError

_ADAM_BETA1, _ADAM_BETA2, _ADAM_EPSILON = 0.9, 0.999, 1e-7
"""Keras's Adam defaults."""


class Maximization(NamedTuple):
    """Synthesised inputs, one per unit, and the activation each reaches.

    Args:
        inputs: `(len(units), *input_shape)`, within the input range.
        activations: the unit's activation on its input (mean over positions for a conv
            filter; the pre-activation score for an output class).
    """

    inputs: np.ndarray
    activations: np.ndarray


def unit_model(
    model: keras.Model, layer: str | None, input_shape: Sequence, output: int | str | None = None
) -> keras.Model:
    """A model from the input to `layer`'s activation, or to the pre-activation class scores
    when `layer` is None (a softmax would let a class win only by suppressing the others).

    A rank-1 output `(batch,)` is one score per sample: it becomes unit 0 of `(batch, 1)`.
    Built once per model, layer, output and input shape, then reused.
    """
    return _ascent(model, layer, tuple(input_shape), output).target


def unit_values(outputs: np.ndarray) -> np.ndarray:
    """`(N, units)` values of a layer output: conv filters averaged over positions."""
    outputs = np.asarray(outputs)
    return outputs.mean(axis=tuple(range(1, outputs.ndim - 1))) if outputs.ndim > 2 else outputs


def unit_activations(
    model: keras.Model,
    layer: str | None,
    x: np.ndarray,
    output: int | str | None = None,
    batch_size: int = 128,
) -> np.ndarray:
    """`(N, units)` activations of `layer`'s units (or the class scores) on the data `x`."""
    x = np.asarray(x, dtype=np.float32)
    target = unit_model(model, layer, input_shape_of(model, x), output)
    return np.concatenate(
        [
            unit_values(target([x[start : start + batch_size]], training=False))
            for start in range(0, len(x), batch_size)
        ]
    )


def maximize(
    model: keras.Model,
    layer: str | None,
    units: int | Sequence[int],
    steps: int = 200,
    seed: int = 0,
    *,
    input_range: tuple[float, float] = (0.0, 1.0),
    output: int | str | None = None,
    input_shape: Sequence[int] | None = None,
    learning_rate: float = 0.05,
    tv_weight: float = 5.0,
    l2_weight: float = 0.5,
    jitter: int | None = None,
) -> Maximization:
    """Synthesise, for each unit, the input that maximises its activation.

    Projected gradient ascent with Adam from a seeded uniform start, all units in one
    batch: each step scores a randomly shifted copy of the inputs (jitter), subtracts an
    L2 penalty (pulling towards the middle of the range) and, for images and sequences,
    a total-variation penalty, then clips the inputs to `input_range`. The same seed
    gives the same inputs.

    Args:
        model: a Keras model with one input.
        layer: path of a layer (`"conv2"`, `"backbone/Conv_1"`) whose units (conv filters,
            dense units) to maximise, or None for the output classes' pre-activation scores.
        units: one unit (filter, class) index or several; one input is synthesised per unit.
        steps: gradient-ascent steps.
        seed: seed of the start and of the jitter.
        input_range: `(low, high)` of valid inputs, e.g. the data's min and max.
        output: the output (index or name) whose classes are maximised, for a multi-output
            model.
        input_shape: the shape of one sample, for a subclassed model without declared input.
        learning_rate: Adam step, as a fraction of the input range.
        tv_weight: weight of the total-variation penalty (mean absolute difference of
            neighbouring pixels or time steps), per unit of input range.
        l2_weight: weight of the L2 penalty (root mean square), per unit of input range.
        jitter: largest random shift per step, in pixels (images) or steps (sequences);
            None for one per 16 pixels of an image, none for other inputs.

    Returns:
        A `Maximization(inputs, activations)`.

    Example:

    ```python
    inputs, reached = keraslens.maximize(model, None, units=[3, 7], steps=100,
                                         input_range=(0.0, 16.0))
    ```
    """
    settings = (steps, seed, input_range, learning_rate, tv_weight, l2_weight, jitter)
    return _ascend(model, [(layer, units)], output, input_shape, *settings)[0]


def maximize_with_classes(
    model: keras.Model,
    layer: str,
    units: int | Sequence[int],
    classes: int | Sequence[int],
    steps: int = 200,
    seed: int = 0,
    *,
    input_range: tuple[float, float] = (0.0, 1.0),
    output: int | str | None = None,
    input_shape: Sequence[int] | None = None,
    learning_rate: float = 0.05,
    tv_weight: float = 5.0,
    l2_weight: float = 0.5,
    jitter: int | None = None,
) -> tuple[Maximization, Maximization]:
    """`maximize` of `layer`'s `units` and of the output's `classes`, in one compiled loop.

    Each input is optimised exactly as a separate `maximize` call would (same start, same
    jitter, its own gradient: the samples of a batch do not interact), but the model is
    traced once and every step is one batch: on a large model that halves the cost of
    maximising both. Arguments are those of `maximize`.

    Returns:
        `(units' Maximization, classes' Maximization)`.

    Example:

    ```python
    filters, digits = keraslens.maximize_with_classes(model, "conv1", [0, 2], [3, 7], steps=20)
    ```
    """
    settings = (steps, seed, input_range, learning_rate, tv_weight, l2_weight, jitter)
    found = _ascend(model, [(layer, units), (None, classes)], output, input_shape, *settings)
    return found[0], found[1]


def _ascend(
    model,
    parts,
    output,
    input_shape,
    steps,
    seed,
    input_range,
    learning_rate,
    tv_weight,
    l2_weight,
    jitter,
) -> list[Maximization]:
    """Maximise each `(layer, units)` part in one batch of one compiled loop: a layer's
    units alone, or a layer's units then the output's classes (`(None, classes)`)."""
    require_continuous_input(model)
    shape = tuple(input_shape) if input_shape is not None else input_shape_of(model)
    ascent = _ascent(model, parts[0][0], shape, output, with_classes=len(parts) > 1)
    chosen = [
        _checked_units(units, width, layer)
        for (layer, units), width in zip(parts, ascent.widths, strict=True)
    ]
    low, high = (float(v) for v in input_range)
    if not high > low:
        raise KeraslensError(f"input_range must be (low, high) with high > low; got {input_range}.")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise KeraslensError(f"steps must be a positive integer; got {steps!r}.")
    if jitter is None:
        jitter = shape[0] // 16 if len(shape) == 3 else 0
    span = high - low
    # Each part starts from its own draw of the seed, as a separate call would.
    start = np.concatenate(
        [np.random.default_rng(seed).uniform(-span / 2, span / 2, (len(u), *shape)) for u in chosen]
    )
    offsets = np.concatenate([[0], np.cumsum(ascent.widths)[:-1]])
    flat = np.concatenate([units + offset for units, offset in zip(chosen, offsets, strict=True)])
    # The offset from the middle of the range is optimised, so that the L2 penalty pulls
    # towards mid-grey rather than towards `low` (where its gradient is 0/0 on a dead unit).
    middle = (low + high) / 2
    ascended = ascent.run(
        tf.constant(start, tf.float32),
        tf.constant(flat, tf.int32),
        tf.constant(steps, tf.int32),
        tf.constant(seed % 2**31, tf.int32),
        tf.constant([middle, span / 2, learning_rate * span, l2_weight / span, tv_weight / span]),
        tf.constant(int(jitter), tf.int32),
    )
    inputs = ascended.numpy() + np.float32(middle)
    reached = _joined_values(ascent.target([inputs], training=False))[np.arange(len(flat)), flat]
    ends = np.cumsum([len(units) for units in chosen])
    return [
        Maximization(inputs[end - len(units) : end], reached[end - len(units) : end])
        for units, end in zip(chosen, ends, strict=True)
    ]


def _joined_values(outputs) -> np.ndarray:
    """`unit_values` of each of a target's outputs, side by side along the units axis."""
    return np.concatenate([unit_values(o) for o in tf.nest.flatten(outputs)], axis=1)


class _Ascent:
    """The compiled ascent loop for one unit model, traced once for any number of units,
    steps and settings (all are tensors of a fixed signature)."""

    def __init__(self, target: keras.Model, shape: tuple) -> None:
        self.target = target
        self.widths = [int(t.shape[-1]) for t in target.outputs]
        """Units of each of the target's outputs; a unit index runs along them in order."""
        self._positions = list(range(1, len(shape)))  # the axes between batch and channels
        self._sample_axes = list(range(1, len(shape) + 1))
        # Without autograph (the loop is an explicit `tf.while_loop`): converting every
        # layer call of a large model would cost about as much as the trace itself.
        self.run = tf.function(
            self._run,
            autograph=False,
            input_signature=[
                tf.TensorSpec((None, *shape), tf.float32),
                tf.TensorSpec((None,), tf.int32),
                tf.TensorSpec((), tf.int32),
                tf.TensorSpec((), tf.int32),
                tf.TensorSpec((5,), tf.float32),
                tf.TensorSpec((), tf.int32),
            ],
        )

    def _run(self, start, units, steps, seed, settings, jitter):
        middle, half, step_size, l2_weight, tv_weight = tf.unstack(settings)

        def ascend(step, x, m, v):
            gradient = self._gradient(x, units, seed, step, middle, l2_weight, tv_weight, jitter)
            t = tf.cast(step + 1, tf.float32)
            m = _ADAM_BETA1 * m + (1 - _ADAM_BETA1) * gradient
            v = _ADAM_BETA2 * v + (1 - _ADAM_BETA2) * tf.square(gradient)
            rate = step_size * tf.sqrt(1 - _ADAM_BETA2**t) / (1 - _ADAM_BETA1**t)
            x = tf.clip_by_value(x + rate * m / (tf.sqrt(v) + _ADAM_EPSILON), -half, half)
            return step + 1, x, m, v

        zeros = tf.zeros_like(start)
        loop = tf.while_loop(lambda step, *_: step < steps, ascend, (0, start, zeros, zeros))
        return loop[1]

    def _gradient(self, x, units, seed, step, middle, l2_weight, tv_weight, jitter):
        with tf.GradientTape() as tape:
            tape.watch(x)
            shown = self._jittered(x, seed, step, jitter)
            outputs = tf.nest.flatten(self.target([shown + middle], training=False))
            values = tf.concat(
                [tf.reduce_mean(o, axis=list(range(1, len(o.shape) - 1))) for o in outputs], 1
            )
            score = tf.gather(values, units[:, None], batch_dims=1)[:, 0]
            objective = score - l2_weight * tf.sqrt(
                tf.reduce_mean(tf.square(x), axis=self._sample_axes)
            )
            if self._positions:
                objective -= tv_weight * _total_variation(x, self._positions)
            total = tf.reduce_sum(objective)
        return tape.gradient(total, x)

    def _jittered(self, x, seed, step, jitter):
        if not self._positions:
            return x
        shift = tf.random.stateless_uniform(
            (len(self._positions),),
            seed=tf.stack([seed, step]),
            minval=-jitter,
            maxval=jitter + 1,
            dtype=tf.int32,
        )
        return tf.roll(x, shift, axis=self._positions)


def _total_variation(x: tf.Tensor, axes: Sequence[int]) -> tf.Tensor:
    """Per sample: the sum over `axes` of the mean absolute difference of neighbours."""
    total = 0.0
    every = list(range(1, len(x.shape)))
    for axis in axes:
        size = x.shape[axis]
        if size is None or size < 2:
            continue
        ahead = tf.gather(x, tf.range(1, size), axis=axis)
        behind = tf.gather(x, tf.range(0, size - 1), axis=axis)
        total += tf.reduce_mean(tf.abs(ahead - behind), axis=every)
    return total


_ASCENTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _ascent(
    model: keras.Model,
    layer: str | None,
    shape: tuple,
    output: int | str | None,
    with_classes: bool = False,
) -> _Ascent:
    """The cached `_Ascent` of (model, layer, input shape, output, with the class scores
    too or not): a second call for the same unit model neither rebuilds its graph nor
    retraces its loop."""
    cache = _ASCENTS.setdefault(model, {})
    key = (layer, shape, output, with_classes)
    if key not in cache:
        target = _build_unit_model(model, layer, shape, output, with_classes)
        cache[key] = _Ascent(target, shape)
    return cache[key]


def _build_unit_model(
    model: keras.Model,
    layer: str | None,
    input_shape: tuple,
    output: int | str | None,
    with_classes: bool = False,
) -> keras.Model:
    graph = build_graph(model, input_shape, output, layer)
    outputs = [graph.layer_model().outputs[0]] if layer else []
    if with_classes or not layer:
        outputs.append(graph.score_model().outputs[0])
    # A rank-1 output `(batch,)` is one unit: `(batch, 1)`.
    outputs = [keras.layers.Reshape((1,))(o) if len(o.shape) == 1 else o for o in outputs]
    return keras.Model(graph.inputs, outputs if len(outputs) > 1 else outputs[0])


def _checked_units(units: int | Sequence[int], count: int, layer: str | None) -> np.ndarray:
    units = np.atleast_1d(np.asarray(units))
    what = f"layer {layer!r}" if layer else "the output"
    if units.ndim != 1 or len(units) == 0 or not np.issubdtype(units.dtype, np.integer):
        raise KeraslensError(f"units must be one or more unit indices; got {units!r}.")
    if units.min() < 0 or units.max() >= count:
        raise KeraslensError(
            f"units must lie in [0, {count - 1}]: {what} has {count} units; got "
            f"{units.min()}..{units.max()}."
        )
    return units.astype(np.int64)
