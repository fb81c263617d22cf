"""The random-logit test (Sixt, Granz & Landgraf, 2020)."""

from __future__ import annotations

import numpy as np

from keraslens.errors import KeraslensError
from keraslens.metrics import _plumbing
from keraslens.metrics.metric import Explained, Metric, Score
from keraslens.plugin import Option


class RandomLogit(Metric):
    """Rank correlation between the map of the target class and that of another class drawn
    uniformly at random (fixed seed); a map that ignores the class scores 1, lower is
    better.

    Sixt et al. (2020) showed that several modified-backprop methods give the same map
    for every class; this is their check, measured with Spearman's rank correlation as
    the randomisation test is (see `docs/metrics.md` for SSIM in Quantus and Xplique).
    Two flat maps count as identical (a map that ranks nothing fails); `flat_maps` says
    how many of the target class's maps were flat.
    """

    name = "random-logit"
    title = "Random-logit similarity"
    citation = "Sixt, Granz & Landgraf (2020), When Explanations Lie: Why Many Modified BP Attributions Fail."
    better = "lower"
    needs_method = True
    perturbs = False
    options = {"seed": Option(int, 0, "Seed of the other classes.", min=0)}

    def score(self, explained: Explained) -> Score:
        classes = explained.scorer.graph.classes
        if classes < 2:
            raise KeraslensError(
                "The random-logit test compares two classes; this output has one score."
            )
        rng = np.random.default_rng(self.seed)
        shift = rng.integers(1, classes, len(explained.targets))
        others = ((explained.targets + shift) % classes).astype(np.int32)
        fresh = explained.reattribute(targets=others)
        extra = {"classes": others.tolist(), "flat_maps": _plumbing.flat_maps(explained.relevance)}
        return Score(_plumbing.similarity(explained.relevance, fresh), extra)
