"""`LensCallback`: keraslens analyses inside `model.fit`, with a per-layer training history."""

from __future__ import annotations

import importlib
import json
import math
import os
import traceback
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras.src.utils import io_utils

from keraslens.capture import LayerStats, Lens
from keraslens.capture.traversal import LayerSelector
from keraslens.errors import KeraslensError
from keraslens.plugin import to_jsonable
from keraslens.result import AnalysisResult, PluginRun
from keraslens.runner import (
    context_sample,
    merged_capture_settings,
    prepare_runs,
    run_meta,
    run_plugins,
)

METRICS = ("dead_fraction", "saturated_fraction", "mean", "std", "firing_rate")
"""The per-layer figures of the training history."""

BAND_SIGMAS = (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5)
"""Percentiles of a distribution band, at the normal CDF of these sigmas, as TensorBoard's
Distributions dashboard draws them (0.0668, 0.1587, 0.3085, 0.5, 0.6915, 0.8413, 0.9332)."""

BAND_KEYS = ("min", "p-1.5", "p-1", "p-0.5", "p0", "p+0.5", "p+1", "p+1.5", "max")

HISTORY_FILE = "history.jsonl"
TENSORBOARD_BINS = 30
_REPORTS = ("final", "every", None)
_PLUGIN_FIELDS = {"dead_fraction": "dead-neurons", "saturated_fraction": "saturation"}


