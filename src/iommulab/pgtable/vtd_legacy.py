"""The intel-iommu driver's own second-stage table code of Linux 6.12 (intel/iommu.c).

Before generic_pt, intel-iommu walked and wrote its tables itself:
``pfn_to_dma_pte``, ``__domain_mapping`` with ``switch_to_super_page``,
``domain_unmap`` (``dma_pte_clear_level``), ``intel_iommu_unmap``'s rounding up to
the entry it starts in, and ``intel_iommu_iova_to_phys``. These functions run
that code over the shared walker's table storage (:class:`~.walker.IoPgtable`
with :class:`~.vtd_ss.VtdSsFormat` entries); the ``dmar_domain`` state around
them (``gaw``, ``max_addr``, the gather) is the driver's (:mod:`iommulab.drivers.vtd`).

Kernel behaviour kept on purpose (6.12 warts, gone with 7.0's generic_pt):

- every leaf carries bit 0 (``DMA_FL_PTE_PRESENT`` is ``DMA_PTE_READ``), so a
  write-only mapping is readable by the device;
- a 4K page over a present entry is ``pr_crit`` + WARN and the old entry stays
  (the rest of the range is still mapped, and the call succeeds); a superpage
  over anything silently drops what was there (``switch_to_super_page`` frees
  the tables under it and flushes);
- unmap rounds the size up to the entry the walk stops at, present or not, so
  unmapping an empty range "unmaps" the empty entry's size and may clear
  mappings past the requested range;
- a map below an existing superpage, or an unmap that covers part of one, walks
  the superpage's memory as if it were a page table (writing entries into it or
  zeroing words of it). The model does the same to RAM and counts a lab warning;
  pages that are not tables are never freed (the kernel would free them).

Runs of entries in one table are numpy operations; loops step per table page.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from ..errors import CorruptPageTable, InvalidArgument
from .format import U64Array
from .vtd_ss import (
    ADDR_MASK,
    DMA_FL_PTE_DIRTY,
    DMA_PTE_LARGE_PAGE,
    DMA_PTE_READ,
    DMA_PTE_SNP,
    DMA_PTE_WRITE,
    DMA_SL_PTE_DIRTY,
    FL_TABLE_BITS,
)
from .walker import IoPgtable

__all__ = [
    "DMA_FL_PTE_PRESENT",
    "DmaPte",
    "domain_mapping",
    "domain_mapping_checks",
    "domain_pfn_supported",
    "domain_unmap",
    "hardware_largepage_caps",
    "intel_iommu_iova_to_phys",
    "intel_iommu_unmap",
    "pfn_to_dma_pte",
    "read_and_clear_dirty",
]

#: ``DMA_FL_PTE_PRESENT``: bit 0, which ``__domain_mapping`` sets in every leaf.
DMA_FL_PTE_PRESENT = 1 << 0
_PRESENT = DMA_PTE_READ | DMA_PTE_WRITE  # dma_pte_present()
_STRIDE = 9
_VTD_PAGE_MASK = ~0xFFF & ((1 << 64) - 1)  # dma_pte_addr(): bits 63:12, ignored ones included
_DATA_AS_TABLE = "lab: walked a superpage's memory as a page table (kernel 6.12 does)"

#: ``flush(start_pfn, end_pfn)``: the driver's ``cache_tag_flush_range``.
FlushRange = Callable[[int, int], None]


class DmaPte(NamedTuple):
    """Where ``pfn_to_dma_pte`` stopped: the table, the entry's index, its level."""

    table: U64Array
    idx: int
    level: int


def _level_pages(level: int) -> int:
    """``lvl_to_nr_pages``: 4K pages one entry at ``level`` covers."""
    return 1 << (_STRIDE * (level - 1))


def domain_pfn_supported(pt: IoPgtable, pfn: int) -> bool:
    """``domain_pfn_supported``: the pfn fits the table (``agaw_to_width``), not ``gaw``."""
    return not pfn >> (_STRIDE * (pt._last + 1))


