"""The activation-capture core: layer discovery, call interception, fused statistics."""

from keraslens.capture.lens import Lens
from keraslens.capture.recorder import CallSite
from keraslens.capture.stats import LayerStats, histogram_edges

__all__ = ["CallSite", "LayerStats", "Lens", "histogram_edges"]
