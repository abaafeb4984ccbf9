"""The HTML report: one self-contained file (inline CSS and SVG, no script, no fetch).

Each result becomes a section with its settings, headline numbers, plots as
grouped bar charts drawn in SVG (log scale where the plot asks for it), tables
and notes. Bars carry their value in a ``<title>`` so a browser shows it.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .. import __version__
from .scenario_text import param_text

if TYPE_CHECKING:
    from ..scenarios import Plot, ScenarioResult

__all__ = ["SERIES_COLOURS", "render_html", "svg_bar_chart"]

#: Bar colours, one per series in order (a colour-blind safe palette: Okabe-Ito).
SERIES_COLOURS = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00",
                  "#f0e442", "#000000")

_LEGEND_STEP = 140  # pixels per legend entry

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .5em 0 1em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: 2px 8px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.settings, .host { color: #555; font-size: .9em; }
.headline { columns: 3; font-size: .9em; }
svg.chart { display: block; margin: .5em 0 1em; }
svg.chart text { font: 11px system-ui, sans-serif; fill: #333; }
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _ticks(top: float, log: bool) -> list[float]:
    if log:
        return [10.0 ** e for e in range(0, max(1, math.ceil(math.log10(max(top, 1)))) + 1)]
    step = 10 ** math.floor(math.log10(top)) if top > 0 else 1
    for mult in (1, 2, 5, 10):
        if top / (step * mult) <= 5:
            step *= mult
            break
    return [step * i for i in range(0, int(top / step) + 2)]


def _tick_label(v: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= scale:
            return f"{v / scale:g}{unit}"
    return f"{v:g}"


def svg_bar_chart(plot: Plot, width: int = 760, height: int = 300) -> str:
    """``plot`` as an SVG grouped bar chart (one colour per series, a legend on top)."""
    per_row = max(1, (width - 60) // _LEGEND_STEP)
    legend_rows = -(-max(len(plot.series), 1) // per_row)
    left, right, top, bottom = 60, 10, 22 + 18 * legend_rows, 70
    w, h = width - left - right, height + 18 * legend_rows - top - bottom
    height += 18 * legend_rows
    values = [v for vals in plot.series.values() for v in vals]
    peak = max(values, default=0.0)
    ticks = _ticks(peak, plot.log)
    ymax = ticks[-1] if ticks[-1] > 0 else 1.0

    def y_of(v: float) -> float:
        if plot.log:
            frac = math.log10(max(v, 1)) / math.log10(ymax) if ymax > 1 else 0.0
        else:
            frac = v / ymax
        return top + h - frac * h

    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{height}" role="img" aria-label="{_esc(plot.title)}">',
             f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>']
    for t in ticks:
        y = y_of(t)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + w}" y2="{y:.1f}" '
                     'stroke="#e5e5e5"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
                     f'{_tick_label(t)}</text>')
    parts.append(f'<text x="14" y="{top + h / 2:.0f}" transform="rotate(-90 14 '
                 f'{top + h / 2:.0f})" text-anchor="middle">{_esc(plot.y_label)}'
                 f'{" (log)" if plot.log else ""}</text>')
    ncat, nser = max(len(plot.categories), 1), max(len(plot.series), 1)
    group = w / ncat
    bar = max(group * 0.8 / nser, 1.0)
    for s, (name, vals) in enumerate(plot.series.items()):
        colour = SERIES_COLOURS[s % len(SERIES_COLOURS)]
        for c, v in enumerate(vals):
            x = left + c * group + group * 0.1 + s * bar
            y = y_of(v)
            parts.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar - 1:.1f}" '
                         f'height="{top + h - y:.1f}" fill="{colour}"><title>'
                         f'{_esc(name)} / {_esc(plot.categories[c])}: {v:g}</title></rect>')
        lx = left + (s % per_row) * _LEGEND_STEP
        ly = 8 + 18 * (s // per_row)
        parts.append(f'<rect x="{lx}" y="{ly}" width="12" height="12" fill="{colour}"/>'
                     f'<text x="{lx + 16}" y="{ly + 10}">{_esc(name)}</text>')
    parts.append(f'<line x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}" '
                 'stroke="#333"/>')
    for c, cat in enumerate(plot.categories):
        x = left + c * group + group / 2
        parts.append(f'<text x="{x:.1f}" y="{top + h + 14}" text-anchor="end" '
                     f'transform="rotate(-30 {x:.1f} {top + h + 14})">{_esc(cat)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(r: ScenarioResult) -> str:
    settings = ", ".join(f"{k}={v}" for k, v in param_text(r).items())
    out = [f'<section class="result" id="{_esc(r.name or r.scenario)}">',
           f"<h2>{_esc(r.title)}</h2>",
           f'<p class="settings">{_esc(r.name or r.scenario)} on {_esc(r.platform)}, seed '
           f"{r.seed}{', quick' if r.quick else ''}. {_esc(settings)}</p>"]
    if r.headline:
        out.append('<ul class="headline">' + "".join(
            f"<li><code>{_esc(k)}</code> = {_esc(v)}</li>" for k, v in r.headline.items())
            + "</ul>")
    for plot in r.plots:
        out.append(f"<h3>{_esc(plot.title)}</h3>{svg_bar_chart(plot)}")
    for t in r.tables:
        out.append(f"<h3>{_esc(t.title)}</h3>{_table(t.headers, t.rows)}")
    out.extend(f"<p>{_esc(n)}</p>" for n in r.notes)
    if r.host:
        out.append('<p class="host">host: ' + _esc(", ".join(
            f"{k} {v:g} s" for k, v in r.host.items())) + "</p>")
    out.append("</section>")
    return "".join(out)


def render_html(results: Sequence[ScenarioResult], title: str = "iommulab report") -> str:
    """One self-contained HTML page with a section per result."""
    body = "".join(_section(r) for r in results)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{_esc(title)}</h1><p class=\"settings\">iommulab {_esc(__version__)}</p>"
            f"{body}</body></html>\n")
