"""The graph an attribution is computed on: the model's inputs to one pre-activation score.

`score_graph` rebuilds the model's forward pass once, with the user's own layers (and so
weights), as a Functional graph that

- ends at the chosen output *before* its activation (softmax, sigmoid): attributions of
  probabilities saturate, those of logits do not;
- optionally adds a zero-valued `shift` input to the output of one layer (an `Embedding`
  fed by token ids, or any `layer=`), so that gradients and perturbations are taken at
  that layer's output while masks computed from the tokens still flow;
- replaces every ReLU by one whose backward pass follows a rule given when it runs (the
  chain rule, guided backpropagation, deconvnet), so that one trace serves every rule.

The model itself is never modified. Graphs are cached per model, so a second call with the
same choices reuses the compiled functions built on them.
"""

from __future__ import annotations

import contextvars
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

RELU_RULES = (None, "guided", "deconvnet")
"""The backward rules of the graphs' ReLUs, by the code their compiled functions take."""

_RULE: contextvars.ContextVar = contextvars.ContextVar("keraslens_relu_rule", default=None)
"""The rule code tensor while a gradient function traces its forward pass; None elsewhere
(plain ReLUs, no custom gradient: a forward pass or a caller's own tape)."""


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

    def _outputs(self, feeds: list, weights: list, rule: Any = None) -> list:
        """The model's outputs on `feeds`, its variables reading `weights`, its ReLUs'
        backward passes following `rule` (a `RELU_RULES` code tensor; None: plain ReLUs)."""
        mapping = list(zip(self.model.variables, weights, strict=True))
        token = _RULE.set(rule)
        try:
            with keras.StatelessScope(state_mapping=mapping):
                outputs = self.model(feeds, training=False)
        finally:
            _RULE.reset(token)
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
        """Compiled `(feeds, cotangents, weights, which, rule) -> (d score / d feed
        watched[which], *outputs)`, where `score` sums, over the outputs,
        `unit_values(output) * cotangent` (`cotangents[i]` is `(batch, widths[i])`) and the
        ReLUs pass gradients by `RELU_RULES[rule]`.

        One-hot cotangents on the logits give a target logit's gradient; on a layer's
        values, a unit's mean activation (activation maximization). Only the chosen
        gradient is computed when it runs (a switch over the watched feeds): a class
        activation map at a layer pays no backward pass down to the input, and the
        gradient at the input shares the same trace.
        """

        def gradient(feeds, cotangents, weights, which, rule):
            sources = [feeds[i] for i in self.watched]
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(sources)
                outputs = self._outputs(feeds, weights, rule)
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
        relu_rule: the backward rule of every ReLU in `gradient` (`RELU_RULES`).
    """

    compiled: CompiledGraph = field(compare=False, repr=False)
    specs: tuple[InputSpec, ...]
    explained: int
    output: int | str | None
    layer: str | None
    shift_shape: tuple[int, ...] | None
    to_probability: Callable[[Any], Any]
    relu_rule: str | None = None

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

    def zero_shift(self, count: int) -> list[np.ndarray]:
        """The feeds after the model's inputs for `count` unshifted samples: a zero shift
        when the graph has one, else none."""
        if self.shift_shape is None:
            return []
        dtype = self.feed_specs[-1].dtype.as_numpy_dtype
        return [np.zeros((count, *self.shift_shape), dtype)]

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
        rule = tf.constant(RELU_RULES.index(self.relu_rule))
        result = self.compiled.gradient_fn(feeds, cotangents, weights, which, rule)
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
            Every rule runs on the same graph and trace.
    """
    if relu_rule not in RELU_RULES:
        raise KeraslensError(f"relu_rule must be one of {RELU_RULES}; got {relu_rule!r}.")
    key = (tuple(specs), explained, output, layer)
    per_model = _CACHE.setdefault(model, {})
    if (key, relu_rule) not in per_model:
        if (key, None) not in per_model:
            shared = _input_view(per_model, key) if layer is None else None
            per_model[key, None] = shared or _build(model, tuple(specs), explained, output, layer)
        per_model[key, relu_rule] = replace(per_model[key, None], relu_rule=relu_rule)
    return per_model[key, relu_rule]


