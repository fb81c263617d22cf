"""The CI gate of `keraslens check`: rules on measured values, optionally against a baseline.

A rule is `plugin.key OP limit` with OP one of `>`, `>=`, `<`, `<=`. `plugin.key`
names a per-layer value of the JSON result (`plugins[plugin]["layers"][layer][key]`,
each layer checked), a top-level number (`plugins[plugin][key]`), or a dotted path to
one (`heatmaps.metrics.gradcam.mufidelity`, a metric's mean). A limit with an
explicit sign (`>+0.05`, `<-0.1`) is relative: it compares the change since the
baseline (the JSON twin of an accepted run). Write an absolute negative limit in
parentheses: `activation-stats.mean<(-5)`.
"""

from __future__ import annotations

import json
import operator
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from keraslens import paths
from keraslens.errors import KeraslensError, shape_text

EXIT_CLEAN = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PLUGIN_ERROR = 3
EXIT_INTERNAL = 4

_OPERATORS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
_RULE_RE = re.compile(
    r"^\s*(?P<plugin>[a-z][a-z0-9-]*)\.(?P<key>[A-Za-z_][\w.+-]*?)\s*(?P<op>>=|<=|>|<)\s*"
    r"(?:(?P<sign>[+-])(?P<delta>\d+(?:\.\d*)?(?:e[+-]?\d+)?)"
    r"|(?P<open>\()?(?P<limit>-?\d+(?:\.\d*)?(?:e[+-]?\d+)?)(?(open)\)))\s*$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Rule:
    """One `--fail-on` rule."""

    text: str
    plugin: str
    key: str
    op: str
    limit: float
    relative: bool

    @classmethod
    def parse(cls, text: str) -> Rule:
        """Parse `"dead-neurons.dead_fraction>0.2"` (or a relative `">+0.05"`)."""
        match = _RULE_RE.match(text)
        if match is None:
            raise KeraslensError(
                f"--fail-on {text!r} is not a rule like 'dead-neurons.dead_fraction>0.2' "
                "(operators > >= < <=; a signed limit such as >+0.05 is relative to --baseline)."
            )
        relative = match["sign"] is not None
        limit = float(match["sign"] + match["delta"]) if relative else float(match["limit"])
        return cls(text.strip(), match["plugin"], match["key"], match["op"], limit, relative)


@dataclass
class Violation:
    """A rule crossed by one layer (or by a top-level value when `layer` is None)."""

    rule: str
    layer: str | None
    value: float
    baseline: float | None
    limit: float

    def describe(self) -> str:
        """One line: the rule, where, and the measured value."""
        where = f"layer {self.layer}" if self.layer is not None else "model"
        if self.baseline is None:
            return f"{self.rule}: {where} measured {self.value:.6g}"
        change = self.value - self.baseline
        return (
            f"{self.rule}: {where} measured {self.value:.6g}, baseline {self.baseline:.6g} "
            f"(change {change:+.6g})"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)


def read_baseline(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON twin of an accepted run."""
    target = Path(path)
    paths.existing(target, "Baseline", folder_ok=False)
    try:
        baseline = json.loads(target.read_text(encoding="utf-8"))
    except OSError as error:
        raise KeraslensError(
            f"Cannot read baseline {str(target)!r}: {error.strerror or error}."
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise KeraslensError(f"Baseline {str(target)!r} is not JSON: {error}.") from None
    malformed = _malformed_part(baseline)
    if malformed is not None:
        raise KeraslensError(
            f"Baseline {str(target)!r} is not a keraslens JSON report (written by --json): "
            f"{malformed}."
        )
    return baseline


def _malformed_part(baseline: Any) -> str | None:
    """What keeps `baseline` from being read as a JSON twin, or None when it can be."""
    if not isinstance(baseline, dict) or not isinstance(baseline.get("plugins"), dict):
        return "it has no 'plugins' object"
    for name, entry in baseline["plugins"].items():
        if not isinstance(entry, dict):
            return f"plugins[{name!r}] is {type(entry).__name__}, not an object"
        layers = entry.get("layers")
        if layers is not None and not (
            isinstance(layers, dict) and all(isinstance(v, dict) for v in layers.values())
        ):
            return f"plugins[{name!r}]['layers'] is not an object of per-layer objects"
    return None


def check_rules(rules: list[Rule], baseline: Mapping[str, Any] | None) -> None:
    """Raise before any work when a relative rule has no baseline to compare with."""
    for rule in rules:
        if rule.relative and baseline is None:
            raise KeraslensError(
                f"--fail-on {rule.text!r} is relative (signed limit) and needs --baseline "
                "accepted.json."
            )


def check_plugins(rules: list[Rule], selected: list[str]) -> None:
    """Raise before any work when a rule names a plugin that will not run."""
    for rule in rules:
        if rule.plugin not in selected:
            raise KeraslensError(
                f"--fail-on {rule.text!r}: plugin {rule.plugin!r} is not among the plugins "
                f"this run selects ({', '.join(selected) or 'none'}); select it with "
                "--plugin, or correct the rule."
            )


def check_baseline(
    baseline: Mapping[str, Any], result: Mapping[str, Any], name: str = "the baseline"
) -> None:
    """Refuse a baseline taken on another model: other input shapes, or no layer in common
    with `result` (relative rules would then compare nothing and pass).

    Args:
        baseline: the JSON twin of the accepted run (`read_baseline`).
        result: the JSON twin of this run.
        name: how the message names the baseline (its path).
    """
    before, now = _identity(baseline), _identity(result)
    differs = []
    if before["inputs"] and now["inputs"] and before["inputs"] != now["inputs"]:
        differs.append("input shapes")
    if before["layers"] and now["layers"] and not set(before["layers"]) & set(now["layers"]):
        differs.append("layers (none in common)")
    if not differs:
        return
    raise KeraslensError(
        f"Baseline {name!r} is from another model: its {' and '.join(differs)} differ. "
        f"Baseline: {_describe(before)}; this run: {_describe(now)}. Pass the JSON twin of "
        "an accepted run of this model."
    )


def _identity(twin: Mapping[str, Any]) -> dict[str, Any]:
    """The model, input shapes and layer paths a JSON twin was measured on."""
    meta = twin.get("meta") if isinstance(twin.get("meta"), Mapping) else {}
    layers = dict.fromkeys(twin.get("layers") or {})
    for entry in (twin.get("plugins") or {}).values():
        if isinstance(entry, Mapping) and isinstance(entry.get("layers"), Mapping):
            layers.update(dict.fromkeys(entry["layers"]))
    return {
        "model": meta.get("model"),
        "inputs": [tuple(s) for s in meta.get("input_shapes") or [] if isinstance(s, list)],
        "layers": list(layers),
    }


def _describe(identity: Mapping[str, Any]) -> str:
    inputs = ", ".join(shape_text(shape) for shape in identity["inputs"])
    layers = identity["layers"]
    shown = ", ".join(layers[:4]) + (f" and {len(layers) - 4} more" if len(layers) > 4 else "")
    return f"model {identity['model']!r}, inputs {inputs or 'unknown'}, layers {shown or 'none'}"


def evaluate(
    rules: list[Rule], result: Mapping[str, Any], baseline: Mapping[str, Any] | None = None
) -> list[Violation]:
    """Every violation of `rules` in `result` (a JSON twin as a dict), in rule order.

    A rule on a plugin that could not run is skipped (the plugin error decides the
    exit code); a rule on a key the plugin does not report is a `KeraslensError`.
    """
    violations = []
    for rule in rules:
        current = _values(result, rule, "this run")
        if current is None:
            continue
        before = _values(baseline, rule, "the baseline") if rule.relative else None
        compare = _OPERATORS[rule.op]
        for layer, value in current.items():
            if rule.relative:
                if before is None or layer not in before:
                    continue
                if compare(value - before[layer], rule.limit):
                    violations.append(Violation(rule.text, layer, value, before[layer], rule.limit))
            elif compare(value, rule.limit):
                violations.append(Violation(rule.text, layer, value, None, rule.limit))
    return violations


def _values(result: Mapping[str, Any] | None, rule: Rule, what: str) -> dict | None:
    """Layer -> number for the rule's metric; a top-level value (layer None) only when
    the plugin reports no per-layer one."""
    plugins = (result or {}).get("plugins", {})
    if rule.plugin not in plugins:
        raise KeraslensError(
            f"--fail-on {rule.text!r}: plugin {rule.plugin!r} is not in {what}; it has: "
            f"{', '.join(sorted(plugins)) or 'none'}."
        )
    entry = plugins[rule.plugin]
    if entry.get("status") == "error":
        return None
    layers = entry.get("layers")
    found = {}
    if isinstance(layers, Mapping):
        found = {
            layer: float(values[rule.key])
            for layer, values in layers.items()
            if isinstance(values, Mapping) and _is_number(values.get(rule.key))
        }
    value = _at_path(entry, rule.key)
    if not found and _is_number(value):
        found = {None: float(value)}
    if not found:
        raise KeraslensError(
            f"--fail-on {rule.text!r}: {rule.plugin} reports no number {rule.key!r} "
            f"(per layer or overall) in {what}; it reports: {', '.join(_keys(entry))}."
        )
    return found


def _at_path(entry: Mapping[str, Any], key: str) -> Any:
    """`entry[key]`, or for a dotted key (`metrics.gradcam++.mufidelity`) the value down that
    path; a metric's summary (a dict with a `mean`) stands for its mean."""
    value: Any = entry
    for part in key.split(".") if "." in key else [key]:
        value = value.get(part) if isinstance(value, Mapping) else None
    if isinstance(value, Mapping) and "mean" in value:
        value = value["mean"]
    return value


def _keys(entry: Mapping[str, Any]) -> list[str]:
    keys = {k for k, v in entry.items() if _is_number(v)}
    for values in (entry.get("layers") or {}).values():
        if isinstance(values, Mapping):
            keys.update(k for k, v in values.items() if _is_number(v))
    return sorted(keys) or ["nothing numeric"]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def exit_code(result: Mapping[str, Any], violations: list[Violation], fail_on_warning: bool) -> int:
    """3 when a plugin could not run, 1 when a rule or an error finding (or a warning,
    with `fail_on_warning`) fails the gate, else 0."""
    counts = result.get("counts", {})
    if counts.get("plugin_errors"):
        return EXIT_PLUGIN_ERROR
    if violations or counts.get("error") or (fail_on_warning and counts.get("warning")):
        return EXIT_FAILED
    return EXIT_CLEAN
