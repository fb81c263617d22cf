"""Shared fixtures of the report and CLI tests: tiny models and small stand-in plugins.

The stand-in plugins are registered by monkeypatching the entry-point lookup, so the
tests do not depend on which built-in plugins are installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import matplotlib
import numpy as np
import pytest

from keraslens.plugin import Figure, Finding, Option, Plugin, PluginResult, Table

matplotlib.use("Agg")

XSS = "<script>alert(1)</script>"


class DeadUnits(Plugin):
    """Flags layers whose fraction of never-firing units exceeds `threshold`."""

    name = "fake-dead"
    title = "Dead units (test stand-in)"
    options = {"threshold": Option(float, 0.1, "Largest acceptable dead fraction.", min=0, max=1)}

    def analyze(self, ctx):
        layers, findings = {}, []
        for path, stats in ctx.stats.items():
            dead = np.flatnonzero(stats.firing_rate == 0)
            fraction = len(dead) / stats.units
            layers[path] = {"dead_fraction": fraction, "dead_units": len(dead)}
            if fraction > ctx.options["threshold"]:
                findings.append(
                    Finding(
                        "error",
                        f"{len(dead)} of {stats.units} units never fire.",
                        layer=path,
                        units=dead.tolist(),
                        value=fraction,
                        threshold=ctx.options["threshold"],
                        threshold_name="fake-dead.threshold",
                        label="dead units",
                        fix="Use LeakyReLU or a lower learning rate.",
                    )
                )
        rows = [[p, v["dead_fraction"]] for p, v in layers.items()]
        return PluginResult(
            data={"layers": layers, "worst": max((r[1] for r in rows), default=0.0)},
            findings=findings,
            tables=[Table("Dead fraction per layer", ["layer", "dead fraction"], rows)],
        )


class MeanPlot(Plugin):
    """Draws one matplotlib figure of the per-layer means and warns on large ones."""

    name = "fake-plot"
    title = "Mean plot (test stand-in)"
    expensive = True

    def analyze(self, ctx):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(3, 2))
        means = [float(np.nanmean(s.mean)) for s in ctx.stats.values()]
        ax.plot(means)
        findings = [
            Finding("warning", "Mean is large.", layer=p, value=m, threshold=1.0, label="big mean")
            for p, m in zip(ctx.stats, means, strict=True)
            if abs(m) > 1.0
        ]
        return PluginResult(
            findings=findings, figures=[Figure.from_matplotlib(fig, "Layer means", "per layer")]
        )


class Broken(Plugin):
    """Always raises, to show how a plugin error is reported."""

    name = "fake-broken"
    title = "Broken (test stand-in)"

    def analyze(self, ctx):
        raise RuntimeError("this plugin always fails")


class HostileNames(Plugin):
    """Reports a layer named like markup (TensorFlow refuses such names on real layers)."""

    name = "fake-xss"
    title = XSS

    def analyze(self, ctx):
        finding = Finding("warning", f"Layer {XSS} looks odd.", layer=XSS, value=1.0, label=XSS)
        return PluginResult(
            data={"layers": {XSS: {"odd": 1.0}}},
            findings=[finding],
            tables=[Table(XSS, [XSS], [[XSS]], layer=XSS)],
        )


@dataclass
class FakeEntryPoint:
    """Just enough of `importlib.metadata.EntryPoint` for `keraslens.registry`."""

    name: str
    value: str
    target: Any
    dist: Any = None

    def load(self) -> Any:
        return self.target


def install_plugins(monkeypatch: pytest.MonkeyPatch, *classes: type[Plugin]) -> None:
    """Make exactly `classes` the installed plugins."""
    points = [FakeEntryPoint(c.name, f"tests:{c.__name__}", c) for c in classes]
    monkeypatch.setattr("keraslens.registry.entry_points", lambda group: list(points))


def tiny_model(layer_name: str = "hidden") -> keras.Model:
    """Dense(8 relu, 3 of them dead by construction) -> Dense(3 softmax)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,), name="features")
    hidden = keras.layers.Dense(8, activation="relu", name=layer_name)
    x = hidden(inputs)
    outputs = keras.layers.Dense(3, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="tiny")
    kernel, bias = hidden.get_weights()
    kernel[:, :3] = 0.0
    bias[:3] = -1.0
    hidden.set_weights([kernel, bias])
    return model


def tiny_data(n: int = 64) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 4)).astype("float32")
