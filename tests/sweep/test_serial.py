"""Sweeps without Dask or pyarrow: --workers 1 in this process, the table as CSV; the
terminal table, the summary and the progress bar."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import pytest

from iommulab.cli import main
from iommulab.scenarios import Progress
from iommulab.sweep import OutputDir, SerialEngine, SweepSpec, expand, run_sweep
from iommulab.sweep.table import results_table

SPEC = SweepSpec("streaming-dma", {"packets": ["20", "40"], "modes": ["strict", "lazy"]},
                 quick=True)


@pytest.fixture
def no_dask(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if Dask were not installed (an import of it fails)."""
    monkeypatch.setitem(sys.modules, "distributed", None)


def test_without_dask_workers_1_runs_serially_and_says_so(
        no_dask: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["sweep", "streaming-dma", "--quick", "--grid", "packets=20,40", "--out",
            str(tmp_path / "o"), "--no-progress", "-q"]
    assert main([*argv, "--workers", "1"]) == 0
    captured = capsys.readouterr()
    assert "Dask is not installed: the points run one after the other" in captured.err
    assert "2 points: 2 ran (2 ok, 0 failed), 0 skipped" in captured.out
    assert main([*argv, "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert "Dask is not installed: pip install 'iommulab[sweep]'" in err
    assert "give --workers 1" in err
    assert main([*argv, "--scheduler", "tcp://127.0.0.1:1"]) == 2


def test_without_pyarrow_the_table_is_csv(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    out = OutputDir(tmp_path / "o")
    result = run_sweep(SPEC, SerialEngine(), out)
    assert not (out.path / "results.parquet").exists()
    rows = list(csv.DictReader(io.StringIO((out.path / "results.csv").read_text())))
    assert [r["packets"] for r in rows] == ["20", "20", "40", "40"]
    assert [r["modes"] for r in rows] == ["strict", "lazy", "strict", "lazy"]
    recs = result.table.records()
    for row, rec in zip(rows, recs, strict=True):
        assert row["strict.tlbi_commands"] == ("" if rec["strict.tlbi_commands"] is None
                                               else str(rec["strict.tlbi_commands"]))
    assert rows[0]["strict.tlbi_commands"] == "22"  # 20 packets: a TLBI each, and 2
    assert "host.wall_seconds" in rows[0]


def test_parquet_holds_the_table(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    out = OutputDir(tmp_path / "o")
    result = run_sweep(SPEC, SerialEngine(), out)
    table = pq.read_table(out.path / "results.parquet")
    assert table.column_names == result.table.columns
    assert table.to_pylist() == result.table.records()
    assert json.loads(table.schema.metadata[b"iommulab.timing_columns"]) == \
        result.table.timing_columns


def test_terminal_table_splits_and_lists_what_is_the_same(tmp_path: Path) -> None:
    result = run_sweep(SPEC, SerialEngine(), OutputDir(tmp_path / "o"))
    text = result.table.render(width=100)
    chunks = text.split("\n\n")
    assert len(chunks) > 2
    for chunk in chunks[:-1]:
        head = chunk.splitlines()[0]
        assert head.split()[:4] == ["point", "packets", "modes", "status"]
        assert max(len(line) for line in chunk.splitlines()) <= 100
    assert chunks[-1].startswith("the same in every point that has it: ")
    assert chunks[-1] == "the same in every point that has it: exposed_bytes_per_map=2560"
    assert "iova_tree_allocs" in chunks[1].splitlines()[0]  # strict. and lazy. as one


def test_render_of_a_table_with_no_rows() -> None:
    table = results_table([])
    assert table.rows == [] and table.render(80).splitlines()[0].split() == [
        "point", "status"]


def test_progress_shows_done_running_failed_and_eta(tmp_path: Path) -> None:
    stream = io.StringIO()
    run_sweep(SPEC, SerialEngine(), OutputDir(tmp_path / "o"), progress=Progress(stream))
    shown = stream.getvalue()
    assert "] 0/4 ETA --:-- 1 running" in shown
    assert "] 2/4 ETA " in shown and "1 running, 0 failed" in shown
    assert "] 4/4 ETA 00:00 0 running, 0 failed" in shown
    assert shown.endswith("\r")  # cleared at the end


def test_html_page_lands_in_the_new_output_directory(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "new" / "out"
    assert main(["sweep", "streaming-dma", "--quick", "--grid", "packets=20,40", "--workers",
                 "1", "--out", str(out), "--no-progress", "-q", "--html"]) == 0
    assert (out / "sweep.html").read_text().startswith("<!DOCTYPE html>")
    assert f"page {out / 'sweep.html'}" in capsys.readouterr().out
    page = tmp_path / "page.html"
    assert main(["sweep", "streaming-dma", "--quick", "--grid", "packets=20,40", "--workers",
                 "1", "--out", str(out), "--no-progress", "-q", "--html", str(page)]) == 0
    assert "tlbi_commands against packets" in page.read_text()


def test_summary_counts_skipped_points(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["sweep", "streaming-dma", "--quick", "--grid", "packets=20,40", "--workers",
            "1", "--out", str(tmp_path / "o"), "--no-progress"]
    assert main(argv) == 0
    assert main([*argv[:4], "packets=20,40,60", *argv[5:]]) == 0
    out = capsys.readouterr().out
    assert "3 points: 1 ran (1 ok, 0 failed), 2 skipped (already in" in out
    assert len(expand(SweepSpec("streaming-dma", {"packets": ["20", "40", "60"]}))) == 3
