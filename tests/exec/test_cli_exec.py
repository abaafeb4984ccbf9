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
