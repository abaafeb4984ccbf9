"""A VMM giving its guest a nested IOMMU, as a C program under ``iommulab exec``:
``vmm_nested_smmuv3.c`` (QEMU's accelerated vSMMUv3 on Linux 7.0: a vIOMMU, a vDEVICE,
the guest's STE as a nested HWPT, edu's DMA walking the guest's CD and stage-1 table in
the program's own memory, the guest's TLBI/CFGI through the vIOMMU, a stage-1 fault
read from the vEVENTQ with the virtual StreamID)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from iommulab.cli import main
from iommulab.exec import run_exec
from iommulab.machine import Machine
from iommulab.testing import check_invariants, leak_snapshot

Build = Callable[..., Path]
BDF = "0000:00:02.0"
SMMUV3_OUT = [
    "hw_info: arm-smmuv3, idr0 0x144109b (s1 1 s2 1)",
    "ioas 2, nest parent 3, viommu 4, vdevice 5 (vsid 0x10)",
    "nested hwpt 6 attached",
    "dma iova 0x2000 -> gpa 0x21000: ok",
    "after remap + TLBI_NH_VA: iova 0x2000 -> gpa 0x22000: ok",
    "veventq: event 0x10 sid 0x10 stage 1 iova 0x2000",
    "nested smmuv3 guest: ok",
]


def _run_ok(m: Machine, program: Path, tmp_path: Path) -> list[str]:
    """``program 0`` under exec on ``m``: no handler error, exit 0; its output lines."""
    out = tmp_path / "stdout"
    with out.open("wb") as f:
        result = run_exec(m, [str(program), "0"], timeout=60, stdout=f)
    assert result.handler_errors == []
    assert result.status == 0, out.read_text()
    return out.read_text().splitlines()


def test_nested_smmuv3_guest_under_exec(build: Build, tmp_path: Path) -> None:
    m = Machine("arm64-smmuv3", kernel="7.0")
    dev = m.add_pci_device(BDF, model="edu")
    fresh = leak_snapshot(m)
    assert _run_ok(m, build("vmm_nested_smmuv3", static=True), tmp_path) == SMMUV3_OUT
    edu = dev.model
    assert edu is not None and (edu.dma_runs, edu.dma_faults) == (4, 1)
    (evt,) = m.driver.events  # the one fault, decoded by the evtq thread
    assert evt.iova == 0x2000
    check_invariants([m])
    assert not (diff := fresh.diff(leak_snapshot(m))), diff
    assert m.mem.pins.pins == 0


def test_nested_smmuv3_needs_7_0(build: Build, capfd: object) -> None:
    """On 6.12 there is no vIOMMU: the nest parent is refused (EOPNOTSUPP) first."""
    prog = str(build("vmm_nested_smmuv3", static=True))
    assert main(["exec", "--platform", "arm64-smmuv3", "--kernel", "6.12", "--", prog,
                 "0"]) == 1


def test_exec_machine_vtd_scalable() -> None:
    """``--set vtd_scalable=1`` gives exec's x86-vtd machine the scalable-mode unit that
    can nest (ECAP.NEST), QEMU's legacy one otherwise; another platform is a usage error."""
    import argparse

    import pytest

    from iommulab.cli import _exec_machine
    from iommulab.drivers.vtd import ECAP_NEST
    from iommulab.scenarios import UsageError

    def machine(*sets: str, platform: str = "x86-vtd") -> Machine:
        return _exec_machine(argparse.Namespace(set=list(sets), platform=platform,
                                                kernel="6.12"))
    assert machine("vtd_scalable=1").translator.ecap_reg & ECAP_NEST
    assert not machine("vtd_scalable=0").translator.ecap_reg & ECAP_NEST
    assert not machine().translator.ecap_reg & ECAP_NEST
    with pytest.raises(UsageError, match="only on x86-vtd"):
        machine("vtd_scalable=1", platform="arm64-smmuv3")


VTD_OUT = [
    "ioas 2, nest parent 3 (dirty tracking yes)",
    "nested hwpt 4 attached",
    "dma iova 0x801000 -> gpa 0x10081000: ok",
    "after remap + invalidate: iova 0x801000 -> gpa 0x10082000: ok",
    # the guest's leaf table page (the first stage sets its A bits through stage 2) and
    # the two pages the DMA wrote
    "dirty gpa pages: 0x10004000 0x10081000 0x10082000",
    "nested vt-d guest: ok",
]


def test_nested_vtd_guest_under_exec(build: Build, tmp_path: Path) -> None:
    """``vmm_nested_vtd.c`` on a scalable-mode unit (6.12): a NEST_PARENT |
    DIRTY_TRACKING parent, the guest's first stage in the program's memory as a VTD_S1
    HWPT, DMA through both stages, a remap with HWPT_INVALIDATE, the dirty bitmap."""
    m = Machine("x86-vtd", vtd_scalable=True)
    dev = m.add_pci_device(BDF, model="edu")
    fresh = leak_snapshot(m)
    assert _run_ok(m, build("vmm_nested_vtd", static=True), tmp_path) == VTD_OUT
    edu = dev.model
    assert edu is not None and (edu.dma_runs, edu.dma_faults) == (3, 0)
    assert m.faults == []
    check_invariants([m])
    assert not (diff := fresh.diff(leak_snapshot(m))), diff
    assert m.mem.pins.pins == 0


def test_nested_vtd_needs_a_scalable_unit(build: Build) -> None:
    """On QEMU's legacy-mode unit there is no nest parent: the program stops there."""
    prog = str(build("vmm_nested_vtd", static=True))
    assert main(["exec", "--", prog, "0"]) == 1
