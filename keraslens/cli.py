"""The `keraslens` command: report, check, plugins, demo.

Commands parse their arguments, call the library and print; the work lives in
`keraslens.io`, `keraslens.config`, `keraslens.gate`, `keraslens.runner` and
`keraslens.report`.
"""

from __future__ import annotations

import functools
import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from keraslens import __version__, config, gate, io
from keraslens import plugins as registry
from keraslens.capture.distributed import capture_strategy, strategy_named
from keraslens.errors import KeraslensError
from keraslens.result import AnalysisResult
from keraslens.runner import analyze, prepare_runs

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
SEED = click.IntRange(*config.SEED_RANGE)


class Console:
    """Where the command prints: quiet, normal or verbose; progress only on a terminal."""

    def __init__(self, verbose: bool = False, quiet: bool = False) -> None:
        self.verbose, self.quiet = verbose, quiet
        self.interactive = not quiet and sys.stderr.isatty()
        self._bar: Any = None
        self._done = 0

    def say(self, message: str) -> None:
        if not self.quiet:
            click.echo(message)

    def detail(self, message: str) -> None:
        if self.verbose and not self.quiet:
            click.echo(message, err=True)

    def capture_progress(self, done: int, total: int | None) -> None:
        """`progress` callback of `analyze`: a bar over the capture batches."""
        if not self.interactive:
            return
        if self._bar is None:
            self._bar = click.progressbar(length=total, label="Capturing", file=sys.stderr)
            self._bar.__enter__()
        self._bar.update(done - self._done)
        self._done = done

    def plugin_progress(self, name: str, index: int, count: int) -> None:
        """`plugin_progress` callback of `analyze`: one line per plugin."""
        self._close_bar()
        if self.interactive or self.verbose:
            click.echo(f"[{index + 1}/{count}] {name}", err=True)

    def finish(self) -> None:
        """Close the progress bar, if one is showing."""
        self._close_bar()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


def verbosity(command: Callable) -> Callable:
    """Add -v/-q and --version, and turn user errors into one line (exit 2)."""

    @click.option("-v", "--verbose", is_flag=True, help="Print details and tracebacks.")
    @click.option("-q", "--quiet", is_flag=True, help="Print only errors.")
    @click.version_option(__version__, "--version", prog_name="keraslens")
    @functools.wraps(command)
    def wrapper(*args: Any, verbose: bool, quiet: bool, **kwargs: Any) -> Any:
        console = Console(verbose, quiet)
        try:
            return command(*args, console=console, **kwargs)
        except (KeraslensError, ValueError, OSError) as error:
            if verbose:
                traceback.print_exc()
            click.echo(f"Error: {error}", err=True)
            sys.exit(gate.EXIT_USAGE)

    return wrapper


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
            help="Allow a model file that carries Python code (Lambda layers).",
        ),
        click.option(
            "--json",
            "json_path",
            type=click.Path(),
            help="Also write the JSON twin of the report here.",
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
def report(console: Console, output: str, json_path: str | None, **kwargs: Any) -> None:
    """Analyse MODEL on DATA and write a self-contained HTML report."""
    result = _run(console, {"-o/--output": output, "--json": json_path}, **kwargs)
    _write(console, result, output, json_path)


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
    **kwargs: Any,
) -> None:
    """A CI gate: exit 0 when clean, 1 when a threshold is crossed, 2 on usage errors,
    3 when a plugin could not run."""
    rules = [gate.Rule.parse(text) for text in fail_on]
    accepted = gate.read_baseline(baseline) if baseline else None
    gate.check_rules(rules, accepted)
    result = _run(console, {"-o/--output": output, "--json": json_path}, rules=rules, **kwargs)
    twin = result.to_dict()
    violations = gate.evaluate(rules, twin, accepted)
    code = gate.exit_code(twin, violations, fail_on_warning)
    _write(Console(quiet=True), result, output, json_path)
    if output_format == "json":
        click.echo(json.dumps(_verdict(twin, violations, code), indent=2))
    else:
        _print_verdict(console, twin, violations, code)
    sys.exit(code)


@cli.command(context_settings=CONTEXT)
@verbosity
def plugins(console: Console) -> None:
    """List installed plugins: distribution, version, options and status."""
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
@verbosity
def demo(
    console: Console, output: str, json_path: str | None, seed: int, epochs: int, minimal: bool
) -> None:
    """Train a small CNN on scikit-learn's digits and write its report (no download)."""
    from keraslens import demo as demo_module

    _check_outputs({"-o/--output": output, "--json": json_path}, {})
    console.say(f"Training a small CNN on scikit-learn's digits ({epochs} epochs) ...")
    result = demo_module.run(
        seed=seed,
        epochs=epochs,
        minimal=minimal,
        progress=console.capture_progress,
        plugin_progress=console.plugin_progress,
    )
    _write(console, result, output, json_path)


def _run(
    console: Console,
    outputs: dict[str, str | None],
    model_path: str,
    data_spec: str,
    data_key: str | None,
    labels: str | None,
    config_path: str | None,
    option_items: tuple[str, ...],
    unsafe: bool,
    strategy: str | None,
    rules: list[gate.Rule] | None = None,
    **flags: Any,
) -> AnalysisResult:
    """Check every output path, setting and rule, load model and data, and analyse."""
    _check_outputs(
        outputs,
        {"MODEL": model_path, "--data": data_spec, "--labels": labels, "--config": config_path},
    )
    # A multi-worker strategy must exist before TensorFlow runs anything.
    distribution = strategy_named(strategy)
    settings = config.settings(
        config.read_config(config_path) if config_path else None,
        options=config.parse_options(option_items),
        **flags,
    )
    if rules:
        runs = prepare_runs(settings.plugins, settings.exclude, settings.options, settings.minimal)
        gate.check_plugins(rules, [info.name for info, _, _ in runs])
    model = io.load_model(model_path, unsafe=unsafe)
    loaded = io.load_data(data_spec, model, data_key=data_key, labels=labels)
    console.detail(f"Loaded {model.name} and {loaded.source}.")
    with capture_strategy(distribution):
        return analyze(
            model,
            loaded.inputs,
            settings.plugins,
            settings.options,
            exclude=settings.exclude,
            layers=settings.layers,
            labels=loaded.labels,
            batch_size=settings.batch_size,
            samples=settings.samples,
            seed=settings.seed,
            minimal=settings.minimal,
            data_source=loaded.source,
            progress=console.capture_progress,
            plugin_progress=console.plugin_progress,
        )


def _check_outputs(outputs: dict[str, str | None], inputs: dict[str, str | None]) -> None:
    """Refuse, before any work, an output path (option -> path, None when not given) that
    is empty, not writable, given to two options, or one of the `inputs` files."""
    written: dict[Path, str] = {}
    for option, path in outputs.items():
        if path is None:
            continue
        if not path:
            raise KeraslensError(f"{option} is empty: name the file to write.")
        io.check_writable(path)
        target = Path(path).resolve()
        if target in written:
            raise KeraslensError(
                f"{written[target]} and {option} both name {path!r}: give each its own file."
            )
        written[target] = option
        for source, given in inputs.items():
            if given and Path(given).resolve() == target:
                raise KeraslensError(
                    f"{option} {path!r} is the {source} file: writing it would overwrite "
                    "the input. Choose another output path."
                )


def _write(console: Console, result: AnalysisResult, output: str | None, json_path: str | None):
    console.finish()
    if output:
        result.to_html(output)
        console.say(f"Wrote {output}: {_summary(result.status, result.counts)}")
    if json_path:
        result.to_json(json_path)
        console.say(f"Wrote {json_path}")
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
        "status": {0: "pass", 1: "fail", 3: "error"}[code],
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
    console.say(
        f"{['PASS', 'FAIL', '', 'ERROR'][code]}: {_summary(twin['status'], twin['counts'])}"
    )


def main() -> None:
    """Entry point of the `keraslens` command."""
    cli(prog_name="keraslens")
