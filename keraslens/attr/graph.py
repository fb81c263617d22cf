"""The graph an attribution is computed on: the model's inputs to one pre-activation score.

`score_graph` rebuilds the model's forward pass once, with the user's own layers (and so
weights), as a Functional graph that

- ends at the chosen output *before* its activation (softmax, sigmoid): attributions of
  probabilities saturate, those of logits do not;
- optionally adds a zero-valued `shift` input to the output of one layer (an `Embedding`
  fed by token ids, or any `layer=`), so that gradients and perturbations are taken at
  that layer's output while masks computed from the tokens still flow;
- optionally replaces every ReLU by a rule for its backward pass (guided backpropagation,
  deconvnet).

The model itself is never modified. Graphs are cached per model, so a second call with the
same choices reuses the compiled functions built on them.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keraslens.attr.compat import (
    check_path,
    is_opaque,
    linear_call,
    output_index,
    pre_activation,
    weight_source,
)
from keraslens.attr.weights import Weights
from keraslens.errors import KeraslensError


@dataclass(frozen=True)
class InputSpec:
    """One model input: how data for it is keyed, and the shape and dtype of a sample."""

    key: str
    shape: tuple
    dtype: str

    @property
    def is_integer(self) -> bool:
        """True for token ids and other indices, which have no gradient."""
        dtype = np.dtype(self.dtype)
        return bool(np.issubdtype(dtype, np.integer) or dtype == np.bool_)


class CompiledGraph:
    """A score model and its compiled functions, shared by every `ScoreGraph` on it.

    Args:
        model: Functional; called on the feeds (the model's inputs in order, then the
            shift input if it has one), returns `[logits]`, or `[logits, base]` with a
            shift, `base` being the shifted layer's own output.
        sources: for each of `model.variables`, in order, the user's variable whose value
            it takes (itself, or the one a rewritten layer's copy stands for).
        watched: the feeds the gradient function differentiates with respect to.
    """

    def __init__(self, model: keras.Model, sources: Sequence[Any], watched: Sequence[int]):
        self.model = model
        self.sources = tuple(sources)
        self.watched = tuple(watched)

    def weights(self, override: Weights | None = None) -> list[tf.Tensor]:
        """What the compiled functions run with: each variable's current value, or the one
        `override` gives (read now, so a model trained since the trace is seen as it is)."""
        read = (lambda source: source.value) if override is None else override.value
        return [read(source) for source in self.sources]

    @cached_property
    def feed_specs(self) -> list[tf.TensorSpec]:
        """Batch-agnostic signatures of the feeds: one trace serves every batch size."""
        return [tf.TensorSpec((None, *t.shape[1:]), t.dtype) for t in self.model.inputs]

    @cached_property
    def weight_specs(self) -> list[tf.TensorSpec]:
        """Signatures of the variables' values, passed to every compiled function."""
        return [tf.TensorSpec(v.shape, v.dtype) for v in self.model.variables]

    def _outputs(self, feeds: list, weights: list) -> list:
        """The model's outputs on `feeds`, its variables reading `weights`."""
        mapping = list(zip(self.model.variables, weights, strict=True))
        with keras.StatelessScope(state_mapping=mapping):
            outputs = self.model(feeds, training=False)
        return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]

    # The compiled functions below are traced without autograph, as Keras traces its own
    # predict and train steps: the model runs as `model.predict` runs it, and autograph's
    # conversion of every layer call would cost about as much as the trace itself. They
    # take the weights as arguments, so the trace serves every set of them (`Weights`).
    @cached_property
    def logits_fn(self) -> Callable:
        """Compiled `(feeds, weights) -> outputs` (`[logits]`, or `[logits, base]`)."""
        return tf.function(self._outputs, [self.feed_specs, self.weight_specs], autograph=False)

    @cached_property
    def widths(self) -> list[int]:
        """Units of each output: its last axis (classes, channels); 1 for a rank-1 output."""
        return [int(t.shape[-1]) if len(t.shape) > 1 else 1 for t in self.model.outputs]

    @cached_property
    def gradient_fn(self) -> Callable:
        """Compiled `(feeds, cotangents, weights, which) -> (d score / d feed watched[which],
        *outputs)`, where `score` sums, over the outputs, `unit_values(output) * cotangent`
        (`cotangents[i]` is `(batch, widths[i])`).

        One-hot cotangents on the logits give a target logit's gradient; on a layer's
        values, a unit's mean activation (activation maximization). Only the chosen
        gradient is computed when it runs (a switch over the watched feeds): a class
        activation map at a layer pays no backward pass down to the input, and the
        gradient at the input shares the same trace.
        """

        def gradient(feeds, cotangents, weights, which):
            sources = [feeds[i] for i in self.watched]
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(sources)
                outputs = self._outputs(feeds, weights)
                score = tf.add_n(
                    [
                        tf.reduce_sum(unit_values(o) * c)
                        for o, c in zip(outputs, cotangents, strict=True)
                    ]
                )
            # Zeros, not None, where the score does not depend on a feed (the layer is the
            # output layer, whose pre-activation copy bypasses the shift).
            zero = tf.UnconnectedGradients.ZERO
            branches = [
                lambda s=s: tape.gradient(score, s, unconnected_gradients=zero) for s in sources
            ]
            chosen = branches[0]() if len(branches) == 1 else tf.switch_case(which, branches)
            return (chosen, *outputs)

        signature = [
            self.feed_specs,
            [tf.TensorSpec((None, width), tf.float32) for width in self.widths],
            self.weight_specs,
            tf.TensorSpec((), tf.int32),
        ]
        return tf.function(gradient, signature, autograph=False)


