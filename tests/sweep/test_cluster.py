"""Sweeps on real Dask clusters: a LocalCluster of two worker processes, and a scheduler
and workers started as separate processes with the ``dask`` command; each checked
against the same points run one by one in this process."""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iommulab.cli import main
from iommulab.report.json_report import report_document
from iommulab.scenarios import ScenarioResult, UsageError, run_scenario
from iommulab.sweep import (
    DaskEngine,
    OutputDir,
    Point,
    SerialEngine,
    SweepSpec,
    expand,
    run_sweep,
    scenario_runner,
)

distributed = pytest.importorskip("distributed")
pq = pytest.importorskip("pyarrow.parquet")

ROOT = Path(__file__).resolve().parents[2]

#: small points: msi-doorbell in --quick sizes runs in about 10 ms
GRID = ["--grid", "devices=1,2", "--grid", "cases=dma-domain,vfio-cookie+identity",
        "--seeds", "2"]
SPEC = SweepSpec("msi-doorbell", {"devices": ["1", "2"],
                                  "cases": ["dma-domain", "vfio-cookie+identity"]},
                 seeds=(0, 1), quick=True)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """A LocalCluster of two worker processes, one thread each, for the module."""
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address="127.0.0.1:0", silence_logs=40)
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


def _one_by_one(points: list[Point]) -> list[dict[str, Any]]:
    """Each point's headline, run here with run_scenario as `iommulab run` runs it."""
    return [report_document(run_scenario(p.scenario, platform=p.platform,
                                         settings=p.settings, seed=p.seed,
                                         quick=p.quick))["headline"] for p in points]


def _rows(path: Path) -> list[dict[str, Any]]:
    table = pq.read_table(path)
    timing = json.loads(table.schema.metadata[b"iommulab.timing_columns"])
    assert timing and all(c.startswith("host.") for c in timing)
    return [{k: v for k, v in r.items() if k not in timing} for r in table.to_pylist()]


def test_local_cluster_table_equals_points_run_one_by_one(tmp_path: Path) -> None:
    out = tmp_path / "par"
    assert main(["sweep", "msi-doorbell", "--quick", *GRID, "--workers", "2",
                 "--no-progress", "-q", "--out", str(out)]) == 0
    rows = _rows(out / "results.parquet")
    points = expand(SPEC)
    assert [r["point"] for r in rows] == [p.index for p in points]
    for row, p, headline in zip(rows, points, _one_by_one(points), strict=True):
        assert (row["seed"], row["platform"], row["status"]) == (p.seed, p.platform, "ok")
        assert row["devices"] == dict(p.grid)["devices"]
        assert {k: row[k] for k in headline} == headline
        assert all(row[k] is None for k in row if "." in k and k not in headline)
        report = json.loads((out / row["report"]).read_text())
        assert report["headline"] == headline and report["seed"] == p.seed
    # the same sweep serially into another directory: the same table, timings aside
    assert main(["sweep", "msi-doorbell", "--quick", *GRID, "--workers", "1",
                 "--no-progress", "-q", "--out", str(tmp_path / "ser")]) == 0
    serial = _rows(tmp_path / "ser" / "results.parquet")
    assert serial == rows


def _log_error_in_worker() -> None:
    logging.getLogger("distributed.worker").error("iommulab-probe: worker ERROR")


def test_the_local_cluster_keeps_worker_errors_out_of_the_output(
        capfd: pytest.CaptureFixture[str]) -> None:
    # a worker whose heartbeat meets the closing scheduler logs an ERROR with a
    # traceback (seen in CI on a loaded machine): the workers' stderr, which is ours,
    # must not show it
    engine = DaskEngine(workers=1)
    try:
        engine.client.run(_log_error_in_worker)
    finally:
        engine.close()
    out, err = capfd.readouterr()
    assert "iommulab-probe" not in out + err


def _fails_on(bad_index: int, point: Point) -> ScenarioResult:
    if point.index == bad_index:
        raise RuntimeError(f"injected failure in point {point.index}")
    return scenario_runner(point)


def test_a_failing_point_is_recorded_and_the_others_finish(client: Any,
                                                           tmp_path: Path) -> None:
    out = OutputDir(tmp_path / "out")
    result = run_sweep(SPEC, DaskEngine(client=client), out,
                       runner=functools.partial(_fails_on, 5))
    assert (result.ran, result.failed, result.skipped) == (8, 1, 0)
    recs = result.table.records()
    assert [r["status"] for r in recs] == ["ok"] * 5 + ["failed"] + ["ok"] * 2
    assert recs[5]["error"] == "RuntimeError: injected failure in point 5"
    assert recs[5]["report"] is None
    assert all(recs[5][h] is None for h in result.table.headline)
    kept = json.loads((out.path / f"points/{result.outcomes[5].point.id}.error.json")
                      .read_text())
    assert kept["error"] == "RuntimeError: injected failure in point 5"
    expected = _one_by_one([o.point for o in result.outcomes if o.ok])
    assert [o.report["headline"] for o in result.outcomes if o.report] == expected
    # resumed without the failure: only the failed point runs again
    again = run_sweep(SPEC, DaskEngine(client=client), out)
    assert (again.ran, again.failed, again.skipped) == (1, 0, 7)
    assert not (out.path / f"points/{result.outcomes[5].point.id}.error.json").exists()


