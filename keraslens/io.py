"""Loading models and data from files, safely.

Models load with Keras' `safe_mode=True`: a file that carries Python code (a
`Lambda` layer, a `TFSMLayer`) and a SavedModel directory (its graph runs on loading)
are refused unless the caller passes `unsafe=True`. Arrays load with
`allow_pickle=False`, their headers checked against the file size first, so a data
file can neither run code nor exhaust memory. Only regular files are read.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import stat
import zipfile
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import keras
import numpy as np
import tensorflow as tf

from keraslens import paths
from keraslens.capture.data import (
    arrange_inputs,
    declared_inputs,
    fits,
    in_input_order,
    input_keys,
    symbolic_inputs,
)
from keraslens.errors import KeraslensError, shape_text

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


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
        unsafe: allow a model that runs code when loaded: a file that carries Python
            code (a `Lambda` layer), a `TFSMLayer`, or a SavedModel directory (loading
            runs its graph). Only for models you trust.

    A SavedModel is wrapped in `keras.layers.TFSMLayer`: it is opaque to keraslens,
    which then sees one layer, not the layers inside.

    Example:

    ```python
    from keraslens.io import load_model

    model = load_model("model.keras")
    ```
    """
    target = Path(path)
    status = paths.existing(target, "Model")
    if stat.S_ISDIR(status.st_mode):
        return _load_saved_model(target, unsafe)
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
            raise KeraslensError(_unsafe_refusal(target, str(error))) from None
        raise KeraslensError(f"Cannot load model {str(target)!r}: {error}") from None
    except OSError as error:
        raise KeraslensError(f"Cannot load model {str(target)!r}: {error}") from None
    except TypeError as error:
        raise KeraslensError(_rebuild_failure(target, error)) from None


# What Keras' safe mode refused, after the wording of its own messages.
_CODE_CARRIERS = (
    ("`TFSMLayer`", "a TFSMLayer, which loads an external SavedModel whose graph runs"),
    ("`Lambda` layer", "a Lambda layer holding a Python function, which would run"),
    ("Python lambda", "a Python lambda, which would run"),
)


def _unsafe_refusal(path: Path, message: str) -> str:
    carrier = next(
        (text for marker, text in _CODE_CARRIERS if marker in message),
        "Python code, which would run",
    )
    return (
        f"Refusing to load {str(path)!r}: the file carries {carrier} on loading. If you "
        "trust its source, pass --unsafe (unsafe=True in Python)."
    )


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
    except OSError as error:
        problem = error.strerror or str(error)
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
    fix = (
        "import the module that defines it (registered with "
        "@keras.saving.register_keras_serializable) first: --import MODULE on the command line"
    )
    if missing[1] == _model_class(path):
        fix += "; or save the model as a functional one, which needs no import"
    return (
        f"Cannot load model {str(path)!r}: it is built from {missing[1]!r}, which Keras does "
        f"not know. For a custom class, {fix}."
    )


