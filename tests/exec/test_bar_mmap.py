"""A device BAR mapped by a real program under ``iommulab exec`` (:mod:`iommulab.exec.
barmap`): a plain device's BAR 0 is a real shared mapping of the model's BAR bytes, edu's
(registers) is refused, the decision is per device and the Python ``Machine`` keeps
mapping every BAR."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from iommulab.exec import run_exec
from iommulab.exec.handler import ModelHandler
from iommulab.machine import Machine
from iommulab.testing import check_invariants, leak_snapshot
from iommulab.vfio import uapi as u
from iommulab.vfio.cdev import cdev_devices

Build = Callable[..., Path]
PLAIN, EDU = "0000:00:02.0", "0000:00:03.0"
SZ_1M = 1 << 20


def _machine(platform: str = "x86-vtd") -> Machine:
    m = Machine(platform)
    m.add_pci_device(PLAIN)
    m.add_pci_device(EDU, model="edu")
    return m


@pytest.mark.parametrize(("platform", "static"),
                         [("x86-vtd", True), ("x86-vtd", False), ("arm64-smmuv3", True)])
def test_program_maps_a_plain_bar(build: Build, tmp_path: Path, platform: str,
                                  static: bool) -> None:
    m = _machine(platform)
    plain, edu = m.devices[PLAIN], m.devices[EDU]
    assert plain.iommu_group is not None and edu.iommu_group is not None
    m.mem.write(plain.bar0 + 17, b"\x11")  # the model's bytes before the program runs
    fresh = leak_snapshot(m)
    own_fds = set(os.listdir("/proc/self/fd"))
    cdev = cdev_devices(m).index(plain)
    out = tmp_path / "stdout"
    with out.open("wb") as f:
        result = run_exec(m, [str(build("bar_mmap", static=static)), str(plain.iommu_group),
                              PLAIN, str(edu.iommu_group), EDU, str(cdev)],
                          timeout=60, stdout=f)
    assert result.handler_errors == []
    assert result.status == 0, out.read_text()
    assert out.read_text().splitlines() == [
        "bar0: 1024 KiB at 0, flags 0x7",
        "refused: MAP_PRIVATE, past the end, unaligned, other regions",
        "mapped: stores and pread/pwrite agree",
        "edu: flags 0x3, mmap refused",
        "peer to peer: edu copied 64 bytes within the BAR",
        "fork: the child's store is the parent's",
        "after close and munmap: the device keeps the bytes",
        "cdev: stores and pread/pwrite agree",
        "iommufd: IOAS_MAP of the BAR mapping is EFAULT"]
    # the program's last stores through the cdev's mapping are the device's BAR bytes
    data = m.mem.read(plain.bar0, SZ_1M)
    assert data[:64] == bytes((i * 7 + 2) & 0xFF for i in range(64))
    assert data[8192 + 3:8192 + 3 + 4] == bytes(0xA5 ^ i ^ 2 for i in range(4))
    assert data[-1] == (SZ_1M - 1) * 7 + 2 & 0xFF
    assert m.mem.external is not None and len(m.mem.external) == 0
    assert edu.model is not None and edu.model.dma_runs == 2 and edu.model.dma_faults == 0
    assert edu.bar0_mmap and plain.bar0_mmap and m.vfio_bar_mmap  # as before the run
    check_invariants([m])
    assert not (diff := fresh.diff(leak_snapshot(m))), diff
    assert set(os.listdir("/proc/self/fd")) == own_fds


def _region_flags(m: Machine, bdf: str) -> tuple[int, int]:
    """GET_REGION_INFO of BAR 0 through a Python process's group device fd, and the
    result of mapping it (the BAR's physical address, or the errno)."""
    from iommulab.errors import KernelError
    p = m.spawn_process()
    group = m.devices[bdf].iommu_group
    c = p.open("/dev/vfio/vfio")
    g = p.open(f"/dev/vfio/{group}")
    p.ioctl(g, u.VFIO_GROUP_SET_CONTAINER, c.to_bytes(4, "little"))
    p.ioctl(c, u.VFIO_SET_IOMMU, u.VFIO_TYPE1v2_IOMMU)
    d = p.ioctl(g, u.VFIO_GROUP_GET_DEVICE_FD, bytearray(bdf.encode() + b"\0"))
    buf = bytearray(u.REGION_INFO.pack(u.REGION_INFO.size, 0, 0, 0, 0, 0))
    p.ioctl(d, u.VFIO_DEVICE_GET_REGION_INFO, buf)
    flags = u.REGION_INFO.unpack(buf)[1]
    try:
        mapped = p.mmap(4096, fd=d, offset=0)
    except KernelError as e:
        mapped = -(e.errno or 0)
    p.exit()
    return flags, mapped


def test_the_decision_is_per_device() -> None:
    """Under exec only the BAR of registers loses MMAP; the Python machine maps both
    (its loads and stores go through the model), before and after a handler's life."""
    mmap_flag = u.VFIO_REGION_INFO_FLAG_MMAP
    m = _machine()
    plain, edu = m.devices[PLAIN], m.devices[EDU]
    assert plain.bar0_mmap and edu.bar0_mmap
    for bdf in (PLAIN, EDU):
        flags, mapped = _region_flags(m, bdf)
        assert flags & mmap_flag and mapped > 0
    handler = ModelHandler(m)
    assert plain.bar0_mmap and not edu.bar0_mmap and m.vfio_bar_mmap
    assert _region_flags(m, PLAIN)[0] & mmap_flag
    flags, mapped = _region_flags(m, EDU)
    assert not flags & mmap_flag and mapped == -22  # EINVAL
    handler.close()
    assert plain.bar0_mmap and edu.bar0_mmap
    for bdf in (PLAIN, EDU):
        flags, mapped = _region_flags(m, bdf)
        assert flags & mmap_flag and mapped > 0
    # the machine-wide switch still turns every BAR off
    m.vfio_bar_mmap = False
    for bdf in (PLAIN, EDU):
        flags, mapped = _region_flags(m, bdf)
        assert not flags & mmap_flag and mapped == -22
    check_invariants([m])
