"""The `keraslens` command: report, check, plugins, demo.

Commands parse their arguments, call the library and print; the work lives in
`keraslens.io`, `keraslens.config`, `keraslens.gate`, `keraslens.runner` and
`keraslens.report`. Paths, settings and rules are checked before TensorFlow is
imported, so `--help` and a mistyped path answer at once.
"""

from __future__ import annotations

import functools
import json
import os
import stat
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from keraslens import __version__, config, gate, paths
from keraslens.errors import KeraslensError
from keraslens.isolation import DEFAULT_TIME_LIMIT

if TYPE_CHECKING:
    import keras

    from keraslens.io import LoadedData
    from keraslens.result import AnalysisResult

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
SEED = click.IntRange(*config.SEED_RANGE)


class Console:
    """Where a command prints: results on stdout; progress, warnings and errors on stderr.

    On a terminal the capture shows a bar; elsewhere (a CI log, a pipe) plain progress
    lines, at most one every `PROGRESS_SECONDS` and one at the end.
    """

    PROGRESS_SECONDS = 5.0

    def __init__(self, verbose: bool = False, quiet: bool = False) -> None:
        self.verbose, self.quiet = verbose, quiet
        self.interactive = not quiet and sys.stderr.isatty()
        self._bar: Any = None
        self._done = 0
        self._last_line = time.monotonic()

    def say(self, message: str) -> None:
        if not self.quiet:
            click.echo(message)

    def step(self, message: str) -> None:
        """One progress line on stderr, such as "Loading model m.keras"."""
        if not self.quiet:
            self._close_bar()
            click.echo(message, err=True)

    def warn(self, message: str) -> None:
        if not self.quiet:
            click.echo(f"Warning: {message}", err=True)

    def detail(self, message: str) -> None:
        if self.verbose and not self.quiet:
            click.echo(message, err=True)

    def capture_progress(self, done: int, total: int | None) -> None:
        """`progress` callback of `analyze`: samples captured so far."""
        if self.quiet:
            return
        if not self.interactive:
            now, finished = time.monotonic(), total is not None and done >= total
            if finished or now - self._last_line >= self.PROGRESS_SECONDS:
                self._last_line = now
                of = f"/{total}" if total is not None else ""
                click.echo(f"Capturing: {done}{of} samples", err=True)
            return
        if self._bar is None:
            self._bar = click.progressbar(length=total, label="Capturing", file=sys.stderr)
            self._bar.__enter__()
        self._bar.update(done - self._done)
        self._done = done

    def plugin_progress(self, name: str, index: int, count: int) -> None:
        """`plugin_progress` callback of `analyze`: one line per plugin."""
        self.step(f"[{index + 1}/{count}] {name}")

    def finish(self) -> None:
        """Close the progress bar, if one is showing."""
        self._close_bar()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


def verbosity(command: Callable) -> Callable:
    """Add -v/-q and --version; a `KeraslensError` becomes one line (exit 2), anything
    else is a bug: its traceback and exit 4, never an exit code a gate could misread."""

    @click.option("-v", "--verbose", is_flag=True, help="Print details and tracebacks.")
    @click.option("-q", "--quiet", is_flag=True, help="Print only errors.")
    @click.version_option(__version__, "--version", prog_name="keraslens")
    @functools.wraps(command)
    def wrapper(*args: Any, verbose: bool, quiet: bool, **kwargs: Any) -> Any:
        console = Console(verbose, quiet)
        try:
            return command(*args, console=console, **kwargs)
        except (click.ClickException, click.exceptions.Abort, click.exceptions.Exit):
            raise
        except KeraslensError as error:
            console.finish()
            if verbose:
                traceback.print_exc()
            click.echo(f"Error: {error}", err=True)
            sys.exit(gate.EXIT_USAGE)
        except Exception as error:
            console.finish()
            traceback.print_exc()
            click.echo(
                f"Internal error: {type(error).__name__}: {error}. This is a bug in keraslens "
                "or a plugin, not in your input; please report it with the traceback above.",
                err=True,
            )
            sys.exit(gate.EXIT_INTERNAL)

    return wrapper


