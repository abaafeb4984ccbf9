"""The IOVA allocator of drivers/iommu/iova.c (the same in Linux 6.12 and 7.0).

The kernel keeps allocated ranges in an rb-tree ordered by ``pfn_lo`` with an
anchor node at ``~0UL`` above the space, and searches top-down from a cached
node. Here the tree is a sorted list of ``pfn_lo`` plus a dict to ``pfn_hi``:
``rb_prev``/``rb_next`` are the neighbouring list entries, so every walk the
kernel makes is made in the same order and gives the same answer. The
per-CPU range caches (magazines and depot) sit on top in :mod:`.rcache`.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass
from typing import NamedTuple

from ..clock import Clock
from ..mem.fault import FailNth
from .rcache import IOVA_MAG_SIZE, IOVA_RANGE_CACHE_MAX_SIZE, Rcaches

__all__ = ["IOVA_ANCHOR", "Iova", "IovaDomain", "IovaStats"]

IOVA_ANCHOR = (1 << 64) - 1  # ~0UL: the anchor node's pfn_lo and pfn_hi
_ULLONG_MAX = (1 << 64) - 1
_CPU_PAGE_SIZE = 4096


class Iova(NamedTuple):
    """``struct iova``: the inclusive pfn range ``[pfn_lo, pfn_hi]`` (a snapshot)."""

    pfn_lo: int
    pfn_hi: int

    @property
    def size(self) -> int:
        return self.pfn_hi - self.pfn_lo + 1


@dataclass
class IovaStats:
    """Lab counters (no kernel equivalent)."""

    tree_allocs: int = 0  # ranges inserted by __alloc_and_insert_iova_range
    tree_failures: int = 0  # -ENOMEM from __alloc_and_insert_iova_range
    fast_fails_32: int = 0  # failures taken by the max32_alloc_size shortcut
    retry_passes: int = 0  # second passes above the cached node
    tree_frees: int = 0  # nodes removed from the tree
    rcache_hits: int = 0
    rcache_misses: int = 0  # alloc_iova_fast calls the rcache could not serve
    rcache_inserts: int = 0
    rcache_insert_fails: int = 0  # frees that went to the tree (too big, or no magazine)
    flush_retries: int = 0  # alloc_iova_fast flushed every cache and retried


class IovaDomain:
    """``struct iova_domain`` with its rcaches, after ``init_iova_domain`` and
    ``iova_domain_init_rcaches``.

    ``granule`` is the IOVA page size (a power of two no larger than the CPU
    page); pfns count granules. ``ncpus`` CPUs each get a pair of magazines
    per cached size; the depot trims itself on ``clock`` (a private one when
    none is given). ``fail_nth`` injects ENOMEM into the allocation points
    (``alloc_iova_mem``, ``iova_magazine_alloc``).
    """

    def __init__(self, granule: int, start_pfn: int, *, ncpus: int = 1,
                 clock: Clock | None = None, fail_nth: FailNth | None = None,
                 cpu_page_size: int = _CPU_PAGE_SIZE) -> None:
        # BUG_ON((granule > PAGE_SIZE) || !is_power_of_2(granule)): 1 is a power of two.
        if granule < 1 or granule > cpu_page_size or granule & (granule - 1):
            raise ValueError(f"init_iova_domain: granule must be a power of two in "
                             f"[1, {cpu_page_size:#x}], not {granule:#x}")
        if start_pfn < 0:
            raise ValueError(f"init_iova_domain: start_pfn must not be negative ({start_pfn})")
        self.granule = granule
        self.shift = granule.bit_length() - 1
        self.start_pfn = start_pfn
        self.dma_32bit_pfn = 1 << (32 - self.shift)
        self.max32_alloc_size = self.dma_32bit_pfn
        self._los: list[int] = [IOVA_ANCHOR]
        self._his: dict[int, int] = {IOVA_ANCHOR: IOVA_ANCHOR}
        self.cached_node = IOVA_ANCHOR  # pfn_lo of the node, standing for the pointer
        self.cached32_node = IOVA_ANCHOR
        self.clock = clock if clock is not None else Clock()
        self.fail_nth = fail_nth
        self.stats = IovaStats()
        self.warnings: Counter[str] = Counter()  # WARN()s the kernel would print
        self.rcaches = Rcaches(self, ncpus)

    def __repr__(self) -> str:
        return (f"<IovaDomain granule={self.granule:#x} start_pfn={self.start_pfn:#x} "
                f"{len(self._los) - 1} ranges>")

    # -- the tree -------------------------------------------------------------------------
    def __len__(self) -> int:
        """Ranges in the tree (cached ones included, the anchor not)."""
        return len(self._los) - 1

    def ranges(self) -> list[Iova]:
        """Every range in the tree in address order, without the anchor."""
        his = self._his
        return [Iova(lo, his[lo]) for lo in self._los[:-1]]

    def _alloc_iova_mem(self) -> bool:
        """``alloc_iova_mem``: kmem_cache_zalloc(GFP_ATOMIC); False when it fails."""
        return self.fail_nth is None or not self.fail_nth.fails("kmem_cache_zalloc(iova)")

    def _find_index(self, pfn: int) -> int:
        """``private_find_iova``: index of the node containing ``pfn``, or -1."""
        i = bisect.bisect_right(self._los, pfn) - 1
        if i >= 0 and pfn <= self._his[self._los[i]]:
            return i
        return -1

    def _find_limit(self, limit_pfn: int) -> int:
        """``iova_find_limit``: where the retry pass starts (an index into the tree).

        The anchor when the limit is above the 32-bit boundary; else the first
        node reaching the limit, which is where the kernel's rb descent lands
        or a node above it that the top-down walk passes without effect.
        """
        if limit_pfn > self.dma_32bit_pfn:
            return len(self._los) - 1
        i = bisect.bisect_left(self._los, limit_pfn)
        if i and self._his[self._los[i - 1]] >= limit_pfn:
            i -= 1
        return i

    def _alloc_and_insert(self, size: int, limit_pfn: int, size_aligned: bool) -> int:
        """``__alloc_and_insert_iova_range`` with an exclusive ``limit_pfn``: pfn_lo or -1."""
        align_mask = -1 << (size - 1).bit_length() if size_aligned else -1
        dma32 = self.dma_32bit_pfn
        if limit_pfn <= dma32 and size >= self.max32_alloc_size:
            self.stats.fast_fails_32 += 1
            self.stats.tree_failures += 1
            return -1
        los, his = self._los, self._his
        curr = self.cached32_node if limit_pfn <= dma32 else self.cached_node
        idx = bisect.bisect_left(los, curr)
        retry_pfn = his[curr]
        high_pfn, low_pfn = limit_pfn, self.start_pfn
        while True:
            # do { ... } while (curr && new_pfn <= curr->pfn_hi && new_pfn >= low_pfn)
            curr_lo = los[idx]
            while True:
                if curr_lo < high_pfn:
                    high_pfn = curr_lo
                new_pfn = (high_pfn - size) & align_mask
                idx -= 1
                if idx < 0:
                    break
                curr_lo = los[idx]
                if not (new_pfn <= his[curr_lo] and new_pfn >= low_pfn):
                    break
            if high_pfn < size or new_pfn < low_pfn:
                if low_pfn == self.start_pfn and retry_pfn < limit_pfn:
                    high_pfn, low_pfn = limit_pfn, retry_pfn + 1
                    idx = self._find_limit(limit_pfn)
                    self.stats.retry_passes += 1
                    continue
                self.max32_alloc_size = size
                self.stats.tree_failures += 1
                return -1
            break
        los.insert(idx + 1, new_pfn)  # just below 'prev', the node above the gap
        his[new_pfn] = new_pfn + size - 1
        if new_pfn + size - 1 < dma32:  # __cached_rbnode_insert_update
            self.cached32_node = new_pfn
        else:
            self.cached_node = new_pfn
        self.stats.tree_allocs += 1
        return new_pfn

    def _remove_index(self, i: int) -> None:
        """``remove_iova``: ``__cached_rbnode_delete_update`` then erase node ``i``."""
        los, his = self._los, self._his
        lo = los[i]
        hi = his.pop(lo)
        nxt = los[i + 1]
        dma32 = self.dma_32bit_pfn
        c32 = self.cached32_node
        if lo == c32 or (hi < dma32 and lo >= c32):
            self.cached32_node = nxt
        if lo < dma32:
            self.max32_alloc_size = dma32
        if lo >= self.cached_node:
            self.cached_node = nxt
        del los[i]
        self.stats.tree_frees += 1

    def alloc_iova(self, size: int, limit_pfn: int, size_aligned: bool) -> Iova | None:
        """``alloc_iova``: top-down from ``limit_pfn`` (inclusive) to ``start_pfn``.

        With ``size_aligned`` the range starts at a multiple of
        ``roundup_pow_of_two(size)``. None when there is no room (or the node
        cannot be allocated). O(ranges walked); usually O(log n).
        """
        if size < 1:
            raise ValueError(f"alloc_iova: size must be at least one granule, not {size}")
        if not self._alloc_iova_mem():
            return None
        pfn = self._alloc_and_insert(size, limit_pfn + 1, size_aligned)
        if pfn < 0:
            return None
        return Iova(pfn, pfn + size - 1)

    def find_iova(self, pfn: int) -> Iova | None:
        """``find_iova``: the range containing ``pfn``, or None. O(log n)."""
        i = self._find_index(pfn)
        if i < 0 or self._los[i] == IOVA_ANCHOR:
            return None
        lo = self._los[i]
        return Iova(lo, self._his[lo])

    def free_iova(self, pfn: int) -> None:
        """``free_iova``: remove the range containing ``pfn``; nothing if there is none."""
        i = self._find_index(pfn)
        if i >= 0 and self._los[i] != IOVA_ANCHOR:
            self._remove_index(i)

    def reserve_iova(self, pfn_lo: int, pfn_hi: int) -> Iova | None:
        """``reserve_iova``: keep ``[pfn_lo, pfn_hi]`` from being allocated.

        Walks the tree from the lowest node: an overlapping node is extended
        down to ``pfn_lo`` and the request continues above it; a request inside
        one node returns that node; what is left becomes a new node. None (and
        a WARN) for pfns beyond ``ULLONG_MAX >> shift``, or when the node
        cannot be allocated. O(n).
        """
        if pfn_lo > pfn_hi:
            raise ValueError(f"reserve_iova: pfn_lo {pfn_lo:#x} is above pfn_hi {pfn_hi:#x}")
        if (pfn_hi | pfn_lo) > _ULLONG_MAX >> self.shift or pfn_hi >= IOVA_ANCHOR:
            self.warnings["reserve_iova: nonsensical pfns"] += 1
            return None
        los, his = self._los, self._his
        overlap = False
        for i in range(len(los)):
            lo = los[i]
            hi = his[lo]
            if pfn_lo <= hi and pfn_hi >= lo:  # __is_range_overlap
                if pfn_lo < lo:  # __adjust_overlap_range: extend the node down
                    self._rekey(i, pfn_lo)
                    lo = pfn_lo
                if pfn_hi > hi:
                    pfn_lo = hi + 1
                if pfn_lo >= lo and pfn_hi <= hi:
                    return Iova(lo, hi)
                overlap = True
            elif overlap:
                break
        if not self._alloc_iova_mem():
            return None
        bisect.insort(los, pfn_lo)  # __insert_new_range: from the root
        his[pfn_lo] = pfn_hi
        return Iova(pfn_lo, pfn_hi)

    def _rekey(self, i: int, new_lo: int) -> None:
        """Lower node ``i``'s pfn_lo in place (its place in the order does not change)."""
        old = self._los[i]
        self._los[i] = new_lo
        self._his[new_lo] = self._his.pop(old)
        if self.cached_node == old:
            self.cached_node = new_lo
        if self.cached32_node == old:
            self.cached32_node = new_lo

    # -- the fast path ------------------------------------------------------------------------
    def alloc_iova_fast(self, size: int, limit_pfn: int, flush_rcache: bool = True,
                        cpu: int = 0) -> int:
        """``alloc_iova_fast``: a size-aligned range from ``cpu``'s cache or the tree.

        Sizes below 32 granules are rounded up to a power of two. When the
        tree is full and ``flush_rcache`` is set, every CPU's magazines and the
        depot go back to the tree and the allocation is tried once more.
        Returns pfn_lo, or 0 on failure.
        """
        if size < 1:
            raise ValueError(f"alloc_iova_fast: size must be at least one granule, not {size}")
        if size < 1 << (IOVA_RANGE_CACHE_MAX_SIZE - 1):
            size = 1 << (size - 1).bit_length()
        pfn = self.rcaches.get(size, limit_pfn + 1, cpu)
        if pfn:
            self.stats.rcache_hits += 1
            return pfn
        self.stats.rcache_misses += 1
        while True:
            iova = self.alloc_iova(size, limit_pfn, True)
            if iova is not None:
                return iova.pfn_lo
            if not flush_rcache:
                return 0
            flush_rcache = False
            self.stats.flush_retries += 1
            for c in sorted(self.rcaches.online):
                self.rcaches.free_cpu_cached(c)
            self.rcaches.free_global_cached()

    def free_iova_fast(self, pfn: int, size: int, cpu: int = 0) -> None:
        """``free_iova_fast``: into ``cpu``'s cache if it takes it, else ``free_iova``.

        One granule going into a loaded magazine with room (``iova_rcache_insert``'s
        usual case) is done here without the call into :class:`Rcaches` (lab: the
        same push and counter). O(1) unless it goes to the tree.
        """
        rcaches = self.rcaches
        if size == 1 and cpu in rcaches.online:
            loaded = rcaches.classes[0].cpu[cpu].loaded
            if len(loaded) < IOVA_MAG_SIZE:
                loaded.append(pfn)
                self.stats.rcache_inserts += 1
                return
        if rcaches.insert(pfn, size, cpu):
            self.stats.rcache_inserts += 1
            return
        self.stats.rcache_insert_fails += 1
        self.free_iova(pfn)

    def put(self) -> None:
        """``put_iova_domain``: drop the caches (without returning pfns) and every range."""
        self.rcaches.free_all()
        self._los = [IOVA_ANCHOR]
        self._his = {IOVA_ANCHOR: IOVA_ANCHOR}
        self.cached_node = self.cached32_node = IOVA_ANCHOR

    # -- checks ---------------------------------------------------------------------------
    def _check(self) -> None:
        """Sorted, non-overlapping, anchor last, cursors in the tree, caches consistent."""
        los, his = self._los, self._his
        assert los and los[-1] == IOVA_ANCHOR and his[IOVA_ANCHOR] == IOVA_ANCHOR
        assert len(his) == len(los)
        prev_hi = -1
        for lo in los:
            hi = his[lo]
            assert lo <= hi, f"node [{lo:#x}, {hi:#x}] is inverted"
            assert lo > prev_hi, f"node at {lo:#x} overlaps the one below (ends {prev_hi:#x})"
            prev_hi = hi
        assert self.cached_node in his and self.cached32_node in his
        assert 0 < self.max32_alloc_size <= self.dma_32bit_pfn
        seen: set[int] = set()
        for pfn in self.rcaches.cached_pfns():
            i = self._find_index(pfn)
            assert i >= 0 and los[i] != IOVA_ANCHOR, f"cached pfn {pfn:#x} is not in the tree"
            assert los[i] not in seen, f"node {los[i]:#x} is cached twice"
            seen.add(los[i])
        self.rcaches._check()