def unit_values(values: Any) -> Any:
    """`(batch, units)` values of a layer's output: the mean over positions of each channel
    (a conv filter's mean activation); a rank-1 output is one unit."""
    if len(values.shape) == 1:
        return values[:, None]
    if len(values.shape) == 2:
        return values
    return tf.reduce_mean(values, axis=list(range(1, len(values.shape) - 1)))


@dataclass(frozen=True)
class ScoreGraph:
    """What one attribution is taken on: a `CompiledGraph`, and where it is explained.

    Args:
        compiled: the score model and its compiled functions (shared).
        specs: the model's inputs.
        explained: index in `specs` of the input being explained.
        output: the output explained, as the user named it.
        layer: path of the layer whose output is explained, or None for the input itself.
        shift_shape: one sample's shape of the model's shift feed, None without one. A
            graph explained at an input may still have one: it is then fed zeros.
        to_probability: maps logits to what the model itself outputs.
    """

    compiled: CompiledGraph = field(compare=False, repr=False)
    specs: tuple[InputSpec, ...]
    explained: int
    output: int | str | None
    layer: str | None
    shift_shape: tuple[int, ...] | None
    to_probability: Callable[[Any], Any]

    @property
    def model(self) -> keras.Model:
        """The score model (see `CompiledGraph`)."""
        return self.compiled.model

    @property
    def classes(self) -> int:
        """Number of scores the explained output has; raises for an output that is not
        `(batch, classes)` (a map, a sequence), which attributions cannot explain."""
        logits = self.model.outputs[0]
        if len(logits.shape) != 2:
            raise KeraslensError(
                f"The explained output has shape {tuple(logits.shape)}; attributions explain "
                "scores of shape (batch, classes). Choose another output with output=."
            )
        return int(logits.shape[-1])

    @property
    def shifted(self) -> bool:
        """True when attributions are taken at a layer's output, through the shift."""
        return self.shift_shape is not None and self.layer is not None

    @property
    def explained_feed(self) -> int:
        """Index in the model's feeds of the tensor attributions are taken at."""
        return len(self.specs) if self.shifted else self.explained

    @property
    def feed_specs(self) -> list[tf.TensorSpec]:
        """Batch-agnostic signatures of the feeds."""
        return self.compiled.feed_specs

    def weights(self, override: Weights | None = None) -> list[tf.Tensor]:
        """The weights to pass to `outputs` and `gradient` (`CompiledGraph.weights`)."""
        return self.compiled.weights(override)

    def outputs(self, feeds: list, weights: list) -> list[tf.Tensor]:
        """`[logits]`, or `[logits, base]` with a shift, compiled."""
        return self.compiled.logits_fn(feeds, weights)

    def gradient(self, feeds: list, targets: Any, weights: list) -> tuple[tf.Tensor, list]:
        """d target logit / d explained feed, and the outputs, from one compiled pass."""
        targets = tf.one_hot(targets, self.classes)
        spare = [tf.zeros((len(targets), w)) for w in self.compiled.widths[1:]]
        return self.unit_gradient(feeds, [targets, *spare], weights, self.explained_feed)

    def unit_gradient(
        self, feeds: list, cotangents: list, weights: list, feed: int
    ) -> tuple[tf.Tensor, list]:
        """d sum(cotangent * unit values) over the outputs / d feeds[feed], and the outputs
        (`CompiledGraph.gradient_fn`)."""
        which = tf.constant(self.compiled.watched.index(feed))
        result = self.compiled.gradient_fn(feeds, cotangents, weights, which)
        return result[0], list(result[1:])


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def score_graph(
    model: keras.Model,
    specs: Sequence[InputSpec],
    explained: int,
    *,
    output: int | str | None = None,
    layer: str | None = None,
    relu_rule: str | None = None,
) -> ScoreGraph:
    """The cached `ScoreGraph` of `model` for these choices (built on first use).

    Args:
        model: any Keras 3 model: Sequential, Functional, nested, subclassed, multi-I/O.
        specs: the model's inputs, from `model_inputs`.
        explained: which input is explained.
        output: the output to explain (index or name) of a multi-output model.
        layer: explain at this layer's output (`"backbone/conv"`); None: at the input, or
            at the first layer fed by an integer input (its embedding).
        relu_rule: None, `"guided"` or `"deconvnet"`: the backward rule for every ReLU.
    """
    key = (tuple(specs), explained, output, layer, relu_rule)
    per_model = _CACHE.setdefault(model, {})
    if key not in per_model:
        shared = _input_view(per_model, key) if layer is None else None
        per_model[key] = shared or _build(model, tuple(specs), explained, output, layer, relu_rule)
    return per_model[key]


