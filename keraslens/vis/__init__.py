"""Attribution heatmaps and activation maximization for Keras 3, built on tf-keras-vis."""

from keraslens.vis.heatmap import METHODS, explain, heatmap
from keraslens.vis.maximize import Maximization, maximize

__all__ = ["METHODS", "Maximization", "explain", "heatmap", "maximize"]
