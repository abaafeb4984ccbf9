"""The HTML page of a sweep (lab): plots that fit the grid, then the table.

For each headline number (:func:`.table.merged_metrics`) that is not the same in every
point that has it: the number against the first grid parameter that varies (the first
numeric one, if any; ``--x`` picks another), one line per value of the next dimension
that varies (another parameter, or the platform; ``--lines`` picks it); seeds are
averaged (the title says over how many); each combination of any further varying
parameters gets its own plot. Failed points leave gaps. Self-contained: inline CSS and
SVG, no script.
"""

from __future__ import annotations

import itertools
import statistics
from typing import Any

from .. import __version__
from ..report import format_size
from ..report.html import _CSS, _esc, _table
from ..report.line_svg import LinePlot, svg_line_chart
from ..scenarios import SCENARIOS, UsageError
from .grid import SweepSpec
from .run import SweepResult
from .table import merged_metrics

__all__ = ["MAX_PLOTS", "check_plot_choice", "plot_dimensions", "render_sweep_html",
           "sweep_plots"]

#: at most this many plots on one page (the rest are named in a note)
MAX_PLOTS = 60


def _label(param: str, value: Any, scenario: str) -> str:
    spec = {p.name: p for p in SCENARIOS[scenario].params}.get(param) if \
        scenario in SCENARIOS else None
    if spec is not None and spec.kind == "size" and isinstance(value, int):
        return format_size(value)
    return str(value)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _varies(values: list[Any]) -> bool:
    return len({v for v in values if v is not None}) > 1


def plot_dimensions(spec: SweepSpec) -> list[str]:
    """What ``--x`` and ``--lines`` may name: the grid's parameters, and ``platform``
    when the sweep runs on more than one."""
    return [*spec.grid, *(["platform"] if len(spec.platforms) > 1 else [])]


def check_plot_choice(spec: SweepSpec, x: str | None, lines: str | None) -> None:
    """A :class:`UsageError` naming the value when ``x`` or ``lines`` is not a swept
    dimension, or both name the same one."""
    dims = plot_dimensions(spec)
    for option, name in (("--x", x), ("--lines", lines)):
        if name is not None and name not in dims:
            raise UsageError(f"{option} {name}: not a dimension of this sweep (its "
                             f"dimensions: {', '.join(dims)})")
    if x is not None and x == lines:
        raise UsageError(f"--x and --lines both name {x}")


def sweep_plots(result: SweepResult, x: str | None = None, lines: str | None = None
                ) -> tuple[list[LinePlot], int]:
    """The plots of the page and how many more would fit the grid than are drawn.
    ``x`` and ``lines`` pick the x axis and the dimension drawn as one line per value
    (:func:`check_plot_choice`); otherwise they follow the module's rule."""
    t = result.table
    recs = [r for r in t.records() if r["status"] == "ok"]
    if not recs:
        return [], 0
    dims = [d for d in [*t.grid, "platform"] if len({str(r[d]) for r in recs}) > 1]
    auto = [d for d in dims if d not in (x, lines)]
    if x is not None:
        x_dim = x
    elif auto:
        x_dim = next((d for d in auto if all(_is_number(r[d]) for r in recs)), auto[0])
    else:
        return [], 0
    rest = [d for d in dims if d not in (x_dim, lines)]
    if lines is not None:
        rest.insert(0, lines)
    line_dim = rest[0] if rest else None
    panel_dims = rest[1:]
    seeds = len({r["seed"] for r in recs})
    scenario = result.spec.scenario

    def values(dim: str) -> list[Any]:
        seen: list[Any] = []
        for r in recs:
            if r[dim] not in seen:
                seen.append(r[dim])
        return sorted(seen) if all(_is_number(v) for v in seen) else seen

    xs = values(x_dim)
    line_values = values(line_dim) if line_dim else [None]
    metrics = {name: [None if v is None else float(v) for v in vals]
               for name, vals in merged_metrics(t.headline, recs).items()
               if _varies(vals) and all(_is_number(v) for v in vals if v is not None)}
    plots: list[LinePlot] = []
    wanted = 0
    for key, vals in metrics.items():
        for combo in itertools.product(*(values(d) for d in panel_dims)):
            wanted += 1
            if len(plots) >= MAX_PLOTS:
                continue
            fixed = dict(zip(panel_dims, combo, strict=True))
            series: dict[str, list[float | None]] = {}
            for line in line_values:
                ys: list[float | None] = []
                for x in xs:
                    got = [v for r, v in zip(recs, vals, strict=True)
                           if r[x_dim] == x and v is not None
                           and (line_dim is None or r[line_dim] == line)
                           and all(r[d] == c for d, c in fixed.items())]
                    ys.append(statistics.fmean(got) if got else None)
                name = key if line_dim is None else f"{line_dim}={_label(line_dim, line, scenario)}"
                series[name] = ys
            where = ", ".join(f"{d}={_label(d, v, scenario)}" for d, v in fixed.items())
            title = f"{key} against {x_dim}" + (f" ({where})" if where else "") + \
                (f", mean of {seeds} seeds" if seeds > 1 else "")
            plots.append(LinePlot(title, x_dim, key, xs,
                                  [_label(x_dim, x, scenario) for x in xs], series))
    return plots, wanted - len(plots)


def render_sweep_html(result: SweepResult, title: str = "", x: str | None = None,
                      lines: str | None = None) -> str:
    """One self-contained page: what was swept, the plots (``x``, ``lines``: as
    :func:`sweep_plots`), the table, the failures."""
    spec = result.spec
    title = title or f"iommulab sweep: {spec.scenario}"
    grid = "; ".join(f"{k} = {', '.join(v)}" for k, v in spec.grid.items())
    fixed = ", ".join(spec.settings)
    body = [f"<h1>{_esc(title)}</h1>",
            f'<p class="settings">iommulab {_esc(__version__)}. Grid: {_esc(grid)}'
            + (f"; fixed: {_esc(fixed)}" if fixed else "")
            + f"; seeds {_esc(', '.join(map(str, spec.seeds)))}"
            + (f"; platforms {_esc(', '.join(spec.platforms))}" if spec.platforms else "")
            + (", quick" if spec.quick else "") + f". {_esc(result.summary())}.</p>"]
    plots, left_out = sweep_plots(result, x, lines)
    for plot in plots:
        body.append(f"<h3>{_esc(plot.title)}</h3>{svg_line_chart(plot)}")
    if left_out:
        body.append(f"<p>{left_out} more plots fit this grid; the table has their "
                    "numbers.</p>")
    t = result.table
    shown = [c for c in t.columns if c not in ("id", "report", "error")]
    body.append("<h2>Results</h2>" + _table(shown, [
        ["" if rec[c] is None else rec[c] for c in shown] for rec in t.records()], "results"))
    failed = [o for o in result.outcomes if not o.ok]
    if failed:
        body.append("<h2>Failed points</h2>" + _table(["point", "settings", "seed",
                                                         "platform", "error"], [
            [o.point.index, " ".join(o.point.settings), o.point.seed, o.point.platform,
             o.error or ""] for o in failed]))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
            f"{''.join(body)}</body></html>\n")
