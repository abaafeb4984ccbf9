"""The shared page-table walker: one implementation of map, unmap, walk, dirty.

Written once over a format's hooks (:class:`~.format.PtFormat`), following
io-pgtable-arm.c's algorithms: ``__arm_lpae_map`` (descend, allocate tables,
write a run of leaves that stops at the table page boundary),
``__arm_lpae_unmap`` (a run at the matching level; tables under it freed;
a partial large IOPTE refused or given to the format's ``split_blk_unmap``),
``__arm_lpae_iopte_walk`` (iova_to_phys, pgtable_walk, read_and_clear_dirty)
and ``__arm_lpae_free_pgtable``.

Tables are arrays of 64-bit entries living in :class:`~iommulab.mem.PhysMem`
(one array per table allocation); a run of entries is handled with numpy
operations, never one Python step per 4K page.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import numpy as np

from ..errors import AlreadyExists, CorruptPageTable, InvalidArgument, KernelError, OutOfRange
from ..kernel import LINUX_7_0
from ..mem import PhysMem
from ..prot import Prot
from .cfg import IoPgtableCfg, IoPgtableFmt, Quirk
from .format import LEAF, TABLE, BoolArray, PtFormat, SplitBlkUnmap, U64Array
from .reshape import StepHook, merge_pages, split_blocks

__all__ = ["IOMMU_DIRTY_NO_CLEAR", "DirtyRecorder", "GatherLike", "IoPgtable", "PgtableStats"]

#: Lab switch: new tables' default for :attr:`IoPgtable.bulk_passes` (False: every
#: operation takes the per-table-page path, the reference the bulk passes are tested
#: against).
BULK_PASSES = True

#: Lab: entries one vector step of the bulk dirty scan works on (temporaries under
#: glibc's 128 KiB mmap threshold are reused memory, not freshly faulted pages).
_SCAN_STEP_ENTRIES = 1 << 14

#: ``IOMMU_DIRTY_NO_CLEAR``: read dirty bits without clearing them.
IOMMU_DIRTY_NO_CLEAR = 1 << 0
_READ_WRITE = int(Prot.READ | Prot.WRITE)  # a plain int: IntFlag arithmetic is slow


class GatherLike(Protocol):
    """What the page-table code reads from an ``iommu_iotlb_gather``."""

    queued: bool


class DirtyRecorder(Protocol):
    """``struct iommu_dirty_bitmap`` as the page-table code uses it."""

    def record_run(self, iova: int, size: int, hit: BoolArray) -> None:
        """``iommu_dirty_bitmap_record(dirty, iova + i * size, size)`` for each ``hit[i]``."""


@dataclass
class PgtableStats:
    """Lab counters of one table (reports read these; nothing recomputes them)."""

    map_pages: int = 0  # calls that reached the table walk
    unmap_pages: int = 0
    tables_allocated: int = 0
    tables_freed: int = 0
    table_bytes: int = 0  # bytes of table memory held now (allocation-rounded)
    blocks_split: int = 0  # lab: split_blocks / merge_pages
    blocks_merged: int = 0
    bbm_breaks: int = 0  # entries made invalid for a break-before-make window
    cache_syncs: int = 0  # dma_sync/dma_map calls for a non-coherent walker
    cache_sync_bytes: int = 0
    warnings: Counter[str] = field(default_factory=Counter)  # WARN()s the kernel would print


@dataclass
class _DirtyWalk:
    addr: int
    end: int
    flags: int
    dirty: DirtyRecorder


def _merge_runs(s: U64Array, o: U64Array, n: U64Array) -> tuple[U64Array, U64Array, U64Array]:
    """Runs ``(start, oa, length)`` sorted by start, merged while both addresses
    continue. O(len) vector steps."""
    if len(s) < 2:
        return s, o, n
    brk = np.flatnonzero((s[1:] != s[:-1] + n[:-1]) | (o[1:] != o[:-1] + n[:-1])) + 1
    first = np.concatenate(([0], brk))
    ends = np.concatenate((brk, [len(s)]))
    csum = np.concatenate((np.zeros(1, dtype=np.uint64), np.cumsum(n, dtype=np.uint64)))
    return s[first], o[first], cast(U64Array, csum[ends] - csum[first])


class IoPgtable:
    """``struct io_pgtable`` with its ``io_pgtable_ops``; see alloc_io_pgtable_ops."""

    def __init__(self, fmt: IoPgtableFmt, cfg: IoPgtableCfg, pt: PtFormat, mem: PhysMem,
                 cookie: Any) -> None:
        self.fmt = fmt
        self.cfg = cfg
        self.mem = mem
        self.cookie = cookie
        self.stats = PgtableStats()
        self._tables: dict[int, U64Array] = {}  # by pte & table_key_mask of an entry to it
        self._attrs: dict[int, int] = {}
        self._no_warn = bool(cfg.quirks & Quirk.NO_WARN)
        self._warned_once: set[str] = set()
        self._freed = False
        #: Lab: whole table pages in one vector step (map runs, dirty scans); the
        #: results are the per-table-page code's, which False forces.
        self.bulk_passes = BULK_PASSES
        # Lab memo: last-level tables by iova >> (shift of the level above). A
        # path of tables only changes when a table is freed, which clears it;
        # single-page maps, unmaps and lookups then skip the upper levels.
        self._leaf_tables: dict[int, U64Array] = {}
        # Lab: tables allocated together, by the key of the first: (their entries as
        # the rows of one array, their keys). Entries go when the first table is freed.
        self._blocks: dict[int, tuple[U64Array, U64Array]] = {}
        self._set_format(pt)
        self.pgd_pa, self._pgd = self._alloc_table(pt.levels[0].table_bytes)

    def _set_format(self, pt: PtFormat) -> None:
        """Hot-path data of ``pt``'s geometry, read into locals by the descents."""
        self.format = pt
        self._levels = pt.levels
        self._last = len(pt.levels) - 1
        # Optional format hook for an unmap inside a larger leaf (ARM LPAE under 6.12).
        self._split_blk_unmap: SplitBlkUnmap | None = pt.split_blk_unmap
        self._shifts = tuple(lv.shift for lv in pt.levels)
        self._masks = tuple(lv.index_mask for lv in pt.levels)
        self._sizes = tuple(lv.block_size for lv in pt.levels)
        self._depth_of = {lv.block_size: d for d, lv in enumerate(pt.levels)}
        self._kinds, self._kind_mask, self._key_mask = pt.kinds, pt.kind_mask, pt.table_key_mask
        self._per = pt.ptes_per_page
        self._page_size = self._sizes[-1]
        self._hot = (self._shifts, self._masks, self._kinds, self._kind_mask, self._sizes,
                     self._tables, self._key_mask)
        self._above_last = self._shifts[-2] if len(pt.levels) > 1 else 64
        self._leaf_tables.clear()

    def replace_root(self, pt: PtFormat, pgd_pa: int) -> None:
        """VT-d hook: make the table at ``pgd_pa`` the root of a table of ``pt``'s
        geometry (6.12's ``prepare_domain_attach_device`` knocks out top levels)."""
        self._pgd = self._tables[self._key(pgd_pa)]
        self.pgd_pa = pgd_pa
        self._set_format(pt)

    # -- table memory -------------------------------------------------------------------
    def _key(self, table_pa: int) -> int:
        return self.format.make_table(table_pa) & self._key_mask

    def _keys(self, table_pas: list[int]) -> list[int]:
        """:meth:`_key` of many tables at once."""
        pas = np.array(table_pas, dtype=np.uint64)
        keys: list[int] = (self.format.make_tables(pas) & np.uint64(self._key_mask)).tolist()
        return keys

    def _alloc_table(self, size: int) -> tuple[int, U64Array]:
        """``__arm_lpae_alloc_pages``: zeroed table memory (ENOMEM on failure)."""
        pa, table = self.mem.alloc_iommu_pages(max(size, 64))
        self._tables[self._key(pa)] = table
        self.stats.tables_allocated += 1
        self.stats.table_bytes += table.nbytes
        if not self.cfg.coherent_walk:  # dma_map_single(..., DMA_TO_DEVICE)
            self._sync(size)
        return pa, table

    def _alloc_tables(self, count: int, pfns: list[int] | None = None,
                      run: int = 0) -> tuple[list[int], U64Array]:
        """``count`` granule-sized tables at once; their entries as the rows of one array.

        ``pfns``: their frames, taken before by ``PhysMem.alloc_iommu_frames`` (the
        allocation points were there), else taken here. ``run``: record every ``run``
        rows as a bulk allocation of their own in :attr:`_blocks` (the children of one
        table above, which scans then find in place), else the whole array."""
        size = self.format.granule
        if pfns is None:
            pfns = self.mem.alloc_iommu_frames(size, count)
        pas, rows = self.mem.attach_iommu_pages(size, pfns)
        tables = self._tables
        keys = self._keys(pas)
        for key, row in zip(keys, rows, strict=True):
            tables[key] = row
        if count > 1:  # lab: scans of these tables can work on ``rows`` in place
            keyed = np.array(keys, dtype=np.uint64)
            if not run or run >= count:  # one record: no view objects to hold
                self._blocks[keys[0]] = rows, keyed
            else:
                for i in range(0, count, run):
                    self._blocks[keys[i]] = rows[i:i + run], keyed[i:i + run]
        self.stats.tables_allocated += count
        self.stats.table_bytes += rows.nbytes
        if not self.cfg.coherent_walk:
            for _ in range(count):
                self._sync(size)
        return pas, rows

    def _free_tables(self, pas: list[int]) -> None:
        """:meth:`_free_table_pages` for many tables at once."""
        if not pas:
            return
        self._leaf_tables.clear()
        tables = self._tables
        freed = 0
        blocks = self._blocks
        for key in self._keys(pas):
            freed += tables.pop(key).nbytes
            blocks.pop(key, None)
        self.mem.free_iommu_pages_bulk(pas)
        self.stats.tables_freed += len(pas)
        self.stats.table_bytes -= freed

    def _free_table_pages(self, pa: int) -> None:
        self._leaf_tables.clear()
        key = self._key(pa)
        table = self._tables.pop(key)
        self._blocks.pop(key, None)
        self.mem.free_iommu_pages(pa)
        self.stats.tables_freed += 1
        self.stats.table_bytes -= table.nbytes

    def _deref(self, pte: int) -> U64Array:
        """``iopte_deref``: the table an entry points at."""
        table = self._tables.get(pte & self._key_mask)
        if table is None:
            raise CorruptPageTable(f"entry {pte:#018x} points at "
                                   f"{self.format.table_pa(pte):#x}, not a page table")
        return table

    def _free_pgtable(self, pte: int, depth: int, pa: int | None = None) -> None:
        """``__arm_lpae_free_pgtable``: free a table and every table under it.

        ``pa`` is given for the PGD, which no descriptor points at (a 52-bit
        64K-granule PGD of 8K need not be 64K aligned, so packing its address
        into a descriptor would lose bits 15:12).
        """
        if pa is None:
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

    def _use_after_free(self) -> InvalidArgument:
        return InvalidArgument("io-pgtable ops used after free_io_pgtable_ops()")

    # -- map ----------------------------------------------------------------------------------
    def map_pages(self, iova: int, paddr: int, pgsize: int, pgcount: int, prot: int,
                  gfp: int = 0) -> int:
        """``arm_lpae_map_pages``: map up to ``pgcount`` pages; returns bytes mapped.

        Stops at the end of the table page holding the first entry, like the
        kernel; the caller loops (:meth:`map_pages_run` is that loop done in one
        call). Errors: EINVAL (pgsize not in the bitmap, no READ/WRITE), ERANGE (iova or
        paddr out of range), EEXIST (a leaf is in the way), ENOMEM (no table memory);
        the exception's ``mapped`` is the bytes mapped before the failure. ``gfp`` is
        accepted as in the kernel and has no effect (the model has no allocation
        contexts). O(levels + pgcount).
        """
        return self._map(iova, paddr, pgsize, pgcount, prot, loop=False)

    def map_pages_run(self, iova: int, paddr: int, pgsize: int, pgcount: int, prot: int,
                      gfp: int = 0) -> int:
        """Model-only: the core's ``__iommu_map`` loop over :meth:`map_pages` calls, done in
        one call where :attr:`bulk_passes` lets a run of last-level pages that crosses
        table pages go through :meth:`_map_run`; otherwise one :meth:`map_pages` call.

        Returns the bytes mapped (the whole run when the bulk path took it); errors and
        the exception's ``mapped`` are those of the calls the loop would make.
        """
        return self._map(iova, paddr, pgsize, pgcount, prot, loop=True)

    def _map(self, iova: int, paddr: int, pgsize: int, pgcount: int, prot: int, *,
             loop: bool) -> int:
        if self._freed:
            raise self._use_after_free()
        cfg, pt = self.cfg, self.format
        if not pgsize or (pgsize & cfg.pgsize_bitmap) != pgsize:
            self._warn("map_pages: bad pgsize")
            raise InvalidArgument(f"map_pages: pgsize {pgsize:#x} is not one of the sizes in "
                                  f"pgsize_bitmap {cfg.pgsize_bitmap:#x}")
        if iova >> pt.ia_shift != pt.ia_ext or paddr >> cfg.oas:
            self._warn("map_pages: address out of range")
            raise OutOfRange(f"map_pages: iova {iova:#x} / paddr {paddr:#x} outside "
                             f"ias {cfg.ias} / oas {cfg.oas}")
        self.stats.map_pages += 1
        attrs = self._attrs.get(prot)  # cached per prot value; only valid prots are cached
        if attrs is None:
            if not int(prot) & _READ_WRITE:
                raise InvalidArgument(f"map_pages: prot {prot:#x} has neither READ nor WRITE")
            attrs = self._attrs[prot] = pt.prot_to_attrs(int(prot))

        depth = self._depth_of.get(pgsize, -1)
        per = self._per
        if loop and depth == self._last and self.bulk_passes and depth and (
                pgcount > per - ((iova >> self._shifts[depth]) & (per - 1))):
            self.stats.map_pages -= 1  # each table page's step below counts itself
            return self._map_run(iova, paddr, pgsize, pgcount, prot, attrs)
        table = self._leaf_tables.get(iova >> self._above_last) if depth == self._last else None
        if table is None:
            table = self._map_descend(iova, pgsize, depth)
        idx = (iova >> self._shifts[depth]) & self._masks[depth]
        n = per - (idx & (per - 1))  # arm_lpae_max_entries
        if pgcount < n:
            n = pgcount
        if n == 1 and not table.item(idx):
            table[idx] = pt.leaf_value(attrs, depth, paddr)
        elif n:
            leaves = table[idx:idx + n]
            if leaves.any():
                self._clear_for_leaves(leaves, iova, depth)
            pt.fill_leaves(leaves, attrs, depth, paddr, pgsize)
        if not cfg.coherent_walk:
            self._sync(8 * n)
        return n * pgsize

    def _map_run(self, iova: int, paddr: int, pgsize: int, pgcount: int, prot: int,
                 attrs: int) -> int:
        """Model-only: the core's ``__iommu_map`` loop of ``arm_lpae_map_pages`` calls over
        a run of last-level pages that crosses table pages, finished here.

        The kernel maps one table page per call and the core calls again; here whole
        new table pages go ``k`` at a time through :meth:`_map_full_tables` and the
        others (head, tail, tables that exist, an IOVA out of range) through
        :meth:`map_pages` one table page at a time. Tables, entries, allocations (order
        and fail-nth points) and counters (``stats.map_pages`` once per table page) are
        those of the calls; the return is the whole run, and an error's ``mapped``
        counts the earlier table pages too.
        O(tables / 512 + pgcount / vector width).
        """
        per, shift = self._per, self._shifts[self._last]
        done = 0
        try:
            while done < pgcount:
                va, pa, left = iova + done * pgsize, paddr + done * pgsize, pgcount - done
                if not (va >> shift) & (per - 1) and left >= per and (
                        va >> self.format.ia_shift == self.format.ia_ext):  # else ERANGE below
                    self.stats.map_pages += 1  # a failing descent was a call too
                    k = self._map_full_tables(va, pa, pgsize, left // per, attrs)
                    self.stats.map_pages += k - 1
                    if k:
                        done += k * per
                        continue
                n = per - ((va >> shift) & (per - 1))
                done += self.map_pages(va, pa, pgsize, min(n, left), prot) // pgsize
        except KernelError as err:
            err.mapped += done * pgsize
            raise
        return done * pgsize

    def _map_full_tables(self, iova: int, paddr: int, pgsize: int, ntables: int,
                         attrs: int) -> int:
        """Model-only bulk of ``__arm_lpae_map`` calls that each find an empty entry at
        the level above the leaves, allocate a table there and fill all of it: up to
        ``ntables`` of them, stopping at the end of the upper table or at an entry in
        use. Tables come from one bulk allocation as the rows of one array, filled by
        :meth:`~.format.PtFormat.fill_leaf_rows` in one vector step. Returns the tables
        mapped; 0 when the per-call path must do it (non-coherent walker, whose syncs
        are counted per call; an armed fail-nth; too few free frames; no empty entry).
        The descent above is ``__arm_lpae_map``'s (it may allocate, or raise EEXIST).
        """
        if not self.cfg.coherent_walk:
            return 0
        up = self._last - 1
        parent = self._map_descend(iova, pgsize, up)
        j = (iova >> self._shifts[up]) & self._masks[up]
        got = self._new_tables_at(parent[j:min(j + ntables, self._levels[up].entries)])
        if got is None:
            return 0
        pas, rows = got
        pt = self.format
        pt.fill_leaf_rows(rows, attrs, self._last, paddr, pgsize)
        parent[j:j + len(pas)] = np.array([pt.make_table(pa, up) for pa in pas],
                                          dtype=np.uint64)
        return len(pas)

    def _new_tables_at(self, slots: U64Array) -> tuple[list[int], U64Array] | None:
        """Model-only, for the bulk maps of each table code (this walker, VT-d's
        ``__domain_mapping``, generic_pt's ``__map_range``): granule tables for the
        leading empty entries of ``slots``, from one bulk allocation, as the rows of
        one array (the caller fills them and points the entries at them). None where
        the one-table-at-a-time path must run: no empty entry, an armed fail-nth (whose
        failure must land between tables), or fewer free frames than tables."""
        used = np.flatnonzero(slots)
        k = int(used[0]) if len(used) else len(slots)
        mem = self.mem
        if not k or mem.fail_nth.armed or mem.frames.free_frames < k:
            return None
        return self._alloc_tables(k)

    def _map_descend(self, iova: int, pgsize: int, target: int) -> U64Array:
        """``__arm_lpae_map`` above the leaf level: the table at depth ``target``.

        Installs missing tables; a size with no level (target -1) descends to
        the last level, allocating on the way, and fails there as the kernel does.
        """
        pt = self.format
        shifts, masks, kinds, kmask = self._shifts, self._masks, self._kinds, self._kind_mask
        tables, key_mask = self._tables, self._key_mask
        coherent = self.cfg.coherent_walk
        table, depth = self._pgd, 0
        while depth != target:
            if depth >= self._last:
                self._warn("map_pages: no level for pgsize")
                raise InvalidArgument(f"map_pages: no level maps pgsize {pgsize:#x}")
            idx = (iova >> shifts[depth]) & masks[depth]
            pte = table.item(idx)
            if not pte:
                pa, _ = self._alloc_table(pt.granule)
                pte = pt.make_table(pa, depth)
                if not coherent:
                    self._sync(8)
                    pte |= pt.sw_sync_bit
                table[idx] = pte
            elif not coherent and not pte & pt.sw_sync_bit:
                self._sync(8)
            if kinds[depth][pte & kmask] == LEAF:
                if not self._no_warn:
                    self._warn("map_pages: leaf in the way (unmap first)")
                raise AlreadyExists(f"map_pages: iova {iova:#x} is inside a "
                                    f"{self._sizes[depth]:#x} block mapped at level "
                                    f"{self._levels[depth].lvl}")
            next_table = tables.get(pte & key_mask)
            table = next_table if next_table is not None else self._deref(pte)
            depth += 1
            if depth == self._last:
                self._leaf_tables[iova >> self._above_last] = table
        return table

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
        a larger leaf returns 0 and changes nothing (Linux 6.13+), or is the
        format's ``split_blk_unmap`` (ARM LPAE under 6.12). O(levels + pgcount).
        """
        if self._freed:
            raise self._use_after_free()
        cfg, pt = self.cfg, self.format
        if not pgsize or (pgsize & cfg.pgsize_bitmap) != pgsize or not pgcount:
            self._warn("unmap_pages: bad pgsize or pgcount")
            return 0
        if iova >> pt.ia_shift != pt.ia_ext:
            self._warn("unmap_pages: iova out of range")
            return 0
        self.stats.unmap_pages += 1
        table, depth = self._pgd, 0
        if pgsize == self._page_size and self._last:
            cached = self._leaf_tables.get(iova >> self._above_last)
            if cached is not None:
                table, depth = cached, self._last
        shifts, masks, kinds, kmask, sizes, tables, key_mask = self._hot
        while True:  # __arm_lpae_unmap, one level per iteration
            if depth > self._last:
                self._warn("unmap_pages: ran out of page table")
                return 0
            idx = (iova >> shifts[depth]) & masks[depth]
            pte = table.item(idx)
            if not pte:
                if not self._no_warn:
                    self._warn("unmap_pages: unmapping an empty entry")
                return 0
            kind = kinds[depth][pte & kmask]
            if sizes[depth] == pgsize:
                break
            if kind == LEAF:
                if self._split_blk_unmap is None:
                    self._warn_once("Unmap of a partial large IOPTE is not allowed")
                    return 0
                done = self._split_blk_unmap(self, table, idx, depth, iova, pgsize, pgcount,
                                             gather)
                if done is not None:
                    return done
                pte = table.item(idx)  # the table that replaced the block
            next_table = tables.get(pte & key_mask)
            table = next_table if next_table is not None else self._deref(pte)
            depth += 1
            if depth == self._last:  # lab memo, as the map descent and iova_to_phys
                self._leaf_tables[iova >> self._above_last] = table

        per = self._per
        n = per - (idx & (per - 1))  # arm_lpae_max_entries
        if pgcount < n:
            n = pgcount
        if n == 1 and kind == LEAF:
            table[idx] = 0
            k = 1
        else:
            k = self._unmap_run(table[idx:idx + n], iova, pgsize, depth)
        if not cfg.coherent_walk and k:
            self._sync(8 * k)
        if gather is not None and not gather.queued and k and cfg.tlb is not None:
            cfg.tlb.tlb_add_pages(gather, iova, pgsize, k, self.cookie)
        return k * pgsize

    def _unmap_run(self, run: U64Array, iova: int, pgsize: int, depth: int) -> int:
        """Clear a run up to its first empty entry, freeing tables in it; returns entries."""
        n = k = len(run)
        if np.count_nonzero(run) != n:
            k = int(np.argmin(run != 0))  # stop at the first empty entry
            if not self._no_warn:
                self._warn("unmap_pages: unmapping an empty entry")
            run = run[:k]
        leaves = self.format.leaf_mask(run, depth)
        if not leaves.all():
            for i in np.flatnonzero(~leaves).tolist():  # tables under the run
                sub = int(run[i])
                run[i] = 0
                if not self.cfg.coherent_walk:
                    self._sync(8)
                self._tlb_flush_walk(iova + i * pgsize, pgsize)
                self._free_pgtable(sub, depth + 1)
        run[:] = 0
        return k

    def _tlb_flush_walk(self, iova: int, size: int) -> None:
        if self.cfg.tlb is not None:
            self.cfg.tlb.tlb_flush_walk(iova, size, self.format.granule, self.cookie)

    # -- walks ---------------------------------------------------------------------------------
    def iova_to_phys(self, iova: int) -> int:
        """``arm_lpae_iova_to_phys``: the physical address, or 0 if not mapped. O(levels)."""
        if self._freed:
            raise self._use_after_free()
        table, depth = self._pgd, 0
        cached = self._leaf_tables.get(iova >> self._above_last)
        if cached is not None:
            table, depth = cached, self._last
        shifts, masks, kinds, kmask, _, tables, key_mask = self._hot
        while True:
            pte = table.item((iova >> shifts[depth]) & masks[depth])
            kind = kinds[depth][pte & kmask]
            if kind == LEAF:
                return self.format.leaf_oa(pte) | (iova & (self._sizes[depth] - 1))
            if kind != TABLE:
                return 0
            next_table = tables.get(pte & key_mask)
            table = next_table if next_table is not None else self._deref(pte)
            depth += 1
            if depth == self._last:  # lab memo: bulk maps leave it empty
                self._leaf_tables[iova >> self._above_last] = table

    def pgtable_walk(self, iova: int) -> list[int]:
        """``arm_lpae_pgtable_walk``: the descriptor read at each level, top first.

        The walk stops at a leaf or at an entry that is neither leaf nor table
        (which is then the last element). O(levels).
        """
        if self._freed:
            raise self._use_after_free()
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
        if self._freed:
            raise self._use_after_free()
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
        """``__arm_lpae_iopte_walk`` with ``visit_dirty``, by runs of leaves.

        The walk cursor ``w.addr`` advances exactly as the kernel's
        ``walk_data->addr`` does (by each visited leaf's size), so a walk that
        starts inside a block behaves as the kernel's does.
        """
        pt = self.format
        level = self._levels[depth]
        size = level.block_size
        idx = (w.addr >> level.shift) & level.index_mask
        if idx >= level.entries or w.addr >= w.end:
            return
        seg = table[idx:level.entries]
        stops = np.flatnonzero(~pt.leaf_mask(seg, depth)).tolist()  # tables and holes
        stops.append(len(seg))
        clear = not w.flags & IOMMU_DIRTY_NO_CLEAR
        bulk = self.bulk_passes and depth == self._last - 1
        pos = si = 0
        while True:
            stop = stops[si]
            if stop > pos:
                n = min(stop - pos, -(-(w.end - w.addr) // size))
                run = seg[pos:pos + n]
                hit = pt.write_dirty_mask(run)
                if hit.any():
                    w.dirty.record_run(w.addr, size, hit)
                    if clear:
                        pt.make_write_clean(run, hit)
                w.addr += n * size
                if w.addr >= w.end:
                    return
            if stop == len(seg):
                return
            pte = seg.item(stop)
            if not pt.is_table(pte, depth):
                if self.cfg.kernel < LINUX_7_0:  # 6.12: WARN_ON(!iopte_table(pte, lvl))
                    self._warn("read_and_clear_dirty: hole")
                raise InvalidArgument(f"read_and_clear_dirty: hole at iova {w.addr:#x}")
            m = self._dirty_tables(seg, stop, depth, w, clear) if bulk else 0
            if not m:
                self._walk_dirty(self._deref(pte), depth + 1, w)
                m = 1
            if w.addr >= w.end:
                return
            pos = stop + m
            si += m  # the m entries were consecutive tables, each one of the stops

    def _dirty_tables(self, seg: U64Array, stop: int, depth: int, w: _DirtyWalk,
                      clear: bool) -> int:
        """Model-only bulk of ``__arm_lpae_iopte_walk``'s descent into the consecutive
        tables at ``seg[stop:]`` (depth ``depth``, the level above the leaves) that the
        walk covers whole and that hold only leaves: their entries, as the rows of one
        2-D array (the rows of their bulk allocation, in place, when they are that in
        order; else gathered copies of up to a step, written back where cleared), get
        ``visit_dirty``'s test (``iopte_writeable_dirty``) and clear
        (``iopte_set_writeable_clean``) a step of ``_SCAN_STEP_ENTRIES`` entries at a
        time, and each step's dirty leaves go to one ``record_run`` (the same records
        and gather widening as one per table).
        Stops before the first table with a hole or that the walk covers in part (the
        per-table walk then does it, raising where the kernel does); returns the tables
        done. O(tables) Python steps of a dict look-up, the rest vector work.
        """
        size = self._sizes[depth]
        if w.addr & (size - 1):  # a walk cursor inside a block (started mid-leaf)
            return 0
        limit = min(len(seg) - stop, (w.end - w.addr) // size)
        if limit <= 0:
            return 0
        pt = self.format
        tabs = pt.table_mask(seg[stop:stop + limit], depth)
        count = limit if tabs.all() else int(np.argmin(tabs))
        if not count:
            return 0
        last = depth + 1
        entries = self._levels[last].entries
        step = max(1, _SCAN_STEP_ENTRIES // entries)
        rows, m = self._rows_in_place(seg[stop:stop + count], entries)
        tables: list[U64Array] | None = None
        if not m:  # not one bulk allocation's rows in order: gather copies
            m = min(count, step)
            tables = [self._deref(pte) for pte in seg[stop:stop + m].tolist()]
            rows = np.stack([t[:entries] for t in tables])
        done = 0
        while done < m:  # a step of tables at a time: small temporaries
            part = rows[done:done + step]
            full = pt.leaf_mask(part, last).all(axis=1)
            k = len(part) if full.all() else int(np.argmin(full))
            part = part[:k]
            hit = pt.write_dirty_mask(part)
            if hit.any():
                w.dirty.record_run(w.addr + done * size, self._sizes[last], hit.reshape(-1))
                if clear:
                    pt.make_write_clean(part, hit)
                    if tables is not None:  # write the gathered copies back
                        for i in np.flatnonzero(hit.any(axis=1)).tolist():
                            tables[done + i][:entries] = part[i]
            done += k
            if k < step:
                break
        w.addr += done * size
        return done

    def _rows_in_place(self, ptes: U64Array, entries: int) -> tuple[U64Array, int]:
        """Lab: the tables ``ptes`` point at, from the first, as a view of the rows of
        the one bulk allocation (:meth:`_alloc_tables`) they are consecutive rows of,
        and how many; ``(empty, 0)`` when the first is not such a row. A table freed
        and allocated again is another array's row, which the base check sees."""
        blk = self._blocks.get(ptes.item(0) & self._key_mask)
        if blk is None:
            return ptes[:0], 0
        rows, keys = blk
        n = min(len(ptes), len(keys))
        owner = rows.base if rows.base is not None else rows
        tables = self._tables
        if not np.array_equal(keys[:n], ptes[:n] & np.uint64(self._key_mask)) or any(
                (t := tables.get(k)) is None or t.base is not owner
                for k in keys[:n].tolist()):
            return ptes[:0], 0
        return rows[:n, :entries], n

    # -- lab: split and merge ------------------------------------------------------------------
    def split_blocks(self, iova: int, size: int, granule: int | None = None, *,
                     bbm_level: int = 0, on_step: StepHook | None = None) -> int:
        """Lab: split blocks in a range into ``granule`` entries (see :mod:`.reshape`)."""
        return split_blocks(self, iova, size, granule, bbm_level=bbm_level, on_step=on_step)

    def merge_pages(self, iova: int, size: int, *, bbm_level: int = 0,
                    on_step: StepHook | None = None, split_only: bool = False) -> int:
        """Lab: merge runs of entries in a range back into blocks (see :mod:`.reshape`)."""
        return merge_pages(self, iova, size, bbm_level=bbm_level, on_step=on_step,
                           split_only=split_only)

    # -- teardown ----------------------------------------------------------------------------
    def free(self) -> None:
        """``free_io_pgtable_ops``: flush the whole TLB, then free every table."""
        if self._freed:
            raise self._use_after_free()
        if self.cfg.tlb is not None:
            self.cfg.tlb.tlb_flush_all(self.cookie)
        self._free_pgtable(self.format.make_table(self.pgd_pa), 0, self.pgd_pa)
        self._freed = True

    # -- lab views -------------------------------------------------------------------------------
    def describe(self, pte: int, level: int) -> str:
        """Decode a descriptor read at the format's level number ``level``."""
        depth = level - self._levels[0].lvl
        return self.format.describe(pte, depth)

    def leaf_histogram(self) -> dict[int, int]:
        """Lab: number of leaf entries by mapping size, over the whole table."""
        counts: Counter[int] = Counter()
        contig = self.format.contig_leaves
        for depth, table in self._iter_tables():
            entries = table[:self._levels[depth].entries]
            leaves = self.format.leaf_mask(entries, depth)
            size = self._levels[depth].block_size
            if contig is None:
                if leaves.any():
                    counts[size] += int(np.count_nonzero(leaves))
                continue
            lg2s, items = np.unique(contig.contig_lg2s(entries[leaves], depth),
                                    return_counts=True)
            for n, k in zip(lg2s.tolist(), items.tolist(), strict=True):
                counts[size << n] += k >> n  # a contiguous leaf is 2^n identical items
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

    def leaf_runs(self, iova: int, size: int) -> list[tuple[int, int, int]]:
        """``(iova, pa, length)`` of the mapped parts of ``[iova, iova + size)``, leaves
        merged while both addresses continue: what probing ``iova_to_phys`` page by page
        finds (``vfio_unmap_unpin``), computed a level at a time instead of per page.

        ``iova`` and ``size`` are in the smallest page size. Each level's tables that
        the range reaches are taken as the rows of one array: O(levels) vector steps
        over the entries of the tables touched, plus a dict look-up per table.
        """
        end = iova + size
        if size <= 0:
            return []
        starts: list[U64Array] = []
        oas: list[U64Array] = []
        lens: list[U64Array] = []
        pt = self.format
        contig = pt.contig_leaves
        lo, hi = np.uint64(iova), np.uint64(end)
        bases = np.zeros(1, dtype=np.uint64)
        tables = [self._pgd]
        for depth, level in enumerate(self._levels):
            bs = np.uint64(level.block_size)
            n = level.entries
            rows = tables[0][None, :n] if len(tables) == 1 else np.stack(
                [t[:n] for t in tables])
            at = bases[:, None] + np.arange(n, dtype=np.uint64)[None, :] * bs
            live = (at < hi) & (at + bs > lo) & (rows != 0)
            leaves = live & pt.leaf_mask(rows, depth)
            if leaves.any():
                blk = at[leaves]
                ptes = rows[leaves]
                oa = pt.leaf_oas(ptes)
                if contig is not None:  # the item's own OA inside its contiguous leaf
                    lg2 = contig.contig_lg2s(ptes, depth)
                    idx = np.nonzero(leaves)[1].astype(np.uint64)
                    oa = cast(U64Array, oa + (idx & ((np.uint64(1) << lg2) - np.uint64(1)))
                              * bs)
                head = np.maximum(blk, lo) - blk  # clip leaves sticking out of the range
                tail = np.minimum(blk + bs, hi)
                # row-major order is IOVA order here: merge this level's runs now
                run = _merge_runs(blk + head, oa + head, tail - blk - head)
                starts.append(run[0])
                oas.append(run[1])
                lens.append(run[2])
            subs = live & pt.table_mask(rows, depth) if depth != self._last else None
            if subs is None or not subs.any():
                break
            bases = at[subs]
            deref = self._deref
            tables = [deref(pte) for pte in rows[subs].tolist()]
        if not starts:
            return []
        s, o, n_ = (np.concatenate(a) for a in (starts, oas, lens))
        order = np.argsort(s, kind="stable")
        s, o, n_ = _merge_runs(s[order], o[order], n_[order])
        return list(zip(s.tolist(), o.tolist(), n_.tolist(), strict=True))

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
        """O(entries): every table reached once, entries well formed, nothing leaked. A
        freed pgtable (still reachable from an object that outlived its domain, such as
        a closed vEVENTQ file's vIOMMU) holds no table at all."""
        if self._freed:
            assert not self._tables and not self._blocks and self.stats.table_bytes == 0, \
                f"freed pgtable still holds {len(self._tables)} tables"
            return
        pt = self.format
        seen: set[int] = set()
        stack = [(self._key(self.pgd_pa), 0)]
        while stack:
            key, depth = stack.pop()
            assert key not in seen, f"table {key:#x} reached twice"
            seen.add(key)
            level = self._levels[depth]
            entries = self._tables[key][:level.entries]
            live = entries[entries != 0]
            leaves = pt.leaf_mask(live, depth)
            tables = pt.table_mask(live, depth)
            bad = live[~(leaves | tables)]
            assert not len(bad), f"malformed entry {int(bad[0]):#x} at level {level.lvl}"
            for pte in live[leaves].tolist():
                oa = pt.leaf_oa(pte)
                assert oa % level.block_size == 0, f"leaf OA {oa:#x} not block aligned"
                assert oa >> self.cfg.oas == 0, f"leaf OA {oa:#x} beyond oas"
            stack.extend((p & self._key_mask, depth + 1) for p in live[tables].tolist())
        assert seen == set(self._tables), (
            f"{len(set(self._tables) - seen)} unreachable tables (leaked)")
        assert self.stats.table_bytes == sum(t.nbytes for t in self._tables.values())
