"""The machine's anonymous pages as processes share them after fork (mm/rmap.c's mapcounts).

Every anonymous 4K page counts the mappings it has (``page->_mapcount + 1``): one per
process that maps it, so a page a fork shared counts two until one side writes and
gets its own copy. The large anonymous folios (THP, hugetlb) are kept too, by their
first pfn. A page whose last mapping goes is freed, or kept until its last unpin
(:meth:`~iommulab.mem.physmem.PhysMem.free_unpinned`: whichever pin is the last frees
it); a large folio
goes when none of its pages is mapped. A THP of which only some pages stay mapped is
split into 4K pages at once and the others freed: ``split_huge_page``, which Linux
defers to the ``deferred_split`` shrinker under memory pressure (the model, which has
no reclaim, runs it at once, so a partly unmapped THP never holds its whole 2M).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from weakref import WeakSet

import numpy as np
import numpy.typing as npt

from .pins import FrameCounts

if TYPE_CHECKING:
    from .mm import MmStruct
    from .physmem import PhysMem

__all__ = ["AnonPages"]

I64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
#: pages whose mapcounts :meth:`AnonPages.unmap_folios` reads at a time (16 MiB of
#: counts: 4096 THPs, or 16 1G hugetlb folios, instead of 4 GiB for 4096 of those)
_UNMAP_PAGES = 1 << 22


def _folio_runs(heads: I64Array, order: int) -> list[tuple[int, int]]:
    """``(first pfn, pages)`` runs covering the folios of ``heads`` (in order)."""
    if not len(heads):
        return []
    per = 1 << order
    cuts = (np.flatnonzero(np.diff(heads) != per) + 1).tolist()
    bounds = [0, *cuts, len(heads)]
    firsts = heads[bounds[:-1]].tolist()
    return [(f, (b - a) * per) for f, a, b in zip(firsts, bounds[:-1], bounds[1:], strict=True)]


class AnonPages:
    """Mapcounts of anonymous pages, the large anonymous folios, and the pages no process
    maps any more that a pin still holds."""

    def __init__(self, mem: PhysMem) -> None:
        self.mem = mem
        self.maps = FrameCounts()  # mappings of each anonymous page
        self.folios: dict[int, int] = {}  # first pfn -> order of each large folio
        self._sorted: tuple[I64Array, I64Array] | None = None  # (heads, ends), rebuilt lazily
        self.mms: WeakSet[MmStruct] = WeakSet()  # the live address spaces (for _check)

    # -- mapping ----------------------------------------------------------------------------------
    def map_pages(self, pfns: I64Array) -> None:
        """One more mapping of each of ``pfns`` (a fault's new pages, or a fork's share)."""
        self.maps.add(pfns, 1)

    def new_folios(self, heads: list[int], order: int) -> None:
        """Large folios just faulted in (mapped once each)."""
        if not heads:
            return
        self.folios.update(dict.fromkeys(heads, order))
        self._sorted = None
        self.maps.add_runs(_folio_runs(np.sort(np.array(heads, dtype=np.int64)), order), 1,
                           zeros=False)

    def map_folios(self, heads: I64Array, order: int) -> None:
        """One more mapping of every page of each folio (a PMD); O(runs of folios)."""
        self.maps.add_runs(_folio_runs(heads, order), 1, zeros=False)

    def unmap(self, pfns: I64Array) -> None:
        """One mapping of each of ``pfns`` goes (``zap_pte_range``); the pages left with
        none are freed, or kept for their last unpin."""
        if not len(pfns):
            return
        gone = self.maps.add(pfns, -1)
        if len(gone):
            self._release(gone)

    def unmap_folios(self, heads: I64Array, order: int) -> None:
        """The PMD mapping of each folio goes (``zap_huge_pmd``). O(pages) numpy work and a
        Python step per run of folios and per folio freed."""
        per = 1 << order
        heads = np.sort(heads)
        step = max(1, min(4096, _UNMAP_PAGES >> order))  # bounded temporaries: the pages'
        for i in range(0, len(heads), step):  # counts, not the folios, bound them
            chunk = heads[i:i + step]
            runs = _folio_runs(chunk, order)
            self.maps.add_runs(runs, -1, zeros=False)
            mapped = np.concatenate([self.maps.range(p, n) for p, n in runs]) > 0
            mapped = mapped.reshape(len(chunk), per)
            some, every = mapped.any(axis=1), mapped.all(axis=1)
            gone = chunk[~some].tolist()
            for head in gone:
                del self.folios[head]
            self._sorted = None
            self.mem.free_unpinned_folios([(h, order) for h in gone])
            for row in np.flatnonzero(some & ~every).tolist():
                self._split(int(chunk[row]), mapped[row])

    def _release(self, gone: I64Array) -> None:
        """Free the pages of ``gone`` (no mapping left), a whole folio when none of its
        pages is mapped, splitting one that keeps some mapped."""
        heads = self.folio_of(gone)
        small = gone[heads < 0]
        if len(small):
            self.mem.free_unpinned_pages(small)
        for head in np.unique(heads[heads >= 0]).tolist():
            mapped = self.maps.range(head, 1 << self.folios[head]) > 0
            if mapped.any():
                self._split(head, mapped)
            else:
                order = self.folios.pop(head)
                self._sorted = None
                self.mem.free_unpinned_folios([(head, order)])

    def _split(self, head: int, mapped: BoolArray) -> None:
        """``split_huge_page`` of a THP only some of whose pages are still mapped: the
        others are freed (or kept for their last unpin)."""
        order = self.folios.pop(head)
        self._sorted = None
        assert order == 9, f"only a THP can be partly unmapped, not an order-{order} folio"
        self.mem.frames.split(head, order)
        self.mem.free_unpinned_pages(np.flatnonzero(~mapped).astype(np.int64) + head)

    # -- queries ------------------------------------------------------------------------------
    def folio_of(self, pfns: I64Array) -> I64Array:
        """The first pfn of the large folio each of ``pfns`` belongs to, -1 for a 4K page.
        O(n log folios)."""
        if not self.folios:
            return np.full(len(pfns), -1, dtype=np.int64)
        if self._sorted is None:
            heads = np.fromiter(self.folios, dtype=np.int64, count=len(self.folios))
            orders = np.fromiter(self.folios.values(), dtype=np.int64, count=len(heads))
            order = np.argsort(heads)
            self._sorted = heads[order], heads[order] + (1 << orders[order])
        heads, ends = self._sorted
        i = np.maximum(np.searchsorted(heads, pfns, side="right") - 1, 0)
        inside = (pfns >= heads[i]) & (pfns < ends[i])
        return np.where(inside, heads[i], -1)

    def compound(self, pfns: I64Array) -> BoolArray:
        """``PageCompound`` for anonymous pages: part of a large folio (mapped, or
        unmapped and still pinned)."""
        out: BoolArray = (self.folio_of(pfns) >= 0) | self.mem.in_orphan_folio(pfns)
        return out

    def _check(self) -> None:
        """O(pages mapped): the counts are the mappings the live processes hold, every
        large folio is an allocated block with all its pages mapped."""
        self.maps._check()
        mapped = [mm.anon_pfns() for mm in self.mms]
        pfns = np.concatenate(mapped) if mapped else np.zeros(0, dtype=np.int64)
        assert len(pfns) == self.maps.total, "mapcounts drifted from the processes' pages"
        uniq, counts = np.unique(pfns, return_counts=True)
        assert (self.maps.get(uniq) == counts).all(), "a page's mapcount is wrong"
        for head, order in self.folios.items():
            assert self.mem.frames.order_of(head) == order, f"folio {head:#x} not allocated"
            assert (self.maps.range(head, 1 << order) > 0).all(), \
                f"folio {head:#x} is partly unmapped but not split"
