"""`Scorer`: a batch to explain, and compiled, batched access to its target scores."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import keras
import numpy as np

from keraslens.attr.graph import InputSpec, ScoreGraph, score_graph
from keraslens.attr.targets import as_targets
from keraslens.attr.weights import Weights

VALUES_PER_PASS = 2**22
"""Input values per internal pass: bounds memory whatever the steps, masks or draws."""

GROUP_PASSES = 8
"""Passes' worth of rows a method expands at once (`Scorer.groups`)."""


class Scorer:
    """The explained value of N samples and the target score of any values around it.

    Methods see only `value` (the explained input, or the layer output it is taken at)
    and ask for scores or gradients of arrays shaped like it. Rows are sample-major: with
    `repeat=k`, rows `i*k .. i*k+k-1` belong to sample `i`, whose other inputs and target
    they share. Work is split into passes of `batch_size` rows, so 256 integrated-gradient
    steps on a large batch cannot exhaust memory (Captum issue #245).

    Build one with `make_scorer`.

    Args:
        model: the user's model (for `at_input`).
        graph: the model's `ScoreGraph`.
        feeds: the N samples of every model input, in `graph.specs` order.
        targets: class indices (see `keraslens.attribute`), or None for the predicted class.
        batch_size: rows per pass; None: `VALUES_PER_PASS` input values, 16 to 256 rows.
        gradients: the caller will read gradients: the clean logits (and the layer's
            values) then come from the gradient function, which it traces anyway, sparing
            a trace of the forward pass alone (about a second on ResNet50).
        weights: values for the model's variables in place of their own (a randomised
            model), run by the same compiled functions; None: the model's own.
    """

    def __init__(
        self,
        model: keras.Model,
        graph: ScoreGraph,
        feeds: Sequence[np.ndarray],
        targets: object = None,
        batch_size: int | None = None,
        gradients: bool = False,
        weights: Weights | None = None,
    ) -> None:
        self.model = model
        self.graph = graph
        self.weights = weights
        self._weights = graph.weights(weights)
        self._inputs = list(feeds)
        self.samples = len(self._inputs[0])
        explained = self._inputs[graph.explained]
        self.input_shape = tuple(explained.shape[1:])
        self.batch_size = batch_size or int(
            np.clip(VALUES_PER_PASS // max(1, int(np.prod(self.input_shape))), 16, 256)
        )
        self.logits, *base = self._clean(gradients)
        self._base = base[0].astype(np.float32) if graph.shifted else None
        self.value = self._base if graph.shifted else explained.astype(np.float32)
        chosen = as_targets(targets, self.samples, graph.classes)
        self.targets = (self.logits.argmax(axis=1) if chosen is None else chosen).astype(np.int32)

    @property
    def probabilities(self) -> np.ndarray:
        """What the model outputs for the clean samples (softmax of the logits, ...)."""
        return np.asarray(self.graph.to_probability(self.logits))

    def at_input(self, batch_size: int | None = None) -> Scorer:
        """A scorer of the same samples and targets at the explained input itself."""
        if not self.graph.shifted:
            return self
        graph = score_graph(
            self.model, self.graph.specs, self.graph.explained, output=self.graph.output
        )
        return Scorer(
            self.model, graph, self._inputs, self.targets, batch_size, weights=self.weights
        )

    def probability(self, values: np.ndarray, repeat: int = 1, first: int = 0) -> np.ndarray:
        """What the model outputs for the target class (its softmax...), row by row."""
        probabilities = np.asarray(self.graph.to_probability(self.outputs(values, repeat, first)))
        return self._of_targets(probabilities, repeat, first)

    def groups(self, rows_per_sample: int) -> Iterator[slice]:
        """Slices of samples whose rows fill a few passes: build big expansions group-wise."""
        step = max(1, (GROUP_PASSES * self.batch_size) // max(1, rows_per_sample))
        for start in range(0, self.samples, step):
            yield slice(start, min(start + step, self.samples))

    def outputs(self, values: np.ndarray, repeat: int = 1, first: int = 0) -> np.ndarray:
        """Every logit of each row of `values` (rows as in `score`)."""
        return self._run(
            lambda feeds, _: self.graph.outputs(feeds, self._weights)[0], values, repeat, first
        )

    def score(self, values: np.ndarray, repeat: int = 1, first: int = 0) -> np.ndarray:
        """The target logit of each row of `values`: shaped like `value`, `repeat` rows per
        sample, for the samples from `first` on."""
        return self._of_targets(self.outputs(values, repeat, first), repeat, first)

    def gradient(self, values: np.ndarray, repeat: int = 1, first: int = 0) -> np.ndarray:
        """d target logit / d values, row by row (rows as in `score`)."""

        def gradient(feeds, owners):
            return self.graph.gradient(feeds, self.targets[owners], self._weights)[0]

        return self._run(gradient, values, repeat, first)

    def _clean(self, gradients: bool) -> list[np.ndarray]:
        """The graph's outputs on the clean samples (a zero shift): the logits, and the
        explained layer's values when shifted. With `gradients`, read off the gradient
        pass, whose trace the caller needs anyway: with zero cotangents, differentiated
        with respect to the last watched feed (a layer's shift, when the graph has one, so
        that the backward pass runs through the layers after it only)."""
        graph, weights = self.graph, self._weights
        cheapest = graph.compiled.watched[-1]
        parts = []
        for start in range(0, self.samples, self.batch_size):
            owners = np.arange(start, min(start + self.batch_size, self.samples))
            feeds = self._feeds(owners)
            if gradients:
                zeros = [np.zeros((len(owners), w), np.float32) for w in graph.compiled.widths]
                outputs = graph.unit_gradient(feeds, zeros, weights, cheapest)[1]
            else:
                outputs = graph.outputs(feeds, weights)
            parts.append([np.asarray(o) for o in outputs])
        return [np.concatenate(column) for column in zip(*parts, strict=True)]

    def _feeds(self, owners: np.ndarray, rows: np.ndarray | None = None) -> list[np.ndarray]:
        """The graph's feeds for the samples `owners`, with `rows` as the explained values
        (None: the clean samples, a zero shift)."""
        graph = self.graph
        feeds = [x[owners] for x in self._inputs]
        if rows is not None and not graph.shifted:
            feeds[graph.explained] = rows
        if rows is not None and graph.shifted:
            return [*feeds, rows - self._base[owners]]
        return [*feeds, *graph.zero_shift(len(owners))]

    def _of_targets(self, columns: np.ndarray, repeat: int, first: int) -> np.ndarray:
        """Each row's value in its sample's target column."""
        owners = first + np.arange(len(columns)) // repeat
        return columns[np.arange(len(columns)), self.targets[owners]]

    def _run(self, fn: Callable, values: np.ndarray, repeat: int = 1, first: int = 0) -> np.ndarray:
        """`fn(feeds, owners)` over passes of `batch_size` rows, concatenated."""
        values = np.asarray(values, dtype=np.float32)
        if len(values) % repeat or first + len(values) // repeat > self.samples:
            raise ValueError(f"{len(values)} rows do not fit {repeat} rows per sample")
        parts = []
        for start in range(0, len(values), self.batch_size):
            rows = values[start : start + self.batch_size]
            owners = first + np.arange(start, start + len(rows)) // repeat
            parts.append(np.asarray(fn(self._feeds(owners, rows), owners)))
        return np.concatenate(parts)


def make_scorer(
    model: keras.Model,
    specs: Sequence[InputSpec],
    feeds: Sequence[np.ndarray],
    explained: int,
    targets: object = None,
    *,
    output: int | str | None = None,
    layer: str | None = None,
    relu_rule: str | None = None,
    batch_size: int | None = None,
    gradients: bool = False,
    weights: Weights | None = None,
) -> Scorer:
    """The `Scorer` of `feeds` on `model`'s cached score graph for these choices."""
    graph = score_graph(model, specs, explained, output=output, layer=layer, relu_rule=relu_rule)
    return Scorer(model, graph, feeds, targets, batch_size, gradients, weights)
