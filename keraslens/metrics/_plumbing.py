"""What the metrics share: position maps, perturbation orders, start images, AUC, CI.

Attributions are compared position by position: an image's pixel (all its channels
together), a sequence's step, a table's feature. A position's relevance is the signed
sum of its channels' attributions, so a map shaped like the input, one without the
channel axis, and a CAM's `(N, H, W, 1)` all reduce to the same `(N, *positions)`.
"""

from __future__ import annotations

import hashlib
import weakref
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.stats import rankdata

from keraslens.errors import KeraslensError

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
START_IMAGES = ("zeros", "mean", "blur")

_BLURS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Per score graph, the last losing blur: several methods evaluated on the same samples
and targets (the heatmaps plugin's) search for it once."""


def positions_of(x: np.ndarray) -> tuple[int, ...]:
    """The position axes' sizes of a batch: all but the channel axis (tables: features)."""
    return tuple(x.shape[1:-1]) if x.ndim >= 3 else tuple(x.shape[1:])


def relevance(attributions: np.ndarray, x: np.ndarray) -> np.ndarray:
    """`(N, *positions)` float64: the channel sum of attributions shaped like `x`, without
    its channel axis, or with one channel."""
    values = np.asarray(attributions, dtype=np.float64)
    positions = positions_of(x)
    if values.shape == x.shape and x.ndim >= 3:
        values = values.sum(axis=-1)
    elif values.shape == (len(x), *positions, 1):
        values = values[..., 0]
    if values.shape != (len(x), *positions):
        raise KeraslensError(
            f"Attributions of shape {values.shape} do not match inputs of shape {x.shape}; "
            f"pass an array shaped like the input, like it without its channel axis "
            f"{(len(x), *positions)}, or with one channel."
        )
    if not np.isfinite(values).all():
        raise KeraslensError("The attributions hold NaN or inf; recompute them.")
    return values


def flat(maps: np.ndarray) -> np.ndarray:
    """`(N, positions)`: each sample's map as one row."""
    return maps.reshape(len(maps), -1)


def ranks(maps: np.ndarray, descending: bool = True) -> np.ndarray:
    """Each position's rank in its map, 0 for the most relevant (ties by position)."""
    rows = flat(maps)
    order = np.argsort(-rows if descending else rows, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(rows.shape[1])[None, :], axis=1)
    return rank


def painted(
    source: np.ndarray, canvas: np.ndarray, rank: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """`(n * len(counts), *input)`: for each count k, `canvas` with its k first-ranked
    positions taken from `source` (all of a position's channels together)."""
    shape = canvas.shape
    mask = rank[:, None, :] < counts[None, :, None]
    mask = mask.reshape(len(rank), len(counts), *positions_of(canvas))
    if canvas.ndim >= 3:
        mask = mask[..., None]
    return np.where(mask, source[:, None], canvas[:, None]).reshape(-1, *shape[1:])


def step_counts(total: int, steps: int, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """`steps + 1` position counts evenly spread from `low` to `high` of `total`."""
    return np.round(np.linspace(low * total, high * total, steps + 1)).astype(int)


def auc(curves: np.ndarray) -> np.ndarray:
    """Trapezoidal area under curves sampled at equal steps over [0, 1], per row."""
    return np.trapezoid(curves, dx=1.0 / (curves.shape[1] - 1), axis=1)


def start_image(kind: Any, explained: Any) -> np.ndarray:
    """The image a perturbation paints from or onto, shaped like the batch.

    Args:
        kind: `"zeros"`; `"mean"`, the mean of the batch (per position and channel);
            `"blur"`, each sample blurred by the weakest Gaussian of a doubling ladder
            (sigma 1, 2, 4, ... up to the input's size) that changes its predicted class,
            the strongest one if none does; a number; or an array shaped like one sample.
        explained: the `Explained` batch (the blur asks its model).
    """
    x = explained.x
    if isinstance(kind, str):
        if kind == "zeros":
            return np.zeros_like(x)
        if kind == "mean":
            return np.broadcast_to(x.mean(axis=0), x.shape).astype(np.float32)
        if kind == "blur":
            return _losing_blur(explained)
        raise KeraslensError(
            f"Unknown start image {kind!r}; choose one of {', '.join(START_IMAGES)}, a number "
            "or an array shaped like one sample."
        )
    value = np.asarray(kind, dtype=np.float32)
    if value.ndim == 0 or value.shape == x.shape[1:]:
        return np.broadcast_to(value, x.shape).astype(np.float32)
    raise KeraslensError(
        f"A start image must be one of {', '.join(START_IMAGES)}, a number or an array of "
        f"shape {x.shape[1:]}; got an array of shape {value.shape}."
    )


def _losing_blur(explained: Any) -> np.ndarray:
    x = explained.x
    if x.ndim < 3:
        raise KeraslensError(
            "A blurred start needs inputs with positions (images, sequences); for tables use "
            "'zeros' or 'mean'."
        )
    digest = hashlib.blake2b(np.ascontiguousarray(x).data, digest_size=16)
    digest.update(np.ascontiguousarray(explained.targets).data)
    key = (x.shape, x.dtype.str, digest.hexdigest())
    kept = _BLURS.get(explained.scorer.graph)
    if kept is None or kept[0] != key:
        kept = _BLURS[explained.scorer.graph] = (key, _search_blur(explained))
    return kept[1].copy()


def _search_blur(explained: Any) -> np.ndarray:
    x = explained.x
    sigmas = 2.0 ** np.arange(0, np.ceil(np.log2(max(positions_of(x)))) + 1)
    start = np.empty_like(x)
    pending = np.ones(len(x), bool)
    for sigma in sigmas:  # whole batches (the scorer takes contiguous samples), until done
        blurred = gaussian_filter(x, (0, *[sigma] * (x.ndim - 2), 0))
        lost = explained.scorer.outputs(blurred).argmax(-1) != explained.targets
        done = pending & (lost | (sigma == sigmas[-1]))
        start[done] = blurred[done]
        pending &= ~done
        if not pending.any():
            break
    return start


def unit_mask(maps: np.ndarray) -> np.ndarray:
    """Each map scaled to [0, 1] (min-max per sample; a flat map gives zeros)."""
    rows = flat(maps)
    low = rows.min(axis=1, keepdims=True)
    span = rows.max(axis=1, keepdims=True) - low
    scaled = np.divide(rows - low, span, out=np.zeros_like(rows), where=span > 0)
    return scaled.reshape(maps.shape)


def masked(x: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """`x` times a per-position mask (broadcast over channels)."""
    mask = maps.astype(np.float32)
    return x * (mask[..., None] if x.ndim >= 3 else mask)


def correlation(a: np.ndarray, b: np.ndarray, undefined: float = 0.0) -> np.ndarray:
    """Pearson correlation of `a[i]` and `b[i]` per row; `undefined` where a row is flat."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    norm = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    dot = (a * b).sum(axis=1)
    # Relative tolerance: float32 noise on a constant row must not read as a correlation.
    defined = norm > 1e-12 * np.maximum(1.0, np.abs(dot))
    return np.where(defined, dot / np.where(defined, norm, 1.0), undefined)


def flat_maps(maps: np.ndarray) -> int:
    """How many samples' maps are one constant (they rank nothing)."""
    return int((np.ptp(flat(maps), axis=1) == 0).sum())


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of two maps per sample, as in Adebayo et al. (2018).

    Two flat maps count as identical (1.0: nothing changed); a flat map against a
    non-flat one as unrelated (0.0).
    """
    a, b = flat(a), flat(b)
    rho = correlation(rankdata(a, axis=1), rankdata(b, axis=1), np.nan)
    flat_a, flat_b = np.ptp(a, axis=1) == 0, np.ptp(b, axis=1) == 0
    return np.where(flat_a & flat_b, 1.0, np.where(flat_a | flat_b, 0.0, rho))


def interval(values: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95% percentile-bootstrap interval of the mean over the finite values.

    2000 resamples with seed 0, so the same values always give the same interval; NaN
    (undefined samples) are left out, and all-NaN gives NaN.
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return (float("nan"),) * 3
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = values[rng.integers(0, len(values), (BOOTSTRAP_RESAMPLES, len(values)))].mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(values.mean()), float(low), float(high)


def summary(values: np.ndarray) -> dict[str, float]:
    """`{"mean", "low", "high"}`: `interval(values)` by name."""
    return dict(zip(("mean", "low", "high"), interval(values), strict=True))