def _entry_table(pt: IoPgtable, pte: int) -> U64Array:
    """``phys_to_virt(dma_pte_addr(pte))``: the table the entry points at or, for a
    superpage, the RAM it maps read as one (CorruptPageTable if not RAM)."""
    table = pt._tables.get(pte & ADDR_MASK)
    if table is not None:
        return table
    pa = pte & ADDR_MASK
    if not pt.mem.is_ram(pa):
        raise CorruptPageTable(f"intel-iommu would walk {pa:#x} (entry {pte:#x}) as a page "
                               "table; it is not RAM")
    pt.stats.warnings[_DATA_AS_TABLE] += 1
    return pt.mem.contents.page_for_write(pa >> 12).view("<u8")


def pfn_to_dma_pte(pt: IoPgtable, pfn: int, target_level: int) -> DmaPte | None:
    """``pfn_to_dma_pte``: the entry for ``pfn`` at ``target_level``, tables allocated
    on the way (ENOMEM raised); with ``target_level`` 0 the walk stops at the first
    superpage or non-present entry and allocates nothing. None beyond the table."""
    if not domain_pfn_supported(pt, pfn):
        return None
    level = len(pt.format.levels)
    if target_level <= 1:  # lab memo of last-level tables (the walk ends in them)
        cached = pt._leaf_tables.get(pfn >> _STRIDE)
        if cached is not None:
            return DmaPte(cached, pfn & 511, 1)
    table = pt._pgd
    while True:
        idx = (pfn >> (_STRIDE * (level - 1))) & 511
        pte = table.item(idx)
        if not target_level and (pte & DMA_PTE_LARGE_PAGE or not pte & _PRESENT):
            break
        if level == target_level:
            break
        if not pte & _PRESENT and not pte:  # try_cmpxchg64 of a new table into a zero entry
            table_pa, _ = pt._alloc_table(pt.format.granule)
            pte = table[idx] = pt.format.make_table(table_pa)
        if level == 1:
            break
        real = pt._tables.get(pte & ADDR_MASK)
        table = real if real is not None else _entry_table(pt, pte)
        level -= 1
        if level == 1 and real is not None:
            pt._leaf_tables[pfn >> _STRIDE] = real
    return DmaPte(table, idx, level)


def hardware_largepage_caps(support: int, iov_pfn: int, phy_pfn: int, pages: int) -> int:
    """``hardware_largepage_caps``: the largest level both pfns are aligned to and
    ``pages`` fills, up to ``support`` superpage levels (1 = 4K)."""
    level, pfnmerge = 1, iov_pfn | phy_pfn
    while support and not pfnmerge & 511:
        pages >>= _STRIDE
        if not pages:
            break
        pfnmerge >>= _STRIDE
        level += 1
        support -= 1
    return level


def domain_mapping_checks(pt: IoPgtable, iov_pfn: int, nr_pages: int, prot: int) -> None:
    """``__domain_mapping``'s checks, made before it marks the domain as having mappings
    (``has_mappings``, the driver's): EINVAL beyond the table or without READ/WRITE."""
    if not domain_pfn_supported(pt, iov_pfn + nr_pages - 1):
        raise InvalidArgument(f"__domain_mapping: pfn {iov_pfn + nr_pages - 1:#x} is beyond "
                              f"the {len(pt.format.levels)}-level table")
    if not prot & _PRESENT:
        raise InvalidArgument(f"__domain_mapping: prot {prot:#x} has neither READ nor WRITE")


