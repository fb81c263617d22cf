"""`maximize()`: synthesise the inputs that most activate chosen units.

All the chosen units are optimised together, one input each in one batch. Each step is one
call of the score graph's compiled gradient (`keraslens.attr.graph`), the one the heatmaps
use: the objective is linear in the graph's outputs (a class's logit, a unit's mean
activation), so one-hot cotangents on them give its gradient, and a report traces the
model once for both. Jitter, the penalties and Adam are a few NumPy operations around it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from keraslens.attr.compat import input_shape_of, require_continuous_input
from keraslens.attr.graph import ScoreGraph, score_graph, unit_values
from keraslens.attr.inputs import model_inputs
from keraslens.attr.layers import last_spatial_layer
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


def unit_count(
    model: keras.Model, layer: str | None, input_shape: Sequence, output: int | str | None = None
) -> int:
    """Units of `layer` (its channels), or classes of the output when `layer` is None."""
    graph = _graph(model, layer, tuple(input_shape), output)
    return graph.compiled.widths[1 if layer else 0]


def unit_activations(
    model: keras.Model,
    layer: str | None,
    x: np.ndarray,
    output: int | str | None = None,
    batch_size: int = 128,
) -> np.ndarray:
    """`(N, units)` activations of `layer`'s units (conv filters averaged over positions),
    or the pre-activation class scores when `layer` is None, on the data `x`."""
    classes, units = class_and_unit_activations(model, layer, x, output, batch_size)
    return classes if layer is None else units


def class_and_unit_activations(
    model: keras.Model,
    layer: str | None,
    x: np.ndarray,
    output: int | str | None = None,
    batch_size: int = 128,
) -> tuple[np.ndarray, np.ndarray | None]:
    """`(N, classes)` pre-activation class scores and `(N, units)` activations of `layer`'s
    units (None without a layer), from one pass over `x`."""
    x = np.asarray(x, dtype=np.float32)
    graph = _graph(model, layer, input_shape_of(model, x), output)
    weights = graph.weights()
    parts = []
    for start in range(0, len(x), batch_size):
        chunk = x[start : start + batch_size]
        outputs = graph.outputs([chunk, *graph.zero_shift(len(chunk))], weights)
        parts.append([np.asarray(unit_values(o)) for o in outputs])
    columns = [np.concatenate(column) for column in zip(*parts, strict=True)]
    return columns[0], (columns[1] if layer else None)


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
    """Maximise each `(layer, units)` part in one batch: a layer's units alone, or a layer's
    units then the output's classes (`(None, classes)`)."""
    require_continuous_input(model)
    shape = tuple(input_shape) if input_shape is not None else input_shape_of(model)
    layer = parts[0][0]
    graph = _graph(model, layer, shape, output)
    # Which of the graph's outputs each part reads: the layer's values, or the logits.
    read = [1 if part_layer else 0 for part_layer, _ in parts]
    chosen = [
        _checked_units(units, graph.compiled.widths[index], part_layer)
        for (part_layer, units), index in zip(parts, read, strict=True)
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
    # One-hot cotangents: each input's objective is its own unit's value, so the gradient
    # of their sum is each input's own gradient (the samples of a batch do not interact).
    cotangents = [np.zeros((len(start), width), np.float32) for width in graph.compiled.widths]
    rows = np.arange(len(start))
    owner = np.repeat(read, [len(u) for u in chosen])
    flat = np.concatenate(chosen)
    for index in set(read):
        cotangents[index][rows[owner == index], flat[owner == index]] = 1.0
    # The offset from the middle of the range is optimised, so that the L2 penalty pulls
    # towards mid-grey rather than towards `low` (where its gradient is 0/0 on a dead unit).
    middle = np.float32((low + high) / 2)
    weights = graph.weights()
    cotangents = [tf.constant(c) for c in cotangents]
    spare = graph.zero_shift(len(start))
    positions = tuple(range(1, len(shape)))  # the axes between batch and channels
    x = start.astype(np.float32)
    m, v = np.zeros_like(x), np.zeros_like(x)
    # Jitter, penalties and Adam are a few NumPy operations on the inputs: compiling them
    # would cost more to trace than they take over all the steps.
    for step in range(steps):
        shift = _shift(seed, step, jitter, len(positions))
        shown = np.roll(x, shift, axis=positions) + middle
        gradient, _ = graph.unit_gradient([shown, *spare], cotangents, weights, 0)
        # The model's gradient is at the shifted input: shifted back, it is `x`'s.
        gradient = np.roll(gradient, [-k for k in shift], axis=positions)
        gradient -= _penalty_gradient(x, l2_weight / span, tv_weight / span, positions)
        m = _ADAM_BETA1 * m + (1 - _ADAM_BETA1) * gradient
        v = _ADAM_BETA2 * v + (1 - _ADAM_BETA2) * np.square(gradient)
        t = step + 1
        rate = learning_rate * span * np.sqrt(1 - _ADAM_BETA2**t) / (1 - _ADAM_BETA1**t)
        x = np.clip(x + rate * m / (np.sqrt(v) + _ADAM_EPSILON), -span / 2, span / 2)
        x = x.astype(np.float32)
    inputs = x + middle
    _, outputs = graph.unit_gradient([inputs, *spare], cotangents, weights, 0)
    values = [np.asarray(unit_values(o)) for o in outputs]
    reached = np.array(
        [values[index][row, unit] for row, index, unit in zip(rows, owner, flat, strict=True)]
    )
    ends = np.cumsum([len(units) for units in chosen])
    return [
        Maximization(inputs[end - len(units) : end], reached[end - len(units) : end])
        for units, end in zip(chosen, ends, strict=True)
    ]


def _graph(model: keras.Model, layer: str | None, shape: tuple, output) -> ScoreGraph:
    """The score graph at `layer` whose outputs are the logits and the layer's values.

    Class scores alone are taken on the graph at the heatmaps' default layer (the last
    with positions), whose trace a report shares; its logits are the same.
    """
    specs, _ = model_inputs(model, np.zeros((1, *shape), np.float32))
    at = layer or last_spatial_layer(model, shape)
    return score_graph(model, specs, 0, output=output, layer=at)


def _shift(seed: int, step: int, jitter: int, axes: int) -> tuple[int, ...]:
    """The random shift of step `step` along each of `axes` position axes, in
    [-jitter, jitter]: the same seed gives the same shifts."""
    if not axes or not jitter:
        return (0,) * axes
    rng = np.random.default_rng([seed % 2**31, step])
    return tuple(int(s) for s in rng.integers(-jitter, jitter + 1, axes))


def _penalty_gradient(
    x: np.ndarray, l2_weight: float, tv_weight: float, positions: tuple[int, ...]
) -> np.ndarray:
    """Per sample, the gradient of `l2_weight * rms(x) + tv_weight * TV(x)`, where TV sums
    over the position axes the mean absolute difference of neighbours."""
    axes = tuple(range(1, x.ndim))
    size = np.prod(x.shape[1:])
    rms = np.sqrt(np.mean(np.square(x), axis=axes, keepdims=True))
    gradient = l2_weight * np.divide(x, size * rms, out=np.zeros_like(x), where=rms > 0)
    for axis in positions:
        if x.shape[axis] < 2:
            continue
        step = np.sign(np.diff(x, axis=axis)) * (
            tv_weight / (size / x.shape[axis] * (x.shape[axis] - 1))
        )
        before = [slice(None)] * x.ndim
        after = [slice(None)] * x.ndim
        before[axis], after[axis] = slice(None, -1), slice(1, None)
        gradient[tuple(before)] -= step
        gradient[tuple(after)] += step
    return gradient


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
