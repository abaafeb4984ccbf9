"""The results table of a sweep (lab): one row per point, as Parquet or CSV, and as text.

Columns, in order: ``point`` (its index in the sweep), ``id``, ``platform``, ``seed``,
the grid's parameters (numbers as numbers; a list parameter's items joined with ``+``),
``status`` (``ok`` or ``failed``), ``error``, ``report`` (the point's JSON report under
the output directory), every headline key of the scenario's report, then the host
timings as ``host.*`` columns. Everything but the ``host.*`` columns is a function of
the grid and the seeds: the same sweep gives the same table. The Parquet file names
the timing columns in its schema metadata (``iommulab.timing_columns``).
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..report import format_table
from .point import Outcome

__all__ = ["TIMING_PREFIX", "ResultsTable", "merged_metrics", "results_table"]

#: the prefix of the columns that hold host timings (they vary from run to run)
TIMING_PREFIX = "host."


@dataclass(frozen=True)
class ResultsTable:
    """Column names and rows (lists of plain values, None where a point has none)."""

    columns: list[str]
    rows: list[list[Any]]
    grid: list[str]  # the grid's parameter columns
    headline: list[str]  # the headline columns

    @property
    def timing_columns(self) -> list[str]:
        return [c for c in self.columns if c.startswith(TIMING_PREFIX)]

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]

    def column(self, name: str) -> list[Any]:
        k = self.columns.index(name)
        return [row[k] for row in self.rows]

    def without_timings(self) -> list[list[Any]]:
        """The rows less the ``host.*`` columns: what must not change between runs."""
        keep = [k for k, c in enumerate(self.columns) if not c.startswith(TIMING_PREFIX)]
        return [[row[k] for k in keep] for row in self.rows]

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.columns)
        w.writerows([["" if v is None else v for v in row] for row in self.rows])
        return buf.getvalue()

    def to_parquet(self) -> bytes | None:
        """The table as Parquet bytes, or None when pyarrow is not installed."""
        try:
            pa = importlib.import_module("pyarrow")
            pq = importlib.import_module("pyarrow.parquet")
        except ImportError:
            return None
        arrays = [pa.array(_uniform(self.column(c))) for c in self.columns]
        meta = {"iommulab.timing_columns": json.dumps(self.timing_columns)}
        table = pa.Table.from_arrays(arrays, names=self.columns).replace_schema_metadata(meta)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        data: bytes = sink.getvalue().to_pybytes()
        return data

    def render(self, width: int | None = None) -> str:
        """The table for a terminal: the grid's columns, status, and the headline
        numbers (keys merged by :func:`merged_metrics`) whose value is not the same in
        every point that has one (those that are, listed after); split into several
        tables, each repeating the grid's columns, when wider than ``width`` (default:
        the terminal's)."""
        width = width or shutil.get_terminal_size((120, 24)).columns
        keys = ["point", "platform", "seed", *self.grid]
        keys = [k for k in keys if k == "point" or k in self.grid
                or len(set(map(str, self.column(k)))) > 1]
        records = self.records()
        metrics = merged_metrics(self.headline, records)
        varying: list[str] = []
        same: list[str] = []
        for h, vals in metrics.items():
            seen = {json.dumps(v) for v in vals if v is not None}
            (varying if len(seen) > 1 else same).append(h)
        cols_of = {**{k: self.column(k) for k in keys}, **metrics}
        head = [*keys, "status"]
        chunks: list[list[str]] = []
        cur: list[str] = []
        cols_of["status"] = self.column("status")
        base = sum(_width(k, cols_of[k]) + 2 for k in head)
        used = base
        for h in varying:
            w = _width(h, cols_of[h]) + 2
            if cur and used + w > width:
                chunks.append(cur)
                cur, used = [], base
            cur.append(h)
            used += w
        chunks.append(cur)
        out = []
        for cols in chunks:
            names = [*head, *cols]
            rows = [[_cell(cols_of[c][n]) for c in names] for n in range(len(records))]
            out.append(format_table(names, rows))
        if same:
            out.append("the same in every point that has it: " + ", ".join(
                f"{h}={_cell(next(v for v in metrics[h] if v is not None))}"
                for h in same))
        return "\n\n".join(out)


def merged_metrics(headline: Sequence[str], recs: Sequence[dict[str, Any]]
                   ) -> dict[str, list[Any]]:
    """The headline as one value per record under each name, keys merged where the grid
    names them: name -> values (None where a record has none).

    Headline keys are often ``CASE.metric`` with the case a value of the grid
    (``split_BBM1.resent_bytes`` when the grid varies ``bbm_levels``): keys that share
    their last part and never meet in one record are one metric, named by that last
    part (unless a key of that name is there already)."""
    by_last: dict[str, list[str]] = {}
    for h in headline:
        by_last.setdefault(h.rpartition(".")[2], []).append(h)
    groups: list[tuple[str, list[str]]] = []
    for last, keys in by_last.items():
        if len(keys) > 1 and last not in headline and all(
                sum(r[k] is not None for k in keys) <= 1 for r in recs):
            groups.append((last, keys))
        else:
            groups.extend((k, [k]) for k in keys)
    order = {h: n for n, h in enumerate(headline)}
    groups.sort(key=lambda g: order[g[1][0]])
    return {name: [next((r[k] for k in keys if r[k] is not None), None) for r in recs]
            for name, keys in groups}


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _width(name: str, values: Sequence[Any]) -> int:
    return max([len(name), *(len(_cell(v)) for v in values)])


def _uniform(values: Sequence[Any]) -> list[Any]:
    """One type per column for Parquet: ints with floats become floats, anything mixed
    with text becomes text (None stays null)."""
    kinds = {type(v) for v in values if v is not None}
    if str in kinds and len(kinds) > 1:
        return [None if v is None else str(v) for v in values]
    if float in kinds and int in kinds:
        return [None if v is None else float(v) for v in values]
    return list(values)


def results_table(outcomes: Sequence[Outcome], report_name: Any = None) -> ResultsTable:
    """The table of ``outcomes`` in point order (``report_name(point)``: the report's
    file, for the ``report`` column)."""
    ordered = sorted(outcomes, key=lambda o: o.point.index)
    grid = [k for k, _ in ordered[0].point.grid] if ordered else []
    headline: list[str] = []
    timing: list[str] = []
    for o in ordered:
        if o.report is not None:
            headline.extend(k for k in o.report["headline"] if k not in headline)
        timing.extend(k for k in o.host if k not in timing)
    columns = ["point", "id", "platform", "seed", *grid, "status", "error", "report",
               *headline, *(TIMING_PREFIX + k for k in timing)]
    rows = []
    for o in ordered:
        p = o.point
        heads = o.report["headline"] if o.report is not None else {}
        rows.append([p.index, p.id, p.platform, p.seed, *(v for _, v in p.grid),
                     "ok" if o.ok else "failed", o.error,
                     report_name(p) if report_name is not None and o.ok else None,
                     *(heads.get(h) for h in headline), *(o.host.get(k) for k in timing)])
    return ResultsTable(columns, rows, grid, headline)
