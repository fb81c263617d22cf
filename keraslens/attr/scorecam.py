"""Score-CAM and Faster Score-CAM: activation maps weighted by the score of the masked input.

Computed on the engine rather than through tf-keras-vis, whose Score-CAM predicts every
masked copy eagerly through `model.predict` with one more trace per batch shape; the
steps are tf-keras-vis's (masks resized with `zoom(order=1, mode="nearest")`, min-max
normalised per channel), so the maps agree.
"""

from __future__ import annotations

import numpy as np

from keraslens.attr.gradcam import GradCAM, upsample
from keraslens.attr.scorer import Scorer
from keraslens.plugin import Option


class ScoreCAM(GradCAM):
    """ReLU(sum_k p_k A_k), p_k the target probability of x masked by A_k (Wang et al., 2020).

    Gradient-free: one forward pass per channel and sample.
    """

    reads_gradients = False
    name = "scorecam"
    title = "Score-CAM"
    citation = "Wang et al. (2020), Score-CAM: Score-Weighted Visual Explanations for CNNs."
    options = {"mask_batch_size": Option(int, 0, "Masked inputs per pass; 0: automatic.", min=0)}

    def attribute(self, scorer: Scorer) -> np.ndarray:
        activation = scorer.value
        self._require_positions(activation)
        chosen = self._chosen_channels(activation)
        inputs = scorer.at_input(self.mask_batch_size or None)
        x = inputs.value
        weights = np.zeros((len(x), chosen.shape[1]), np.float32)
        for group in inputs.groups(chosen.shape[1]):
            picked = _channels(activation[group], chosen[group])
            masks = _normalised(upsample(picked, x.shape[1:], mode="nearest"))
            masked = x[group, ..., None] * masks[..., None, :]  # (n, *positions, c, k)
            masked = np.moveaxis(masked, -1, 1).reshape(-1, *x.shape[1:])
            probabilities = inputs.probability(masked, chosen.shape[1], group.start)
            weights[group] = probabilities.reshape(-1, chosen.shape[1])
        weights = weights.reshape(len(x), *([1] * (activation.ndim - 2)), -1)
        cam = np.maximum((_channels(activation, chosen) * weights).sum(axis=-1), 0.0)
        return upsample(cam, scorer.input_shape)

    def _chosen_channels(self, activation: np.ndarray) -> np.ndarray:
        """`(N, k)` channel indices per sample: all of them here."""
        return np.tile(np.arange(activation.shape[-1]), (len(activation), 1))


class FasterScoreCAM(ScoreCAM):
    """Score-CAM over each sample's `max_channels` channels of largest spatial std.

    The shortcut of tabayashi0117's Faster Score-CAM, as tf-keras-vis's `max_N` does it.
    """

    name = "faster-scorecam"
    title = "Faster Score-CAM"
    citation = "Wang et al. (2020); channel selection by tabayashi0117 (Faster Score-CAM)."
    options = {
        **ScoreCAM.options,
        "max_channels": Option(int, 10, "Channels kept per sample, by activation std.", min=1),
    }

    def _chosen_channels(self, activation: np.ndarray) -> np.ndarray:
        count = min(self.max_channels, activation.shape[-1])
        spread = activation.reshape(len(activation), -1, activation.shape[-1]).std(axis=1)
        return np.argsort(-spread, axis=1, kind="stable")[:, :count]


def _channels(activation: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """`activation[i, ..., chosen[i]]`: each sample's chosen channels, in order."""
    index = chosen.reshape(len(chosen), *([1] * (activation.ndim - 2)), -1)
    return np.take_along_axis(activation, index, axis=-1)


def _normalised(masks: np.ndarray) -> np.ndarray:
    positions = tuple(range(1, masks.ndim - 1))
    low = masks.min(axis=positions, keepdims=True)
    high = masks.max(axis=positions, keepdims=True)
    return (masks - low) / (high - low + 1e-7)
