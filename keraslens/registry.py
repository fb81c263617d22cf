"""Discovering plugins through the `keraslens.plugins` entry-point group.

A plugin that cannot be imported, breaks the contract or targets another API
version is listed as failed, with the reason; it never stops the others.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from keraslens.errors import KeraslensError
from keraslens.plugin import Plugin

GROUP = "keraslens.plugins"


@dataclass
class PluginInfo:
    """An installed plugin: where it comes from and whether it loaded.

    `plugin` is the plugin class (or the instance a factory returned) when
    `status == "loaded"`; otherwise `error` says why it failed.
    """

    name: str
    target: str
    distribution: str | None
    version: str | None
    plugin: type[Plugin] | Plugin | None = None
    error: str | None = None

    @property
    def status(self) -> str:
        """ "loaded" or "failed"."""
        return "loaded" if self.error is None else "failed"

    @property
    def title(self) -> str:
        """The plugin's title, or its name when it failed to load."""
        return getattr(self.plugin, "title", "") or self.name

    def instantiate(self) -> Plugin:
        """A fresh plugin object for one run."""
        return self.plugin() if inspect.isclass(self.plugin) else self.plugin


def available() -> list[PluginInfo]:
    """Every installed plugin, sorted by name, each loaded or marked failed."""
    infos: dict[str, PluginInfo] = {}
    for entry in sorted(entry_points(group=GROUP), key=lambda e: (e.name, e.value)):
        info = _load(entry)
        if entry.name in infos:
            first = infos[entry.name]
            info.plugin = None
            info.error = (
                f"Plugin name {entry.name!r} is registered twice ({first.distribution} and "
                f"{info.distribution}); uninstall one of them."
            )
            infos[f"{entry.name} ({info.distribution})"] = info
            continue
        infos[entry.name] = info
    return sorted(infos.values(), key=lambda i: i.name)


def _load(entry: EntryPoint) -> PluginInfo:
    dist = entry.dist
    info = PluginInfo(
        name=entry.name,
        target=entry.value,
        distribution=dist.metadata["Name"] if dist is not None else None,
        version=dist.version if dist is not None else None,
    )
    try:
        obj = entry.load()
        plugin = obj if inspect.isclass(obj) else obj()
        cls = plugin if inspect.isclass(plugin) else type(plugin)
        if not (inspect.isclass(cls) and issubclass(cls, Plugin)):
            raise TypeError(f"{entry.value} is not a keraslens.plugin.Plugin subclass")
        cls.check_declaration()
        if cls.name != entry.name:
            raise ValueError(
                f"the class declares name {cls.name!r} but is registered as {entry.name!r}"
            )
        info.plugin = plugin
    except (Exception, SystemExit) as error:  # a broken plugin must not break discovery
        info.error = f"{type(error).__name__}: {error}"
    return info


def select(
    infos: list[PluginInfo], names: list[str] | None = None, exclude: list[str] | None = None
) -> list[PluginInfo]:
    """The plugins to run: `names` (default: every installed one) minus `exclude`.

    An unknown name is a `KeraslensError` that lists the installed plugins.
    """
    by_name = {info.name: info for info in infos}
    for name in [*(names or []), *(exclude or [])]:
        if name not in by_name:
            raise KeraslensError(
                f"Unknown plugin {name!r}. Installed plugins: {', '.join(sorted(by_name)) or 'none'}."
            )
    chosen = list(infos) if names is None else [by_name[n] for n in dict.fromkeys(names)]
    return [info for info in chosen if info.name not in set(exclude or [])]