class LensCallback(keras.callbacks.Callback):
    """Run keraslens analyses on probe data during `model.fit` and keep a per-layer history.

    At the chosen times (every `every` epochs, or every `every_steps` training
    steps, plus once before the first step) the callback captures statistics of
    the probe data in one compiled pass, with one `Lens` reused for the whole
    training, and runs the selected plugins on them. For each layer it records
    the dead fraction, saturated fraction, mean, standard deviation and firing
    rate, in `callback.history` and as JSON lines in `out_dir/history.jsonl`
    (flushed at once, so a crash keeps what was logged). When a layer's figure
    crosses its threshold it prints one line and records an alert. An analysis
    that raises is printed and recorded; training goes on.

    Args:
        probe_data: the inputs to analyse (array, tuple/dict of arrays,
            `tf.data.Dataset` or `PyDataset`, as in `keraslens.analyze`). A few
            hundred samples are enough.
        every: analyse every this many epochs (ignored when `every_steps` is set).
        every_steps: analyse every this many training steps instead.
        plugins: plugin names to run; None runs every installed plugin that is
            not marked expensive.
        options: plugin name -> its options, as in `keraslens.analyze`.
        out_dir: where the history, the reports and the TensorBoard events go.
        report: "final" writes `report.html`/`report.json` (with the training
            section) when training ends, "every" also writes one per analysis,
            None writes none.
        tensorboard: also write the figures as scalars and each layer's
            activations as histograms with `tf.summary` in `out_dir` (needs
            `pip install "keraslens[tensorboard]"`).
        fail_fast: stop training (`model.stop_training`) at the first alert or
            failed analysis.
        thresholds: figure name -> value above which it alerts, e.g.
            `{"dead_fraction": 0.5}`. Default: the `threshold` options of
            dead-neurons and saturation (0.2 unless set in `options`).
        layers: restrict the analysis to these layers, as in `keraslens.analyze`.
        labels: labels of `probe_data`, for plugins that use them.
        batch_size: samples per capture step.
        seed: seed handed to plugins.
        verbose: 0 to stay silent, 1 to print alerts and errors; "auto" follows
            the `verbose` of `fit`.

    Example:

    ```python
    callback = keraslens.LensCallback(
        x_val[:512], plugins=["dead-neurons", "saturation", "activation-stats"]
    )
    model.fit(x_train, y_train, epochs=5, callbacks=[callback])
    callback.history[0]  # {"epoch": 0, "layer": "dense", "dead_fraction": 0.0, ...}
    ```
    """

    def __init__(
        self,
        probe_data: Any,
        every: int = 1,
        every_steps: int | None = None,
        plugins: Iterable[str] | None = None,
        options: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        out_dir: str | os.PathLike = "keraslens-logs",
        report: str | None = "final",
        tensorboard: bool = False,
        fail_fast: bool = False,
        thresholds: Mapping[str, float] | None = None,
        layers: LayerSelector | Iterable[LayerSelector] | None = None,
        labels: Any = None,
        batch_size: int = 256,
        seed: int = 0,
        verbose: int | str = "auto",
    ) -> None:
        super().__init__()
        if probe_data is None:
            raise KeraslensError(
                "probe_data is None: pass the inputs to analyse, e.g. x_val[:512]."
            )
        _check_positive("every", every)
        if every_steps is not None:
            _check_positive("every_steps", every_steps)
        if report not in _REPORTS:
            raise KeraslensError(f"report must be 'final', 'every' or None, got {report!r}.")
        if not isinstance(out_dir, (str, os.PathLike)):
            raise KeraslensError(f"out_dir must be a path, got {type(out_dir).__name__}.")
        if verbose != "auto" and verbose not in (0, 1, 2):
            raise KeraslensError(f"verbose must be 'auto', 0, 1 or 2, got {verbose!r}.")
        _check_positive("batch_size", batch_size)
        if tensorboard:
            _require_tensorboard()
        self.probe_data = probe_data
        self.every = every
        self.every_steps = every_steps
        self.out_dir = Path(out_dir)
        self.report = report
        self.tensorboard = bool(tensorboard)
        self.fail_fast = bool(fail_fast)
        self.layers = layers
        self.labels = labels
        self.batch_size = batch_size
        self.seed = seed
        self.verbose = verbose
        self._minimal = plugins is None
        # Names and options are checked now, before any training step.
        self._runs = prepare_runs(plugins, None, options, self._minimal)
        self.thresholds = {**_plugin_thresholds(self._runs), **_check_thresholds(thresholds)}
        self.history: list[dict[str, Any]] = []
        self.bands: dict[str, list[dict[str, Any]]] = {}
        self.alerts: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.result: AnalysisResult | None = None
        self._lens: Lens | None = None
        self._sample: tuple[Any, Any] = (None, None)
        self._log = None
        self._writer = None
        self._started = False
        self._epoch = 0
        self._step = 0
        self._captured_step: int | None = None
        self._entries: list[dict[str, Any]] = []

    # Keras hooks -------------------------------------------------------------------------

    def on_train_begin(self, logs=None) -> None:
        if self.tensorboard:
            _require_tensorboard()
        self._started = False
        if self._lens is None or self._lens.model is not self.model:
            self._lens = Lens(self.model, self.layers, **merged_capture_settings(self._runs))
            self._sample = context_sample(self.probe_data, self.labels, self._lens)

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        if not self._started:
            self._start(epoch)
        self._epoch = epoch + 1

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        self._step += 1
        if self.every_steps is not None and self._step % self.every_steps == 0:
            self._analyze_safely()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if self.every_steps is None and (epoch + 1) % self.every == 0:
            self._analyze_safely()

    def on_train_end(self, logs=None) -> None:
        if self.report is not None and self._started:
            if self._captured_step != self._step:
                self._analyze_safely()
            if self.result is not None:
                self._guarded("report", self._write_report)
        self._close()

    # Training section --------------------------------------------------------------------

    def training_section(self) -> dict[str, Any]:
        """The JSON-safe training section of the report (`result.extra["training"]`)."""
        first: dict[str, dict[str, int]] = {}
        for alert in self.alerts:
            first.setdefault(alert["layer"], {}).setdefault(alert["metric"], alert["epoch"])
        return to_jsonable(
            {
                "history": self.history,
                "bands": self.bands,
                "band_sigmas": list(BAND_SIGMAS),
                "alerts": self.alerts,
                "first_crossing": first,
                "thresholds": self.thresholds,
                "errors": self.errors,
                "every": self.every if self.every_steps is None else None,
                "every_steps": self.every_steps,
            }
        )

    # Internals ---------------------------------------------------------------------------

    def _start(self, initial_epoch: int) -> None:
        """Open the log on the first epoch of a fit.

        A fit from epoch 0 starts a new history; a fit resumed at `initial_epoch`
        keeps what was logged up to that epoch (read back from `out_dir` when this
        callback is new) and drops the rest.
        """
        self._started = True
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / HISTORY_FILE
        if initial_epoch == 0:
            entries = []
        elif self._entries:
            entries = self._entries
        else:
            entries = _read_log(path)
        kept = [e for e in entries if e.get("epoch", math.inf) <= initial_epoch]
        self.history, self.bands, self.alerts, self.errors = [], {}, [], []
        self._entries = []
        self._log = path.open("w", encoding="utf-8")
        for entry in kept:
            self._remember(entry)
            self._write_line(entry)
        steps = (self.params or {}).get("steps")
        last_step = max((e.get("step", 0) for e in kept), default=0)
        self._step = initial_epoch * steps if steps else last_step
        self._epoch = initial_epoch
        self._captured_step = None
        if self.tensorboard:
            self._writer = tf.summary.create_file_writer(str(self.out_dir))
        if initial_epoch == 0:
            self._analyze_safely()

    def _remember(self, entry: dict[str, Any]) -> None:
        """Put a logged entry back into `history`, `bands`, `alerts` or `errors`."""
        entry = dict(entry)
        kind = entry.pop("kind", None)
        if kind == "layer":
            band = entry.pop("band", None)
            self.history.append(entry)
            if band is not None:
                self.bands.setdefault(entry["layer"], []).append(band)
        elif kind == "alert":
            self.alerts.append(entry)
        elif kind == "error":
            entry.pop("traceback", None)
            self.errors.append(entry)

    def _analyze_safely(self) -> None:
        self._captured_step = self._step
        self._guarded("capture", self._analyze)

    def _guarded(self, source: str, action) -> None:
        """Run `action`; an exception is printed and recorded, never raised into `fit`."""
        try:
            action()
        except Exception as error:  # an analysis must never break training
            self._record_error(source, f"{type(error).__name__}: {error}", traceback.format_exc())
            self._say(
                f"keraslens {source} failed ({type(error).__name__}: {error}); training goes on."
            )
            if self.fail_fast:
                self.model.stop_training = True

    def _analyze(self) -> None:
        # Keras keeps the strategy a model was built under (None outside any scope), and the
        # probe pass runs under it: the same devices and workers as the training steps.
        strategy = getattr(self.model, "_distribute_strategy", None)
        stats = self._lens.capture(self.probe_data, self.batch_size, strategy=strategy)
        # Figures are drawn for reports only: matplotlib would dominate the cost of an epoch.
        figures = self.report == "every"
        runs = self._run_plugins(stats, figures)
        for run in runs.values():
            if run.error is not None:
                self._record_error(run.name, run.error, run.traceback)
                self._say(f"keraslens plugin {run.name!r} failed ({run.error}); training goes on.")
                if self.fail_fast:
                    self.model.stop_training = True
        for key, layer_stats in stats.items():
            self._log_layer(key, layer_stats, runs)
        if self._writer is not None:
            self._writer.flush()
        self.result = AnalysisResult(meta=self._meta(stats, figures), plugins=runs, stats=stats)
        if self.report == "every":
            self._write_report(suffix=f"-epoch{self._epoch:04d}-step{self._step:07d}")

    def _run_plugins(self, stats: Mapping[str, LayerStats], figures: bool) -> dict[str, PluginRun]:
        sample, labels = self._sample
        return run_plugins(
            self._runs,
            model=self.model,
            lens=self._lens,
            stats=stats,
            sample=sample,
            labels=labels,
            seed=self.seed,
            minimal=not figures,
        )

    def _meta(self, stats: Mapping[str, LayerStats], figures: bool) -> dict[str, Any]:
        samples = next(iter(stats.values())).samples
        data_source = f"probe data at epoch {self._epoch}, step {self._step}"
        return run_meta(
            self.model,
            data_source,
            samples,
            None,
            self.seed,
            self.batch_size,
            self.layers,
            not figures,
            self._runs,
        )

    def _log_layer(self, key: str, stats: LayerStats, runs: Mapping[str, PluginRun]) -> None:
        row = self._row(key, stats, runs)
        band = _band(stats)
        if band is not None:
            band = {"epoch": self._epoch, "step": self._step, **band}
            self.bands.setdefault(key, []).append(band)
        self._check_alerts(row)
        self.history.append(row)
        self._write_line({"kind": "layer", **row, "band": band})
        if self._writer is not None:
            self._write_summaries(row, stats)

    def _row(self, key: str, stats: LayerStats, runs: Mapping[str, PluginRun]) -> dict[str, Any]:
        row: dict[str, Any] = {"epoch": self._epoch, "step": self._step, "layer": key}
        for metric, plugin in _PLUGIN_FIELDS.items():
            row[metric] = _plugin_value(runs.get(plugin), key, metric)
        row.update(_layer_moments(stats))
        row["alerts"] = []
        return to_jsonable(row)

    def _check_alerts(self, row: dict[str, Any]) -> None:
        previous = self._previous_row(row["layer"])
        for metric, threshold in self.thresholds.items():
            value = row.get(metric)
            if value is None or value <= threshold:
                continue
            before = None if previous is None else previous.get(metric)
            if before is not None and before > threshold:
                continue
            alert = {
                "epoch": row["epoch"],
                "step": row["step"],
                "layer": row["layer"],
                "metric": metric,
                "value": value,
                "threshold": threshold,
            }
            row["alerts"].append(metric)
            self.alerts.append(alert)
            self._write_line({"kind": "alert", **alert})
            label = metric.replace("_", " ")
            self._say(f"keraslens: layer {row['layer']!r} {label} {value:.3f} > {threshold:g}.")
            if self.fail_fast:
                self.model.stop_training = True

    def _previous_row(self, layer: str) -> dict[str, Any] | None:
        for row in reversed(self.history):
            if row["layer"] == layer:
                return row
        return None

    def _record_error(self, source: str, error: str, trace: str | None) -> None:
        entry = {"epoch": self._epoch, "step": self._step, "source": source, "error": error}
        self.errors.append(entry)
        self._write_line({"kind": "error", **entry, "traceback": trace})

    def _write_line(self, entry: dict[str, Any]) -> None:
        entry = to_jsonable(entry)
        self._entries.append(entry)
        if self._log is None:
            return
        self._log.write(json.dumps(entry, allow_nan=False) + "\n")
        self._log.flush()

    def _write_summaries(self, row: dict[str, Any], stats: LayerStats) -> None:
        from tensorboard.plugins.histogram import metadata

        step = row["step"] if self.every_steps is not None else row["epoch"]
        layer = row["layer"]
        with self._writer.as_default(step=step):
            for metric in METRICS:
                if row[metric] is not None:
                    tf.summary.scalar(f"keraslens/{layer}/{metric}", row[metric])
            buckets = _tensorboard_buckets(stats)
            if buckets is not None:
                tf.summary.write(
                    f"keraslens/{layer}/activations",
                    tf.constant(buckets, tf.float64),
                    metadata=metadata.create_summary_metadata(
                        f"{layer} activations", "Layer outputs on the probe data."
                    ),
                )

    def _write_report(self, suffix: str = "") -> None:
        if self.result.meta["minimal"]:
            self.result.plugins = self._run_plugins(self.result.stats, figures=True)
            self.result.meta["minimal"] = False
        self.result.extra["training"] = self.training_section()
        self.result.to_json(self.out_dir / f"report{suffix}.json")
        self.result.to_html(self.out_dir / f"report{suffix}.html")

    def _say(self, message: str) -> None:
        verbose = self.verbose
        if verbose == "auto":
            verbose = (self.params or {}).get("verbose", 1)
        if verbose:
            io_utils.print_msg(f"\nEpoch {self._epoch}: {message}")

    def _close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _check_positive(name: str, value: Any) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise KeraslensError(f"{name} must be a positive integer, got {value!r}.")


