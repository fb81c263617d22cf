"""`LensCallback`: keraslens analyses inside `model.fit`, with a per-layer training history."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np

from keraslens.capture import LayerStats
from keraslens.capture.traversal import LayerSelector
from keraslens.errors import KeraslensError
from keraslens.jsonable import to_jsonable
from keraslens.result import AnalysisResult, PluginRun
from keraslens.runner import Analysis, PreparedRun, prepare_runs
from keraslens.training.alerts import Alerts, check_thresholds
from keraslens.training.fixed import FixedPart
from keraslens.training.history import HistoryFile, TrainingHistory
from keraslens.training.tensorboard import TensorBoardWriter, require_tensorboard

LAYER_FIGURES = ("mean", "std", "firing_rate")
"""The figures of every layer in the training history; plugins add theirs
(`Plugin.training_metrics`: dead_fraction, saturated_fraction)."""

_REPORTS = ("final", "every", None)


class LensCallback(keras.callbacks.Callback):
    """Run keraslens analyses on probe data during `model.fit` and keep a per-layer history.

    At the chosen times (every `every` epochs, or every `every_steps` training
    steps, plus once before the first step) the callback captures statistics of
    the probe data in one compiled pass, with one `Lens` reused for the whole
    training, and runs the selected plugins on them. For each layer it records
    the mean, standard deviation and firing rate of its outputs and the figures
    the selected plugins contribute (dead-neurons' dead fraction, saturation's
    saturated fraction), in `callback.history` and as JSON lines in
    `out_dir/history.jsonl` (flushed at once, so a crash keeps what was logged).
    When a layer's figure crosses its threshold it prints one line and records an
    alert. Nothing of the callback's own stops training unless `fail_fast` asks:
    an analysis that raises is printed and recorded, and an `out_dir` that cannot
    be written gets one warning while the history stays in memory.

    Args:
        probe_data: the inputs to analyse (array, tuple/dict of arrays,
            `tf.data.Dataset` or `PyDataset`, as in `keraslens.analyze`). A few
            hundred samples are enough; each analysis costs about one
            `model.predict` over them.
        every: analyse every this many epochs (ignored when `every_steps` is set).
        every_steps: analyse every this many training steps instead.
        plugins: plugin names to run; None runs every installed plugin that is
            not marked expensive.
        options: plugin name -> its options, as in `keraslens.analyze`.
        out_dir: where the history, the reports and the TensorBoard events go;
            one callback at a time writes it.
        report: "final" writes `report.html`/`report.json` (with the training
            section) when training ends, "every" also writes one per analysis,
            None writes none.
        tensorboard: also write the figures as scalars and each layer's
            activations as histograms with `tf.summary` in `out_dir` (needs
            `pip install "keraslens[tensorboard]"`).
        fail_fast: stop training (`model.stop_training`) at the first alert or
            failed analysis.
        thresholds: figure name -> value above which it alerts, e.g.
            `{"dead_fraction": 0.5}`. Default: the threshold option of each
            plugin figure (dead-neurons' and saturation's `threshold`, 0.2
            unless set in `options`).
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
            require_tensorboard()
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
        # Names and options are checked now, before any training step.
        self._runs = prepare_runs(plugins, options, skip_expensive=plugins is None)
        self._plugin_figures, defaults = _plugin_figures(self._runs)
        self.figures = (*self._plugin_figures, *LAYER_FIGURES)
        self.thresholds = {**defaults, **check_thresholds(thresholds, self.figures)}
        self._log = HistoryFile(self.out_dir)
        self._log.check_free()
        self._record = TrainingHistory()
        self._alerts = Alerts(self.thresholds)
        self.result: AnalysisResult | None = None
        self._analysis: Analysis | None = None
        self._fixed: FixedPart | None = None
        self._writer: TensorBoardWriter | None = None
        self._started = False
        self._training = False
        self._epoch = 0
        self._step = 0
        self._captured_step: int | None = None

    @property
    def history(self) -> list[dict[str, Any]]:
        """One row per layer and analysis: `epoch`, `step`, `layer`, its figures, `alerts`."""
        return self._record.rows

    @property
    def bands(self) -> dict[str, list[dict[str, Any]]]:
        """Layer -> its distribution band (`LayerStats.band()`) at each analysis."""
        return self._record.bands

    @property
    def alerts(self) -> list[dict[str, Any]]:
        """`{epoch, step, layer, metric, value, threshold}` for each alert raised."""
        return self._record.alerts

    @property
    def errors(self) -> list[dict[str, Any]]:
        """`{epoch, step, source, error}` for each analysis that failed."""
        return self._record.errors

    # Keras hooks -------------------------------------------------------------------------

    def on_train_begin(self, logs=None) -> None:
        if self.tensorboard:
            require_tensorboard()
        self._started = False
        self._training = True
        if self._analysis is None or self._analysis.model is not self.model:
            self._analysis = Analysis.from_runs(self.model, self._runs, layers=self.layers)
        self._fixed = None
        if "stats" in self._analysis.needs and self._strategy() is None:
            # What training cannot change is captured once per fit (a frozen backbone).
            self._fixed = FixedPart.find(self._analysis.lens, self.probe_data)

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
        self._training = False
        if self.report is not None and self._started:
            if self._captured_step != self._step:
                self._analyze_safely()
            if self.result is not None and self._log.writing:
                self._guarded("report", self._write_report)
        self._close()

    def training_section(self) -> dict[str, Any]:
        """The JSON-safe training section of the report (`result.extra["training"]`)."""
        every = self.every if self.every_steps is None else None
        return self._record.section(self.thresholds, every, self.every_steps)

    # Internals ---------------------------------------------------------------------------

    def _start(self, initial_epoch: int) -> None:
        """Open the log on the first epoch of a fit.

        A fit from epoch 0 starts a new history; a fit resumed at `initial_epoch`
        keeps what was logged up to that epoch (read back from `out_dir` when this
        callback is new) and drops the rest.
        """
        self._started = True
        self._log.open()
        if initial_epoch == 0:
            entries = []
        elif self._record.entries:
            entries = self._record.entries
        else:
            entries = self._log.read()
        self._record = TrainingHistory(e for e in entries if e["epoch"] <= initial_epoch)
        self._log.replace(self._record.entries)
        self._alerts.reset(self._record.rows)
        steps = (self.params or {}).get("steps")
        last_step = max((e["step"] for e in self._record.entries), default=0)
        self._step = initial_epoch * steps if steps else last_step
        self._epoch = initial_epoch
        self._captured_step = None
        if self.tensorboard and self._log.writing:
            self._writer = TensorBoardWriter(self.out_dir)
        if initial_epoch == 0:
            self._analyze_safely()

    def _analyze_safely(self) -> None:
        self._captured_step = self._step
        self._guarded("capture", self._analyze)

    def _guarded(self, source: str, action: Callable[[], None]) -> None:
        """Run `action`; an exception is printed and recorded, never raised into `fit`."""
        try:
            action()
        except Exception as error:  # an analysis must never break training
            self._failed(source, f"{type(error).__name__}: {error}", traceback.format_exc())

    def _failed(self, source: str, error: str, trace: str | None) -> None:
        entry = {"epoch": self._epoch, "step": self._step, "source": source, "error": error}
        self._add({"kind": "error", **entry, "traceback": trace})
        what = source if source in ("capture", "report") else f"plugin {source!r}"
        self._say(f"keraslens {what} failed ({error}){self._stop_if_fail_fast()}")

    def _analyze(self) -> None:
        # Figures are drawn for reports only: matplotlib would dominate the cost of an epoch.
        result = self._run(figures=self.report == "every")
        stats, runs = result.stats, result.plugins
        for run in runs.values():
            if run.error is not None:
                self._failed(run.name, run.error, run.traceback)
        for key, layer_stats in stats.items():
            self._log_layer(key, layer_stats, runs)
        if self._writer is not None:
            self._writer.flush()
        self.result = result
        if self.report == "every" and self._log.writing:
            self._write_report(suffix=f"-epoch{self._epoch:04d}-step{self._step:07d}")

    def _run(self, figures: bool) -> AnalysisResult:
        stats = None
        if self._fixed is not None:
            stats = self._fixed.capture(self.probe_data, self.batch_size)
        return self._analysis.run(
            self.probe_data,
            labels=self.labels,
            batch_size=self.batch_size,
            seed=self.seed,
            data_source=f"probe data at epoch {self._epoch}, step {self._step}",
            figures=figures,
            strategy=self._strategy(),
            stats=stats,
            outputs=None if self._fixed is None else self._fixed.outputs,
        )

    def _strategy(self) -> Any:
        # Keras keeps the strategy a model was built under (None outside any scope), and the
        # probe pass runs under it: the same devices and workers as the training steps.
        return getattr(self.model, "_distribute_strategy", None)

    def _log_layer(self, key: str, stats: LayerStats, runs: Mapping[str, PluginRun]) -> None:
        figures = to_jsonable({**self._plugin_values(key, runs), **_layer_figures(stats)})
        row = {"epoch": self._epoch, "step": self._step, "layer": key, **figures}
        raised = self._alerts.update(row)
        band = stats.band()
        if band is not None:
            band = {"epoch": self._epoch, "step": self._step, **band}
        self._add({"kind": "layer", **row, "alerts": [a["metric"] for a in raised], "band": band})
        for alert in raised:
            self._add({"kind": "alert", **alert})
            label = alert["metric"].replace("_", " ")
            self._say(
                f"keraslens: layer {key!r} {label} {alert['value']:.3f} > "
                f"{alert['threshold']:g}{self._stop_if_fail_fast() if self.fail_fast else '.'}"
            )
        if self._writer is not None:
            step = self._step if self.every_steps is not None else self._epoch
            self._writer.write(key, figures, stats, step)

    def _plugin_values(self, layer: str, runs: Mapping[str, PluginRun]) -> dict[str, Any]:
        values = {}
        for metric, plugin in self._plugin_figures.items():
            run = runs.get(plugin)
            result = None if run is None else run.result
            value = None if result is None else result.data.get("layers", {}).get(layer, {})
            values[metric] = None if value is None else value.get(metric)
        return values

    def _add(self, entry: dict[str, Any]) -> None:
        self._log.write(self._record.add(entry))

    def _stop_if_fail_fast(self) -> str:
        """Stop the fit if `fail_fast` asks; the end of the message that says what happens."""
        if not self._training:
            return "."
        if self.fail_fast:
            self.model.stop_training = True
            return "; training stops (fail_fast=True)."
        return "; training goes on."

    def _write_report(self, suffix: str = "") -> None:
        if self.report != "every":  # the analyses during training drew no figures
            self.result = self._run(figures=True)
        self.result.extra["training"] = self.training_section()
        self.result.to_json(self.out_dir / f"report{suffix}.json")
        self.result.to_html(self.out_dir / f"report{suffix}.html")

    def _say(self, message: str) -> None:
        verbose = self.verbose
        if verbose == "auto":
            verbose = (self.params or {}).get("verbose", 1)
        if not verbose:
            return
        # As Keras' own callbacks print: to stdout, or to the log when Keras logs instead.
        line = f"\nEpoch {self._epoch}: {message}"
        if keras.config.is_interactive_logging_enabled():
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        else:
            logging.getLogger("keraslens").info(line)

    def _close(self) -> None:
        self._log.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _check_positive(name: str, value: Any) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise KeraslensError(f"{name} must be a positive integer, got {value!r}.")


def _plugin_figures(runs: Iterable[PreparedRun]) -> tuple[dict[str, str], dict[str, float]]:
    """Figure -> the selected plugin that records it (`Plugin.training_metrics`), and the
    figures' default thresholds from the options those plugins name."""
    figures, thresholds = {}, {}
    for run in runs:
        declared = getattr(run.info.plugin, "training_metrics", {})
        if not isinstance(declared, Mapping) or not all(
            isinstance(metric, str) and (option is None or option in run.options)
            for metric, option in declared.items()
        ):
            raise KeraslensError(
                f"Plugin {run.name!r} declares training_metrics {declared!r}; expected a dict "
                "of figure name -> one of its options (the threshold) or None."
            )
        for metric, option in declared.items():
            figures[metric] = run.name
            if option is not None:
                thresholds[metric] = float(run.options[option])
    return figures, thresholds


def _layer_figures(stats: LayerStats) -> dict[str, float]:
    """Mean, standard deviation and firing rate of all of the layer's outputs together."""
    mean, std = stats.pooled()
    counted = stats.count.sum()
    firing = stats.positive_count.sum() / counted if counted else float("nan")
    return {"mean": mean, "std": std, "firing_rate": float(firing)}
