"""An example third-party keraslens plugin: the units of each layer, and how many fired."""

from __future__ import annotations

from keraslens.plugin import AnalysisContext, Finding, Option, Plugin, PluginResult, Table


class UnitCount(Plugin):
    """Count each layer's units and those that were > 0 at least once.

    Example:

    ```python
    result = keraslens.analyze(model, x, plugins=["unit-count"])
    result.to_dict()["plugins"]["unit-count"]["layers"]
    ```
    """

    name = "unit-count"
    title = "Units per layer"
    description = "How many units each layer has, and how many fired at least once."
    needs = frozenset({"stats"})
    options = {
        "min_units": Option(int, 1, "Smallest layer worth listing.", min=1),
        "threshold": Option(
            float, 0.5, "Fraction of silent units that gets a finding.", min=0.0, max=1.0
        ),
    }

    def analyze(self, ctx: AnalysisContext) -> PluginResult:
        """List the layers with at least `min_units` units."""
        layers, findings = {}, []
        for key, stats in ctx.stats.items():
            if stats.units < ctx.options["min_units"]:
                continue
            fired = int((stats.positive_count > 0).sum())
            layers[key] = {"units": stats.units, "fired": fired}
            silent = 1 - fired / stats.units
            if silent > ctx.options["threshold"]:
                findings.append(
                    Finding(
                        severity="info",
                        message=f"{silent:.0%} of the units of {key!r} never fired.",
                        layer=key,
                        value=silent,
                        threshold=ctx.options["threshold"],
                        threshold_name="unit-count.threshold",
                        label="silent units",
                        fix="See the dead-neurons analysis.",
                    )
                )
        rows = [[key, entry["units"], entry["fired"]] for key, entry in layers.items()]
        return PluginResult(
            data={"layers": layers},
            findings=findings,
            tables=[Table("Units per layer", ["layer", "units", "fired"], rows)],
        )
