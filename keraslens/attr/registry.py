"""Attribution methods by name: a new method is one module and one line here."""

from __future__ import annotations

from keraslens.attr.gradcam import GradCAM, GradCAMPlusPlus, LayerCAM
from keraslens.attr.gradient_input import GradientInput
from keraslens.attr.guided_backprop import Deconvnet, GuidedBackprop
from keraslens.attr.hsic import Hsic
from keraslens.attr.integrated_gradients import IntegratedGradients
from keraslens.attr.kernelshap import KernelShap
from keraslens.attr.lime import Lime
from keraslens.attr.method import AttributionMethod
from keraslens.attr.occlusion import Occlusion
from keraslens.attr.rise import Rise
from keraslens.attr.saliency import Saliency
from keraslens.attr.scorecam import FasterScoreCAM, ScoreCAM
from keraslens.attr.smoothgrad import SmoothGrad, SquareGrad, VarGrad
from keraslens.attr.sobol import Sobol

METHODS: dict[str, type[AttributionMethod]] = {
    method.name: method
    for method in (
        GradCAM,
        GradCAMPlusPlus,
        ScoreCAM,
        FasterScoreCAM,
        LayerCAM,
        Saliency,
        SmoothGrad,
        SquareGrad,
        VarGrad,
        GradientInput,
        IntegratedGradients,
        GuidedBackprop,
        Deconvnet,
        Occlusion,
        Rise,
        KernelShap,
        Lime,
        Sobol,
        Hsic,
    )
}
"""Every attribution method, by the name `keraslens.attribute` takes."""
