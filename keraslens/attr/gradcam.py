"""Class activation maps from gradients: Grad-CAM, Grad-CAM++ and Layer-CAM.

They are computed here, on the engine's compiled gradient at the layer (the `Scorer` takes
the layer's output as its value), rather than through tf-keras-vis: its CAMs run eagerly,
one model per call, on single-input models only. The maps agree with tf-keras-vis's at the
layer's resolution (tested), and are upsampled bilinearly to the input's positions.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import zoom

from keraslens.attr.method import AttributionMethod
from keraslens.attr.scorer import Scorer
from keraslens.errors import KeraslensError


class GradCAM(AttributionMethod):
    """ReLU(sum_k w_k A_k), w_k the mean gradient of channel k (Selvaraju et al., 2017)."""

    reads_gradients = True
    name = "gradcam"
    title = "Grad-CAM"
    citation = "Selvaraju et al. (2017), Grad-CAM: Visual Explanations from Deep Networks."
    uses_layer = True

    def attribute(self, scorer: Scorer) -> np.ndarray:
        activation = scorer.value
        self._require_positions(activation)
        grads = scorer.gradient(activation)
        cam = np.maximum(self._combine(activation, grads, scorer), 0.0)
        return upsample(cam, scorer.input_shape)

    def _require_positions(self, activation: np.ndarray) -> None:
        if activation.ndim not in (3, 4):
            raise KeraslensError(
                f"{self.title} needs a layer with positions and channels, (batch, steps, "
                f"channels) or (batch, height, width, channels); the layer gives "
                f"{activation.shape[1:]}."
            )

    def _combine(self, activation: np.ndarray, grads: np.ndarray, scorer: Scorer) -> np.ndarray:
        positions = tuple(range(1, activation.ndim - 1))
        weights = grads.mean(axis=positions, keepdims=True)
        return (weights * activation).sum(axis=-1)


class GradCAMPlusPlus(GradCAM):
    """Grad-CAM with pixel-wise weights from higher-order terms (Chattopadhay et al., 2018).

    The derivatives of exp(score) are exp(score) times powers of the gradient (their eq.
    19). exp(score) cancels in the pixel weights and only scales each map by a positive
    constant, so it is left out: a confident model's logit of 100 would otherwise turn the
    map into inf and NaN. Otherwise as tf-keras-vis computes it, weights normalised over
    positions.
    """

    name = "gradcam++"
    title = "Grad-CAM++"
    citation = "Chattopadhay et al. (2018), Grad-CAM++: Improved Visual Explanations."

    def _combine(self, activation: np.ndarray, grads: np.ndarray, scorer: Scorer) -> np.ndarray:
        positions = tuple(range(1, activation.ndim - 1))
        second, third = grads**2, grads**3
        total = activation.sum(axis=positions, keepdims=True)
        denominator = 2.0 * second + total * third
        alpha = second / np.where(second != 0.0, denominator, 1.0)
        norm = alpha.sum(axis=positions, keepdims=True)
        alpha = alpha / np.where(norm != 0.0, norm, 1.0)
        weights = (alpha * np.maximum(grads, 0.0)).sum(axis=positions, keepdims=True)
        return (weights * activation).sum(axis=-1)


class LayerCAM(GradCAM):
    """ReLU(sum_k ReLU(dY/dA_k) * A_k), position by position (Jiang et al., 2021)."""

    name = "layercam"
    title = "Layer-CAM"
    citation = "Jiang et al. (2021), LayerCAM: Exploring Hierarchical Class Activation Maps."

    def _combine(self, activation: np.ndarray, grads: np.ndarray, scorer: Scorer) -> np.ndarray:
        return (np.maximum(grads, 0.0) * activation).sum(axis=-1)


def upsample(maps: np.ndarray, input_shape: tuple, mode: str = "constant") -> np.ndarray:
    """Linear resize of `(N, h[, w][, k])` maps to the input's positions, with a channel axis.

    `scipy.ndimage.zoom` of order 1, as tf-keras-vis resizes its maps, so both agree.
    Returns `(N, H, W, 1)` for image inputs and `(N, T, 1)` for sequences (a map with `k`
    trailing channels keeps them), so the map broadcasts against the input.
    """
    positions = input_shape[:-1] if len(input_shape) > 1 else input_shape
    maps = maps if maps.ndim == len(positions) + 2 else maps[..., None]
    factors = (1, *(t / f for f, t in zip(maps.shape[1:-1], positions, strict=True)), 1)
    return zoom(maps, factors, order=1, mode=mode).astype(np.float32)
