"""Explanation metrics by name: a new metric is one module and one line here (its module
is imported when the metric is first looked up)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from keraslens.lazy import Registry

if TYPE_CHECKING:
    from keraslens.metrics.metric import Metric

METRICS: Registry[type[Metric]] = Registry(
    {
        "deletion": "keraslens.metrics.deletion:Deletion",
        "insertion": "keraslens.metrics.insertion:Insertion",
        "mufidelity": "keraslens.metrics.mufidelity:MuFidelity",
        "average-drop": "keraslens.metrics.average_drop:AverageDrop",
        "average-increase": "keraslens.metrics.average_increase:AverageIncrease",
        "average-gain": "keraslens.metrics.average_gain:AverageGain",
        "road": "keraslens.metrics.road:ROAD",
        "pixel-flipping": "keraslens.metrics.pixel_flipping:PixelFlipping",
        "max-sensitivity": "keraslens.metrics.max_sensitivity:MaxSensitivity",
        "sparseness": "keraslens.metrics.sparseness:Sparseness",
        "complexity": "keraslens.metrics.complexity:Complexity",
        "random-logit": "keraslens.metrics.random_logit:RandomLogit",
        "randomisation": "keraslens.metrics.randomisation:Randomisation",
    }
)
"""Every explanation metric, by the name `keraslens.evaluate` takes (the class's `name`)."""
