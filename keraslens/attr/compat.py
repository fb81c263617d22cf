"""Keras 3 shims: any model seen as a Functional graph, and its output before activation.

Attribution needs the model's pre-activation score and a layer's output, both connected to
the inputs. On Keras 3 a Sequential has no `output_names` (tf-keras-vis's
`ReplaceToLinear` reads them), a subclassed model has no `inputs`/`outputs`, and a layer
inside a nested backbone is not connected to the outer inputs ("Graph disconnected",
tf-keras-vis issue #63). `functional_view` replays any model as a Functional graph of its
own layers (so its weights), and `pre_activation` finds the score before the output's
softmax or sigmoid; the model itself is never modified.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from keraslens.capture.data import fits, symbolic_inputs
from keraslens.errors import KeraslensError, shape_text


@dataclass(frozen=True)
class ExplanationGraph:
    """A model's forward pass rebuilt to its chosen output's pre-activation score.

    Args:
        inputs: the Input tensors.
        logits: the chosen output before its activation (softmax, sigmoid, ...).
        to_probability: maps `logits` to what the model itself outputs.
        linear: False when the output activation could not be separated (then `logits`
            is the model output as is).
    """

    inputs: list
    logits: Any
    to_probability: Callable[[Any], Any]
    linear: bool

    def score_model(self) -> keras.Model:
        """A Functional model from the inputs to the pre-activation score."""
        return keras.Model(self.inputs, self.logits)


def input_shape_of(model: keras.Model, x: np.ndarray | None = None) -> tuple:
    """The shape of one input sample, checked against `x` when given.

    Raises:
        KeraslensError: for multi-input models, or when `x` does not fit the model.
    """
    declared = symbolic_inputs(model)
    if declared is not None and len(declared) != 1:
        raise KeraslensError(
            f"Model {model.name!r} has {len(declared)} inputs; keraslens.vis explains "
            "single-input models. Wrap the model so that it takes one tensor."
        )
    if x is None:
        if declared is None:
            raise KeraslensError(
                f"Model {model.name!r} is subclassed and declares no input, so keraslens "
                "cannot tell the shape of its input; pass input_shape=, the shape of one "
                "sample (e.g. x.shape[1:]), or data."
            )
        return tuple(declared[0].shape[1:])
    x = np.asarray(x)
    if declared is None:
        return tuple(x.shape[1:])
    expected = tuple(declared[0].shape[1:])
    if not fits(x.shape, (None, *expected)):
        hint = " Add the batch axis: x[None]." if x.shape == expected else ""
        raise KeraslensError(
            f"x has shape {x.shape} but model {model.name!r} takes batches of shape "
            f"{shape_text(('N', *expected))}.{hint}"
        )
    return tuple(x.shape[1:])


def require_continuous_input(model: keras.Model, x: np.ndarray | None = None) -> None:
    """Raise when the model's input (or `x`) holds integers, such as token ids.

    Gradient maps and synthesised inputs need an input that can move by small amounts;
    an `Embedding` lookup has no gradient with respect to its indices.
    """
    declared = symbolic_inputs(model)
    dtype = declared[0].dtype if declared else (None if x is None else np.asarray(x).dtype)
    if dtype is None:
        return
    dtype = np.dtype(keras.backend.standardize_dtype(dtype))
    if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
        raise KeraslensError(
            f"Model {model.name!r} takes {dtype.name} inputs (indices such as token ids), "
            "which have no gradient and cannot be synthesised; heatmaps and activation "
            "maximization need a continuous input such as an image."
        )


def functional_view(model: keras.layers.Layer, input_shape: Sequence) -> keras.Model:
    """A Functional model computing `model` with the same layers (and so the same weights).

    Sequential models are replayed layer by layer; subclassed models are traced by calling
    their `call` on a symbolic input, which records every inner layer call as a graph node.
    A subclassed model whose `call` is not traceable (raw TensorFlow ops) becomes a single
    opaque layer: gradients to its input still work, its inner layers are out of reach.
    """
    if _is_functional(model):
        return model
    inputs = keras.Input(shape=tuple(input_shape))
    if isinstance(model, keras.Sequential):
        outputs = inputs
        for layer in model.layers:
            outputs = layer(outputs)
        return keras.Model(inputs, outputs)
    try:
        outputs = model.call(inputs)
    except Exception:  # any failure to trace means the call is opaque, not that it is wrong
        outputs = model(inputs)
    return keras.Model(inputs, outputs)


def is_opaque(view: keras.Model, model: keras.layers.Layer) -> bool:
    """True when `functional_view` could only wrap `model` whole (an untraceable `call`)."""
    return any(layer is model for layer in view.layers)


def _is_functional(model: keras.layers.Layer) -> bool:
    return (
        isinstance(model, keras.Model)
        and not isinstance(model, keras.Sequential)
        and getattr(model, "outputs", None) is not None
    )


def build_graph(
    model: keras.Model, input_shape: Sequence, output: int | str | None = None
) -> ExplanationGraph:
    """Rebuild `model`'s forward pass (with its own layers) to its pre-activation score.

    Args:
        model: a Functional, Sequential or subclassed Keras model with one input.
        input_shape: the shape of one sample.
        output: which output to explain, by index or name; None for a single-output model.
    """
    view = functional_view(model, input_shape)
    calls: dict[int, tuple] = {}

    def call(layer, *args, **kwargs):
        out = layer(*args, **kwargs)
        calls[id(out)] = (layer, args, kwargs)
        return out

    replayed = keras.models.clone_model(view, clone_function=lambda lay: lay, call_function=call)
    chosen = list(replayed.outputs)[output_index(view, output)]
    logits, to_probability, linear = pre_activation(chosen, calls)
    return ExplanationGraph(list(replayed.inputs), logits, to_probability, linear)


def check_path(model: keras.Model, path: Sequence[str], prefix: str = "") -> None:
    """Raise a `KeraslensError` naming the missing part when `path` is not in `model`."""
    operations = [op for op in _operations(model) if not isinstance(op, keras.layers.InputLayer)]
    names = [op.name for op in operations]
    if path[0] not in names:
        where = f"inside {prefix.rstrip('/')!r}" if prefix else f"in model {model.name!r}"
        raise KeraslensError(
            f"Layer {prefix + '/'.join(path)!r} not found: there is no {path[0]!r} {where}. "
            f"Layers there: {', '.join(names[-30:])}. Name a nested layer by its path, "
            "e.g. 'backbone/conv'."
        )
    if len(path) > 1:
        inner = operations[names.index(path[0])]
        if not isinstance(inner, keras.Model):
            raise KeraslensError(
                f"Layer {prefix + path[0]!r} is a {type(inner).__name__}, not a model, so it "
                f"has no layer {path[1]!r}; drop the path after {path[0]!r}."
            )
        check_path(inner, path[1:], prefix + path[0] + "/")


def _operations(model: keras.Model) -> list:
    """Layers and operations (ConvNeXt's `inputs + x` is an `Add` operation, no layer)."""
    return list(getattr(model, "operations", None) or model.layers)


def parse_output(text: str) -> int | str | None:
    """An output selector from an option string: "" for none, "1" for an index, else a name."""
    if not text:
        return None
    return int(text) if text.lstrip("-").isdigit() else text


def output_index(view: keras.Model, output: int | str | None) -> int:
    """The position of `output` (index or name) among `view`'s outputs, or a clear error."""
    count = len(view.outputs)
    if output is None:
        if count > 1:
            raise KeraslensError(
                f"Model {view.name!r} has {count} outputs {view.output_names}; choose one "
                "with output=<index or name>."
            )
        return 0
    if isinstance(output, str):
        if output not in view.output_names:
            raise KeraslensError(
                f"Model {view.name!r} has no output {output!r}; its outputs: {view.output_names}."
            )
        return view.output_names.index(output)
    if not -count <= output < count:
        raise KeraslensError(
            f"output={output} is out of range: model {view.name!r} has {count} output(s)."
        )
    return output % count


def pre_activation(tensor: Any, calls: dict) -> tuple[Any, Callable, bool]:
    """The tensor before the activation that produced `tensor`, and that activation.

    `calls` maps each replayed tensor's id to the `(layer, args, kwargs)` call that made
    it; the third value is False when no activation could be separated.
    """
    layer, args, kwargs = calls[id(tensor)]
    if isinstance(layer, keras.layers.Softmax):
        return args[0], layer, True
    activation = getattr(layer, "activation", None)
    if activation is not None:
        if keras.activations.serialize(activation) == "linear":
            return tensor, _default_probability, True
        # An explicit name: an automatic one ("dense") can clash with the user's layers.
        return linear_call(layer, f"{layer.name}_keraslens_logits", args, kwargs), activation, True
    if isinstance(layer, keras.Model):
        inner = functional_view(layer, args[0].shape[1:])
        if not is_opaque(inner, layer):
            graph = build_graph(inner, args[0].shape[1:])
            if graph.linear:
                return graph.score_model()(*args, **kwargs), graph.to_probability, True
    return tensor, _identity, False


_TWINS: dict[int, tuple[weakref.ref, weakref.ref]] = {}


def linear_call(layer: keras.layers.Layer, name: str, args: tuple, kwargs: dict) -> Any:
    """`layer`'s output before its activation on `args`, through a copy of it named `name`
    with a linear activation.

    The copy holds a copy of the layer's weights; `weight_source` maps each of its
    variables back to the layer's, so that a score graph runs with the layer's current
    values (`ScoreGraph.weights`), not those copied here.
    """
    twin = type(layer).from_config({**layer.get_config(), "activation": "linear", "name": name})
    out = twin(*args, **kwargs)
    twin.set_weights(layer.get_weights())
    for copy, source in zip(twin.weights, layer.weights, strict=True):
        key = id(copy)
        _TWINS[key] = (
            weakref.ref(copy, lambda _, key=key: _TWINS.pop(key, None)),
            weakref.ref(source),
        )
    return out


def weight_source(variable: Any) -> Any:
    """The variable whose value `variable` stands for: the layer's own for a copy made by
    `linear_call`, else `variable` itself."""
    while (entry := _TWINS.get(id(variable))) is not None and entry[0]() is variable:
        source = entry[1]()
        if source is None:
            break
        variable = source
    return variable


def _default_probability(logits: Any) -> Any:
    # A model that already outputs logits: its class probabilities are their softmax.
    if logits.shape[-1] == 1:
        return keras.activations.sigmoid(logits)
    return keras.activations.softmax(logits)


def _identity(values: Any) -> Any:
    return values
