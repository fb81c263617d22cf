"""Figures of heatmaps and synthesised inputs, drawn without pyplot's global state."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

CELL_INCHES = 1.25
OVERLAY_ALPHA = 0.45


def picture(x: np.ndarray) -> np.ndarray:
    """An input as something `imshow` draws: min-max scaled to [0, 1], grey or RGB.

    Images with one channel become grey, three stay RGB, others are averaged over
    channels; a sequence `(T, F)` is drawn features by steps, a vector as one row.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 3:
        x = x if x.shape[-1] == 3 else x.mean(axis=-1)
    elif x.ndim == 2:
        x = x.T
    else:
        x = x.reshape(1, -1)
    low, high = x.min(), x.max()
    return (x - low) / (high - low) if high > low else np.zeros_like(x)


def _draw(ax, x: np.ndarray, overlay: np.ndarray | None = None) -> None:
    image = picture(x)
    grey = image.ndim == 2
    ax.imshow(image, cmap="gray" if grey else None, aspect="auto" if x.ndim < 3 else "equal")
    if overlay is not None:
        overlay = overlay if overlay.ndim == 2 else overlay.reshape(1, -1)
        ax.imshow(
            overlay,
            cmap="jet",
            alpha=OVERLAY_ALPHA,
            vmin=0,
            vmax=1,
            aspect="auto" if x.ndim < 3 else "equal",
            extent=(-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5),
        )
    ax.set_xticks([])
    ax.set_yticks([])


def heatmap_grid(
    inputs: np.ndarray, maps: Mapping[str, np.ndarray], row_labels: Sequence[str]
) -> Figure:
    """One row per sample: the input, then its map overlaid for each method.

    Args:
        inputs: the samples, `(N, ...)`.
        maps: method title -> maps of the samples, `(N, H, W)` (or `(N, T)`, `(N, D)`).
        row_labels: one label per sample, e.g. "pred 3 (0.92) | true 3".
    """
    rows, columns = len(inputs), 1 + len(maps)
    fig = Figure(figsize=(CELL_INCHES * columns, CELL_INCHES * rows + 0.3))
    axes = fig.subplots(rows, columns, squeeze=False)
    for row, (x, label) in enumerate(zip(inputs, row_labels, strict=True)):
        _draw(axes[row, 0], x)
        axes[row, 0].set_ylabel(label, fontsize="x-small")
        for column, method_maps in enumerate(maps.values(), start=1):
            _draw(axes[row, column], x, method_maps[row])
    for column, title in enumerate(["input", *maps], start=0):
        axes[0, column].set_title(title, fontsize="small")
    fig.tight_layout(pad=0.3)
    return fig


def maximization_montage(
    inputs: np.ndarray,
    reached: np.ndarray,
    units: Sequence[int],
    natural: np.ndarray,
    natural_best: np.ndarray,
    unit_name: str = "unit",
) -> Figure:
    """Top row: each unit's synthesised input and the activation it reaches; bottom row:
    the natural sample that activates the unit most, and that activation.

    Args:
        inputs: synthesised inputs, one per unit.
        reached: the activation each synthesised input reaches.
        units: the unit indices.
        natural: for each unit, the data sample that activates it most.
        natural_best: that sample's activation.
        unit_name: how to call a unit ("class", "filter", "unit").
    """
    columns = len(units)
    fig = Figure(figsize=(CELL_INCHES * columns, 2 * CELL_INCHES + 0.8), layout="constrained")
    axes = fig.subplots(2, columns, squeeze=False)
    for column, unit in enumerate(units):
        _draw(axes[0, column], inputs[column])
        axes[0, column].set_title(
            f"{unit_name} {unit}\nreached {reached[column]:.3g}", fontsize="x-small"
        )
        _draw(axes[1, column], natural[column])
        axes[1, column].set_title(f"best in data\n{natural_best[column]:.3g}", fontsize="x-small")
    axes[0, 0].set_ylabel("synthesised", fontsize="x-small")
    axes[1, 0].set_ylabel("natural", fontsize="x-small")
    return fig
