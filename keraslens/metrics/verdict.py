"""One line per method from its `evaluate()` results, and the method to trust most."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

SIMILARITY_LIMIT = 0.5
"""Mean rank correlation with a randomised model or another class at or above which maps
explain the input rather than the model: they fail randomisation."""
MUFIDELITY_FLOOR = 0.1
"""MuFidelity below which relevance barely predicts what removing features does."""
VERDICTS = ("trust", "weak on faithfulness", "fails randomisation", "not assessed")


def verdict(results: Mapping[str, Mapping[str, Any]]) -> str:
    """The one-line verdict on one method's `evaluate()` results.

    The rule, in order:

    1. "fails randomisation" when `randomisation` or `random-logit` has a mean similarity
       of `SIMILARITY_LIMIT` (0.5) or more: the map barely changes when the weights or the
       class change (Adebayo et al., 2018; Sixt et al., 2020).
    2. "weak on faithfulness" when `mufidelity` is below `MUFIDELITY_FLOOR` (0.1), the
       `insertion` AUC is not above the `deletion` AUC, or `road` (LeRF - MoRF) is not
       above 0: the map's ranking does not predict what the model does when it is followed.
    3. "trust" when at least one of these metrics was measured and none of the above holds;
       "not assessed" otherwise.

    Args:
        results: what `keraslens.evaluate` returned for the method.

    Example:

    ```python
    verdict(keraslens.evaluate(model, x, "gradcam"))  # "trust"
    ```
    """
    mean = {name: entry["mean"] for name, entry in results.items() if _finite(entry["mean"])}
    if any(mean.get(name, 0.0) >= SIMILARITY_LIMIT for name in ("randomisation", "random-logit")):
        return VERDICTS[2]
    weak = (
        mean.get("mufidelity", 1.0) < MUFIDELITY_FLOOR
        or ("insertion" in mean and "deletion" in mean and mean["insertion"] <= mean["deletion"])
        or mean.get("road", 1.0) <= 0.0
    )
    if weak:
        return VERDICTS[1]
    measured = {"randomisation", "random-logit", "mufidelity", "road"} & set(mean)
    if measured or {"insertion", "deletion"} <= set(mean):
        return VERDICTS[0]
    return VERDICTS[3]


def faithfulness(results: Mapping[str, Mapping[str, Any]]) -> float:
    """One faithfulness number to rank methods by: MuFidelity's mean, else ROAD's, else
    insertion minus deletion AUC; NaN when none was measured."""
    for name in ("mufidelity", "road"):
        if name in results and _finite(results[name]["mean"]):
            return float(results[name]["mean"])
    if "insertion" in results and "deletion" in results:
        return float(results["insertion"]["mean"] - results["deletion"]["mean"])
    return math.nan


def best_method(by_method: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str | None:
    """The method to trust most: the best verdict ("trust", then "weak on faithfulness",
    then the rest), ties broken by the higher `faithfulness`, then by name.

    Args:
        by_method: `evaluate()` results keyed by method name.

    Example:

    ```python
    best_method({m: keraslens.evaluate(model, x, m) for m in ("gradcam", "saliency")})
    ```
    """

    def key(method: str) -> tuple:
        score = faithfulness(by_method[method])
        return (
            VERDICTS.index(verdict(by_method[method])),
            -score if _finite(score) else math.inf,
            method,
        )

    return min(by_method, key=key) if by_method else None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
