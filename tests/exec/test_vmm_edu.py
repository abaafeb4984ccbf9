"""A VMM-style program drives QEMU's edu device end to end under ``iommulab exec``:
type1 container and group, BAR 0 and config space through pread/pwrite, edu's factorial
and DMA engine, completions on the program's own eventfd wired to MSI; and the machine
``exec`` builds (``--set device=``)."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from iommulab.cli import EXEC_DEFAULT_DEVICE, _exec_machine, main
from iommulab.exec import run_exec
from iommulab.machine import Machine
from iommulab.scenarios import UsageError
from iommulab.testing import check_invariants, leak_snapshot

Build = Callable[..., Path]
BDF = "0000:00:02.0"


def expected(group: int, type_: str) -> list[str]:
    return [f"group {group} type {type_}", "bar0: 1024 KiB, pread/pwrite", "device 1234:11e8",
            "id 0x10000ed", "liveness 0xedcba987", "10! = 3628800, interrupts 1",
            "dma to device: interrupts 1, status 0x100",
            "dma to RAM: interrupts 1, status 0x100", "dma copy matches"]


@pytest.mark.parametrize(("platform", "static", "type_"),
                         [("x86-vtd", False, "DMA-FQ"), ("x86-vtd", True, "DMA-FQ"),
                          ("arm64-smmuv3", True, "DMA")])
def test_vmm_drives_edu_through_exec(build: Build, tmp_path: Path, platform: str,
                                     static: bool, type_: str) -> None:
    m = Machine(platform)
    dev = m.add_pci_device(BDF, model="edu")
    group = dev.iommu_group
    assert group is not None
    fresh = leak_snapshot(m)
    own_fds = set(os.listdir("/proc/self/fd"))
    out = tmp_path / "stdout"
    with out.open("wb") as f:
        start = time.monotonic()
        result = run_exec(m, [str(build("vmm_edu", static=static)), str(group), BDF],
                          timeout=60, stdout=f)
        wall = time.monotonic() - start
    assert result.handler_errors == []
    assert result.status == 0, out.read_text()
    assert out.read_text().splitlines() == expected(group, type_)
    edu = dev.model
    assert edu is not None and edu.dma_runs == 2 and edu.dma_faults == 0
    assert m.host_msi.handlers == {} and not dev.fn.msi_enabled
    assert m.vfio_bar_mmap  # exec decides per device and leaves the machine-wide switch alone
    check_invariants([m])
    assert not (diff := fresh.diff(leak_snapshot(m))), diff
    # the real eventfd the model held has been let go
    assert set(os.listdir("/proc/self/fd")) == own_fds
    assert wall < 30


def test_cli_runs_vmm_edu_on_the_default_device(build: Build,
                                                capfd: pytest.CaptureFixture[str]) -> None:
    prog = str(build("vmm_edu"))
    assert main(["exec", "--summary", "--", prog, "0", EXEC_DEFAULT_DEVICE]) == 0
    out, err = capfd.readouterr()
    assert out.splitlines() == expected(0, "DMA-FQ")
    assert "machine back to fresh" in err and "model error" not in err
    # a plain device is no edu: another identity, no MSI capability (SET_IRQS fails)
    assert main(["exec", "--set", f"device={EXEC_DEFAULT_DEVICE}:plain", "--", prog, "0",
                 EXEC_DEFAULT_DEVICE]) == 1
    out, err = capfd.readouterr()
    assert out.splitlines()[-1] == "device 1b36:0005" and "VFIO_DEVICE_SET_IRQS" in err
    assert main(["exec", "--set", "device=none", "--", prog, "0", EXEC_DEFAULT_DEVICE]) == 1
    assert "vmm_edu: line" in capfd.readouterr().err  # no group 0 in sysfs


def _machine(*sets: str, platform: str = "x86-vtd") -> Machine:
    return _exec_machine(argparse.Namespace(set=list(sets), platform=platform,
                                            kernel="6.12"))


def test_exec_machine_devices() -> None:
    m = _machine()
    assert list(m.devices) == [EXEC_DEFAULT_DEVICE]
    assert m.devices[EXEC_DEFAULT_DEVICE].model is not None  # edu
    m = _machine("device=0000:00:05.0", "device=0000:00:06.0:plain")
    assert list(m.devices) == ["0000:00:05.0", "0000:00:06.0"]
    assert m.devices["0000:00:05.0"].model is not None
    assert m.devices["0000:00:06.0"].model is None
    assert m.devices["0000:00:06.0"].iommu_group == 1
    assert _machine("device=none").devices == {}
    assert _machine(platform="mock").devices == {}
    with pytest.raises(UsageError, match=r"device=0000:00:05\.0:plain"):
        _machine("device=0000:00:05.0", "device=0000:00:05.0:plain")
    with pytest.raises(UsageError, match="device=nonsense"):
        _machine("device=nonsense")


def test_report_counts_region_accesses_and_interrupts(build: Build, tmp_path: Path) -> None:
    import json

    import jsonschema

    from iommulab.report.json_report import load_schema
    report = tmp_path / "r.json"
    assert main(["exec", "--report", str(report), "--", str(build("vmm_edu")), "0",
                 EXEC_DEFAULT_DEVICE]) == 0
    doc = json.loads(report.read_text())
    jsonschema.validate(doc, load_schema())
    assert doc["headline"]["interrupts signalled"] == 3  # the factorial and two DMAs
    assert doc["headline"]["machine afterwards"] == "fresh"
    table = next(t for t in doc["tables"] if t["title"] == "device region reads and writes")
    assert table["rows"] == [["BAR0", "read", 5, 20, 0], ["BAR0", "write", 14, 88, 0],
                             ["config", "read", 2, 6, 0], ["config", "write", 1, 2, 0]]


@pytest.mark.parametrize("platform", ["x86-vtd", "arm64-smmuv3"])
def test_vmm_drives_edu_through_the_cdev_and_iommufd(build: Build, tmp_path: Path,
                                                      platform: str) -> None:
    """The same DMA through the device cdev bound to an iommufd and attached to an IOAS
    (ATTACH writes back the automatic domain's HWPT id)."""
    m = Machine(platform)
    m.add_pci_device(BDF, model="edu")
    fresh = leak_snapshot(m)
    out = tmp_path / "stdout"
    with out.open("wb") as f:
        result = run_exec(m, [str(build("vmm_edu_cdev")), "0"], timeout=60, stdout=f)
    assert result.handler_errors == [] and result.status == 0, out.read_text()
    assert out.read_text().splitlines() == [
        "ioas 1, devid 2, hwpt 3", "to device: interrupts 1", "to RAM: interrupts 1",
        "dma copy matches"]
    assert not (diff := fresh.diff(leak_snapshot(m))), diff
