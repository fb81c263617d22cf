"""Pictures for Keras 3 models: attribution heatmaps and activation maximization."""

from keraslens.vis.heatmap import METHODS, explain, heatmap
from keraslens.vis.maximize import Maximization, maximize, maximize_with_classes

__all__ = ["METHODS", "Maximization", "explain", "heatmap", "maximize", "maximize_with_classes"]
