"""Loading models and data from files, safely.

Models load with Keras' `safe_mode=True`: a file that carries Python code (a
`Lambda` layer) is refused unless the caller passes `unsafe=True`. Arrays load
with `allow_pickle=False`, so a data file can never run code either.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keraslens.capture.data import arrange_inputs, input_keys
from keraslens.errors import KeraslensError

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
_FUNCTION_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass
class LoadedData:
    """Model inputs read from a file or a function, with labels when there are some.

    Attributes:
        inputs: what `keraslens.analyze` takes (array, dict of arrays, `tf.data.Dataset`).
        labels: an array of labels, or None.
        source: how the report describes where the data came from.
    """

    inputs: Any
    labels: np.ndarray | None
    source: str


def load_model(path: str | os.PathLike, unsafe: bool = False) -> keras.Model:
    """Load a `.keras` file, a legacy `.h5` file or a SavedModel directory.

    Args:
        path: the model file or SavedModel directory.
        unsafe: allow a model whose file carries Python code (a `Lambda` layer).
            Only for files you trust: loading runs that code.

    A SavedModel is wrapped in `keras.layers.TFSMLayer`: it is opaque to keraslens,
    which then sees one layer, not the layers inside.

    Example:

    ```python
    from keraslens.io import load_model

    model = load_model("model.keras")
    ```
    """
    target = Path(path)
    if not target.exists():
        raise KeraslensError(f"Model {str(target)!r} does not exist.")
    if target.is_dir():
        return _load_saved_model(target)
    if target.suffix.lower() not in MODEL_SUFFIXES:
        raise KeraslensError(
            f"Cannot load model {str(target)!r}: expected a .keras file, a .h5 file or a "
            "SavedModel directory."
        )
    if target.suffix.lower() == ".keras":
        _check_keras_archive(target)
    try:
        return keras.saving.load_model(target, compile=False, safe_mode=not unsafe)
    except json.JSONDecodeError as error:
        raise KeraslensError(
            f"Cannot load model {str(target)!r}: its config.json is not valid JSON ({error}). "
            "Re-save the model with model.save('model.keras')."
        ) from None
    except ValueError as error:
        if "safe_mode" in str(error):
            raise KeraslensError(
                f"Refusing to load {str(target)!r}: the file carries Python code (a Lambda "
                "layer), which would run on loading. If you trust its source, pass --unsafe "
                "(unsafe=True in Python)."
            ) from None
        raise KeraslensError(f"Cannot load model {str(target)!r}: {error}") from None
    except OSError as error:
        raise KeraslensError(f"Cannot load model {str(target)!r}: {error}") from None
    except TypeError as error:
        raise KeraslensError(_rebuild_failure(target, error)) from None


def _check_keras_archive(path: Path) -> None:
    """Refuse a `.keras` file that is not a Keras archive, before Keras reads it (its own
    message for a corrupt or empty file is "File not found")."""
    problem = None
    try:
        with zipfile.ZipFile(path) as archive:
            if "config.json" not in archive.namelist():
                problem = "it is a zip archive without config.json, so not a saved Keras model"
    except zipfile.BadZipFile:
        problem = (
            "it is empty" if path.stat().st_size == 0 else "it is not a zip archive (corrupt?)"
        )
    if problem is not None:
        raise KeraslensError(
            f"Cannot load model {str(path)!r}: {problem}. Pass a file written by "
            "model.save('model.keras')."
        )


def _rebuild_failure(path: Path, error: TypeError) -> str:
    """One line for a model Keras could not rebuild from its config."""
    missing = re.search(r"Could not locate (?:class|function) '([^']+)'", str(error))
    if missing is None:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        return f"Cannot load model {str(path)!r}: Keras could not rebuild it: {reason}"
    return (
        f"Cannot load model {str(path)!r}: it is built from {missing[1]!r}, which Keras does "
        "not know. For a custom class, import the module that defines it (registered with "
        "@keras.saving.register_keras_serializable) and call keraslens from Python; or save "
        "a functional model."
    )


def _load_saved_model(directory: Path) -> keras.Model:
    if not (directory / "saved_model.pb").exists():
        raise KeraslensError(
            f"Folder {str(directory)!r} is not a SavedModel (no saved_model.pb). Pass a .keras "
            "file, a .h5 file or a SavedModel directory."
        )
    loaded = tf.saved_model.load(str(directory))
    signatures = dict(loaded.signatures)
    if not signatures:
        raise KeraslensError(f"SavedModel {str(directory)!r} has no serving signature.")
    endpoint = "serving_default" if "serving_default" in signatures else sorted(signatures)[0]
    _, specs = signatures[endpoint].structured_input_signature
    if len(specs) != 1:
        raise KeraslensError(
            f"SavedModel {str(directory)!r} takes {len(specs)} inputs; keraslens reads "
            "single-input SavedModels. Save the model as .keras instead."
        )
    ((name, spec),) = specs.items()
    inputs = keras.Input(shape=tuple(spec.shape[1:]), dtype=spec.dtype.name, name=name)
    outputs = keras.layers.TFSMLayer(str(directory), call_endpoint=endpoint)(inputs)
    if isinstance(outputs, Mapping):
        outputs = list(outputs.values())[0] if len(outputs) == 1 else outputs
    return keras.Model(inputs, outputs, name=directory.name or "saved_model")


def load_data(
    spec: str,
    model: keras.Model,
    *,
    data_key: str | None = None,
    labels: str | None = None,
) -> LoadedData:
    """Read model inputs (and labels) from `spec`.

    Args:
        spec: a `.npy` file, a `.npz` file, a folder of images (resized to the
            model's input; a folder per class gives labels), or `module:function`
            returning an array, a dict of arrays, a `(x, y)` tuple or a `tf.data.Dataset`.
        model: the model the data is for (its input shape is checked).
        data_key: the array to use when a `.npz` holds several.
        labels: a `.npy` file of labels, or the key of the labels in the `.npz`.
    """
    path = Path(spec)
    labels_file = labels if labels is not None and Path(labels).is_file() else None
    is_npz = path.suffix.lower() == ".npz"
    if labels is not None and labels_file is None and not is_npz:
        raise KeraslensError(f"Labels {labels!r} do not exist: pass a .npy file or a .npz key.")
    if not path.exists() and _FUNCTION_RE.match(spec):
        loaded = _from_function(spec, model)
    elif not path.exists():
        raise KeraslensError(
            f"Data {spec!r} does not exist. Pass a .npy or .npz file, a folder of images, "
            "or module:function."
        )
    elif path.is_dir():
        loaded = _from_images(path, model)
    elif path.suffix.lower() == ".npy":
        loaded = LoadedData(_read_npy(path), None, path.name)
    elif is_npz:
        loaded = _from_npz(path, data_key, None if labels_file else labels, model)
    else:
        raise KeraslensError(
            f"Cannot read data {spec!r}: expected .npy, .npz, a folder of images or "
            "module:function."
        )
    if labels_file is not None:
        loaded.labels = _read_labels(Path(labels_file))
    check_inputs(model, loaded.inputs, spec)
    return loaded


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as error:
        raise KeraslensError(
            f"Cannot read {str(path)!r}: {error}. keraslens reads plain numeric arrays only "
            "(no pickled objects)."
        ) from None


def _from_npz(
    path: Path, data_key: str | None, labels_key: str | None, model: keras.Model | None = None
) -> LoadedData:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except ValueError as error:
        raise KeraslensError(
            f"Cannot read {str(path)!r}: {error}. keraslens reads plain numeric arrays only."
        ) from None
    labels = None
    if labels_key is not None:
        if labels_key not in arrays:
            raise KeraslensError(
                f"{str(path)!r} has no array {labels_key!r} for --labels; it holds: "
                f"{', '.join(sorted(arrays))}."
            )
        labels = arrays.pop(labels_key)
    keys = input_keys(model) if model is not None else None
    if data_key is None and keys is not None and len(keys) > 1:
        return _one_array_per_input(path, arrays, labels, model, keys)
    if data_key is None:
        if len(arrays) != 1:
            raise KeraslensError(
                f"{str(path)!r} holds several arrays ({', '.join(sorted(arrays))}); choose one "
                "with --data-key."
            )
        data_key = next(iter(arrays))
    if data_key not in arrays:
        raise KeraslensError(
            f"{str(path)!r} has no array {data_key!r}; it holds: {', '.join(sorted(arrays))}."
        )
    return LoadedData(arrays[data_key], labels, f"{path.name}[{data_key}]")


def _one_array_per_input(
    path: Path, arrays: dict, labels: np.ndarray | None, model: keras.Model, keys: list[str]
) -> LoadedData:
    """The arrays of a `.npz` named by a multi-input model's inputs, as a dict of inputs;
    `check_inputs` names any input the file lacks."""
    for names in (keys, [t.name for t in model.inputs]):
        if all(name in arrays for name in names):
            chosen = {name: arrays[name] for name in names}
            return LoadedData(chosen, labels, f"{path.name}[{', '.join(names)}]")
    return LoadedData(arrays, labels, path.name)


def _read_labels(path: Path) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        return _read_npy(path)
    if path.suffix.lower() == ".npz":
        return _from_npz(path, None, None).inputs
    raise KeraslensError(f"Cannot read labels {str(path)!r}: expected a .npy or .npz file.")


def _from_images(folder: Path, model: keras.Model) -> LoadedData:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise KeraslensError(
            f"Folder {str(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})."
        )
    shape = _single_input_shape(model)
    if len(shape) != 4 or shape[1] is None or shape[2] is None:
        raise KeraslensError(
            f"A folder of images needs a model taking images (batch, height, width, channels); "
            f"this model expects {_shape(shape)}."
        )
    mode = {1: "grayscale", 3: "rgb", 4: "rgba"}.get(shape[3])
    if mode is None:
        raise KeraslensError(f"Cannot read images for a model with {shape[3]} input channels.")
    images = np.stack(
        [
            keras.utils.img_to_array(
                keras.utils.load_img(p, color_mode=mode, target_size=(shape[1], shape[2]))
            )
            for p in files
        ]
    )
    classes = sorted({p.parent for p in files})
    labels = None
    if len(classes) > 1 or classes[0] != folder:
        index = {c: i for i, c in enumerate(classes)}
        labels = np.array([index[p.parent] for p in files])
    return LoadedData(images, labels, f"{folder.name}/ ({len(files)} images)")


def _from_function(spec: str, model: keras.Model) -> LoadedData:
    module_name, function_name = spec.split(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise KeraslensError(f"Cannot import data function {spec!r}: {error}.") from None
    value = function()
    if isinstance(value, tuple) and len(value) == 2 and len(model.inputs) == 1:
        return LoadedData(value[0], np.asarray(value[1]), spec)
    return LoadedData(value, None, spec)


def check_inputs(model: keras.Model, inputs: Any, source: str = "the data") -> None:
    """Raise a `KeraslensError` when array `inputs` are empty or do not fit the model."""
    if isinstance(inputs, (tf.data.Dataset, keras.utils.PyDataset)):
        return
    expected = [tuple(t.shape) for t in model.inputs]
    arrays = _in_input_order(model, inputs, source)
    if len(arrays) != len(expected):
        raise KeraslensError(
            f"{source} gives {len(arrays)} input arrays; the model takes {len(expected)}."
        )
    for array, shape in zip(arrays, expected, strict=True):
        actual = np.shape(array)
        if len(actual) == 0:
            raise KeraslensError(
                f"The data in {source!r} is a scalar: it has no sample axis. Pass an array "
                "whose first axis is the samples, shape (samples, ...)."
            )
        if actual[0] == 0:
            raise KeraslensError(f"The data in {source!r} is empty: there are no samples.")
        fits = len(actual) == len(shape) and all(
            want is None or want == got for want, got in zip(shape[1:], actual[1:], strict=True)
        )
        if not fits:
            raise KeraslensError(
                f"The data in {source!r} has shape {_shape(actual)}; the model expects "
                f"{_shape(shape)} (None: any size, first axis: samples)."
            )


def _in_input_order(model: keras.Model, inputs: Any, source: str) -> list:
    """The input arrays in the order of `model.inputs`; a dict is matched by key (the
    model's input names, or the keys of the dict it was built on), never by position."""
    given = arrange_inputs(model, inputs)
    if not isinstance(given, Mapping):
        return list(given) if isinstance(given, (list, tuple)) else [given]
    keys = input_keys(model) or list(given)
    missing = [key for key in keys if key not in given]
    extra = [key for key in given if key not in keys]
    if missing or extra:
        raise KeraslensError(
            f"{source} has arrays {sorted(given)}; model {model.name!r} takes inputs "
            f"{keys}. Key one array by each input name."
        )
    return [given[key] for key in keys]


def _single_input_shape(model: keras.Model) -> tuple:
    if len(model.inputs) != 1:
        raise KeraslensError("A folder of images needs a model with a single input.")
    return tuple(model.inputs[0].shape)


def check_writable(path: str | os.PathLike) -> None:
    """Raise a `KeraslensError` now, before any work, when `path` cannot be written."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise KeraslensError(f"Cannot write {str(target)!r}: it is a folder. Name a file.")
    if not folder.is_dir():
        raise KeraslensError(
            f"Cannot write {str(target)!r}: folder {str(folder)!r} does not exist. "
            "Create it or choose another output path."
        )
    if not os.access(folder, os.W_OK):
        raise KeraslensError(
            f"Cannot write {str(target)!r}: folder {str(folder)!r} is not writable."
        )


def _shape(shape: Any) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"
