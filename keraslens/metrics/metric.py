"""The contract every explanation metric follows, and the batch of explanations it scores."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import keras
import numpy as np

from keraslens.attr.method import AttributionMethod, apply_options
from keraslens.attr.scorer import Scorer
from keraslens.attr.weights import Weights
from keraslens.errors import KeraslensError
from keraslens.metrics import _plumbing
from keraslens.plugin import Option


@dataclass
class Explained:
    """N samples, their attributions, and compiled access to the model around them.

    Metrics read the attributions (never recompute them) and score perturbed copies of
    the explained input through `scorer`. The three metrics whose definition needs fresh
    attributions (of a perturbed input, another class, a randomised model) call
    `reattribute`, which runs `method` with the same settings.

    Args:
        model: the explained model.
        scorer: the engine's `Scorer` at the explained input (targets resolved).
        attributions: raw attributions, shaped like the input, without its channel axis,
            or with one channel.
        method: the attribution method, or None when attributions were given as an array.
        attribute_options: `output`, `input`, `layer` and `batch_size` for `reattribute`.
        feeds: every model input, in the model's order (the others are held fixed).
    """

    model: keras.Model
    scorer: Scorer
    attributions: np.ndarray
    method: AttributionMethod | None
    attribute_options: dict[str, Any]
    feeds: list[np.ndarray]
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    @property
    def x(self) -> np.ndarray:
        """The explained input as float32 (the engine's own copy; metrics perturb copies)."""
        return self.scorer.value

    @property
    def targets(self) -> np.ndarray:
        """The class each attribution explains, per sample."""
        return self.scorer.targets

    @property
    def relevance(self) -> np.ndarray:
        """One signed value per position, `(N, *positions)`: the channel sum."""
        return self.cached("relevance", lambda: _plumbing.relevance(self.attributions, self.x))

    def cached(self, key: Any, compute: Callable[[], Any]) -> Any:
        """`compute()` once per key, for work several metrics share (the clean scores)."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def probability(self, values: np.ndarray, repeat: int = 1, first: int = 0) -> np.ndarray:
        """What the model outputs for the target class (softmax, sigmoid, ...) on each row."""
        logits = self.scorer.outputs(values, repeat, first)
        probabilities = np.asarray(self.scorer.graph.to_probability(logits))
        owners = first + np.arange(len(logits)) // repeat
        return probabilities[np.arange(len(logits)), self.targets[owners]]

    def expanded(
        self, build: Callable[[slice], np.ndarray], rows: int, score: Callable | None = None
    ) -> np.ndarray:
        """`(N, rows)` scores of `rows` perturbed copies per sample, built group by group.

        Args:
            build: maps a slice of samples to their copies, `(n * rows, *input)`.
            rows: copies per sample.
            score: `probability` (the default) or `scorer.score` (the target logit).
        """
        score = score or self.probability
        out = np.empty((self.scorer.samples, rows), np.float32)
        for group in self.scorer.groups(rows):
            out[group] = score(build(group), rows, group.start).reshape(-1, rows)
        return out

    def clean_logit(self) -> np.ndarray:
        """The target logit of the unperturbed samples."""
        return self.scorer.logits[np.arange(self.scorer.samples), self.targets]

    def clean_probability(self) -> np.ndarray:
        """The target probability of the unperturbed samples (from the scorer's clean
        pass: no pass of its own)."""
        return self.scorer.probabilities[np.arange(self.scorer.samples), self.targets]

    def masked_probability(self) -> np.ndarray:
        """The target probability of each sample times its map scaled to [0, 1]: the
        explanation as a mask (Chattopadhay et al., 2018)."""
        mask = _plumbing.unit_mask(self.relevance)
        return self.cached("masked", lambda: self.probability(_plumbing.masked(self.x, mask)))

    def reattribute(
        self,
        values: np.ndarray | None = None,
        targets: np.ndarray | None = None,
        weights: Weights | None = None,
        repeat: int = 1,
    ) -> np.ndarray:
        """Fresh position maps `(rows, *positions)` by the same method and settings.

        Args:
            values: rows of the explained input (default: the samples themselves).
            targets: the class per row (default: each sample's own target).
            weights: other values for the model's weights (randomised ones).
            repeat: rows per sample in `values`; the other inputs are repeated to match.
        """
        if self.method is None:
            raise KeraslensError(
                "This metric computes fresh attributions; pass a method name to evaluate() "
                "instead of an array of attributions."
            )
        index = self.scorer.graph.explained
        values = self.feeds[index] if values is None else values
        owners = np.arange(len(values)) // repeat
        targets = self.targets[owners] if targets is None else targets
        feeds = [f[owners] for f in self.feeds]
        feeds[index] = values
        options = {**self.attribute_options, "input": index, "weights": weights}
        fresh = run_method(self.model, feeds, self.method, targets, options)
        return _plumbing.relevance(fresh, values)


def run_method(
    model: keras.Model,
    feeds: list[np.ndarray],
    method: AttributionMethod,
    targets: np.ndarray,
    options: dict[str, Any],
) -> np.ndarray:
    """`keraslens.attribute` of the explained input (`options["input"]`) given every feed."""
    from keraslens.attr.api import attribute

    inputs = feeds[0] if len(feeds) == 1 else feeds
    return attribute(model, inputs, method, targets, **options)


@dataclass(frozen=True)
class Score:
    """A metric's value per sample, and anything more it measured (curves, parts).

    Args:
        per_sample: one value per sample (NaN where undefined, e.g. a flat map).
        extra: JSON-ready details (a curve, the two orders of ROAD, ...).
    """

    per_sample: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)


class Metric(ABC):
    """An explanation metric: validated options, then `score(explained)`.

    A new metric is one module with a subclass, plus a line in `keraslens.metrics.METRICS`.
    Subclasses declare `name`, `title`, `citation`, `better` ("higher" or "lower") and
    their `options`; values are set as attributes of the same name, before any work.

    Args:
        **options: values for the declared `options`; the rest keep their defaults.

    Raises:
        KeraslensError: for an unknown option or a value out of range.

    Example:

    ```python
    class PeakShare(Metric):
        name, title, better = "peak-share", "Share of the largest position", "higher"
        citation = "none"

        def score(self, explained):
            values = np.abs(explained.relevance.reshape(len(explained.x), -1))
            return Score(values.max(axis=1) / values.sum(axis=1))

    keraslens.metrics.METRICS["peak-share"] = PeakShare
    keraslens.evaluate(model, x, "saliency", ["peak-share"])
    ```
    """

    name: ClassVar[str]
    title: ClassVar[str]
    citation: ClassVar[str]
    better: ClassVar[str]
    options: ClassVar[Mapping[str, Option]] = {}
    needs_method: ClassVar[bool] = False
    """True when the definition needs fresh attributions (a method, not an array)."""
    perturbs: ClassVar[bool] = True
    """True when the metric feeds perturbed inputs to the model (continuous inputs only)."""
    needs_positions: ClassVar[bool] = False
    """True when the metric needs neighbouring positions (images, sequences; not tables)."""

    def __init__(self, **options: Any) -> None:
        apply_options(self, f"Metric {self.name!r}", self.options, options)

    @abstractmethod
    def score(self, explained: Explained) -> Score:
        """The metric's value for each sample of `explained`."""
