"""The outcome of an analysis run: every plugin's result, its findings, and the verdict."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keraslens.atomic import write_atomic
from keraslens.capture import LayerStats
from keraslens.plugin import SEVERITIES, Finding, PluginResult, to_jsonable

FULL_UNITS = 64
"""Layers of up to this many units keep their per-unit arrays in the default JSON twin;
larger ones keep them only in the full twin (`to_json(path, full=True)`)."""


@dataclass
class PluginRun:
    """One plugin's part of a run: its result, or the error that stopped it.

    Attributes:
        name: the plugin's registered name.
        title: its title, as the report shows it.
        distribution: the package that installed it, and `version` that package's version.
        options: the options it ran with, and `defaults` their documented defaults.
        result: what it returned (checked), or None when it could not run.
        error: why it could not run, or None.
        traceback: the traceback of that error, when there is one.
        seconds: how long it ran (wall time).
    """

    name: str
    title: str
    distribution: str | None
    version: str | None
    options: dict[str, Any]
    defaults: dict[str, Any] = field(default_factory=dict)
    result: PluginResult | None = None
    error: str | None = None
    traceback: str | None = None
    seconds: float = 0.0

    @property
    def status(self) -> str:
        """ "ok", or "error" when the plugin could not run."""
        return "ok" if self.error is None else "error"

    def to_dict(self) -> dict[str, Any]:
        """The plugin's JSON entry: its data keys plus findings, tables and status."""
        result = self.result or PluginResult()
        entry = dict(result.data)
        entry.update(
            title=self.title,
            distribution=self.distribution,
            version=self.version,
            options=self.options,
            status=self.status,
            error=self.error,
            seconds=round(self.seconds, 3),
            findings=[f.to_dict() for f in result.findings],
            tables=[t.to_dict() for t in result.tables],
            figures=[fig.title for fig in result.figures],
        )
        return to_jsonable(entry)


@dataclass
class AnalysisResult:
    """What `keraslens.analyze` returns.

    Attributes:
        meta: model, data, versions, seed and settings of the run.
        plugins: plugin name -> `PluginRun`, in run order.
        stats: the shared capture statistics (layer path -> `LayerStats`).
        extra: additional report sections (e.g. the training history of a callback).
    """

    meta: dict[str, Any]
    plugins: dict[str, PluginRun]
    stats: dict[str, LayerStats] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def findings(self) -> list[Finding]:
        """Every finding, most severe first."""
        found = [f for run in self.plugins.values() if run.result for f in run.result.findings]
        return sorted(found, key=lambda f: SEVERITIES.index(f.severity))

    @property
    def errors(self) -> list[PluginRun]:
        """Plugins that could not run."""
        return [run for run in self.plugins.values() if run.error is not None]

    @property
    def counts(self) -> dict[str, int]:
        """How many findings of each severity, and how many plugin errors."""
        counts = dict.fromkeys(SEVERITIES, 0)
        for finding in self.findings:
            counts[finding.severity] += 1
        counts["plugin_errors"] = len(self.errors)
        return counts

    @property
    def status(self) -> str:
        """The verdict: "error" (a plugin could not run), "fail", "warn" or "pass"."""
        counts = self.counts
        if counts["plugin_errors"]:
            return "error"
        if counts["error"]:
            return "fail"
        if counts["warning"]:
            return "warn"
        return "pass"

    def to_dict(self, full: bool = False) -> dict[str, Any]:
        """The JSON twin of the report: everything but the images.

        Args:
            full: keep every layer's capture histogram and per-unit arrays; by default
                only layers of at most `FULL_UNITS` units keep their per-unit arrays.
        """
        twin = to_jsonable(
            {
                "meta": self.meta,
                "status": self.status,
                "counts": self.counts,
                "findings": [f.to_dict() for f in self.findings],
                "plugins": {name: run.to_dict() for name, run in self.plugins.items()},
            }
        )
        # Already JSON-safe (`LayerStats.to_dict`), and millions of values on a large
        # model: not walked a second time.
        twin["layers"] = {key: _layer_entry(s, full) for key, s in self.stats.items()}
        twin.update(to_jsonable(self.extra_dict()))
        return twin

    def extra_dict(self) -> dict[str, Any]:
        """JSON-safe additional sections."""
        return {key: value for key, value in self.extra.items() if not key.startswith("_")}

    def to_json_text(self, full: bool = False) -> str:
        """The JSON twin as compact text (no indentation), as `to_json` writes it; `full`
        as in `to_dict`."""
        return json.dumps(self.to_dict(full), separators=(",", ":"), allow_nan=False) + "\n"

    def to_json(self, path: str | os.PathLike, full: bool = False) -> Path:
        """Write the JSON twin atomically, compact (no indentation); `full` as in `to_dict`."""
        return write_atomic(path, self.to_json_text(full))

    def to_html(self, path: str | os.PathLike) -> Path:
        """Write the self-contained HTML report atomically."""
        from keraslens.report import render_html

        return write_atomic(path, render_html(self))


def _layer_entry(stats: LayerStats, full: bool) -> dict[str, Any]:
    """A layer's JSON entry. Without `full` it leaves out the capture histogram (hundreds
    of fixed buckets; activation-stats keeps at most 64 bins of it) and, for a layer of
    more than `FULL_UNITS` units, its arrays of one value per unit; `omitted` names them."""
    entry = stats.to_dict()
    if full:
        return entry
    omitted = ["histogram"]
    if stats.units > FULL_UNITS:
        omitted += [
            key
            for key, value in entry.items()
            if isinstance(value, list) and len(value) == stats.units and key != "shape"
        ]
    kept = {key: value for key, value in entry.items() if key not in omitted}
    kept["omitted"] = omitted
    return kept
