"""Shared helpers for the bulk VFIO benchmarks: a type1 container over guest RAM of a
given backing, timed phase by phase (wall and process CPU, median of fresh setups), and
a GiB sweep that shows a jump in cost per GiB."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from iommulab import Machine
from iommulab.pcidev import PciDevice
from iommulab.syscall.process import Process
from iommulab.vfio import uapi as u

IOVA = 1 << 32


@dataclass
class Container:
    """A process with a VFIO type1 container and ``gib`` GiB of guest RAM at ``va``."""

    m: Machine
    p: Process
    c: int
    dev: PciDevice
    va: int
    size: int
    extra: dict[str, int] = field(default_factory=dict)

    def map(self) -> None:
        self.p.ioctl(self.c, u.VFIO_IOMMU_MAP_DMA,
                     bytearray(u.DMA_MAP.pack(32, 3, self.va, IOVA, self.size)))

    def unmap(self) -> None:
        self.p.ioctl(self.c, u.VFIO_IOMMU_UNMAP_DMA,
                     bytearray(u.DMA_UNMAP.pack(24, 0, IOVA, self.size)))

    def dirty(self, flags: int) -> None:
        self.p.ioctl(self.c, u.VFIO_IOMMU_DIRTY_PAGES,
                     bytearray(u.DIRTY_BITMAP.pack(8, flags)))

    def get_bitmap(self) -> None:
        arg = u.DIRTY_BITMAP.pack(48, u.VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP) + \
            u.DIRTY_BITMAP_GET.pack(IOVA, self.size, 4096, u.DIRTY_BITMAP_BYTES(
                self.size >> 12), self.extra["bitmap"])
        self.p.ioctl(self.c, u.VFIO_IOMMU_DIRTY_PAGES,
                     bytearray(arg))

    def leaf_histogram(self) -> dict[int, int]:
        group = self.dev.group
        domain = group.domain if group is not None else None
        return domain.leaf_histogram() if domain is not None else {}

    def close(self) -> None:
        if self.extra.setdefault("closed", 0):
            return
        self.extra["closed"] = 1
        self.p.exit()
        assert self.m.mem.pins.pins == 0


def container(backing: str, gib: int, *, populate: bool = False,
              fragment: bool = False) -> Container:
    """A fresh machine with ``gib + 4`` GiB of RAM, a device in a type1v2 container, and
    ``gib`` GiB of ``backing`` mapped (``populate``: MAP_POPULATE, already touched)."""
    m = Machine("x86-vtd", ram=f"{gib + 4}G")
    if fragment:  # a used 4K frame in every free 2M region: 4K folios, short runs
        m.mem.fragment(order=9)
    dev = m.add_pci_device("0000:00:02.0")
    p = m.spawn_process(cap_ipc_lock=True)
    c, g = p.open("/dev/vfio/vfio"), p.open(f"/dev/vfio/{dev.iommu_group}")
    p.ioctl(g, u.VFIO_GROUP_SET_CONTAINER, bytearray(c.to_bytes(4, "little")))
    p.ioctl(c, u.VFIO_SET_IOMMU, u.VFIO_TYPE1v2_IOMMU)
    size = gib << 30
    va = p.mmap(size, backing, populate=populate)
    return Container(m, p, c, dev, va, size)


def timed(phases: Callable[[], Container], step: Callable[[Container], object],
          repeat: int, before: Callable[[Container], object] | None = None
          ) -> tuple[float, float]:
    """Median wall and process CPU seconds of ``step`` over ``repeat`` fresh containers
    (``phases`` builds one, ``before`` runs untimed first); each is closed after."""
    walls, cpus = [], []
    for _ in range(repeat):
        ct = phases()
        if before is not None:
            before(ct)
        wall, cpu = time.perf_counter(), time.process_time()
        step(ct)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        if ct.m.mem.pins.pins:
            ct.unmap()
        ct.close()
    return statistics.median(walls), statistics.median(cpus)


def sizes_arg(text: str) -> list[int]:
    """``--sizes 16,32,64`` as a sorted list of GiB."""
    return sorted({int(s) for s in text.split(",") if s.strip()})
