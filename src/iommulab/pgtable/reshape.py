"""Lab: block split and merge in one pass, at a chosen break-before-make level.

Not in Linux: the remedy discussed with the 2021 SMMUv3 dirty-logging RFC
(Keqian Zhu, "split block mapping when start dirty log tracking and merge
page mapping when stop") that never landed. Here both are single passes of
the shared walker:

- ``split_blocks`` replaces every block in a range by a table of entries of
  the chosen granule with the same attributes, output addresses and dirty
  state; the new pages carry the format's software "split" mark.
- ``merge_pages`` first checks, bottom-up and without changing anything,
  which tables hold runs that can become one block (every entry valid,
  output addresses contiguous and aligned, attributes equal apart from the
  dirty state), then replaces exactly those; a merged block is dirty if any
  of its pages was.

Both follow the Arm architecture's break-before-make rules at the BBM level
asked for. Level 0 writes invalid entries, invalidates, then writes the
replacements, so DMA in that window faults; levels 1 and 2 replace entries
in place (the old and new translations map the same addresses) and
invalidate afterwards. Each call issues one batch of invalidations (one
``tlb_flush_walk`` over the span it changed) and frees replaced tables only
after it. ``on_step(phase)`` is called after the entries were written
(``"write"``) and after the invalidation (``"invalidated"``), so a test or
scenario can run DMA concurrently at those points.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InvalidArgument, KernelError
from .format import U64Array

if TYPE_CHECKING:
    from .walker import IoPgtable

__all__ = ["BBM_LEVELS", "merge_pages", "split_blocks"]

BBM_LEVELS = (0, 1, 2)
StepHook = Callable[[str], None]


@dataclass
class _Change:
    table: U64Array  # live table holding the entry
    idx: int
    iova: int
    size: int  # bytes the entry maps
    new: int  # replacement entry
    old: int  # entry before
    allocated: list[int] = field(default_factory=list)  # split: tables made for it (PAs)


@dataclass(frozen=True)
class _Run:
    """A table whose entries could all be one leaf one level up."""

    oa: int
    attrs: int  # normalised (clean) attributes, split mark included
    dirty: bool


def _check_args(pt: IoPgtable, bbm_level: int) -> None:
    if pt._freed:
        raise pt._use_after_free()
    if bbm_level not in BBM_LEVELS:
        raise InvalidArgument(f"bbm_level must be one of {BBM_LEVELS}, not {bbm_level}")


def _apply(pt: IoPgtable, changes: list[_Change], bbm_level: int,
           on_step: StepHook | None) -> None:
    """Write the replacements under the BBM rules with one invalidation batch."""
    if not changes:
        return
    lo = min(c.iova for c in changes)
    hi = max(c.iova + c.size for c in changes)
    coherent = pt.cfg.coherent_walk
    if bbm_level == 0:
        for c in changes:  # break
            c.table[c.idx] = 0
        pt.stats.bbm_breaks += len(changes)
    else:
        for c in changes:  # replace in place: old and new map the same addresses
            c.table[c.idx] = c.new
    if not coherent:
        pt._sync(8 * len(changes))
    if on_step is not None:
        on_step("write")
    pt._tlb_flush_walk(lo, hi - lo)
    if on_step is not None:
        on_step("invalidated")
    if bbm_level == 0:
        for c in changes:  # make
            c.table[c.idx] = c.new
        if not coherent:
            pt._sync(8 * len(changes))


# -- split ------------------------------------------------------------------------------------
def split_blocks(pt: IoPgtable, iova: int, size: int, granule: int | None = None, *,
                 bbm_level: int = 0, on_step: StepHook | None = None) -> int:
    """Replace every block overlapping ``[iova, iova + size)`` by ``granule`` entries.

    Returns the number of blocks replaced. Table memory for all of them is
    allocated before any entry changes, so ENOMEM leaves the table as it
    was. O(blocks + new entries), in vector steps of one table.
    """
    _check_args(pt, bbm_level)
    granule = granule or pt.cfg.pgsize_bitmap & -pt.cfg.pgsize_bitmap
    target = pt._depth_of.get(granule)
    if target is None or not granule & pt.cfg.pgsize_bitmap:
        raise InvalidArgument(f"split_blocks: granule {granule:#x} is not a page size of "
                              f"pgsize_bitmap {pt.cfg.pgsize_bitmap:#x}")
    if not size:
        return 0
    blocks: list[tuple[U64Array, int, int, int, int]] = []  # table, idx, depth, iova, pte
    _find_blocks(pt, pt._pgd, 0, 0, iova, iova + size, target, blocks)
    changes: list[_Change] = []
    try:
        for table, idx, depth, biova, pte in blocks:
            change = _Change(table, idx, biova, pt._sizes[depth], 0, pte)
            changes.append(change)
            attrs = int(pt.format.leaf_attrs(np.array([pte], dtype=np.uint64))[0])
            attrs |= pt.format.split_mark
            if pt.format.write_dirty_mask(np.array([pte], dtype=np.uint64))[0]:
                attrs = pt.format.with_dirty(attrs)
            sub_pa = _build(pt, depth + 1, target, attrs, pt.format.leaf_oa(pte),
                            change.allocated)
            change.new = pt.format.make_table(sub_pa)
            if not pt.cfg.coherent_walk:
                change.new |= pt.format.sw_sync_bit
    except KernelError:
        for change in changes:
            for pa in change.allocated:
                pt._free_table_pages(pa)
        raise
    _apply(pt, changes, bbm_level, on_step)
    pt.stats.blocks_split += len(changes)
    return len(changes)


def _find_blocks(pt: IoPgtable, table: U64Array, depth: int, base: int, lo: int, hi: int,
                 target: int, out: list[tuple[U64Array, int, int, int, int]]) -> None:
    level = pt._levels[depth]
    first = max((lo - base) >> level.shift, 0)
    last = min(((hi - 1 - base) >> level.shift) + 1, level.entries)
    if first >= last:
        return
    seg = table[first:last]
    leaves = pt.format.leaf_mask(seg, depth)
    for i in np.flatnonzero(leaves).tolist():
        out.append((table, first + i, depth, base + ((first + i) << level.shift), int(seg[i])))
    if depth + 1 < target:
        for i in np.flatnonzero(pt.format.table_mask(seg, depth)).tolist():
            pte = int(seg[i])
            _find_blocks(pt, pt._deref(pte), depth + 1, base + ((first + i) << level.shift),
                         lo, hi, target, out)


def _build(pt: IoPgtable, depth: int, target: int, attrs: int, oa: int,
           allocated: list[int]) -> int:
    """A table at ``depth`` mapping ``oa`` on with ``target``-level entries; returns its PA."""
    pa, table = pt._alloc_table(pt.format.granule)
    allocated.append(pa)
    per = pt._per
    size = pt._sizes[depth]
    if depth == target:
        pt.format.fill_leaves(table[:per], attrs, depth, oa, size)
    else:
        pas = np.array([_build(pt, depth + 1, target, attrs, oa + i * size, allocated)
                        for i in range(per)], dtype=np.uint64)
        table[:per] = pt.format.make_tables(pas)
        if not pt.cfg.coherent_walk:
            table[:per] |= np.uint64(pt.format.sw_sync_bit)
    return pa


# -- merge ------------------------------------------------------------------------------------
def merge_pages(pt: IoPgtable, iova: int, size: int, *, bbm_level: int = 0,
                on_step: StepHook | None = None, split_only: bool = False) -> int:
    """Replace each mergeable table inside ``[iova, iova + size)`` by one block.

    With ``split_only`` a run merges only if all its pages carry the split
    mark (what ``split_blocks`` made), so runs mapped as pages stay pages.
    Returns the number of blocks made. O(entries), in vector steps of one table.
    """
    _check_args(pt, bbm_level)
    if not size:
        return 0
    changes: list[_Change] = []
    freed: list[int] = []
    _, plans = _analyze(pt, pt._pgd, 0, 0, iova, iova + size, split_only)
    for table, idx, depth, biova, run in plans:
        attrs = run.attrs & ~pt.format.split_mark
        if run.dirty:
            attrs = pt.format.with_dirty(attrs)
        old = int(table[idx])
        changes.append(_Change(table, idx, biova, pt._sizes[depth],
                               pt.format.leaf_value(attrs, depth, run.oa), old))
        freed.append(old)
    _apply(pt, changes, bbm_level, on_step)
    for old, change in zip(freed, changes, strict=True):
        depth = pt._depth_of[change.size]
        pt._free_pgtable(old, depth + 1)  # after the invalidation: walkers are done with it
    pt.stats.blocks_merged += len(changes)
    return len(changes)


_Plan = tuple[U64Array, int, int, int, _Run]  # table, idx, depth, iova, the run to merge


def _analyze(pt: IoPgtable, table: U64Array, depth: int, base: int, lo: int, hi: int,
             split_only: bool) -> tuple[_Run | None, list[_Plan]]:
    """Bottom-up: can this whole table become one leaf above, and what merges inside it.

    Returns the table's run (if every entry is, or would be after merging,
    a leaf of this level's size with contiguous OAs and equal attributes)
    and the merges found within it, which the caller drops if it merges the
    whole table instead.
    """
    fmt = pt.format
    level = pt._levels[depth]
    size = level.block_size
    entries = table[:level.entries]
    first = max((lo - base) >> level.shift, 0)
    last = min(((hi - 1 - base) >> level.shift) + 1, level.entries)
    whole = first == 0 and last == level.entries and base >= lo and \
        base + (level.entries << level.shift) <= hi
    leaves = fmt.leaf_mask(entries, depth)
    plans: list[_Plan] = []
    oas = np.zeros(level.entries, dtype=np.uint64)
    attrs = np.zeros(level.entries, dtype=np.uint64)
    known = leaves.copy()  # entries that are (or would be) leaves of this level
    dirty = bool(fmt.write_dirty_mask(entries[leaves]).any())
    oas[leaves] = fmt.leaf_oas(entries[leaves])
    attrs[leaves] = fmt.leaf_attrs(entries[leaves])
    if depth + 1 < len(pt._levels) and first < last:
        mergeable_here = bool(size & pt.cfg.pgsize_bitmap)
        subs = np.flatnonzero(fmt.table_mask(entries[first:last], depth)) + first
        for i in subs.tolist():
            eiova = base + (i << level.shift)
            run, inner = _analyze(pt, pt._deref(int(entries[i])), depth + 1, eiova, lo, hi,
                                  split_only)
            inside = lo <= eiova and eiova + size <= hi
            if run is not None and mergeable_here and inside and not run.oa % size:
                plans.append((table, i, depth, eiova, run))
                known[i] = True
                oas[i], attrs[i] = run.oa, run.attrs
                dirty = dirty or run.dirty
            else:
                plans.extend(inner)
    if not whole or not known.all():
        return None, plans
    oa0, attrs0 = int(oas[0]), int(attrs[0])
    steps = np.arange(level.entries, dtype=np.uint64) * np.uint64(size)
    if (split_only and not attrs0 & fmt.split_mark) or not (attrs == attrs[0]).all() or \
            not (oas == steps + np.uint64(oa0)).all():
        return None, plans
    return _Run(oa0, attrs0, dirty), plans
