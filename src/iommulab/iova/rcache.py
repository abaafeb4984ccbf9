"""The IOVA range caches of drivers/iommu/iova.c: per-CPU magazines and a shared depot.

Bonwick's magazines: each CPU holds a ``loaded`` and a ``prev`` magazine of
up to 127 pfns per size class (1, 2, 4, … 32 granules). A cached range stays
allocated in the tree; only a flush gives it back. Full magazines go to the
depot, an unbounded LIFO that delayed work trims by one magazine every
100 ms while it holds more magazines than there are online CPUs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..clock import Timer
from ..errors import OutOfMemory

if TYPE_CHECKING:
    from .domain import IovaDomain

__all__ = ["IOVA_DEPOT_DELAY_MS", "IOVA_MAG_SIZE", "IOVA_RANGE_CACHE_MAX_SIZE", "Rcaches"]

IOVA_RANGE_CACHE_MAX_SIZE = 6  # log2 of the largest cached size + 1: 1..32 granules
IOVA_MAG_SIZE = 127  # pfns per magazine (a 1024-byte struct)
IOVA_DEPOT_DELAY_MS = 100


class _CpuRcache:
    """``struct iova_cpu_rcache``: two magazines, lists of pfns."""

    __slots__ = ("loaded", "prev")

    def __init__(self) -> None:
        self.loaded: list[int] = []
        self.prev: list[int] = []


class _Rcache:
    """``struct iova_rcache``: one size class."""

    def __init__(self, owner: Rcaches, ncpus: int) -> None:
        self.cpu = [_CpuRcache() for _ in range(ncpus)]
        self.depot: list[list[int]] = []  # full magazines; the end is the head
        self.work = Timer(lambda: owner.depot_work(self))


class Rcaches:
    """The six size classes of one :class:`IovaDomain` (``iova_domain_init_rcaches``).

    ``magazines`` counts magazine objects in existence (lab: for leak checks);
    ``depot_trims`` the magazines the delayed work gave back.
    """

    def __init__(self, iovad: IovaDomain, ncpus: int) -> None:
        if ncpus < 1:
            raise ValueError(f"need at least one CPU, not {ncpus}")
        self.iovad = iovad
        self.ncpus = ncpus
        self.online = set(range(ncpus))
        self.depot_trims = 0
        self.magazines = 0
        self.classes: list[_Rcache] = []
        for _ in range(IOVA_RANGE_CACHE_MAX_SIZE):  # 2 magazines per CPU per class
            for _ in range(2 * ncpus):
                if not self._magazine_alloc():
                    self.magazines = 0
                    raise OutOfMemory("iova_domain_init_rcaches: no memory for magazines")
            self.classes.append(_Rcache(self, ncpus))

    def _magazine_alloc(self) -> bool:
        """``iova_magazine_alloc``: False when the allocation fails."""
        fail = self.iovad.fail_nth
        if fail is not None and fail.fails("kmem_cache_alloc(iova_magazine)"):
            return False
        self.magazines += 1
        return True

    def _offline(self, cpu: int) -> ValueError:
        return ValueError(f"CPU {cpu} is not online (online: {sorted(self.online)})")

    # -- insert / get ----------------------------------------------------------------------
    def insert(self, pfn: int, size: int, cpu: int) -> bool:
        """``iova_rcache_insert``: False when the size is not cached or no magazine is free."""
        log = (size - 1).bit_length()  # order_base_2
        if log >= IOVA_RANGE_CACHE_MAX_SIZE:
            return False
        if cpu not in self.online:
            raise self._offline(cpu)
        rcache = self.classes[log]
        c = rcache.cpu[cpu]
        loaded = c.loaded
        if len(loaded) < IOVA_MAG_SIZE:
            loaded.append(pfn)
            return True
        if len(c.prev) < IOVA_MAG_SIZE:
            c.loaded, c.prev = c.prev, loaded
            c.loaded.append(pfn)
            return True
        if not self._magazine_alloc():  # GFP_ATOMIC failed: the caller frees to the tree
            return False
        rcache.depot.append(loaded)  # iova_depot_push
        self.iovad.clock.schedule_delayed_work(
            rcache.work, self.iovad.clock.msecs_to_jiffies(IOVA_DEPOT_DELAY_MS))
        c.loaded = [pfn]
        return True

    def get(self, size: int, limit_pfn: int, cpu: int) -> int:
        """``iova_rcache_get`` with an exclusive ``limit_pfn``: a cached pfn_lo or 0."""
        log = (size - 1).bit_length()
        if log >= IOVA_RANGE_CACHE_MAX_SIZE:
            return 0
        if cpu not in self.online:
            raise self._offline(cpu)
        rcache = self.classes[log]
        c = rcache.cpu[cpu]
        limit_pfn -= size  # the cached value is pfn_lo: the range must end below the limit
        mag = c.loaded
        if not mag:
            if c.prev:
                c.loaded, c.prev = c.prev, mag
                mag = c.loaded
            elif rcache.depot:
                self.magazines -= 1  # the empty loaded magazine is freed
                mag = c.loaded = rcache.depot.pop()
            else:
                return 0
        if mag[-1] <= limit_pfn:  # iova_magazine_pop: the top usually fits
            return mag.pop()
        i = len(mag) - 1
        while mag[i] > limit_pfn:
            if i == 0:
                return 0
            i -= 1
        pfn = mag[i]
        mag[i] = mag[-1]  # swap the last one into its place
        mag.pop()
        return pfn

    # -- giving ranges back ----------------------------------------------------------------------
    def _free_pfns(self, mag: list[int]) -> None:
        """``iova_magazine_free_pfns``: remove every cached range from the tree."""
        iovad = self.iovad
        for pfn in mag:
            i = iovad._find_index(pfn)
            if i < 0:
                iovad.warnings["iova_magazine_free_pfns: pfn not in the tree"] += 1
                continue
            iovad._remove_index(i)
        mag.clear()

    def depot_work(self, rcache: _Rcache) -> None:
        """``iova_depot_work_func``: give one magazine back while the depot is large."""
        if len(rcache.depot) > len(self.online):
            mag = rcache.depot.pop()
            self._free_pfns(mag)
            self.magazines -= 1
            self.depot_trims += 1
            clock = self.iovad.clock
            clock.schedule_delayed_work(rcache.work, clock.msecs_to_jiffies(IOVA_DEPOT_DELAY_MS))

    def free_cpu_cached(self, cpu: int) -> None:
        """``free_cpu_cached_iovas``: empty one CPU's magazines into the tree."""
        for rcache in self.classes:
            c = rcache.cpu[cpu]
            self._free_pfns(c.loaded)
            self._free_pfns(c.prev)

    def free_global_cached(self) -> None:
        """``free_global_cached_iovas``: empty the depot into the tree."""
        for rcache in self.classes:
            while rcache.depot:
                self._free_pfns(rcache.depot.pop())
                self.magazines -= 1

    def cpu_dead(self, cpu: int) -> None:
        """``iova_cpuhp_dead``: an unplugged CPU's cached ranges go back to the tree."""
        if cpu not in self.online:
            raise self._offline(cpu)
        self.free_cpu_cached(cpu)
        self.online.discard(cpu)

    def cpu_online(self, cpu: int) -> None:
        if not 0 <= cpu < self.ncpus:
            raise ValueError(f"CPU {cpu} does not exist ({self.ncpus} possible)")
        self.online.add(cpu)

    def free_all(self) -> None:
        """``free_iova_rcaches``: drop every magazine without touching the tree."""
        for rcache in self.classes:
            self.iovad.clock.del_timer(rcache.work)
            for c in rcache.cpu:
                c.loaded, c.prev = [], []
            rcache.depot.clear()
        self.magazines = 0

    # -- inspection -------------------------------------------------------------------------------
    def cached_pfns(self) -> Iterator[int]:
        for rcache in self.classes:
            for c in rcache.cpu:
                yield from c.loaded
                yield from c.prev
            for mag in rcache.depot:
                yield from mag

    def cached_count(self) -> int:
        return sum(1 for _ in self.cached_pfns())

    def depot_size(self, log: int) -> int:
        return len(self.classes[log].depot)

    def _check(self) -> None:
        depot = 0
        for rcache in self.classes:
            for c in rcache.cpu:
                assert len(c.loaded) <= IOVA_MAG_SIZE and len(c.prev) <= IOVA_MAG_SIZE
            for mag in rcache.depot:
                assert len(mag) == IOVA_MAG_SIZE, "only full magazines go to the depot"
            depot += len(rcache.depot)
        if self.magazines:
            expected = 2 * self.ncpus * IOVA_RANGE_CACHE_MAX_SIZE + depot
            assert self.magazines == expected, f"{self.magazines} magazines, expected {expected}"
