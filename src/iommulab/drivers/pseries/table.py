"""``struct iommu_table`` and its allocator (arch/powerpc/kernel/iommu.c, lib/iommu-helper.c).

The table covers one DMA window: ``it_size`` entries of ``1 << it_page_shift`` bytes from
entry ``it_offset`` (the window's bus address >> page shift), an allocation bitmap
``it_map``, up to four small-allocation pools over the bottom three quarters and a large
pool over the top quarter, and the reserved MMIO32 entries. Entries are written through
the table's ops (on pSeries LPAR, the TCE hcalls of :class:`~.hv.SpaprPhb`).

The bitmap is a numpy bool array; searches scan it in growing slices from the hint, so
one allocation costs in proportion to the entries it has to look at, as the kernel's
``find_next_zero_bit`` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from ...errors import OutOfMemory

__all__ = ["DMA_MAPPING_ERROR", "IOMMU_NR_POOLS", "IommuPool", "IommuTable", "TableOps",
           "hash_32", "iommu_area_alloc", "iommu_init_table"]

DMA_MAPPING_ERROR = (1 << 64) - 1
IOMMU_POOL_HASHBITS = 2
IOMMU_NR_POOLS = 1 << IOMMU_POOL_HASHBITS
GOLDEN_RATIO_32 = 0x61C88647
SZ_1G = 1 << 30


def hash_32(val: int, bits: int) -> int:
    """``hash_32``: the per-CPU ``iommu_pool_hash`` is ``hash_32(cpu, 2)``."""
    return ((val * GOLDEN_RATIO_32) & 0xFFFF_FFFF) >> (32 - bits)


class TableOps(Protocol):
    """``struct iommu_table_ops``: ``set`` returns 0 or an hcall's failure."""

    def set(self, tbl: IommuTable, index: int, npages: int, pa: int, write: bool) -> int: ...
    def clear(self, tbl: IommuTable, index: int, npages: int) -> None: ...
    def get(self, tbl: IommuTable, index: int) -> int: ...


@dataclass
class IommuPool:
    """``struct iommu_pool``: [start, end) in table entries and the next-fit hint."""

    start: int
    end: int
    hint: int


def _find_next_zero(bits: npt.NDArray[np.bool_], start: int, size: int) -> int:
    """``find_next_zero_bit(map, size, start)``."""
    pos, step = start, 256
    while pos < size:
        hi = min(size, pos + step)
        free = np.flatnonzero(~bits[pos:hi])
        if len(free):
            return pos + int(free[0])
        pos, step = hi, step * 4
    return size


def _find_next_bit(bits: npt.NDArray[np.bool_], start: int, end: int) -> int:
    """``find_next_bit(map, end, start)``."""
    if start >= end:
        return end
    hit = np.flatnonzero(bits[start:end])
    return start + int(hit[0]) if len(hit) else end


def _find_next_zero_area(bits: npt.NDArray[np.bool_], size: int, start: int, nr: int,
                         align_mask: int) -> int:
    """``bitmap_find_next_zero_area``: the first aligned run of ``nr`` clear bits at or
    after ``start`` ending by ``size``; something above ``size`` if there is none."""
    while True:
        index = _find_next_zero(bits, start, size)
        index = (index + align_mask) & ~align_mask
        end = index + nr
        if end > size:
            return end
        used = _find_next_bit(bits, index, end)
        if used == end:
            return index
        start = used + 1


def iommu_area_alloc(bits: npt.NDArray[np.bool_], size: int, start: int, nr: int,
                     shift: int, boundary_size: int, align_mask: int) -> int:
    """``iommu_area_alloc``: a free run of ``nr`` entries in ``[start, size - 1)`` (the
    last entry of the limit is never handed out) that does not cross a multiple of
    ``boundary_size`` counted from ``shift``; -1 if none. The run is marked used."""
    size -= 1
    while True:
        index = _find_next_zero_area(bits, size, start, nr, align_mask)
        if index >= size:
            return -1
        if ((shift + index) & (boundary_size - 1)) + nr > boundary_size:
            start = ((shift + index + boundary_size - 1) & ~(boundary_size - 1)) - shift
            continue
        bits[index:index + nr] = True
        return index


