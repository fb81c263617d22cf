"""Rendering an `AnalysisResult` into one self-contained HTML page."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import jinja2
from markupsafe import Markup

from keraslens.report import view
from keraslens.result import AnalysisResult

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'"
)
"""No script, no font, no fetch, no frame: only inline styles and `data:` images."""


def render_html(result: AnalysisResult) -> str:
    """The report of `result` as one HTML page that opens offline.

    Names coming from models and plugins are escaped, so a layer called
    `<script>alert(1)</script>` shows as text.

    Example:

    ```python
    html = keraslens.report.render_html(keraslens.analyze(model, x_val))
    ```
    """
    context = view.build(result, {name: run.defaults for name, run in result.plugins.items()})
    return (
        _environment()
        .get_template("report.html.j2")
        .render(csp=Markup(CONTENT_SECURITY_POLICY), **context)
    )


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("keraslens.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = format_number
    return env


def format_number(value: Any) -> str:
    """Numbers as a reader wants them: ints whole, floats to 4 significant digits."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(number):
        return "n/a"
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return f"{number:.4g}"
