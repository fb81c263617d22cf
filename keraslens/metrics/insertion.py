"""Insertion (Petsiuk, Das & Saenko, 2018, RISE): the score as the most relevant come back."""

from __future__ import annotations

import numpy as np

from keraslens.metrics import _plumbing
from keraslens.metrics.deletion import Deletion
from keraslens.metrics.metric import Explained
from keraslens.plugin import Option


class Insertion(Deletion):
    """Area under the target probability as positions of the input, most relevant first,
    are painted onto a start image; higher is better.

    The start is the paper's blurred input, made strong enough to matter: a fixed blur
    leaves a 32x32 digit readable (0.885 of its probability kept), so that every map
    scores the same. Here each sample gets the weakest blur of a doubling ladder that
    changes its predicted class (`start="blur"`, the default for images and sequences;
    tables, which cannot be blurred, start from zeros), or zeros, or the batch mean.
    """

    name = "insertion"
    title = "Insertion AUC"
    better = "higher"
    options = {
        "steps": Deletion.options["steps"],
        "start": Option(
            object,
            "auto",
            "The start image: auto (blur for images and sequences, zeros for tables), blur "
            "(the weakest that loses the prediction), zeros, mean, a number or an array "
            "shaped like one sample.",
        ),
    }

    clean_row = -1  # painted onto the start, the input is whole at the end

    def endpoints(self, explained: Explained) -> tuple[np.ndarray, np.ndarray]:
        start = self.start
        if isinstance(start, str) and start == "auto":
            start = "blur" if explained.x.ndim >= 3 else "zeros"
        return explained.x, _plumbing.start_image(start, explained)
