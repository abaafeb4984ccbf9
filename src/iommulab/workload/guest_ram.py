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

import time
from dataclasses import dataclass

from ..machine import Machine
from ..sizes import SZ_1G, SZ_2G
from ..vfio import Container, Type1Report
from ..vfio import uapi as u

__all__ = ["BACKINGS", "GUEST_RAM", "GuestRamResult", "guest_sections", "run_guest_ram"]

_VGA_START, _VGA_END = 0xA0000, 0xC0000


def guest_sections(guest_ram: int) -> tuple[tuple[int, int, int], ...]:
    """(guest physical address, offset in the host buffer, length) of each RAM section of
    a q35 guest with ``guest_ram`` bytes: the VGA hole splits low RAM, which ends at 2G;
    the rest is relocated to 4G (QEMU's pc_memory_init with max_ram_below_4g = 2G)."""
    if guest_ram <= _VGA_END or guest_ram % 4096:
        raise ValueError(f"guest RAM must be a multiple of 4K above 768K, not {guest_ram:#x}")
    low = min(guest_ram, SZ_2G)
    sections = [(0, 0, _VGA_START), (_VGA_END, _VGA_END, low - _VGA_END)]
    if guest_ram > SZ_2G:
        sections.append((2 * SZ_2G, SZ_2G, guest_ram - SZ_2G))
    return tuple(sections)


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
    sections = guest_sections(guest_ram)
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
