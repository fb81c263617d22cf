"""Integrated gradients (Sundararajan, Taly & Yan, 2017)."""

from __future__ import annotations

import numpy as np

from keraslens.attr.method import AttributionMethod
from keraslens.attr.scorer import Scorer
from keraslens.errors import KeraslensError
from keraslens.plugin import Option


class IntegratedGradients(AttributionMethod):
    """(x - x') * the path integral of the gradient from a baseline x' to x.

    The integral is the trapezoid rule over `steps` equal intervals (`steps + 1` gradient
    evaluations), so the attributions sum to score(x) - score(x') up to the rule's error
    (the completeness axiom). The baseline is a number (every value) or an array shaped
    like one sample or like the batch; for token inputs it lives in embedding space (0.0:
    the all-zero embedding).
    """

    reads_gradients = True
    name = "integrated-gradients"
    title = "Integrated gradients"
    citation = "Sundararajan, Taly & Yan (2017), Axiomatic Attribution for Deep Networks."
    options = {
        "steps": Option(int, 50, "Trapezoid intervals along the path.", min=1, max=4096),
        "baseline": Option(object, 0.0, "The reference input: a number or an array."),
    }

    def attribute(self, scorer: Scorer) -> np.ndarray:
        x = scorer.value
        delta = x - self._baseline(x)
        alphas = np.linspace(0.0, 1.0, self.steps + 1, dtype=np.float32)
        weights = np.full(self.steps + 1, 1.0 / self.steps, dtype=np.float32)
        weights[[0, -1]] /= 2
        alphas_b = alphas.reshape((1, -1) + (1,) * (x.ndim - 1))
        out = np.empty_like(x)
        for group in scorer.groups(len(alphas)):
            path = x[group, None] - (1.0 - alphas_b) * delta[group, None]
            grads = scorer.gradient(path.reshape(-1, *x.shape[1:]), len(alphas), group.start)
            grads = grads.reshape(-1, len(alphas), *x.shape[1:])
            out[group] = delta[group] * np.tensordot(weights, grads, ([0], [1]))
        return out

    def _baseline(self, x: np.ndarray) -> np.ndarray:
        value = np.asarray(self.baseline, dtype=np.float32)
        if value.ndim == 0 or value.shape == x.shape[1:]:
            return np.broadcast_to(value, x.shape).astype(np.float32)
        if value.shape == x.shape:
            return value
        raise KeraslensError(
            f"Integrated gradients: baseline must be a number, one sample of shape "
            f"{x.shape[1:]} or the batch's shape {x.shape}; got shape {value.shape}."
        )