def _model_class(path: Path) -> str | None:
    """The class name of the saved model itself (not of its layers), when readable."""
    try:
        if path.suffix.lower() == ".keras":
            with zipfile.ZipFile(path) as archive:
                config = json.loads(archive.read("config.json"))
        else:
            import h5py

            with h5py.File(path, "r") as archive:
                config = json.loads(archive.attrs["model_config"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    return config.get("class_name") if isinstance(config, dict) else None


def _load_saved_model(directory: Path, unsafe: bool) -> keras.Model:
    if not (directory / "saved_model.pb").is_file():
        raise KeraslensError(
            f"Folder {str(directory)!r} is not a SavedModel (no saved_model.pb). Pass a .keras "
            "file, a .h5 file or a SavedModel directory."
        )
    if not unsafe:
        raise KeraslensError(
            f"Refusing to load SavedModel {str(directory)!r}: loading a SavedModel runs its "
            "TensorFlow graph, which can read and write files, and Keras' safe mode cannot "
            "check it. If you trust its source, pass --unsafe (unsafe=True in Python)."
        )
    try:
        loaded = tf.saved_model.load(str(directory))
    except (OSError, ValueError, tf.errors.OpError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise KeraslensError(f"Cannot load SavedModel {str(directory)!r}: {reason}") from None
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


def import_modules(names: Iterable[str]) -> None:
    """Import each module of `names`, so that the custom objects it registers (with
    `@keras.saving.register_keras_serializable`) are known when a model loads.

    Args:
        names: dotted module names; the current folder is searched first.

    Example:

    ```python
    import_modules(["mypkg.layers"])
    ```
    """
    for name in names:
        _import_user_module(name, f"--import {name!r}", f"Importing --import {name!r}")


def _import_user_module(name: str, missing: str, importing: str) -> Any:
    """Import the user's module `name` (the current folder first), errors as one line:
    `missing` opens the message of a module that is not there, `importing` names what
    raised inside it."""
    paths.with_working_directory_on_path()
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name is None or not name.startswith(error.name):
            raise _raised(importing, error) from None
        raise KeraslensError(
            f"{missing}: no module named {error.name!r} (the current folder and the "
            "installed packages were searched)."
        ) from None
    except Exception as error:  # the user's own module: any error is theirs to see
        raise _raised(importing, error) from None


def _raised(what: str, error: BaseException) -> KeraslensError:
    message = str(error).strip().splitlines()[0] if str(error).strip() else "no message"
    return KeraslensError(f"{what} raised {type(error).__name__}: {message}")


def load_data(
    spec: str,
    model: keras.Model,
    *,
    data_key: str | None = None,
    labels: str | None = None,
    rescale: float | None = None,
) -> LoadedData:
    """Read model inputs (and labels) from `spec`.

    Args:
        spec: a `.npy` file, a `.npz` file, a folder of images (resized to the
            model's input; a folder per class gives labels), or `module:function`
            returning an array, a dict of arrays, a `(x, y)` tuple or a `tf.data.Dataset`.
        model: the model the data is for (its input shape is checked).
        data_key: the array to use when a `.npz` holds several.
        labels: a `.npy` file of labels, or the key of the labels in the `.npz`.
        rescale: multiply the pixels of a folder of images by this (e.g. 1/255).

    Example:

    ```python
    loaded = load_data("x_val.npy", model)
    ```
    """
    path = Path(spec)
    is_function = paths.is_loader(spec)
    if not is_function:
        paths.existing_data(spec)
    labels_file = labels if labels is not None and os.path.lexists(labels) else None
    is_npz = path.suffix.lower() == ".npz"
    if labels is not None and labels_file is None and not is_npz:
        raise KeraslensError(f"Labels {labels!r} do not exist: pass a .npy file or a .npz key.")
    if rescale is not None and (is_function or not path.is_dir()):
        raise KeraslensError(
            f"--rescale applies to a folder of images, and {spec!r} is not one; scale the "
            "arrays before saving them."
        )
    if is_function:
        loaded = _from_function(spec, model)
    elif path.is_dir():
        loaded = _from_images(path, model, rescale)
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
    check_data(model, loaded.inputs, spec)
    if loaded.labels is not None:
        _check_labels(model, loaded, labels_file or labels or spec, spec)
    return loaded


def _read_npy(path: Path) -> np.ndarray:
    """A plain numeric array from a `.npy` file, its header checked against its size
    before anything is allocated."""
    status = paths.existing(path, "Data", folder_ok=False)
    if status.st_size == 0:
        raise KeraslensError(f"Cannot read {str(path)!r}: the file is empty (0 bytes).")
    try:
        with path.open("rb") as stream:
            _check_npy_header(stream, status.st_size, str(path))
        return np.load(path, allow_pickle=False)
    except KeraslensError:
        raise
    except OSError as error:
        raise KeraslensError(f"Cannot read {str(path)!r}: {error.strerror or error}.") from None
    except (ValueError, EOFError) as error:
        raise KeraslensError(
            f"Cannot read {str(path)!r}: {error}. keraslens reads plain numeric arrays only "
            "(no pickled objects)."
        ) from None
    except MemoryError:
        raise KeraslensError(_too_big(str(path))) from None


def _check_npy_header(stream: BinaryIO, size: int, name: str) -> None:
    """Refuse a `.npy` stream of `size` bytes whose header is not a plain array, or claims
    more data than the stream holds (a truncated file, or a forged shape)."""
    try:
        version = np.lib.format.read_magic(stream)
        read = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read(stream)
    except (ValueError, EOFError) as error:
        raise KeraslensError(f"Cannot read {name!r}: it is not a .npy array ({error}).") from None
    if dtype.hasobject:
        raise KeraslensError(
            f"Cannot read {name!r}: it holds Python objects, which only unpickling could read. "
            "keraslens reads plain numeric arrays only (no pickled objects)."
        )
    needed = math.prod(shape) * dtype.itemsize
    held = size - stream.tell()
    if needed > held:
        raise KeraslensError(
            f"Cannot read {name!r}: its header claims shape {shape_text(shape)} of {dtype} "
            f"({needed:,} bytes) but the file holds {held:,}: it is truncated or corrupt."
        )


def _too_big(name: str) -> str:
    return f"Cannot read {name!r}: its arrays do not fit in memory. Pass fewer samples."


def _read_npz(path: Path, what: str = "Data") -> dict[str, np.ndarray]:
    """Every array of a `.npz` file, each header checked against its size first."""
    paths.existing(path, what, folder_ok=False)
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                if member.filename.endswith(".npy"):
                    with archive.open(member) as stream:
                        _check_npy_header(stream, member.file_size, f"{path}[{member.filename}]")
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except KeraslensError:
        raise
    except zipfile.BadZipFile:
        raise KeraslensError(f"Cannot read {str(path)!r}: it is not a .npz (zip) file.") from None
    except OSError as error:
        raise KeraslensError(f"Cannot read {str(path)!r}: {error.strerror or error}.") from None
    except (ValueError, EOFError) as error:
        raise KeraslensError(
            f"Cannot read {str(path)!r}: {error}. keraslens reads plain numeric arrays only."
        ) from None
    except MemoryError:
        raise KeraslensError(_too_big(str(path))) from None


def _from_npz(
    path: Path, data_key: str | None, labels_key: str | None, model: keras.Model
) -> LoadedData:
    arrays = _read_npz(path)
    labels = None
    if labels_key is not None:
        if labels_key not in arrays:
            raise KeraslensError(
                f"{str(path)!r} has no array {labels_key!r} for --labels; it holds: "
                f"{', '.join(sorted(arrays))}."
            )
        labels = arrays.pop(labels_key)
    keys = input_keys(model)
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
    `check_data` names any input the file lacks."""
    for names in (keys, [t.name for t in symbolic_inputs(model)]):
        if all(name in arrays for name in names):
            chosen = {name: arrays[name] for name in names}
            return LoadedData(chosen, labels, f"{path.name}[{', '.join(names)}]")
    return LoadedData(arrays, labels, path.name)


def _read_labels(path: Path) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        return _read_npy(path)
    if path.suffix.lower() != ".npz":
        raise KeraslensError(f"Cannot read labels {str(path)!r}: expected a .npy or .npz file.")
    arrays = _read_npz(path, "Labels")
    if len(arrays) != 1:
        raise KeraslensError(
            f"Labels file {str(path)!r} holds {len(arrays)} arrays ({', '.join(sorted(arrays))}), "
            "and a labels file must hold one. To take the labels from a .npz that also holds "
            "the inputs, pass it as --data and name the labels array with --labels KEY "
            f"(e.g. --data {path.name} --data-key x --labels y)."
        )
    return next(iter(arrays.values()))


def _check_labels(model: keras.Model, loaded: LoadedData, labels: str, spec: str) -> None:
    """Refuse labels that are not one per sample of array inputs."""
    if isinstance(loaded.inputs, (tf.data.Dataset, keras.utils.PyDataset)):
        return
    samples = len(_in_input_order(model, loaded.inputs, spec)[0])
    given = np.shape(loaded.labels)
    count = given[0] if given else 0
    if count != samples:
        raise KeraslensError(
            f"Labels {labels!r} give {count if given else 'a scalar, not'} labels for "
            f"{samples} samples of {spec!r}: give exactly one label per sample."
        )


def _from_images(folder: Path, model: keras.Model, rescale: float | None) -> LoadedData:
    files = paths.image_files(folder)
    if not files:
        raise KeraslensError(
            f"Folder {str(folder)!r} holds no images ({', '.join(paths.IMAGE_SUFFIXES)})."
        )
    shape = _single_input_shape(model)
    if len(shape) != 4 or shape[1] is None or shape[2] is None:
        raise KeraslensError(
            f"A folder of images needs a model taking images (batch, height, width, channels); "
            f"this model expects {shape_text(shape)}."
        )
    mode = {1: "grayscale", 3: "rgb", 4: "rgba"}.get(shape[3])
    if mode is None:
        raise KeraslensError(f"Cannot read images for a model with {shape[3]} input channels.")
    images = np.stack([_read_image(p, mode, (shape[1], shape[2])) for p in files])
    if rescale is not None:
        images *= np.float32(rescale)
    classes = sorted({p.parent for p in files})
    labels = None
    if len(classes) > 1 or classes[0] != folder:
        index = {c: i for i, c in enumerate(classes)}
        labels = np.array([index[p.parent] for p in files])
    scaled = f", x {rescale:g}" if rescale is not None else ""
    return LoadedData(images, labels, f"{folder.name}/ ({len(files)} images{scaled})")


def _read_image(path: Path, mode: str, size: tuple[int, int]) -> np.ndarray:
    paths.existing(path, "Image", folder_ok=False)
    try:
        return keras.utils.img_to_array(
            keras.utils.load_img(path, color_mode=mode, target_size=size)
        )
    except Exception as error:  # Pillow raises many types for one bad file; name the file
        raise KeraslensError(
            f"Cannot read image {str(path)!r}: {error}. Remove or replace the file."
        ) from None


def _from_function(spec: str, model: keras.Model) -> LoadedData:
    module_name, function_name = spec.split(":")
    module = _import_user_module(
        module_name,
        f"Cannot import data function {spec!r}",
        f"Importing the module of data loader {spec!r}",
    )
    function = getattr(module, function_name, None)
    if not callable(function):
        raise KeraslensError(
            f"Cannot import data function {spec!r}: module {module_name!r} has no function "
            f"{function_name!r}."
        )
    try:
        value = function()
    except Exception as error:  # the user's own loader: show its error, not our traceback
        raise _raised(f"Data loader {spec!r}", error) from None
    problem = _unusable(value)
    if problem is not None:
        raise KeraslensError(
            f"Data loader {spec!r} returned {problem}; it must return an array, a dict of "
            "arrays (one per input), (x, y) or a tf.data.Dataset."
        )
    inputs = symbolic_inputs(model)
    one_input = inputs is None or len(inputs) == 1  # a subclassed model: taken as one
    if isinstance(value, tuple) and len(value) == 2 and one_input:
        return LoadedData(value[0], np.asarray(value[1]), spec)
    return LoadedData(value, None, spec)


def _unusable(value: Any) -> str | None:
    """What a data loader returned, when it is not data, or None."""
    if isinstance(value, (np.ndarray, tf.Tensor, tf.data.Dataset, keras.utils.PyDataset)):
        return None
    if isinstance(value, Mapping):
        return None if value else "an empty dict"
    if isinstance(value, (list, tuple)):
        return None if value else f"an empty {type(value).__name__}"
    if value is None:
        return "None (does the function end without a return statement?)"
    if isinstance(value, (str, bytes)):
        return f"a string ({str(value)[:40]!r}), not the data itself"
    if isinstance(value, (Generator, Iterator)):
        return (
            f"a {type(value).__name__}; wrap it in tf.data.Dataset.from_generator, or return "
            "the arrays"
        )
    return f"a {type(value).__name__}"


def non_finite(model: keras.Model, inputs: Any) -> dict[str, Any] | None:
    """Count the NaN and Inf values of array `inputs`: `{"values", "samples", "inputs"}`.

    oneDNN's fused ReLU turns NaN into 0, so the activations alone would hide them.
    None for a dataset, which is not read ahead.

    Example:

    ```python
    non_finite(model, np.array([[0.0, np.nan, 1, 2]]))  # {"values": 1, "samples": 1, ...}
    ```
    """
    if isinstance(inputs, (tf.data.Dataset, keras.utils.PyDataset)):
        return None
    arrays = _in_input_order(model, inputs, "the data")
    names = input_keys(model) or [f"input_{i}" for i in range(len(arrays))]
    bad_samples = np.zeros(len(arrays[0]), bool)
    values, affected = 0, []
    for name, array in zip(names, arrays, strict=True):
        array = np.asarray(array)
        if array.dtype.kind not in "fc":
            continue
        found = 0
        for start in range(0, len(array), _CHUNK):
            chunk = array[start : start + _CHUNK]
            bad = ~np.isfinite(chunk).reshape(len(chunk), -1)
            found += int(bad.sum())
            bad_samples[start : start + len(chunk)] |= bad.any(axis=1)
        if found:
            values += found
            affected.append(name)
    return {"values": values, "samples": int(bad_samples.sum()), "inputs": affected}


_CHUNK = 4096


def check_data(model: keras.Model, inputs: Any, source: str = "the data") -> None:
    """Raise a `KeraslensError` when the whole data read from `source` is empty, a scalar
    or does not fit the model; `capture.data.check_inputs` checks each batch as it runs."""
    if isinstance(inputs, (tf.data.Dataset, keras.utils.PyDataset)):
        return
    arrays = _in_input_order(model, inputs, source)
    declared = declared_inputs(model)
    if declared is not None and len(arrays) != len(declared):
        raise KeraslensError(
            f"{source} gives {len(arrays)} input arrays; the model takes {len(declared)}."
        )
    expected = [shape for _, shape in declared] if declared is not None else [None] * len(arrays)
    for array, shape in zip(arrays, expected, strict=True):
        actual = np.shape(array)
        if len(actual) == 0:
            raise KeraslensError(
                f"The data in {source!r} is a scalar: it has no sample axis. Pass an array "
                "whose first axis is the samples, shape (samples, ...)."
            )
        if actual[0] == 0:
            raise KeraslensError(f"The data in {source!r} is empty: there are no samples.")
        if shape is not None and not fits(actual, shape):
            raise KeraslensError(
                f"The data in {source!r} has shape {shape_text(actual)}; the model expects "
                f"{shape_text(shape)} (None: any size, first axis: samples)."
            )


def _in_input_order(model: keras.Model, inputs: Any, source: str) -> list:
    """The input arrays in the order of `model.inputs`; a dict is matched by key (the
    model's input names, or the keys of the dict it was built on), never by position."""
    given = arrange_inputs(model, inputs)
    keys = input_keys(model)
    if isinstance(given, Mapping) and set(keys or given) != set(given):
        raise KeraslensError(
            f"{source} has arrays {sorted(given)}; model {model.name!r} takes inputs "
            f"{keys}. Key one array by each input name."
        )
    return in_input_order(model, given)


def _single_input_shape(model: keras.Model) -> tuple:
    declared = declared_inputs(model)
    if declared is None or len(declared) != 1:
        raise KeraslensError("A folder of images needs a model with a single input.")
    return declared[0][1]
