"""The plugin contract: what an analysis declares and what it returns.

A plugin is a subclass of `Plugin` registered under the entry-point group
`keraslens.plugins`. keraslens validates its options before any work starts,
gives it an `AnalysisContext` and expects a `PluginResult` back.
"""

from __future__ import annotations

import base64
import io
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from keraslens.errors import KeraslensError
from keraslens.jsonable import to_jsonable

if TYPE_CHECKING:
    import keras

    from keraslens.capture import LayerStats, Lens

PLUGIN_API_VERSION = 1
"""The plugin API this keraslens implements; a plugin declares the one it targets."""

SUPPORTED_API_VERSIONS = frozenset({1})

NEEDS = frozenset({"stats", "activations", "gradients", "labels", "sample", "outputs"})
"""What a plugin may ask for: capture statistics, raw activations of a few samples,
gradients (the model itself), labels, a small sample of the data."""

Severity = Literal["info", "warning", "error"]
SEVERITIES: tuple[Severity, ...] = ("error", "warning", "info")
"""Finding severities, most severe first: the order of the report and of the verdict."""
_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


@dataclass(frozen=True)
class Option:
    """One typed, validated plugin option.

    Args:
        type: `float`, `int`, `bool`, `str`, or `list` (of str).
        default: the documented default.
        help: one line shown by `keraslens plugins` and in the docs.
        choices: allowed values (for `str`, or each item of a `list`).
        min: inclusive lower bound for numbers.
        max: inclusive upper bound for numbers.
    """

    type: type
    default: Any
    help: str
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None

    def parse(self, name: str, value: Any) -> Any:
        """Convert `value` (possibly a command-line string) and validate it."""
        try:
            value = self._convert(value)
        except (TypeError, ValueError):
            raise KeraslensError(
                f"Option {name!r} expects {self.type.__name__}, got {value!r}."
            ) from None
        items = value if isinstance(value, list) else [value]
        if self.choices is not None:
            bad = [v for v in items if v not in self.choices]
            if bad:
                raise KeraslensError(
                    f"Option {name!r} got {bad[0]!r}; allowed: {', '.join(map(str, self.choices))}."
                )
        if self.min is not None and value < self.min:
            raise KeraslensError(f"Option {name!r} must be >= {self.min}, got {value!r}.")
        if self.max is not None and value > self.max:
            raise KeraslensError(f"Option {name!r} must be <= {self.max}, got {value!r}.")
        return value

    def _convert(self, value: Any) -> Any:
        if self.type is bool:
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered in ("1", "true", "yes", "on"):
                    return True
                if lowered in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(value)
            return bool(value)
        if self.type is list:
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)):
                raise TypeError(value)
            return [str(v) for v in value]
        if self.type is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError(value)
            return int(value)
        if self.type is float:
            if isinstance(value, bool):
                raise TypeError(value)
            converted = float(value)
            if not np.isfinite(converted):
                raise ValueError(value)
            return converted
        if not isinstance(value, self.type):
            raise TypeError(value)
        return value


