"""`Analysis`: plugins chosen and checked once, one capture pass shared by them, results
assembled; `analyze` runs one."""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

import keraslens
from keraslens import registry
from keraslens.capture import LayerStats, Lens
from keraslens.capture.data import iterate_batches, symbolic_inputs
from keraslens.capture.distributed import current_strategy
from keraslens.capture.traversal import LayerSelector
from keraslens.errors import KeraslensError
from keraslens.isolation import DEFAULT_TIME_LIMIT, contained
from keraslens.plugin import AnalysisContext, PluginResult
from keraslens.result import AnalysisResult, PluginRun

PluginProgress = Callable[[str, int, int], None]

SAMPLE_SIZE = 64
"""Samples handed to plugins that need per-sample data (`needs` "sample"/"activations")."""

_SAMPLE_NEEDS = frozenset({"sample", "activations", "labels", "outputs"})


@dataclass(frozen=True)
class PreparedRun:
    """A selected plugin with its checked options, ready to run on any model.

    Attributes:
        info: the installed plugin (`info.plugin` is None when it failed to load).
        options: its options, defaults overlaid with the given ones, each validated.
    """

    info: registry.PluginInfo
    options: Mapping[str, Any]

    @property
    def name(self) -> str:
        """The plugin's registered name."""
        return self.info.name

    @property
    def needs(self) -> frozenset[str]:
        """What the plugin asks for (`Plugin.needs`); nothing when it failed to load."""
        return frozenset(self.info.plugin.needs) if self.info.plugin is not None else frozenset()

    @property
    def defaults(self) -> dict[str, Any]:
        """Option -> its documented default."""
        plugin = self.info.plugin
        return {key: o.default for key, o in plugin.options.items()} if plugin else {}


def prepare_runs(
    plugins: Iterable[str] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    exclude: Iterable[str] | None = None,
    skip_expensive: bool = False,
) -> tuple[PreparedRun, ...]:
    """Discover the installed plugins once, select some and validate their options.

    Needs no model, so a callback can check its settings when it is made.

    Args:
        plugins: names to run (default: every installed plugin).
        options: plugin name -> its options.
        exclude: names not to run.
        skip_expensive: leave out the plugins marked `expensive`.

    Returns:
        The selected plugins in run order; one that failed to load is kept, to be reported.

    Raises:
        KeraslensError: an unknown name, options for a plugin that is not selected, an
            invalid option, or nothing left to run.

    Example:

    ```python
    runs = prepare_runs(["dead-neurons"], {"dead-neurons": {"threshold": 0.3}})
    runs[0].options["threshold"]  # 0.3
    ```
    """
    installed = registry.available()
    names = None if plugins is None else list(plugins)
    infos = registry.select(installed, names, list(exclude or []))
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
            runs.append(PreparedRun(info, dict(options.get(info.name, {}))))
        elif not (skip_expensive and info.plugin.expensive):
            runs.append(PreparedRun(info, info.plugin.parse_options(options.get(info.name))))
    if not runs:
        raise KeraslensError(_nothing_to_run(installed, infos))
    return tuple(runs)


def _nothing_to_run(installed: list[registry.PluginInfo], chosen: list) -> str:
    if not installed:
        return "No plugin is installed, so there is nothing to analyse: reinstall keraslens."
    names = ", ".join(info.name for info in installed)
    if chosen:
        skipped = ", ".join(info.name for info in chosen)
        return (
            f"Every selected plugin ({skipped}) is expensive and minimal skips them, so nothing "
            f"would be analysed: drop minimal or select one of: {names}."
        )
    return f"Every plugin is excluded, so nothing would be analysed. Installed plugins: {names}."


