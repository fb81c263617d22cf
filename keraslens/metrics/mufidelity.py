"""MuFidelity (Bhatt, Weller & Moura, 2020): do relevance sums predict score drops?"""

from __future__ import annotations

import numpy as np

from keraslens.metrics import _plumbing
from keraslens.metrics.deletion import Deletion
from keraslens.metrics.metric import Explained, Metric, Score
from keraslens.plugin import Option


class MuFidelity(Metric):
    """Pearson correlation, over random subsets S of the positions, between the summed
    relevance of S and the drop of the target logit when S is set to a baseline (Bhatt et
    al., 2020, def. 3); 1 is perfect, about 0 for a random map, higher is better.

    Each of `samples` subsets holds `subset` of the positions, drawn uniformly with a
    fixed seed. On a linear model, w * (x - baseline) scores exactly 1.
    """

    name = "mufidelity"
    title = "MuFidelity"
    citation = (
        "Bhatt, Weller & Moura (2020), Evaluating and Aggregating Feature-based Model Explanations."
    )
    better = "higher"
    options = {
        "samples": Option(int, 64, "Random subsets per sample.", min=2, max=65536),
        "subset": Option(float, 0.2, "Fraction of the positions in each subset.", min=0.0, max=1.0),
        "baseline": Deletion.options["baseline"],
        "seed": Option(int, 0, "Seed of the subsets.", min=0),
    }

    def score(self, explained: Explained) -> Score:
        relevance = _plumbing.flat(explained.relevance)
        count = max(1, int(round(self.subset * relevance.shape[1])))
        rng = np.random.default_rng(self.seed)
        draws = rng.random((len(relevance), self.samples, relevance.shape[1]))
        chosen = np.argpartition(draws, count - 1, axis=2)[:, :, :count]
        subsets = np.zeros(draws.shape, bool)
        np.put_along_axis(subsets, chosen, True, axis=2)
        baseline = _plumbing.start_image(self.baseline, explained)
        x, counts = explained.x, np.array([1])

        def build(group: slice) -> np.ndarray:
            # A subset is painted as rank 0 (in S) against rank 1 (kept), count 1.
            rank = (~subsets[group]).astype(np.int64).reshape(-1, relevance.shape[1])
            owners = np.repeat(np.arange(group.start, group.stop), self.samples)
            return _plumbing.painted(baseline[owners], x[owners], rank, counts)

        perturbed = explained.expanded(build, self.samples, explained.scorer.score)
        drops = explained.clean_logit()[:, None] - perturbed
        sums = (subsets * relevance[:, None, :]).sum(axis=2)
        return Score(_plumbing.correlation(sums, drops))