def _input_view(per_model: dict, key: tuple) -> ScoreGraph | None:
    """A graph already built at a layer of the same model, inputs and output, seen at its
    (continuous) input: its gradient pass gives the input's gradient too, so no second
    graph is traced."""
    specs, explained, output, _ = key
    for ((s, e, o, layer), rule), graph in per_model.items():
        if (s, e, o, rule) == (specs, explained, output, None) and layer is not None:
            if explained in graph.compiled.watched:
                return replace(graph, layer=None)
    return None


def _build(model, specs, explained, output, layer) -> ScoreGraph:
    view = functional_model(model, specs)
    path = layer.split("/") if layer else []
    if path:
        check_path(view, path)
    token_input = specs[explained].is_integer and not path
    replay = _Replay(path, explained if token_input else None)
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
    at index `token`, and makes every ReLU a `_RuleReLU`, entering nested models that have
    one. A shift takes two passes: the first finds the layer and the shape of its output,
    the second replays a copy of the view that takes the shift as one more input
    (`clone_model` builds a model on the given inputs only).
    """

    def __init__(self, path: Sequence[str], token: int | None) -> None:
        self.path, self.token = list(path), token
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
        if isinstance(layer, keras.Model) and _has_relu(layer):
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
        inner = _Replay(self.path[1:], None)
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
        inner = _Replay([], None)
        inner_inputs, inner_outputs = inner.run(inner_view)
        out_value = inner_outputs[0] if len(inner_outputs) == 1 else inner_outputs
        return keras.Model(inner_inputs, out_value)(*args, **kwargs)

    def _rewritten_call(self, layer, args, kwargs):
        if _is_relu_layer(layer):
            return _RuleReLU()(args[0])
        activation = getattr(layer, "activation", None)
        if activation is not None and _is_relu(activation):
            out = linear_call(layer, f"{layer.name}_linear", args, kwargs)
            return _RuleReLU()(out)
        return layer(*args, **kwargs)


def _functional_inner(layer: keras.Model, args: tuple) -> keras.Model:
    first = args[0]
    spec = InputSpec("inner", tuple(first.shape[1:]), keras.backend.standardize_dtype(first.dtype))
    return functional_model(layer, [spec])


def _floating(tensor: Any) -> bool:
    return keras.backend.standardize_dtype(tensor.dtype).startswith(("float", "bfloat"))


def _is_relu(activation: Any) -> bool:
    return activation is not None and keras.activations.serialize(activation) == "relu"


def _has_relu(model: keras.Model) -> bool:
    """True when a layer of `model`, nested models' included, is or ends in a ReLU."""
    return any(
        _is_relu_layer(layer)
        or _is_relu(getattr(layer, "activation", None))
        or (isinstance(layer, keras.Model) and _has_relu(layer))
        for layer in model.layers
    )


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
    """ReLU forward; backward by the rule a gradient function runs with (`RELU_RULES`).

    `None`: the chain rule, the gradient passes where the input is positive. `"guided"`
    (Springenberg et al., 2015): where both the input and the incoming gradient are
    positive. `"deconvnet"` (Zeiler & Fergus, 2014): where the incoming gradient is
    positive, whatever the input. Outside a gradient function it is a plain ReLU.
    """

    def call(self, inputs):
        rule = _RULE.get()
        if rule is None:
            return tf.nn.relu(inputs)

        @tf.custom_gradient
        def relu(x):
            y = tf.nn.relu(x)

            def backward(upstream):
                # Arithmetic on the rule, no branch per ReLU (a branch costs more to trace
                # than it saves): guided and deconvnet pass only the positive part of the
                # gradient (a floor at 0 instead of -inf), and deconvnet passes it whatever
                # the input (every feature counts as positive).
                floor = tf.cast(tf.where(rule != 0, 0.0, -np.inf), upstream.dtype)
                deconvnet = tf.cast(rule == RELU_RULES.index("deconvnet"), y.dtype)
                return tf.raw_ops.ReluGrad(
                    gradients=tf.maximum(upstream, floor), features=y + deconvnet
                )

            return y, backward

        return relu(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape
