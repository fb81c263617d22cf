"""keraslens plugins that misbehave on purpose, one way each."""

from __future__ import annotations

import os
import sys
import threading
import time

from keraslens.plugin import Finding, Option, Plugin, PluginResult, Table


class Exits(Plugin):
    """Calls `sys.exit(code)` from `analyze`, or from `capture_settings`."""

    name = "exits"
    needs = frozenset()
    options = {
        "code": Option(int, 0, "The exit code it asks for."),
        "early": Option(bool, False, "Exit in capture_settings, before any data is read."),
    }

    @classmethod
    def capture_settings(cls, options):
        if options["early"]:
            sys.exit(options["code"])
        return {}

    def analyze(self, ctx):
        sys.exit(ctx.options["code"])


class Hangs(Plugin):
    """Never returns: spins in Python ("loop") or blocks in C ("sleep")."""

    name = "hangs"
    needs = frozenset()
    options = {"how": Option(str, "loop", "How it hangs.", choices=("loop", "sleep"))}
    spinning = threading.Event()
    """Set while a thread spins in `analyze`, cleared when it is stopped."""

    def analyze(self, ctx):
        if ctx.options["how"] == "sleep":
            time.sleep(3600)
        Hangs.spinning.set()
        try:
            while True:
                pass
        finally:
            Hangs.spinning.clear()


class Prints(Plugin):
    """Prints to stdout, moves the working directory, then returns a warning finding."""

    name = "prints"
    needs = frozenset()
    options = {"chdir": Option(str, "", "A directory to change into.")}

    def analyze(self, ctx):
        print("this line is not JSON {")
        if ctx.options["chdir"]:
            os.chdir(ctx.options["chdir"])
        return PluginResult(findings=[Finding("warning", "Printed to stdout.", value=1.0)])


class Interrupts(Plugin):
    """Raises `KeyboardInterrupt`, as Ctrl-C inside `analyze` would."""

    name = "interrupts"
    needs = frozenset()

    def analyze(self, ctx):
        raise KeyboardInterrupt


class Malformed(Plugin):
    """Returns a result that breaks the contract in the way `part` names."""

    name = "malformed"
    needs = frozenset()
    options = {
        "part": Option(
            str,
            "rows",
            "What is malformed.",
            choices=("rows", "short-row", "set", "mutated", "nan", "cycle", "not-a-result"),
        )
    }

    def analyze(self, ctx):
        part = ctx.options["part"]
        if part == "not-a-result":
            return {"findings": []}
        if part == "rows":
            return PluginResult(tables=[Table("units", ["layer", "units"], "dense,4")])
        if part == "short-row":
            return PluginResult(tables=[Table("units", ["layer", "units"], [["dense"]])])
        if part == "set":
            return PluginResult(data={"units": {1, 2, 3}})
        if part == "cycle":
            looped = []
            looped.append(looped)
            return PluginResult(data={"looped": looped})
        finding = Finding("warning", "Something.", value=0.5)
        if part == "mutated":
            finding.severity = "fatal"
        else:
            finding.value = float("nan")
        return PluginResult(findings=[finding])


class ValidateBreaks(Plugin):
    """Its `validate` hook has a bug (raises `ZeroDivisionError`)."""

    name = "validate-breaks"
    needs = frozenset()

    @classmethod
    def validate(cls, model, options):
        return 1 / 0

    def analyze(self, ctx):
        return PluginResult()
