"""A replay's timeline as SVG (model's own presentation): one lane per device, time on x.

Each lane has three rows: maps and unmaps as slices shaded by how many fell in
each time bin, faults as a mark at each listed fault's own time (and as shaded
slices too when the report lists only the first of many) (red when the model
agrees there is no translation, black outlined when it does not or cannot tell).
Drawn from the report's ``timeline`` object, so the HTML shows what the JSON holds.
"""

from __future__ import annotations

import html
import math
from typing import Any

from .axes import linear_ticks, text_width

__all__ = ["TIMELINE_COLOURS", "svg_timeline"]

#: row colours: maps, unmaps, faults (Okabe-Ito blue, orange, vermillion)
TIMELINE_COLOURS = {"maps": "#0072b2", "unmaps": "#e69f00", "faults": "#d55e00"}
_FONT = 11.0
_ROW_H, _LANE_GAP = 12, 10


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _time_unit(span: float) -> tuple[str, float]:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if span >= scale or unit == "µs":
            return unit, scale
    raise AssertionError("unreachable")


def svg_timeline(tl: dict[str, Any], width: int = 760) -> str:
    """The ``timeline`` object of a replay report as an SVG with a lane per device."""
    lanes = tl["lanes"]
    bins, start, end = tl["bins"], float(tl["start"]), float(tl["end"])
    span = end - start
    seconds = tl["clock"] == "seconds"
    unit, scale = _time_unit(span) if seconds else ("", 1.0)
    ticks = linear_ticks(span / scale) if span > 0 else [0.0]
    tick_text = [f"+{t:g}{' ' + unit if unit else ''}" if seconds else f"{start + t:g}"
                 for t in ticks]
    left = max([text_width(lane["name"], _FONT) for lane in lanes] + [40.0]) + 16
    right = max(text_width(tick_text[-1], _FONT) / 2, 10.0) + 4
    w = width - left - right
    top = 40
    lane_h = 3 * _ROW_H + _LANE_GAP
    height = top + lane_h * max(len(lanes), 1) + 44
    axis_max = (ticks[-1] * scale) if span > 0 else 1.0

    def x_of(t: float) -> float:
        return left + (t - start) / axis_max * w if span > 0 else left + w / 2

    parts = [f'<svg class="chart timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="maps, unmaps and faults per device over time">',
             f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>']
    x = left
    for name, colour in TIMELINE_COLOURS.items():
        parts.append(f'<rect x="{x:.1f}" y="6" width="12" height="12" fill="{colour}"/>'
                     f'<text x="{x + 16:.1f}" y="16">{name}</text>')
        x += 16 + text_width(name, _FONT) + 14
    for t, label in zip(ticks, tick_text, strict=True):
        xt = x_of(start + t * scale)
        parts.append(f'<line x1="{xt:.1f}" y1="{top - 4}" x2="{xt:.1f}" '
                     f'y2="{height - 40}" stroke="#e5e5e5"/>'
                     f'<text class="tick" x="{xt:.1f}" y="{height - 26}" '
                     f'text-anchor="middle">{_esc(label)}</text>')
    axis = (f"time since the first event ({start:.6f} s in the trace)" if seconds
            else "event number (the trace has no timestamps)")
    parts.append(f'<text class="axis-title" x="{left:.1f}" y="{height - 8}">'
                 f"{_esc(axis)}</text>")
    bin_w = w * (span / bins) / axis_max if span > 0 else 4.0
    for n, lane in enumerate(lanes):
        y0 = top + n * lane_h
        parts.append(f'<g class="lane" data-lane="{_esc(lane["name"])}">'
                     f'<text class="lane-name" x="{left - 8:.1f}" '
                     f'y="{y0 + 1.5 * _ROW_H + 4:.1f}" text-anchor="end">'
                     f'{_esc(lane["name"])}</text>')
        parts.append(f'<rect x="{left:.1f}" y="{y0}" width="{w:.1f}" height="{3 * _ROW_H}" '
                     'fill="none" stroke="#ddd"/>')
        # faults beyond the listed ones are drawn from their counts
        rows = ("maps", "unmaps", "faults") if tl["faults_total"] > len(tl["fault_events"]) \
            else ("maps", "unmaps")
        for row, key in enumerate(rows):
            counts = lane[key]
            peak = max(counts, default=0)
            for b, count in enumerate(counts):
                if not count:
                    continue
                bx = x_of(start + span * b / bins) if span > 0 else left + w / 2 - 2
                opacity = 0.35 + 0.65 * math.log1p(count) / math.log1p(peak)
                parts.append(f'<rect class="{key}" x="{bx:.1f}" y="{y0 + row * _ROW_H + 1}" '
                             f'width="{max(bin_w, 2.0):.1f}" height="{_ROW_H - 2}" '
                             f'fill="{TIMELINE_COLOURS[key]}" fill-opacity="{opacity:.2f}">'
                             f"<title>{count} {key[:-1]}{'s' if count > 1 else ''}</title>"
                             "</rect>")
        parts.append("</g>")
    lane_row = {lane["name"]: n for n, lane in enumerate(lanes)}
    for f in tl["fault_events"]:
        fy = top + lane_row[f["lane"]] * lane_h + 2 * _ROW_H + 1
        fx = x_of(float(f["t"]))
        fill = TIMELINE_COLOURS["faults"] if f["agreed"] else "#000000"
        parts.append(f'<rect class="fault" x="{fx - 1.5:.1f}" y="{fy}" width="3" '
                     f'height="{_ROW_H - 2}" fill="{fill}"><title>fault at {f["iova"]:#x}, '
                     f'line {f["line"]}{"" if f["agreed"] else ", not confirmed by the model"}'
                     "</title></rect>")
    parts.append("</svg>")
    return "".join(parts)
