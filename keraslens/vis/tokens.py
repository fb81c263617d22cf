"""Token sequences coloured by their attributions, drawn without pyplot's global state."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

TOKENS_PER_ROW = 16
"""Tokens drawn on one line; longer samples wrap."""


def token_text(ids: np.ndarray, vocabulary: Sequence[str] | None) -> list[str]:
    """Each id as its vocabulary entry (line `id` of the file), or as `#id` without one."""
    if vocabulary is None:
        return [f"#{int(i)}" for i in ids]
    return [vocabulary[int(i)] if 0 <= int(i) < len(vocabulary) else f"#{int(i)}" for i in ids]


def token_figure(
    tokens: Sequence[Sequence[str]], weights: np.ndarray, row_labels: Sequence[str]
) -> Figure:
    """One block per sample, its tokens on a background from white (0) to red (1).

    Args:
        tokens: each sample's token strings (drawn as plain text, never parsed as math).
        weights: `(N, T)` values in [0, 1], as `keraslens.heatmap` gives them.
        row_labels: one label per sample.
    """
    lines = [max(1, -(-len(t) // TOKENS_PER_ROW)) for t in tokens]
    figure = Figure(figsize=(11, 0.35 * (sum(lines) + len(tokens)) + 0.3))
    axes = figure.add_axes((0, 0, 1, 1))
    axes.set_axis_off()
    total = sum(lines) + len(tokens)
    colours = colormaps["Reds"]
    row = 0
    for sample, (words, values, label) in enumerate(zip(tokens, weights, row_labels, strict=True)):
        axes.text(0.005, 1 - (row + 0.5) / total, label, fontsize=8, va="center", parse_math=False)
        row += 1
        for index, (word, value) in enumerate(zip(words, values, strict=False)):
            line, column = divmod(index, TOKENS_PER_ROW)
            axes.text(
                0.02 + column / TOKENS_PER_ROW * 0.97,
                1 - (row + line + 0.5) / total,
                word[:14],
                fontsize=8,
                va="center",
                parse_math=False,
                bbox={"facecolor": colours(float(np.clip(value, 0, 1)) * 0.85), "pad": 1.5},
            )
        row += lines[sample]
    return figure
