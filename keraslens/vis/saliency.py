"""Gradient maps on the input, via tf-keras-vis: vanilla saliency and SmoothGrad."""

from __future__ import annotations

import numpy as np
from tf_keras_vis.saliency import Saliency as _Saliency

from keraslens.errors import KeraslensError
from keraslens.vis.compat import ExplanationGraph
from keraslens.vis.method import Method
from keraslens.vis.seeding import numpy_seed
from keraslens.vis.targets import TargetScore


class Saliency(Method):
    """Vanilla saliency (Simonyan et al., 2014): |d score / d input|, max over channels.

    Works on any differentiable model, including ones without a spatial layer. The map has
    the input's shape without its channel axis (a flat input keeps all its features).
    """

    name = "saliency"
    title = "Saliency"
    uses_layer = False
    samples = 0
    noise = 0.0

    def __init__(self, graph: ExplanationGraph) -> None:
        super().__init__(graph)
        self._visualize = _Saliency(self.score_model, clone=False)
        self._keepdims = len(self.score_model.inputs[0].shape) == 2

    def _maps(self, score: TargetScore, x: np.ndarray) -> np.ndarray:
        return self._visualize(
            score,
            x,
            smooth_samples=self.samples,
            smooth_noise=self.noise,
            keepdims=self._keepdims,
        )


class SmoothGrad(Saliency):
    """SmoothGrad (Smilkov et al., 2017): saliency averaged over noisy copies of the input.

    Args:
        graph: the model's `ExplanationGraph`.
        samples: noisy copies per input.
        noise: noise standard deviation, as a fraction of each input's value range.
        seed: seed of the noise.
    """

    name = "smoothgrad"
    title = "SmoothGrad"
    alters_inputs = True

    def __init__(
        self, graph: ExplanationGraph, samples: int = 20, noise: float = 0.2, seed: int = 0
    ) -> None:
        if samples < 1 or noise <= 0:
            raise KeraslensError(
                f"SmoothGrad needs samples >= 1 and noise > 0; got samples={samples}, "
                f"noise={noise}."
            )
        super().__init__(graph)
        self.samples, self.noise, self.seed = samples, noise, seed

    def _maps(self, score: TargetScore, x: np.ndarray) -> np.ndarray:
        with numpy_seed(self.seed):
            return super()._maps(score, x)