def _input_view(per_model: dict, key: tuple) -> ScoreGraph | None:
    """A graph already built at a layer of the same model, inputs, output and rule, seen at
    its (continuous) input: its gradient pass gives the input's gradient too, so no
    second graph is traced."""
    specs, explained, output, _, relu_rule = key
    for (s, e, o, layer, rule), graph in per_model.items():
        if (s, e, o, rule) == (specs, explained, output, relu_rule) and layer is not None:
            if explained in graph.compiled.watched:
                return replace(graph, layer=None)
    return None


def _build(model, specs, explained, output, layer, relu_rule) -> ScoreGraph:
    view = functional_model(model, specs)
    path = layer.split("/") if layer else []
    if path:
        check_path(view, path)
    token_input = specs[explained].is_integer and not path
    replay = _Replay(path, relu_rule, explained if token_input else None)
    inputs, outputs = replay.run(view, [s.shape for s in specs])
    if (path or token_input) and replay.shift is None:
        raise KeraslensError(
            f"No layer of model {model.name!r} takes the integer input "
            f"{specs[explained].key!r} and returns floats, so there is no embedding to explain "
            "the tokens at; name the layer with layer=."
        )
    chosen = outputs[output_index(view, output)]
    logits, to_probability, _ = pre_activation(chosen, replay.calls)
    if len(logits.shape) == 1:  # one score per sample: one class
        logits = keras.layers.Reshape((1,), name="keraslens_one_score")(logits)
    shifted = replay.shift is not None
    graph = keras.Model(
        inputs + [replay.shift] * shifted, [logits, replay.base] if shifted else [logits]
    )
    # A layer's graph differentiates a continuous input too, so that it can serve
    # gradients at the input as well (`_input_view`).
    watched = [explained] * (not specs[explained].is_integer) + [len(specs)] * shifted
    return ScoreGraph(
        compiled=CompiledGraph(graph, [weight_source(v) for v in graph.variables], watched),
        specs=specs,
        explained=explained,
        output=output,
        layer=layer or (replay.layer_name if token_input else None),
        shift_shape=tuple(replay.shift.shape[1:]) if shifted else None,
        to_probability=to_probability,
    )


