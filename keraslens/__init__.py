"""keraslens: see what happens inside a Keras model.

Public names are imported on first use, so `import keraslens`, `keraslens --help` and
the command line's checks of paths and settings run without loading TensorFlow.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("keraslens")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

_EXPORTS = {
    "Analysis": "keraslens.runner",
    "AnalysisContext": "keraslens.plugin",
    "AnalysisResult": "keraslens.result",
    "Figure": "keraslens.plugin",
    "Finding": "keraslens.plugin",
    "KeraslensError": "keraslens.errors",
    "LayerStats": "keraslens.capture",
    "Lens": "keraslens.capture",
    "LensCallback": "keraslens.callback",
    "Option": "keraslens.plugin",
    "PLUGIN_API_VERSION": "keraslens.plugin",
    "Plugin": "keraslens.plugin",
    "PluginResult": "keraslens.plugin",
    "PluginRun": "keraslens.result",
    "Table": "keraslens.plugin",
    "Weights": "keraslens.attr.weights",
    "analyze": "keraslens.runner",
    "attribute": "keraslens.attr",
    "evaluate": "keraslens.metrics",
    "heatmap": "keraslens.vis",
    "load_data": "keraslens.io",
    "load_model": "keraslens.io",
    "maximize": "keraslens.vis",
    "maximize_with_classes": "keraslens.vis",
    "permuted_weights": "keraslens.attr.weights",
    "render_html": "keraslens.report",
}

__all__ = [
    "Analysis",
    "AnalysisContext",
    "AnalysisResult",
    "Figure",
    "Finding",
    "KeraslensError",
    "LayerStats",
    "Lens",
    "LensCallback",
    "Option",
    "PLUGIN_API_VERSION",
    "Plugin",
    "PluginResult",
    "PluginRun",
    "Table",
    "Weights",
    "__version__",
    "analyze",
    "attention",
    "attribute",
    "evaluate",
    "heatmap",
    "load_data",
    "load_model",
    "maximize",
    "maximize_with_classes",
    "permuted_weights",
    "registry",
    "render_html",
]


def __getattr__(name: str) -> Any:
    if name in ("registry", "attention"):
        return importlib.import_module(f"keraslens.{name}")
    if name not in _EXPORTS:
        raise AttributeError(f"module 'keraslens' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from keraslens import attention, registry
    from keraslens.attr import attribute
    from keraslens.attr.weights import Weights, permuted_weights
    from keraslens.callback import LensCallback
    from keraslens.capture import LayerStats, Lens
    from keraslens.errors import KeraslensError
    from keraslens.io import load_data, load_model
    from keraslens.metrics import evaluate
    from keraslens.plugin import (
        PLUGIN_API_VERSION,
        AnalysisContext,
        Figure,
        Finding,
        Option,
        Plugin,
        PluginResult,
        Table,
    )
    from keraslens.report import render_html
    from keraslens.result import AnalysisResult, PluginRun
    from keraslens.runner import Analysis, analyze
    from keraslens.vis import heatmap, maximize, maximize_with_classes
