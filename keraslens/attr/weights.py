"""`Weights`: values to run a model's attribution graphs with, in place of its own.

The score graphs take every variable's value as an argument of their compiled functions,
so one trace serves the trained model and any other weights of the same architecture: the
randomised weights of the sanity checks (Adebayo et al., 2018) cost no copy of the model
and no second trace, and the model itself is never changed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import keras
import numpy as np
import tensorflow as tf


class Weights:
    """Values for some of a model's variables; the others keep their own.

    Args:
        values: `(variable, array)` pairs, each array of its variable's shape and dtype
            (Keras variables cannot be dict keys).

    Example:

    ```python
    conv = model.get_layer("conv1")
    zeroed = keraslens.Weights([(conv.kernel, 0 * conv.kernel.numpy())])
    keraslens.attribute(model, x, "saliency", weights=zeroed)  # conv1's kernel zeroed
    ```
    """

    def __init__(self, values: Iterable[tuple[Any, Any]]) -> None:
        pairs = list(values)
        self._variables = {id(v): v for v, _ in pairs}  # keeps the ids valid
        self._values = {id(v): tf.convert_to_tensor(value, v.dtype) for v, value in pairs}

    def value(self, variable: Any) -> Any:
        """The value to use for `variable`: the one given, else its own current value."""
        given = self._values.get(id(variable))
        return variable.value if given is None else given


def permuted_weights(model: keras.Model, seed: int = 0) -> Weights:
    """Each trainable tensor of `model` with more than one value, its entries randomly
    permuted.

    Permuting keeps each tensor's distribution (scale, sign) and destroys what training put
    in it: the "full randomisation" of Adebayo et al. (2018), deterministic for a seed
    (tensor `i` of the list is shuffled with the stateless seed `(seed, i)`).

    Example:

    ```python
    randomised = keraslens.permuted_weights(model, seed=1)
    keraslens.attribute(model, x, "saliency", weights=randomised)
    ```
    """
    values = []
    for index, variable in enumerate(model.trainable_weights):
        if int(np.prod(variable.shape)) > 1:
            # TensorFlow's stateless shuffle: 3x faster than NumPy's on ResNet50's 25M.
            flat = tf.reshape(tf.convert_to_tensor(variable), [-1])
            shuffled = tf.random.experimental.stateless_shuffle(flat, seed=[seed, index])
            values.append((variable, tf.reshape(shuffled, variable.shape)))
    return Weights(values)
