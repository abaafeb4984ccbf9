"""Buddy allocator of physical page frames (mm/page_alloc.c, simplified).

Blocks are naturally aligned runs of ``1 << order`` 4K frames, order 0 (4K)
to :data:`MAX_ORDER` (1G). Allocation takes the lowest-addressed free block
of the smallest order that fits and splits it (``__rmqueue_smallest`` +
``expand``); freeing merges with the buddy while it is free
(``__free_one_page``). Unlike Linux, 1G blocks come from the buddy lists
rather than from CMA/``alloc_contig_range``, and the lowest address is taken
first rather than the list head, so runs are deterministic. Each operation is
O(MAX_ORDER · log n); nothing is kept per free frame.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator

__all__ = ["MAX_ORDER", "FrameAllocator"]

#: Largest block: order 18 = 2^18 frames of 4K = 1 GiB.
MAX_ORDER = 18


def _aligned_blocks(pfn: int, count: int) -> Iterator[tuple[int, int]]:
    """``[pfn, pfn + count)`` as the largest naturally aligned blocks, in order."""
    end = pfn + count
    while pfn < end:
        order = MAX_ORDER
        while order and (pfn & ((1 << order) - 1) or pfn + (1 << order) > end):
            order -= 1
        yield pfn, order
        pfn += 1 << order


class FrameAllocator:
    """Free lists per order over a set of RAM frame ranges."""

    def __init__(self) -> None:
        self._free: list[set[int]] = [set() for _ in range(MAX_ORDER + 1)]
        # Lazy min-heaps mirroring _free (stale entries skipped on pop).
        self._heap: list[list[int]] = [[] for _ in range(MAX_ORDER + 1)]
        self._allocated: dict[int, int] = {}  # block pfn -> order
        self.total_frames = 0
        self.free_frames = 0

    # -- set-up ---------------------------------------------------------------
    def add_range(self, pfn: int, count: int) -> None:
        """Hand ``count`` frames starting at ``pfn`` to the allocator (memblock_free_all)."""
        self._push_range(pfn, count)
        self.total_frames += count
        self.free_frames += count

    # -- allocation -----------------------------------------------------------
    def alloc(self, order: int) -> int | None:
        """Allocate a naturally aligned block of ``1 << order`` frames; None if none."""
        if not 0 <= order <= MAX_ORDER:
            raise ValueError(f"order must be 0..{MAX_ORDER}, not {order}")
        for cur in range(order, MAX_ORDER + 1):
            pfn = self._pop(cur)
            if pfn is None:
                continue
            while cur > order:  # expand(): give back the upper halves
                cur -= 1
                self._push(pfn + (1 << cur), cur)
            self._allocated[pfn] = order
            self.free_frames -= 1 << order
            return pfn
        return None

    def alloc_bulk(self, n: int) -> list[tuple[int, int]] | None:
        """``n`` order-0 allocations at once: the same frames ``n`` calls of ``alloc(0)``
        would give, as ``(first pfn, count)`` runs; None (nothing taken) if fewer are free.

        Each call of ``alloc(0)`` takes the lowest block of the smallest order and
        splits it, so consecutive calls walk through that block page by page; this
        takes whole blocks instead and gives back the tail of the last one.
        """
        runs = self._take_runs(n)
        if runs is None:
            return None
        allocated = self._allocated
        for pfn, count in runs:
            allocated.update(dict.fromkeys(range(pfn, pfn + count), 0))
        return runs

    def alloc_bulk_pfns(self, n: int) -> list[int] | None:
        """:meth:`alloc_bulk` as the list of the ``n`` pfns, in the order the calls take
        them (the int objects are the allocation map's keys: a caller keying its own
        records by them shares them)."""
        runs = self._take_runs(n)
        if runs is None:
            return None
        pfns = [p for pfn, count in runs for p in range(pfn, pfn + count)]
        self._allocated.update(dict.fromkeys(pfns, 0))
        return pfns

    def _take_runs(self, n: int) -> list[tuple[int, int]] | None:
        """The free-list work of :meth:`alloc_bulk`: the runs, not yet in the map."""
        if n > self.free_frames:
            return None
        runs: list[tuple[int, int]] = []
        left = n
        while left:
            order = next(o for o in range(MAX_ORDER + 1) if self._free[o])
            pfn = self._pop(order)
            assert pfn is not None
            take = min(left, 1 << order)
            self._push_range(pfn + take, (1 << order) - take)
            runs.append((pfn, take))
            left -= take
        self.free_frames -= n
        return runs

    def free_bulk(self, runs: list[tuple[int, int]]) -> None:
        """Free order-0 allocations given as ``(first pfn, count)`` runs, merging as
        ``count`` calls of ``free(pfn, 0)`` would (the buddy state does not depend on
        the order of frees)."""
        allocated = self._allocated
        bad = next((p for pfn, count in runs for p in range(pfn, pfn + count)
                    if allocated.get(p) != 0), None)
        if bad is not None:
            raise ValueError(f"freeing pfn {bad:#x} order 0, but it was "
                             + ("not allocated" if bad not in allocated else
                                f"allocated with order {allocated[bad]}"))
        for pfn, count in runs:
            for p in range(pfn, pfn + count):
                del allocated[p]
            self.free_frames += count
            for block, order in _aligned_blocks(pfn, count):
                self._merge_free(block, order)

    def split(self, pfn: int, order: int) -> None:
        """``split_page``: an allocated block becomes ``1 << order`` single-page ones."""
        got = self._allocated.get(pfn)
        if got != order:
            raise ValueError(f"splitting pfn {pfn:#x} order {order}, but it was "
                             + ("not allocated" if got is None else f"allocated with order {got}"))
        self._allocated.update(dict.fromkeys(range(pfn, pfn + (1 << order)), 0))

    def alloc_at(self, pfn: int) -> bool:
        """Take the single free frame ``pfn`` out of whatever free block holds it."""
        for order in range(MAX_ORDER + 1):
            base = pfn & ~((1 << order) - 1)
            if base in self._free[order]:
                self._free[order].discard(base)
                while order:  # split, keeping the half that holds pfn
                    order -= 1
                    half = 1 << order
                    if pfn >= base + half:
                        self._push(base, order)
                        base += half
                    else:
                        self._push(base + half, order)
                self._allocated[pfn] = 0
                self.free_frames -= 1
                return True
        return False

    def free(self, pfn: int, order: int) -> None:
        """Return a block; it must be exactly a block ``alloc`` handed out."""
        got = self._allocated.get(pfn)
        if got != order:
            raise ValueError(
                f"freeing pfn {pfn:#x} order {order}, but it was "
                + ("not allocated" if got is None else f"allocated with order {got}"))
        del self._allocated[pfn]
        self.free_frames += 1 << order
        self._merge_free(pfn, order)

    def _merge_free(self, pfn: int, order: int) -> None:
        """``__free_one_page``: merge with free buddies, then onto the free list."""
        while order < MAX_ORDER:
            buddy = pfn ^ (1 << order)
            if buddy not in self._free[order]:
                break
            self._free[order].discard(buddy)
            pfn &= ~(1 << order)
            order += 1
        self._push(pfn, order)

    def contiguous_allocs(self, order: int, limit: int) -> tuple[int, int] | None:
        """Lab: ``(first pfn, n)`` where the next ``n`` calls of ``alloc(order)`` (at most
        ``limit``) are certain to return ``first``, ``first + (1 << order)``, ... in
        turn; None when no block of ``order`` is free. See :meth:`_walk`."""
        blocks = self._walk(order, limit)
        if not blocks:
            return None
        n = sum(1 << (k - order) for _, k in blocks)
        return blocks[0][0], min(n, limit)

    def alloc_contiguous(self, order: int, n: int) -> int | None:
        """Lab: ``n`` calls of ``alloc(order)`` in one step when :meth:`contiguous_allocs`
        is certain they give consecutive blocks: their first pfn (the blocks follow it
        ``1 << order`` frames apart), or None, nothing taken, when it is not. The free
        lists end as those calls leave them: the free blocks the calls walk through are
        gone and the rest of the last one is free as aligned blocks."""
        blocks = self._walk(order, n) if n > 0 else []
        if not blocks or sum(1 << (k - order) for _, k in blocks) < n:
            return None
        first = blocks[0][0]
        end = first + (n << order)
        for block, k in blocks:
            self._free[k].discard(block)  # its heap entry goes stale
        last, k = blocks[-1]
        self._push_range(end, last + (1 << k) - end)
        self._allocated.update(dict.fromkeys(range(first, end, 1 << order), order))
        self.free_frames -= n << order
        return first

    def _walk(self, order: int, limit: int) -> list[tuple[int, int]]:
        """The free blocks ``(pfn, order k)`` that the next calls of ``alloc(order)`` walk
        through while each continues where the last ended, until they give ``limit``
        blocks. Each call splits the lowest block of the smallest non-empty order
        ``k >= order`` and the calls after it take the rest of that block in address
        order; then the smallest non-empty order's lowest block comes next, which
        continues the walk only if it is the block right after (none of its order lies
        below the walk's start). O(blocks walked x MAX_ORDER) set lookups."""
        blocks: list[tuple[int, int]] = []
        used = [0] * (MAX_ORDER + 1)
        got, first, nxt = 0, -1, -1
        while got < limit:
            k = next((o for o in range(order, MAX_ORDER + 1)
                      if len(self._free[o]) > used[o]), None)
            if k is None:
                break
            heap, free = self._heap[k], self._free[k]
            while heap[0] not in free:  # stale entries: the next _pop would skip them too
                heapq.heappop(heap)
            if not blocks:
                first = nxt = heap[0]
            elif heap[0] < first or nxt not in free:
                break
            blocks.append((nxt, k))
            used[k] += 1
            got += 1 << (k - order)
            nxt += 1 << k
        return blocks

    def order_of(self, pfn: int) -> int | None:
        """Order of the allocated block starting at ``pfn``, or None."""
        return self._allocated.get(pfn)

    # -- queries --------------------------------------------------------------
    def free_blocks(self, order: int) -> Iterator[int]:
        """Free block pfns of exactly ``order`` (unordered)."""
        return iter(tuple(self._free[order]))

    def free_blocks_of(self, order: int) -> int:
        """How many blocks of ``order`` could be allocated now (free blocks of that order
        or larger, each counted as the blocks it splits into). O(MAX_ORDER)."""
        return sum(len(self._free[o]) << (o - order) for o in range(order, MAX_ORDER + 1))

    def largest_free_order(self) -> int:
        for order in range(MAX_ORDER, -1, -1):
            if self._free[order]:
                return order
        return -1

    @property
    def allocated_blocks(self) -> int:
        return len(self._allocated)

    def _check(self) -> None:
        """O(n): free blocks aligned, disjoint from each other and from allocations."""
        seen: list[tuple[int, int]] = []
        free = 0
        for order, blocks in enumerate(self._free):
            for pfn in blocks:
                assert pfn & ((1 << order) - 1) == 0, f"free block {pfn:#x} misaligned"
                if order < MAX_ORDER:
                    assert pfn ^ (1 << order) not in blocks, f"unmerged buddies at {pfn:#x}"
                seen.append((pfn, pfn + (1 << order)))
                free += 1 << order
            assert blocks <= set(self._heap[order]), f"order {order} heap lost a free block"
        for pfn, order in self._allocated.items():
            seen.append((pfn, pfn + (1 << order)))
        seen.sort()
        for (_, end), (start, _) in itertools.pairwise(seen):
            assert end <= start, f"overlapping blocks at {start:#x}"
        assert free == self.free_frames, f"free count {self.free_frames} != {free}"

    # -- internals --------------------------------------------------------------
    def _push_range(self, pfn: int, count: int) -> None:
        """Free ``[pfn, pfn + count)`` (inside one split block) as aligned blocks."""
        for block, order in _aligned_blocks(pfn, count):
            self._push(block, order)

    def _push(self, pfn: int, order: int) -> None:
        self._free[order].add(pfn)
        heapq.heappush(self._heap[order], pfn)

    def _pop(self, order: int) -> int | None:
        heap, free = self._heap[order], self._free[order]
        while heap:
            pfn = heapq.heappop(heap)
            if pfn in free:
                free.discard(pfn)
                return pfn
        return None
