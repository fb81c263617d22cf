"""Turning what users pass as data into batches of model inputs."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keraslens.errors import KeraslensError, shape_text


def _is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) or tf.is_tensor(value)


def sample_count(structure: Any) -> int:
    """The number of samples of an array or a structure of arrays (they must agree)."""
    lengths = {int(np.shape(a)[0]) if np.ndim(a) else 0 for a in tf.nest.flatten(structure)}
    if len(lengths) != 1:
        raise KeraslensError(
            f"The input arrays have different numbers of samples {sorted(lengths)}; "
            "give every input the same number of samples."
        )
    return lengths.pop()


def x_of(element: Any) -> Any:
    """Keras' convention: a dataset element is `x` or `(x, y[, sample_weight])`."""
    if isinstance(element, (tuple, list)) and 1 <= len(element) <= 3:
        return element[0]
    return element


def iterate_batches(
    data: Any, batch_size: int, input_rank: int | None = None
) -> tuple[Iterator[Any], int | None]:
    """Yield batches of model inputs from `data`; also return the sample count if known.

    `data` may be a NumPy array (or tensor), a tuple/list/dict of arrays for a
    multi-input model, a `tf.data.Dataset` (batched or not; elements `x` or
    `(x, y[, w])`) or a `keras.utils.PyDataset`. `input_rank` (with batch axis)
    tells an unbatched dataset from a batched one.
    """
    if (
        not isinstance(batch_size, (int, np.integer))
        or isinstance(batch_size, bool)
        or batch_size < 1
    ):
        raise KeraslensError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if isinstance(data, tf.data.Dataset):
        return _from_dataset(data, batch_size, input_rank), None
    if isinstance(data, keras.utils.PyDataset):
        return (x_of(data[i]) for i in range(len(data))), None
    structure = as_arrays(data)
    n = sample_count(structure)

    def batches() -> Iterator[Any]:
        for start in range(0, n, batch_size):
            window = slice(start, start + batch_size)
            yield tf.nest.map_structure(lambda a, window=window: a[window], structure)

    return batches(), n


def as_arrays(data: Any) -> Any:
    """`data` as an array, a dict or a tuple of arrays; a `KeraslensError` for anything else."""
    if _is_array(data):
        return data
    if isinstance(data, Mapping) and data and all(_is_array(v) for v in data.values()):
        return dict(data)
    if isinstance(data, (tuple, list)) and data and all(_is_array(v) for v in data):
        return tuple(data)
    if data is None:
        raise KeraslensError("No data given: pass a NumPy array, a tf.data.Dataset or a PyDataset.")
    raise KeraslensError(
        f"Cannot read data of type {type(data).__name__}: pass a NumPy array, a tuple or "
        "dict of arrays (one per model input), a tf.data.Dataset or a keras.utils.PyDataset."
    )


def _from_dataset(dataset: tf.data.Dataset, batch_size: int, input_rank: int | None):
    spec = tf.nest.flatten(x_of(dataset.element_spec))[0]
    # Keras' fit/predict take batched datasets; an element one rank short of the
    # model's input is a single sample, so batch it here.
    if input_rank is not None and spec.shape.rank == input_rank - 1:
        dataset = dataset.batch(batch_size)
    for element in without_autotune(dataset):
        yield x_of(element)


