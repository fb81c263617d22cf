"""What the report template shows: an `AnalysisResult` turned into plain values.

Everything the template needs is computed here (anchors, per-layer gathering,
defaults of thresholds, chart geometry); the template only lays it out.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from keraslens.capture import LayerStats
from keraslens.errors import shape_text
from keraslens.plugin import SEVERITIES, Finding, Table
from keraslens.report import charts
from keraslens.report.training import training_view
from keraslens.result import AnalysisResult, PluginRun

MAX_TABLE_ROWS = 100
"""Rows shown per table; the JSON twin holds them all."""

OPEN_ROWS = 12
"""Rows a table shows before it folds behind its title and row count."""

OPEN_FINDINGS = 8
"""Findings a findings table shows before the rest are folded behind "N more"."""

MAX_UNIT_ROWS = 32
"""Units listed in a layer's per-unit table (the flagged ones first)."""

MAX_LAYER_SECTIONS = 60
"""Layers given a section of their own (the worst first); the others share one table."""

MAX_UNITS_LISTED = 12
"""Unit indices spelled out in a finding before "and N more"."""

FACT_NAMES = ("Type", "Activation", "Output shape", "Units", "Samples")
"""What the report states about every layer."""

UNIT_COLUMNS = ("mean", "std", "min", "max", "firing rate", "non-finite")
"""The columns of a layer's per-unit table (see `LayerStats.per_unit`)."""

LAYER_STATUSES = (*SEVERITIES, "ok")
"""A layer's status, worst first: its most severe finding, or "ok" without one."""


class Anchors:
    """Unique, stable HTML ids derived from names (the same names give the same ids)."""

    def __init__(self) -> None:
        self._given: dict[tuple[str, str], str] = {}
        self._used: set[str] = set()

    def __call__(self, kind: str, name: str) -> str:
        key = (kind, name)
        if key not in self._given:
            base = f"{kind}-" + (re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "x")
            anchor, n = base, 1
            while anchor in self._used:
                n += 1
                anchor = f"{base}-{n}"
            self._used.add(anchor)
            self._given[key] = anchor
        return self._given[key]


@dataclass
class FindingView:
    """One finding as the report prints it."""

    severity: str
    plugin: str
    label: str
    message: str
    more: str
    layer: str | None
    units: str
    value: Any
    threshold: Any
    threshold_name: str | None
    default: Any
    fix: str
    target: str
    unit_indices: list[int] = field(default_factory=list)


@dataclass
class LayerView:
    """Everything the report knows about one layer."""

    name: str
    anchor: str
    status: str
    findings: list[FindingView] = field(default_factory=list)
    facts: list[tuple[str, Any]] = field(default_factory=list)
    histogram: dict[str, Any] | None = None
    zero_fraction: float | None = None
    units: dict[str, Any] | None = None


