"""Draw the figures of docs/heatmaps.md and docs/activation-maximization.md from the demo.

    python benchmarks/vis_figures.py

Trains the demo CNN (`keraslens demo`, scikit-learn digits), runs the two plugins on its
validation split and writes their figures to docs/img/.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from keraslens import demo  # noqa: E402

IMAGES = Path(__file__).parent / "img"


def main() -> None:
    result = demo.run(
        plugins=["heatmaps", "activation-maximization"],
        options={
            "heatmaps": {
                "methods": ["gradcam++", "layercam", "faster-scorecam", "saliency", "smoothgrad"],
                "per_class": 1,
                "max_samples": 6,
            },
            "activation-maximization": {"layers": ["conv2"], "steps": 200},
        },
    )
    for name, figure_index, file in (
        ("heatmaps", 0, "heatmaps-digits.png"),
        ("activation-maximization", 0, "activation-maximization-digits.png"),
    ):
        run = result.plugins[name]
        if run.error:
            raise SystemExit(f"{name} failed: {run.error}")
        (IMAGES / file).write_bytes(run.result.figures[figure_index].png)
        print(f"{file}: {len(run.result.figures[figure_index].png) // 1024} KB")
        for table in run.result.tables:
            print(table.title)
            for row in table.rows:
                print("  ", row)


if __name__ == "__main__":
    main()
