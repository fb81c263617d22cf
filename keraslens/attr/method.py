"""The contract every attribution method follows: options declared, one `attribute` call."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from keraslens.attr.scorer import Scorer
from keraslens.errors import KeraslensError
from keraslens.plugin import Option


class AttributionMethod(ABC):
    """An attribution method: validated options, then `attribute(scorer)` on batches.

    A new method is one module with a subclass, plus a line in `keraslens.attr.METHODS`.
    Subclasses declare `name`, `title`, `citation` and their `options`; the values are set
    as attributes of the same name, validated, before any work.

    Args:
        **options: values for the declared `options`; the rest keep their defaults.

    Raises:
        KeraslensError: for an unknown option or a value out of range.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    citation: ClassVar[str]
    options: ClassVar[Mapping[str, Option]] = {}
    relu_rule: ClassVar[str | None] = None
    """`"guided"` or `"deconvnet"` to run on a graph whose ReLUs follow that backward rule."""
    uses_layer: ClassVar[bool] = False
    """True for class activation maps, taken at a spatial layer and upsampled to the input."""
    magnitude: ClassVar[bool] = False
    """True when the values are magnitudes (the picture takes |.| max over channels);
    False for signed contributions (the picture sums over channels)."""
    reads_gradients: ClassVar[bool] = False
    """True when `attribute` reads `scorer.gradient`."""
    per_position: ClassVar[bool] = False
    """True when a value is one per position, repeated over its channels (perturbation
    methods): token attributions then take that value once instead of summing the features."""

    def __init__(self, **options: Any) -> None:
        apply_options(self, self.title, self.options, options)

    @abstractmethod
    def attribute(self, scorer: Scorer) -> np.ndarray:
        """Attributions of `scorer`'s samples, shaped like `scorer.value` (signed, raw)."""

    def settings(self) -> dict[str, Any]:
        """The options in force, for reports."""
        return {key: _plain(getattr(self, key)) for key in self.options}


def apply_options(
    target: Any, label: str, declared: Mapping[str, Option], given: Mapping[str, Any]
) -> None:
    """Set each `declared` option on `target`, from `given` or its default, validated.

    Raises:
        KeraslensError: naming `label`, for an unknown option or a value out of range.
    """
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise KeraslensError(
            f"{label} has no option {unknown[0]!r}; its options: {', '.join(declared) or 'none'}."
        )
    for key, option in declared.items():
        value = given.get(key, option.default)
        try:
            setattr(target, key, option.parse(key, value) if option.type is not object else value)
        except ValueError as error:
            raise KeraslensError(f"{label}: {error}") from None


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return f"array{value.shape}"
    return value
