"""What users pass as `x`, as one array per model input with its `InputSpec`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keraslens.attr.compat import input_shape_of
from keraslens.attr.graph import InputSpec
from keraslens.capture.data import (
    arrange_inputs,
    check_inputs,
    declared_dtypes,
    input_keys,
    input_rank,
    iterate_batches,
)
from keraslens.errors import KeraslensError


def model_inputs(model: keras.Model, x: Any) -> tuple[tuple[InputSpec, ...], list[np.ndarray]]:
    """The model's inputs and the arrays of `x` for them, in the model's order.

    Args:
        model: any Keras 3 model.
        x: an array (one input), a list/tuple or dict of arrays (several inputs, a dict keyed
            by the model's input names), or a `tf.data.Dataset` of such (`x` or `(x, y)`
            elements; labels are ignored).
    """
    if isinstance(x, tf.data.Dataset):
        x = _materialise(model, x)
    x = arrange_inputs(model, x)
    if isinstance(x, np.ndarray) and len(declared_dtypes(model) or [None]) == 1:
        input_shape_of(model, x)  # one array: its shape against the one declared input
    check_inputs(model, x)
    keys = input_keys(model)
    if isinstance(x, Mapping):
        keys = keys or list(x)
        arrays = [np.asarray(x[key]) for key in keys]
    else:
        arrays = [np.asarray(a) for a in tf.nest.flatten(x)]
        keys = keys or [f"input_{i}" for i in range(len(arrays))]
    declared = [dtype.name for dtype in (declared_dtypes(model) or {}).values()]
    specs = tuple(
        InputSpec(key, tuple(a.shape[1:]), declared[i] if declared else _dtype_of(a))
        for i, (key, a) in enumerate(zip(keys, arrays, strict=True))
    )
    if len({len(a) for a in arrays}) != 1 or len(arrays[0]) == 0:
        raise KeraslensError("x must hold at least one sample, the same number for every input.")
    return specs, [a.astype(spec.dtype, copy=False) for a, spec in zip(arrays, specs, strict=True)]


def _materialise(model: keras.Model, dataset: tf.data.Dataset) -> Any:
    batches, _ = iterate_batches(dataset, 256, input_rank(model))
    parts = [tf.nest.map_structure(np.asarray, batch) for batch in batches]
    if not parts:
        raise KeraslensError("The dataset is empty: there is nothing to explain.")
    return tf.nest.map_structure(lambda *a: np.concatenate(a), *parts)


def _dtype_of(array: np.ndarray) -> str:
    if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        return "int32"
    return "float32"
