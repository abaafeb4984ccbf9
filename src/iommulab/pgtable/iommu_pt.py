"""generic_pt's IOMMU operations (drivers/iommu/generic_pt/iommu_pt.h, Linux 7.0).

``map_range``, ``unmap_range`` and ``iova_to_phys`` as iommupt runs them for a
format, over the shared walker's table storage (:class:`~.walker.IoPgtable`).
Linux 7.0 runs VT-d second-stage tables this way (``fmt/vtdss.h``); the core
calls these instead of looping ``map_pages``/``unmap_pages`` with
``iommu_pgsize``. Where they differ from io-pgtable:

- a present entry in the way of a map is -EADDRINUSE, with no WARN; a leaf
  over a table is allowed only when every table under it is empty, and those
  tables are freed through the map's own gather, synced before returning;
- an unmap that starts at the first byte of a large entry removes all of it
  and counts its size, however short the range; one that starts inside it, or
  reaches an empty entry, stops there (-EINVAL inside, so a short count);
  tables the range covers entirely are freed;
- the gather gets one range per unmap (``gather_range_pages`` with
  ``PT_FEAT_FLUSH_RANGE`` only widens it) and is left alone when queued;
- ``iova_to_phys`` of an IOVA outside the table returns ``-ERANGE`` as a
  ``phys_addr_t`` (2^64 - 34), not 0.

A format may have contiguous leaves (:class:`~.format.ContigLeaves`, AMDv1's encoded
page sizes): a leaf then covers several items of one table, a map clears every item
it will cover first (``clear_contig``), an unmap that reaches into one removes all
of it, and dirty state is read and cleared over all its items. The single-page
fast path exists only where the table's smallest item is the CPU page
(``pt_has_system_page_size``). :meth:`PtIommu.read_and_clear_dirty` and
:meth:`PtIommu.set_dirty` are generic_pt's dirty operations, for formats with a
dirty bit per item.

Runs of entries in one table are handled with numpy operations; the Python
loops step per table, or per table found inside a range, never per 4K page.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from ..errors import (
    AddressInUse,
    InvalidArgument,
    KernelError,
    NoSuchDevice,
    NotSupported,
    OutOfRange,
    Overflow,
)
from ..prot import Prot
from ..sizes import PAGE_SIZE
from .format import LEAF, TABLE, BoolArray, U64Array
from .walker import IOMMU_DIRTY_NO_CLEAR, IoPgtable

__all__ = ["ERANGE_PHYS", "DirtyRanges", "PtIommu", "RangeGather", "pt_compute_best_pgsize",
           "pt_pgsz_count"]

I64Array = npt.NDArray[np.int64]

_U64_MAX = (1 << 64) - 1
_RW = int(Prot.READ | Prot.WRITE)
#: What 7.0's ``iova_to_phys`` returns for an IOVA beyond the table: ``(phys_addr_t)-ERANGE``.
ERANGE_PHYS = -34 & _U64_MAX


class RangeGather(Protocol):
    """What iommupt uses of ``struct iommu_iotlb_gather``."""

    queued: bool

    def add_range(self, iova: int, size: int) -> None: ...


class DirtyRanges(Protocol):
    """``struct iommu_dirty_bitmap`` as generic_pt's ``record_dirty`` uses it."""

    def record_ranges(self, iovas: I64Array, lengths: I64Array, *, gather: bool) -> None:
        """``iova_bitmap_set(bitmap, iovas[i], lengths[i])`` for each ``i`` when there is a
        bitmap; with ``gather``, each range added to the gather too."""


G = TypeVar("G", bound=RangeGather)


def pt_compute_best_pgsize(pgsz_bitmap: int, va: int, last_va: int, oa: int) -> int:
    """``pt_compute_best_pgsize``: the largest size in the bitmap that ``va`` and ``oa``
    start at and that ends by ``last_va`` (0 if none, or if ``va >= last_va``)."""
    if va >= last_va:
        return 0
    length = last_va - va + 1
    mask = va | oa | 1 << (length.bit_length() - 1)
    best = (mask & -mask).bit_length() - 1
    fits = pgsz_bitmap & ((2 << best) - 1)
    return 1 << (fits.bit_length() - 1) if fits else 0


