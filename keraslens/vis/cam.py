"""Class activation maps, via tf-keras-vis: Grad-CAM, Grad-CAM++, Layer-CAM and Score-CAM.

Each takes its map at `graph.target_layer`, an Identity layer keraslens connects to the
model's inputs, so tf-keras-vis never has to find (or fail to reach) the layer itself.
"""

from __future__ import annotations

from typing import ClassVar

import keras
import numpy as np
import tensorflow as tf
from tf_keras_vis.gradcam import Gradcam
from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
from tf_keras_vis.layercam import Layercam
from tf_keras_vis.scorecam import Scorecam

from keraslens.errors import KeraslensError
from keraslens.vis.compat import ExplanationGraph
from keraslens.vis.method import Method
from keraslens.vis.targets import TargetScore

MASKED_INPUTS_IN_MEMORY = 1024
DEFAULT_MAX_CHANNELS = 10


class GradCAM(Method):
    """Grad-CAM (Selvaraju et al., 2017): activations weighted by their mean gradient."""

    name = "gradcam"
    title = "Grad-CAM"
    uses_layer = True
    visualizer: ClassVar[type] = Gradcam

    def __init__(self, graph: ExplanationGraph) -> None:
        super().__init__(graph)
        self._visualize = self.visualizer(self.score_model, clone=False)

    def _maps(self, score: TargetScore, x: np.ndarray) -> np.ndarray:
        return self._visualize(
            score,
            x,
            penultimate_layer=self.graph.target_layer,
            seek_penultimate_conv_layer=False,
        )


class GradCAMPlusPlus(GradCAM):
    """Grad-CAM++ (Chattopadhyay et al., 2018): pixel-wise weighted gradients."""

    name = "gradcam++"
    title = "Grad-CAM++"
    visualizer = GradcamPlusPlus


class LayerCAM(GradCAM):
    """Layer-CAM (Jiang et al., 2021): activations weighted by their positive gradients."""

    name = "layercam"
    title = "Layer-CAM"
    visualizer = Layercam


class _MaskedPassModel(keras.Model):
    """The Functional model Score-CAM calls `predict` on, for every masked input at once.

    That pass also carries the clean batch being explained, so the predicted class and its
    score come from it rather than from a forward pass of their own. It runs one compiled
    function for every batch shape: Keras's `predict` traces once more for each new last
    batch, which with the clean rows added would be on almost every call. No progress bar.
    """

    def explaining(self, x: np.ndarray | None, score: TargetScore | None) -> None:
        """Add `x` to the next `predict` and give its logits to `score` (None: stop)."""
        object.__setattr__(self, "_clean", (x, score) if x is not None else None)

    def predict(self, x, batch_size=None, verbose=0, **kwargs):
        inputs = np.asarray(x[0] if isinstance(x, (list, tuple)) else x, dtype=np.float32)
        clean = getattr(self, "_clean", None)
        if clean is not None:
            inputs = np.concatenate([inputs, clean[0]])
        step = batch_size or 32
        outputs = np.concatenate(
            [self._forward(inputs[i : i + step]).numpy() for i in range(0, len(inputs), step)]
        )
        if clean is None:
            return outputs
        clean[1].logits = outputs[-len(clean[0]) :]
        return outputs[: -len(clean[0])]

    def _forward(self, batch: np.ndarray) -> tf.Tensor:
        forward = self.__dict__.get("_compiled")
        if forward is None:
            spec = tf.TensorSpec([None, *batch.shape[1:]], tf.float32)
            forward = tf.function(lambda x: self(x, training=False), input_signature=[spec])
            object.__setattr__(self, "_compiled", forward)
        return forward(batch)


class ScoreCAM(Method):
    """Score-CAM (Wang et al., 2020): activations weighted by the class probability of the
    input masked by each of them; gradient-free, one forward pass per channel.

    Args:
        graph: the model's `ExplanationGraph`.
        mask_batch_size: masked inputs per forward pass.
    """

    name = "scorecam"
    title = "Score-CAM"
    uses_layer = True
    max_channels: int | None = None

    def __init__(self, graph: ExplanationGraph, mask_batch_size: int = 32) -> None:
        super().__init__(graph)
        if not graph.linear:
            # tf-keras-vis applies softmax to the scores itself, so it needs logits.
            raise KeraslensError(
                "Score-CAM needs the model's pre-activation scores, which keraslens could not "
                "separate from this model's output; use method='gradcam'."
            )
        self.mask_batch_size = mask_batch_size
        self._masked_pass = _MaskedPassModel(
            self.score_model.inputs, self.score_model.outputs, name="score_model"
        )
        self._visualize = Scorecam(self._masked_pass, clone=False)

    @property
    def samples_per_pass(self) -> int:
        # tf-keras-vis holds every masked copy in memory at once: samples x channels inputs.
        channels = self.max_channels or self.graph.target_layer.output.shape[-1]
        return max(1, MASKED_INPUTS_IN_MEMORY // channels)

    def _maps(self, score: TargetScore, x: np.ndarray) -> np.ndarray:
        self._masked_pass.explaining(x, score)
        try:
            return self._visualize(
                score,
                x,
                penultimate_layer=self.graph.target_layer,
                seek_penultimate_conv_layer=False,
                batch_size=self.mask_batch_size,
                max_N=self.max_channels,
            )
        finally:
            self._masked_pass.explaining(None, None)


class FasterScoreCAM(ScoreCAM):
    """Faster Score-CAM (tabayashi0117): Score-CAM over the `max_channels` channels whose
    activation varies most, which bounds the forward passes per sample.

    Args:
        graph: the model's `ExplanationGraph`.
        max_channels: channels kept (tf-keras-vis's `max_N`); None for
            `min(DEFAULT_MAX_CHANNELS, channels)`.
        mask_batch_size: masked inputs per forward pass.
    """

    name = "faster-scorecam"
    title = "Faster Score-CAM"

    def __init__(
        self, graph: ExplanationGraph, max_channels: int | None = None, mask_batch_size: int = 32
    ) -> None:
        channels = graph.target_layer.output.shape[-1]
        if max_channels is None:
            max_channels = min(DEFAULT_MAX_CHANNELS, channels)
        if not 1 <= max_channels <= channels:
            raise KeraslensError(
                f"max_channels must be in [1, {channels}] (the layer's channels); "
                f"got {max_channels}."
            )
        super().__init__(graph, mask_batch_size=mask_batch_size)
        self.max_channels = max_channels