def without_autotune(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` with tf.data's autotuner off, unless its owner set that option.

    The autotuner wakes at 10, 20, 40, ... ms after an iterator starts, and
    deleting the iterator waits for its next wake-up: measured here, a 2.9 s pass
    returned after 5.1 s. Off, `AUTOTUNE` parallelism takes tf.data's default (the
    number of cores) and prefetch buffers keep their own tuning.
    """
    if dataset.options().autotune.enabled is not None:
        return dataset
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def arrange_inputs(model: keras.Model, batch: Any) -> Any:
    """`batch` keyed as `model` is called: a dict keyed by input names is re-keyed to the
    keys of a model built on a dict of inputs, and a one-array dict for a one-input model
    is that array (Keras itself would look its input's name up in it)."""
    keys = input_keys(model)
    if keys is None or not isinstance(batch, Mapping):
        return batch
    if len(keys) == 1 and len(batch) == 1 and keys[0] not in batch:
        return next(iter(batch.values()))
    names = {getattr(t, "name", None): key for key, t in zip(keys, model.inputs, strict=True)}
    if all(key in batch for key in keys) or not all(name in batch for name in names):
        return batch
    return {names[name]: value for name, value in batch.items() if name in names}


def check_inputs(model: keras.Model, batch: Any) -> None:
    """Raise a clear error when a batch does not fit the model's declared inputs."""
    declared = declared_inputs(model)
    given = tf.nest.flatten(batch)
    for tensor in given:
        try:
            dtype = tf.as_dtype(tensor.dtype)
        except TypeError:  # datetime64 and other types TensorFlow has no match for
            dtype = None
        if dtype is None or not (dtype.is_floating or dtype.is_integer or dtype.is_bool):
            raise KeraslensError(
                f"Input data has dtype {getattr(tensor.dtype, 'name', tensor.dtype)}; the model "
                "needs numbers: convert it, e.g. with np.asarray(x, dtype=np.float32)."
            )
    if declared is None:
        return
    if isinstance(batch, Mapping):
        missing = [name for name, _ in declared if name not in batch]
        if missing:
            raise KeraslensError(
                f"The input dict has no key {missing[0]!r}: model {model.name!r} names its "
                f"inputs {[name for name, _ in declared]}, the dict has {sorted(batch)}. "
                "Key the arrays by the model's input names."
            )
    if len(declared) != len(given):
        raise KeraslensError(
            f"Model {model.name!r} takes {len(declared)} input(s) "
            f"({', '.join(shape_text(s) for _, s in declared)}), got {len(given)}."
        )
    for (name, expected), tensor in zip(declared, in_input_order(model, batch), strict=False):
        if not fits(tuple(tensor.shape), expected):
            raise KeraslensError(
                f"Input {name!r} expects shape {shape_text(expected)}, got data of shape "
                f"{shape_text((None, *tensor.shape[1:]))} (batch first). Reshape the data to "
                "match."
            )


def fits(shape: tuple, declared: tuple) -> bool:
    """Whether an array of `shape` fits an input `declared` with that shape (None: any size;
    the first axis, the samples, is not compared)."""
    return len(shape) == len(declared) and all(
        want is None or want == got for want, got in zip(declared[1:], shape[1:], strict=True)
    )


def to_input_tensors(model: keras.Model, batch: Any) -> Any:
    """`batch` as tensors of the dtypes the model declares for its inputs.

    Without declared inputs (a subclassed model), integers, booleans and float64
    become `floatx`; with them, each array takes its input's dtype, so token ids
    above 2**24 stay exact in an int32 input.
    """
    dtypes = declared_dtypes(model)
    if dtypes is None:
        return tf.nest.map_structure(_as_float_input, batch)
    if isinstance(batch, Mapping) and all(name in batch for name in dtypes):
        return {key: _as_tensor(value, dtypes.get(key)) for key, value in batch.items()}
    # check_inputs has matched the number of arrays to the number of inputs.
    flat = zip(tf.nest.flatten(batch), dtypes.values(), strict=True)
    return tf.nest.pack_sequence_as(batch, [_as_tensor(v, d) for v, d in flat])


def _as_tensor(value: Any, dtype: tf.DType | None) -> tf.Tensor:
    tensor = tf.convert_to_tensor(value)
    if dtype is None or tensor.dtype == dtype:
        return tensor
    return tf.cast(tensor, dtype)


def _as_float_input(value: Any) -> tf.Tensor:
    tensor = tf.convert_to_tensor(value)
    if tensor.dtype.is_integer or tensor.dtype == tf.bool or tensor.dtype == tf.float64:
        tensor = tf.cast(tensor, keras.config.floatx())
    return tensor


def symbolic_inputs(model: keras.Model) -> list | None:
    """The model's declared `keras.Input`s; None for a subclassed model (it has none), where
    reading `model.inputs` raises."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    return inputs or None


def input_keys(model: keras.Model) -> list[str] | None:
    """How a dict of data is keyed for each of `model.inputs`: by the keys of the dict the
    model was built on (Keras's `_inputs_struct`), else by the inputs' names."""
    inputs = symbolic_inputs(model)
    if inputs is None:
        return None
    struct = getattr(model, "_inputs_struct", None)
    if isinstance(struct, Mapping) and len(struct) == len(inputs):
        key_of = {id(tensor): key for key, tensor in struct.items()}
        if all(id(t) in key_of for t in inputs):
            return [key_of[id(t)] for t in inputs]
    return [getattr(t, "name", f"input_{i}") for i, t in enumerate(inputs)]


def declared_dtypes(model: keras.Model) -> dict[str, tf.DType] | None:
    """The dtype of each declared input, by its key (see `input_keys`); None for a
    subclassed model."""
    keys = input_keys(model)
    if keys is None:
        return None
    return {key: tf.as_dtype(t.dtype) for key, t in zip(keys, model.inputs, strict=True)}


def input_rank(model: keras.Model) -> int | None:
    """The rank (batch axis included) of the model's first input, when it is known: its
    declared one, else the shape a built subclassed model was built with."""
    inputs = symbolic_inputs(model)
    if inputs:
        return len(inputs[0].shape)
    # A built subclassed model has no symbolic inputs; Keras keeps the shape it was
    # built with (`Layer._build_shapes_dict`), which is all an input rank needs.
    build_shapes = getattr(model, "_build_shapes_dict", None) or {}
    built_with = next(iter(build_shapes.values()), None)
    if isinstance(built_with, (tuple, list)) and all(
        d is None or isinstance(d, int) for d in built_with
    ):
        return len(built_with)
    return None


def declared_inputs(model: keras.Model) -> list[tuple[str, tuple]] | None:
    """The key (see `input_keys`) and shape of each declared input, in the model's order;
    None for a subclassed model."""
    keys = input_keys(model)
    if keys is None:
        return None
    return [(key, tuple(t.shape)) for key, t in zip(keys, model.inputs, strict=True)]


def in_input_order(model: keras.Model, batch: Any) -> list[Any]:
    """The arrays of `batch` in the order of the model's inputs: a dict holding every
    input's key by key, anything else flattened."""
    keys = input_keys(model)
    if isinstance(batch, Mapping) and keys is not None and all(key in batch for key in keys):
        return [batch[key] for key in keys]
    return tf.nest.flatten(batch)
