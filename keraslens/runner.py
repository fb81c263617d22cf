"""`analyze`: one capture pass shared by the selected plugins, results assembled."""

from __future__ import annotations

import datetime as _dt
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

import keraslens
from keraslens import plugins as registry
from keraslens.capture import Lens
from keraslens.capture.data import iterate_batches
from keraslens.capture.traversal import LayerSelector
from keraslens.errors import KeraslensError
from keraslens.plugin import AnalysisContext, Finding, PluginResult
from keraslens.result import AnalysisResult, PluginRun

PluginProgress = Callable[[str, int, int], None]

SAMPLE_SIZE = 64
"""Samples handed to plugins that need per-sample data (`needs` "sample"/"activations")."""


def analyze(
    model: keras.Model,
    data: Any,
    plugins: Iterable[str] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    exclude: Iterable[str] | None = None,
    layers: LayerSelector | Iterable[LayerSelector] | None = None,
    labels: Any = None,
    batch_size: int = 256,
    samples: int | None = None,
    seed: int = 0,
    minimal: bool = False,
    data_source: str | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    plugin_progress: PluginProgress | None = None,
) -> AnalysisResult:
    """Run the selected analyses on `model` over `data` and return the result.

    Plugins that need capture statistics share one capture pass. A plugin that
    raises is recorded as an error; the others still run.

    Args:
        model: a Keras 3 model.
        data: NumPy array, tuple/dict of arrays, `tf.data.Dataset` or `PyDataset`.
        plugins: plugin names to run (default: every installed plugin).
        options: plugin name -> its options, e.g. `{"saturation": {"epsilon": 0.1}}`.
        exclude: plugin names not to run.
        layers: restrict the analysis to these layers (names, paths, globs, ...).
        labels: labels of `data` (array), for plugins that use them.
        batch_size: samples per capture step.
        samples: analyse a random subset of this many samples (array data), or
            the first ones (datasets; a `PyDataset` is refused); the report says which.
        seed: seed for sampling and for plugins.
        minimal: skip expensive plugins and figures.
        data_source: how to describe the data in the report.
        progress: `progress(samples_done, total)` during the capture pass.
        plugin_progress: `plugin_progress(name, index, count)` before each plugin.

    Returns:
        An `AnalysisResult` (`.to_dict()`, `.to_json(path)`, `.to_html(path)`).

    Example:

    ```python
    result = keraslens.analyze(model, x_val, options={"dead-neurons": {"threshold": 0.2}})
    result.to_html("report.html")
    ```
    """
    runs = prepare_runs(plugins, exclude, options, minimal)
    data, labels, n_samples, subset = _subsample(data, labels, samples, seed)
    needs = set().union(*(run_needs for _, run_needs, _ in runs)) if runs else set()
    lens = Lens(model, layers, **merged_capture_settings(runs))
    stats = lens.capture(data, batch_size, progress=progress) if "stats" in needs else {}
    sample, sample_labels = context_sample(data, labels, lens)
    if n_samples is None:
        n_samples = next(iter(stats.values())).samples if stats else None
        if subset == "first" and n_samples is not None and n_samples < samples:
            subset = None  # the dataset held fewer: all of it
    results = run_plugins(
        runs,
        model=model,
        lens=lens,
        stats=stats,
        sample=sample,
        labels=sample_labels,
        seed=seed,
        minimal=minimal,
        plugin_progress=plugin_progress,
    )
    meta = run_meta(model, data_source, n_samples, subset, seed, batch_size, layers, minimal, runs)
    return AnalysisResult(meta=meta, plugins=results, stats=stats)


def run_plugins(
    runs: list,
    *,
    model: keras.Model,
    lens: Lens,
    stats: Mapping[str, Any],
    sample: Any,
    labels: np.ndarray | None,
    seed: int = 0,
    minimal: bool = False,
    plugin_progress: PluginProgress | None = None,
) -> dict[str, PluginRun]:
    """Run prepared plugins (`prepare_runs`) on statistics that were already captured.

    Shared by `analyze` and `LensCallback`, which captures with one `Lens` per training.
    """
    results: dict[str, PluginRun] = {}
    for index, (info, _, parsed) in enumerate(runs):
        if plugin_progress is not None:
            plugin_progress(info.name, index, len(runs))
        context = AnalysisContext(
            model=model,
            lens=lens,
            stats=stats,
            sample=sample,
            labels=labels,
            options=parsed,
            seed=seed,
            minimal=minimal,
        )
        results[info.name] = _run_one(info, parsed, context)
    return results


