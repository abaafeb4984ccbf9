"""``iommu_pgsize``: which page size, and how many, the core maps next (iommu.c)."""

from __future__ import annotations

__all__ = ["iommu_pgsize"]

_U64 = 1 << 64


def iommu_pgsize(pgsize_bitmap: int, iova: int, paddr: int, size: int) -> tuple[int, int]:
    """Return ``(pgsize, count)`` exactly as the kernel's ``iommu_pgsize()``.

    The largest supported size that fits ``size`` and the alignment of
    ``iova | paddr``; the count stops at the next larger size's boundary when
    that size could be used from there (iova and paddr equally offset in it
    and enough length left). The kernel BUG()s when no size fits; this raises
    ValueError naming the arguments. O(1).
    """
    if size == pgsize_bitmap & -pgsize_bitmap and not (iova | paddr) & (size - 1):
        return size, 1  # one smallest page: what the general path computes, sooner
    addr_merge = paddr | iova
    pgsizes = pgsize_bitmap & ((1 << size.bit_length()) - 1)  # GENMASK(__fls(size), 0)
    if addr_merge:
        pgsizes &= ((addr_merge & -addr_merge) << 1) - 1  # GENMASK(__ffs(addr_merge), 0)
    if not pgsizes:
        raise ValueError(f"iommu_pgsize: no size in {pgsize_bitmap:#x} fits iova {iova:#x} "
                         f"paddr {paddr:#x} size {size:#x} (the kernel would BUG)")
    idx = pgsizes.bit_length() - 1
    pgsize = 1 << idx
    bigger = pgsize_bitmap & ~((pgsize << 1) - 1)
    if bigger:
        pgsize_next = bigger & -bigger
        if not (iova ^ paddr) & (pgsize_next - 1):
            offset = pgsize_next - (addr_merge & (pgsize_next - 1))
            offset_end = offset + pgsize_next
            if offset_end < _U64 and offset_end <= size:  # !check_add_overflow(...)
                size = offset
    return pgsize, size >> idx
