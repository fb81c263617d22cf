"""The training history as TensorBoard scalars and activation histograms."""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping

import tensorflow as tf

from keraslens.capture import LayerStats
from keraslens.errors import KeraslensError

BINS = 30
"""Equal buckets of each activation histogram, from the layer's minimum to its maximum."""


def require_tensorboard() -> None:
    """Raise a `KeraslensError` naming the extra when `tensorboard` is not installed."""
    try:
        importlib.import_module("tensorboard")
    except ImportError:
        raise KeraslensError(
            "tensorboard=True needs the tensorboard package, which tensorflow no longer "
            'installs: pip install "keraslens[tensorboard]".'
        ) from None


class TensorBoardWriter:
    """Write history rows as `keraslens/<layer>/<figure>` scalars and each layer's
    outputs as a `keraslens/<layer>/activations` histogram, in `log_dir`.

    Args:
        log_dir: the folder of the event files.

    Example:

    ```python
    writer = TensorBoardWriter("keraslens-logs")
    writer.write("dense", {"mean": 0.4, "std": 0.8}, stats["dense"], step=1)
    writer.close()
    ```
    """

    def __init__(self, log_dir: str | os.PathLike) -> None:
        require_tensorboard()
        self._writer = tf.summary.create_file_writer(str(log_dir))

    def write(
        self, layer: str, figures: Mapping[str, float | None], stats: LayerStats, step: int
    ) -> None:
        """A layer's figures (None ones left out) and the histogram of its outputs, at `step`."""
        from tensorboard.plugins.histogram import metadata

        with self._writer.as_default(step=step):
            for metric, value in figures.items():
                if value is not None:
                    tf.summary.scalar(f"keraslens/{layer}/{metric}", value)
            buckets = stats.rebinned(BINS)
            if buckets is not None:
                tf.summary.write(
                    f"keraslens/{layer}/activations",
                    tf.constant(buckets, tf.float64),
                    metadata=metadata.create_summary_metadata(
                        f"{layer} activations", "Layer outputs on the probe data."
                    ),
                )

    def flush(self) -> None:
        """Write what is buffered to the event file."""
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()
