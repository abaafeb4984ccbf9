"""Sweeps: the speed-up of a grid on a two-worker Dask LocalCluster over one process, and
the engine's cost per point.

The grid is ``migration-dirty --quick`` (each point a few tenths of a second of model
work) over ``writes_per_round`` times seeds, ``--points`` points in all. It runs once in
this process (``--workers 1``: the serial engine) and once on a LocalCluster of two
worker processes started for it; each figure gives the wall time and, beside it, the
CPU time of this process and the workers together; the CPU time spent inside the points
themselves (each point's thread) is given for both, so what the engine adds shows apart
from what the machine's other load does to the wall time. The per-point overhead is measured
with points that do no model work (a runner that returns an empty result at once), so
what is left is the engine: submitting, scheduling, pickling, collecting, and writing
each point's JSON report and the table.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

from _common import Figure, print_figures
from iommulab.scenarios import ScenarioResult
from iommulab.sweep import DaskEngine, OutputDir, Point, SerialEngine, SweepSpec, run_sweep
from iommulab.sweep.engine import Engine


def _empty(point: Point) -> ScenarioResult:
    """A point without model work: the engine's cost alone."""
    return ScenarioResult(point.scenario, "empty", point.platform, point.seed, point.quick,
                          {}, headline={"x": point.seed})


def _spec(points: int) -> SweepSpec:
    writes = [str(25 * (k + 1)) for k in range(8)]
    seeds = max(points // len(writes), 1)
    return SweepSpec("migration-dirty", {"writes_per_round": writes[:min(points, 8)]},
                     settings=("modes=split", "bbm_levels=2"), seeds=tuple(range(seeds)),
                     quick=True)


def _worker_cpu(engine: Engine) -> float:
    """CPU seconds the Dask workers' processes have used so far (0 for the serial engine)."""
    if not isinstance(engine, DaskEngine):
        return 0.0
    times: dict[str, float] = engine.client.run(time.process_time)
    return sum(times.values())


def _timed(engine: Engine, spec: SweepSpec, runner: Callable[[Point], ScenarioResult] | None
           = None) -> tuple[float, float, Any]:
    """Wall and CPU seconds (this process and the workers) of one sweep into a fresh
    output directory."""
    with tempfile.TemporaryDirectory() as tmp:
        cpu0, wcpu0 = time.process_time(), _worker_cpu(engine)
        start = time.perf_counter()
        kw: dict[str, Any] = {} if runner is None else {"runner": runner}
        result = run_sweep(spec, engine, OutputDir(tmp), **kw)
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu0 + _worker_cpu(engine) - wcpu0
    assert result.failed == 0, [o.error for o in result.outcomes if o.error]
    return wall, cpu, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--points", type=int, default=64, help="points of the model grid")
    ap.add_argument("--noop", type=int, default=512, help="points of the overhead runs")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    spec = _spec(args.points)
    noop = SweepSpec("msi-doorbell", {"devices": ["1"]}, seeds=tuple(range(args.noop)),
                     quick=True)
    serial = SerialEngine()
    s_wall, s_cpu, s_res = _timed(serial, spec)
    n = len(s_res.outcomes)
    e_wall, e_cpu, _ = _timed(serial, noop, _empty)
    start = time.perf_counter()
    dask = DaskEngine(workers=args.workers)
    boot = time.perf_counter() - start
    try:
        _timed(dask, _spec(args.workers), None)  # workers import the model once
        d_wall, d_cpu, d_res = _timed(dask, spec)
        o_wall, o_cpu, _ = _timed(dask, noop, _empty)
    finally:
        dask.close()
    assert d_res.table.without_timings() == s_res.table.without_timings()

    def in_points(res: Any) -> float:
        return float(sum(res.table.column("host.point_cpu_seconds")))

    print_figures(f"iommulab sweep: {n} points of migration-dirty --quick, {args.workers} "
                  f"Dask workers vs one process ({os.cpu_count()} cores here)", [
        Figure(f"{n} points in one process (serial engine)", s_wall, "s", cpu=s_cpu),
        Figure(f"{n} points on {args.workers} LocalCluster workers", d_wall, "s", cpu=d_cpu),
        Figure("speed-up, wall", s_wall / d_wall, "x"),
        Figure("CPU inside the points, one process", in_points(s_res), "s"),
        Figure(f"CPU inside the points, {args.workers} workers", in_points(d_res), "s"),
        Figure("LocalCluster start (not in the sweep's time)", boot, "s"),
        Figure("engine cost per point, serial (JSON report, table)", e_wall / args.noop * 1e3,
               "ms", cpu=e_cpu / args.noop * 1e3),
        Figure(f"engine cost per point, Dask ({args.workers} workers)",
               o_wall / args.noop * 1e3, "ms", cpu=o_cpu / args.noop * 1e3),
    ])


if __name__ == "__main__":
    main()
