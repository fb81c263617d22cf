"""`evaluate()`: every explanation metric of one batch of attributions, with intervals."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from keraslens.attr.api import build_method, input_index
from keraslens.attr.graph import score_graph
from keraslens.attr.inputs import model_inputs
from keraslens.attr.method import AttributionMethod
from keraslens.attr.scorer import Scorer
from keraslens.errors import KeraslensError
from keraslens.metrics import _plumbing
from keraslens.metrics.metric import Explained, Metric, run_method
from keraslens.metrics.registry import METRICS

ATTRIBUTE_OPTIONS = ("output", "input", "layer", "batch_size")


def evaluate(
    model: keras.Model,
    x: Any,
    method_or_attributions: str | AttributionMethod | np.ndarray,
    metrics: list[str] | Mapping[str, Mapping[str, Any]] | None = None,
    targets: Any = None,
    **options: Any,
) -> dict[str, dict[str, Any]]:
    """How far to trust attributions of `x`: each metric's mean, 95% interval and values.

    The attributions are computed once (or taken as given) and every metric reads them;
    only max-sensitivity, random-logit and randomisation, whose definitions need fresh
    attributions (of a perturbed input, another class, a randomised model), run the method
    again, with the same settings. Perturbed inputs are scored in compiled, batched passes
    of the attribution engine. Nothing of the model or of `x` is modified.

    Args:
        model: any Keras 3 model `keraslens.attribute` takes.
        x: the batch, as for `keraslens.attribute`.
        method_or_attributions: a method name of `keraslens.attribute` (or an
            `AttributionMethod`), or attributions of `x`: shaped like the explained input,
            like it without its channel axis, or with one channel (CAMs' `(N, H, W, 1)`).
        metrics: names from `keraslens.metrics.METRICS`, or a dict of name to that
            metric's options (`{"insertion": {"start": "zeros"}}`); None: every metric
            that applies (given an array, those that need no fresh attributions).
        targets: the class explained, as for `keraslens.attribute` (None: predicted).
        **options: `output`, `input`, `layer` and `batch_size` as for `keraslens.attribute`,
            and the method's own options (`steps=64`).

    Returns:
        A dict keyed by metric name. Each entry holds `mean`, `low` and `high` (the 95%
        percentile-bootstrap interval of the mean over samples: 2000 resamples, seed 0),
        `per_sample` (a list, NaN where undefined), `better` ("higher" or "lower"), and the
        metric's details (a curve, the two ROAD orders, the randomisation stages).

    Example:

    ```python
    scores = keraslens.evaluate(model, images[:64], "gradcam", ["deletion", "mufidelity"])
    scores["mufidelity"]["mean"], scores["mufidelity"]["low"], scores["mufidelity"]["high"]
    maps = keraslens.attribute(model, images[:64], "saliency")
    keraslens.evaluate(model, images[:64], maps, {"insertion": {"start": "zeros"}})
    ```
    """
    attribute_options = {k: options.pop(k) for k in ATTRIBUTE_OPTIONS if k in options}
    given = not isinstance(method_or_attributions, (str, AttributionMethod))
    if given and options:
        raise KeraslensError(
            f"Method option {next(iter(options))!r} given with an array of attributions; "
            "pass a method name to compute them, or drop the option."
        )
    method = None if given else build_method(method_or_attributions, options)
    specs, feeds = model_inputs(model, x)
    index = _explained_input(specs, attribute_options.get("input"))
    chosen = _metrics(metrics, given, specs[index].is_integer, len(specs[index].shape) < 2)
    graph = score_graph(model, specs, index, output=attribute_options.get("output"))
    scorer = Scorer(model, graph, feeds, targets, attribute_options.get("batch_size"))
    attribute_options["input"] = index
    if given:
        attributions = np.asarray(method_or_attributions)
    else:
        attributions = run_method(model, feeds, method, scorer.targets, attribute_options)
    explained = Explained(model, scorer, attributions, method, attribute_options, feeds)
    explained.relevance  # noqa: B018 - checks the attributions' shape before any metric runs
    return {metric.name: _entry(metric, explained) for metric in chosen}


def _entry(metric: Metric, explained: Explained) -> dict[str, Any]:
    score = metric.score(explained)
    return {
        **_plumbing.summary(score.per_sample),
        "per_sample": [float(v) for v in score.per_sample],
        "better": metric.better,
        **score.extra,
    }


def _explained_input(specs, chosen) -> int:
    if chosen is not None:
        return input_index(specs, chosen)
    if len(specs) > 1:
        raise KeraslensError(
            f"The model takes {len(specs)} inputs; name the one the attributions explain "
            f"with input= (one of {[s.key for s in specs]})."
        )
    return 0


def _metrics(metrics, given: bool, integer: bool, table: bool) -> list[Metric]:
    """The metric instances asked for (options validated), or every one that applies."""
    if metrics is None:
        return [
            cls()
            for cls in METRICS.values()
            if not (given and cls.needs_method)
            and not (integer and cls.perturbs)
            and not (table and cls.needs_positions)
        ]
    if isinstance(metrics, str):
        metrics = [metrics]
    requested = metrics if isinstance(metrics, Mapping) else {name: {} for name in metrics}
    chosen = []
    for name, metric_options in requested.items():
        if name not in METRICS:
            raise KeraslensError(f"Unknown metric {name!r}; choose from: {', '.join(METRICS)}.")
        cls = METRICS[name]
        if given and cls.needs_method:
            raise KeraslensError(
                f"Metric {name!r} computes fresh attributions; pass a method name instead "
                "of an array of attributions."
            )
        if table and cls.needs_positions:
            raise KeraslensError(
                f"Metric {name!r} needs neighbouring positions (images, sequences); this "
                "input is a table. Use deletion, insertion or mufidelity."
            )
        if integer and cls.perturbs:
            raise KeraslensError(
                f"Metric {name!r} perturbs the input, which holds integer ids; use "
                "sparseness, complexity, random-logit or randomisation."
            )
        chosen.append(cls(**dict(metric_options or {})))
    return chosen