class Analysis:
    """The selected plugins, checked once for one model, run on data as often as needed.

    Building it discovers the plugins, validates their options, asks each plugin whether
    its options suit the model (`Plugin.validate`) and prepares one `Lens`; nothing runs
    on data yet. Each `run` makes one capture pass shared by the plugins that need
    statistics and takes a small sample only when a plugin needs one. Each plugin runs
    contained: an exception, `sys.exit()`, a result that breaks the contract, or running
    past `time_limit` becomes that plugin's error, and the others still run.

    Args:
        model: a Keras 3 model (never modified).
        plugins: plugin names to run (default: every installed plugin).
        options: plugin name -> its options, e.g. `{"saturation": {"epsilon": 0.1}}`.
        exclude: plugin names not to run.
        layers: restrict the analysis to these layers (names, paths, globs, ...).
        minimal: a quick run: skip the expensive plugins and draw no figures.
        time_limit: seconds each plugin may run (None: no limit).

    Example:

    ```python
    analysis = keraslens.Analysis(model, plugins=["dead-neurons", "saturation"])
    before = analysis.run(x_val)
    model.fit(x, y, epochs=1)
    after = analysis.run(x_val)
    ```
    """

    def __init__(
        self,
        model: keras.Model,
        plugins: Iterable[str] | None = None,
        options: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        exclude: Iterable[str] | None = None,
        layers: LayerSelector | Iterable[LayerSelector] | None = None,
        minimal: bool = False,
        time_limit: float | None = DEFAULT_TIME_LIMIT,
    ) -> None:
        runs = prepare_runs(plugins, options, exclude=exclude, skip_expensive=minimal)
        self._bind(model, runs, layers, minimal, time_limit)

    @classmethod
    def from_runs(
        cls,
        model: keras.Model,
        runs: Sequence[PreparedRun],
        *,
        layers: LayerSelector | Iterable[LayerSelector] | None = None,
        minimal: bool = False,
        time_limit: float | None = DEFAULT_TIME_LIMIT,
    ) -> Analysis:
        """An analysis of `model` with plugins already prepared by `prepare_runs`.

        `minimal` here draws no figures and says so in the report; prepare the runs with
        `skip_expensive=True` to leave out the expensive plugins too.

        Example:

        ```python
        runs = prepare_runs(["dead-neurons"])  # checked before the model exists
        analysis = Analysis.from_runs(model, runs)
        ```
        """
        analysis = cls.__new__(cls)
        analysis._bind(model, tuple(runs), layers, minimal, time_limit)
        return analysis

    def _bind(self, model, runs, layers, minimal, time_limit) -> None:
        if time_limit is not None and (
            isinstance(time_limit, bool)
            or not isinstance(time_limit, (int, float))
            or not 0 < time_limit < math.inf
        ):
            raise KeraslensError(
                f"time_limit must be a positive number of seconds or None, got {time_limit!r}."
            )
        self.model = model
        self.runs: tuple[PreparedRun, ...] = runs
        self.layers = layers
        self.minimal = bool(minimal)
        self.time_limit = time_limit
        self._broken: dict[str, tuple[str, str | None]] = {}
        self.lens = Lens(model, layers, **self._checked_plugins())

    @property
    def needs(self) -> frozenset[str]:
        """What the selected plugins need together."""
        return frozenset().union(*(run.needs for run in self.runs))

    def run(
        self,
        data: Any,
        *,
        labels: Any = None,
        batch_size: int = 256,
        samples: int | None = None,
        seed: int = 0,
        data_source: str | None = None,
        figures: bool | None = None,
        strategy: tf.distribute.Strategy | None = None,
        progress: Callable[[int, int | None], None] | None = None,
        plugin_progress: PluginProgress | None = None,
        stats: Mapping[str, LayerStats] | None = None,
        outputs: Callable[[Any], Any] | None = None,
    ) -> AnalysisResult:
        """Run the plugins on `data` and return the result.

        Args:
            data: NumPy array, tuple/dict of arrays, `tf.data.Dataset` or `PyDataset`.
            labels: labels of `data` (array), for plugins that use them.
            batch_size: samples per capture step.
            samples: analyse a random subset of this many samples (array data), or
                the first ones (datasets; a `PyDataset` is refused); the report says which.
            seed: seed for sampling and for plugins.
            data_source: how to describe the data in the report.
            figures: draw figures (default: unless the analysis is minimal).
            strategy: the `tf.distribute` strategy of the capture pass.
            progress: `progress(samples_done, total)` during the capture pass.
            plugin_progress: `plugin_progress(name, index, count)` before each plugin.
            stats: statistics already captured on `data` by this analysis's `lens` (or
                equal to them); no capture pass is made.
            outputs: `outputs(sample)` gives the model's outputs on the plugins' sample
                (default: `model.predict`), for a caller that has a cheaper way.

        Returns:
            An `AnalysisResult` (`.to_dict()`, `.to_json(path)`, `.to_html(path)`).
        """
        data, labels, n_samples, subset = _subsample(data, labels, samples, seed)
        predicted = None
        if "stats" not in self.needs:
            stats = {}
        elif stats is None:
            strategy = strategy or current_strategy()
            if "outputs" in self.needs and outputs is None and _in_memory(data) and not strategy:
                # The plugins' sample is the data's first samples: the capture pass gives
                # their outputs, sparing a `predict` (and its trace).
                stats, predicted = self.lens.capture_with_outputs(
                    data, batch_size, limit=SAMPLE_SIZE, progress=progress
                )
            else:
                stats = self.lens.capture(data, batch_size, progress=progress, strategy=strategy)
        stats = dict(stats)
        sample = sample_labels = None
        if self.needs & _SAMPLE_NEEDS:
            sample, sample_labels = context_sample(data, labels, self.lens)
        if n_samples is None:
            n_samples = next(iter(stats.values())).samples if stats else None
            if subset == "first" and n_samples is not None and n_samples < samples:
                subset = None  # the dataset held fewer: all of it
        if "outputs" in self.needs and predicted is None:
            predict = outputs or (lambda s: self.model.predict(s, batch_size=64, verbose=0))
            predicted = predict(sample)
        context = {
            "stats": stats,
            "sample": sample,
            "labels": sample_labels,
            "outputs": predicted,
            "seed": seed,
        }
        draw = not self.minimal if figures is None else bool(figures)
        results: dict[str, PluginRun] = {}
        for index, run in enumerate(self.runs):
            if plugin_progress is not None:
                plugin_progress(run.name, index, len(self.runs))
            results[run.name] = self._run_one(run, minimal=not draw, **context)
        meta = self._meta(data_source, n_samples, subset, seed, batch_size)
        return AnalysisResult(meta=meta, plugins=results, stats=stats)

    def _checked_plugins(self) -> dict[str, Any]:
        """Ask each plugin whether its options suit the model (`Plugin.validate`), and for
        the capture settings it needs; return those settings, which must agree.

        A `KeraslensError` refuses the analysis. Any other error is the plugin's own: it is
        kept in `_broken` and reported when the plugin would run.
        """
        settings: dict[str, Any] = {}
        for run in self.runs:
            if run.info.plugin is None:
                continue
            plugin, options = run.info.plugin, dict(run.options)
            outcome = contained(
                lambda plugin=plugin, options=options: _checked_settings(
                    plugin, self.model, options
                ),
                name=run.name,
                time_limit=self.time_limit,
            )
            if isinstance(outcome.error, KeraslensError):
                raise KeraslensError(f"{run.name}: {outcome.error}") from outcome.error
            if outcome.error is not None:
                self._broken[run.name] = (f"not usable: {outcome.message}", outcome.traceback)
                continue
            for key, value in outcome.value.items():
                if key in settings and settings[key] != value:
                    raise KeraslensError(
                        f"Plugins ask for different capture settings {key}={settings[key]!r} "
                        f"and {value!r}; run them separately."
                    )
                settings[key] = value
        return settings

    def _run_one(
        self, run: PreparedRun, *, stats, sample, labels, outputs, seed, minimal
    ) -> PluginRun:
        info = run.info
        record = PluginRun(
            name=info.name,
            title=info.title,
            distribution=info.distribution,
            version=info.version,
            options=dict(run.options),
            defaults=run.defaults,
        )
        if info.plugin is None:
            record.error = f"could not be loaded: {info.error}"
            return record
        if info.name in self._broken:
            record.error, record.traceback = self._broken[info.name]
            return record
        needs = run.needs
        context = AnalysisContext(
            model=self.model,
            lens=self.lens,
            stats=stats if "stats" in needs else None,
            sample=sample if needs & {"sample", "activations"} else None,
            labels=labels if "labels" in needs else None,
            outputs=outputs if "outputs" in needs else None,
            options=dict(run.options),
            seed=seed,
            minimal=minimal,
        )
        outcome = contained(
            lambda: _checked(info.instantiate().analyze(context), info.name),
            name=info.name,
            time_limit=self.time_limit,
        )
        record.seconds = outcome.seconds
        record.result = outcome.value
        record.error, record.traceback = outcome.message, outcome.traceback
        return record

    def _meta(self, data_source, n_samples, subset, seed, batch_size) -> dict[str, Any]:
        """The report's description of a run: model, data, settings, plugin versions, date."""
        model = self.model
        layers = self.layers
        return {
            "model": model.name,
            "model_class": type(model).__name__,
            "parameters": int(model.count_params()) if model.built else None,
            "input_shapes": [list(t.shape) for t in symbolic_inputs(model) or []],
            "data_source": data_source or "in-memory data",
            "samples": n_samples,
            "sampled": subset is not None,
            "subset": subset,
            "seed": seed,
            "batch_size": batch_size,
            "layers": None if layers is None else [str(s) for s in np.atleast_1d(layers)],
            "minimal": self.minimal,
            "keraslens_version": keraslens.__version__,
            "plugins": {run.name: run.info.version for run in self.runs},
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        }


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
    time_limit: float | None = DEFAULT_TIME_LIMIT,
    data_source: str | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    plugin_progress: PluginProgress | None = None,
) -> AnalysisResult:
    """Run the selected analyses on `model` over `data` once: `Analysis(...).run(data)`.

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
        minimal: a quick run: skip the expensive plugins and draw no figures.
        time_limit: seconds each plugin may run (None: no limit).
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
    analysis = Analysis(
        model,
        plugins,
        options,
        exclude=exclude,
        layers=layers,
        minimal=minimal,
        time_limit=time_limit,
    )
    return analysis.run(
        data,
        labels=labels,
        batch_size=batch_size,
        samples=samples,
        seed=seed,
        data_source=data_source,
        progress=progress,
        plugin_progress=plugin_progress,
    )


def _checked(result: Any, name: str) -> PluginResult:
    if not isinstance(result, PluginResult):
        raise TypeError(f"analyze() returned {type(result).__name__}, not a PluginResult")
    return result.checked(name)


def _checked_settings(plugin: Any, model: keras.Model, options: dict[str, Any]) -> dict:
    plugin.validate(model, options)
    settings = plugin.capture_settings(options)
    if not isinstance(settings, Mapping):
        raise TypeError(f"capture_settings() returned {type(settings).__name__}, not a dict")
    return dict(settings)


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


def _in_memory(data: Any) -> bool:
    """True for arrays (or a list, tuple or dict of them), which read the same every time;
    a dataset may shuffle between two passes."""
    return all(isinstance(part, np.ndarray) for part in tf.nest.flatten(data))


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
    sample = tf.nest.map_structure(lambda *parts: np.concatenate(parts)[:SAMPLE_SIZE], *taken)
    sample_labels = None if labels is None else np.asarray(labels)[:SAMPLE_SIZE]
    return sample, sample_labels