@dataclass
class Finding:
    """One thing a plugin found, with the measured value and the threshold it crossed.

    Args:
        severity: "info", "warning" or "error".
        message: what was found, in plain language, with the numbers.
        layer: the layer path, or None for a model-wide finding.
        units: unit indices concerned (may be empty).
        value: the measured value.
        threshold: the threshold it crossed.
        threshold_name: the setting that holds it, as `plugin.option`.
        label: a short plain-language label ("dead units").
        fix: a one-line suggested fix.
        plugin: filled in by the runner.
    """

    severity: Severity
    message: str
    layer: str | None = None
    units: list[int] = field(default_factory=list)
    value: float | None = None
    threshold: float | None = None
    threshold_name: str | None = None
    label: str = ""
    fix: str = ""
    plugin: str = ""

    def __post_init__(self) -> None:
        self.units = [int(u) for u in self.units]
        self.check()

    def check(self) -> None:
        """Raise `ValueError` when a field holds what a finding cannot.

        Runs on creation, and again in the runner: a finding changed after it was made is
        caught before it reaches the report or the gate.
        """
        if self.severity not in SEVERITIES:
            raise ValueError(
                f"Finding severity must be one of {SEVERITIES}, got {self.severity!r}."
            )
        for name in ("message", "label", "fix", "plugin"):
            _require_text(f"Finding {name}", getattr(self, name))
        for name in ("layer", "threshold_name"):
            _require_text(f"Finding {name}", getattr(self, name), optional=True)
        for name in ("value", "threshold"):
            number = getattr(self, name)
            if number is not None and not _is_finite_number(number):
                raise ValueError(f"Finding {name} must be a finite number or None, got {number!r}.")
        if not isinstance(self.units, (list, tuple)) or not all(
            isinstance(u, (int, np.integer)) and not isinstance(u, bool) for u in self.units
        ):
            raise ValueError(f"Finding units must be a list of unit indices, got {self.units!r}.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return to_jsonable(asdict(self))


@dataclass
class Table:
    """A table for the report: a title, column names and rows of plain values."""

    title: str
    columns: list[str]
    rows: list[list[Any]]
    layer: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return to_jsonable(asdict(self))

    def checked(self) -> Table:
        """A copy of the table, after checking that every row has one plain value per column.

        Raises:
            ValueError: naming the first part that is not a title, column names or rows.
        """
        _require_text("Table title", self.title)
        _require_text("Table layer", self.layer, optional=True)
        if not isinstance(self.columns, (list, tuple)) or not all(
            isinstance(c, str) for c in self.columns
        ):
            raise ValueError(f"Table {self.title!r}: columns must be a list of names.")
        if not isinstance(self.rows, (list, tuple)):
            raise ValueError(
                f"Table {self.title!r}: rows must be a list of rows, got {type(self.rows).__name__}."
            )
        rows = []
        for index, row in enumerate(self.rows):
            if not isinstance(row, (list, tuple)) or len(row) != len(self.columns):
                raise ValueError(
                    f"Table {self.title!r}: row {index} must be a list of {len(self.columns)} "
                    f"values (one per column), got {row!r}."
                )
            for cell in row:
                if not isinstance(cell, _PLAIN):
                    raise ValueError(
                        f"Table {self.title!r}: row {index} holds a {type(cell).__name__}; a "
                        "cell is a string, a number, a boolean or None."
                    )
            rows.append(list(row))
        return Table(self.title, list(self.columns), rows, self.layer)


@dataclass
class Figure:
    """A figure for the report, stored as PNG bytes (embedded as base64, never linked)."""

    title: str
    png: bytes
    caption: str = ""
    layer: str | None = None

    @classmethod
    def from_matplotlib(
        cls, fig: Any, title: str, caption: str = "", layer: str | None = None, dpi: int = 80
    ) -> Figure:
        """Render a matplotlib figure to PNG (deterministically) and close it."""
        import matplotlib.pyplot as plt

        buffer = io.BytesIO()
        # No Software/date metadata: the same figure gives the same bytes.
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
        plt.close(fig)
        return cls(title=title, png=buffer.getvalue(), caption=caption, layer=layer)

    @property
    def data_uri(self) -> str:
        """The PNG as a `data:` URI."""
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")

    def check(self) -> None:
        """Raise `ValueError` unless the figure is PNG bytes with a title."""
        _require_text("Figure title", self.title)
        _require_text("Figure caption", self.caption)
        _require_text("Figure layer", self.layer, optional=True)
        if not isinstance(self.png, bytes) or not self.png.startswith(_PNG_SIGNATURE):
            raise ValueError(f"Figure {self.title!r}: png must be the bytes of a PNG image.")


@dataclass
class PluginResult:
    """What a plugin returns: JSON data, findings, tables and figures.

    `data` is merged into the plugin's entry of the JSON result, so its keys are
    the plugin's stable output (`result["plugins"][name][key]`).
    """

    data: dict[str, Any] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)

    def checked(self, plugin: str) -> PluginResult:
        """A copy of the result for the report, its findings signed with `plugin`.

        Everything is checked first, so that a malformed result is its plugin's error and
        never a broken report or gate.

        Raises:
            TypeError: a part is not of the type the contract names.
            ValueError: a part holds a value it cannot (see `Finding.check`, `Table.checked`).
        """
        if not isinstance(self.data, dict):
            raise TypeError(f"data must be a dict, got {type(self.data).__name__}.")
        check_jsonable(self.data, "data")
        for name, kind in (("findings", Finding), ("tables", Table), ("figures", Figure)):
            items = getattr(self, name)
            if not isinstance(items, (list, tuple)):
                raise TypeError(f"{name} must be a list, got {type(items).__name__}.")
            for item in items:
                if not isinstance(item, kind):
                    raise TypeError(f"{name} holds a {type(item).__name__}, not a {kind.__name__}.")
        for figure in self.figures:
            figure.check()
        return PluginResult(
            data=dict(self.data),
            findings=[replace(f, plugin=plugin, units=list(f.units)) for f in self.findings],
            tables=[table.checked() for table in self.tables],
            figures=list(self.figures),
        )


