"""Running a sweep (lab): expand the grid, skip what the output directory has, run the
rest on an engine, keep each outcome as it arrives, and build the table."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..scenarios import Progress
from .engine import Engine, SerialEngine
from .grid import Point, SweepSpec, expand
from .point import Outcome, Runner, scenario_runner
from .store import OutputDir
from .table import ResultsTable, results_table

__all__ = ["SweepResult", "run_points", "run_sweep"]


@dataclass
class SweepResult:
    """The outcomes of every point (in point order), the table, and the counts."""

    spec: SweepSpec
    outcomes: list[Outcome]
    table: ResultsTable
    seconds: float
    slots: int

    @property
    def skipped(self) -> int:
        return sum(o.skipped for o in self.outcomes)

    @property
    def failed(self) -> int:
        return sum(not o.ok for o in self.outcomes)

    @property
    def ran(self) -> int:
        return sum(not o.skipped for o in self.outcomes)

    def summary(self, out: str = "") -> str:
        where = f"already in {out}" if out else "done before"
        return (f"{len(self.outcomes)} points: {self.ran} ran ({self.ran - self.failed} ok, "
                f"{self.failed} failed), {self.skipped} skipped ({where}); "
                f"{self.seconds:.1f} s on {self.slots} worker"
                f"{'s' if self.slots != 1 else ''}")


def run_points(points: Sequence[Point], engine: Engine, runner: Runner = scenario_runner,
               out: OutputDir | None = None, progress: Progress | None = None
               ) -> list[Outcome]:
    """Run ``points`` (less those whose report ``out`` already has) on ``engine``; each
    outcome is saved in ``out`` as it arrives. The outcomes come back in point order."""
    progress = progress or Progress()
    outcomes: dict[int, Outcome] = {}
    todo: list[Point] = []
    for p in points:
        kept = out.load(p) if out is not None else None
        if kept is not None:
            outcomes[p.index] = kept
        else:
            todo.append(p)
    done = failed = 0
    progress(0, len(todo), f"{min(len(todo), engine.slots)} running")
    try:
        for outcome in engine.run(todo, runner):
            if out is not None:
                out.save(outcome)
            outcomes[outcome.point.index] = outcome
            done += 1
            failed += not outcome.ok
            running = min(len(todo) - done, engine.slots)
            progress(done, len(todo), f"{running} running, {failed} failed")
    finally:
        progress.close()
    return [outcomes[p.index] for p in points if p.index in outcomes]


def run_sweep(spec: SweepSpec, engine: Engine | None = None, out: OutputDir | None = None,
              runner: Runner = scenario_runner, progress: Progress | None = None
              ) -> SweepResult:
    """Run the sweep ``spec`` (see :func:`run_points`) and write its table into ``out``:
    ``results.parquet``, or ``results.csv`` when pyarrow is absent. Raises
    :class:`UsageError` for a value out of its bounds before any point runs."""
    points = expand(spec)
    engine = engine or SerialEngine()
    if out is not None:
        out.create()
        out.write("sweep.json", json.dumps(spec.describe(), indent=1) + "\n")
    start = time.perf_counter()
    outcomes = run_points(points, engine, runner, out, progress)
    seconds = time.perf_counter() - start
    table = results_table(outcomes, out.report_name if out is not None else None)
    if out is not None:
        data = table.to_parquet()
        if data is not None:
            out.write("results.parquet", data)
            (out.path / "results.csv").unlink(missing_ok=True)
        else:
            out.write("results.csv", table.to_csv())
    return SweepResult(spec, outcomes, table, seconds, engine.slots)