def pt_pgsz_count(pgsz_bitmap: int, va: int, last_va: int, oa: int, pgsize: int) -> int:
    """``pt_pgsz_count``: leaves of ``pgsize`` from ``va`` before the next larger size
    could take over (VA and OA equally offset in it) or the range ends."""
    length = last_va - va + 1
    bigger = pgsz_bitmap & ~((pgsize << 1) - 1)
    if bigger:
        nxt = bigger & -bigger
        if not (va ^ oa) & (nxt - 1):
            length = min(length, (va | (nxt - 1)) - va + 1)
    return length // pgsize


class PtIommu(Generic[G]):
    """``struct pt_iommu`` of one table: its VA and OA limits and its ops.

    ``max_vasz_lg2`` is the IOVA width (``hw_max_vasz_lg2``), ``max_oasz_lg2`` the
    output width (52 for vtdss). ``new_gather`` and ``iotlb_sync`` are the domain's
    (``iommu_iotlb_gather_init`` and ``iommu_iotlb_sync``), used when a map frees
    tables. Attributes of new leaves come from the format's ``prot_to_attrs``
    (``pt_iommu_set_prot``).
    """

    def __init__(self, pgtbl: IoPgtable, *, max_vasz_lg2: int, max_oasz_lg2: int,
                 new_gather: Callable[[], G], iotlb_sync: Callable[[G], None]) -> None:
        self.pgtbl = pgtbl
        self.max_vasz_lg2 = max_vasz_lg2
        self.max_oasz_lg2 = max_oasz_lg2
        self._new_gather = new_gather
        self._iotlb_sync = iotlb_sync
        self._contig = pgtbl.format.contig_leaves
        # pt_has_system_page_size: the 4K fast path needs 4K items at the last level
        self._system_page = pgtbl._page_size == PAGE_SIZE

    # -- geometry -----------------------------------------------------------------------------
    def _leaf_depth(self, pgsize: int) -> int:
        """``pt_pgsz_lg2_to_level``: the level whose items a leaf of ``pgsize`` is made of
        (the item size itself, or a contiguous run of them)."""
        for depth, shift in enumerate(self.pgtbl._shifts):
            if pgsize >> shift:
                return depth
        raise InvalidArgument(f"map_range: no level holds a {pgsize:#x} leaf")

    def _contig_lg2(self, pte: int, depth: int) -> int:
        return 0 if self._contig is None else self._contig.contig_lg2(pte, depth)

    def _entry_size(self, pte: int, depth: int) -> int:
        """``pt_entry_oa_lg2sz`` as a size: the item size, times the items a leaf covers."""
        return self.pgtbl._sizes[depth] << self._contig_lg2(pte, depth)

    # -- map --------------------------------------------------------------------------------
    def map_range(self, iova: int, paddr: int, length: int, prot: int, pgsize_bitmap: int
                  ) -> int:
        """``map_range``: map ``length`` bytes; returns them, or raises with ``mapped``.

        Checks in the kernel's order: no READ/WRITE (EINVAL, WARN), an OA beyond
        ``max_oasz_lg2`` (ERANGE), length 0 (EINVAL), a wrapping range
        (EOVERFLOW), an IOVA/OA pair no page size fits (ENXIO), a range outside
        the table (ERANGE); then, while mapping, a present entry in the way
        (EADDRINUSE) or no table memory (ENOMEM). Leaf sizes are the largest
        ``pgsize_bitmap`` allows at each step. O(tables touched).
        """
        pt = self.pgtbl
        prot = int(prot)  # a plain int: IntFlag arithmetic is slow
        if not prot & _RW:
            pt.stats.warnings["map_range: no READ or WRITE"] += 1
            raise InvalidArgument(f"map_range: prot {prot:#x} has neither READ nor WRITE")
        if paddr >> self.max_oasz_lg2:
            raise OutOfRange(f"map_range: paddr {paddr:#x} is beyond the table's "
                             f"{self.max_oasz_lg2}-bit output addresses")
        attrs = pt.format.prot_to_attrs(prot)  # pt_iommu_set_prot
        last = self._make_range(iova, length, "map_range")
        single = self._system_page and length == PAGE_SIZE
        if single:
            if (iova | paddr) & (PAGE_SIZE - 1):
                raise NoSuchDevice(f"map_range: iova {iova:#x} / paddr {paddr:#x} are not "
                                   "aligned to a 4K page")
        elif not pt_compute_best_pgsize(pgsize_bitmap, iova, last, paddr):
            raise NoSuchDevice(f"map_range: no page size in {pgsize_bitmap:#x} fits iova "
                               f"{iova:#x} paddr {paddr:#x} length {length:#x}")
        self._check_range(iova, last, "map_range")
        pt.stats.map_pages += 1
        if single:  # __do_map_single_page into a table that exists
            table = pt._leaf_tables.get(iova >> pt._above_last)
            if table is not None:
                idx = (iova >> pt._shifts[pt._last]) & pt._masks[pt._last]
                if table.item(idx):
                    raise AddressInUse(f"map_range: iova {iova:#x} is already mapped "
                                       f"({pt.format.describe(table.item(idx), pt._last)})")
                table[idx] = pt.format.leaf_value(attrs, pt._last, paddr)
                return length
        gather = self._new_gather()
        freed: list[int] = []
        va, oa = iova, paddr
        try:
            while va <= last:
                pgsize = pt_compute_best_pgsize(pgsize_bitmap, va, last, oa)
                if not pgsize:  # a length that is not a whole number of pages
                    raise NoSuchDevice(f"map_range: no page size in {pgsize_bitmap:#x} "
                                       f"fits the rest [{va:#x}, {last:#x}]")
                count = pt_pgsz_count(pgsize_bitmap, va, last, oa, pgsize)
                done = self._map_leaves(va, oa, pgsize, count, attrs, gather, freed)
                va += done
                oa += done
        except KernelError as err:
            err.mapped += va - iova  # what earlier sizes mapped, plus this one's part
            raise
        finally:
            if freed:  # "Table levels were freed and replaced with large items"
                pt._free_tables(freed)
                self._iotlb_sync(gather)
        return length

    def _map_leaves(self, va: int, oa: int, pgsize: int, count: int, attrs: int,
                    gather: G, freed: list[int]) -> int:
        """``__map_range_leaf`` for ``count`` leaves, a table page at a time; returns the
        bytes installed, or raises with ``mapped`` set to what it installed. A leaf of
        ``step`` items first has every item in its way cleared (``clear_contig``). With
        ``bulk_passes``, runs of whole new last-level tables go k at a time
        (:meth:`_map_new_tables`)."""
        pt = self.pgtbl
        fmt = pt.format
        depth = self._leaf_depth(pgsize)
        isz = pt._sizes[depth]
        step = pgsize // isz
        per = pt._per
        done = start = 0  # leaves in finished table pages; leaves installed in this one
        bulk = pt.bulk_passes and depth == pt._last and depth and not per % step
        try:
            while done < count:
                at = va + done * pgsize
                start = 0
                if bulk and not (at >> pt._shifts[depth]) & (per - 1) and (
                        count - done) * step >= per:
                    k = self._map_new_tables(at, oa + done * pgsize, pgsize, attrs, depth,
                                             (count - done) * step // per)
                    if k:
                        done += k * per // step
                        continue
                table = self._descend(at, depth)
                idx = (at >> pt._shifts[depth]) & pt._masks[depth]
                n = min(count - done, (per - (idx & (per - 1))) // step)
                run = table[idx:idx + n * step]
                for i in np.flatnonzero(run).tolist():  # items in the way, in order
                    leaf = i // step
                    if leaf > start:
                        fmt.fill_leaves(run[start * step:leaf * step], attrs, depth,
                                        oa + (done + start) * pgsize, pgsize)
                        start = leaf
                    self._clear_contig(run, i, at + i * isz, depth, gather, freed)
                fmt.fill_leaves(run[start * step:], attrs, depth, oa + (done + start) * pgsize,
                                pgsize)
                done += n
        except KernelError as err:
            err.mapped = (done + start) * pgsize
            raise
        return done * pgsize

    def _map_new_tables(self, va: int, oa: int, pgsize: int, attrs: int, depth: int,
                        ntables: int) -> int:
        """Model-only bulk of ``__map_range`` steps that each install a new leaf table
        and fill all of it: up to ``ntables`` of them under the upper table of ``va``,
        allocated together and filled in one vector step
        (:meth:`~.walker.IoPgtable._new_tables_at`); returns the tables mapped (0: the
        per-table path does it). The descent above is :meth:`_descend`'s."""
        pt = self.pgtbl
        up = depth - 1
        parent = self._descend(va, up)
        j = (va >> pt._shifts[up]) & pt._masks[up]
        got = pt._new_tables_at(parent[j:min(j + ntables, pt._levels[up].entries)])
        if got is None:
            return 0
        pas, rows = got
        fmt = pt.format
        fmt.fill_leaf_rows(rows, attrs, depth, oa, pgsize)
        parent[j:j + len(pas)] = np.array([fmt.make_table(pa, up) for pa in pas],
                                          dtype=np.uint64)
        return len(pas)

    def _descend(self, va: int, target: int) -> U64Array:
        """``__map_range`` above the leaves: the table at depth ``target`` for ``va``,
        installing missing tables; EADDRINUSE where a leaf is in the way."""
        pt = self.pgtbl
        if target == pt._last:
            cached = pt._leaf_tables.get(va >> pt._above_last)
            if cached is not None:
                return cached
        fmt = pt.format
        table, depth = pt._pgd, 0
        while depth != target:
            idx = (va >> pt._shifts[depth]) & pt._masks[depth]
            pte = table.item(idx)
            if not pte:
                table_pa, _ = pt._alloc_table(fmt.granule)
                pte = fmt.make_table(table_pa, depth)
                table[idx] = pte
            elif pt._kinds[depth][pte & pt._kind_mask] != TABLE:
                raise AddressInUse(f"map_range: iova {va:#x} is inside a "
                                   f"{self._entry_size(pte, depth):#x} leaf "
                                   f"({fmt.describe(pte, depth)})")
            table = pt._deref(pte)
            depth += 1
        if target == pt._last:
            pt._leaf_tables[va >> pt._above_last] = table
        return table

    def _clear_contig(self, run: U64Array, i: int, va: int, depth: int, gather: G,
                      freed: list[int]) -> None:
        """``clear_contig`` for the item ``run[i]`` at ``va``: a table in the way goes if
        nothing under it is mapped (its tables freed through the gather); any leaf is
        EADDRINUSE."""
        pt = self.pgtbl
        pte = int(run[i])
        if pt._kinds[depth][pte & pt._kind_mask] != TABLE:
            raise AddressInUse(f"map_range: iova {va:#x} is already mapped "
                               f"({pt.format.describe(pte, depth)})")
        tables = [pt.format.table_pa(pte)]
        self._collect_tables(pt._deref(pte), depth + 1, va, tables)
        run[i] = 0
        pt._leaf_tables.clear()
        if not gather.queued:  # gather_range_pages
            gather.add_range(va, pt._sizes[depth])
        freed.extend(tables)

    def _collect_tables(self, table: U64Array, depth: int, va: int, out: list[int]) -> None:
        """``__collect_tables`` with ``check_mapped``: EADDRINUSE at any leaf."""
        pt = self.pgtbl
        entries = table[:pt._levels[depth].entries]
        live = np.flatnonzero(entries)
        if not len(live):
            return
        leaves = pt.format.leaf_mask(entries[live], depth)
        if leaves.any():
            at = va + int(live[np.argmax(leaves)]) * pt._sizes[depth]
            raise AddressInUse(f"map_range: iova {at:#x} is mapped under the table "
                               "a larger leaf would replace")
        for j in live.tolist():
            pte = int(entries[j])
            out.append(pt.format.table_pa(pte))
            self._collect_tables(pt._deref(pte), depth + 1, va + j * pt._sizes[depth], out)

    # -- unmap ------------------------------------------------------------------------------
    def unmap_range(self, iova: int, length: int, gather: G) -> int:
        """``unmap_range``: bytes unmapped from ``iova`` up to the first hole (0 for a bad
        range). A leaf at the start is removed whole even if the range ends inside it,
        and so is one the range's end reaches into; a start inside a leaf unmaps
        nothing. Covered tables are freed. The gather gets ``[iova, iova + unmapped)``
        unless queued. O(tables touched)."""
        pt = self.pgtbl
        if not length or iova + length - 1 > _U64_MAX:
            return 0
        last = iova + length - 1
        if (iova | last) >> self.max_vasz_lg2:
            return 0
        pt.stats.unmap_pages += 1
        table = pt._leaf_tables.get(iova >> pt._above_last)
        if table is not None and iova >> pt._above_last == last >> pt._above_last and \
                last - iova < (1 << pt._above_last) - 1:
            # inside one last-level table and not all of it: no table can be freed
            unmapped = self._unmap_leaves(table, iova, last)
        else:
            freed: list[int] = []
            unmapped, _ = self._unmap_level(pt._pgd, 0, iova, last, freed)
            pt._free_tables(freed)
        if not gather.queued:  # gather_range_pages: PT_FEAT_FLUSH_RANGE widens the range
            gather.add_range(iova, unmapped)
        return unmapped

    def _unmap_leaves(self, table: U64Array, iova: int, last: int) -> int:
        """``__unmap_range`` at the last level: up to the first empty entry, nothing when
        the range starts inside a leaf."""
        pt = self.pgtbl
        depth = pt._last
        shift, mask = pt._shifts[depth], pt._masks[depth]
        i0, i1 = (iova >> shift) & mask, ((last >> shift) & mask) + 1
        first = table.item(i0)
        if not first or iova & (self._entry_size(first, depth) - 1):
            return 0
        if i1 - i0 == 1 and self._contig is None:
            table[i0] = 0
            return 1 << shift
        stop = self._leaf_run_end(table, i0, i1, depth)
        table[i0:stop] = 0
        return (stop - i0) << shift

    def _leaf_run_end(self, table: U64Array, i0: int, i1: int, depth: int) -> int:
        """Where ``__unmap_range`` stops clearing leaves from ``i0`` towards ``i1``: the first
        empty item, else ``i1`` moved to the end of a contiguous leaf it cuts."""
        holes = np.flatnonzero(table[i0:i1] == 0)
        if len(holes):
            return i0 + int(holes[0])
        pte = table.item(i1 - 1)
        if self._contig is not None and self.pgtbl.format.is_leaf(pte, depth):
            return max(i1, ((i1 - 1) | ((1 << self._contig.contig_lg2(pte, depth)) - 1)) + 1)
        return i1

    def _unmap_level(self, table: U64Array, depth: int, va: int, last: int,
                     freed: list[int]) -> tuple[int, bool]:
        """``__unmap_range`` over one table: (bytes unmapped here and below, finished)."""
        pt = self.pgtbl
        fmt = pt.format
        shift, size = pt._shifts[depth], pt._sizes[depth]
        i0 = (va >> shift) & pt._masks[depth]
        i1 = i0 + ((last >> shift) - (va >> shift)) + 1
        first = table.item(i0)
        if first and fmt.is_leaf(first, depth) and va & (self._entry_size(first, depth) - 1):
            return 0, False  # starts inside a large entry: -EINVAL
        stop = self._leaf_run_end(table, i0, i1, depth)
        run = table[i0:stop]
        subs = np.flatnonzero(fmt.table_mask(run, depth)).tolist() if depth < pt._last \
            else []
        unmapped, start, ok = 0, 0, stop >= i1
        for t in subs:
            unmapped += self._clear_leaves(run, start, t, size)
            base = ((va >> shift) + t) << shift
            lo, hi = max(va, base), min(last, base + size - 1)
            pte = run.item(t)
            sub, done = self._unmap_level(pt._deref(pte), depth + 1, lo, hi, freed)
            unmapped += sub
            start = t + 1
            if not done:
                return unmapped, False
            if lo == base and hi == base + size - 1:
                # fully covered, so every entry under it was present and is gone now
                freed.append(fmt.table_pa(pte))
                run[t] = 0
        unmapped += self._clear_leaves(run, start, len(run), size)
        return unmapped, ok

    @staticmethod
    def _clear_leaves(run: U64Array, start: int, stop: int, size: int) -> int:
        """Clear the leaves ``run[start:stop]`` (no tables among them); their bytes."""
        if stop > start:
            run[start:stop] = 0
        return max(stop - start, 0) * size

    # -- lookups ------------------------------------------------------------------------------
    def iova_to_phys(self, iova: int) -> int:
        """``iova_to_phys``: the OA with the offset into the leaf, 0 if unmapped; an IOVA
        outside the table gives ``(phys_addr_t)-ERANGE`` (:data:`ERANGE_PHYS`), as 7.0
        returns it."""
        if iova >> self.max_vasz_lg2:
            return ERANGE_PHYS
        found = self.lookup(iova)
        return 0 if found is None else found[0]

    def lookup(self, iova: int) -> tuple[int, int] | None:
        """The leaf that maps ``iova`` (inside the table) as ``(oa of iova, end of the leaf's
        IOVA range)``, or None: what a walk from the top finds (``pt_entry_oa_exact``)."""
        pt = self.pgtbl
        table, depth = pt._pgd, 0
        cached = pt._leaf_tables.get(iova >> pt._above_last)
        if cached is not None:
            table, depth = cached, pt._last
        while True:
            pte = table.item((iova >> pt._shifts[depth]) & pt._masks[depth])
            kind = pt._kinds[depth][pte & pt._kind_mask]
            if kind == LEAF:
                size = self._entry_size(pte, depth)
                return pt.format.leaf_oa(pte) | (iova & (size - 1)), (iova | (size - 1)) + 1
            if kind != TABLE:
                return None
            table = pt._deref(pte)
            depth += 1

    def _find_leaves(self, iovas: I64Array
                     ) -> list[tuple[int, U64Array, I64Array, I64Array]]:
        """The leaf items that map ``iovas`` (all inside the table), grouped by table as
        ``(depth, table, item indexes, positions in iovas)``; a walk per table, not per
        IOVA."""
        pt = self.pgtbl
        out: list[tuple[int, U64Array, I64Array, I64Array]] = []
        stack = [(0, pt._pgd, np.arange(len(iovas), dtype=np.int64))]
        while stack:
            depth, table, pos = stack.pop()
            idx = (iovas[pos] >> pt._shifts[depth]) & pt._masks[depth]
            ptes = table[idx]
            leaf = pt.format.leaf_mask(ptes, depth)
            if leaf.any():
                out.append((depth, table, idx[leaf], pos[leaf]))
            tab = pt.format.table_mask(ptes, depth)
            if tab.any():
                for i in np.unique(idx[tab]).tolist():
                    stack.append((depth + 1, pt._deref(table.item(i)), pos[tab & (idx == i)]))
        return out

    def iova_to_phys_many(self, iovas: I64Array) -> I64Array:
        """:meth:`iova_to_phys` of many IOVAs (inside the table): the OA of each, 0 where
        nothing is mapped."""
        phys = np.zeros(len(iovas), dtype=np.int64)
        for depth, table, idx, pos in self._find_leaves(iovas):
            ptes = table[idx]
            lg2 = np.full(len(ptes), self.pgtbl._shifts[depth], dtype=np.int64)
            if self._contig is not None:
                lg2 += self._contig.contig_lg2s(ptes, depth).astype(np.int64)
            offset = iovas[pos] & ((np.int64(1) << lg2) - 1)
            phys[pos] = self.pgtbl.format.leaf_oas(ptes).astype(np.int64) | offset
        return phys

    # -- dirty ----------------------------------------------------------------------------------
    def set_dirty(self, iovas: I64Array) -> None:
        """``set_dirty`` (iommufd selftest only) at each of ``iovas``: the item holding it
        is made write-dirty, not the rest of its leaf. An IOVA outside the table
        (ERANGE) or with nothing mapped (ENOENT) is skipped, as the selftest ignores
        the error."""
        make_dirty = self.pgtbl.format.make_write_dirty
        if make_dirty is None:
            raise NotSupported(f"set_dirty: {self.pgtbl.format.name} has no dirty bit")
        iovas = iovas[(iovas >> self.max_vasz_lg2) == 0]
        for _depth, table, idx, _pos in self._find_leaves(iovas):
            table[idx] = make_dirty(table[idx])

    def read_and_clear_dirty(self, iova: int, size: int, flags: int,
                             dirty: DirtyRanges) -> None:
        """``read_and_clear_dirty``: record each write-dirty leaf of ``[iova, iova + size)``
        and, unless IOMMU_DIRTY_NO_CLEAR, make it clean and add it to the gather.

        EINVAL for a size of 0, EOVERFLOW for a wrapping range, ERANGE outside the
        table (``make_range``). Empty entries are skipped. A leaf is dirty if any of
        its items is; it is recorded from ``iova`` if ``iova`` is inside it, else from
        its start, for its item size, or for a contiguous leaf for the items from
        there to the last one's index (``log2_set_mod_max``) or the range's end: one
        item short of the leaf when the range covers it (a kernel wart kept: a 4K leaf
        of the mock's 2K items records 2K). O(tables touched), a vector step per
        table."""
        last = self._make_range(iova, size, "read_and_clear_dirty")
        self._check_range(iova, last, "read_and_clear_dirty")
        self._dirty_level(self.pgtbl._pgd, 0, iova, last, iova, flags, dirty)

    def _dirty_level(self, table: U64Array, depth: int, va: int, last: int, start: int,
                     flags: int, dirty: DirtyRanges) -> None:
        """``__read_and_clear_dirty`` over ``[va, last]`` of one table (``start`` is the
        walk's first IOVA)."""
        pt = self.pgtbl
        fmt = pt.format
        shift = pt._shifts[depth]
        i0 = (va >> shift) & pt._masks[depth]
        end = i0 + ((last >> shift) - (va >> shift)) + 1  # pts->end_index
        entries = table[i0:end]
        index = np.arange(i0, end, dtype=np.int64)
        leaf = fmt.leaf_mask(entries, depth)
        lg2 = np.zeros(len(entries), dtype=np.int64)
        if self._contig is not None and leaf.any():
            lg2[leaf] = self._contig.contig_lg2s(entries[leaf], depth).astype(np.int64)
        # pt_next_entry jumps over the rest of a contiguous leaf
        visited = (index & ((np.int64(1) << lg2) - 1)) == 0
        visited[0] = True
        base = (va >> shift) - i0  # item number of index 0
        hit = leaf & visited & self._leaf_dirty(table, index, lg2, leaf & visited)
        if hit.any():
            idx = index[hit]
            n = lg2[hit]
            items = np.where(n == 0, 1, np.minimum(idx | ((np.int64(1) << n) - 1), end) - idx)
            iovas = np.maximum((base + idx) << shift, start)
            lengths = items << shift
            clear = not flags & IOMMU_DIRTY_NO_CLEAR
            dirty.record_ranges(iovas, lengths, gather=clear)
            if clear:
                self._make_clean(table, idx, n)
        for t in np.flatnonzero(fmt.table_mask(entries, depth) & visited).tolist():
            lo = max(va, (base + i0 + t) << shift)
            hi = min(last, ((base + i0 + t + 1) << shift) - 1)
            self._dirty_level(pt._deref(int(entries[t])), depth + 1, lo, hi, start, flags,
                              dirty)

    def _leaf_dirty(self, table: U64Array, index: I64Array, lg2: I64Array,
                    want: BoolArray) -> BoolArray:
        """``pt_entry_is_write_dirty`` at each ``want``-ed index: any item of its leaf dirty."""
        fmt = self.pgtbl.format
        out = np.zeros(len(index), dtype=np.bool_)
        if not want.any():
            return out
        whole = fmt.write_dirty_mask(table[:self.pgtbl._per])
        for n in np.unique(lg2[want]).tolist():
            sel = want & (lg2 == n)
            groups: BoolArray = np.any(whole.reshape(-1, 1 << n), axis=1)
            out[sel] = groups[index[sel] >> n]
        return out

    def _make_clean(self, table: U64Array, index: I64Array, lg2: I64Array) -> None:
        """``pt_entry_make_write_clean`` of the leaves at ``index``: every item of each."""
        mask = np.zeros(self.pgtbl._per, dtype=np.bool_)
        for n in np.unique(lg2).tolist():
            heads = index[lg2 == n] & ~np.int64((1 << n) - 1)
            mask[(heads[:, None] + np.arange(1 << n, dtype=np.int64)).ravel()] = True
        whole = table[:self.pgtbl._per]
        self.pgtbl.format.make_write_clean(whole, mask)

    # -- checks -------------------------------------------------------------------------------
    @staticmethod
    def _make_range(iova: int, length: int, what: str) -> int:
        """``make_range_no_check`` for the operation ``what``: the last IOVA (EINVAL for 0
        bytes, EOVERFLOW on wrap)."""
        if not length:
            raise InvalidArgument(f"{what}: length 0")
        last = iova + length - 1
        if last > _U64_MAX:
            raise Overflow(f"{what}: [{iova:#x}, +{length:#x}) wraps past 2^64")
        return last

    def _check_range(self, iova: int, last: int, what: str) -> None:
        """``pt_check_range``: ERANGE outside ``[0, 2^max_vasz_lg2)``."""
        if (iova | last) >> self.max_vasz_lg2:
            raise OutOfRange(f"{what}: [{iova:#x}, {last:#x}] is beyond the table's "
                             f"{self.max_vasz_lg2}-bit IOVA space")
