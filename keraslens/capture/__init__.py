"""The activation-capture core: layer discovery, call interception, fused statistics.

The names below are imported on first use, so `LayerStats` (a plugin's type) reads
without TensorFlow.
"""

from typing import TYPE_CHECKING

from keraslens.lazy import exports

__all__ = ["CallSite", "LayerStats", "Lens", "histogram_edges"]

__getattr__ = exports(
    globals(),
    {
        "CallSite": "keraslens.capture.recorder",
        "LayerStats": "keraslens.capture.stats",
        "Lens": "keraslens.capture.lens",
        "histogram_edges": "keraslens.capture.stats",
    },
)

if TYPE_CHECKING:
    from keraslens.capture.lens import Lens
    from keraslens.capture.recorder import CallSite
    from keraslens.capture.stats import LayerStats, histogram_edges
