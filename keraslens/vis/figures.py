"""Figures of heatmaps and synthesised inputs, drawn without pyplot's global state."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

CELL_INCHES = 1.0
"""Inches per picture: 64 pixels at the 64 dpi of the montages, so small inputs are not upscaled."""
OVERLAY_ALPHA = 0.45


MAX_LINES = 8
"""Features of a sequence drawn as lines; the rest are left out (the first ones are kept)."""


def picture(x: np.ndarray) -> np.ndarray:
    """An image `(H, W, C)` as something `imshow` draws: min-max scaled to [0, 1], grey
    or RGB (one channel is grey, three stay RGB, others are averaged over channels)."""
    x = np.asarray(x, dtype=np.float64)
    x = x if x.shape[-1] == 3 else x.mean(axis=-1)
    low, high = x.min(), x.max()
    return (x - low) / (high - low) if high > low else np.zeros_like(x)


def is_image(x: np.ndarray) -> bool:
    """True for one sample `(H, W, C)`; sequences `(T, F)` and vectors `(D,)` are not."""
    return np.ndim(x) == 3


def _draw(ax, x: np.ndarray, overlay: np.ndarray | None = None) -> None:
    """An image as an image, a sequence as one line per feature over time, a vector as one
    line over its index; `overlay` (a map in [0, 1]) on top of an image, behind lines."""
    x = np.asarray(x, dtype=np.float64)
    if is_image(x):
        _draw_image(ax, x, overlay)
    else:
        _draw_lines(ax, x, overlay)
    ax.set_xticks([])
    ax.set_yticks([])


def _draw_image(ax, x: np.ndarray, overlay: np.ndarray | None) -> None:
    image = picture(x)
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
    if overlay is not None:
        ax.imshow(
            overlay,
            cmap="jet",
            alpha=OVERLAY_ALPHA,
            vmin=0,
            vmax=1,
            extent=(-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5),
        )


def _draw_lines(ax, x: np.ndarray, overlay: np.ndarray | None) -> None:
    series = x.reshape(len(x), -1)[:, :MAX_LINES] if x.ndim > 1 else x[:, None]
    steps = np.arange(len(series))
    ax.plot(steps, series, linewidth=0.9)
    ax.set_xlim(-0.5, len(series) - 0.5)
    if overlay is not None:
        # A map over time (or over the vector's index), drawn as a coloured band behind.
        band = np.asarray(overlay, dtype=np.float64).reshape(len(series), -1).mean(axis=1)
        low, high = ax.get_ylim()
        ax.imshow(
            band[None, :],
            cmap="jet",
            alpha=OVERLAY_ALPHA,
            vmin=0,
            vmax=1,
            aspect="auto",
            extent=(-0.5, len(series) - 0.5, low, high),
            zorder=0,
        )
        ax.set_ylim(low, high)


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
