"""Run settings from a `keraslens.toml` file and `--option plugin.key=value` flags.

Command-line values override the file; the file overrides the defaults.

```toml
plugins = ["dead-neurons", "saturation"]
exclude = []
layers = ["conv*"]
samples = 2000
batch_size = 128
seed = 0

[options.dead-neurons]
threshold = 0.3
```
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from keraslens import paths
from keraslens.errors import KeraslensError


@dataclass
class Settings:
    """Everything `keraslens.analyze` needs besides the model and the data."""

    plugins: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    layers: list[str] | None = None
    samples: int | None = None
    batch_size: int = 256
    seed: int = 0
    minimal: bool = False
    options: dict[str, dict[str, Any]] = field(default_factory=dict)


_KEYS = {f.name for f in fields(Settings)}
_TYPES = {
    "plugins": list,
    "exclude": list,
    "layers": list,
    "samples": int,
    "batch_size": int,
    "seed": int,
    "minimal": bool,
    "options": dict,
}


# NumPy's and TensorFlow's seeds are unsigned 32-bit integers.
SEED_RANGE = (0, 2**32 - 1)
_RANGES = {"samples": (1, None), "batch_size": (1, None), "seed": SEED_RANGE}


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The settings in a TOML file, checked for unknown keys and wrong types."""
    tomllib = _toml_reader()
    target = Path(path)
    paths.existing(target, "Config file", folder_ok=False)
    try:
        with target.open("rb") as stream:
            raw = tomllib.load(stream)
    except OSError as error:
        raise KeraslensError(
            f"Cannot read config file {str(target)!r}: {error.strerror or error}."
        ) from None
    except UnicodeDecodeError as error:
        raise KeraslensError(
            f"Config file {str(target)!r} is not UTF-8 text (at byte {error.start}); save it "
            "as UTF-8."
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise KeraslensError(f"Config file {str(target)!r} is not valid TOML: {error}.") from None
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise KeraslensError(
            f"Config file {str(target)!r} has unknown setting {unknown[0]!r}; allowed: "
            f"{', '.join(sorted(_KEYS))}."
        )
    for key, value in raw.items():
        wanted = _TYPES[key]
        if not isinstance(value, wanted) or (wanted is int and isinstance(value, bool)):
            raise KeraslensError(
                f"Config file {str(target)!r}: {key} must be a {wanted.__name__}, got {value!r}."
            )
        low, high = _RANGES.get(key, (None, None))
        if (low is not None and value < low) or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"{low} or more"
            raise KeraslensError(
                f"Config file {str(target)!r}: {key} must be {bound}, got {value!r}."
            )
    for plugin, options in raw.get("options", {}).items():
        if not isinstance(options, dict):
            raise KeraslensError(
                f"Config file {str(target)!r}: write plugin options as a table, "
                f"[options.{plugin}], not {options!r}."
            )
    return raw


def parse_options(items: Iterable[str]) -> dict[str, dict[str, str]]:
    """`["dead-neurons.threshold=0.3"]` -> `{"dead-neurons": {"threshold": "0.3"}}`.

    Values stay strings: each plugin's option schema converts and validates them.
    """
    parsed: dict[str, dict[str, str]] = {}
    for item in items:
        name, equals, value = item.partition("=")
        plugin, dot, key = name.strip().partition(".")
        if not (equals and dot and plugin and key):
            raise KeraslensError(
                f"--option {item!r} is not plugin.key=value (e.g. dead-neurons.threshold=0.3)."
            )
        parsed.setdefault(plugin, {})[key.strip()] = value.strip()
    return parsed


def settings(config: Mapping[str, Any] | None = None, **given: Any) -> Settings:
    """Settings from `config` (a `read_config` dict) overridden by `given` (None: not given).

    `given["options"]` is merged into the config's options key by key.
    """
    merged = dict(config or {})
    options = {plugin: dict(values) for plugin, values in merged.pop("options", {}).items()}
    for plugin, values in (given.pop("options", None) or {}).items():
        options.setdefault(plugin, {}).update(values)
    merged.update({key: value for key, value in given.items() if value not in (None, ())})
    for key in ("plugins", "exclude", "layers"):
        if key in merged:
            merged[key] = list(merged[key])
    return Settings(**merged, options=options)


def _toml_reader() -> Any:
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    try:
        import tomli
    except ImportError:
        raise KeraslensError(
            "Reading --config needs Python 3.11 or the tomli package: pip install tomli."
        ) from None
    return tomli
