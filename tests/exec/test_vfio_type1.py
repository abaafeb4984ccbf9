"""A VMM-style VFIO type1 program under ``iommulab exec`` on x86-vtd and arm64-smmuv3:
the model's answers, capability chains and dirty bitmaps in the program's memory, the
device fd the model hands out, nothing left behind."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from iommulab.exec import run_exec
from iommulab.machine import Machine
from iommulab.testing import leak_snapshot

from .reference import vfio_type1_answers

Build = Callable[..., Path]
BDF = "0000:00:02.0"


@pytest.mark.parametrize(("platform", "static"),
                         [("x86-vtd", False), ("x86-vtd", True), ("arm64-smmuv3", True)])
def test_vfio_type1_program(build: Build, tmp_path: Path, platform: str,
                            static: bool) -> None:
    m = Machine(platform)
    group = m.add_pci_device(BDF).iommu_group
    fresh = leak_snapshot(m)
    out = tmp_path / "stdout"
    with out.open("wb") as f:
        result = run_exec(m, [str(build("vfio_type1", static=static)), str(group), BDF],
                          timeout=60, stdout=f)
    assert result.handler_errors == []
    assert result.status == 0
    assert out.read_text().splitlines() == vfio_type1_answers(platform, BDF)
    assert result.stats.installed == 3  # container, group, and the device fd
    assert not (diff := fresh.diff(leak_snapshot(m))), diff
