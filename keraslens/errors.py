"""The exception family keraslens raises for problems a user can fix, and how its
messages (and the report) print a shape."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class KeraslensError(ValueError):
    """A problem with the user's model, data or settings; the message names the fix."""


def shape_text(shape: Iterable[Any]) -> str:
    """A shape as users read it, an unknown size as None.

    Example:

    >>> shape_text((None, 28, 28, 1))
    '(None, 28, 28, 1)'
    """
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"