@dataclass
class AnalysisContext:
    """Everything a plugin may read. Fields it did not ask for in `needs` may be None.

    Args:
        model: the Keras model under analysis (never modified).
        lens: the `Lens` wrapping it, for raw activations of a few samples.
        stats: layer path -> `LayerStats` from the shared capture pass.
        sample: a small sample of the inputs (as the model takes them).
        labels: labels for `sample`, when given.
        outputs: the model's outputs on `sample`, as `model.predict` returns them (one
            prediction pass shared by every plugin that needs "outputs").
        options: this plugin's validated options.
        seed: the run's seed; use it for anything random.
        minimal: True when the user asked for a quick run without figures.
    """

    model: keras.Model
    lens: Lens | None
    stats: Mapping[str, LayerStats] | None
    sample: Any
    labels: np.ndarray | None
    options: dict[str, Any]
    seed: int = 0
    minimal: bool = False
    outputs: Any = None


class Plugin:
    """Base class of every analysis.

    Subclasses set the class attributes and implement `analyze`. Register the class
    under the entry-point group `keraslens.plugins`.

    Example:

    ```python
    class UnitCount(Plugin):
        name = "unit-count"
        title = "Units per layer"
        needs = frozenset({"stats"})
        options = {"min_units": Option(int, 1, "Smallest layer worth listing.", min=1)}

        def analyze(self, ctx):
            layers = {k: int(s.units) for k, s in ctx.stats.items()
                      if s.units >= ctx.options["min_units"]}
            return PluginResult(data={"layers": layers})
    ```
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    description: ClassVar[str] = ""
    api_version: ClassVar[int] = PLUGIN_API_VERSION
    options: ClassVar[dict[str, Option]] = {}
    needs: ClassVar[frozenset[str]] = frozenset({"stats"})
    expensive: ClassVar[bool] = False
    """Skipped by `--minimal`."""
    training_metrics: ClassVar[dict[str, str | None]] = {}
    """Per-layer figures `LensCallback` records in its training history: a key of
    `result.data["layers"][layer]` -> the option holding its alert threshold (None: it
    alerts only at a threshold given to the callback)."""

    def analyze(self, ctx: AnalysisContext) -> PluginResult:
        """Turn the analysis context into a result."""
        raise NotImplementedError

    @classmethod
    def validate(cls, model: keras.Model, options: Mapping[str, Any]) -> None:
        """Refuse options this model cannot honour (a layer it lacks), before any work.

        Called once per analysis, before the capture. Raise a `KeraslensError` that names
        the option and lists what exists; the default accepts everything.
        """

    @classmethod
    def capture_settings(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword arguments for the shared `Lens` (e.g. `{"epsilon": 0.01}`); default none."""
        return {}

    @classmethod
    def parse_options(cls, given: Mapping[str, Any] | None) -> dict[str, Any]:
        """Defaults overlaid with `given`, each validated; unknown keys are rejected."""
        given = dict(given or {})
        unknown = sorted(set(given) - set(cls.options))
        if unknown:
            known = ", ".join(sorted(cls.options)) or "none"
            raise KeraslensError(
                f"Plugin {cls.name!r} has no option {unknown[0]!r}; its options: {known}."
            )
        parsed = {key: opt.default for key, opt in cls.options.items()}
        for key, value in given.items():
            parsed[key] = cls.options[key].parse(f"{cls.name}.{key}", value)
        return parsed

    @classmethod
    def check_declaration(cls) -> None:
        """Raise `ValueError` when the class does not honour the contract."""
        if not isinstance(cls.name, str) or not _NAME_RE.match(cls.name):
            raise ValueError(f"Plugin name must be kebab-case, got {cls.name!r}.")
        if cls.api_version not in SUPPORTED_API_VERSIONS:
            raise ValueError(
                f"Plugin {cls.name!r} targets plugin API {cls.api_version}; this keraslens "
                f"supports {sorted(SUPPORTED_API_VERSIONS)}. Upgrade the plugin or keraslens."
            )
        unknown = set(cls.needs) - NEEDS
        if unknown:
            raise ValueError(
                f"Plugin {cls.name!r} needs unknown input(s) {sorted(unknown)}; "
                f"allowed: {sorted(NEEDS)}."
            )
        for key, opt in cls.options.items():
            if not isinstance(opt, Option):
                raise ValueError(f"Plugin {cls.name!r}: option {key!r} is not an Option.")


