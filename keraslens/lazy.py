"""Names imported on first use: a package's public names and a registry's classes.

Importing TensorFlow takes seconds. What only names things (`keraslens --help`,
`keraslens plugins`, a plugin's option choices) reads them through these without it;
the module behind a name is imported when the name is first used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def exports(namespace: dict[str, Any], where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` (PEP 562) importing each name of `where` from its module.

    Args:
        namespace: the package's `globals()`; a name, once imported, is kept there.
        where: public name -> the module that defines it. A name whose module is
            `<package>.<name>` stands for that submodule itself.

    Example:

    ```python
    # in a package's __init__.py
    __getattr__ = exports(globals(), {"attribute": "keraslens.attr.api"})
    ```
    """
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(where[name])
        value = module if where[name] == f"{package}.{name}" else getattr(module, name)
        namespace[name] = value
        return value

    return __getattr__


class Registry(MutableMapping[str, T], Generic[T]):
    """Name -> class, each declared as `"module:Class"` and imported when first looked up.

    Listing the names (`list(registry)`, `name in registry`) imports nothing; a class
    assigned by a user (`registry["mine"] = Mine`) is kept as given.

    Args:
        where: name -> `"module:Class"`, in the order the names are listed.

    Example:

    ```python
    METHODS = Registry({"saliency": "keraslens.attr.saliency:Saliency"})
    "saliency" in METHODS  # True, and nothing imported
    METHODS["saliency"].title  # imports keraslens.attr.saliency
    ```
    """

    def __init__(self, where: Mapping[str, str]) -> None:
        self._entries: dict[str, Any] = dict(where)

    def __getitem__(self, name: str) -> T:
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attribute = entry.partition(":")
            entry = self._entries[name] = getattr(importlib.import_module(module), attribute)
        return entry

    def __setitem__(self, name: str, value: T) -> None:
        self._entries[name] = value

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({list(self._entries)})"
