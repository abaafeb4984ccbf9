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

Both work level by level and in bounded chunks (numpy over the rows of the
tables' bulk allocations, in place): the Python work is per block and per
chunk of tables, not per entry, and the temporaries stay a few hundred KiB, so
a split of a 1 TiB guest of 1G blocks touches little memory beyond its 2 GiB of
new tables. ``CHUNKED = False`` keeps the whole-range passes as the reference.

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
import numpy.typing as npt

from ..errors import InvalidArgument, KernelError
from .format import BoolArray, Level, U64Array

if TYPE_CHECKING:
    from .walker import IoPgtable

__all__ = ["BBM_LEVELS", "StepHook", "merge_pages", "split_blocks"]

BBM_LEVELS = (0, 1, 2)
StepHook = Callable[[str], None]
IntArray = npt.NDArray[np.intp]
_CHUNK = 1024  # tables analysed per numpy step (bounds the temporary arrays)
#: Entries of the tables one allocation call of the chunked split makes (2 MiB: 512
#: tables of 4K, the children of one table above, so scans find them as rows in place).
_CHUNK_ENTRIES = 1 << 18
#: Entries one vector step of the chunked passes works on: temporaries of 128 KiB stay
#: in memory the C allocator reuses (larger ones are fresh mappings, and faulting their
#: pages in cost this VM 4-6 ns per entry: measured 2.5-3.3 ns/entry at 2^14 entries,
#: 6.5-8.6 at 2^17).
_STEP_ENTRIES = 1 << 14

#: Lab switch: True builds split tables a bounded chunk at a time and judges merges
#: of last-level tables over their rows in place; False takes the whole-range passes
#: (every level of every block in one array, one node per table), the reference the
#: chunked passes are tested against. Both give the same tables, bit for bit.
CHUNKED = True


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


@dataclass
class _Batch:
    """Entries to replace, grouped by the live table holding them: ``(table, indices, new
    entries)`` per group; ``[lo, hi)`` spans the IOVA they map; ``count`` entries."""

    groups: list[tuple[U64Array, IntArray, U64Array]] = field(default_factory=list)
    lo: int = -1
    hi: int = -1
    count: int = 0

    def add(self, table: U64Array, idx: IntArray, new: U64Array, lo: int, hi: int) -> None:
        if not len(idx):
            return
        self.groups.append((table, idx, new))
        self.lo = lo if self.count == 0 else min(self.lo, lo)
        self.hi = max(self.hi, hi)
        self.count += len(idx)


def _batch_of(changes: list[_Change]) -> _Batch:
    """The reference passes' change list as a batch (one group per change)."""
    batch = _Batch()
    for c in changes:
        batch.add(c.table, np.array([c.idx], dtype=np.intp), np.array([c.new], dtype=np.uint64),
                  c.iova, c.iova + c.size)
    return batch


def _apply(pt: IoPgtable, batch: _Batch, bbm_level: int, on_step: StepHook | None) -> None:
    """Write the replacements under the BBM rules with one invalidation batch.

    A vector store per table holding replaced entries; the kernel-visible order
    (all breaks, sync, one ``tlb_flush_walk`` over the span, all makes, sync) is
    the same whatever the grouping.
    """
    if not batch.count:
        return
    lo, hi = batch.lo, batch.hi
    coherent = pt.cfg.coherent_walk
    if bbm_level == 0:
        for table, idx, _ in batch.groups:  # break
            table[idx] = 0
        pt.stats.bbm_breaks += batch.count
    else:
        for table, idx, new in batch.groups:  # replace in place: same addresses mapped
            table[idx] = new
    if not coherent:
        pt._sync(8 * batch.count)
    if on_step is not None:
        on_step("write")
    pt._tlb_flush_walk(lo, hi - lo)
    if on_step is not None:
        on_step("invalidated")
    if bbm_level == 0:
        for table, idx, new in batch.groups:  # make
            table[idx] = new
        if not coherent:
            pt._sync(8 * batch.count)


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
    allocated: list[int] = []
    batch = _Batch()
    build = _build_tables if CHUNKED else _build_tables_whole
    try:
        for depth, blocks in sorted(by_depth.items()):
            tops = build(pt, depth, target, blocks, allocated)
            _add_runs(batch, blocks, tops, pt._sizes[depth])
    except KernelError:
        for pa in allocated:
            pt._free_table_pages(pa)
        raise
    _apply(pt, batch, bbm_level, on_step)
    pt.stats.blocks_split += batch.count
    return batch.count


def _add_runs(batch: _Batch, blocks: list[tuple[U64Array, int, int, int, int]],
              new: U64Array, size: int) -> None:
    """Add the replacements of ``blocks`` (in walk order, so those of one table are
    consecutive and in IOVA order) to ``batch``, one group per table."""
    start = 0
    while start < len(blocks):
        table = blocks[start][0]
        end = start + 1
        while end < len(blocks) and blocks[end][0] is table:
            end += 1
        idx = np.array([blk[1] for blk in blocks[start:end]], dtype=np.intp)
        batch.add(table, idx, new[start:end], blocks[start][3], blocks[end - 1][3] + size)
        start = end


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


def _split_leaves(pt: IoPgtable, blocks: list[tuple[U64Array, int, int, int, int]]
                  ) -> tuple[U64Array, U64Array, np.uint64]:
    """Each block's output address and the attributes its smaller leaves take (the lab's
    split mark, the block's dirty state kept), and the table entries' sync bit."""
    fmt = pt.format
    ptes = np.array([b[4] for b in blocks], dtype=np.uint64)
    oas = fmt.leaf_oas(ptes)
    attrs = fmt.leaf_attrs(ptes) | np.uint64(fmt.split_mark)
    for i in np.flatnonzero(fmt.write_dirty_mask(ptes)).tolist():  # keep the dirty state
        attrs[i] = fmt.with_dirty(int(attrs[i]))
    return oas, attrs, np.uint64(0 if pt.cfg.coherent_walk else fmt.sw_sync_bit)


def _build_tables(pt: IoPgtable, depth: int, target: int,
                  blocks: list[tuple[U64Array, int, int, int, int]],
                  allocated: list[int]) -> U64Array:
    """The tables replacing ``blocks`` (all at ``depth``); the entries pointing at them.

    Level by level, each level's tables for all blocks in block order (the
    allocation order and fail-nth points of one pass per level: the level's
    frames are taken first), but built a chunk at a time: table memory comes in
    calls of :meth:`~.walker.IoPgtable._alloc_tables` of ``_CHUNK_ENTRIES``
    entries (whose rows later scans use in place) and is filled
    ``_STEP_ENTRIES`` at a time, so the temporaries stay small and a split of a
    TiB touches little memory beyond the new tables. Table ``t`` of a level
    ``r`` levels under the blocks belongs to block ``t // per**r`` and maps from
    that block's address plus ``(t % per**r)`` times the size of the entry above
    it. O(tables / chunk) Python steps, O(new entries) vector work.
    """
    fmt = pt.format
    oas, attrs, sync_bit = _split_leaves(pt, blocks)
    per = pt._per
    chunk = max(1, _CHUNK_ENTRIES // per)  # tables per allocation
    step = max(1, _STEP_ENTRIES // per)  # tables per vector step
    top: list[int] = []
    parents: list[U64Array] = []  # the level above's tables, ``chunk`` rows per array
    for level in range(depth + 1, target + 1):
        span = per ** (level - depth - 1)  # tables of this level per block
        count = len(blocks) * span
        above = pt._sizes[level - 1]
        steps = np.arange(per, dtype=np.uint64) * np.uint64(pt._sizes[level])
        made: list[U64Array] = []
        # The level's frames first: ENOMEM then leaves none of its tables made.
        frames = pt.mem.alloc_iommu_frames(fmt.granule, count)
        for t0 in range(0, count, chunk):
            k = min(chunk, count - t0)
            pas, rows = pt._alloc_tables(k, frames[t0:t0 + k], per)
            allocated.extend(pas)
            if level == depth + 1:
                top.extend(pas)
            else:  # entries t0 .. t0 + k of the level above, all in one of its arrays
                prow = parents[t0 // (chunk * per)]
                flat = t0 % (chunk * per) + np.arange(k)
                prow[flat // per, flat % per] = fmt.make_tables(
                    np.array(pas, dtype=np.uint64)) | sync_bit
            if level == target and span >= step:
                # Runs of one block's tables: fill_leaf_rows (the format's bulk
                # __arm_lpae_init_pte) writes them in place, no temporaries.
                a = t0
                while a < t0 + k:
                    blk = a // span
                    b = min(t0 + k, (blk + 1) * span)
                    fmt.fill_leaf_rows(rows[a - t0:b - t0, :per], int(attrs[blk]), level,
                                       int(oas[blk]) + (a % span) * above, pt._sizes[level])
                    a = b
            elif level == target:
                for s0 in range(0, k, step):
                    t = np.arange(t0 + s0, t0 + min(k, s0 + step), dtype=np.uint64)
                    block = (t // np.uint64(span)).astype(np.intp)
                    table_oas = oas[block] + (t % np.uint64(span)) * np.uint64(above)
                    rows[s0:s0 + len(t), :per] = fmt.make_leaves(
                        attrs[block][:, None], level, table_oas[:, None] + steps[None, :])
            else:
                made.append(rows[:, :per])
        parents = made
    return np.array([fmt.make_table(pa) | int(sync_bit) for pa in top], dtype=np.uint64)


def _build_tables_whole(pt: IoPgtable, depth: int, target: int,
                        blocks: list[tuple[U64Array, int, int, int, int]],
                        allocated: list[int]) -> U64Array:
    """Reference for :func:`_build_tables`: every level of every block as one array."""
    fmt = pt.format
    oas, attrs, sync_bit = _split_leaves(pt, blocks)
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
    return np.array([fmt.make_table(pa) | int(sync_bit) for pa in top], dtype=np.uint64)


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
    leaves: _Leaves | None = None  # its last-level children (chunked pass)


@dataclass(slots=True)
class _Leaves:
    """Model-only bulk of :class:`_Node` for the last level: the last-level tables
    wholly in range under one table of the level above (a node or not)."""

    table: U64Array  # the table above, holding the entries that point at them
    node: _Node | None  # its node; None: not wholly in range
    iova: int  # what ``table`` maps from
    idx: IntArray  # the entries of ``table`` pointing at them, ascending
    ptes: U64Array  # those entries
    ok: BoolArray  # which can become one block
    merged: U64Array  # the block entry each would become (split mark kept) where ``ok``


def merge_pages(pt: IoPgtable, iova: int, size: int, *, bbm_level: int = 0,
                on_step: StepHook | None = None, split_only: bool = False) -> int:
    """Replace each mergeable table inside ``[iova, iova + size)`` by one block.

    With ``split_only`` a run merges only if all its pages carry the split
    mark (what ``split_blocks`` made), so runs mapped as pages stay pages.
    Returns the number of blocks made; nothing changes before the whole range
    is analysed. Tables above the last level are nodes (O(those tables) Python
    steps); last-level tables are judged as the rows of their bulk allocation
    in place, ``_STEP_ENTRIES`` entries per vector step (copies where they are
    not such rows), so O(last-level tables / chunk) Python steps and O(entries)
    vector work.
    """
    _check_args(pt, bbm_level)
    if not size:
        return 0
    if not CHUNKED:
        return _merge_whole(pt, iova, size, bbm_level, on_step, split_only)
    by_depth: dict[int, list[_Node]] = {}
    groups: list[_Leaves] = []
    _collect(pt, pt._pgd, 0, 0, iova, iova + size, None, by_depth, groups)
    bitmap, sizes, last = pt.cfg.pgsize_bitmap, pt._sizes, pt._last
    if groups and sizes[last - 1] & bitmap:
        _judge_leaves(pt, groups, split_only)
    for depth in sorted(by_depth, reverse=True):  # bottom-up
        if sizes[depth - 1] & bitmap:
            nodes = by_depth[depth]
            for start in range(0, len(nodes), _CHUNK):
                _judge(pt, depth, nodes[start:start + _CHUNK], split_only)
    fmt = pt.format
    mark = np.uint64(fmt.split_mark)
    batch = _Batch()
    iovas: list[int] = []  # of each change, and the entry it replaces
    olds: list[U64Array] = []
    covered: list[U64Array] = []  # entries pointing at tables under a merged one
    for depth in sorted(by_depth):  # top-down: the highest merge of each subtree wins
        for node in by_depth[depth]:
            if node.merged is None:
                continue
            old = node.parent_table[node.parent_idx:node.parent_idx + 1].copy()
            if _covered(node):
                covered.append(old)
                continue
            batch.add(node.parent_table, np.array([node.parent_idx], dtype=np.intp),
                      np.array([node.merged], dtype=np.uint64) & ~mark, node.iova,
                      node.iova + sizes[depth - 1])
            iovas.append(node.iova)
            olds.append(old)
    leaf_size = sizes[last - 1]
    for g in groups:
        if not g.ok.any():
            continue
        idx = g.idx[g.ok]
        if g.node is not None and g.node.merged is not None:  # under a merged table
            covered.append(g.ptes[g.ok])
            continue
        batch.add(g.table, idx, g.merged[g.ok] & ~mark, g.iova + int(idx[0]) * leaf_size,
                  g.iova + (int(idx[-1]) + 1) * leaf_size)
        iovas.extend((g.iova + idx.astype(np.uint64) * np.uint64(leaf_size)).tolist())
        olds.append(g.ptes[g.ok])
    # The old tables in the reference's order: replaced entries by IOVA, then the
    # covered ones top-down.
    order = np.argsort(np.array(iovas, dtype=np.uint64), kind="stable")
    replaced = np.concatenate(olds)[order] if olds else np.zeros(0, dtype=np.uint64)
    _apply(pt, batch, bbm_level, on_step)
    # After the invalidation: walkers are done with the old tables. Every table under a
    # merged one was itself merged (a run has no other tables), so these are all of them.
    table_pa = fmt.table_pa
    gone = np.concatenate([replaced, *covered]) if covered else replaced
    pt._free_tables([table_pa(pte) for pte in gone.tolist()])
    pt.stats.blocks_merged += batch.count
    return batch.count


def _merge_whole(pt: IoPgtable, iova: int, size: int, bbm_level: int,
                 on_step: StepHook | None, split_only: bool) -> int:
    """Reference for :func:`merge_pages`: a node per table, last level included."""
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
    _apply(pt, _batch_of(changes), bbm_level, on_step)
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
             node: _Node | None, out: dict[int, list[_Node]],
             groups: list[_Leaves] | None = None) -> None:
    """Every table under ``table`` that lies wholly in ``[lo, hi)``, by depth; with
    ``groups``, those of the last level as one :class:`_Leaves` per table above them."""
    level = pt._levels[depth]
    first, last = _overlap(level, base, lo, hi)
    if first >= last:
        return
    seg = table[first:last]
    size = level.block_size
    tabs = np.flatnonzero(pt.format.table_mask(seg, depth))
    if groups is not None and depth + 1 == pt._last:
        inner_first = max(first, -(-(lo - base) // size))  # entries wholly in range
        inner_last = min(last, (hi - base) // size)
        at = tabs + first
        at = at[(at >= inner_first) & (at < inner_last)]
        if len(at):
            group = _Leaves(table, node, base, at.astype(np.intp), table[at],
                            np.zeros(len(at), dtype=np.bool_),
                            np.zeros(len(at), dtype=np.uint64))
            groups.append(group)
            if node is not None:
                node.leaves = group
        return
    for i in tabs.tolist():
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
                     child_node if inside else None, out, groups)


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
        leaves = node.leaves
        if leaves is not None and leaves.ok.any():
            cols.extend(leaves.idx[leaves.ok].tolist())
            rows.extend([row] * int(np.count_nonzero(leaves.ok)))
            values.extend(leaves.merged[leaves.ok].tolist())
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


def _judge_leaves(pt: IoPgtable, groups: list[_Leaves], split_only: bool) -> None:
    """:func:`_judge` of last-level tables, a chunk of rows at a time: the rows of
    their bulk allocation in place where they are that (see
    :meth:`~.walker.IoPgtable._rows_in_place`), else copies of a run of tables."""
    last = pt._last
    per = pt._levels[last].entries
    step = max(1, _STEP_ENTRIES // per)
    blocks, key_mask = pt._blocks, np.uint64(pt._key_mask)
    for g in groups:
        pos, n = 0, len(g.idx)
        while pos < n:
            rows, m = pt._rows_in_place(g.ptes[pos:], per)
            if not m:  # copies, up to the next table that starts a bulk allocation
                m = 1
                for key in (g.ptes[pos + 1:pos + step] & key_mask).tolist():
                    if key in blocks:
                        break
                    m += 1
                rows = np.stack([pt._deref(pte)[:per] for pte in g.ptes[pos:pos + m].tolist()])
            for s0 in range(0, m, step):
                ok, merged = _judge_rows(pt, last, rows[s0:s0 + step], split_only)
                g.ok[pos + s0:pos + s0 + len(ok)] = ok
                g.merged[pos + s0:pos + s0 + len(ok)] = merged
            pos += m


def _judge_rows(pt: IoPgtable, depth: int, entries: U64Array, split_only: bool
                ) -> tuple[BoolArray, U64Array]:
    """Which rows of ``entries`` (tables at ``depth``, children already substituted)
    can become one block above, and that block's entry (split mark kept)."""
    fmt = pt.format
    mark = fmt.split_mark
    ok = fmt.run_rows(entries, depth, 0 if split_only else mark)
    firsts = entries[:, 0].copy()
    ok &= fmt.leaf_oas(firsts) % np.uint64(pt._sizes[depth - 1]) == 0
    if split_only:
        ok &= firsts & np.uint64(mark) != 0
    merged = np.zeros(len(entries), dtype=np.uint64)
    rows_ok = np.flatnonzero(ok)
    if not len(rows_ok):
        return ok, merged
    if len(rows_ok) == len(entries):
        dirty = fmt.write_dirty_mask(entries).any(axis=1)
    else:
        dirty = fmt.write_dirty_mask(entries[rows_ok]).any(axis=1)
    attrs = fmt.leaf_attrs(firsts[rows_ok])
    oas = fmt.leaf_oas(firsts[rows_ok])
    blocks = fmt.make_leaves(attrs, depth - 1, oas)
    for k in np.flatnonzero(dirty).tolist():  # a block is dirty if any of its entries was
        blocks[k] = fmt.leaf_value(fmt.with_dirty(int(attrs[k])), depth - 1, int(oas[k]))
    merged[rows_ok] = blocks
    return ok, merged