def prepare_runs(plugins, exclude, options, minimal):
    """Resolve and validate everything before any work starts."""
    names = None if plugins is None else list(plugins)
    infos = registry.select(registry.available(), names, list(exclude or []))
    options = dict(options or {})
    known = {info.name for info in infos}
    unknown = sorted(set(options) - known)
    if unknown:
        raise KeraslensError(
            f"Options given for {unknown[0]!r}, which is not a selected plugin. "
            f"Selected: {', '.join(sorted(known)) or 'none'}."
        )
    runs = []
    for info in infos:
        if info.plugin is None:
            runs.append((info, set(), dict(options.get(info.name, {}))))
            continue
        if minimal and info.plugin.expensive:
            continue
        parsed = info.plugin.parse_options(options.get(info.name))
        runs.append((info, set(info.plugin.needs), parsed))
    return runs


def merged_capture_settings(runs) -> dict[str, Any]:
    """The Lens settings the prepared plugins ask for, which must agree."""
    settings: dict[str, Any] = {}
    for info, _, parsed in runs:
        if info.plugin is None:
            continue
        for key, value in info.plugin.capture_settings(parsed).items():
            if key in settings and settings[key] != value:
                raise KeraslensError(
                    f"Plugins ask for different capture settings {key}={settings[key]!r} and "
                    f"{value!r}; run them separately."
                )
            settings[key] = value
    return settings


def _run_one(info: registry.PluginInfo, parsed: dict[str, Any], context) -> PluginRun:
    run = PluginRun(
        name=info.name,
        title=info.title,
        distribution=info.distribution,
        version=info.version,
        options=parsed,
    )
    if info.plugin is None:
        run.error = f"could not be loaded: {info.error}"
        return run
    started = time.perf_counter()
    try:
        result = info.instantiate().analyze(context)
        if not isinstance(result, PluginResult):
            raise TypeError(f"analyze() returned {type(result).__name__}, not a PluginResult")
        for finding in result.findings:
            if not isinstance(finding, Finding):
                raise TypeError(f"a finding is a {type(finding).__name__}, not a Finding")
            finding.plugin = info.name
        run.result = result
    except Exception as error:  # a failing analysis never kills the report
        run.error = f"{type(error).__name__}: {error}"
        run.traceback = traceback.format_exc()
    run.seconds = time.perf_counter() - started
    return run


def _subsample(data, labels, samples, seed):
    """`(data, labels, n_samples, subset)`: `subset` says how a subset was drawn ("random"
    from arrays, the "first" elements of a dataset), None for all the data."""
    if samples is None:
        return data, labels, None, None
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise KeraslensError(f"samples must be a positive integer, got {samples!r}.")
    if isinstance(data, keras.utils.PyDataset):
        raise KeraslensError(
            "samples draws from arrays or a tf.data.Dataset, and a PyDataset has no way to "
            "take some of its samples: leave samples out, or pass the arrays."
        )
    if isinstance(data, tf.data.Dataset):
        return data.unbatch().take(samples).batch(256), labels, None, "first"
    flat = tf.nest.flatten(data)
    n = int(np.shape(flat[0])[0])
    if samples >= n:
        return data, labels, n, None
    index = np.sort(np.random.default_rng(seed).choice(n, samples, replace=False))
    data = tf.nest.map_structure(lambda a: np.asarray(a)[index], data)
    labels = None if labels is None else np.asarray(labels)[index]
    return data, labels, samples, "random"


def context_sample(data, labels, lens: Lens):
    """The first SAMPLE_SIZE samples as NumPy (and their labels), for per-sample plugins."""
    batches, _ = iterate_batches(data, SAMPLE_SIZE, lens.input_rank())
    taken, size = [], 0
    for batch in batches:
        taken.append(tf.nest.map_structure(np.asarray, batch))
        size += int(np.shape(tf.nest.flatten(batch)[0])[0])
        if size >= SAMPLE_SIZE:
            break
    if not taken:
        raise KeraslensError("The data is empty: there are no samples to analyse.")
    sample = tf.nest.map_structure(
        lambda *parts: np.concatenate(parts)[:SAMPLE_SIZE], *taken
    )
    sample_labels = None if labels is None else np.asarray(labels)[:SAMPLE_SIZE]
    return sample, sample_labels


def run_meta(model, data_source, n_samples, subset, seed, batch_size, layers, minimal, runs):
    """The report's description of a run: model, data, settings, plugin versions, date."""
    try:
        input_shapes = [list(t.shape) for t in model.inputs]
    except (AttributeError, ValueError):
        input_shapes = []
    return {
        "model": model.name,
        "model_class": type(model).__name__,
        "parameters": int(model.count_params()) if model.built else None,
        "input_shapes": input_shapes,
        "data_source": data_source or _describe_data(),
        "samples": n_samples,
        "sampled": subset is not None,
        "subset": subset,
        "seed": seed,
        "batch_size": batch_size,
        "layers": None if layers is None else [str(s) for s in np.atleast_1d(layers)],
        "minimal": minimal,
        "keraslens_version": keraslens.__version__,
        "plugins": {info.name: info.version for info, _, _ in runs},
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _describe_data() -> str:
    return "in-memory data"