def _check_thresholds(thresholds: Mapping[str, float] | None) -> dict[str, float]:
    if thresholds is None:
        return {}
    if not isinstance(thresholds, Mapping):
        raise KeraslensError(
            f"thresholds must be a dict of figure name -> number, got {thresholds!r}."
        )
    checked = {}
    for metric, value in thresholds.items():
        if metric not in METRICS:
            raise KeraslensError(
                f"thresholds has unknown figure {metric!r}; allowed: {', '.join(METRICS)}."
            )
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise KeraslensError(f"thresholds[{metric!r}] must be a finite number, got {value!r}.")
        checked[metric] = float(value)
    return checked


def _plugin_thresholds(runs: list) -> dict[str, float]:
    """The `threshold` options of dead-neurons and saturation, as figure thresholds."""
    plugins = {plugin: metric for metric, plugin in _PLUGIN_FIELDS.items()}
    return {
        plugins[info.name]: float(parsed["threshold"])
        for info, _, parsed in runs
        if info.name in plugins and "threshold" in parsed
    }


def _require_tensorboard() -> None:
    try:
        importlib.import_module("tensorboard")
    except ImportError:
        raise KeraslensError(
            "tensorboard=True needs the tensorboard package, which tensorflow no longer "
            'installs: pip install "keraslens[tensorboard]".'
        ) from None


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a crash
            continue
    return entries


