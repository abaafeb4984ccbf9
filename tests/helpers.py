"""Helpers the test packages share: the errno check, and a process that drives VFIO device
cdevs through /dev/iommu with the real struct bytes (tests of iommufd and of vfio use it).
"""

from __future__ import annotations

import errno
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from iommulab import Machine, Process
from iommulab.devices import DmaDevice
from iommulab.iommufd import uapi as iu
from iommulab.vfio import uapi as vu

__all__ = ["Host", "assert_groups_released", "expect_errno", "make_host", "peak_host_bytes"]


def expect_errno(code: int, fn: object, *args: object, **kw: object) -> None:
    """``fn(*args, **kw)`` fails with OSError ``code``."""
    with pytest.raises(OSError) as info:
        fn(*args, **kw)  # type: ignore[operator]
    assert info.value.errno == code, (errno.errorcode[code], info.value)


def assert_groups_released(m: Machine) -> None:
    """What a fresh machine has: no user owns a group's DMA and every group is on its
    default domain (a kernel driver's device still counts as an owner of it)."""
    m.core._check()
    for group in m.core.groups.values():
        assert group.owner is None, f"group {group.id} is still owned by {group.owner!r}"
        assert group.owner_cnt == sum(d.driver != "vfio-pci" for d in m.group_devices(group.id))
        assert group.domain is group.default_domain, f"group {group.id} on {group.domain!r}"


@dataclass
class Host:
    """A process with /dev/iommu open (fd ``iommufd``) on a machine with vfio-pci
    devices."""

    m: Machine
    p: Process
    iommufd: int

    def ioctl(self, fd: int, request: int, buf: bytes) -> bytearray:
        """``ioctl(fd, request, buf)``: the argument as the kernel left it."""
        arg = bytearray(buf)
        self.p.ioctl(fd, request, arg)
        return arg

    # -- VFIO device cdevs -------------------------------------------------------------------
    def open_cdev(self, n: int = 0) -> int:
        return self.p.open(f"/dev/vfio/devices/vfio{n}")

    def bind_cdev(self, cdev: int) -> int:
        """VFIO_DEVICE_BIND_IOMMUFD: the device id."""
        out = self.ioctl(cdev, vu.VFIO_DEVICE_BIND_IOMMUFD,
                         vu.BIND_IOMMUFD.pack(16, 0, self.iommufd, 0))
        return int(vu.BIND_IOMMUFD.unpack(out)[3])

    def bind(self, n: int) -> tuple[int, int]:
        """Device ``n``'s cdev, opened and bound: (fd, device id)."""
        cdev = self.open_cdev(n)
        return cdev, self.bind_cdev(cdev)

    def attach(self, cdev: int, pt_id: int) -> int:
        """VFIO_DEVICE_ATTACH_IOMMUFD_PT: the HWPT id."""
        out = self.ioctl(cdev, vu.VFIO_DEVICE_ATTACH_IOMMUFD_PT,
                         vu.ATTACH_IOMMUFD_PT.pack(16, 0, pt_id, 0))
        return int(vu.ATTACH_IOMMUFD_PT.unpack(out)[2])

    # -- iommufd -----------------------------------------------------------------------------
    def ioas(self) -> int:
        out = self.ioctl(self.iommufd, iu.IOMMU_IOAS_ALLOC, iu.IOAS_ALLOC.pack(12, 0, 0))
        return int(iu.IOAS_ALLOC.unpack(out)[2])

    def map(self, ioas: int, va: int, length: int) -> int:
        """IOMMU_IOAS_MAP, readable and writeable, at an IOVA the kernel picks: the IOVA."""
        out = self.ioctl(self.iommufd, iu.IOMMU_IOAS_MAP,
                         iu.IOAS_MAP.pack(40, 6, ioas, 0, va, length, 0))
        return int(iu.IOAS_MAP.unpack(out)[6])

    def hwpt(self, devid: int, ioas: int, flags: int = 0) -> int:
        out = self.ioctl(self.iommufd, iu.IOMMU_HWPT_ALLOC,
                         iu.HWPT_ALLOC.pack(48, flags, devid, ioas, 0, 0, 0, 0, 0, 0, 0))
        return int(iu.HWPT_ALLOC.unpack(out)[4])

    def get_dirty_bitmap(self, hwpt: int, iova: int, length: int, data: int,
                         page: int = 4096, flags: int = 0) -> None:
        """IOMMU_HWPT_GET_DIRTY_BITMAP into the user bitmap at ``data``."""
        self.ioctl(self.iommufd, iu.IOMMU_HWPT_GET_DIRTY_BITMAP,
                   iu.HWPT_GET_DIRTY_BITMAP.pack(48, hwpt, flags, 0, iova, length, page, data))

    def dirty_pages(self, hwpt: int, iova: int, length: int, page: int = 4096) -> list[int]:
        """The dirty pages of ``[iova, +length)`` (indexes of ``page``), read into a fresh
        bitmap."""
        nbytes = -(-(length // page) // 64) * 8
        bm = self.p.mmap(max(nbytes, 4096))
        self.get_dirty_bitmap(hwpt, iova, length, bm, page)
        bits = np.unpackbits(np.frombuffer(self.p.read(bm, nbytes), dtype=np.uint8),
                             bitorder="little")
        self.p.munmap(bm, max(nbytes, 4096))
        return np.flatnonzero(bits).tolist()


def make_host(platform: str, ndev: int, kernel: str = "6.12") -> tuple[Host, list[DmaDevice]]:
    """A 1G ``platform`` machine with ``ndev`` vfio-pci devices (00:02.0 on) and a process
    with a 64M memlock limit that has /dev/iommu open."""
    m = Machine(platform, ram="1G", kernel=kernel)
    devs: list[DmaDevice] = [m.add_pci_device(f"0000:00:0{2 + i}.0") for i in range(ndev)]
    p = m.spawn_process(memlock_limit="64M")
    return Host(m, p, p.open("/dev/iommu")), devs


def peak_host_bytes(fn: Callable[[], object]) -> int:
    """Host bytes ``fn`` allocated at its peak (tracemalloc): what a caller-chosen length
    must not size."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
