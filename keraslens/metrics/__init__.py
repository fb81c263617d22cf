"""Explanation metrics: how far to trust an attribution method, measured per sample.

One module per metric behind one call, `evaluate(model, x, method_or_attributions)`, with
the shared plumbing (position maps, orders, start images, AUC, intervals) in
`_plumbing`, and a verdict per method in `verdict`.
"""

from keraslens.metrics.api import evaluate
from keraslens.metrics.metric import Explained, Metric, Score
from keraslens.metrics.registry import METRICS
from keraslens.metrics.verdict import best_method, faithfulness, verdict

__all__ = [
    "METRICS",
    "Explained",
    "Metric",
    "Score",
    "best_method",
    "evaluate",
    "faithfulness",
    "verdict",
]