def _plugin_value(run: PluginRun | None, layer: str, key: str) -> float | None:
    if run is None or run.result is None:
        return None
    value = run.result.data.get("layers", {}).get(layer, {}).get(key)
    return None if value is None else float(value)


def _layer_moments(stats: LayerStats) -> dict[str, float]:
    """Mean, standard deviation and firing rate of all of the layer's outputs together."""
    n = stats.finite_count.astype(np.float64)
    total = n.sum()
    counted = stats.count.sum()
    firing = stats.positive_count.sum() / counted if counted else math.nan
    if total == 0:
        return {"mean": math.nan, "std": math.nan, "firing_rate": firing}
    mean = float((stats.mean * n).sum() / total)
    # Pooled variance: within-unit spread plus the spread of the unit means.
    m2 = stats.m2.sum() + (n * (stats.mean - mean) ** 2).sum()
    return {"mean": mean, "std": float(math.sqrt(m2 / total)), "firing_rate": float(firing)}


def _layer_range(stats: LayerStats) -> tuple[float, float] | None:
    finite = stats.finite_count > 0
    if not finite.any():
        return None
    return float(stats.min[finite].min()), float(stats.max[finite].max())


def _cdf(stats: LayerStats, span: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative counts at the histogram edges, the edges clipped to the layer's true range."""
    counts, edges = stats.histogram()
    edges = np.clip(edges, *span)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.float64), edges


