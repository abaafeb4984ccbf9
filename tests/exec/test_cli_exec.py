"""``iommulab exec``: the program's exit status, the machine settings, the summary."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from iommulab.cli import main

Build = Callable[..., Path]


def test_exec_runs_the_program_and_gives_its_status(build: Build, tmp_path: Path,
                                                    capfd: pytest.CaptureFixture[str]) -> None:
    prog = build("iommufd_mock")
    assert main(["exec", "--platform", "mock", "--summary", "--", str(prog)]) == 0
    out, err = capfd.readouterr()
    assert out.splitlines()[-1] == "done 0"
    assert "29 model ioctls" in err and "machine back to fresh" in err
    assert main(["exec", "--platform", "mock", "--", "/bin/false"]) == 1


def test_exec_usage_errors(capfd: pytest.CaptureFixture[str], bridge_ok: None) -> None:
    assert main(["exec", "--platform", "mock"]) == 2
    assert main(["exec", "--set", "ram", "--", "/bin/true"]) == 2
    assert main(["exec", "--set", "colour=blue", "--", "/bin/true"]) == 2
    assert main(["exec", "--set", "vfio_iommu_type1.nope=1", "--", "/bin/true"]) == 2
    assert main(["exec", "--", "/nonexistent/program"]) == 3
    err = capfd.readouterr().err
    assert "name a program" in err and "not a machine setting" in err


def test_exec_report(build: Build, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    import json

    import jsonschema

    from iommulab.report.json_report import load_schema
    prog = build("vfio_type1", static=True)
    report, html = tmp_path / "r.json", tmp_path / "r.html"
    assert main(["exec", "--report", str(report), "--html", str(html), "--",
                 str(prog), "0", "0000:00:02.0"]) == 0
    doc = json.loads(report.read_text())
    jsonschema.validate(doc, load_schema())
    head = doc["headline"]
    assert head["model ioctls"] == 22 and head["failed ioctls"] == 7
    assert head["machine afterwards"] == "fresh" and head["exit status"] == 0
    assert head["peak pins"] == 513  # 2M of RAM and a page, pinned once each
    calls = {row[0]: row[1:] for row in doc["tables"][0]["rows"]}
    assert calls["VFIO_IOMMU_MAP_DMA"] == [5, 2, "EFAULT x2, EEXIST x1"]
    iopte = doc["tables"][1]
    # the RAM is MADV_HUGEPAGE: where the host allows THP there (smaps THPeligible), the
    # mirror faults a 2M folio, mapped by one IOPTE
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if thp.exists() and "[never]" not in thp.read_text():
        assert iopte["rows"] == [["4K", 1, "4K"], ["2M", 1, "2M"]]
    else:
        assert iopte["rows"] == [["4K", 513, "2M"]]
    assert "<html" in html.read_text().lower()
    capfd.readouterr()
