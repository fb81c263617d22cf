"""Explanation metrics: how far to trust an attribution method, measured per sample.

One module per metric behind one call, `evaluate(model, x, method_or_attributions)`, with
the shared plumbing (position maps, orders, start images, AUC, intervals) in
`_plumbing`, and a verdict per method in `verdict`. `evaluate` and the metric types are
imported on first use, so `METRICS` lists without TensorFlow.
"""

from typing import TYPE_CHECKING

from keraslens.lazy import exports
from keraslens.metrics.registry import METRICS

# Imported here, not on first use: the function `verdict` must win over the submodule
# of the same name, which Python binds to the package when it is first imported.
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

__getattr__ = exports(
    globals(),
    {
        "Explained": "keraslens.metrics.metric",
        "Metric": "keraslens.metrics.metric",
        "Score": "keraslens.metrics.metric",
        "evaluate": "keraslens.metrics.api",
    },
)

if TYPE_CHECKING:
    from keraslens.metrics.api import evaluate
    from keraslens.metrics.metric import Explained, Metric, Score
