"""Attributions: which input values drive a score, by every standard method, compiled.

One module per method behind one call, `attribute(model, x, method, targets)`, with the
shared plumbing (the score graph, inputs, batching) in `graph`, `inputs` and `scorer`.
The names below are imported on first use, so `METHODS` lists without TensorFlow.
"""

from typing import TYPE_CHECKING

from keraslens.attr.registry import METHODS
from keraslens.lazy import exports

__all__ = ["METHODS", "AttributionMethod", "Scorer", "attribute"]

__getattr__ = exports(
    globals(),
    {
        "AttributionMethod": "keraslens.attr.method",
        "Scorer": "keraslens.attr.scorer",
        "attribute": "keraslens.attr.api",
    },
)

if TYPE_CHECKING:
    from keraslens.attr.api import attribute
    from keraslens.attr.method import AttributionMethod
    from keraslens.attr.scorer import Scorer