def functional_model(model: keras.Model, specs: Sequence[InputSpec]) -> keras.Model:
    """A Functional model computing `model` with its own layers (so its weights), one Input
    per spec; Sequential models are replayed, subclassed ones traced through `call`."""
    if isinstance(model, keras.Model) and not isinstance(model, keras.Sequential):
        if getattr(model, "outputs", None) is not None:
            return model
    inputs = [keras.Input(shape=s.shape, dtype=s.dtype, name=f"{s.key}_") for s in specs]
    if isinstance(model, keras.Sequential):
        outputs = inputs[0]
        for inner in model.layers:
            outputs = inner(outputs)
        return keras.Model(inputs, outputs)
    argument = inputs[0] if len(inputs) == 1 else inputs
    try:
        outputs = model.call(argument)
    except Exception:  # an untraceable call (raw TensorFlow ops) is kept whole, not refused
        outputs = model(argument)
    return keras.Model(inputs, outputs)


class _Replay:
    """Re-runs a Functional graph on fresh Inputs with the user's layers, rewriting on the way.

    Records, for every produced tensor, the `(layer, args, kwargs)` call that made it (for
    `pre_activation`), adds the shift at `path` or after the first layer fed by the input
    at index `token`, and applies `relu_rule` to every ReLU, entering nested models when it
    must. A shift takes two passes: the first finds the layer and the shape of its output,
    the second replays a copy of the view that takes the shift as one more input
    (`clone_model` builds a model on the given inputs only).
    """

    def __init__(self, path: Sequence[str], relu_rule: str | None, token: int | None) -> None:
        self.path, self.relu_rule, self.token = list(path), relu_rule, token
        self.calls: dict[int, tuple] = {}
        self.shift = self.base = None
        self.layer_name: str | None = None
        self._found: Any = None

    def run(self, view: keras.Model, shapes: Sequence[tuple] | None = None) -> tuple[list, list]:
        """The replayed model inputs and outputs; `shift` and `base` are set if shifted.

        `shapes`, one sample's shape per input (the data's), replace the view's declared
        ones, so that every shape of the graph, the shift's too, is known.
        """
        declared = [tuple(t.shape[1:]) for t in view.inputs]
        shapes = list(shapes) if shapes and len(shapes) == len(declared) else declared
        inputs, outputs = self._pass(view, shapes)
        if self._found is None:
            return inputs, outputs
        self.calls.clear()
        # Named: an automatic name can repeat one of the model's own ("input_layer_1").
        spare = keras.Input(
            shape=tuple(self._found.shape[1:]), dtype=self._found.dtype, name="keraslens_spare"
        )
        extended = keras.Model([*view.inputs, spare], view.outputs)
        inputs, outputs = self._pass(extended, [*shapes, spare.shape[1:]], shift=True)
        self.shift = inputs[-1]
        return inputs[:-1], outputs

    def _pass(self, view: keras.Model, shapes: list, shift: bool = False) -> tuple[list, list]:
        inputs = [
            keras.Input(batch_shape=(None, *shape), dtype=t.dtype, name=f"keraslens_input_{i}")
            for i, (t, shape) in enumerate(zip(view.inputs, shapes, strict=True))
        ]
        token = inputs[self.token] if self.token is not None else None
        done = [False]

        def call(layer, *args, **kwargs):
            out = self._call(layer, args, kwargs, token, inputs[-1] if shift else None, done)
            self.calls[id(out)] = (layer, args, kwargs)
            return out

        structure = view.input if not shift else inputs
        clone = keras.models.clone_model(
            view,
            input_tensors=tf.nest.pack_sequence_as(structure, inputs),
            clone_function=lambda lay: lay,
            call_function=call,
        )
        return inputs, list(clone.outputs)

    def _call(self, layer, args, kwargs, token, shift, done):
        head = self.path[0] if self.path else None
        if not done[0] and head == layer.name and len(self.path) > 1:
            done[0] = True
            return self._enter(layer, args, kwargs, shift)
        if self.relu_rule and isinstance(layer, keras.Model):
            inner_view = _functional_inner(layer, args)
            if not is_opaque(inner_view, layer):
                return self._rewritten_inner(inner_view, args, kwargs)
        out = self._rewritten_call(layer, args, kwargs)
        fed_by_token = token is not None and any(
            t is token for t in tf.nest.flatten((args, kwargs))
        )
        if not done[0] and (head == layer.name or (fed_by_token and _floating(out))):
            done[0] = True
            self.layer_name, self._found = layer.name, out
            if shift is not None:
                self.base = out
                out = _Shift(name="keraslens_shift")([out, shift])
        return out

    def _enter(self, layer, args, kwargs, shift):
        inner = _Replay(self.path[1:], self.relu_rule, None)
        inner_inputs, inner_outputs = inner.run(_functional_inner(layer, args))
        if inner.shift is None:
            return layer(*args, **kwargs)
        self.layer_name = layer.name + "/" + (inner.layer_name or "")
        self._found = inner._found
        if shift is None:
            return layer(*args, **kwargs)
        out_value = inner_outputs[0] if len(inner_outputs) == 1 else inner_outputs
        # Two models, so that the base (the layer's own output) does not depend on the shift.
        self.base = keras.Model(inner_inputs, inner.base)(*args)
        return keras.Model([*inner_inputs, inner.shift], out_value)([*args, shift])

    def _rewritten_inner(self, inner_view, args, kwargs):
        inner = _Replay([], self.relu_rule, None)
        inner_inputs, inner_outputs = inner.run(inner_view)
        out_value = inner_outputs[0] if len(inner_outputs) == 1 else inner_outputs
        return keras.Model(inner_inputs, out_value)(*args, **kwargs)

    def _rewritten_call(self, layer, args, kwargs):
        if self.relu_rule is None:
            return layer(*args, **kwargs)
        if _is_relu_layer(layer):
            return _RuleReLU(self.relu_rule)(args[0])
        activation = getattr(layer, "activation", None)
        if activation is not None and _is_relu(activation):
            out = linear_call(layer, f"{layer.name}_linear", args, kwargs)
            return _RuleReLU(self.relu_rule)(out)
        return layer(*args, **kwargs)


