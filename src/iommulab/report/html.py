"""The HTML report: one self-contained file (inline CSS and SVG, no script, no fetch).

Each result becomes a section: its settings, then its plots as grouped bar
charts drawn in SVG (log scale when the values span two orders of magnitude,
see :mod:`.axes`), a replay's timeline of maps, unmaps and faults per device,
then the headline values as a table, the other tables and notes. Bars carry
their value in a ``<title>`` so a browser shows it.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .. import __version__
from .axes import linear_ticks, log_ticks, plot_is_log, text_width, tick_label
from .scenario_text import param_text
from .timeline_svg import svg_timeline

if TYPE_CHECKING:
    from ..scenarios import Plot, ScenarioResult

__all__ = ["SERIES_COLOURS", "render_html", "svg_bar_chart"]

#: Bar colours, one per series in order (a colour-blind safe palette: Okabe-Ito).
SERIES_COLOURS = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00",
                  "#f0e442", "#000000")

_FONT = 11.0  # px, the charts' text
_ROW = 18  # px per legend row

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .5em 0 1em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: 2px 8px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.settings, .host { color: #555; font-size: .9em; }
table.headline { font-size: .9em; } table.headline td:first-child { font-family: monospace; }
svg.chart { display: block; margin: .5em 0 1em; }
svg.chart text { font: 11px system-ui, sans-serif; fill: #333; }
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _legend(names: Sequence[str], colours: Sequence[str], x0: float, width: float) -> \
        tuple[list[str], int]:
    """Swatches and names laid out in rows that fit ``width``; (SVG parts, rows used)."""
    parts: list[str] = []
    x, row = x0, 0
    for name, colour in zip(names, colours, strict=True):
        step = 16 + text_width(name, _FONT) + 14
        if x > x0 and x + step > x0 + width:
            x, row = x0, row + 1
        y = 6 + _ROW * row
        parts.append(f'<rect x="{x:.1f}" y="{y}" width="12" height="12" fill="{colour}"/>'
                     f'<text x="{x + 16:.1f}" y="{y + 10}">{_esc(name)}</text>')
        x += step
    return parts, row + 1 if names else 0


def y_scale(ticks: Sequence[float], log: bool, top: float,
            plot_height: float) -> Callable[[float], float]:
    """The y coordinate of a value on an axis from ``ticks[0]`` to ``ticks[-1]``, linear or
    log (a value at or below zero on a log axis sits on the axis)."""
    lo, hi = ticks[0], ticks[-1]

    def y_of(v: float) -> float:
        if log:
            frac = (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) \
                if v > 0 else 0.0
        else:
            frac = (v - lo) / (hi - lo) if hi > lo else 0.0
        return top + plot_height - max(frac, 0.0) * plot_height
    return y_of


def svg_head(kind: str, title: str, width: int, height: int, log: bool, legend: list[str],
             left: float, top: float, y_title: str) -> list[str]:
    """The opening of a chart's SVG: the element (class ``chart KIND``), a white
    background, the legend and the y axis's title above the plot."""
    parts = [f'<svg class="chart {kind}" xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{_esc(title)}" data-scale="{"log" if log else "linear"}">',
             f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>']
    parts.extend(legend)
    parts.append(f'<text class="axis-title" x="{left - 8:.1f}" y="{top - 14:.0f}">'
                 f"{_esc(y_title)}</text>")
    return parts


def y_grid(ticks: Sequence[float], labels: Sequence[str], y_of: Callable[[float], float],
           left: float, w: float) -> list[str]:
    """A chart's horizontal grid lines, one per tick, each labelled left of the axis."""
    parts = []
    for t, label in zip(ticks, labels, strict=True):
        y = y_of(t)
        parts.append(f'<line x1="{left:.1f}" y1="{y:.1f}" x2="{left + w:.1f}" y2="{y:.1f}" '
                     'stroke="#e5e5e5"/>')
        parts.append(f'<text class="tick" x="{left - 6:.1f}" y="{y + 4:.1f}" '
                     f'text-anchor="end">{label}</text>')
    return parts


def svg_bar_chart(plot: Plot, width: int = 760, plot_height: int = 220) -> str:
    """``plot`` as an SVG grouped bar chart: a legend on top, the y axis's label above
    it, log scale (ticks at powers of ten) when :func:`plot_is_log` says so; margins
    grow to fit the labels, which turn 30 degrees when they do not fit under their bars."""
    log = plot_is_log(plot)
    values = [v for vals in plot.series.values() for v in vals]
    ticks = log_ticks(values) if log else linear_ticks(max(values, default=0.0))
    labels = [tick_label(t) for t in ticks]
    ncat, nser = max(len(plot.categories), 1), max(len(plot.series), 1)
    cat_w = [text_width(c, _FONT) for c in plot.categories]
    left = max(text_width(t, _FONT) for t in labels) + 14
    right = 10.0
    group = (width - left - right) / ncat
    rotate = any(w > group - 6 for w in cat_w)
    if rotate:  # anchored at the end under the group's middle, 30 degrees up to the left
        cos, sin = math.cos(math.pi / 6), math.sin(math.pi / 6)
        span = width - right
        for c, w in enumerate(cat_w):  # label c ends at left + (c + 1/2) (span - left) / ncat
            k = (c + 0.5) / ncat
            left = max(left, (w * cos + 4 - span * k) / (1 - k))
        group = (width - left - right) / ncat
        bottom = max((w * sin + _FONT * cos for w in cat_w), default=0.0) + 20
    else:
        bottom = _FONT + 16
    w = width - left - right
    legend, rows = _legend(list(plot.series), [SERIES_COLOURS[s % len(SERIES_COLOURS)]
                                               for s in range(len(plot.series))], left,
                           w)
    y_title = f"{plot.y_label} (log scale)" if log else plot.y_label
    top = 6 + _ROW * rows + 30
    height = math.ceil(top + plot_height + bottom)
    y_of = y_scale(ticks, log, top, plot_height)
    parts = svg_head("bars", plot.title, width, height, log, legend, left, top, y_title)
    parts += y_grid(ticks, labels, y_of, left, w)
    bar = max(group * 0.8 / nser, 1.0)
    for s, (name, vals) in enumerate(plot.series.items()):
        colour = SERIES_COLOURS[s % len(SERIES_COLOURS)]
        for c, v in enumerate(vals):
            x = left + c * group + group * 0.1 + s * bar
            y = y_of(v)
            parts.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar - 1:.1f}" '
                         f'height="{top + plot_height - y:.1f}" fill="{colour}"><title>'
                         f'{_esc(name)} / {_esc(plot.categories[c])}: {v:g}</title></rect>')
    base = top + plot_height
    parts.append(f'<line x1="{left:.1f}" y1="{base}" x2="{left + w:.1f}" y2="{base}" '
                 'stroke="#333"/>')
    for c, cat in enumerate(plot.categories):
        x = left + c * group + group / 2
        if rotate:
            parts.append(f'<text class="category" x="{x:.1f}" y="{base + 14}" '
                         f'text-anchor="end" transform="rotate(-30 {x:.1f} {base + 14})">'
                         f"{_esc(cat)}</text>")
        else:
            parts.append(f'<text class="category" x="{x:.1f}" y="{base + 15}" '
                         f'text-anchor="middle">{_esc(cat)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]], cls: str = "") -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(r: ScenarioResult) -> str:
    """Plots and the timeline first, then the headline values, tables and notes."""
    settings = ", ".join(f"{k}={v}" for k, v in param_text(r).items())
    out = [f'<section class="result" id="{_esc(r.name or r.scenario)}">',
           f"<h2>{_esc(r.title)}</h2>",
           f'<p class="settings">{_esc(r.name or r.scenario)} on {_esc(r.platform)}, seed '
           f"{r.seed}{', quick' if r.quick else ''}. {_esc(settings)}</p>"]
    for plot in r.plots:
        out.append(f"<h3>{_esc(plot.title)}</h3>{svg_bar_chart(plot)}")
    if r.timeline is not None and r.timeline["lanes"]:
        out.append("<h3>Maps, unmaps and faults per device over time</h3>"
                   f"{svg_timeline(r.timeline)}")
    if r.headline:
        out.append("<h3>Headline values</h3>" + _table(["key", "value"], [
            [k, v] for k, v in r.headline.items()], "headline"))
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