@dataclass
class IommuTable:
    """``struct iommu_table`` (the fields the allocator and pSeries use)."""

    it_index: int  # LIOBN
    it_offset: int
    it_size: int
    it_page_shift: int
    ops: TableOps
    it_busno: int = 0
    it_blocksize: int = 16
    it_map: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))
    nr_pools: int = 1
    poolsize: int = 0
    pools: list[IommuPool] = field(default_factory=list)
    large_pool: IommuPool = field(default_factory=lambda: IommuPool(0, 0, 0))
    it_reserved_start: int = 0
    it_reserved_end: int = 0
    refs: int = 1  # it_kref

    def __repr__(self) -> str:
        return (f"<IommuTable liobn {self.it_index:#x} offset {self.it_offset:#x} size "
                f"{self.it_size:#x} x {1 << self.it_page_shift:#x}>")

    @property
    def page_size(self) -> int:
        return 1 << self.it_page_shift

    @property
    def bus_start(self) -> int:
        return self.it_offset << self.it_page_shift

    # -- allocation ---------------------------------------------------------------------------
    def range_alloc(self, npages: int, mask: int, align_order: int, *, cpu: int = 0,
                    boundary_pages: int = 1 << 20, handle: list[int] | None = None) -> int:
        """``iommu_range_alloc``: ``npages`` entries below ``mask`` (in pages), aligned to
        ``1 << align_order``, not crossing ``boundary_pages``; the table-relative index, or
        DMA_MAPPING_ERROR. Small requests start in the pool of ``cpu``; more than 15
        pages come from the large pool; on failure the pool is rescanned, then the others,
        then the large pool. ``handle`` (a one-item list) continues a scatterlist."""
        if npages == 0:
            return DMA_MAPPING_ERROR
        align_mask = (1 << align_order) - 1
        largealloc = npages > 15
        pool_nr = hash_32(cpu, IOMMU_POOL_HASHBITS) & (self.nr_pools - 1)
        pool = self.large_pool if largealloc else self.pools[pool_nr]
        pass_ = 0
        while True:
            if pass_ == 0 and handle and handle[0] and pool.start <= handle[0] < pool.end:
                start = handle[0]
            else:
                start = pool.hint
            limit = pool.end
            if start >= limit:
                start = pool.start
            if limit + self.it_offset > mask:
                limit = mask - self.it_offset + 1
                if (start & mask) >= limit or pass_ > 0:
                    pool = self.pools[0]
                    start = pool.start
                else:
                    start &= mask
            n = iommu_area_alloc(self.it_map, limit, start, npages, self.it_offset,
                                 boundary_pages, align_mask) if limit > 0 else -1
            if n != -1:
                break
            if pass_ == 0:
                pool.hint = pool.start
            elif pass_ <= self.nr_pools:
                pool_nr = (pool_nr + 1) & (self.nr_pools - 1)
                pool = self.pools[pool_nr]
                pool.hint = pool.start
            elif pass_ == self.nr_pools + 1:
                pool = self.large_pool
                pool.hint = pool.start
            else:
                return DMA_MAPPING_ERROR
            pass_ += 1
        end = n + npages
        if largealloc:
            pool.hint = end
        else:
            pool.hint = (end + self.it_blocksize - 1) & ~(self.it_blocksize - 1)
        if handle is not None:
            handle[:] = [end]
        return n

    def get_pool(self, entry: int) -> IommuPool:
        """``get_pool``: the pool an entry (table-relative) belongs to."""
        if entry >= self.large_pool.start:
            return self.large_pool
        return self.pools[entry // self.poolsize]

    def free_check(self, dma_addr: int, npages: int) -> bool:
        """``iommu_free_check``: the range lies inside the window."""
        entry = dma_addr >> self.it_page_shift
        return entry >= self.it_offset and entry - self.it_offset + npages <= self.it_size

    def free(self, dma_addr: int, npages: int) -> bool:
        """``__iommu_free``: clear the entries and their bits (False: outside the window,
        nothing done, as the kernel only prints)."""
        if not self.free_check(dma_addr, npages):
            return False
        entry = dma_addr >> self.it_page_shift
        self.ops.clear(self, entry, npages)
        self.it_map[entry - self.it_offset:entry - self.it_offset + npages] = False
        return True

    def in_use(self) -> bool:
        """``iommu_table_in_use``: any entry taken besides page 0 and the MMIO32 hole."""
        start = 1 if self.it_offset == 0 else 0
        if not self.it_reserved_start and not self.it_reserved_end:
            return _find_next_bit(self.it_map, start, self.it_size) != self.it_size
        end = self.it_reserved_start - self.it_offset
        if _find_next_bit(self.it_map, start, end) != end:
            return True
        start = self.it_reserved_end - self.it_offset
        return _find_next_bit(self.it_map, start, self.it_size) != self.it_size

    def _check(self) -> None:
        assert len(self.it_map) == self.it_size
        assert self.large_pool.end == self.it_size
        for i, p in enumerate(self.pools):
            assert p.start == self.poolsize * i and p.end == p.start + self.poolsize


def iommu_init_table(tbl: IommuTable, res_start: int, res_end: int) -> IommuTable:
    """``iommu_init_table``: the bitmap, page 0 and ``[res_start, res_end)`` (absolute
    entries, clamped to the window) reserved, the pools, and the entries cleared."""
    if tbl.it_size < 0 or tbl.it_size > 1 << 34:
        raise OutOfMemory(f"iommu_init_table: can't allocate a bitmap of {tbl.it_size} bits")
    tbl.it_map = np.zeros(tbl.it_size, dtype=bool)
    _reserve_pages(tbl, res_start, res_end)
    tbl.nr_pools = IOMMU_NR_POOLS if tbl.it_size << tbl.it_page_shift >= SZ_1G else 1
    tbl.poolsize = (tbl.it_size * 3 // 4) // tbl.nr_pools
    tbl.pools = [IommuPool(tbl.poolsize * i, tbl.poolsize * (i + 1), tbl.poolsize * i)
                 for i in range(tbl.nr_pools)]
    start = tbl.poolsize * tbl.nr_pools
    tbl.large_pool = IommuPool(start, tbl.it_size, start)
    tbl.ops.clear(tbl, tbl.it_offset, tbl.it_size)  # iommu_table_clear (not kdump)
    return tbl


def _reserve_pages(tbl: IommuTable, res_start: int, res_end: int) -> None:
    """``iommu_table_reserve_pages``."""
    if tbl.it_offset == 0:
        tbl.it_map[0] = True  # drivers that take DMA address 0 for "none"
    res_start = max(res_start, tbl.it_offset)
    res_end = min(res_end, tbl.it_offset + tbl.it_size)
    if res_start >= res_end:
        tbl.it_reserved_start = tbl.it_reserved_end = tbl.it_offset
        return
    tbl.it_reserved_start, tbl.it_reserved_end = res_start, res_end
    tbl.it_map[res_start - tbl.it_offset:res_end - tbl.it_offset] = True