def _functional_inner(layer: keras.Model, args: tuple) -> keras.Model:
    first = args[0]
    spec = InputSpec("inner", tuple(first.shape[1:]), keras.backend.standardize_dtype(first.dtype))
    return functional_model(layer, [spec])


def _floating(tensor: Any) -> bool:
    return keras.backend.standardize_dtype(tensor.dtype).startswith(("float", "bfloat"))


def _is_relu(activation: Any) -> bool:
    return keras.activations.serialize(activation) == "relu"


def _is_relu_layer(layer: keras.layers.Layer) -> bool:
    if isinstance(layer, keras.layers.ReLU):
        config = layer.get_config()
        return not config.get("max_value") and not config.get("negative_slope")
    return isinstance(layer, keras.layers.Activation) and _is_relu(layer.activation)


class _Shift(keras.layers.Layer):
    """`value + shift`, keeping `value`'s mask (so an Embedding's padding mask still flows)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs):
        return inputs[0] + inputs[1]

    def compute_mask(self, inputs, mask=None):
        return mask[0] if isinstance(mask, (list, tuple)) else mask

    def compute_output_shape(self, input_shape):
        return input_shape[0]


class _RuleReLU(keras.layers.Layer):
    """ReLU forward; backward by a rule of Springenberg et al. (2015) or Zeiler & Fergus (2014).

    `"guided"`: the gradient passes where both the input and the incoming gradient are
    positive. `"deconvnet"`: it passes where the incoming gradient is positive, whatever
    the input.
    """

    def __init__(self, rule: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rule = rule

    def call(self, inputs):
        rule = self.rule

        @tf.custom_gradient
        def relu(x):
            def backward(upstream):
                passed = tf.nn.relu(upstream)
                if rule == "guided":
                    passed = passed * tf.cast(x > 0, upstream.dtype)
                return passed

            return tf.nn.relu(x), backward

        return relu(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape
