"""The uniform call every attribution method answers: `method.explain(x, targets)`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np

from keraslens.vis.compat import ExplanationGraph
from keraslens.vis.targets import TargetScore


@dataclass(frozen=True)
class Explanation:
    """Maps for a batch, with the classes they explain and what the model predicted.

    Args:
        maps: one map per sample, `(N, H, W)` for images, normalised to [0, 1].
        targets: the class each map explains.
        predicted: the class the model predicts.
        scores: the model's score (its output, e.g. softmax probability) for `predicted`.
    """

    maps: np.ndarray
    targets: np.ndarray
    predicted: np.ndarray
    scores: np.ndarray


class Method(ABC):
    """An attribution method built once for a model and called on batches.

    Subclasses set `name`, `title` and `uses_layer`, and implement `_maps`.

    Args:
        graph: the model's `ExplanationGraph`; methods with `uses_layer` need one built
            with a spatial layer.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    uses_layer: ClassVar[bool]
    alters_inputs: ClassVar[bool] = False
    """True when the method's forward passes see masked or noisy inputs, so the
    prediction needs one clean pass of its own."""
    samples_per_pass: int | None = None
    """A cap on samples per pass for methods whose memory grows with the batch."""

    def __init__(self, graph: ExplanationGraph) -> None:
        self.graph = graph
        self.score_model = graph.score_model()

    def explain(
        self, x: np.ndarray, targets: np.ndarray | None = None, batch_size: int = 32
    ) -> Explanation:
        """Maps for `x`, `batch_size` samples per pass.

        Args:
            x: a batch of inputs.
            targets: one class index per sample, or None for the predicted class.
            batch_size: samples explained together in one forward/backward pass.
        """
        x = np.asarray(x, dtype=np.float32)
        batch_size = min(batch_size, self.samples_per_pass or batch_size)
        parts = [
            self._explain_batch(
                x[start : start + batch_size],
                None if targets is None else targets[start : start + batch_size],
            )
            for start in range(0, len(x), batch_size)
        ]
        return Explanation(
            *(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Explanation))
        )

    def _explain_batch(self, x: np.ndarray, targets: np.ndarray | None) -> Explanation:
        score = TargetScore(targets)
        if self.alters_inputs:
            score.logits = np.asarray(self.score_model([x], training=False))
        maps = np.asarray(self._maps(score, x), dtype=np.float32)
        probabilities = np.asarray(self.graph.to_probability(score.logits))
        predicted = probabilities.argmax(axis=-1)
        return Explanation(
            maps=maps,
            targets=np.asarray(score.targets),
            predicted=predicted,
            scores=np.take_along_axis(probabilities, predicted[:, None], axis=-1)[:, 0],
        )

    @abstractmethod
    def _maps(self, score: TargetScore, x: np.ndarray) -> np.ndarray:
        """The normalised maps of `x` for `score`; `score` must see the forward pass."""
