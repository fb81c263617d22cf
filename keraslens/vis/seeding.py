"""Seeding the global NumPy generator that tf-keras-vis draws from, without leaking it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np


@contextmanager
def numpy_seed(seed: int) -> Iterator[None]:
    """Seed `np.random` inside the block and restore its previous state afterwards.

    tf-keras-vis draws SmoothGrad noise and jitter from the global generator, so this is
    how a keraslens seed reaches it; the caller's own random stream is left untouched.
    """
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)
