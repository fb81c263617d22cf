"""attention: per-head statistics of MultiHeadAttention layers, dead heads and sinks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from keraslens.errors import KeraslensError
from keraslens.plugin import AnalysisContext, Figure, Finding, Option, Plugin, PluginResult, Table
from plugins import _common

if TYPE_CHECKING:
    from keraslens.attention.capture import AttentionCapture
    from keraslens.attention.stats import HeadStats

MAX_GRID_HEADS = 16
"""Heads drawn per layer in the head grid."""
MAX_ROLLOUT_SAMPLES = 4
"""Images shown with their attention rollout."""


class Attention(Plugin):
    """Statistics of every attention head, with findings for dead heads and sinks.

    Over the report's sample, per `MultiHeadAttention` call and head (see
    `keraslens.attention.HeadStats`): the mean row entropy, its uniformity (entropy over
    its maximum), the mass on the first token (an attention sink), the mass on the
    diagonal and the variability of the pattern across samples. A head is dead when it is
    near-uniform (it averages its values) or does not change with the input. Figures: the
    maps of every head for one sample, and for image models whose tokens are patches, the
    attention rollout (Abnar & Zuidema, 2020) over a few images. Models without attention
    are skipped, with the reason.

    Example:

    ```python
    result = keraslens.analyze(model, tokens, plugins=["attention"])
    result.to_dict()["plugins"]["attention"]["layers"]["encoder/mha"]["dead_heads"]
    ```
    """

    name = "attention"
    title = "Attention heads"
    description = "Per-head entropy, attention sinks, diagonal mass and dead heads."
    needs = frozenset({"sample"})
    options = {
        "uniform_threshold": Option(
            float,
            0.98,
            "Uniformity (row entropy over its maximum) at or above which a head is dead.",
            min=0.0,
            max=1.0,
        ),
        "constant_threshold": Option(
            float,
            0.01,
            "Variability across samples at or below which a head is dead.",
            min=0.0,
        ),
        "sink_threshold": Option(
            float,
            0.5,
            "Mean mass on the first token above which a head is an attention sink.",
            min=0.0,
            max=1.0,
        ),
        "sample_index": Option(int, 0, "Sample whose heads are drawn.", min=0),
        "batch_size": Option(int, 16, "Samples per compiled step.", min=1),
    }

    def analyze(self, ctx: AnalysisContext) -> PluginResult:
        from keraslens.attention import HeadStats, capture

        try:
            run = capture.capture_for(ctx.model)
        except KeraslensError as error:
            return _skipped(str(error))
        options = ctx.options
        stats: dict[str, HeadStats] = {}
        shown: dict[str, np.ndarray] = {}
        index = options["sample_index"]
        seen = 0
        for batch in run.batches(ctx.sample, options["batch_size"]):
            size = len(next(iter(batch.values())))
            for key, probabilities in batch.items():
                stats.setdefault(key, HeadStats()).update(probabilities)
                if seen <= index < seen + size:
                    shown[key] = probabilities[index - seen]
            seen += size
        index = min(index, seen - 1)
        if not shown:
            shown = {key: p[-1] for key, p in batch.items()}
        result = PluginResult(data={"samples": seen, "layers": {}})
        for key, layer_stats in stats.items():
            report = _layer_report(layer_stats, options)
            result.data["layers"][key] = report
            result.findings += _findings(key, report, options)
        result.tables.append(_table(result.data["layers"]))
        if not ctx.minimal:
            result.figures.append(_head_grid(shown, index))
            rollout = _rollout_figure(ctx.sample, run)
            if rollout is not None:
                result.figures.append(rollout)
        return result


def _layer_report(stats: HeadStats, options: dict[str, Any]) -> dict[str, Any]:
    uniform, constant = options["uniform_threshold"], options["constant_threshold"]
    return {
        "heads": stats.heads,
        "entropy": stats.entropy,
        "uniformity": stats.uniformity,
        "sink": stats.sink,
        "diagonal": stats.diagonal,
        "variability": stats.variability,
        "dead_heads": stats.dead_heads(uniform, constant).tolist(),
        "uniform_heads": stats.uniform_heads(uniform).tolist(),
        "constant_heads": stats.constant_heads(constant).tolist(),
        "sink_heads": _common.unit_indices(stats.sink > options["sink_threshold"]),
    }


def _findings(layer: str, report: dict[str, Any], options: dict[str, Any]) -> list[Finding]:
    findings = []
    heads = report["heads"]
    dead = report["dead_heads"]
    if dead:
        parts = []
        if report["uniform_heads"]:
            parts.append(f"near-uniform (they average their values): {report['uniform_heads']}")
        if report["constant_heads"]:
            parts.append(f"the same pattern for every input: {report['constant_heads']}")
        findings.append(
            Finding(
                severity="error" if len(dead) > _common.ERROR_FRACTION * heads else "warning",
                message=f"{len(dead)} of {heads} heads of {layer} are dead; "
                + "; ".join(parts)
                + ".",
                layer=layer,
                units=dead,
                value=_common.fraction(len(dead), heads),
                threshold=options["uniform_threshold"],
                threshold_name="attention.uniform_threshold",
                label="dead heads",
                fix="Prune the dead heads, or check the attention's masking and "
                "initialisation (a zero query projection gives uniform rows).",
            )
        )
    sinks = report["sink_heads"]
    if sinks:
        mass = float(np.mean([report["sink"][h] for h in sinks]))
        findings.append(
            Finding(
                severity="info",
                message=f"{len(sinks)} of {heads} heads of {layer} put on average "
                f"{mass:.0%} of their attention on the first token (an attention sink): "
                f"heads {sinks}.",
                layer=layer,
                units=sinks,
                value=mass,
                threshold=options["sink_threshold"],
                threshold_name="attention.sink_threshold",
                label="attention sink",
                fix="Usually harmless (a head with nothing to do parks its attention); "
                "keep the first token unmasked and do not prune it.",
            )
        )
    return findings


def _table(layers: dict[str, dict[str, Any]]) -> Table:
    rows = []
    for key, report in layers.items():
        for head in range(report["heads"]):
            state = (
                "dead"
                if head in report["dead_heads"]
                else "sink"
                if head in report["sink_heads"]
                else ""
            )
            rows.append(
                [
                    key,
                    head,
                    float(report["entropy"][head]),
                    float(report["uniformity"][head]),
                    float(report["sink"][head]),
                    float(report["diagonal"][head]),
                    float(report["variability"][head]),
                    state,
                ]
            )
    columns = [
        "layer",
        "head",
        "entropy",
        "uniformity",
        "first-token mass",
        "diagonal mass",
        "variability",
        "verdict",
    ]
    return Table(title="Attention heads", columns=columns, rows=rows)


def _head_grid(shown: dict[str, np.ndarray], index: int) -> Figure:
    keys = list(shown)[: _common.MAX_LAYER_FIGURES]
    columns = min(max(p.shape[0] for p in shown.values()), MAX_GRID_HEADS)
    fig = _common.new_figure(1.3 * columns + 0.8, 1.3 * len(keys) + 0.4)
    axes = fig.subplots(len(keys), columns, squeeze=False)
    for row, key in enumerate(keys):
        for head in range(columns):
            ax = axes[row][head]
            ax.set_xticks([])
            ax.set_yticks([])
            if head < shown[key].shape[0]:
                # At least twice the uniform mass: a uniform head is drawn dim, not bright.
                vmax = max(float(shown[key][head].max()), 2.0 / shown[key].shape[-1])
                ax.imshow(
                    shown[key][head], cmap="magma", vmin=0.0, vmax=vmax, interpolation="nearest"
                )
            else:
                ax.axis("off")
            if row == 0:
                ax.set_title(f"head {head}", fontsize="small")
        axes[row][0].set_ylabel(key, fontsize="small", rotation=0, ha="right", va="center")
    notes = [
        f"Attention probabilities of sample {index}: rows are queries, columns are keys; "
        "colours from 0 to each head's largest probability (at least twice uniform).",
        _common.capped_caption(len(keys), len(shown), "attention calls"),
        _common.capped_caption(columns, max(p.shape[0] for p in shown.values()), "heads"),
    ]
    return _common.render(fig, "Attention heads, one sample", " ".join(n for n in notes if n))


def _rollout_figure(sample: Any, run: AttentionCapture) -> Figure | None:
    """Images with their attention rollout, for a model whose tokens are image patches."""
    from keraslens.attention import maps

    if (
        not isinstance(sample, np.ndarray)
        or sample.ndim != 4
        or not np.issubdtype(sample.dtype, np.floating)
    ):
        return None
    images = sample[:MAX_ROLLOUT_SAMPLES]
    try:
        joint = maps.rollout(run(images, batch_size=len(images)))
        tokens = joint.shape[-1]
        query = 0 if int(np.sqrt(tokens - 1)) ** 2 == tokens - 1 else "mean"
        heat = maps.patch_heatmap(maps.token_relevance(joint, query), images.shape[1:3])
    except KeraslensError:  # cross-attention, or tokens that are not a patch grid
        return None
    fig = _common.new_figure(1.6 * len(images), 3.4)
    axes = fig.subplots(2, len(images), squeeze=False)
    for i, image in enumerate(images):
        shown = image[..., 0] if image.shape[-1] == 1 else image[..., :3]
        low, high = float(shown.min()), float(shown.max())
        shown = (shown - low) / (high - low) if high > low else np.zeros_like(shown)
        for ax in axes[:, i]:
            ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[1][i].imshow(heat[i], cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
    row = "the classification token's row" if query == 0 else "the mean over tokens"
    caption = (
        "Attention rollout (Abnar & Zuidema, 2020): the product over layers of "
        f"0.5 A + 0.5 I with heads averaged, read from {row}, upsampled to the image."
    )
    return _common.render(fig, "Attention rollout", caption)


def _skipped(reason: str) -> PluginResult:
    return PluginResult(
        data={"skipped": reason},
        findings=[
            Finding(severity="info", message=f"Attention skipped: {reason}", label="skipped")
        ],
    )