def domain_mapping(pt: IoPgtable, iov_pfn: int, phys_pfn: int, nr_pages: int, prot: int,
                   superpage: int, flush: FlushRange) -> None:
    """``__domain_mapping`` once :func:`domain_mapping_checks` passed: map ``nr_pages`` 4K
    pages, superpages where ``superpage`` levels and the alignment allow. ENOMEM when a
    table cannot be had (entries written so far stay). Entries already set at 4K are
    kept with a WARN each; superpages replace what was there
    (``switch_to_super_page``). O(table pages written)."""
    attr = prot & (DMA_PTE_READ | DMA_PTE_WRITE | DMA_PTE_SNP) | DMA_FL_PTE_PRESENT
    if getattr(pt.format, "first_level", False):  # use_first_level
        attr |= FL_TABLE_BITS | (DMA_FL_PTE_DIRTY if prot & DMA_PTE_WRITE else 0)
    pt.stats.map_pages += 1
    if nr_pages == 1:  # lab: one page into a last-level table that exists
        table = pt._leaf_tables.get(iov_pfn >> _STRIDE)
        if table is not None:
            _write_leaves(pt, table[iov_pfn & 511:(iov_pfn & 511) + 1], (phys_pfn << 12) | attr,
                          1)
            return
    while nr_pages > 0:
        lvl = hardware_largepage_caps(superpage, iov_pfn, phys_pfn, nr_pages)
        if lvl == 1 and not iov_pfn & 511 and nr_pages >= 512 and pt.bulk_passes:
            k = _map_new_tables(pt, iov_pfn, phys_pfn, nr_pages >> _STRIDE, attr)
            if k:
                iov_pfn += k << _STRIDE
                phys_pfn += k << _STRIDE
                nr_pages -= k << _STRIDE
                continue
        where = pfn_to_dma_pte(pt, iov_pfn, lvl)
        assert where is not None  # the last pfn was checked above
        table, idx, lvl = where
        lvl_pages = _level_pages(lvl)
        room = 512 - idx
        if lvl > 1:
            n = min(room, nr_pages // lvl_pages)
            switch_to_super_page(pt, iov_pfn, iov_pfn + n * lvl_pages - 1, lvl, flush)
            large = DMA_PTE_LARGE_PAGE
        else:
            n, large = min(room, nr_pages), 0
        _write_leaves(pt, table[idx:idx + n], (phys_pfn << 12) | attr | large, lvl_pages)
        iov_pfn += n * lvl_pages
        phys_pfn += n * lvl_pages
        nr_pages -= n * lvl_pages


def _map_new_tables(pt: IoPgtable, iov_pfn: int, phys_pfn: int, ntables: int, attr: int
                    ) -> int:
    """Model-only bulk of ``__domain_mapping`` steps that each find an empty level-2
    entry, allocate a last-level table under it (``pfn_to_dma_pte``) and fill all
    512 entries: the leading empty entries of the level-2 table, up to ``ntables``,
    get tables from one allocation filled in one vector step. Returns the tables
    mapped (0: the per-table loop does it). The walk above level 2 is
    ``pfn_to_dma_pte``'s, allocating where it would."""
    where = pfn_to_dma_pte(pt, iov_pfn, 2)
    if where is None or where.level != 2:
        return 0
    parent, j = where.table, where.idx
    got = pt._new_tables_at(parent[j:min(j + ntables, 512)])
    if got is None:
        return 0
    pas, rows = got
    k = len(pas)
    starts = np.arange(k, dtype=np.uint64) * np.uint64(512 << 12)
    starts += np.uint64((phys_pfn << 12) | attr)
    np.add(np.arange(512, dtype=np.uint64)[None, :] * np.uint64(1 << 12), starts[:, None],
           out=rows)
    parent[j:j + k] = pt.format.make_tables(np.array(pas, dtype=np.uint64))
    return k


def _write_leaves(pt: IoPgtable, run: U64Array, first: int, lvl_pages: int) -> None:
    """The ``try_cmpxchg64_local(&pte->val, 0, pteval)`` loop: entries that are not zero
    keep their value, each with a ``pr_crit`` and a WARN."""
    if len(run) == 1:
        if run.item(0):
            pt.stats.warnings["ERROR: DMA PTE for vPFN already set"] += 1
        else:
            run[0] = first
        return
    new = np.arange(len(run), dtype=np.uint64) * np.uint64(lvl_pages << 12)
    new += np.uint64(first)
    taken = run != 0
    if taken.any():
        pt.stats.warnings["ERROR: DMA PTE for vPFN already set"] += int(taken.sum())
        run[~taken] = new[~taken]
    else:
        run[:] = new


def switch_to_super_page(pt: IoPgtable, start_pfn: int, end_pfn: int, level: int,
                         flush: FlushRange) -> None:
    """``switch_to_super_page``: clear every present slot of ``level`` in the range
    (``dma_pte_free_pagetable``: leaves dropped, tables under it freed) and flush
    from that slot to the end of the range, once per present slot."""
    where = pfn_to_dma_pte(pt, start_pfn, level)
    assert where is not None
    table, idx, _ = where
    lvl_pages = _level_pages(level)
    run = table[idx:idx + (end_pfn - start_pfn) // lvl_pages + 1]
    depth = len(pt.format.levels) - level
    for i in np.flatnonzero(run & np.uint64(_PRESENT)).tolist():
        pte = int(run[i])
        if not pte & DMA_PTE_LARGE_PAGE:
            pt._free_tables(_subtree(pt, pte, depth + 1))
        run[i] = 0
        flush(start_pfn + i * lvl_pages, end_pfn)


def _subtree(pt: IoPgtable, pte: int, depth: int) -> list[int]:
    """``dma_pte_list_pagetables``: the table ``pte`` points at and every table below;
    a page that is not a table is left alone (the kernel would free it too)."""
    pa = pte & ADDR_MASK
    table = pt._tables.get(pa)
    if table is None:
        pt.stats.warnings["lab: 6.12 would free a page that is not a page table"] += 1
        return []
    out = [pa]
    if depth < len(pt.format.levels) - 1:
        entries = table[:512]
        for sub in entries[(entries & np.uint64(_PRESENT) != 0)
                           & (entries & np.uint64(DMA_PTE_LARGE_PAGE) == 0)].tolist():
            out += _subtree(pt, sub, depth + 1)
    return out


def domain_unmap(pt: IoPgtable, start_pfn: int, last_pfn: int) -> None:
    """``domain_unmap``: clear ``[start_pfn, last_pfn]`` (``dma_pte_clear_level``):
    entries the range covers go (tables under them freed), partly covered tables
    are walked into. WARN (nothing done) beyond the table or for an empty range.

    A range ending at the domain's last pfn from pfn 0 makes the kernel free the
    page directory itself (``domain->pgd = NULL``; the next map oopses); the model
    keeps it and counts a lab warning. O(table pages touched)."""
    if not domain_pfn_supported(pt, last_pfn) or start_pfn > last_pfn:
        pt.stats.warnings["domain_unmap: bad range"] += 1
        return
    leaf_table = pt._leaf_tables.get(start_pfn >> _STRIDE)
    if leaf_table is not None and start_pfn >> _STRIDE == last_pfn >> _STRIDE and \
            last_pfn - start_pfn < 511:
        # inside one last-level table and not all of it: only its entries change
        leaf_table[start_pfn & 511:(last_pfn & 511) + 1] = 0
        return
    freed: list[int] = []
    _clear_level(pt, pt._pgd, len(pt.format.levels), 0, start_pfn, last_pfn, freed)
    pt._free_tables(freed)
    if start_pfn == 0 and last_pfn == (1 << (_STRIDE * len(pt.format.levels))) - 1:
        pt.stats.warnings["lab: 6.12 frees the page directory here (domain->pgd = NULL)"] += 1


def _clear_level(pt: IoPgtable, table: U64Array, level: int, pfn: int, start: int,
                 last: int, freed: list[int]) -> None:
    """``dma_pte_clear_level`` over one table whose entry for ``pfn`` comes first:
    present entries inside ``[start, last]`` are cleared (tables under them listed
    for freeing), ones it only overlaps (the first and last) are walked into."""
    shift = _STRIDE * (level - 1)
    pfn = max(start, pfn)
    i0 = (pfn >> shift) & 511
    run = table[i0:min(511, i0 + (last >> shift) - (pfn >> shift)) + 1]
    present = np.flatnonzero(run & np.uint64(_PRESENT))
    if not len(present):
        return
    base = (pfn >> shift) << shift  # level_pfn of the first entry
    lsize = 1 << shift
    full_lo = -(-(start - base) // lsize)  # first entry starting at or after start
    full_hi = (last + 1 - base) // lsize - 1  # last entry ending by last
    full = present[(present >= full_lo) & (present <= full_hi)]
    if level > 1:
        for i in present[(present < full_lo) | (present > full_hi)].tolist():
            _clear_level(pt, _entry_table(pt, int(run[i])), level - 1, base + i * lsize,
                         start, last, freed)
        entries = run[full]
        for sub in entries[entries & np.uint64(DMA_PTE_LARGE_PAGE) == 0].tolist():
            freed += _subtree(pt, sub, len(pt.format.levels) - level + 1)
    run[full] = 0


def intel_iommu_unmap(pt: IoPgtable, iova: int, size: int) -> int:
    """``intel_iommu_unmap`` without its domain bookkeeping: the size is raised to the
    entry the walk from ``iova`` stops at ("Cope with horrid API ..."), that range
    is cleared, and the (raised) size is returned; 0 beyond the table."""
    pfn = iova >> 12
    if pfn >> _STRIDE in pt._leaf_tables and domain_pfn_supported(pt, pfn):
        level = 1  # the walk ends in a last-level table that exists
    else:
        where = pfn_to_dma_pte(pt, pfn, 0)
        if where is None:
            return 0
        level = where.level
    size = max(size, 4096 << (_STRIDE * (level - 1)))
    pt.stats.unmap_pages += 1
    domain_unmap(pt, iova >> 12, (iova + size - 1) >> 12)
    return size


def intel_iommu_iova_to_phys(pt: IoPgtable, iova: int) -> int:
    """``intel_iommu_iova_to_phys``: the entry's address plus the offset, 0 if the
    walk ends at a non-present entry or ``iova`` is beyond the table."""
    where = pfn_to_dma_pte(pt, iova >> 12, 0)
    if where is None:
        return 0
    pte = where.table.item(where.idx)
    if not pte & _PRESENT:
        return 0
    return (pte & _VTD_PAGE_MASK) + (iova & ((4096 << (_STRIDE * (where.level - 1))) - 1))


class DirtyRecord(Protocol):
    """What the dirty walk needs of ``struct iommu_dirty_bitmap``."""

    def record_run(self, iova: int, size: int, hit: npt.NDArray[np.bool_]) -> None: ...


def read_and_clear_dirty(pt: IoPgtable, iova: int, size: int, flags: int,
                         dirty: DirtyRecord) -> None:
    """6.12 ``intel_iommu_read_and_clear_dirty``'s loop: from ``iova`` to ``iova + size``,
    each present leaf whose D bit (``DMA_SL_PTE_DIRTY``) is set is recorded at its size
    and cleared (``dma_sl_pte_test_and_clear_dirty``) unless IOMMU_DIRTY_NO_CLEAR; holes
    are stepped over at the size of the level the walk stopped at. By runs of one
    table (a vector step each), not per page; the start is taken aligned to the leaf
    it falls in (the kernel's cursor keeps an unaligned start's offset: iommufd's
    bitmaps start page-aligned, where the two agree for 4K leaves)."""
    end = iova + size
    clear = not flags & 1  # IOMMU_DIRTY_NO_CLEAR
    _dirty_level(pt, pt._pgd, len(pt.format.levels), 0, iova, end, clear, dirty)


def _dirty_level(pt: IoPgtable, table: U64Array, level: int, base: int, lo: int, hi: int,
                 clear: bool, dirty: DirtyRecord) -> None:
    shift = 12 + _STRIDE * (level - 1)
    size = 1 << shift
    i0 = max(0, (lo - base) >> shift)
    i1 = min(512, ((hi - 1 - base) >> shift) + 1)
    if i0 >= i1:
        return
    run = table[i0:i1]
    present = (run & np.uint64(_PRESENT)) != 0
    leaf = present if level == 1 else present & ((run & np.uint64(DMA_PTE_LARGE_PAGE)) != 0)
    hit = leaf & ((run & np.uint64(DMA_SL_PTE_DIRTY)) != 0)
    if hit.any():
        dirty.record_run(base + (i0 << shift), size, hit)
        if clear:
            run[hit] &= np.uint64(~DMA_SL_PTE_DIRTY & ((1 << 64) - 1))
    if level > 1:
        for i in np.flatnonzero(present & ~leaf).tolist():
            sub = base + ((i0 + i) << shift)
            _dirty_level(pt, _entry_table(pt, int(run[i])), level - 1, sub, max(lo, sub),
                         min(hi, sub + size), clear, dirty)
