"""``struct vm_area_struct``: one mapping of a process and what maps its pages (mm/).

A VMA's own page state is its anonymous pages: the pfn of each and
``PageAnonExclusive``, kept sparse (:class:`~iommulab.mem.sparse.SparsePages`), so a
mapping costs host memory in proportion to what was faulted in, never to its length;
an anonymous hugetlb mapping keeps them a huge page at a time
(:class:`~iommulab.mem.sparse.FolioPages`, the model's own storage choice: its folios
are never split), a THP mapping its whole folios a folio at a time
(:class:`~iommulab.mem.sparse.ThpPages`).
The pages of a MAP_SHARED file are the file's page cache, looked up where the VMA maps
the file; a MAP_PRIVATE file mapping adds the anonymous copies its writes made. A
device region (VM_PFNMAP | VM_IO) has no pages at all: its pfns are the region's, in
order, which nothing ever allocates, frees, pins or counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from .sparse import Extent, FolioPages, SparsePages, ThpPages

if TYPE_CHECKING:
    from .memfd import MemFd

__all__ = ["BACKINGS", "CHUNK", "PAGE_SHIFT", "PAGE_SIZE", "Vma"]

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
#: backing -> folio order a fault tries first
BACKINGS = {"anon": 0, "thp": 9, "hugetlb-2M": 9, "hugetlb-1G": 18}
#: pages a whole-VMA pass (unmap, fork, checks) handles at a time: bounded temporaries,
#: a Python step per GiB, and never a folio cut in two (the largest is 1G)
CHUNK = 1 << 18
#: lab: anonymous hugetlb and THP VMAs keep their whole folios a folio at a time
#: (FolioPages, ThpPages); tests turn it off to compare against per-page storage
FOLIO_PAGES = True
I64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(eq=False)
class Vma:
    """``[start, end)`` of one mapping. ``folios`` are the large anonymous folios it maps
    whole with a PMD (PUD for 1G hugetlb): first pfn -> order. Compared by identity."""

    start: int
    end: int
    backing: str
    writable: bool
    pfnmap: bool = False  # VM_PFNMAP | VM_IO: a device region
    mmio_pfn: int = -1  # the pfn the region's first page maps
    folios: dict[int, int] = field(default_factory=dict, repr=False)
    file: MemFd | None = field(default=None, repr=False)  # a mapping of a memfd
    pgoff: int = 0  # the page of the file mapped at ``start``
    private: bool = False  # MAP_PRIVATE of a file: a page is copied on its first write
    #: the anonymous pages (of a MAP_PRIVATE file, the copies): pfn, PageAnonExclusive;
    #: a folio at a time for anonymous hugetlb
    pages: SparsePages | FolioPages | ThpPages = field(init=False, repr=False)

    def __post_init__(self) -> None:
        phase = self.start >> PAGE_SHIFT
        per = 1 << BACKINGS[self.backing]
        if FOLIO_PAGES and self.backing.startswith("hugetlb") and self.file is None \
                and not self.pfnmap and not phase % per and not self.npages % per:
            self.pages = FolioPages(self.npages, BACKINGS[self.backing], phase=phase)
        elif FOLIO_PAGES and self.backing == "thp" and self.file is None and not self.pfnmap:
            self.pages = ThpPages(self.npages, BACKINGS[self.backing], phase=phase)
        else:
            self.pages = SparsePages(self.npages, excl=True, phase=phase)

    @property
    def npages(self) -> int:
        return (self.end - self.start) >> PAGE_SHIFT

    @property
    def order(self) -> int:
        """The order of the folios a fault gives this VMA."""
        return 0 if self.pfnmap else BACKINGS[self.backing]

    @property
    def shared(self) -> bool:
        """Written in place, never copied: a MAP_SHARED file or a device region."""
        return self.pfnmap or (self.file is not None and not self.private)

    @property
    def hugetlb_bytes(self) -> int:
        """The huge page size of a hugetlb mapping (anonymous, or of a hugetlbfs file),
        which it may only be cut at; 0 for any other."""
        if self.file is not None:
            return self.file.folio_bytes if self.file.order else 0
        if self.backing.startswith("hugetlb") and not self.pfnmap:
            return PAGE_SIZE << BACKINGS[self.backing]
        return 0

    @property
    def file_end(self) -> int:
        """For a file mapping, the index of its first page past the end of the file
        (``i_size``): an access there is SIGBUS. The VMA's length otherwise."""
        if self.file is None:
            return self.npages
        return max(0, min(self.npages, self.file.npages - self.pgoff))

    def pfns(self, lo: int = 0, hi: int | None = None) -> I64Array:
        """The pfn page ``lo`` .. ``hi - 1`` maps (-1: none yet), as a dense copy: callers
        bound the range (by what is present or about to be faulted in)."""
        hi = self.npages if hi is None else hi
        if self.pfnmap:
            return np.arange(self.mmio_pfn + lo, self.mmio_pfn + hi, dtype=np.int64)
        if self.file is None:
            return self.pages.get(lo, hi)
        out = self.file.lookup(self.pgoff + lo, hi - lo)
        if self.private:
            copies = self.pages.get(lo, hi)
            out = np.where(copies >= 0, copies, out)
        return out

    def excl(self, lo: int = 0, hi: int | None = None) -> BoolArray:
        """``PageAnonExclusive`` of pages ``[lo, hi)`` (a dense copy)."""
        return self.pages.get_excl(lo, self.npages if hi is None else hi)

    def ready(self, lo: int, hi: int) -> int:
        """The first page of ``[lo, hi)`` GUP could not take as it is (no page, or for a
        private mapping one it does not have alone), ``hi`` if none: what ``gup_fast``
        gets. O(the answer) numpy work over views, nothing copied."""
        if self.pfnmap:
            return lo
        if self.file is not None and not self.private:
            base = self.pgoff
            return self.file.cache.first_unset(base + lo, base + hi, excl=False) - base
        return self.pages.first_unset(lo, hi, excl=True)

    def views(self, lo: int, hi: int) -> list[I64Array]:
        """Views of the pfns of pages ``[lo, hi)``, all present and none needing a copy
        (what GUP pins after faulting them in): the file's pages of a shared mapping,
        the VMA's own otherwise. Nothing is copied."""
        if self.file is not None and not self.private:
            return [e.pfns for e in self.file.cache.pieces(self.pgoff + lo, self.pgoff + hi)]
        return [e.pfns for e in self.pages.pieces(lo, hi)]

    def chunks(self, lo: int = 0, hi: int | None = None, *,
               per_page: bool = False) -> list[Extent]:
        """Views of the VMA's own pages of ``[lo, hi)``, cut at every :data:`CHUNK` of
        the address space: what whole-VMA passes walk (only where pages were kept).
        ``per_page``: only the pages kept page by page (of a THP VMA: not the folios
        kept whole, whose copies are read-only), which writes go through."""
        hi = self.npages if hi is None else hi
        base = self.start >> PAGE_SHIFT
        out: list[Extent] = []
        pieces = self.pages.page_pieces(lo, hi) if per_page and \
            isinstance(self.pages, ThpPages) else self.pages.pieces(lo, hi)
        for ext in pieces:
            pos = ext.lo
            while pos < ext.hi:
                stop = min(ext.hi, (base + pos) // CHUNK * CHUNK + CHUNK - base)
                out.append(ext.part(pos, stop))
                pos = stop
        return out

    def pmd_slots(self, lo: int = 0, hi: int | None = None) -> tuple[I64Array, I64Array]:
        """The page index and first pfn of each folio the VMA maps with a PMD that holds
        a page of ``[lo, hi)``, in address order. O(kept pages there / folio size)."""
        empty = np.zeros(0, dtype=np.int64)
        if not self.folios:
            return empty, empty.copy()
        hi = self.npages if hi is None else hi
        if isinstance(self.pages, FolioPages):  # O(folios there)
            starts, firsts = self.pages.folio_slots(lo, hi)
            mine = self._mapped_whole(firsts)
            return starts[mine], firsts[mine]
        per = 1 << self.order
        base = self.start >> PAGE_SHIFT
        lo = max(0, lo - (base + lo) % per)  # from the start of the stretch ``lo`` is in
        ats: list[I64Array] = []
        heads: list[I64Array] = []
        if isinstance(self.pages, ThpPages):  # its folios kept whole, then the others
            starts, firsts = self.pages.folio_slots(lo, hi)
            mine = self._mapped_whole(firsts)
            ats.append(starts[mine])
            heads.append(firsts[mine])
            exts = self.pages.page_pieces(lo, hi)
        else:
            exts = self.pages.pieces(lo, hi)
        for ext in exts:
            first = ext.lo + (-(base + ext.lo)) % per
            cand = ext.pfns[first - ext.lo::per]
            keep = self._mapped_whole(cand)
            ats.append(np.flatnonzero(keep).astype(np.int64) * per + first)
            heads.append(cand[keep])
        if not ats:
            return empty, empty.copy()
        at, head = np.concatenate(ats), np.concatenate(heads)
        order = np.argsort(at, kind="stable")
        return at[order], head[order]

    def _mapped_whole(self, heads: I64Array) -> BoolArray:
        """Which of the first pfns ``heads`` are folios this VMA maps with a PMD."""
        if len(heads) <= 64:  # a fault's few stretches: no array of every folio
            return np.array([h in self.folios for h in heads.tolist()], dtype=np.bool_)
        out: BoolArray = np.isin(heads, np.fromiter(self.folios, np.int64, len(self.folios)))
        return out

    def pmd_pages(self, ext: Extent, starts: I64Array) -> BoolArray:
        """Which pages of ``ext`` belong to the PMD-mapped folios at page indices
        ``starts`` (sorted, from :meth:`pmd_slots`). O(pages of ``ext``)."""
        per = 1 << self.order
        n = len(ext.pfns)
        if not len(starts) or not n:
            return np.zeros(n, dtype=np.bool_)
        first = (self.start >> PAGE_SHIFT) + ext.lo  # in the address space, as folios are
        k0 = first // per
        k1 = (first + n - 1) // per
        lo, hi = np.searchsorted(starts, [(k0 * per) - (first - ext.lo), (k1 + 1) * per
                                          - (first - ext.lo)])
        rows = np.zeros(k1 - k0 + 1, dtype=np.bool_)
        rows[((starts[lo:hi] + first - ext.lo) // per) - k0] = True
        skip = first - k0 * per
        out: BoolArray = np.repeat(rows, per)[skip:skip + n]
        return out
