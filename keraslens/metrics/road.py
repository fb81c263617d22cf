"""ROAD (Rong et al., 2022): remove and debias, by noisy linear imputation, both orders."""

from __future__ import annotations

import itertools

import numpy as np

from keraslens.metrics import _plumbing
from keraslens.metrics.metric import Explained, Metric, Score
from keraslens.plugin import Option


class ROAD(Metric):
    """The target probability as 10% to 90% of the positions are removed, most relevant
    first (MoRF, lower is better) and least relevant first (LeRF, higher is better).

    Removed positions are not set to a constant, whose edges tell the model where the
    removal was (the class information leak Rong et al. measured), but imputed: each is
    the weighted mean of its neighbours (axis neighbours twice the weight of diagonal
    ones), solved for all removed positions at once, plus N(0, noise^2). The value per
    sample is AUC(LeRF) - AUC(MoRF) (higher is better); `morf` and `lerf` hold each order's
    AUC and `curves` the mean probability at each removed fraction.
    """

    name = "road"
    title = "ROAD (LeRF - MoRF)"
    citation = "Rong et al. (2022), A Consistent and Efficient Evaluation Strategy for Attribution Methods."
    better = "higher"
    needs_positions = True
    options = {
        "steps": Option(int, 9, "Removed fractions, evenly from 10% to 90%.", min=2, max=99),
        "noise": Option(float, 0.01, "Std of the noise added to imputed values.", min=0.0),
        "seed": Option(int, 0, "Seed of the noise.", min=0),
    }

    def score(self, explained: Explained) -> Score:
        fractions = np.linspace(0.1, 0.9, self.steps)
        aucs, curves = {}, {}
        for order, descending in (("morf", True), ("lerf", False)):
            curve = self._curve(explained, fractions, descending)
            aucs[order] = _plumbing.auc(curve)
            curves[order] = curve.mean(axis=0).tolist()
        extra = {
            "morf": _plumbing.summary(aucs["morf"]),
            "lerf": _plumbing.summary(aucs["lerf"]),
            "fractions": fractions.tolist(),
            "curves": curves,
        }
        return Score(aucs["lerf"] - aucs["morf"], extra)

    def _curve(self, explained: Explained, fractions: np.ndarray, descending: bool) -> np.ndarray:
        rank = _plumbing.ranks(explained.relevance, descending)
        counts = np.round(fractions * rank.shape[1]).astype(int)
        rng = np.random.default_rng(self.seed)
        positions = _plumbing.positions_of(explained.x)

        def build(group: slice) -> np.ndarray:
            x = explained.x[group]
            removed = [(rank[group] < k).reshape(len(x), *positions) for k in counts]
            imputed = [impute(x, mask, self.noise, rng) for mask in removed]
            return np.stack(imputed, axis=1).reshape(-1, *x.shape[1:])

        return explained.expanded(build, len(counts))


def impute(
    x: np.ndarray, removed: np.ndarray, noise: float, rng: np.random.Generator
) -> np.ndarray:
    """`x` with its `removed` positions replaced by noisy linear imputation.

    Each removed value v_p solves sum_o w_o (v_p - v_{p+o}) = 0 over its neighbours p + o
    inside the input (o in {-1, 0, 1}^d, weight proportional to 1 / |o|_1, so 1/6 and 1/12
    in 2-D as in Rong et al.), known neighbours entering as constants: on a linear ramp,
    interior holes are filled exactly. The system is symmetric positive definite and is
    solved for the whole batch by Jacobi-preconditioned conjugate gradients on the grid
    (2.5-4x faster here than a sparse LU factorisation, and without a matrix).

    Args:
        x: `(n, *positions, channels)`.
        removed: `(n, *positions)` bool.
        noise: std of the Gaussian noise added to each imputed value.
        rng: the noise's generator.
    """
    unknown = removed[..., None].astype(np.float64)
    known = x.astype(np.float64) * (1.0 - unknown)
    stencil = [
        (offset, 1.0 / np.abs(offset).sum())
        for offset in itertools.product((-1, 0, 1), repeat=removed.ndim - 1)
        if any(offset)
    ]

    def neighbours(values: np.ndarray) -> np.ndarray:
        return sum(weight * _shifted(values, offset) for offset, weight in stencil)

    weights = neighbours(np.ones_like(unknown))  # the weight of each position's neighbours
    target = unknown * neighbours(known)
    solved = _conjugate_gradients(
        lambda v: unknown * (weights * v - neighbours(v)), target, weights
    )
    filled = known + unknown * (solved + noise * rng.standard_normal(solved.shape))
    return filled.astype(np.float32)


def _shifted(values: np.ndarray, offset: tuple[int, ...]) -> np.ndarray:
    """`out[p] = values[p + offset]` over the position axes, zero outside."""
    out = np.zeros_like(values)
    sizes = values.shape[1 : 1 + len(offset)]
    source = tuple(slice(max(k, 0), n + min(k, 0)) for k, n in zip(offset, sizes, strict=True))
    target = tuple(slice(max(-k, 0), n + min(-k, 0)) for k, n in zip(offset, sizes, strict=True))
    out[(slice(None), *target)] = values[(slice(None), *source)]
    return out


def _conjugate_gradients(apply, target: np.ndarray, diagonal: np.ndarray) -> np.ndarray:
    """Solves `apply(v) = target` (symmetric positive definite on the unknowns) to a
    relative residual of 1e-6, preconditioned by `diagonal`."""
    solution = target / diagonal
    residual = target - apply(solution)
    step = residual / diagonal
    product = (residual * step).sum()
    limit = 1e-6 * np.sqrt((target * target).sum())
    for _ in range(target[0].size * 4):
        if np.sqrt((residual * residual).sum()) <= limit:
            break
        moved = apply(step)
        alpha = product / (step * moved).sum()
        solution += alpha * step
        residual -= alpha * moved
        scaled = residual / diagonal
        product, previous = (residual * scaled).sum(), product
        step = scaled + (product / previous) * step
    return solution
