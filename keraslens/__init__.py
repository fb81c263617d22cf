"""keraslens: see what happens inside a Keras model."""

from importlib.metadata import PackageNotFoundError, version

from keraslens import plugins
from keraslens.capture import LayerStats, Lens
from keraslens.errors import KeraslensError
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
from keraslens.result import AnalysisResult, PluginRun
from keraslens.runner import analyze

try:
    __version__ = version("keraslens")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = [
    "PLUGIN_API_VERSION",
    "AnalysisContext",
    "AnalysisResult",
    "Figure",
    "Finding",
    "KeraslensError",
    "LayerStats",
    "Lens",
    "Option",
    "Plugin",
    "PluginResult",
    "PluginRun",
    "Table",
    "__version__",
    "analyze",
    "plugins",
]
