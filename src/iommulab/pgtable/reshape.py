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

Both work level by level on all the tables concerned at once (numpy over a
stack of tables), so the Python work is per block, not per entry.

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
from .format import Level, U64Array

if TYPE_CHECKING:
    from .walker import IoPgtable

__all__ = ["BBM_LEVELS", "StepHook", "merge_pages", "split_blocks"]

BBM_LEVELS = (0, 1, 2)
StepHook = Callable[[str], None]
_CHUNK = 1024  # tables analysed per numpy step (bounds the temporary arrays)


@dataclass
class _Change:
    table: U64Array  # live table holding the entry
    idx: int
    iova: int
    size: int  # bytes the entry maps
    new: int  # replacement entry
    old: int  # entry before


def _check_args(pt: IoPgtable, bbm_level: int) -> None:
    if pt._freed:
        raise pt._use_after_free()
    if bbm_level not in BBM_LEVELS:
        raise InvalidArgument(f"bbm_level must be one of {BBM_LEVELS}, not {bbm_level}")


def _overlap(level: Level, base: int, lo: int, hi: int) -> tuple[int, int]:
    """Indices ``[first, last)`` of a table at ``base`` whose entries overlap ``[lo, hi)``."""
    first = max((lo - base) >> level.shift, 0)
    last = min(((hi - 1 - base) >> level.shift) + 1, level.entries)
    return first, last


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
    was. O(blocks) Python steps, O(new entries) vector work.
    """
    _check_args(pt, bbm_level)
    granule = granule or pt.cfg.pgsize_bitmap & -pt.cfg.pgsize_bitmap
    target = pt._depth_of.get(granule)
    if target is None or not granule & pt.cfg.pgsize_bitmap:
        raise InvalidArgument(f"split_blocks: granule {granule:#x} is not a page size of "
                              f"pgsize_bitmap {pt.cfg.pgsize_bitmap:#x}")
    if not size:
        return 0
    found: list[tuple[U64Array, int, int, int, int]] = []  # table, idx, depth, iova, pte
    _find_blocks(pt, pt._pgd, 0, 0, iova, iova + size, target, found)
    by_depth: dict[int, list[tuple[U64Array, int, int, int, int]]] = {}
    for block in found:
        by_depth.setdefault(block[2], []).append(block)
    changes: list[_Change] = []
    allocated: list[int] = []
    try:
        for depth, blocks in sorted(by_depth.items()):
            tops = _build_tables(pt, depth, target, blocks, allocated)
            for (table, idx, _, biova, pte), new in zip(blocks, tops, strict=True):
                changes.append(_Change(table, idx, biova, pt._sizes[depth], new, pte))
    except KernelError:
        for pa in allocated:
            pt._free_table_pages(pa)
        raise
    changes.sort(key=lambda c: c.iova)
    _apply(pt, changes, bbm_level, on_step)
    pt.stats.blocks_split += len(changes)
    return len(changes)


def _find_blocks(pt: IoPgtable, table: U64Array, depth: int, base: int, lo: int, hi: int,
                 target: int, out: list[tuple[U64Array, int, int, int, int]]) -> None:
    level = pt._levels[depth]
    first, last = _overlap(level, base, lo, hi)
    if first >= last:
        return
    seg = table[first:last]
    leaves = pt.format.leaf_mask(seg, depth)
    for i in np.flatnonzero(leaves).tolist():
        out.append((table, first + i, depth, base + ((first + i) << level.shift), int(seg[i])))
    if depth + 1 < target:
        for i in np.flatnonzero(pt.format.table_mask(seg, depth)).tolist():
            _find_blocks(pt, pt._deref(int(seg[i])), depth + 1,
                         base + ((first + i) << level.shift), lo, hi, target, out)


def _build_tables(pt: IoPgtable, depth: int, target: int,
                  blocks: list[tuple[U64Array, int, int, int, int]],
                  allocated: list[int]) -> list[int]:
    """The tables replacing ``blocks`` (all at ``depth``), level by level; their entries."""
    fmt = pt.format
    ptes = np.array([b[4] for b in blocks], dtype=np.uint64)
    oas = fmt.leaf_oas(ptes)
    attrs = fmt.leaf_attrs(ptes) | np.uint64(fmt.split_mark)
    for i in np.flatnonzero(fmt.write_dirty_mask(ptes)).tolist():  # keep the dirty state
        attrs[i] = fmt.with_dirty(int(attrs[i]))
    sync_bit = np.uint64(0 if pt.cfg.coherent_walk else fmt.sw_sync_bit)
    per = pt._per
    top: list[int] = []
    parent_rows: U64Array | None = None
    for level in range(depth + 1, target + 1):
        pas, rows = pt._alloc_tables(len(oas))
        allocated.extend(pas)
        if parent_rows is None:
            top = pas
        else:
            parent_rows[:] = (fmt.make_tables(np.array(pas, dtype=np.uint64)) | sync_bit
                              ).reshape(parent_rows.shape)
        steps = np.arange(per, dtype=np.uint64) * np.uint64(pt._sizes[level])
        child_oas = oas[:, None] + steps[None, :]
        if level == target:
            rows[:, :per] = fmt.make_leaves(attrs[:, None], level, child_oas)
        else:
            parent_rows = rows[:, :per]
            oas, attrs = child_oas.ravel(), np.repeat(attrs, per)
    return [fmt.make_table(pa) | int(sync_bit) for pa in top]


# -- merge ------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Node:
    """A table wholly inside the merge range, and the entry above that points at it."""

    table: U64Array
    iova: int
    parent: _Node | None  # None: the parent table is not wholly in range
    parent_table: U64Array
    parent_idx: int
    children: list[_Node] = field(default_factory=list)
    merged: int | None = None  # the block entry it would become (split mark kept)


def merge_pages(pt: IoPgtable, iova: int, size: int, *, bbm_level: int = 0,
                on_step: StepHook | None = None, split_only: bool = False) -> int:
    """Replace each mergeable table inside ``[iova, iova + size)`` by one block.

    With ``split_only`` a run merges only if all its pages carry the split
    mark (what ``split_blocks`` made), so runs mapped as pages stay pages.
    Returns the number of blocks made. O(tables) Python steps, O(entries)
    vector work, nothing changed before the whole range is analysed.
    """
    _check_args(pt, bbm_level)
    if not size:
        return 0
    by_depth: dict[int, list[_Node]] = {}
    _collect(pt, pt._pgd, 0, 0, iova, iova + size, None, by_depth)
    for depth in sorted(by_depth, reverse=True):  # bottom-up
        if pt._sizes[depth - 1] & pt.cfg.pgsize_bitmap:
            nodes = by_depth[depth]
            for start in range(0, len(nodes), _CHUNK):
                _judge(pt, depth, nodes[start:start + _CHUNK], split_only)
    changes: list[_Change] = []
    mark = pt.format.split_mark
    for depth in sorted(by_depth):  # top-down: the highest merge of each subtree wins
        for node in by_depth[depth]:
            if node.merged is None or _covered(node):
                continue
            old = int(node.parent_table[node.parent_idx])
            changes.append(_Change(node.parent_table, node.parent_idx, node.iova,
                                   pt._sizes[depth - 1], node.merged & ~mark, old))
    changes.sort(key=lambda c: c.iova)
    _apply(pt, changes, bbm_level, on_step)
    # After the invalidation: walkers are done with the old tables. Every table under a
    # merged one was itself merged (a run has no other tables), so the nodes are all of them.
    fmt = pt.format
    old_tables: list[int] = []
    for change in changes:
        old_tables.append(fmt.table_pa(change.old))
    for depth in sorted(by_depth):
        for node in by_depth[depth]:
            if node.merged is not None and _covered(node):
                old_tables.append(fmt.table_pa(int(node.parent_table[node.parent_idx])))
    pt._free_tables(old_tables)
    pt.stats.blocks_merged += len(changes)
    return len(changes)


def _covered(node: _Node) -> bool:
    parent = node.parent
    while parent is not None:
        if parent.merged is not None:
            return True
        parent = parent.parent
    return False


def _collect(pt: IoPgtable, table: U64Array, depth: int, base: int, lo: int, hi: int,
             node: _Node | None, out: dict[int, list[_Node]]) -> None:
    """Every table under ``table`` that lies wholly in ``[lo, hi)``, by depth."""
    level = pt._levels[depth]
    first, last = _overlap(level, base, lo, hi)
    if first >= last:
        return
    seg = table[first:last]
    size = level.block_size
    for i in np.flatnonzero(pt.format.table_mask(seg, depth)).tolist():
        idx = first + i
        child_iova = base + (idx << level.shift)
        child = pt._deref(int(seg[i]))
        inside = lo <= child_iova and child_iova + size <= hi
        child_node = None
        if inside:
            child_node = _Node(child, child_iova, node, table, idx)
            out.setdefault(depth + 1, []).append(child_node)
            if node is not None:
                node.children.append(child_node)
        if depth + 2 < len(pt._levels):
            _collect(pt, child, depth + 1, child_iova, lo, hi,
                     child_node if inside else None, out)


def _judge(pt: IoPgtable, depth: int, nodes: list[_Node], split_only: bool) -> None:
    """Decide which of these tables (all at ``depth``) can become one block above."""
    fmt = pt.format
    per = pt._levels[depth].entries
    entries = np.stack([node.table[:per] for node in nodes])
    rows, cols, values = [], [], []
    for row, node in enumerate(nodes):  # children that merge count as the block they become
        for child in node.children:
            if child.merged is not None:
                rows.append(row)
                cols.append(child.parent_idx)
                values.append(child.merged)
    if rows:
        entries[rows, cols] = np.array(values, dtype=np.uint64)
    mark = fmt.split_mark
    ok = fmt.run_rows(entries, depth, 0 if split_only else mark)
    firsts = entries[:, 0]
    ok &= fmt.leaf_oas(firsts) % np.uint64(pt._sizes[depth - 1]) == 0
    if split_only:
        ok &= firsts & np.uint64(mark) != 0
    rows_ok = np.flatnonzero(ok)
    if not len(rows_ok):
        return
    dirty = fmt.write_dirty_mask(entries[rows_ok]).any(axis=1)
    attrs = fmt.leaf_attrs(firsts[rows_ok])
    oas = fmt.leaf_oas(firsts[rows_ok])
    blocks = fmt.make_leaves(attrs, depth - 1, oas)
    for k in np.flatnonzero(dirty).tolist():  # a block is dirty if any of its entries was
        blocks[k] = fmt.leaf_value(fmt.with_dirty(int(attrs[k])), depth - 1, int(oas[k]))
    for row, block in zip(rows_ok.tolist(), blocks.tolist(), strict=True):
        nodes[row].merged = block
