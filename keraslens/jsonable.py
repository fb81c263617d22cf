"""Plain-Python forms of NumPy values, for JSON."""

from __future__ import annotations

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
        return to_jsonable(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if np.isfinite(value) else None
    return value
