"""Attribution methods by name: a new method is one module and one line here.

A `Registry` imports a method's module when the method is first looked up, so the
`heatmaps` plugin lists its choices without TensorFlow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from keraslens.lazy import Registry

if TYPE_CHECKING:
    from keraslens.attr.method import AttributionMethod

METHODS: Registry[type[AttributionMethod]] = Registry(
    {
        "gradcam": "keraslens.attr.gradcam:GradCAM",
        "gradcam++": "keraslens.attr.gradcam:GradCAMPlusPlus",
        "scorecam": "keraslens.attr.scorecam:ScoreCAM",
        "faster-scorecam": "keraslens.attr.scorecam:FasterScoreCAM",
        "layercam": "keraslens.attr.gradcam:LayerCAM",
        "saliency": "keraslens.attr.saliency:Saliency",
        "smoothgrad": "keraslens.attr.smoothgrad:SmoothGrad",
        "squaregrad": "keraslens.attr.smoothgrad:SquareGrad",
        "vargrad": "keraslens.attr.smoothgrad:VarGrad",
        "gradient-input": "keraslens.attr.gradient_input:GradientInput",
        "integrated-gradients": "keraslens.attr.integrated_gradients:IntegratedGradients",
        "guided-backprop": "keraslens.attr.guided_backprop:GuidedBackprop",
        "deconvnet": "keraslens.attr.guided_backprop:Deconvnet",
        "occlusion": "keraslens.attr.occlusion:Occlusion",
        "rise": "keraslens.attr.rise:Rise",
        "kernelshap": "keraslens.attr.kernelshap:KernelShap",
        "lime": "keraslens.attr.lime:Lime",
        "sobol": "keraslens.attr.sobol:Sobol",
        "hsic": "keraslens.attr.hsic:Hsic",
    }
)
"""Every attribution method, by the name `keraslens.attribute` takes (the class's `name`)."""
