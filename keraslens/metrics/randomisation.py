"""Model-parameter randomisation, cascading and independent (Adebayo et al., 2018)."""

from __future__ import annotations

import keras
import numpy as np

from keraslens.attr.graph import functional_model
from keraslens.errors import KeraslensError
from keraslens.metrics import _plumbing
from keraslens.metrics.metric import Explained, Metric, Score
from keraslens.plugin import Option


class Randomisation(Metric):
    """Rank correlation between the maps of the model and of copies with randomised
    weights; a map that survives the randomisation explains the input, not the model.
    Lower is better.

    Cascading: the layers with weights are randomised one more at a time, from the output
    down; `cascading` holds the curve (mean and 95% interval per stage, `layers` in that
    order). Independent: each layer alone (`independent`). The value per sample is the
    similarity once every layer is randomised. Randomising a layer permutes the entries of
    each of its trainable tensors (scale and sign kept, what training put there lost), with
    a fixed seed. One copy of the model is made and its weights are set stage by stage, so
    its compiled attribution function is traced once, and reads each stage's weights.
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
        copy = _copy(explained.model, explained.scorer.graph.specs)
        trained = copy.get_weights()
        layers = weighted_layers(copy)
        if not layers:
            raise KeraslensError(
                f"Model {explained.model.name!r} has no trainable weights to randomise."
            )
        rng = np.random.default_rng(self.seed)
        shuffled = [rng.permutation(w.ravel()).reshape(w.shape) for w in trained]
        names = list(reversed(layers))
        stages = [names[: k + 1] for k in range(len(names))]
        cascading = self._similarities(explained, copy, trained, shuffled, layers, stages)
        extra = {
            "layers": names,
            "cascading": _curve(cascading),
            "flat_maps": _plumbing.flat_maps(explained.relevance),
        }
        if self.independent:
            alone = [[name] for name in names]
            extra["independent"] = _curve(
                self._similarities(explained, copy, trained, shuffled, layers, alone)
            )
        return Score(cascading[:, -1], extra)

    @staticmethod
    def _similarities(explained, copy, trained, shuffled, layers, stages) -> np.ndarray:
        """`(N, stages)`: similarity of the trained maps to those with each stage randomised."""
        columns = []
        for stage in stages:
            chosen = {i for name in stage for i in layers[name]}
            copy.set_weights([shuffled[i] if i in chosen else w for i, w in enumerate(trained)])
            fresh = explained.reattribute(model=copy)
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


def _copy(model: keras.Model, specs) -> keras.Model:
    """A copy of `model` with its weights; a subclassed model is copied through its
    Functional trace (its inner layers), which `clone_model` rebuilds without a config."""
    source = model
    try:
        copy = keras.models.clone_model(model)
    except Exception:  # Keras raises several types for models it cannot rebuild
        source = functional_model(model, specs)
        try:
            copy = keras.models.clone_model(source)
        except Exception as error:
            raise KeraslensError(
                f"Cannot copy model {model.name!r} to randomise it ({error}); give its "
                "custom layers a get_config() so that keras.models.clone_model can rebuild "
                "them."
            ) from error
    copy.set_weights(source.get_weights())
    return copy


def _curve(similarities: np.ndarray) -> dict[str, list[float]]:
    parts = [_plumbing.summary(column) for column in similarities.T]
    return {key: [part[key] for part in parts] for key in ("mean", "low", "high")}