def _rescale(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """`--rescale 1/255` or `--rescale 0.5` as a positive number."""
    if value is None:
        return None
    numerator, slash, denominator = value.partition("/")
    try:
        factor = float(numerator) / float(denominator) if slash else float(value)
    except (ValueError, ZeroDivisionError):
        factor = float("nan")
    if not factor > 0 or factor == float("inf"):
        raise click.BadParameter(f"{value!r} is not a positive number such as 1/255 or 0.5.")
    return factor


def analysis_options(command: Callable) -> Callable:
    """The options shared by `report` and `check`."""
    options = [
        click.argument("model_path", metavar="MODEL", type=click.Path()),
        click.option(
            "--data",
            "data_spec",
            required=True,
            metavar="DATA",
            help=".npy, .npz, a folder of images, or module:function.",
        ),
        click.option("--data-key", help="The array to use when the .npz holds several."),
        click.option("--labels", help="Labels: a .npy file, or a key of the .npz."),
        click.option(
            "-p",
            "--plugin",
            "plugins",
            multiple=True,
            metavar="PLUGIN",
            help="Run only this plugin (repeatable). Default: every installed one.",
        ),
        click.option(
            "--exclude",
            multiple=True,
            metavar="PLUGIN",
            help="Do not run this plugin (repeatable).",
        ),
        click.option(
            "--layers",
            multiple=True,
            metavar="NAME|GLOB",
            help="Analyse only these layers (repeatable; globs such as 'conv*').",
        ),
        click.option(
            "--samples",
            type=click.IntRange(min=1),
            help="Analyse a random subset of N samples (stated in the report).",
        ),
        click.option("--batch-size", type=click.IntRange(min=1), help="Samples per step [256]."),
        click.option("--seed", type=SEED, help="Seed for sampling and plugins [0]."),
        click.option(
            "--minimal", is_flag=True, default=None, help="Skip the expensive plugins and figures."
        ),
        click.option(
            "--time-limit",
            type=click.FloatRange(min=0, min_open=True),
            help=f"Seconds each plugin may run before it is stopped [{DEFAULT_TIME_LIMIT:g}].",
        ),
        click.option(
            "--option",
            "option_items",
            multiple=True,
            metavar="PLUGIN.KEY=VALUE",
            help="Set a plugin option, e.g. dead-neurons.threshold=0.3 (repeatable).",
        ),
        click.option(
            "--config",
            "config_path",
            type=click.Path(),
            help="Read settings from a TOML file (keraslens.toml).",
        ),
        click.option(
            "--unsafe",
            is_flag=True,
            help="Allow a model that runs code when loaded: Python code (Lambda layers), "
            "a TFSMLayer, a SavedModel directory. Only for models you trust.",
        ),
        click.option(
            "--import",
            "imports",
            multiple=True,
            metavar="MODULE",
            help="Import this module before loading, so that the custom objects it registers "
            "are known (repeatable; runs its code).",
        ),
        click.option(
            "--rescale",
            callback=_rescale,
            metavar="FACTOR",
            help="Multiply the pixels of a folder of images, e.g. 1/255 for a model "
            "trained on 0..1.",
        ),
        click.option(
            "--vocab",
            type=click.Path(),
            help="Token model: a text file, line i the token of id i (sets heatmaps.vocab).",
        ),
        click.option(
            "--json",
            "json_path",
            type=click.Path(),
            help="Also write the JSON twin of the report here.",
        ),
        click.option(
            "--full",
            is_flag=True,
            help="Keep every layer's histogram and per-unit arrays in the JSON twin "
            "(by default only small layers keep them).",
        ),
        click.option(
            "--strategy",
            type=click.Choice(["mirrored", "multiworker"]),
            help="Capture with tf.distribute: every local GPU, or the cluster of TF_CONFIG.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="keraslens")
def cli() -> None:
    """keraslens: see what happens inside a Keras model.

    Start with `keraslens demo`, then `keraslens report model.keras --data x.npy`.
    """


@cli.command(context_settings=CONTEXT)
@analysis_options
@click.option(
    "-o",
    "--output",
    default="report.html",
    show_default=True,
    type=click.Path(),
    help="Where to write the HTML report.",
)
@verbosity
def report(console: Console, output: str, json_path: str | None, full: bool, **kwargs: Any) -> None:
    """Analyse MODEL on DATA and write a self-contained HTML report."""
    targets = _check_paths({"-o/--output": output, "--json": json_path}, **kwargs)
    _write(console, _run(console, **kwargs), targets, full)


@cli.command(context_settings=CONTEXT)
@analysis_options
@click.option(
    "--fail-on",
    "fail_on",
    multiple=True,
    metavar="RULE",
    help="Fail when a value crosses a limit, e.g. 'dead-neurons.dead_fraction>0.2'; "
    "a signed limit ('>+0.05') is relative to --baseline (repeatable).",
)
@click.option("--baseline", type=click.Path(), help="JSON twin of an accepted model.")
@click.option("--fail-on-warning", is_flag=True, help="Also fail on warning findings.")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="How to print the verdict.",
)
@click.option("-o", "--output", type=click.Path(), help="Also write the HTML report here.")
@verbosity
def check(
    console: Console,
    fail_on: tuple[str, ...],
    baseline: str | None,
    fail_on_warning: bool,
    output_format: str,
    output: str | None,
    json_path: str | None,
    full: bool,
    **kwargs: Any,
) -> None:
    """A CI gate: exit 0 when clean, 1 when a threshold is crossed, 2 on usage errors,
    3 when a plugin could not run, 4 on an internal error."""
    targets = _check_paths({"-o/--output": output, "--json": json_path}, baseline, **kwargs)
    rules = [gate.Rule.parse(text) for text in fail_on]
    accepted = gate.read_baseline(baseline) if baseline else None
    gate.check_rules(rules, accepted)
    result = _run(console, rules=rules, **kwargs)
    twin = result.to_dict()
    if accepted is not None:
        gate.check_baseline(accepted, twin, baseline)
    violations = gate.evaluate(rules, twin, accepted)
    code = gate.exit_code(twin, violations, fail_on_warning)
    _write(Console(quiet=True), result, targets, full)
    if output_format == "json":
        click.echo(json.dumps(_verdict(twin, violations, code), indent=2))
    else:
        _print_verdict(console, twin, violations, code)
    sys.exit(code)


@cli.command(context_settings=CONTEXT)
@verbosity
def plugins(console: Console) -> None:
    """List installed plugins: distribution, version, options and status."""
    from keraslens import registry

    for info in registry.available():
        source = " ".join(filter(None, [info.distribution, info.version])) or "unknown"
        console.say(f"{info.name}  [{info.status}]  {source}")
        if info.plugin is None:
            console.say(f"    reason: {info.error}")
            continue
        if info.plugin.expensive:
            console.say("    expensive: skipped by --minimal")
        for key, option in info.plugin.options.items():
            console.say(
                f"    {info.name}.{key} ({option.type.__name__}, default {option.default!r}): "
                f"{option.help}"
            )


@cli.command(context_settings=CONTEXT)
@click.option(
    "-o",
    "--output",
    default="demo-report.html",
    show_default=True,
    type=click.Path(),
    help="Where to write the HTML report.",
)
@click.option("--json", "json_path", type=click.Path(), help="Also write the JSON twin here.")
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed of data and training.")
@click.option(
    "--epochs", default=4, show_default=True, type=click.IntRange(min=1), help="Training epochs."
)
@click.option("--minimal", is_flag=True, help="Skip the expensive plugins and figures.")
@click.option(
    "--text",
    is_flag=True,
    help="The text demo: a Transformer encoder on generated tokens, one deciding.",
)
@verbosity
def demo(
    console: Console,
    output: str,
    json_path: str | None,
    seed: int,
    epochs: int,
    minimal: bool,
    text: bool,
) -> None:
    """Train a small CNN on scikit-learn's digits (or, with --text, a small Transformer
    encoder on generated tokens) and write its report (no download)."""
    targets = paths.check_outputs({"-o/--output": output, "--json": json_path}, {})
    what = (
        "a Transformer encoder on generated tokens"
        if text
        else "a small CNN on scikit-learn's digits"
    )
    console.step(f"Training {what} ({epochs} epochs) ...")
    from keraslens import demo as demo_module

    result = (demo_module.run_text if text else demo_module.run)(
        seed=seed,
        epochs=epochs,
        minimal=minimal,
        progress=console.capture_progress,
        plugin_progress=console.plugin_progress,
    )
    _write(console, result, targets)


def _check_paths(
    outputs: dict[str, str | None],
    baseline: str | None = None,
    *,
    model_path: str,
    data_spec: str,
    labels: str | None,
    config_path: str | None,
    imports: tuple[str, ...],
    vocab: str | None = None,
    **_: Any,
) -> dict[str, paths.Output]:
    """The outputs with their absolute targets, after checking every input and output
    path; fixed now, so that a plugin's `os.chdir` cannot move them."""
    paths.existing(model_path, "Model")
    inputs = {
        "MODEL": [Path(model_path)],
        "--data": _data_inputs(data_spec),
        "--labels": [Path(labels)] if labels and os.path.lexists(labels) else [],
        "--config": [Path(config_path)] if config_path else [],
        "--baseline": [Path(baseline)] if baseline else [],
        "--import": [f for f in map(paths.module_file, imports) if f is not None],
        "--vocab": [Path(vocab)] if vocab else [],
    }
    return paths.check_outputs(outputs, inputs)


def _run(
    console: Console,
    model_path: str,
    data_spec: str,
    data_key: str | None,
    labels: str | None,
    config_path: str | None,
    option_items: tuple[str, ...],
    unsafe: bool,
    imports: tuple[str, ...],
    rescale: float | None,
    strategy: str | None,
    time_limit: float | None,
    rules: list[gate.Rule] | None = None,
    vocab: str | None = None,
    **flags: Any,
) -> AnalysisResult:
    """Check every setting and rule, load model and data, and analyse."""
    if vocab:
        paths.existing(vocab, "Vocabulary")
        option_items = (*option_items, f"heatmaps.vocab={os.path.abspath(vocab)}")
    settings = config.settings(
        config.read_config(config_path) if config_path else None,
        options=config.parse_options(option_items),
        **flags,
    )
    console.step("Loading TensorFlow ...")
    from keraslens.capture.distributed import capture_strategy, strategy_named
    from keraslens.runner import Analysis, prepare_runs

    # A multi-worker strategy must exist before TensorFlow runs anything.
    distribution = strategy_named(strategy)
    runs = prepare_runs(
        settings.plugins,
        settings.options,
        exclude=settings.exclude,
        skip_expensive=settings.minimal,
    )
    if rules:
        gate.check_plugins(rules, [run.name for run in runs])
    model, loaded, non_finite = _load(
        console,
        model_path,
        data_spec,
        unsafe,
        imports,
        data_key=data_key,
        labels=labels,
        rescale=rescale,
    )
    with capture_strategy(distribution):
        analysis = Analysis.from_runs(
            model,
            runs,
            layers=settings.layers,
            minimal=settings.minimal,
            time_limit=DEFAULT_TIME_LIMIT if time_limit is None else time_limit,
        )
        result = analysis.run(
            loaded.inputs,
            labels=loaded.labels,
            batch_size=settings.batch_size,
            samples=settings.samples,
            seed=settings.seed,
            data_source=loaded.source,
            progress=console.capture_progress,
            plugin_progress=console.plugin_progress,
        )
    result.meta["non_finite"] = non_finite
    return result


def _load(
    console: Console,
    model_path: str,
    data_spec: str,
    unsafe: bool,
    imports: tuple[str, ...],
    **read: Any,
) -> tuple[keras.Model, LoadedData, dict[str, Any] | None]:
    """The model, its data (whose source names any NaN or Inf, also warned about) and
    the count of non-finite values."""
    from keraslens import io

    io.import_modules(imports)
    console.step(f"Loading model {model_path} ...")
    model = io.load_model(model_path, unsafe=unsafe)
    console.step(f"Reading data {data_spec} ...")
    loaded = io.load_data(data_spec, model, **read)
    console.detail(f"Loaded {model.name} and {loaded.source}.")
    non_finite = io.non_finite(model, loaded.inputs)
    if non_finite and non_finite["values"]:
        note = _non_finite_note(non_finite)
        console.warn(f"{data_spec}: {note}.")
        loaded.source = f"{loaded.source}; {note}"
    return model, loaded, non_finite


def _data_inputs(spec: str) -> list[Path]:
    """The files and folders `--data` reads: the file or folder (with the images under
    it, which may be links to elsewhere), or the module of a `module:function` loader."""
    if paths.is_loader(spec):
        module = paths.module_file(spec.partition(":")[0])
        return [module] if module is not None else []
    path = Path(spec)
    if stat.S_ISDIR(paths.existing_data(spec).st_mode):
        return [path, *paths.image_files(path)]
    return [path]


def _non_finite_note(counts: dict[str, Any]) -> str:
    return (
        f"{counts['values']} non-finite values (NaN or Inf) in {counts['samples']} samples "
        f"of input {', '.join(map(repr, counts['inputs']))}"
    )


def _write(
    console: Console,
    result: AnalysisResult,
    targets: dict[str, paths.Output],
    full: bool = False,
) -> None:
    """Write the HTML report and its JSON twin (`full`: with every per-unit array)
    together: both are rendered first, then both replace their files, or neither does."""
    from keraslens.atomic import write_together
    from keraslens.report import render_html

    console.finish()
    html, twin = targets.get("-o/--output"), targets.get("--json")
    files = {}
    if html is not None:
        files[html.target] = render_html(result)
    if twin is not None:
        files[twin.target] = result.to_json_text(full)
    write_together(files)
    if html is not None:
        console.say(f"Wrote {html.given}: {_summary(result.status, result.counts)}")
    if twin is not None:
        console.say(f"Wrote {twin.given}")
    for run in result.errors:
        console.say(f"Plugin {run.name} could not run: {run.error}")


def _summary(status: str, counts: dict[str, int]) -> str:
    return (
        f"{status.upper()} ({counts['error']} errors, {counts['warning']} warnings, "
        f"{counts['plugin_errors']} plugin errors)"
    )


def _verdict(twin: dict[str, Any], violations: list[gate.Violation], code: int) -> dict:
    return {
        "exit_code": code,
        "status": _VERDICTS[code].lower(),
        "violations": [v.to_dict() for v in violations],
        "findings": [f for f in twin["findings"] if f["severity"] != "info"],
        "plugin_errors": {
            name: entry["error"] for name, entry in twin["plugins"].items() if entry["error"]
        },
        "counts": twin["counts"],
    }


def _print_verdict(console: Console, twin: dict, violations: list[gate.Violation], code: int):
    for name, entry in twin["plugins"].items():
        if entry["error"]:
            click.echo(f"ERROR plugin {name} could not run: {entry['error']}")
    for violation in violations:
        click.echo(f"FAIL {violation.describe()}")
    for finding in twin["findings"]:
        if finding["severity"] == "info":
            continue
        where = finding["layer"] or "model"
        click.echo(
            f"{finding['severity'].upper()} {finding['plugin']}: {where}: {finding['message']}"
        )
    counts = twin["counts"]
    crossed = f"{len(violations)} rule{'' if len(violations) == 1 else 's'} crossed"
    console.say(
        f"{_VERDICTS[code]}: {crossed}, {counts['error']} errors, {counts['warning']} warnings, "
        f"{counts['plugin_errors']} plugin errors"
    )


_VERDICTS = {gate.EXIT_CLEAN: "PASS", gate.EXIT_FAILED: "FAIL", gate.EXIT_PLUGIN_ERROR: "ERROR"}


def main() -> None:
    """Entry point of the `keraslens` command."""
    cli(prog_name="keraslens")
