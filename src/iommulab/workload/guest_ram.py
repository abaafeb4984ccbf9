"""Guest RAM through VFIO type1: which IOPTE sizes one layout gets under each backing.

A VMM (QEMU's vfio memory listener) maps a q35 guest's RAM for an assigned
device with VFIO_IOMMU_MAP_DMA, one call per RAM section: below 4G the
legacy VGA window [0xa0000, 0xc0000) splits low RAM, and RAM above 2G is
relocated to 4G. All sections come from one host buffer. The kernel pins
the buffer and maps physically contiguous runs, so what the IOMMU gets
depends on what backs the buffer: THP folios, hugetlb pages, or 4K pages
of a fragmented host. Userspace cannot see it; the lab reads it from the
domain's page table.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

from ..machine import Machine
from ..sizes import SZ_1G, SZ_2G, SZ_4G
from ..vfio import Container, Type1Report
from ..vfio import uapi as u

__all__ = ["BACKINGS", "GUEST_RAM", "VIRT_RAM_BASE", "GuestRamResult", "check_sections",
           "guest_sections", "iova_ranges", "max_guest_ram", "run_guest_ram"]

_VGA_START, _VGA_END = 0xA0000, 0xC0000


#: QEMU arm virt's RAM base (hw/arm/virt.c, VIRT_MEM): flash, the GIC, its ITS, the UART and
#: PCIe windows sit below it, and so does the SMMUv3 driver's SW_MSI window [0x8000000, +1M)
VIRT_RAM_BASE = 0x4000_0000


def guest_sections(guest_ram: int, platform: str = "x86-vtd"
                   ) -> tuple[tuple[int, int, int], ...]:
    """(guest physical address, offset in the host buffer, length) of each RAM section of
    a guest with ``guest_ram`` bytes, laid out as the VMM lays it out on ``platform``.

    x86-vtd, a q35 guest: the VGA hole splits low RAM, which ends at 2G; the rest is
    relocated to 4G (QEMU's pc_memory_init with max_ram_below_4g = 2G). arm64-smmuv3, a
    virt guest: one section from 1G (QEMU's machvirt_init), above the MSI window."""
    if platform == "arm64-smmuv3":
        if guest_ram <= 0 or guest_ram % 4096:
            raise ValueError(f"guest RAM must be a positive multiple of 4K, not {guest_ram:#x}")
        return ((VIRT_RAM_BASE, 0, guest_ram),)
    if guest_ram <= _VGA_END or guest_ram % 4096:
        raise ValueError(f"guest RAM must be a multiple of 4K above 768K, not {guest_ram:#x}")
    low = min(guest_ram, SZ_2G)
    sections = [(0, 0, _VGA_START), (_VGA_END, _VGA_END, low - _VGA_END)]
    if guest_ram > SZ_2G:
        sections.append((2 * SZ_2G, SZ_2G, guest_ram - SZ_2G))
    return tuple(sections)


@functools.cache
def iova_ranges(platform: str) -> tuple[tuple[int, int], ...]:
    """The IOVA ranges (first, last) VFIO type1 offers a device's container on ``platform``:
    what a VMM reads from VFIO_IOMMU_GET_INFO's IOVA range capability before it maps
    (the domain's aperture less the group's reserved regions)."""
    m = Machine(platform, ram="64M")
    dev = m.add_pci_device("0000:00:02.0")
    p = m.spawn_process(cap_ipc_lock=True)
    c, g = p.open("/dev/vfio/vfio"), p.open(f"/dev/vfio/{dev.iommu_group}")
    p.ioctl(g, u.VFIO_GROUP_SET_CONTAINER, bytearray(c.to_bytes(4, "little")))
    p.ioctl(c, u.VFIO_SET_IOMMU, u.VFIO_TYPE1v2_IOMMU)
    container = p.files[c]
    assert isinstance(container, Container) and container.iommu is not None
    ranges = tuple((lo, hi) for lo, hi in container.iommu.iova_list)
    p.exit()
    return ranges


def max_guest_ram(platform: str) -> int:
    """The largest guest whose top section still fits in one of :func:`iova_ranges`."""
    gpa, offset, _ = guest_sections(SZ_4G + SZ_2G, platform)[-1]
    return max((hi + 1 - gpa + offset for lo, hi in iova_ranges(platform) if lo <= gpa <= hi),
               default=0)


def check_sections(sections: tuple[tuple[int, int, int], ...], platform: str) -> None:
    """Refuse, as QEMU's vfio listener does, a section outside the valid IOVA ranges."""
    for gpa, _, length in sections:
        if not any(lo <= gpa and gpa + length - 1 <= hi for lo, hi in iova_ranges(platform)):
            raise ValueError(f"RAM section [{gpa:#x}, {gpa + length - 1:#x}] is outside the "
                             f"IOVA ranges of {platform}")


GUEST_RAM = 3 * SZ_1G

#: demo name -> (mmap backing, fragment the host first)
BACKINGS = {
    "thp": ("thp", False),
    "hugetlb-2M": ("hugetlb-2M", False),
    "hugetlb-1G": ("hugetlb-1G", False),
    "fragmented": ("thp", True),
}


@dataclass(frozen=True)
class GuestRamResult:
    backing: str
    report: Type1Report  # after all sections are mapped
    unmapped: int  # bytes UNMAP_DMA ALL returned
    pins_left: int  # pins held after the process exited (0 unless a leak)
    map_seconds: float  # host time of the MAP_DMA calls (not deterministic)
    state: dict[str, object] | None = None  # the domain's saved state, when asked for


def run_guest_ram(backing: str, *, platform: str = "x86-vtd", seed: int = 0,
                  guest_ram: int = GUEST_RAM, save_state: bool = False) -> GuestRamResult:
    """Map :func:`guest_sections` of a buffer of ``backing`` (a key of :data:`BACKINGS`)."""
    if backing not in BACKINGS:
        raise ValueError(f"backing {backing!r}: not one of {', '.join(BACKINGS)}")
    mmap_backing, fragment = BACKINGS[backing]
    sections = guest_sections(guest_ram, platform)
    check_sections(sections, platform)
    m = Machine(platform, ram=guest_ram + 2 * SZ_1G, seed=seed)
    if fragment:  # a 4K frame held in every free 2M region: no THP, no 2M runs
        m.mem.fragment(order=9, seed=seed)
    dev = m.add_pci_device("0000:00:02.0")
    p = m.spawn_process(cap_ipc_lock=True)
    c, g = p.open("/dev/vfio/vfio"), p.open(f"/dev/vfio/{dev.iommu_group}")
    p.ioctl(g, u.VFIO_GROUP_SET_CONTAINER, bytearray(c.to_bytes(4, "little")))
    p.ioctl(c, u.VFIO_SET_IOMMU, u.VFIO_TYPE1v2_IOMMU)
    va = p.mmap(-(-guest_ram // SZ_1G) * SZ_1G, mmap_backing)
    start = time.perf_counter()
    for gpa, offset, length in sections:
        p.ioctl(c, u.VFIO_IOMMU_MAP_DMA,
                bytearray(u.DMA_MAP.pack(u.DMA_MAP.size, 3, va + offset, gpa, length)))
    seconds = time.perf_counter() - start
    container = p.files[c]
    assert isinstance(container, Container)
    report = container.report()
    state = None
    if save_state:
        from ..inspect import save_domain
        assert container.iommu is not None
        group = m.core.groups[dev.iommu_group]
        state = save_domain(container.iommu.domains[0].domain, name=backing,
                            resv=group.resv_regions())
    unmap = bytearray(u.DMA_UNMAP.pack(u.DMA_UNMAP.size, u.VFIO_DMA_UNMAP_FLAG_ALL, 0, 0))
    p.ioctl(c, u.VFIO_IOMMU_UNMAP_DMA, unmap)
    p.exit()
    m.mem.release_fragmentation()
    return GuestRamResult(backing, report, u.DMA_UNMAP.unpack(unmap)[3], m.mem.pins.pins,
                          seconds, state)
