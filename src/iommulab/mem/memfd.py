"""``memfd_create``: an anonymous shmem or hugetlbfs file whose pages can be mapped and pinned
(mm/memfd.c, mm/shmem.c, fs/hugetlbfs, mm/gup.c ``memfd_pin_folios``).

The file has a size (``ftruncate``) and a page cache: a pfn per 4K page, kept
sparse (:class:`~iommulab.mem.sparse.SparsePages`), so a file of a petabyte costs
nothing until its pages are used; pages are allocated a folio at a time when
first faulted or pinned (4K frames for shmem, 2M or 1G folios for hugetlb, ENOMEM
if the machine has none). ``memfd_pin_folios`` refuses a range reaching past the
size (EINVAL). The file lives while an fd, a mapping or an ``iopt_pages`` holds
it; when the last goes, or a truncation cuts pages off, its pages are freed,
pinned ones with their last unpin (:meth:`PhysMem.free_unpinned`).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ..errors import InvalidArgument, OutOfMemory
from ..sizes import PAGE_SHIFT, PAGE_SIZE
from .fault import FailNth
from .physmem import PhysMem, pfn_runs
from .sparse import SparsePages

__all__ = ["HUGETLB_ORDERS", "MAX_LFS_FILESIZE", "MFD_NAME_MAX_LEN", "MemFd", "file_setup",
           "resv_map_alloc"]

I64Array = npt.NDArray[np.int64]
HUGETLB_ORDERS = {None: 0, "2M": 9, "1G": 18}
#: the largest file size (``s_maxbytes`` of shmem and hugetlbfs): LLONG_MAX
MAX_LFS_FILESIZE = (1 << 63) - 1
#: the longest name ``memfd_create`` takes (mm/memfd.c)
MFD_NAME_MAX_LEN = 255 - len("memfd:")


def resv_map_alloc(fail: FailNth) -> None:
    """``resv_map_alloc``: the ``resv_map`` of a hugetlbfs inode or of a private hugetlb
    mapping, and the ``file_region`` it keeps in its cache (ENOMEM, nothing kept)."""
    fail.check("kmalloc(resv_map)")
    fail.check("kmalloc(file_region)")


def file_setup(fail: FailNth, hugetlb: bool) -> None:
    """The allocations of ``shmem_file_setup`` (``shmem_kernel_file_setup``, as
    ``shmem_zero_setup`` calls it) or, for a hugetlbfs file, ``hugetlb_file_setup``: the
    inode (hugetlbfs: its ``resv_map`` first, ``hugetlbfs_get_inode``), then
    ``alloc_file_pseudo``'s dentry and file. ENOMEM leaves nothing. The reservation of a
    hugetlb file made with VM_NORESERVE, as memfd_create and MAP_HUGETLB do, allocates
    nothing."""
    if hugetlb:
        resv_map_alloc(fail)
        fail.check("alloc_inode_sb(hugetlbfs_inode_cachep)")  # hugetlbfs_alloc_inode
    else:
        fail.check("alloc_inode_sb(shmem_inode_cachep)")  # shmem_alloc_inode
    fail.check("d_alloc_pseudo(alloc_file_pseudo)")
    fail.check("alloc_empty_file(alloc_file_pseudo)")


class MemFd:
    """One memfd: ``size`` bytes, pages allocated on first use."""

    def __init__(self, mem: PhysMem, name: str, size: int, hugetlb: str | None = None) -> None:
        if hugetlb not in HUGETLB_ORDERS:
            raise InvalidArgument(f"memfd_create: hugetlb {hugetlb!r} is not None, '2M' or '1G'")
        if len(name) > MFD_NAME_MAX_LEN:
            raise InvalidArgument(f"memfd_create: a name of {len(name)} characters is longer "
                                  f"than MFD_NAME_MAX_LEN ({MFD_NAME_MAX_LEN})")
        self.mem = mem
        self.name = name
        self.order = HUGETLB_ORDERS[hugetlb]
        self.cache = SparsePages(0)  # the page cache: a pfn per 4K page of the file
        self.size = 0
        self.refs = 1  # the fd
        self.ftruncate(size)

    @property
    def folio_bytes(self) -> int:
        return PAGE_SIZE << self.order

    @property
    def npages(self) -> int:
        """Pages of the file (the last one partly past the size)."""
        return self.cache.npages

    def ftruncate(self, size: int) -> None:
        """``do_sys_ftruncate``: EINVAL for a negative length (a length past LLONG_MAX is
        a negative ``loff_t``); hugetlbfs: EINVAL unless whole huge pages
        (``hugetlbfs_setattr``). Shrinking frees the pages past the new end, pinned ones
        with their last unpin (``truncate_inode_pages_range``). Costs no host memory in
        proportion to the size."""
        if not 0 <= size <= MAX_LFS_FILESIZE:
            raise InvalidArgument(f"ftruncate {self.name}: length {size:#x} is negative")
        if size % self.folio_bytes and self.order:
            raise InvalidArgument(f"ftruncate {self.name}: {size:#x} is not a multiple of "
                                  f"{self.folio_bytes:#x}")
        npages = -(-size // PAGE_SIZE)
        if npages < self.npages:
            keep = -(-npages // (1 << self.order)) << self.order
            self._release(keep)
            self.cache.resize(keep)
        self.cache.resize(npages)
        self.size = size

    def lookup(self, index: int, n: int) -> I64Array:
        """The pfns of pages ``[index, index + n)``, -1 where the page cache has none
        (``filemap_get_entry``; nothing is allocated). The caller bounds ``n``."""
        return self.cache.get(index, index + n)

    def pages(self, index: int, n: int) -> I64Array:
        """The pfns of pages ``[index, index + n)`` (inside the file), allocating the
        missing folios first: ENOMEM, nothing taken, when the machine has too few."""
        if self.order:
            self._alloc_folios(index, index + n)
        else:
            self._alloc_pages(index, index + n)
        return self.cache.get(index, index + n)

    def _alloc_pages(self, lo: int, hi: int) -> None:
        """``shmem_alloc_folio`` for each missing 4K page of ``[lo, hi)``, one call."""
        missing = hi - lo - self.cache.count(lo, hi)
        if not missing:
            return
        runs = self.mem.alloc_page_runs(missing, site="shmem_alloc_folio")
        window = self.cache.window(lo, hi)
        at = np.flatnonzero(window.pfns < 0)
        window.pfns[at] = np.concatenate([np.arange(p, p + c, dtype=np.int64)
                                          for p, c in runs])

    def _alloc_folios(self, lo: int, hi: int) -> None:
        """A huge page for each missing folio of ``[lo, hi)`` (whole folios: a hugetlb
        file is cached a folio at a time); ENOMEM before any is taken when the free
        huge pages are too few (the reservation ``hugetlb_reserve_pages`` checks)."""
        per = 1 << self.order
        lo, hi = lo // per * per, -(-hi // per) * per
        need = (hi - lo - self.cache.count(lo, hi)) // per
        if not need:
            return
        free = self.mem.frames.free_blocks_of(self.order)
        if need > free:
            raise OutOfMemory(f"memfd {self.name}: {need} huge pages of "
                              f"{self.folio_bytes:#x} wanted, {free} free")
        window = self.cache.window(lo, hi)
        for head in np.flatnonzero(window.pfns[::per] < 0).tolist():
            pfn = self.mem.frames.alloc(self.order)
            assert pfn is not None, "counted free above"
            window.pfns[head * per:(head + 1) * per] = np.arange(pfn, pfn + per,
                                                                 dtype=np.int64)

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

    def contains(self, pfns: I64Array) -> npt.NDArray[np.bool_]:
        """Whether each of ``pfns`` is a page of this file's page cache."""
        out: npt.NDArray[np.bool_] = np.isin(pfns, self.cache.present()[1])
        return out

    def get(self) -> MemFd:
        self.refs += 1
        return self

    def put(self) -> None:
        """``fput``: the last reference frees the page cache."""
        self.refs -= 1
        if not self.refs:
            self._release(0)
            self.cache.clear()

    def _release(self, keep: int) -> None:
        """Drop pages ``keep`` and on from the page cache (a folio at a time for hugetlb)."""
        pfns = self.cache.present(keep, self.npages)[1]
        if self.order:
            self.mem.free_unpinned_folios([(pfn, self.order)
                                           for pfn in pfns[::1 << self.order].tolist()])
        else:
            self.mem.free_unpinned(pfn_runs(pfns))