def build(result: AnalysisResult, defaults: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The template context for `result`; `defaults` maps plugin -> option -> default."""
    anchors = Anchors()
    layer_names = _layer_names(result)
    for name in result.plugins:
        anchors("plugin", name)
    for name in layer_names:
        anchors("layer", name)
    findings = [_finding_view(f, anchors, defaults, layer_names) for f in result.findings]
    return {
        "meta": result.meta,
        "header": _header(result.meta),
        "status": result.status,
        "counts": result.counts,
        "open_rows": OPEN_ROWS,
        "open_findings": OPEN_FINDINGS,
        "findings": findings,
        "errors": [
            {"name": run.name, "error": run.error, "target": anchors("plugin", run.name)}
            for run in result.errors
        ],
        "plugins": [
            _plugin_view(run, anchors, findings, defaults) for run in result.plugins.values()
        ],
        **_layers_view(result, layer_names, findings, anchors),
        "training": training_view(result.extra.get("training"), anchors),
    }


def _layers_view(
    result: AnalysisResult,
    layer_names: list[str],
    findings: list[FindingView],
    anchors: Anchors,
) -> dict[str, Any]:
    """The worst layers (those with findings, most severe first) get sections; every other
    layer is one row of a compact table, so a model of hundreds of layers stays short."""
    views = [_layer_view(n, result.stats.get(n), findings, anchors) for n in layer_names]
    # sorted is stable: layers of one status keep the model's order.
    ranked = sorted(views, key=lambda v: LAYER_STATUSES.index(v.status))
    flagged = [v for v in ranked if v.status != "ok"]
    sections = flagged[:MAX_LAYER_SECTIONS]
    rest = [v for v in ranked if v not in sections]
    return {
        "layers": sections,
        "fact_names": FACT_NAMES,
        "other_layers": [
            {
                "anchor": v.anchor,
                "name": v.name,
                "status": v.status,
                "cells": [dict(v.facts).get(key, "") for key in FACT_NAMES],
            }
            for v in rest
        ],
    }


def _layer_names(result: AnalysisResult) -> list[str]:
    names = list(result.stats)
    for finding in result.findings:
        if finding.layer is not None and finding.layer not in names:
            names.append(finding.layer)
    return names


_SUBSETS = {"random": " (random subset)", "first": " (the first of the dataset)"}


def _header(meta: dict[str, Any]) -> list[tuple[str, Any]]:
    samples = meta.get("samples")
    data = f"{meta.get('data_source', '')}"
    if samples is not None:
        data += f", {samples} samples" + _SUBSETS.get(meta.get("subset"), "")
    rows = [
        ("Model", f"{meta.get('model', '')} ({meta.get('model_class', '')})"),
        ("Parameters", _thousands(meta.get("parameters"))),
        ("Inputs", ", ".join(shape_text(s) for s in meta.get("input_shapes") or []) or "unknown"),
        ("Data", data),
        ("Layers", ", ".join(meta["layers"]) if meta.get("layers") else "all"),
        ("Seed", meta.get("seed")),
        ("keraslens", meta.get("keraslens_version")),
        (
            "Plugins",
            ", ".join(f"{n} {v or ''}".strip() for n, v in (meta.get("plugins") or {}).items()),
        ),
        ("Date", meta.get("date")),
    ]
    if meta.get("minimal"):
        rows.append(("Mode", "minimal: expensive plugins and figures skipped"))
    return rows


def _finding_view(
    finding: Finding,
    anchors: Anchors,
    defaults: dict[str, dict[str, Any]],
    layer_names: list[str],
) -> FindingView:
    plugin, _, key = (finding.threshold_name or "").partition(".")
    default = defaults.get(plugin or finding.plugin, {}).get(key) if key else None
    message, more = _first_sentence(finding.message)
    target = (
        anchors("layer", finding.layer)
        if finding.layer in layer_names
        else anchors("plugin", finding.plugin)
    )
    return FindingView(
        severity=finding.severity,
        plugin=finding.plugin,
        label=finding.label or finding.severity,
        message=message,
        more=more,
        layer=finding.layer,
        units=_units(finding.units),
        value=finding.value,
        threshold=finding.threshold,
        threshold_name=finding.threshold_name,
        default=default,
        fix=finding.fix,
        target=target,
        unit_indices=list(finding.units),
    )


def _plugin_view(
    run: PluginRun,
    anchors: Anchors,
    findings: list[FindingView],
    defaults: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    result = run.result
    return {
        "name": run.name,
        "title": run.title,
        "anchor": anchors("plugin", run.name),
        "version": run.version,
        "distribution": run.distribution,
        "error": run.error,
        "traceback": run.traceback,
        "options": [
            (key, value, defaults.get(run.name, {}).get(key)) for key, value in run.options.items()
        ],
        "findings": [f for f in findings if f.plugin == run.name],
        "tables": [_table_view(t) for t in result.tables] if result else [],
        "figures": list(result.figures) if result else [],
        "seconds": run.seconds or None,
    }


def _table_view(table: Table) -> dict[str, Any]:
    return {
        "title": table.title,
        "layer": table.layer,
        "columns": table.columns,
        "rows": table.rows[:MAX_TABLE_ROWS],
        "count": len(table.rows),
        "hidden": max(0, len(table.rows) - MAX_TABLE_ROWS),
    }


def _layer_view(
    name: str, stats: LayerStats | None, findings: Iterable[FindingView], anchors: Anchors
) -> LayerView:
    mine = [f for f in findings if f.layer == name]
    view = LayerView(
        name=name,
        anchor=anchors("layer", name),
        status=min((f.severity for f in mine), key=LAYER_STATUSES.index, default="ok"),
        findings=mine,
    )
    if stats is not None:
        values = (
            stats.layer_type,
            stats.activation or "none",
            shape_text(stats.shape),
            stats.units,
            stats.samples,
        )
        view.facts = list(zip(FACT_NAMES, values, strict=True))
        if mine:
            view.histogram = charts.histogram(*stats.histogram())
            view.zero_fraction = stats.zero_fraction
            view.units = _unit_table(stats, [u for f in mine for u in f.unit_indices])
    return view


def _unit_table(stats: LayerStats, flagged: list[int]) -> dict[str, Any]:
    """At most `MAX_UNIT_ROWS` units: those the findings name first, then by index."""
    per_unit = stats.per_unit()
    columns = [per_unit[name] for name in UNIT_COLUMNS]
    named = [u for u in dict.fromkeys(flagged) if 0 <= u < stats.units][:MAX_UNIT_ROWS]
    others = (u for u in range(stats.units) if u not in set(named))
    shown = named + list(itertools.islice(others, MAX_UNIT_ROWS - len(named)))
    rows = [[unit, *(column[unit] for column in columns)] for unit in shown]
    return {
        "columns": ["unit", *UNIT_COLUMNS],
        "rows": rows,
        "count": stats.units,
        "hidden": stats.units - len(shown),
    }


_SENTENCE_END = re.compile(r"(?<=[.!?:])\s+(?=[A-Z])")


def _first_sentence(message: str) -> tuple[str, str]:
    """A finding's message split after its first sentence: the rest folds away, so a
    table of many findings stays one line or two per finding."""
    parts = _SENTENCE_END.split(message, maxsplit=1)
    return (parts[0], parts[1]) if len(parts) == 2 else (message, "")


def _units(units: list[int]) -> str:
    if not units:
        return ""
    shown = ", ".join(str(u) for u in units[:MAX_UNITS_LISTED])
    more = len(units) - MAX_UNITS_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def _thousands(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "unknown"
