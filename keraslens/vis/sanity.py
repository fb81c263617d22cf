"""Is a heatmap worth trusting? The randomisation test and deletion / insertion AUC."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.stats import spearmanr

from keraslens.attr.compat import build_graph, input_shape_of
from keraslens.attr.graph import InputSpec, functional_model
from keraslens.attr.inputs import model_inputs
from keraslens.attr.method import AttributionMethod
from keraslens.attr.targets import as_targets
from keraslens.errors import KeraslensError
from keraslens.vis.heatmap import Explanation, explain

SIMILARITY_THRESHOLD = 0.5
"""Mean rank correlation above which maps are deemed unaffected by the weights."""


@dataclass(frozen=True)
class RandomizationTest:
    """Maps of the trained model and of a weight-randomised copy, and how alike they are.

    Args:
        trained: the trained model's explanation.
        randomized: the randomised copy's maps, for the same target classes.
        correlation: Spearman rank correlation of the two maps, per sample; NaN where the
            trained map is flat (it ranks nothing, so there is nothing to compare), 0 where
            only the randomised one is.
    """

    trained: Explanation
    randomized: Explanation
    correlation: np.ndarray

    @property
    def nonfinite(self) -> int:
        """Samples whose trained or randomised map holds NaN or inf (e.g. an overflow)."""
        bad = ~np.isfinite(self.trained.maps) | ~np.isfinite(self.randomized.maps)
        return int(bad.reshape(len(bad), -1).any(axis=1).sum())

    @property
    def informative(self) -> bool:
        """False when every trained map is flat (e.g. Grad-CAM's ReLU removed it all)."""
        return bool(np.isfinite(self.correlation).any())

    @property
    def mean_correlation(self) -> float:
        """Mean correlation over the samples with a non-flat map (NaN if there is none)."""
        return float(np.nanmean(self.correlation)) if self.informative else float("nan")

    def passes(self, threshold: float = SIMILARITY_THRESHOLD) -> bool:
        """True when the maps change with the weights: they depend on what was learned.

        Flat maps pass nothing: they explain neither the model nor the input; maps that are
        not finite pass nothing either.
        """
        return self.nonfinite == 0 and self.informative and self.mean_correlation < threshold


def rank_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation between `a[i]` and `b[i]`, per sample; NaN for a flat map."""
    flat_a, flat_b = (np.asarray(m, dtype=np.float64).reshape(len(m), -1) for m in (a, b))
    values = [
        spearmanr(u, v).statistic
        if np.isfinite(u).all() and np.isfinite(v).all() and np.ptp(u) > 0 and np.ptp(v) > 0
        else np.nan
        for u, v in zip(flat_a, flat_b, strict=True)
    ]
    return np.asarray(values)


def randomized_copy(model: keras.Model, specs: Sequence[InputSpec], seed: int = 0) -> keras.Model:
    """A copy of `model` whose trainable weights are randomly permuted.

    Permuting the entries of each weight tensor keeps its distribution (scale, sign) and
    destroys what training put in it: the "full randomisation" of Adebayo et al. (2018),
    deterministic for a seed. Layer names, and so layer paths, are kept.
    """
    view = functional_model(model, specs)
    try:
        copy = keras.models.clone_model(view)
    except Exception as error:  # Keras raises several types for layers it cannot rebuild
        raise KeraslensError(
            f"Cannot copy model {model.name!r} to randomise it ({error}); give its custom "
            "layers a get_config() so that keras.models.clone_model can rebuild them."
        ) from error
    rng = np.random.default_rng(seed)
    weights = []
    for variable in view.weights:
        value = np.asarray(variable)
        if variable.trainable and value.size > 1:
            value = rng.permutation(value.ravel()).reshape(value.shape)
        weights.append(value)
    copy.set_weights(weights)
    return copy


def randomization_test(
    model: keras.Model,
    x: Any,
    method: str | AttributionMethod = "gradcam",
    targets: Any = None,
    layer: str | None = None,
    *,
    output: int | str | None = None,
    input: int | str | None = None,  # noqa: A002 - the name keraslens.attribute takes
    weights_seed: int = 0,
    batch_size: int | None = None,
    **options: Any,
) -> RandomizationTest:
    """Model-parameter randomisation test (Adebayo et al., 2018, "Sanity Checks for
    Saliency Maps"): maps that do not change when the weights are randomised explain the
    input, not the model.

    Args: as `keraslens.vis.explain`, plus `weights_seed` for the randomisation.
    """
    common = {"output": output, "input": input, "batch_size": batch_size, **options}
    trained = explain(model, x, method, targets, layer, **common)
    specs, _ = model_inputs(model, x)
    copy = randomized_copy(model, specs, weights_seed)
    randomized = explain(copy, x, method, trained.targets, trained.layer, **common)
    correlation = rank_correlation(trained.maps, randomized.maps)
    # The randomised map went flat while the trained one was not: nothing of it survived.
    correlation[_is_flat(randomized.maps) & ~_is_flat(trained.maps)] = 0.0
    return RandomizationTest(trained, randomized, correlation)


def _is_flat(maps: np.ndarray) -> np.ndarray:
    return np.ptp(maps.reshape(len(maps), -1), axis=1) == 0


@dataclass(frozen=True)
class Faithfulness:
    """Deletion and insertion AUC per sample (Petsiuk et al., 2018, RISE).

    Args:
        deletion: area under the target probability as the most salient pixels are removed
            first; lower is better.
        insertion: area under it as they are inserted first into a blurred image; higher
            is better.
    """

    deletion: np.ndarray
    insertion: np.ndarray


def deletion_insertion(
    model: keras.Model,
    x: np.ndarray,
    maps: np.ndarray,
    targets: Any,
    *,
    output: int | str | None = None,
    steps: int = 16,
    batch_size: int = 64,
) -> Faithfulness:
    """Deletion / insertion AUC of `maps` for the `targets` classes.

    Removed pixels become 0 (black, as in the paper); insertion starts from the input
    blurred by a Gaussian of sigma = size / 32 (a flat input starts from zeros). The model
    takes `(steps + 1) * 2` inputs per sample.
    """
    x = np.asarray(x, dtype=np.float32)
    maps = np.asarray(maps)
    if maps.shape != x.shape[: maps.ndim]:
        raise KeraslensError(
            f"maps of shape {maps.shape} do not match inputs of shape {x.shape}; pass the "
            "maps heatmap() returned for these inputs."
        )
    graph = build_graph(model, input_shape_of(model, x), output)
    score_model = graph.score_model()
    targets = as_targets(targets, len(x), graph.logits.shape[-1])
    curves = []
    # Deletion paints zeros over x, most salient positions first; insertion paints x over
    # its blurred copy in the same order.
    for source, canvas in ((np.zeros_like(x), x), (x, _blurred(x))):
        painted = _paint(source, canvas, maps, steps).reshape(-1, *x.shape[1:])
        logits = np.concatenate(
            [score_model([painted[i : i + batch_size]]) for i in range(0, len(painted), batch_size)]
        )
        probabilities = np.asarray(graph.to_probability(logits)).reshape(len(x), steps + 1, -1)
        curves.append(probabilities[np.arange(len(x)), :, targets])
    deletion, insertion = (_auc(curve) for curve in curves)
    return Faithfulness(deletion=deletion, insertion=insertion)


def _paint(source: np.ndarray, canvas: np.ndarray, maps: np.ndarray, steps: int) -> np.ndarray:
    """`(N, steps + 1, ...)`: `canvas` with its k/steps most salient positions from `source`."""
    positions = maps.reshape(len(maps), -1)
    order = np.argsort(-positions, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(positions.shape[1])[None, :], axis=1)
    counts = np.round(np.linspace(0, positions.shape[1], steps + 1)).astype(int)
    painted = rank[:, None, :] < counts[None, :, None]
    painted = painted.reshape(len(maps), steps + 1, *maps.shape[1:])
    painted = painted.reshape(painted.shape + (1,) * (canvas.ndim - maps.ndim))
    return np.where(painted, source[:, None], canvas[:, None])


def _blurred(x: np.ndarray) -> np.ndarray:
    if x.ndim != 4:
        return np.zeros_like(x)
    sigma = max(1.0, max(x.shape[1:3]) / 32)
    return gaussian_filter(x, sigma=(0, sigma, sigma, 0))


def _auc(curve: np.ndarray) -> np.ndarray:
    """Trapezoidal area under curves sampled at equal steps over [0, 1]."""
    steps = curve.shape[1] - 1
    return (curve.sum(axis=1) - (curve[:, 0] + curve[:, -1]) / 2) / steps
