"""ROAD (Rong et al., 2022): remove and debias, by noisy linear imputation, both orders."""

from __future__ import annotations

import itertools

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.linalg import spsolve

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

    Each removed value v_p solves sum_o w_o (v_p - v_{p+o}) = 0 over its neighbours
    p + o inside the input (o in {-1, 0, 1}^d, weight proportional to 1 / |o|_1), known
    neighbours entering as constants: on a linear ramp, interior holes are filled exactly.

    Args:
        x: `(n, *positions, channels)`.
        removed: `(n, *positions)` bool.
        noise: std of the Gaussian noise added to each imputed value.
        rng: the noise's generator.
    """
    shape = removed.shape
    unknown = np.flatnonzero(removed)
    if len(unknown) == 0:
        return x.copy()
    variable = np.full(removed.size, -1)
    variable[unknown] = np.arange(len(unknown))
    coords = np.array(np.unravel_index(unknown, shape))
    values = x.reshape(removed.size, -1).astype(np.float64)
    rows, cols, weights = [], [], []
    diagonal = np.zeros(len(unknown))
    known = np.zeros((len(unknown), values.shape[1]))
    for offset in itertools.product((-1, 0, 1), repeat=len(shape) - 1):
        if not any(offset):
            continue
        weight = 1.0 / np.abs(offset).sum()
        moved = coords.copy()
        moved[1:] += np.array(offset)[:, None]
        inside = np.all((moved[1:] >= 0) & (moved[1:] < np.array(shape[1:])[:, None]), axis=0)
        where = np.flatnonzero(inside)
        neighbour = np.ravel_multi_index(moved[:, where], shape)
        diagonal[where] += weight
        free = variable[neighbour] >= 0
        rows.append(where[free])
        cols.append(variable[neighbour[free]])
        weights.append(np.full(free.sum(), -weight))
        known[where[~free]] += weight * values[neighbour[~free]]
    size = len(unknown)
    rows.append(np.arange(size))
    cols.append(np.arange(size))
    weights.append(diagonal)
    system = coo_matrix(
        (np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))), (size, size)
    ).tocsc()
    # Unknowns are numbered sample by sample, row by row: in that natural order the matrix
    # is block-diagonal and banded (a row's width), which SuperLU factors with little fill;
    # its default column ordering mixes the samples and runs 1.5-2x slower here.
    solved = spsolve(system, known, permc_spec="NATURAL").reshape(size, -1)
    out = values.copy()
    out[unknown] = solved + noise * rng.standard_normal(solved.shape)
    return out.reshape(x.shape).astype(np.float32)
