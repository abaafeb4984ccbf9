"""A C program using iommufd on the mock platform under ``iommulab exec``: the model's
answers, the program's own memory as the user memory, nothing left behind."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from iommulab.exec import run_exec
from iommulab.machine import Machine
from iommulab.testing import leak_snapshot

from .reference import iommufd_mock_answers, iommufd_pointers_answers

Build = Callable[..., Path]


@pytest.mark.parametrize(("static", "kernel"), [(False, "6.12"), (True, "6.12"),
                                               (True, "7.0")])
def test_iommufd_mock_program(build: Build, tmp_path: Path, static: bool,
                              kernel: str) -> None:
    m = Machine("mock", kernel=kernel)
    fresh = leak_snapshot(m)
    out = tmp_path / "stdout"
    with out.open("wb") as f:
        result = run_exec(m, [str(build("iommufd_mock", static=static))], timeout=60,
                          stdout=f)
    lines = out.read_text().splitlines()
    assert result.handler_errors == []
    assert "FAIL" not in "\n".join(lines), lines  # the data the program sees is right
    assert result.status == 0
    # the answers, the values written back, the errors: what the model gives from Python
    assert lines == iommufd_mock_answers(kernel)
    # the child's IOAS was its own; after the run the machine is as it was fresh
    assert not (diff := fresh.diff(leak_snapshot(m))), diff
    assert m.mem.external is not None and len(m.mem.external) == 0


def test_pointers_inside_structs(build: Build, tmp_path: Path) -> None:
    """IOAS_ALLOW_IOVAS's array, GET_HW_INFO's data, the selftest's DIRTY bitmap and
    GET_DIRTY_BITMAP's output, in the program's memory, and faulting pointers. (6.12: 7.0's
    mock table maps contiguous frames with larger IOPTEs and reports dirtiness per IOPTE,
    so its bitmap depends on how the frames of the program's buffer happen to lie,
    which differs from a Python process's.)"""
    m = Machine("mock")
    fresh = leak_snapshot(m)
    out = tmp_path / "stdout"
    with out.open("wb") as f:
        result = run_exec(m, [str(build("iommufd_pointers", static=True))], timeout=60,
                          stdout=f)
    assert result.handler_errors == [] and result.status == 0
    assert out.read_text().splitlines() == iommufd_pointers_answers()
    assert not (diff := fresh.diff(leak_snapshot(m))), diff
