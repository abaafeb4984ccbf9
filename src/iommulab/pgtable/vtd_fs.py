"""Intel VT-d first-stage paging entries: x86-64 IA-32e paging as the remapping unit reads it.

Sources: VT-d spec (rev. 4.1 / 5.0) 9.9 "First-Stage Paging Entries" (Table 37-41:
PML5E, PML4E, PDPE, PDE, PTE), 3.6 "First-Stage Translation" (canonical input
addresses, 4-level with FSPM=0 / 5-level with FSPM=1, 2M and 1G pages, the A and D
flags the unit sets with locked read-modify-writes), and Linux's intel/iommu.h
(``DMA_FL_PTE_PRESENT``, ``DMA_FL_PTE_US``, ``DMA_FL_PTE_ACCESS``, ``DMA_FL_PTE_DIRTY``).

In nested translation the guest writes these tables in its own memory (guest
physical addresses); the unit walks them through the second stage
(:mod:`iommulab.drivers.vtd_sm`). :class:`FirstStageBuilder` is the lab's helper for
tests and users to build such a table with any ``write_u64`` (a guest's memory).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .bits import Field, Layout

__all__ = [
    "FL_A",
    "FL_D",
    "FL_P",
    "FL_PS",
    "FL_RW",
    "FL_US",
    "FL_XD",
    "VTD_FS_ENTRY",
    "FirstStageBuilder",
    "fs_canonical",
]

FL_P = 1 << 0  # DMA_FL_PTE_PRESENT
FL_RW = 1 << 1
FL_US = 1 << 2  # DMA_FL_PTE_US
FL_A = 1 << 5  # DMA_FL_PTE_ACCESS
FL_D = 1 << 6  # DMA_FL_PTE_DIRTY (leaves only)
FL_PS = 1 << 7  # page size (PDPE: 1G, PDE: 2M)
FL_XD = 1 << 63  # execute disable

#: one first-stage entry (spec Tables 37-41; PAT/G/PKEY/EA not modelled as behaviour)
VTD_FS_ENTRY = Layout("VT-d first-stage entry", (
    Field("P", 0, 0, "present"),
    Field("RW", 1, 1, "read/write: 0 makes the region read-only"),
    Field("US", 2, 2, "user/supervisor: 0 refuses user requests (all requests without PASID)"),
    Field("PWT", 3, 3, "page-level write-through"),
    Field("PCD", 4, 4, "page-level cache disable"),
    Field("A", 5, 5, "accessed, set by the unit"),
    Field("D", 6, 6, "dirty (leaves), set by the unit on a write"),
    Field("PS", 7, 7, "page size: a 1G (PDPE) or 2M (PDE) leaf"),
    Field("G", 8, 8, "global"),
    Field("EA", 10, 10, "extended accessed (set with EAFE)"),
    Field("ADDR", 51, 12, "address of the next table or of the page", address=True),
    Field("XD", 63, 63, "execute disable"),
))
ADDR_MASK = VTD_FS_ENTRY["ADDR"].mask


def fs_canonical(iova: int, levels: int) -> bool:
    """Spec 3.6.1: bits 63:N equal bit N-1, N = 48 (4 levels) or 57 (5 levels)."""
    top = iova >> (12 + 9 * levels - 1)
    return top == 0 or top == (1 << (64 - (12 + 9 * levels - 1))) - 1


@dataclass
class FirstStageBuilder:
    """Lab: a first-stage table a guest builds in its memory. ``alloc()`` returns the
    guest-physical address of a zeroed 4K page, ``write_u64(gpa, value)`` stores one
    entry there (for example through the VMM's mapping of guest RAM). Table entries get
    P|RW|US|A; leaves P, RW for writable maps, US unless ``user=False``, and the bits in
    ``extra``: Linux's first-stage code presets A, and D on writable leaves
    (``FL_A | FL_D``); without them the unit writes A/D on first use. O(levels) per
    :meth:`map`."""

    alloc: Callable[[], int]
    write_u64: Callable[[int, int], None]
    levels: int = 4
    root: int = 0
    _tables: dict[tuple[int, int], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.levels not in (4, 5):
            raise ValueError(f"first stage: {self.levels} levels (4 or 5)")
        if not self.root:
            self.root = self.alloc()

    def map(self, iova: int, gpa: int, size: int = 4096, *, write: bool = True,
            user: bool = True, extra: int = 0) -> None:
        """One leaf of ``size`` (4K, 2M or 1G) mapping ``iova`` to ``gpa``."""
        leaf_level = {4096: 1, 1 << 21: 2, 1 << 30: 3}[size]
        if (iova | gpa) & (size - 1):
            raise ValueError(f"first stage: {iova:#x} -> {gpa:#x} not aligned to {size:#x}")
        table = self.root
        for level in range(self.levels, leaf_level, -1):
            idx = (iova >> (12 + 9 * (level - 1))) & 511
            key = (table, idx)
            nxt = self._tables.get(key)
            if nxt is None:
                nxt = self.alloc()
                self._tables[key] = nxt
                self.write_u64(table + idx * 8, nxt | FL_P | FL_RW | FL_US | FL_A)
            table = nxt
        idx = (iova >> (12 + 9 * (leaf_level - 1))) & 511
        value = gpa | FL_P | (FL_RW if write else 0) | (FL_US if user else 0) | extra
        self.write_u64(table + idx * 8, value | (FL_PS if leaf_level > 1 else 0))

    def unmap(self, iova: int, size: int = 4096) -> None:
        """Clear the leaf of ``size`` at ``iova`` (the guest then owes an invalidation)."""
        leaf_level = {4096: 1, 1 << 21: 2, 1 << 30: 3}[size]
        table = self.root
        for level in range(self.levels, leaf_level, -1):
            table = self._tables[(table, (iova >> (12 + 9 * (level - 1))) & 511)]
        self.write_u64(table + ((iova >> (12 + 9 * (leaf_level - 1))) & 511) * 8, 0)
