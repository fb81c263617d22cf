"""data-checks: is the data what the model expects, and does the model still tell it apart?

Three checks, each with a rule documented in docs/analyses.md:
- input scaling: the data's range against the model's own preprocessing layer (a
  `Rescaling` or an adapted `Normalization` before the first weight layer), or raw pixel
  values (whole numbers up to 255) fed to a model without one;
- collapsed predictions: one class for (nearly) every sample of the data sample;
- BatchNorm train/inference mismatch: the batch statistics of each BatchNormalization
  layer's input, recovered from the captured statistics of its output, against the
  layer's moving statistics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from keraslens.plugin import AnalysisContext, Finding, Option, Plugin, PluginResult, Table

if TYPE_CHECKING:
    import keras

RAW_PIXEL_MAX = 255.0


class DataChecks(Plugin):
    """Check the data against the model: input scaling, collapsed predictions, BatchNorm.

    Example:

    ```python
    result = keraslens.analyze(model, x_val, plugins=["data-checks"])
    result.to_dict()["plugins"]["data-checks"]["predictions"]
    ```
    """

    name = "data-checks"
    title = "Data checks"
    description = "Input scaling against the model, collapsed predictions, BatchNorm mismatch."
    needs = frozenset({"stats", "sample", "outputs"})
    options = {
        "collapse_fraction": Option(
            float,
            0.95,
            "Share of samples predicted as one class from which predictions have collapsed.",
            min=0.5,
            max=1.0,
        ),
        "bn_ratio": Option(
            float,
            10.0,
            "How many times the batch std may differ from the moving std of a BatchNorm unit.",
            min=1.0,
        ),
        "bn_shift": Option(
            float,
            3.0,
            "Moving standard deviations the batch mean of a BatchNorm unit may be off by.",
            min=0.0,
        ),
    }

    def analyze(self, ctx: AnalysisContext) -> PluginResult:
        """Run the three checks."""
        import tensorflow as tf

        result = PluginResult(data={})
        inputs = tf.nest.flatten(ctx.sample)
        scaling = _scaling(ctx.model, inputs)
        result.data["input"] = scaling["data"]
        result.findings += scaling["findings"]
        predictions = _predictions(ctx, ctx.options["collapse_fraction"])
        result.data["predictions"] = predictions["data"]
        result.findings += predictions["findings"]
        batchnorm = _batchnorm(ctx, ctx.options["bn_ratio"], ctx.options["bn_shift"])
        result.data["batchnorm"] = batchnorm["data"]
        result.findings += batchnorm["findings"]
        if batchnorm["rows"]:
            result.tables.append(
                Table(
                    "BatchNorm: batch statistics against the moving ones (medians over units)",
                    [
                        "layer",
                        "batch std / moving std",
                        "|batch mean - moving mean| / std",
                        "units off",
                    ],
                    batchnorm["rows"],
                )
            )
        return result


def _scaling(model: keras.Model, inputs: list[np.ndarray]) -> dict[str, Any]:
    """The data's range against the model's preprocessing layer, for the first input."""
    import keras

    x = np.asarray(inputs[0])
    if not np.issubdtype(x.dtype, np.number) or x.size == 0:
        return {"data": {}, "findings": []}
    x = x.astype(np.float64)
    low, high = float(np.nanmin(x)), float(np.nanmax(x))
    whole = bool(np.all(np.mod(x, 1) == 0))
    data = {"min": low, "max": high, "whole_numbers": whole}
    layer = _preprocessing_layer(model)
    data["preprocessing"] = None if layer is None else type(layer).__name__
    finding = None
    if isinstance(layer, keras.layers.Rescaling):
        finding = _rescaling_finding(layer, low, high)
    elif isinstance(layer, keras.layers.Normalization):
        finding = _normalization_finding(layer, x)
    elif whole and 1.0 < high <= RAW_PIXEL_MAX and low >= 0:
        finding = Finding(
            severity="warning",
            message=(
                f"The inputs are whole numbers in [{low:g}, {high:g}], raw pixel values, and "
                "the model has no Rescaling or Normalization layer to bring them to the range "
                "it was trained on (usually [0, 1] or [-1, 1])."
            ),
            value=high,
            threshold=1.0,
            label="inputs look unscaled",
            fix="Scale the data as in training (e.g. x / 255, or --rescale 1/255 for an "
            "image folder), or add keras.layers.Rescaling(1/255) in front of the model.",
        )
    return {"data": data, "findings": [finding] if finding else []}


def _preprocessing_layer(model: keras.Model) -> keras.layers.Layer | None:
    """The first Rescaling or Normalization layer, if it comes before any layer with
    weights (a later one rescales features, not the input)."""
    import keras

    for layer in getattr(model, "layers", []):
        if isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization)):
            return layer
        if isinstance(layer, keras.Model):
            return _preprocessing_layer(layer)
        if layer.weights:
            return None
    return None


def _rescaling_finding(layer: keras.layers.Rescaling, low: float, high: float) -> Finding | None:
    """A Rescaling(scale, offset) layer maps the inputs it expects onto a range of width
    about 1 or 2; data whose rescaled width is under 1/20 of that was already scaled."""
    scale = float(np.max(np.abs(np.asarray(layer.scale, dtype=np.float64))))
    offset = float(np.max(np.abs(np.asarray(layer.offset, dtype=np.float64))))
    width = (high - low) * scale
    if scale >= 0.5 or width >= 0.05:
        return None
    return Finding(
        severity="error",
        message=(
            f"The inputs span [{low:g}, {high:g}], but the model's first layer "
            f"{layer.name!r} rescales by {scale:.4g} (offset {offset:g}): it expects inputs "
            f"about {1 / scale:.4g} wide, so these reach the network only {width:.3g} wide. "
            "The data looks scaled twice."
        ),
        value=width,
        threshold=0.05,
        label="inputs scaled twice",
        fix="Pass the data unscaled (e.g. 0..255 pixels), or remove the Rescaling layer.",
    )


def _normalization_finding(layer: keras.layers.Normalization, x: np.ndarray) -> Finding | None:
    """An adapted Normalization layer knows the training mean and variance: data whose
    mean is 3 training stds away, or whose std is 10 times off, is not scaled alike."""
    mean = np.asarray(layer.mean, dtype=np.float64)
    std = np.sqrt(np.asarray(layer.variance, dtype=np.float64))
    axes = tuple(range(x.ndim - 1)) if mean.size > 1 else None
    data_mean, data_std = x.mean(axis=axes), x.std(axis=axes)
    shift = float(
        np.median(
            np.abs(data_mean - mean.reshape(data_mean.shape))
            / np.maximum(std, 1e-12).reshape(data_mean.shape)
        )
    )
    ratio = float(np.median(data_std / np.maximum(std.reshape(data_std.shape), 1e-12)))
    if shift <= 3 and 0.1 <= ratio <= 10:
        return None
    return Finding(
        severity="error",
        message=(
            f"The model's Normalization layer {layer.name!r} was adapted to data of another "
            f"scale: the inputs' mean is {shift:.3g} training stds away from the adapted "
            f"mean, and their std {ratio:.3g} times the adapted std (medians over features)."
        ),
        value=shift,
        threshold=3.0,
        label="inputs scaled unlike training",
        fix="Preprocess the data as it was when the Normalization layer was adapted.",
    )


def _predictions(ctx: AnalysisContext, limit: float) -> dict[str, Any]:
    """Per output with two or more classes: the share of the most predicted class."""
    import tensorflow as tf

    outputs = tf.nest.flatten(ctx.outputs)
    names = list(getattr(ctx.model, "output_names", None) or [])
    data, findings = {}, []
    for index, output in enumerate(outputs):
        output = np.asarray(output)
        if output.ndim != 2 or output.shape[1] < 2 or len(output) < 8:
            continue
        name = names[index] if index < len(names) else str(index)
        predicted = np.argmax(output, axis=1)
        counts = np.bincount(predicted, minlength=output.shape[1])
        top = int(np.argmax(counts))
        share = float(counts[top] / len(predicted))
        data[name] = {
            "top_class": top,
            "top_share": share,
            "classes_predicted": int((counts > 0).sum()),
        }
        labelled = ctx.labels is not None and len(np.unique(np.asarray(ctx.labels))) > 1
        if share >= limit:
            findings.append(
                Finding(
                    severity="error" if labelled or share == 1.0 else "warning",
                    message=(
                        f"Output {name!r} predicts class {top} for {share:.0%} of the "
                        f"{len(predicted)} samples"
                        + (", though the labels hold several classes" if labelled else "")
                        + ": the predictions have collapsed to one class."
                    ),
                    value=share,
                    threshold=limit,
                    threshold_name="data-checks.collapse_fraction",
                    label="collapsed predictions",
                    fix="Check the input scaling and the BatchNorm findings first; then the "
                    "training (class imbalance, a learning rate that diverged).",
                )
            )
    return {"data": data, "findings": findings}


def _batchnorm(ctx: AnalysisContext, ratio_limit: float, shift_limit: float) -> dict[str, Any]:
    """Each captured BatchNormalization layer: the batch statistics of its input, recovered
    from the inference-mode statistics of its output, against its moving statistics.

    In inference BN computes `y = gamma * (x - moving_mean) / sqrt(moving_var + eps) + beta`,
    so the input's batch mean and std follow from the output's:
    `mean_x = moving_mean + (mean_y - beta) * s / gamma`, `std_x = std_y * s / |gamma|`,
    with `s = sqrt(moving_var + eps)`.
    """
    import keras

    data, rows, mismatched = {}, [], []
    for site in getattr(ctx.lens, "sites", None) or []:
        layer, stats = site.layer, (ctx.stats or {}).get(site.key)
        if not isinstance(layer, keras.layers.BatchNormalization) or stats is None:
            continue
        measured = _batchnorm_units(layer, stats)
        if measured is None:
            continue
        ratio, shift = measured
        off = (ratio > ratio_limit) | (ratio < 1 / ratio_limit) | (shift > shift_limit)
        median_ratio, median_shift = float(np.median(ratio)), float(np.median(shift))
        fraction = float(off.mean())
        data[site.key] = {
            "std_ratio": median_ratio,
            "mean_shift": median_shift,
            "units_off": fraction,
        }
        rows.append([site.key, median_ratio, median_shift, fraction])
        if fraction > 0.5:
            mismatched.append(site.key)
    findings = []
    if mismatched:
        first = data[mismatched[0]]
        findings.append(_batchnorm_finding(mismatched, len(data), first, ratio_limit))
    return {"data": data, "findings": findings, "rows": rows}


def _batchnorm_units(layer, stats) -> tuple[np.ndarray, np.ndarray] | None:
    axis = np.atleast_1d(layer.axis)
    # `stats.shape` has no batch axis: channels-last is axis -1, or len(shape) counted with it.
    if len(axis) != 1 or int(axis[0]) not in (-1, len(stats.shape)):
        return None
    gamma = np.asarray(layer.gamma, np.float64) if layer.scale else 1.0
    beta = np.asarray(layer.beta, np.float64) if layer.center else 0.0
    moving_std = np.sqrt(np.asarray(layer.moving_variance, np.float64) + layer.epsilon)
    seen = stats.finite_count > 0
    if not seen.any() or np.shape(moving_std) != np.shape(stats.mean):
        return None
    gain = np.maximum(np.abs(gamma), 1e-12)
    ratio = np.asarray(stats.std, np.float64) / gain  # = std_x / moving_std
    shift = np.abs(np.asarray(stats.mean, np.float64) - beta) / gain  # = |mean_x - mm| / moving_std
    return ratio[seen], shift[seen]


def _batchnorm_finding(
    mismatched: list[str], count: int, first: dict[str, float], ratio_limit: float
) -> Finding:
    """One finding for the model, at the first mismatched layer: the error starts there
    and every layer after it inherits it."""
    ratio, shift = first["std_ratio"], first["mean_shift"]
    if ratio < 1 / ratio_limit:
        what = f"the batch std is {ratio:.3g} times the moving std, so its outputs collapse"
    elif ratio > ratio_limit:
        what = f"the batch std is {ratio:.3g} times the moving std"
    else:
        what = f"the batch mean is {shift:.3g} moving stds from the moving mean"
    others = f" and {len(mismatched) - 1} more" if len(mismatched) > 1 else ""
    return Finding(
        severity="error",
        message=(
            f"BatchNorm train/inference mismatch in {len(mismatched)} of {count} "
            f"BatchNormalization layers ({mismatched[0]!r}{others}): the data's batch "
            f"statistics are far from the layers' moving statistics. In {mismatched[0]!r}, "
            f"{what} (medians over units, {first['units_off']:.0%} of units off). In "
            "inference the layer then normalises with the wrong numbers, whatever the weights."
        ),
        layer=mismatched[0],
        value=first["units_off"],
        threshold=0.5,
        label="BatchNorm train/inference mismatch",
        fix="Update the moving statistics (train with the layers in training mode, or run "
        "a few hundred batches with training=True), or preprocess the data as in training.",
    )
