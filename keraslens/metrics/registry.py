"""Explanation metrics by name: a new metric is one module and one line here."""

from __future__ import annotations

from keraslens.metrics.average_drop import AverageDrop
from keraslens.metrics.average_gain import AverageGain
from keraslens.metrics.average_increase import AverageIncrease
from keraslens.metrics.complexity import Complexity
from keraslens.metrics.deletion import Deletion
from keraslens.metrics.insertion import Insertion
from keraslens.metrics.max_sensitivity import MaxSensitivity
from keraslens.metrics.metric import Metric
from keraslens.metrics.mufidelity import MuFidelity
from keraslens.metrics.pixel_flipping import PixelFlipping
from keraslens.metrics.random_logit import RandomLogit
from keraslens.metrics.randomisation import Randomisation
from keraslens.metrics.road import ROAD
from keraslens.metrics.sparseness import Sparseness

METRICS: dict[str, type[Metric]] = {
    metric.name: metric
    for metric in (
        Deletion,
        Insertion,
        MuFidelity,
        AverageDrop,
        AverageIncrease,
        AverageGain,
        ROAD,
        PixelFlipping,
        MaxSensitivity,
        Sparseness,
        Complexity,
        RandomLogit,
        Randomisation,
    )
}
"""Every explanation metric, by the name `keraslens.evaluate` takes."""
