"""``memfd_create``: an anonymous shmem or hugetlbfs file whose pages can be mapped and pinned
(mm/memfd.c, mm/gup.c ``memfd_pin_folios``).

The file has a size (``ftruncate``) and a page cache: a pfn per 4K page,
filled a folio at a time when a page is first mapped or pinned (4K frames
for shmem, 2M or 1G folios for hugetlb, ENOMEM if none is free).
``memfd_pin_folios`` refuses a range reaching past the size (EINVAL). The
file lives while an fd, a mapping or an ``iopt_pages`` holds it; when the
last goes its pages are freed, except pinned ones, freed at their last unpin
(:meth:`PhysMem.free_unpinned`), whoever's pin that is.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ..errors import InvalidArgument, OutOfMemory
from ..sizes import PAGE_SHIFT, PAGE_SIZE
from .physmem import PhysMem, pfn_runs

__all__ = ["HUGETLB_ORDERS", "MemFd"]

I64Array = npt.NDArray[np.int64]
HUGETLB_ORDERS = {None: 0, "2M": 9, "1G": 18}


class MemFd:
    """One memfd: ``size`` bytes, pages allocated on first use."""

    def __init__(self, mem: PhysMem, name: str, size: int, hugetlb: str | None = None) -> None:
        if hugetlb not in HUGETLB_ORDERS:
            raise InvalidArgument(f"memfd_create: hugetlb {hugetlb!r} is not None, '2M' or '1G'")
        self.mem = mem
        self.name = name
        self.order = HUGETLB_ORDERS[hugetlb]
        self.pfns = np.zeros(0, dtype=np.int64)
        self.size = 0
        self.refs = 1  # the fd
        self.ftruncate(size)

    @property
    def folio_bytes(self) -> int:
        return PAGE_SIZE << self.order

    def ftruncate(self, size: int) -> None:
        """``ftruncate``: hugetlb sizes must be whole huge pages (EINVAL); shrinking frees
        the pages past the new end (pinned ones at their last unpin)."""
        if size < 0 or (size % self.folio_bytes and self.order):
            raise InvalidArgument(f"ftruncate {size:#x}: not a multiple of {self.folio_bytes:#x}")
        npages = -(-size // PAGE_SIZE)
        if npages < len(self.pfns):
            keep = -(-npages // (1 << self.order)) << self.order
            self._release(keep)
            self.pfns = self.pfns[:keep].copy()
        self.pfns = np.concatenate([self.pfns, np.full(max(0, npages - len(self.pfns)), -1,
                                                       dtype=np.int64)])
        self.size = size

    def pages(self, index: int, n: int) -> I64Array:
        """The pfns of pages ``[index, index + n)``, allocating the missing folios."""
        missing = np.flatnonzero(self.pfns[index:index + n] < 0) + index
        if len(missing):
            per = 1 << self.order
            if self.order:
                for head in np.unique(missing // per * per).tolist():
                    pfn = self.mem.frames.alloc(self.order)
                    if pfn is None:
                        raise OutOfMemory(f"memfd {self.name}: no free "
                                          f"{self.folio_bytes:#x} page")
                    self.pfns[head:head + per] = np.arange(pfn, pfn + per, dtype=np.int64)
            else:
                runs = self.mem.alloc_page_runs(len(missing), site="shmem_alloc_folio")
                self.pfns[missing] = np.concatenate(
                    [np.arange(p, p + c, dtype=np.int64) for p, c in runs])
        return self.pfns[index:index + n].copy()

    def pin(self, index: int, n: int, write: bool) -> I64Array:
        """``memfd_pin_folios`` for pages ``[index, index + n)``."""
        if (index + n) << PAGE_SHIFT > self.size:
            raise InvalidArgument(f"memfd_pin_folios: pages [{index}, +{n}) end past the "
                                  f"size {self.size:#x} of {self.name}")
        pfns = self.pages(index, n)
        self.mem.pin_pages(pfns)
        return pfns

    def unpin(self, pfns: I64Array) -> None:
        """``unpin_folios``; pages the file no longer has go with their last pin."""
        self.mem.unpin_pages(pfns)

    def get(self) -> MemFd:
        self.refs += 1
        return self

    def put(self) -> None:
        """``fput``: the last reference frees the page cache."""
        self.refs -= 1
        if not self.refs:
            self._release(0)
            self.pfns = np.zeros(0, dtype=np.int64)

    def _release(self, keep: int) -> None:
        """Drop pages ``keep`` and on from the page cache (a folio at a time for hugetlb)."""
        tail = self.pfns[keep:]
        if self.order:
            self.mem.free_unpinned_folios(
                [(pfn, self.order) for pfn in tail[::1 << self.order].tolist() if pfn >= 0])
        else:
            self.mem.free_unpinned(pfn_runs(tail[tail >= 0]))
