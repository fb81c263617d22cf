"""Noise-averaged gradients: SmoothGrad, SquareGrad and VarGrad.

SmoothGrad is the mean of the gradient over noisy copies of the input (Smilkov et al.,
2017); SquareGrad the mean of its square and VarGrad its variance (Hooker et al., 2019;
Adebayo et al., 2018). They share one sampler and differ in the statistic taken.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from keraslens.attr.method import AttributionMethod
from keraslens.attr.scorer import Scorer
from keraslens.plugin import Option


class SmoothGrad(AttributionMethod):
    """The mean gradient over `samples` copies of x + N(0, (noise * (max x - min x))^2)."""

    reads_gradients = True
    name = "smoothgrad"
    title = "SmoothGrad"
    citation = "Smilkov et al. (2017), SmoothGrad: removing noise by adding noise."
    magnitude = True
    options = {
        "samples": Option(int, 20, "Noisy copies per input.", min=1, max=4096),
        "noise": Option(float, 0.2, "Noise std as a fraction of each input's range.", min=0.0),
        "seed": Option(int, 0, "Seed of the noise.", min=0),
    }
    statistic: ClassVar[str] = "mean"

    def attribute(self, scorer: Scorer) -> np.ndarray:
        x = scorer.value
        flat = x.reshape(len(x), -1)
        sigma = (self.noise * (flat.max(axis=1) - flat.min(axis=1))).astype(np.float32)
        sigma = sigma.reshape((-1, 1, *([1] * (x.ndim - 1))))
        rng = np.random.default_rng(self.seed)
        out = np.empty_like(x)
        for group in scorer.groups(self.samples):
            noise = rng.standard_normal((len(x[group]), self.samples, *x.shape[1:]), np.float32)
            noisy = (x[group, None] + sigma[group] * noise).reshape(-1, *x.shape[1:])
            grads = scorer.gradient(noisy, self.samples, group.start)
            out[group] = self._reduce(grads.reshape(-1, self.samples, *x.shape[1:]))
        return out

    def _reduce(self, grads: np.ndarray) -> np.ndarray:
        return grads.mean(axis=1)


class SquareGrad(SmoothGrad):
    """The mean squared gradient over noisy copies (Hooker et al., 2019)."""

    name = "squaregrad"
    title = "SquareGrad"
    citation = "Hooker et al. (2019), A Benchmark for Interpretability Methods in DNNs."
    magnitude = True

    def _reduce(self, grads: np.ndarray) -> np.ndarray:
        return np.square(grads).mean(axis=1)


class VarGrad(SmoothGrad):
    """The variance of the gradient over noisy copies (Adebayo et al., 2018)."""

    name = "vargrad"
    title = "VarGrad"
    citation = "Adebayo et al. (2018), Local Explanation Methods for DNNs Lack Sensitivity."
    magnitude = True

    def _reduce(self, grads: np.ndarray) -> np.ndarray:
        return grads.var(axis=1)
