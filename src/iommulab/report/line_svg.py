"""Line charts in SVG for the HTML pages (model's own presentation code).

A number against one parameter, one line per value of another: the bar charts' look
(:mod:`.html`'s colours, legend, fonts and tick rules from :mod:`.axes`). The x axis is
proportional to the values when they are numbers (log scale when they span two orders
of magnitude), evenly spaced otherwise; the y axis is log scale on the same rule as the
bar charts, when no value is zero or below (a line cannot reach zero on a log axis).
Each point carries its value in a ``<title>``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .axes import linear_ticks, log_ticks, spans_decades, text_width, tick_label
from .html import _FONT, _ROW, SERIES_COLOURS, _esc, _legend, svg_head, y_grid, y_scale

__all__ = ["LinePlot", "standalone_svg", "svg_line_chart"]


@dataclass(frozen=True)
class LinePlot:
    """``series`` maps a line's name to one y per x (None: no value there). ``x`` holds
    numbers (a proportional axis) or any values (evenly spaced); ``x_labels`` is how
    each x is written."""

    title: str
    x_label: str
    y_label: str
    x: Sequence[object]
    x_labels: Sequence[str]
    series: dict[str, list[float | None]]


def _numeric(xs: Sequence[object]) -> bool:
    return bool(xs) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                            for v in xs)


def svg_line_chart(plot: LinePlot, width: int = 760, plot_height: int = 220) -> str:
    """``plot`` as an SVG line chart, legend on top, margins grown to fit the labels."""
    values = [v for vals in plot.series.values() for v in vals if v is not None]
    log = bool(values) and min(values) > 0 and spans_decades(values)  # no zero on log
    ticks = log_ticks(values) if log else linear_ticks(max(values, default=0.0))
    if not log and values and min(values) < 0:
        ticks = [-t for t in reversed(linear_ticks(-min(values)))][:-1] + ticks
    labels = [tick_label(t) for t in ticks]
    numeric = _numeric(plot.x)
    xs = [float(v) for v in plot.x if isinstance(v, (int, float))] if numeric else \
        [float(k) for k in range(len(plot.x))]
    xlog = numeric and min(xs) > 0 and spans_decades(xs)
    xpos = [math.log10(v) for v in xs] if xlog else xs
    x_lo, x_hi = min(xpos, default=0.0), max(xpos, default=1.0)
    fracs = [(v - x_lo) / (x_hi - x_lo) if x_hi > x_lo else 0.5 for v in xpos]
    lw = [text_width(t, _FONT) for t in plot.x_labels]
    cos, sin = math.cos(math.pi / 6), math.sin(math.pi / 6)
    left = max(text_width(t, _FONT) for t in labels) + 14
    right = 10.0
    rotate = False
    for _ in range(30):  # margins and positions depend on each other: rounds settle them
        w = width - left - right
        inset = 0.04 * w if numeric else w / max(len(xs), 1) / 2
        pos = [left + inset + f * (w - 2 * inset) for f in fracs]
        rotate = rotate or any((lw[k] + lw[k + 1]) / 2 > pos[k + 1] - pos[k] - 6
                               for k in range(len(pos) - 1))
        if rotate:  # anchored at the end under its point, 30 degrees up to the left
            need_left = max((lw[k] * cos + _FONT * sin + 4 - (pos[k] - left)
                             for k in range(len(pos))), default=0.0)
            need_right = 0.0
        else:
            need_left = max((lw[k] / 2 + 4 - (pos[k] - left) for k in range(len(pos))),
                            default=0.0)
            need_right = max((pos[k] + lw[k] / 2 + 4 - (width - right)
                              for k in range(len(pos))), default=0.0)
        if need_left <= left + 0.5 and need_right <= 0.5:
            break
        left = max(left, need_left)
        right += max(need_right, 0.0)
    w = width - left - right
    inset = 0.04 * w if numeric else w / max(len(xs), 1) / 2
    legend, rows = _legend(list(plot.series), [SERIES_COLOURS[s % len(SERIES_COLOURS)]
                                               for s in range(len(plot.series))], left, w)
    top = 6 + _ROW * rows + 30
    label_depth = max((x * sin + _FONT * cos for x in lw), default=0.0) + 8 if rotate \
        else _FONT + 8
    bottom = label_depth + _FONT + 18
    height = math.ceil(top + plot_height + bottom)

    def x_of(k: int) -> float:
        return left + inset + fracs[k] * (w - 2 * inset)

    y_of = y_scale(ticks, log, top, plot_height)
    y_title = f"{plot.y_label} (log scale)" if log else plot.y_label
    parts = svg_head("lines", plot.title, width, height, log, legend, left, top, y_title)
    parts += y_grid(ticks, labels, y_of, left, w)
    base = top + plot_height
    parts.append(f'<line x1="{left:.1f}" y1="{base}" x2="{left + w:.1f}" y2="{base}" '
                 'stroke="#333"/>')
    labelled = _thinned([x_of(k) for k in range(len(plot.x_labels))]) if rotate else \
        range(len(plot.x_labels))
    for k, label in enumerate(plot.x_labels):
        x = x_of(k)
        parts.append(f'<line x1="{x:.1f}" y1="{base}" x2="{x:.1f}" y2="{base + 4}" '
                     'stroke="#333"/>')
        if k not in labelled:
            continue  # too close to the last label drawn; its dots' titles still name it
        if rotate:
            parts.append(f'<text class="category" x="{x:.1f}" y="{base + 14}" '
                         f'text-anchor="end" transform="rotate(-30 {x:.1f} {base + 14})">'
                         f"{_esc(label)}</text>")
        else:
            parts.append(f'<text class="category" x="{x:.1f}" y="{base + 16}" '
                         f'text-anchor="middle">{_esc(label)}</text>')
    x_title = f"{plot.x_label} (log scale)" if xlog else plot.x_label
    parts.append(f'<text class="axis-title" x="{left + w / 2:.1f}" '
                 f'y="{base + label_depth + _FONT + 8:.1f}" text-anchor="middle">'
                 f"{_esc(x_title)}</text>")
    for s, (name, vals) in enumerate(plot.series.items()):
        colour = SERIES_COLOURS[s % len(SERIES_COLOURS)]
        run: list[str] = []
        dots: list[str] = []
        for k, v in enumerate(vals):
            if v is None:  # a gap: the line stops and starts again
                if len(run) > 1:
                    parts.append(_polyline(run, colour, s))
                run = []
                continue
            x, y = x_of(k), y_of(v)
            run.append(f"{x:.1f},{y:.1f}")
            dots.append(f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="3.5" '
                        f'fill="{colour}"><title>{_esc(name)} / {_esc(plot.x_labels[k])}: '
                        f"{v:g}</title></circle>")
        if len(run) > 1:
            parts.append(_polyline(run, colour, s))
        parts.extend(dots)
    parts.append("</svg>")
    return "".join(parts)


def _thinned(pos: list[float]) -> set[int]:
    """The ticks whose rotated label is drawn: from the first, each one that is at least
    two lines of text (2 x 11 px across, at 30 degrees) after the last one drawn, so
    parallel labels never touch however many points the axis has."""
    keep: set[int] = set()
    last = -math.inf
    for k, x in enumerate(pos):
        if x - last >= 2 * _FONT:
            keep.add(k)
            last = x
    return keep


def standalone_svg(svg: str) -> str:
    """A chart of this module or :mod:`.html` as an SVG file of its own: the page's text
    style moved inside it, since no page's CSS reaches it there."""
    head, sep, rest = svg.partition(">")
    return (f'{head}{sep}<style>text {{ font: 11px system-ui, sans-serif; fill: #333; }}'
            f"</style>{rest}\n")


#: a dash pattern per series after the first, so lines drawn over each other still show
DASHES = ("", "7 4", "2 3", "9 3 2 3")


def _polyline(points: list[str], colour: str, series: int) -> str:
    dash = DASHES[series % len(DASHES)]
    attr = f' stroke-dasharray="{dash}"' if dash else ""
    return (f'<polyline class="line" points="{" ".join(points)}" fill="none" '
            f'stroke="{colour}" stroke-width="2.5"{attr}/>')
