"""Is a heatmap worth trusting? The model-parameter randomisation test on its maps.

The other explanation metrics (deletion, insertion, MuFidelity, ...) are in
`keraslens.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from scipy.stats import spearmanr

from keraslens.attr.method import AttributionMethod
from keraslens.attr.weights import Weights, permuted_weights
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
    randomized: Weights | None = None,
    **options: Any,
) -> RandomizationTest:
    """Model-parameter randomisation test (Adebayo et al., 2018, "Sanity Checks for
    Saliency Maps"): maps that do not change when the weights are randomised explain the
    input, not the model.

    The randomised model is the model run with every trainable tensor's entries permuted
    (`permuted_weights`): the same compiled functions, given other weights, so it costs no
    copy and no trace, and the model is not changed.

    Args: as `keraslens.vis.explain`, plus `weights_seed` for the randomisation and
    `randomized`, weights from `permuted_weights` to reuse across methods.
    """
    common = {"output": output, "input": input, "batch_size": batch_size, **options}
    trained = explain(model, x, method, targets, layer, **common)
    if randomized is None:
        randomized = permuted_weights(model, weights_seed)
    other = explain(model, x, method, trained.targets, trained.layer, weights=randomized, **common)
    correlation = rank_correlation(trained.maps, other.maps)
    # The randomised map went flat while the trained one was not: nothing of it survived.
    correlation[_is_flat(other.maps) & ~_is_flat(trained.maps)] = 0.0
    return RandomizationTest(trained, other, correlation)


def _is_flat(maps: np.ndarray) -> np.ndarray:
    return np.ptp(maps.reshape(len(maps), -1), axis=1) == 0
