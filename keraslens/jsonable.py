"""Plain-Python forms of NumPy values, for JSON."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def to_jsonable(value: Any) -> Any:
    """Convert NumPy scalars/arrays and tuples recursively into JSON-safe values.

    Non-finite floats become None (JSON has no NaN).

    Example:

    >>> to_jsonable({"mean": np.array([0.5, np.nan]), "units": np.int64(2)})
    {'mean': [0.5, None], 'units': 2}
    """
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _array(value)
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def _array(values: np.ndarray) -> Any:
    """An array as nested lists. Numbers convert in one call, not one Python check per
    element: a report's per-unit arrays hold millions of them."""
    if values.dtype.kind in "biu":
        return values.tolist()
    if values.dtype.kind == "f":
        finite = np.isfinite(values)
        if finite.all():
            return values.tolist()
        kept = values.astype(object)
        kept[~finite] = None
        return kept.tolist()
    return to_jsonable(values.tolist())
