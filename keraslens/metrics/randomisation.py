"""Model-parameter randomisation, cascading and independent (Adebayo et al., 2018)."""

from __future__ import annotations

import keras
import numpy as np

from keraslens.attr.weights import Weights, permuted_weights
from keraslens.errors import KeraslensError
from keraslens.metrics import _plumbing
from keraslens.metrics.metric import Explained, Metric, Score
from keraslens.plugin import Option


class Randomisation(Metric):
    """Rank correlation between the maps of the model and of the model with randomised
    weights; a map that survives the randomisation explains the input, not the model.
    Lower is better.

    Cascading: the layers with weights are randomised one more at a time, from the output
    down; `cascading` holds the curve (mean and 95% interval per stage, `layers` in that
    order). Independent: each layer alone (`independent`). The value per sample is the
    similarity once every layer is randomised. Randomising a layer permutes the entries of
    each of its trainable tensors (scale and sign kept, what training put there lost), with
    a fixed seed. Each stage's weights are passed to the model's compiled attribution
    function, traced once; the model is neither copied nor changed.
    Two flat maps count as identical: a map that ranks nothing (Grad-CAM's ReLU can remove
    it all) fails; `flat_maps` says how many trained maps were flat.
    """

    name = "randomisation"
    title = "Randomisation similarity"
    citation = "Adebayo et al. (2018), Sanity Checks for Saliency Maps."
    better = "lower"
    needs_method = True
    perturbs = False
    options = {
        "independent": Option(bool, True, "Also randomise each layer alone."),
        "seed": Option(int, 0, "Seed of the permutations.", min=0),
    }

    def score(self, explained: Explained) -> Score:
        model = explained.model
        layers = weighted_layers(model)
        if not layers:
            raise KeraslensError(f"Model {model.name!r} has no trainable weights to randomise.")
        shuffled = permuted_weights(model, self.seed)
        names = list(reversed(layers))
        stages = [names[: k + 1] for k in range(len(names))]
        cascading = self._similarities(explained, model, shuffled, layers, stages)
        extra = {
            "layers": names,
            "cascading": _curve(cascading),
            "flat_maps": _plumbing.flat_maps(explained.relevance),
        }
        if self.independent:
            alone = [[name] for name in names]
            extra["independent"] = _curve(
                self._similarities(explained, model, shuffled, layers, alone)
            )
        return Score(cascading[:, -1], extra)

    @staticmethod
    def _similarities(explained, model, shuffled, layers, stages) -> np.ndarray:
        """`(N, stages)`: similarity of the trained maps to those with each stage randomised."""
        columns = []
        for stage in stages:
            chosen = [model.weights[i] for name in stage for i in layers[name]]
            weights = Weights((v, shuffled.value(v)) for v in chosen)
            fresh = explained.reattribute(weights=weights)
            columns.append(_plumbing.similarity(explained.relevance, fresh))
        return np.stack(columns, axis=1)


def weighted_layers(model: keras.Model) -> dict[str, list[int]]:
    """Indices into `model.weights` of each layer's trainable tensors (more than one
    value), keyed by the layer's path, in the model's order (input side first)."""
    layers: dict[str, list[int]] = {}
    for index, variable in enumerate(model.weights):
        if variable.trainable and int(np.prod(variable.shape)) > 1:
            path = variable.path.rsplit("/", 1)[0].removeprefix(f"{model.name}/")
            layers.setdefault(path, []).append(index)
    return layers


def _curve(similarities: np.ndarray) -> dict[str, list[float]]:
    parts = [_plumbing.summary(column) for column in similarities.T]
    return {key: [part[key] for part in parts] for key in ("mean", "low", "high")}
