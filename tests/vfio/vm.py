"""A VMM's view of one VFIO container, shared by the type1 tests."""

from __future__ import annotations

import struct

from iommulab import Machine, Process
from iommulab.vfio import Container, Type1Report
from iommulab.vfio import uapi as u

from ..helpers import assert_groups_released


class Vm:
    """A process with one container holding one vfio-pci device's group, TYPE1v2 or v1."""

    def __init__(self, *, v2: bool = True, memlock: int | None = None, cap: bool = False,
                 disable_hugepages: bool = False, platform: str = "x86-vtd",
                 ram: str = "2G", machine: Machine | None = None, iommu_unit: int = 0,
                 bdf: str | None = None) -> None:
        self.m = machine or Machine(platform, ram=ram)
        self.m.module_params["vfio_iommu_type1.disable_hugepages"] = int(disable_hugepages)
        self.dev = self.m.devices[bdf] if bdf is not None else \
            self.m.add_pci_device("0000:00:02.0", iommu_unit=iommu_unit)
        self.p: Process = self.m.spawn_process(memlock_limit=memlock, cap_ipc_lock=cap)
        self.c = self.p.open("/dev/vfio/vfio")
        self.g = self.p.open(f"/dev/vfio/{self.dev.iommu_group}")
        self.p.ioctl(self.g, u.VFIO_GROUP_SET_CONTAINER, bytearray(struct.pack("<i", self.c)))
        self.p.ioctl(self.c, u.VFIO_SET_IOMMU,
                     u.VFIO_TYPE1v2_IOMMU if v2 else u.VFIO_TYPE1_IOMMU)

    @classmethod
    def on(cls, machine: Machine, *, iommu_unit: int = 0, bdf: str | None = None) -> Vm:
        """A VMM on an existing machine, its device behind ``iommu_unit`` (or the device
        ``bdf`` already on it)."""
        return cls(machine=machine, iommu_unit=iommu_unit, bdf=bdf)

    def map(self, vaddr: int, iova: int, size: int, flags: int = 3) -> None:
        self.p.ioctl(self.c, u.VFIO_IOMMU_MAP_DMA,
                     bytearray(u.DMA_MAP.pack(32, flags, vaddr, iova, size)))

    def unmap(self, iova: int, size: int, flags: int = 0) -> int:
        buf = bytearray(u.DMA_UNMAP.pack(24, flags, iova, size))
        self.p.ioctl(self.c, u.VFIO_IOMMU_UNMAP_DMA, buf)
        return int(u.DMA_UNMAP.unpack(buf)[3])

    def histogram(self) -> dict[int, int]:
        assert self.dev.group is not None and self.dev.group.domain is not None
        return self.dev.group.domain.leaf_histogram()

    def report(self) -> Type1Report:
        container = self.p.files[self.c]
        assert isinstance(container, Container)
        return container.report()

    def close(self) -> None:
        self.p.exit()
        assert self.m.mem.pins.pins == 0
        assert self.p.mm.locked_vm == 0
        assert_groups_released(self.m)