_PLAIN = (str, int, float, np.integer, np.floating, np.bool_, type(None))
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_DEPTH = 64


def _require_text(name: str, value: Any, optional: bool = False) -> None:
    if not (isinstance(value, str) or (optional and value is None)):
        allowed = "a string or None" if optional else "a string"
        raise ValueError(f"{name} must be {allowed}, got {value!r}.")


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value)


def check_jsonable(value: Any, where: str = "value") -> None:
    """Raise `TypeError` naming the first part of `value` that JSON cannot hold.

    Allowed: dicts with string or integer keys, lists, tuples, strings, numbers (non-finite
    ones become null), booleans, None, and NumPy numbers and numeric arrays. Refused: sets,
    other objects, object arrays, a structure that contains itself or nests deeper than 64.

    Example:

    ```python
    check_jsonable({"layers": {"dense": [0.1, 0.2]}}, "data")  # fine
    check_jsonable({"units": {1, 2}}, "data")  # TypeError: data['units'] is a set ...
    ```
    """
    _check_jsonable(value, where, set())


def _check_jsonable(value: Any, where: str, open_ids: set[int]) -> None:
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise TypeError(f"{where} is an array of dtype {value.dtype}; JSON holds numbers.")
        return
    if not isinstance(value, (dict, list, tuple)):
        raise TypeError(
            f"{where} is a {type(value).__name__}, which JSON cannot hold; use a list, a dict, "
            "a string or a number."
        )
    if id(value) in open_ids:
        raise TypeError(f"{where} contains itself.")
    if len(open_ids) >= _MAX_DEPTH:
        raise TypeError(f"{where} nests deeper than {_MAX_DEPTH} levels.")
    open_ids.add(id(value))
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        if isinstance(value, dict) and not isinstance(key, (str, int, np.integer)):
            raise TypeError(f"{where} has a key {key!r}; keys are strings or integers.")
        _check_jsonable(item, f"{where}[{key!r}]", open_ids)
    open_ids.discard(id(value))
