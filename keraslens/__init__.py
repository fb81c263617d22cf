"""keraslens: see what happens inside a Keras model."""

from importlib.metadata import PackageNotFoundError, version

from keraslens.capture import LayerStats, Lens
from keraslens.errors import KeraslensError

try:
    __version__ = version("keraslens")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["KeraslensError", "LayerStats", "Lens", "__version__"]
