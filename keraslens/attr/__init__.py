"""Attributions: which input values drive a score, by every standard method, compiled.

One module per method behind one call, `attribute(model, x, method, targets)`, with the
shared plumbing (the score graph, inputs, batching) in `graph`, `inputs` and `scorer`.
"""

from keraslens.attr.api import attribute
from keraslens.attr.method import AttributionMethod
from keraslens.attr.registry import METHODS
from keraslens.attr.scorer import Scorer

__all__ = ["METHODS", "AttributionMethod", "Scorer", "attribute"]