def _band(stats: LayerStats) -> dict[str, float] | None:
    """Min, the percentiles at `BAND_SIGMAS` and max, interpolated in the layer histogram."""
    span = _layer_range(stats)
    if span is None:
        return None
    cdf, edges = _cdf(stats, span)
    if cdf[-1] == 0:
        return None
    targets = np.array([0.5 * (1 + math.erf(s / math.sqrt(2))) for s in BAND_SIGMAS]) * cdf[-1]
    # The first bucket whose cumulative count reaches the target; linear inside it.
    index = np.clip(np.searchsorted(cdf, targets, side="left"), 1, len(cdf) - 1)
    low, high = cdf[index - 1], cdf[index]
    fraction = np.where(high > low, (targets - low) / np.maximum(high - low, 1e-300), 0.0)
    values = edges[index - 1] + fraction * (edges[index] - edges[index - 1])
    return dict(zip(BAND_KEYS, [span[0], *values.tolist(), span[1]], strict=True))


def _tensorboard_buckets(stats: LayerStats) -> np.ndarray | None:
    """The layer histogram rebinned to `TENSORBOARD_BINS` equal buckets: rows (left, right, count)."""
    span = _layer_range(stats)
    if span is None:
        return None
    cdf, edges = _cdf(stats, span)
    if span[0] == span[1]:
        return np.array([[span[0], span[1], cdf[-1]]])
    bounds = np.linspace(span[0], span[1], TENSORBOARD_BINS + 1)
    counts = np.diff(np.interp(bounds, edges, cdf))
    return np.stack([bounds[:-1], bounds[1:], counts], axis=1)