def test_a_bad_combination_fails_its_point_only(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    # noncoherent-flush: ram=1020M is within ram's bounds, but with a buffer it is not
    status = main(["sweep", "noncoherent-flush", "--quick", "--grid", "ram=64K,1020M",
                   "--set", "buffer_pages=1", "--set", "policies=none", "--workers", "1",
                   "--no-progress", "--out", str(tmp_path / "o")])
    assert status == 1  # a point failed
    out = capsys.readouterr().out
    assert "2 points: 2 ran (1 ok, 1 failed), 0 skipped" in out
    assert "UsageError: noncoherent-flush: --set ram + buffer_pages: 1020M of RAM" in out


def test_resume_runs_only_the_missing_points(client: Any, tmp_path: Path) -> None:
    out = OutputDir(tmp_path / "out")
    small = SweepSpec("msi-doorbell", {"devices": ["1", "2"]}, seeds=(0, 1), quick=True)
    first = run_sweep(small, DaskEngine(client=client), out)
    assert (first.ran, first.skipped) == (4, 0)
    files = {p: p.stat().st_mtime_ns for p in out.points.iterdir()}
    assert len(files) == 4
    big = SweepSpec("msi-doorbell", {"devices": ["1", "2", "3"]}, seeds=(0, 1, 2),
                    quick=True)
    second = run_sweep(big, DaskEngine(client=client), out)
    assert (second.ran, second.skipped, second.failed) == (5, 4, 0)
    assert {o.point.index for o in second.outcomes if not o.skipped} == {2, 5, 6, 7, 8}
    assert all(p.stat().st_mtime_ns == t for p, t in files.items())  # not written again
    assert len(list(out.points.iterdir())) == 9
    serial = run_sweep(big, SerialEngine(), OutputDir(tmp_path / "serial"))
    assert serial.table.without_timings() == second.table.without_timings()


def _dies_once(marker: str, point: Point) -> ScenarioResult:
    """The first call for point 1 kills its worker process outright."""
    if point.index == 1 and not os.path.exists(marker):
        Path(marker).touch()
        os._exit(1)
    return scenario_runner(point)


def test_a_dying_worker_is_retried_elsewhere(client: Any, tmp_path: Path) -> None:
    marker = tmp_path / "died"
    spec = SweepSpec("msi-doorbell", {"devices": ["1", "2", "3"]}, quick=True)
    result = run_sweep(spec, DaskEngine(client=client), OutputDir(tmp_path / "a"),
                       runner=functools.partial(_dies_once, str(marker)))
    assert marker.exists()  # a worker did die
    assert (result.ran, result.failed) == (3, 0)
    assert result.table.without_timings() == run_sweep(
        spec, out=OutputDir(tmp_path / "b")).table.without_timings()
    client.wait_for_workers(2, timeout=60)  # the nanny brought it back


def test_a_scheduler_that_does_not_answer_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"--scheduler tcp://127\.0\.0\.1:1: cannot "
                       "connect: Timed out"):
        DaskEngine(scheduler="tcp://127.0.0.1:1", timeout=1)


def _free_scheduler(tmp_path: Path, env: dict[str, str]) -> tuple[str, list[Any]]:
    """A scheduler and two workers as separate processes on 127.0.0.1, random ports."""
    sched_file = tmp_path / "scheduler.json"
    procs = [subprocess.Popen(
        [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
         "--no-dashboard", "--scheduler-file", str(sched_file)], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    deadline = time.monotonic() + 60
    while not sched_file.exists() or not sched_file.read_text().strip():
        assert procs[0].poll() is None, "dask scheduler exited"
        assert time.monotonic() < deadline, "no scheduler file after 60 s"
        time.sleep(0.1)
    address = json.loads(sched_file.read_text())["address"]
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "dask", "worker", address, "--nworkers", "2", "--nthreads",
         "1", "--host", "127.0.0.1", "--no-dashboard"], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return str(address), procs


def test_an_external_scheduler_started_as_its_own_processes(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"),
                                                    env.get("PYTHONPATH")) if p)
    address, procs = _free_scheduler(tmp_path, env)
    try:
        assert address.startswith("tcp://127.0.0.1:")
        with distributed.Client(address, timeout=60) as c:
            c.wait_for_workers(2, timeout=60)
        out = tmp_path / "out"
        proc = subprocess.run(
            [sys.executable, "-m", "iommulab.cli", "sweep", "msi-doorbell", "--quick",
             *GRID, "--scheduler", address, "--out", str(out), "-q"],
            env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert "8 points: 8 ran (8 ok, 0 failed), 0 skipped" in proc.stdout
        assert "on 2 workers" in proc.stdout
        rows = _rows(out / "results.parquet")
        points = expand(SPEC)
        assert [{k: r[k] for k in h} for r, h in zip(rows, _one_by_one(points),
                                                      strict=True)] == _one_by_one(points)
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
