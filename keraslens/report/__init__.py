"""The self-contained HTML report: inline CSS, inline SVG and base64 PNG, no network."""

from keraslens.report.render import render_html

__all__ = ["render_html"]
