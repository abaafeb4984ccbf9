"""One point of a sweep, run where the engine puts it (this process or a Dask worker).

:func:`run_point` never raises for what the point does: a bad combination of
parameters, or any exception of the scenario, becomes an outcome with its error, so
one bad point cannot stop the sweep. Only a worker that dies loses the call, and Dask
runs it again elsewhere.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..report.json_report import report_document
from ..scenarios import ScenarioResult, run_scenario
from .grid import Point

__all__ = ["Outcome", "Runner", "run_point", "scenario_runner"]

#: what runs a point: the scenario by default; tests give one that fails on purpose
Runner = Callable[[Point], ScenarioResult]


@dataclass
class Outcome:
    """What one point produced: its report document (JSON) or its error, and the host
    timings (the only figures of a sweep that change from run to run)."""

    point: Point
    report: dict[str, Any] | None = None
    error: str | None = None
    host: dict[str, float] = field(default_factory=dict)
    worker: str = ""  # host:pid of the process that ran it
    skipped: bool = False  # taken from the output directory, not run now

    @property
    def ok(self) -> bool:
        return self.report is not None


def scenario_runner(point: Point) -> ScenarioResult:
    """Run ``point``'s scenario as ``iommulab run`` does, without a progress bar."""
    return run_scenario(point.scenario, platform=point.platform, settings=point.settings,
                        seed=point.seed, quick=point.quick)


def run_point(point: Point, runner: Runner = scenario_runner) -> Outcome:
    """Run ``point`` with ``runner``; an exception becomes the outcome's ``error``
    (``UsageError: ...`` for a bad combination of parameters)."""
    worker = f"{socket.gethostname()}:{os.getpid()}"
    start, cpu = time.perf_counter(), time.thread_time()

    def timings() -> dict[str, float]:
        # wall, and the CPU time of the thread that ran the point (on a busy machine
        # the two part; the CPU time is what the point itself cost)
        return {"point_seconds": round(time.perf_counter() - start, 3),
                "point_cpu_seconds": round(time.thread_time() - cpu, 3)}

    try:
        result = runner(point)
    except Exception as e:  # any failure of the point is its result, not the sweep's
        return Outcome(point, error=f"{type(e).__name__}: {e}", worker=worker,
                       host=timings())
    doc = report_document(result)
    host = {k: float(v) for k, v in result.host.items()}
    host.update(timings())
    return Outcome(point, report=doc, host=host, worker=worker)
