"""The shared page-table walker: one implementation of map, unmap, walk, dirty.

Written once over a format's hooks (:class:`~.format.PtFormat`), following
io-pgtable-arm.c's algorithms: ``__arm_lpae_map`` (descend, allocate tables,
write a run of leaves that stops at the table page boundary),
``__arm_lpae_unmap`` (a run at the matching level; tables under it freed;
a partial large IOPTE refused), ``__arm_lpae_iopte_walk`` (iova_to_phys,
pgtable_walk, read_and_clear_dirty) and ``__arm_lpae_free_pgtable``.

Tables are arrays of 64-bit entries living in :class:`~iommulab.mem.PhysMem`
(one array per table allocation); a run of entries is handled with numpy
operations, never one Python step per 4K page.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..errors import AlreadyExists, CorruptPageTable, InvalidArgument, OutOfRange
from ..mem import PhysMem
from ..prot import Prot
from .cfg import IoPgtableCfg, IoPgtableFmt, Quirk
from .format import PtFormat, U64Array

__all__ = ["IOMMU_DIRTY_NO_CLEAR", "DirtyRecorder", "GatherLike", "IoPgtable", "PgtableStats"]

#: ``IOMMU_DIRTY_NO_CLEAR``: read dirty bits without clearing them.
IOMMU_DIRTY_NO_CLEAR = 1 << 0


class GatherLike(Protocol):
    """What the page-table code reads from an ``iommu_iotlb_gather``."""

    queued: bool


class DirtyRecorder(Protocol):
    """``struct iommu_dirty_bitmap`` as the page-table code uses it."""

    def record_pages(self, iovas: U64Array, size: int) -> None:
        """``iommu_dirty_bitmap_record(dirty, iova, size)`` for each of ``iovas``."""


@dataclass
class PgtableStats:
    """Lab counters of one table (reports read these; nothing recomputes them)."""

    tables_allocated: int = 0
    tables_freed: int = 0
    table_bytes: int = 0  # bytes of table memory held now (allocation-rounded)
    cache_syncs: int = 0  # dma_sync/dma_map calls for a non-coherent walker
    cache_sync_bytes: int = 0
    warnings: Counter[str] = field(default_factory=Counter)  # WARN()s the kernel would print


@dataclass
class _DirtyWalk:
    addr: int
    end: int
    flags: int
    dirty: DirtyRecorder


class IoPgtable:
    """``struct io_pgtable`` with its ``io_pgtable_ops``; see alloc_io_pgtable_ops."""

    def __init__(self, fmt: IoPgtableFmt, cfg: IoPgtableCfg, pt: PtFormat, mem: PhysMem,
                 cookie: Any) -> None:
        self.fmt = fmt
        self.cfg = cfg
        self.format = pt
        self.mem = mem
        self.cookie = cookie
        self.stats = PgtableStats()
        self._tables: dict[int, U64Array] = {}
        self._attrs: dict[int, int] = {}
        self._no_warn = bool(cfg.quirks & Quirk.NO_WARN)
        self._warned_once: set[str] = set()
        self._levels = pt.levels
        self._last = len(pt.levels) - 1
        self._freed = False
        self.pgd_pa, self._pgd = self._alloc_table(pt.levels[0].table_bytes)

    # -- table memory -------------------------------------------------------------------
    def _alloc_table(self, size: int) -> tuple[int, U64Array]:
        """``__arm_lpae_alloc_pages``: zeroed table memory (ENOMEM on failure)."""
        pa, table = self.mem.alloc_iommu_pages(max(size, 64))
        self._tables[pa] = table
        self.stats.tables_allocated += 1
        self.stats.table_bytes += table.nbytes
        if not self.cfg.coherent_walk:  # dma_map_single(..., DMA_TO_DEVICE)
            self._sync(size)
        return pa, table

    def _free_table_pages(self, pa: int) -> None:
        table = self._tables.pop(pa)
        self.mem.free_iommu_pages(pa)
        self.stats.tables_freed += 1
        self.stats.table_bytes -= table.nbytes

    def _deref(self, pte: int) -> U64Array:
        """``iopte_deref``: the table an entry points at."""
        pa = self.format.table_pa(pte)
        table = self._tables.get(pa)
        if table is None:
            raise CorruptPageTable(f"entry {pte:#018x} points at {pa:#x}, not a page table")
        return table

    def _free_pgtable(self, pte: int, depth: int) -> None:
        """``__arm_lpae_free_pgtable``: free a table and every table under it."""
        pa = self.format.table_pa(pte)
        table = self._deref(pte)
        if depth != self._last:
            entries = table[:self._levels[depth].entries]
            live = entries[entries != 0]
            for sub in live[~self.format.leaf_mask(live, depth)].tolist():
                self._free_pgtable(sub, depth + 1)
        self._free_table_pages(pa)

    def _sync(self, nbytes: int) -> None:
        self.stats.cache_syncs += 1
        self.stats.cache_sync_bytes += nbytes

    def _warn(self, message: str) -> None:
        self.stats.warnings[message] += 1

    def _warn_once(self, message: str) -> None:
        if message not in self._warned_once:
            self._warned_once.add(message)
            self._warn(message)

    def _check_live(self) -> None:
        if self._freed:
            raise InvalidArgument("io-pgtable ops used after free_io_pgtable_ops()")

    # -- map ----------------------------------------------------------------------------------
    def map_pages(self, iova: int, paddr: int, pgsize: int, pgcount: int, prot: int,
                  gfp: int = 0) -> int:
        """``arm_lpae_map_pages``: map up to ``pgcount`` pages; returns bytes mapped.

        Stops at the end of the table page holding the first entry, like the
        kernel; the caller loops. Errors: EINVAL (pgsize not in the bitmap, no
        READ/WRITE), ERANGE (iova or paddr out of range), EEXIST (a leaf is in
        the way), ENOMEM (no table memory); the exception's ``mapped`` is the
        bytes mapped before the failure. O(levels + pgcount).
        """
        self._check_live()
        cfg, pt = self.cfg, self.format
        if not pgsize or (pgsize & cfg.pgsize_bitmap) != pgsize:
            self._warn("map_pages: bad pgsize")
            raise InvalidArgument(f"map_pages: pgsize {pgsize:#x} is not one of the sizes in "
                                  f"pgsize_bitmap {cfg.pgsize_bitmap:#x}")
        if not pt.iova_in_range(iova) or paddr >> cfg.oas:
            self._warn("map_pages: address out of range")
            raise OutOfRange(f"map_pages: iova {iova:#x} / paddr {paddr:#x} outside "
                             f"ias {cfg.ias} / oas {cfg.oas}")
        if not prot & (Prot.READ | Prot.WRITE):
            raise InvalidArgument(f"map_pages: prot {prot:#x} has neither READ nor WRITE")
        attrs = self._attrs.get(prot)
        if attrs is None:
            attrs = self._attrs[prot] = pt.prot_to_attrs(prot)

        table, depth = self._pgd, 0
        while True:  # __arm_lpae_map, one level per iteration
            level = self._levels[depth]
            idx = (iova >> level.shift) & level.index_mask
            if level.block_size == pgsize:
                break
            if depth >= self._last:
                self._warn("map_pages: no level for pgsize")
                raise InvalidArgument(f"map_pages: no level maps pgsize {pgsize:#x}")
            pte = int(table[idx])
            if not pte:
                pa, _ = self._alloc_table(pt.granule)
                pte = pt.make_table(pa)
                if not cfg.coherent_walk:
                    self._sync(8)
                    pte |= pt.sw_sync_bit
                table[idx] = pte
            elif not cfg.coherent_walk and not pte & pt.sw_sync_bit:
                self._sync(8)
            if pt.is_leaf(pte, depth):
                if not self._no_warn:
                    self._warn("map_pages: leaf in the way (unmap first)")
                raise AlreadyExists(f"map_pages: iova {iova:#x} is inside a "
                                    f"{level.block_size:#x} block mapped at level {level.lvl}")
            table = self._deref(pte)
            depth += 1

        per = pt.ptes_per_page
        n = min(pgcount, per - (idx & (per - 1)))  # arm_lpae_max_entries
        run = table[idx:idx + n]
        if run.any():
            self._clear_for_leaves(run, iova, depth)
        pt.fill_leaves(run, attrs, depth, paddr, pgsize)
        if not cfg.coherent_walk:
            self._sync(8 * n)
        return n * pgsize

    def _clear_for_leaves(self, run: U64Array, iova: int, depth: int) -> None:
        """``arm_lpae_init_pte``'s checks: refuse leaves; free tables, in entry order."""
        pt = self.format
        size = self._levels[depth].block_size
        for i in np.flatnonzero(run).tolist():
            pte = int(run[i])
            if pt.is_leaf(pte, depth):
                if not self._no_warn:
                    self._warn("map_pages: leaf in the way (unmap first)")
                raise AlreadyExists(f"map_pages: iova {iova + i * size:#x} is already mapped "
                                    f"({pt.describe(pte, depth)})")
            if pt.is_table(pte, depth):  # replaced by the block: __arm_lpae_unmap of it
                run[i] = 0
                if not self.cfg.coherent_walk:
                    self._sync(8)
                self._tlb_flush_walk(iova + i * size, size)
                self._free_pgtable(pte, depth + 1)

    # -- unmap ------------------------------------------------------------------------------
    def unmap_pages(self, iova: int, pgsize: int, pgcount: int, gather: GatherLike | None = None
                    ) -> int:
        """``arm_lpae_unmap_pages``: bytes unmapped, 0 on failure.

        Unmaps a run at the level of ``pgsize`` up to the table page end or the
        first empty entry; tables in the run are freed (with a walk flush), and
        each leaf is added to ``gather`` unless it is queued. Unmapping part of
        a larger leaf returns 0 and changes nothing (Linux 6.13+). O(levels + pgcount).
        """
        self._check_live()
        cfg, pt = self.cfg, self.format
        if not pgsize or (pgsize & cfg.pgsize_bitmap) != pgsize or not pgcount:
            self._warn("unmap_pages: bad pgsize or pgcount")
            return 0
        if not pt.iova_in_range(iova):
            self._warn("unmap_pages: iova out of range")
            return 0
        table, depth = self._pgd, 0
        while True:  # __arm_lpae_unmap, one level per iteration
            if depth > self._last:
                self._warn("unmap_pages: ran out of page table")
                return 0
            level = self._levels[depth]
            idx = (iova >> level.shift) & level.index_mask
            pte = int(table[idx])
            if not pte:
                if not self._no_warn:
                    self._warn("unmap_pages: unmapping an empty entry")
                return 0
            if level.block_size == pgsize:
                break
            if pt.is_leaf(pte, depth):
                self._warn_once("Unmap of a partial large IOPTE is not allowed")
                return 0
            table = self._deref(pte)
            depth += 1

        per = pt.ptes_per_page
        n = min(pgcount, per - (idx & (per - 1)))
        run = table[idx:idx + n]
        k = n
        if np.count_nonzero(run) != n:
            k = int(np.argmin(run != 0))  # stop at the first empty entry
            if not self._no_warn:
                self._warn("unmap_pages: unmapping an empty entry")
            run = run[:k]
        leaves = pt.leaf_mask(run, depth)
        if not leaves.all():
            for i in np.flatnonzero(~leaves).tolist():  # tables under the run
                sub = int(run[i])
                run[i] = 0
                if not cfg.coherent_walk:
                    self._sync(8)
                self._tlb_flush_walk(iova + i * pgsize, pgsize)
                self._free_pgtable(sub, depth + 1)
        run[:] = 0
        if not cfg.coherent_walk and k:
            self._sync(8 * k)
        if gather is not None and not gather.queued and k and cfg.tlb is not None:
            cfg.tlb.tlb_add_pages(gather, iova, pgsize, k, self.cookie)
        return k * pgsize

    def _tlb_flush_walk(self, iova: int, size: int) -> None:
        if self.cfg.tlb is not None:
            self.cfg.tlb.tlb_flush_walk(iova, size, self.format.granule, self.cookie)

    # -- walks ---------------------------------------------------------------------------------
    def iova_to_phys(self, iova: int) -> int:
        """``arm_lpae_iova_to_phys``: the physical address, or 0 if not mapped. O(levels)."""
        self._check_live()
        pt = self.format
        table, depth = self._pgd, 0
        while True:
            level = self._levels[depth]
            pte = int(table[(iova >> level.shift) & level.index_mask])
            if pt.is_leaf(pte, depth):
                return pt.leaf_oa(pte) | (iova & (level.block_size - 1))
            if not pt.is_table(pte, depth):
                return 0
            table = self._deref(pte)
            depth += 1

    def pgtable_walk(self, iova: int) -> list[int]:
        """``arm_lpae_pgtable_walk``: the descriptor read at each level, top first.

        The walk stops at a leaf or at an entry that is neither leaf nor table
        (which is then the last element). O(levels).
        """
        self._check_live()
        pt = self.format
        out: list[int] = []
        table, depth = self._pgd, 0
        while True:
            level = self._levels[depth]
            pte = int(table[(iova >> level.shift) & level.index_mask])
            out.append(pte)
            if not pt.is_table(pte, depth):
                return out
            table = self._deref(pte)
            depth += 1

    def read_and_clear_dirty(self, iova: int, size: int, flags: int,
                             dirty: DirtyRecorder) -> None:
        """``arm_lpae_read_and_clear_dirty``: record writable-dirty leaves, then clean them.

        Each dirty leaf is recorded whole (a 2M block counts as 2M dirty) and,
        unless ``IOMMU_DIRTY_NO_CLEAR``, made writable-clean again. EINVAL for
        a zero size, a range beyond ias, a format other than ARM_64_LPAE_S1, or
        a hole in the range (leaves before the hole are already processed, as
        in the kernel). No TLB invalidation here; the caller syncs. O(entries)
        in vector steps of one table run.
        """
        self._check_live()
        if not size:
            self._warn("read_and_clear_dirty: zero size")
            raise InvalidArgument("read_and_clear_dirty: size is 0")
        if (iova + size - 1) & ~((1 << self.cfg.ias) - 1):
            self._warn("read_and_clear_dirty: range out of ias")
            raise InvalidArgument(f"read_and_clear_dirty: [{iova:#x}, {iova + size:#x}) is "
                                  f"beyond ias {self.cfg.ias}")
        if self.fmt != IoPgtableFmt.ARM_64_LPAE_S1:
            raise InvalidArgument(f"read_and_clear_dirty: not supported by {self.fmt.name}")
        self._walk_dirty(self._pgd, 0, _DirtyWalk(iova, iova + size, flags, dirty))

    def _walk_dirty(self, table: U64Array, depth: int, w: _DirtyWalk) -> None:
        pt = self.format
        level = self._levels[depth]
        size = level.block_size
        idx = (w.addr >> level.shift) & level.index_mask
        while idx < level.entries and w.addr < w.end:
            n = min(level.entries - idx, -(-(w.end - w.addr) // size))
            run = table[idx:idx + n]
            leaves = pt.leaf_mask(run, depth)
            p = n if leaves.all() else int(np.argmin(leaves))
            if p:
                leaf_run = run[:p]
                hit = pt.write_dirty_mask(leaf_run)
                if hit.any():
                    pos = np.flatnonzero(hit).astype(np.uint64)
                    w.dirty.record_pages(np.uint64(w.addr) + pos * np.uint64(size), size)
                    if not w.flags & IOMMU_DIRTY_NO_CLEAR:
                        pt.make_write_clean(leaf_run, hit)
                w.addr += p * size
                idx += p
            if p < n:
                pte = int(run[p])
                if not pt.is_table(pte, depth):
                    raise InvalidArgument(f"read_and_clear_dirty: hole at iova {w.addr:#x}")
                self._walk_dirty(self._deref(pte), depth + 1, w)
                idx += 1

    # -- teardown ----------------------------------------------------------------------------
    def free(self) -> None:
        """``free_io_pgtable_ops``: flush the whole TLB, then free every table."""
        self._check_live()
        if self.cfg.tlb is not None:
            self.cfg.tlb.tlb_flush_all(self.cookie)
        self._free_pgtable(self.format.make_table(self.pgd_pa), 0)
        self._freed = True

    # -- lab views -------------------------------------------------------------------------------
    def describe(self, pte: int, level: int) -> str:
        """Decode a descriptor read at the format's level number ``level``."""
        depth = level - self._levels[0].lvl
        return self.format.describe(pte, depth)

    def leaf_histogram(self) -> dict[int, int]:
        """Lab: number of leaf entries by mapping size, over the whole table."""
        counts: Counter[int] = Counter()
        for depth, table in self._iter_tables():
            entries = table[:self._levels[depth].entries]
            leaves = int(np.count_nonzero(self.format.leaf_mask(entries, depth)))
            if leaves:
                counts[self._levels[depth].block_size] += leaves
        return dict(sorted(counts.items()))

    def table_histogram(self) -> dict[int, int]:
        """Lab: number of tables by format level number."""
        counts: Counter[int] = Counter(self._levels[d].lvl for d, _ in self._iter_tables())
        return dict(sorted(counts.items()))

    def iter_entries(self) -> list[tuple[int, int, bool, int]]:
        """Lab: every non-empty entry as ``(iova, block_size, is_leaf, pte)``, in iova order.

        Walks the whole table (O(entries)); for reports and tests, not fast paths.
        """
        out: list[tuple[int, int, bool, int]] = []
        pt = self.format

        def visit(table: U64Array, depth: int, base: int) -> None:
            level = self._levels[depth]
            entries = table[:level.entries]
            for idx in np.flatnonzero(entries).tolist():
                pte = int(entries[idx])
                iova = base | idx << level.shift
                leaf = pt.is_leaf(pte, depth)
                out.append((iova, level.block_size, leaf, pte))
                if pt.is_table(pte, depth):
                    visit(self._deref(pte), depth + 1, iova)

        visit(self._pgd, 0, 0)
        return out

    def _iter_tables(self) -> list[tuple[int, U64Array]]:
        out: list[tuple[int, U64Array]] = []
        stack = [(0, self._pgd)]
        while stack:
            depth, table = stack.pop()
            out.append((depth, table))
            if depth != self._last:
                entries = table[:self._levels[depth].entries]
                subs = entries[self.format.table_mask(entries, depth)]
                stack.extend((depth + 1, self._deref(p)) for p in subs.tolist())
        return out

    def _check(self) -> None:
        """O(entries): every table reached once, entries well formed, nothing leaked."""
        pt = self.format
        seen: set[int] = set()
        stack = [(self.pgd_pa, 0)]
        while stack:
            pa, depth = stack.pop()
            assert pa not in seen, f"table {pa:#x} reached twice"
            seen.add(pa)
            level = self._levels[depth]
            entries = self._tables[pa][:level.entries]
            live = entries[entries != 0]
            leaves = pt.leaf_mask(live, depth)
            tables = pt.table_mask(live, depth)
            bad = live[~(leaves | tables)]
            assert not len(bad), f"malformed entry {int(bad[0]):#x} at level {level.lvl}"
            for pte in live[leaves].tolist():
                oa = pt.leaf_oa(pte)
                assert oa % level.block_size == 0, f"leaf OA {oa:#x} not block aligned"
                assert oa >> self.cfg.oas == 0, f"leaf OA {oa:#x} beyond oas"
            stack.extend((pt.table_pa(p), depth + 1) for p in live[tables].tolist())
        assert seen == set(self._tables), (
            f"{len(set(self._tables) - seen)} unreachable tables (leaked)")
        assert self.stats.table_bytes == sum(t.nbytes for t in self._tables.values())
