"""`maximize()`: synthesise the inputs that most activate chosen units, via tf-keras-vis."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf
from tf_keras_vis.activation_maximization import ActivationMaximization
from tf_keras_vis.activation_maximization.input_modifiers import InputModifier, Jitter
from tf_keras_vis.activation_maximization.regularizers import Norm, TotalVariation2D
from tf_keras_vis.utils.scores import CategoricalScore

from keraslens.errors import KeraslensError
from keraslens.vis.compat import build_graph, input_shape_of, require_continuous_input
from keraslens.vis.seeding import numpy_seed


class Maximization(NamedTuple):
    """Synthesised inputs, one per unit, and the activation each reaches.

    Args:
        inputs: `(len(units), *input_shape)`, within the input range.
        activations: the unit's activation on its input (mean over positions for a conv
            filter; the pre-activation score for an output class).
    """

    inputs: np.ndarray
    activations: np.ndarray


class _Clip(InputModifier):
    """Keeps the optimised input inside the input range at every step (projected ascent);
    tf-keras-vis only clips the value it returns, so the optimisation could wander off."""

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high

    def __call__(self, seed_input: tf.Tensor) -> tf.Tensor:
        return tf.clip_by_value(seed_input, self.low, self.high)


def unit_model(
    model: keras.Model, layer: str | None, input_shape: Sequence, output: int | str | None = None
) -> keras.Model:
    """A model from the input to `layer`'s activation, or to the pre-activation class scores
    when `layer` is None (a softmax would let a class win only by suppressing the others).

    A rank-1 output `(batch,)` is one score per sample: it becomes unit 0 of `(batch, 1)`.
    """
    graph = build_graph(model, input_shape, output, layer)
    target = graph.layer_model() if layer else graph.score_model()
    if len(target.outputs[0].shape) == 1:
        return keras.Model(target.inputs, keras.layers.Reshape((1,))(target.outputs[0]))
    return target


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

    Gradient ascent with tf-keras-vis's `ActivationMaximization` from a seeded uniform
    start, regularised by total variation (images) and an L2 norm, kept inside
    `input_range` at every step. The same seed gives the same inputs.

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
        tv_weight: weight of the total-variation penalty, per unit of input range.
        l2_weight: weight of the L2 penalty, per unit of input range.
        jitter: random shift in pixels per step; None for one per 16 pixels of the image.

    Returns:
        A `Maximization(inputs, activations)`.

    Example:

    ```python
    inputs, reached = keraslens.maximize(model, None, units=[3, 7], steps=100,
                                         input_range=(0.0, 16.0))
    ```
    """
    require_continuous_input(model)
    shape = tuple(input_shape) if input_shape is not None else input_shape_of(model)
    target = unit_model(model, layer, shape, output)
    units = _checked_units(units, target.outputs[0].shape[-1], layer)
    low, high = (float(v) for v in input_range)
    if not high > low:
        raise KeraslensError(f"input_range must be (low, high) with high > low; got {input_range}.")
    span = high - low
    image = len(shape) == 3
    if jitter is None:
        jitter = shape[0] // 16 if image else 0
    # Optimise the offset from the middle of the range, so that the L2 penalty pulls
    # towards mid-grey rather than towards `low` (where its gradient is 0/0 on a dead unit).
    middle = (low + high) / 2
    offset = keras.Input(shape)
    centred = keras.Model(
        [offset],
        target(keras.layers.Rescaling(1.0, offset=middle, name="keraslens_centre")(offset)),
    )
    rng = np.random.default_rng(seed)
    start = rng.uniform(-span / 2, span / 2, (len(units), *shape)).astype(np.float32)
    regularizers = [Norm(weight=l2_weight / span, p=2)]
    if image:
        regularizers.append(TotalVariation2D(weight=tv_weight / span))
    modifiers = [_Clip(-span / 2, span / 2)] + ([Jitter(jitter=jitter)] if jitter > 0 else [])
    with numpy_seed(seed):
        offsets = ActivationMaximization(centred, clone=False)(
            CategoricalScore(units.tolist()),
            seed_input=start,
            input_range=(-span / 2, span / 2),
            input_modifiers=modifiers,
            regularizers=regularizers,
            steps=steps,
            optimizer=keras.optimizers.Adam(learning_rate * span),
        )
    inputs = np.asarray(offsets) + np.float32(middle)
    reached = unit_values(target([inputs], training=False))
    return Maximization(inputs, reached[np.arange(len(units)), units])


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
