"""A process's address space: VMAs, their backing, fault-in, copy-on-write, pinning and
locked_vm (mm/).

Each VMA keeps the pfn of every 4K page it maps (-1 where nothing is
faulted in yet), filled a folio at a time: anonymous memory takes 4K
frames, THP takes a 2M folio for every 2M-aligned stretch wholly inside
the VMA when the frame allocator has one (4K frames otherwise), hugetlb
takes its huge pages at mmap time (the reservation; ENOMEM if the machine
cannot supply them); ``munmap`` may cut a VMA in two. A VMA made from a
device region is VM_PFNMAP over MMIO: it has pfns but no pages, so it
cannot be pinned. GUP
(``pin_user_pages``) faults pages in, refuses writes to read-only VMAs and
stops at a hole, as ``__get_user_pages`` does; a munmapped page that is
still pinned stays allocated until its last unpin.

Private memory is copied on write. ``fork`` shares the parent's anonymous pages with
the child read-only (``copy_page_range``: a THP by its PMD, a hugetlb page whole) and
only copies at once, for the child, the pages that may be DMA-pinned
(``folio_needs_cow_for_dma``: the parent has pinned since it exists, MMF_HAS_PINNED,
and the page, or for a large folio any page of it, holds a pin). The first write to a
shared page, or a pin of one (GUP breaks COW for FOLL_WRITE and unshares for a
FOLL_PIN: ``gup_must_unshare``), copies it unless the writer's mapping is the only
one left (``do_wp_page``); each VMA keeps ``PageAnonExclusive`` per page and the
machine's :class:`~iommulab.mem.anon.AnonPages` how many mappings each anonymous page
has. A pin therefore always holds a page of the pinning process's own.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ..errors import BadAddress, InvalidArgument, OutOfMemory
from ..kernel import DEFAULT_KERNEL, KernelVersion
from ..sizes import parse_size
from .physmem import PhysMem, pfn_runs

if TYPE_CHECKING:
    from .memfd import MemFd

__all__ = ["BACKINGS", "TASK_SIZE_MAX", "MmStruct", "Vma", "access_ok", "pfn_runs"]

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
#: x86_64 ``TASK_SIZE_MAX`` with 4-level paging: the end of user space
TASK_SIZE_MAX = (1 << 47) - PAGE_SIZE
#: backing -> folio order a fault tries first
BACKINGS = {"anon": 0, "thp": 9, "hugetlb-2M": 9, "hugetlb-1G": 18}
_TASK_TOP = 0x7FFF_F000_0000  # mmap_base: mappings grow down from here
#: the release whose do_wp_page reuses a page of a PTE-mapped THP the writer's mm alone
#: maps (``__wp_can_reuse_large_anon_folio``, commit 1da190f4d0a6); 6.12 always copies it
LARGE_FOLIO_COW_REUSE = (6, 15)
I64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


def access_ok(addr: int, size: int) -> bool:
    """x86_64 ``access_ok``: a range check only (``addr + size`` within user space and not
    wrapping), whether or not anything is mapped there; the copy itself faults (EFAULT)."""
    return addr >= 0 and addr + size <= TASK_SIZE_MAX


@functools.cache
def _offsets(order: int) -> I64Array:
    """0 .. 2**order - 1, made once per order (read-only)."""
    out = np.arange(1 << order, dtype=np.int64)
    out.flags.writeable = False
    return out


def _aranges(runs: list[tuple[int, int]]) -> I64Array:
    return np.concatenate([np.arange(p, p + n, dtype=np.int64) for p, n in runs])


@dataclass
class Vma:
    """``struct vm_area_struct``: ``[start, end)`` with a pfn per page (-1: not present)."""

    start: int
    end: int
    backing: str
    writable: bool
    pfns: I64Array = field(repr=False)
    pfnmap: bool = False  # VM_PFNMAP | VM_IO (a device region)
    #: the large folios mapped whole by a PMD (PUD for 1G hugetlb): first pfn -> order
    folios: dict[int, int] = field(default_factory=dict, repr=False)
    file: MemFd | None = field(default=None, repr=False)  # a mapping of a memfd
    cow: BoolArray | None = field(default=None, repr=False)  # MAP_PRIVATE of
    # a file: True where the page is still the file's (copied on the first write)
    #: PageAnonExclusive: the anonymous page mapped here is this mapping's alone, so a
    #: write or a pin needs no copy (False for a page a fork shares, and for file pages)
    excl: BoolArray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.excl = np.zeros(self.npages, dtype=np.bool_)

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
        return self.pfnmap or (self.file is not None and self.cow is None)

    def anon(self, lo: int = 0, hi: int | None = None) -> BoolArray:
        """Where ``[lo, hi)`` maps an anonymous page: any present page of private memory,
        the private copies of a MAP_PRIVATE file."""
        pfns = self.pfns[lo:hi]
        if self.shared:
            return np.zeros(len(pfns), dtype=np.bool_)
        if self.cow is not None:
            return (pfns >= 0) & ~self.cow[lo:hi]
        return pfns >= 0

    def pmd_slots(self, lo: int = 0, hi: int | None = None) -> tuple[I64Array, I64Array]:
        """The page index and first pfn of each folio the VMA maps with a PMD (that holds
        a page of ``[lo, hi)``), in address order. O(pages / folio size)."""
        if not self.folios:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty
        per = 1 << self.order
        off = -(self.start >> PAGE_SHIFT) % per
        first = off + max(0, (lo - off) // per) * per
        last = self.npages - per if hi is None else min(self.npages - per, hi - 1)
        starts = np.arange(first, last + 1, per, dtype=np.int64)
        heads = self.pfns[starts]
        if len(heads) <= 64:  # a fault's few stretches
            keep = np.array([h in self.folios for h in heads.tolist()], dtype=np.bool_)
        else:
            keep = np.isin(heads, np.fromiter(self.folios, np.int64, count=len(self.folios)))
        return starts[keep], heads[keep]

    def pmd_mask(self, at: I64Array) -> BoolArray:
        """The pages of the PMD-mapped folios at page indices ``at`` (from
        :meth:`pmd_slots`)."""
        mask = np.zeros(self.npages, dtype=np.bool_)
        if len(at):
            per = 1 << self.order
            off = int(at[0]) % per
            rows = mask[off:off + (self.npages - off) // per * per].reshape(-1, per)
            rows[(at - off) // per] = True
        return mask


class MmStruct:
    """One process's memory: VMAs in address order, ``locked_vm`` in pages. ``kernel``
    is the release whose copy-on-write rules it follows."""

    def __init__(self, mem: PhysMem, kernel: KernelVersion = DEFAULT_KERNEL) -> None:
        self.mem = mem
        self.kernel = kernel
        self.vmas: list[Vma] = []
        self._starts: list[int] = []
        self.locked_vm = 0  # pages charged against RLIMIT_MEMLOCK (mm->locked_vm)
        self.pinned_vm = 0  # mm->pinned_vm (iommufd charges it in every account mode)
        self.pinned_pages = 0  # pages this mm's GUP pins hold (lab)
        self.has_pinned = False  # MMF_HAS_PINNED: FOLL_PIN has run on this mm, never cleared
        self._top = _TASK_TOP
        self.anon = mem.anon  # the mapcounts it shares with the machine's other processes
        self.anon.mms.add(self)
        self.gone = False  # exit_mmap ran: mmget_not_zero() fails from now on

    # -- mmap / munmap -------------------------------------------------------------------------
    def mmap(self, length: int | str, backing: str = "anon", *, writable: bool = True,
             populate: bool = False, mmio_pa: int | None = None, file: MemFd | None = None,
             offset: int = 0, private: bool = False) -> int:
        """A new mapping of ``length`` bytes (rounded up to pages, or to the huge page for
        hugetlb); THP and hugetlb mappings of 2M or more are aligned to their huge size.
        ``file``: a mapping of a memfd from byte ``offset``, its pages the file's
        (allocated now); ``private`` (MAP_PRIVATE) copies a page on its first write."""
        nbytes = parse_size(length)
        if nbytes <= 0:
            raise InvalidArgument(f"mmap: length {nbytes:#x} must be positive")
        if backing not in BACKINGS:
            raise InvalidArgument(f"mmap: backing {backing!r} is not one of {sorted(BACKINGS)}")
        order = BACKINGS[backing] if mmio_pa is None else 0
        huge = PAGE_SIZE << order
        if backing.startswith("hugetlb") and mmio_pa is None:
            nbytes = -(-nbytes // huge) * huge
        nbytes = -(-nbytes // PAGE_SIZE) * PAGE_SIZE
        align = huge if order and nbytes >= huge else PAGE_SIZE
        start = (self._top - nbytes) & ~(align - 1)
        vma = Vma(start, start + nbytes, backing, writable,
                  np.full(nbytes >> PAGE_SHIFT, -1, dtype=np.int64), pfnmap=mmio_pa is not None)
        if mmio_pa is not None:
            vma.pfns[:] = np.arange(vma.npages, dtype=np.int64) + (mmio_pa >> PAGE_SHIFT)
        elif file is not None:
            if offset % PAGE_SIZE or offset + nbytes > -(-file.size // PAGE_SIZE) * PAGE_SIZE:
                raise InvalidArgument(f"mmap: [{offset:#x}, +{nbytes:#x}) is not inside "
                                      f"memfd {file.name} of {file.size:#x} bytes")
            vma.pfns[:] = file.pages(offset >> PAGE_SHIFT, vma.npages)
            vma.file = file.get()
            if private:
                vma.cow = np.ones(vma.npages, dtype=np.bool_)
        elif backing.startswith("hugetlb") or populate:
            self._fault(vma, 0, vma.npages)
        self._top = start - PAGE_SIZE  # a guard gap between mappings
        self._link(vma)
        return start

    def munmap(self, addr: int, length: int) -> None:
        """``munmap``: unmap ``[addr, addr + length)`` (length rounded up to pages),
        splitting the VMAs it cuts. EINVAL for an unaligned ``addr``, a length of 0, or a
        cut through a hugetlb page (nothing is changed then).

        A THP folio the cut goes through is mapped by 4K pages from then on (its PMD is
        split); the pages no process maps any more are freed unless pinned, in which
        case they go with their last unpin (:class:`~iommulab.mem.anon.AnonPages`).
        """
        if addr & (PAGE_SIZE - 1) or length <= 0:
            raise InvalidArgument(f"munmap: addr {addr:#x} length {length:#x}")
        end = addr + -(-length // PAGE_SIZE) * PAGE_SIZE
        hit = [v for v in self.vmas if v.start < end and addr < v.end]
        for vma in hit:
            huge = PAGE_SIZE << BACKINGS[vma.backing]
            if vma.backing.startswith("hugetlb") and not vma.pfnmap and (
                    (vma.start < addr and addr % huge) or (end < vma.end and end % huge)):
                raise InvalidArgument(f"munmap: [{addr:#x}, {end:#x}) cuts a "
                                      f"{vma.backing} page of {vma!r}")
        for vma in hit:
            if addr <= vma.start and vma.end <= end:
                self._drop(vma)
            else:
                self._cut(vma, max(addr, vma.start), min(end, vma.end))

    def close(self) -> None:
        """exit_mmap: every mapping goes; the mm can no longer be pinned from."""
        for vma in list(self.vmas):
            self._drop(vma)
        self.gone = True
        self.anon.mms.discard(self)

    def _link(self, vma: Vma) -> None:
        i = bisect.bisect(self._starts, vma.start)
        self.vmas.insert(i, vma)
        self._starts.insert(i, vma.start)

    def _unlink(self, vma: Vma) -> None:
        i = self.vmas.index(vma)
        del self.vmas[i], self._starts[i]

    def _drop(self, vma: Vma) -> None:
        self._unlink(vma)
        self._zap(vma, 0, vma.npages)
        if vma.file is not None:
            vma.file.put()
            vma.file = None
        vma.folios.clear()
        vma.pfns[:] = -1
        vma.excl[:] = False

    def _cut(self, vma: Vma, lo: int, hi: int) -> None:
        """Unmap ``[lo, hi)``, strictly inside ``vma``: the parts left and right of it
        become VMAs of their own. A folio the cut goes through stays mapped by 4K pages
        on either side (``__split_huge_pmd``)."""
        i0, i1 = (lo - vma.start) >> PAGE_SHIFT, (hi - vma.start) >> PAGE_SHIFT
        at, heads = vma.pmd_slots()
        per = 1 << vma.order
        self._unlink(vma)
        self._zap(vma, i0, i1)
        for first, last, whole in ((0, i0, at + per <= i0), (i1, vma.npages, at >= i1)):
            if first == last:
                continue
            piece = Vma(vma.start + (first << PAGE_SHIFT), vma.start + (last << PAGE_SHIFT),
                        vma.backing, vma.writable, vma.pfns[first:last].copy(), vma.pfnmap,
                        dict.fromkeys(heads[whole].tolist(), vma.order),
                        vma.file.get() if vma.file is not None else None,
                        vma.cow[first:last].copy() if vma.cow is not None else None)
            piece.excl[:] = vma.excl[first:last]
            self._link(piece)
        if vma.file is not None:
            vma.file.put()

    def _zap(self, vma: Vma, lo: int, hi: int) -> None:
        """``zap_page_range`` of the anonymous pages of ``[lo, hi)``: a PMD-mapped folio
        wholly inside goes as one mapping, every other page on its own."""
        at, heads = vma.pmd_slots()
        inside = (at >= lo) & (at + (1 << vma.order) <= hi)
        pages = vma.anon(lo, hi) & ~vma.pmd_mask(at[inside])[lo:hi]
        self.anon.unmap_folios(heads[inside], vma.order)
        self.anon.unmap(vma.pfns[lo:hi][pages])

    # -- fork ------------------------------------------------------------------------------------
    def fork(self) -> MmStruct:
        """``dup_mmap``: the child's address space. Device regions and MAP_SHARED memory
        are the same pages; private memory is shared until written (:meth:`_dup_anon`).
        ENOMEM (the child torn down) when the pages to copy now cannot be had."""
        child = MmStruct(self.mem, self.kernel)
        child._top = self._top
        pinned = self._pinned_folios()
        try:
            for vma in self.vmas:
                copy = Vma(vma.start, vma.end, vma.backing, vma.writable,
                           vma.pfns.copy(), vma.pfnmap)
                if vma.file is not None:
                    copy.file = vma.file.get()
                    copy.cow = vma.cow.copy() if vma.cow is not None else None
                child._link(copy)
                self._dup_anon(vma, copy, pinned)
        except OutOfMemory:
            child.close()
            raise
        return child

    def _dup_anon(self, src: Vma, dst: Vma, pinned: I64Array | None) -> None:
        """``copy_page_range`` of the anonymous pages of ``src`` into the child's ``dst``
        (which starts with the parent's pfns; ``pinned``: :meth:`_pinned_folios`). A page
        is shared (both lose PageAnonExclusive, its mapcount grows), except an exclusive
        page that may be pinned (``folio_try_dup_anon_rmap_*`` fails), which the child
        gets a copy of now (``copy_present_page``). A THP goes by its PMD
        (``copy_huge_pmd``), unless it may be pinned: then the parent's PMD is split and
        each of its pages copied. A hugetlb page is shared or copied whole
        (``copy_hugetlb_page_range``). O(pages) numpy work, a Python step per run of
        shared folios and per folio copied."""
        anon = src.anon()
        at, heads = src.pmd_slots()
        copy_folio = np.zeros(len(at), dtype=np.bool_)
        if pinned is not None:
            copy_folio = np.isin(heads, pinned) & src.excl[at]
        copied_pmds = src.pmd_mask(at[copy_folio])
        shared_pmds = src.pmd_mask(at[~copy_folio])
        ptes = anon & ~copied_pmds & ~shared_pmds
        copy_ptes = np.zeros(src.npages, dtype=np.bool_)
        if pinned is not None:
            idx = np.flatnonzero(ptes & src.excl)
            copy_ptes[idx] = self._maybe_pinned(src.pfns[idx], pinned)
        shared_ptes = ptes & ~copy_ptes
        dst.pfns[copied_pmds | copy_ptes] = -1  # nothing up to the copies can fail
        self.anon.map_folios(heads[~copy_folio], src.order)
        self.anon.map_pages(src.pfns[shared_ptes])
        src.excl[shared_pmds | shared_ptes] = False
        dst.folios.update(dict.fromkeys(heads[~copy_folio].tolist(), src.order))
        if src.backing.startswith("hugetlb"):  # hugetlb_try_dup_anon_rmap failed: a copy
            per = 1 << src.order
            for i, head in zip(at[copy_folio].tolist(), heads[copy_folio].tolist(),
                               strict=True):
                new = self._copy_huge(src, i, head, "fork of a pinned page")
                dst.pfns[i:i + per] = new + _offsets(src.order)
                dst.excl[i:i + per] = True
                dst.folios[new] = src.order
            return
        for head in heads[copy_folio].tolist():
            del src.folios[head]  # __split_huge_pmd: its pages are copied one by one
        copy = np.flatnonzero(copied_pmds | copy_ptes)
        if len(copy):
            dst.pfns[copy] = self._copies(src.pfns[copy], "alloc_pages(fork)")
            dst.excl[copy] = True

    def _copy_huge(self, vma: Vma, i: int, head: int, why: str) -> int:
        """A new huge page of ``vma``'s order holding the bytes of the one at ``head``
        (mapped at page ``i``), counted as mapped once: the copy ``copy_hugetlb_page_range``
        makes for the child of a fork and ``hugetlb_wp`` for a writer. Returns its first
        pfn; ENOMEM, naming ``why``, if the machine has no free one."""
        new = self.mem.frames.alloc(vma.order)
        if new is None:
            raise OutOfMemory(f"{why}: no free {PAGE_SIZE << vma.order:#x} hugetlb page to "
                              f"copy the one at {vma.start + (i << PAGE_SHIFT):#x}")
        span = _offsets(vma.order)
        self.anon.new_folios([new], vma.order)
        self.mem.contents.copy_pages(head + span, new + span)
        return new

    def _pinned_folios(self) -> I64Array | None:
        """The first pfns of the large folios that hold a pin, or None when nothing this
        mm maps may be pinned (no MMF_HAS_PINNED, or no pin at all)."""
        if not self.has_pinned or not self.mem.pins.pins:
            return None
        heads = self.anon.folio_of(self.mem.pins.nonzero())
        return np.unique(heads[heads >= 0])

    def _maybe_pinned(self, pfns: I64Array, pinned: I64Array) -> BoolArray:
        """``folio_maybe_dma_pinned`` of the folio of each of ``pfns`` (mapped by PTEs):
        for a large folio a pin on any of its pages (``pinned``: those folios), for a 4K
        page a pin on it (the kernel guesses from its refcount, the model knows)."""
        out: BoolArray = (self.mem.pins.get(pfns) > 0) | np.isin(self.anon.folio_of(pfns),
                                                                 pinned)
        return out

    def _copies(self, old: I64Array, site: str) -> I64Array:
        """New 4K anonymous pages holding the bytes of ``old`` (one allocation call, so
        one fault-injection point, for the lot; ENOMEM takes nothing)."""
        new = _aranges(self.mem.alloc_page_runs(len(old), site=site))
        self.mem.contents.copy_pages(old, new)
        self.anon.map_pages(new)
        return new

    # -- faults ----------------------------------------------------------------------------------
    def find_vma(self, addr: int) -> Vma | None:
        i = bisect.bisect(self._starts, addr) - 1
        if i >= 0 and addr < self.vmas[i].end:
            return self.vmas[i]
        return None

    def _fault(self, vma: Vma, first: int, count: int) -> None:
        """Fault in pages ``[first, first + count)`` of ``vma``, a folio at a time; new
        pages are the mapping's alone."""
        pfns = vma.pfns
        if not (pfns[first:first + count] < 0).any():
            return
        order = BACKINGS[vma.backing]
        if order:
            self._fault_folios(vma, first, count, order)
        missing = np.flatnonzero(pfns[first:first + count] < 0) + first
        if len(missing):
            try:
                runs = self.mem.alloc_page_runs(len(missing), site="alloc_pages(page fault)")
            except OutOfMemory as err:
                raise OutOfMemory(f"page fault at {vma.start + (int(missing[0]) << PAGE_SHIFT):#x}"
                                  f": {err}") from None
            pfns[missing] = _aranges(runs)
            vma.excl[missing] = True
            self.anon.map_pages(pfns[missing])

    def _fault_folios(self, vma: Vma, first: int, count: int, order: int) -> None:
        """A folio of ``order`` for each aligned stretch wholly inside ``vma`` and wholly
        unpopulated that holds a page of ``[first, first + count)``, while the frame
        allocator has one (a stretch that already has 4K pages keeps faulting 4K pages, as a
        PMD with a page table does); hugetlb has no 4K fallback (ENOMEM). O(pages) numpy
        work and one allocation call per folio."""
        per = 1 << order
        off = -(vma.start >> PAGE_SHIFT) % per  # index of the VMA's first aligned stretch
        slots = (vma.npages - off) // per
        lo = max(0, (first - off) // per)
        hi = min(slots, -(-(first + count - off) // per))
        if lo >= hi:
            return
        stretches = vma.pfns[off + lo * per:off + hi * per].reshape(hi - lo, per)
        excl = vma.excl[off + lo * per:off + hi * per].reshape(hi - lo, per)
        rows: list[int] = []
        got: list[int] = []
        try:
            for row in np.flatnonzero((stretches < 0).all(axis=1)).tolist():
                pfn = self.mem.frames.alloc(order)
                if pfn is not None:
                    rows.append(row)
                    got.append(pfn)
                elif vma.backing.startswith("hugetlb"):
                    raise OutOfMemory(f"hugetlb: no free {PAGE_SIZE << order:#x} page for "
                                      f"{vma.start + ((off + (lo + row) * per) << PAGE_SHIFT):#x}")
        finally:  # the folios taken so far are mapped even when hugetlb runs out
            vma.folios.update(dict.fromkeys(got, order))
            self.anon.new_folios(got, order)
            offsets = _offsets(order)
            for i in range(0, len(rows), 4096):  # bounded temporaries
                stretches[rows[i:i + 4096]] = np.array(got[i:i + 4096],
                                                       dtype=np.int64)[:, None] + offsets
            excl[rows] = True

    # -- copy on write ---------------------------------------------------------------------------
    def _break_cow(self, vma: Vma, first: int, count: int) -> None:
        """The write fault (``do_wp_page``) or, for a pin, the unshare fault
        (FAULT_FLAG_UNSHARE) of every present page of ``[first, first + count)`` the
        mapping does not have alone: afterwards each is an anonymous page exclusive to
        it. Shared mappings are written in place."""
        hi = first + count
        if vma.shared or vma.excl[first:hi].all():
            return
        if vma.backing.startswith("hugetlb") and vma.file is None:
            self._hugetlb_wp(vma, first, hi)
            return
        if vma.folios:
            self._huge_pmd_wp(vma, first, hi)
        idx = np.flatnonzero(~vma.excl[first:hi] & (vma.pfns[first:hi] >= 0)) + first
        if not len(idx):
            return
        file_page = vma.cow[idx] if vma.cow is not None else np.zeros(len(idx), np.bool_)
        anon = idx[~file_page]
        reuse = self._can_reuse(vma, anon)
        vma.excl[anon[reuse]] = True
        copy = np.sort(np.concatenate([idx[file_page], anon[~reuse]]))
        if len(copy):
            self._wp_page_copy(vma, copy)

    def _huge_pmd_wp(self, vma: Vma, first: int, hi: int) -> None:
        """``do_huge_pmd_wp_page`` for each shared THP of ``[first, hi)`` mapped by a PMD:
        reused whole when this PMD is its only reference (every page mapped once, no
        pin), else the PMD is split and the written pages are copied one by one."""
        at, heads = vma.pmd_slots(first, hi)
        per = 1 << vma.order
        hit = ~vma.excl[at]
        for i, head in zip(at[hit].tolist(), heads[hit].tolist(), strict=True):
            only_ref = (self.anon.maps.range(head, per) == 1).all() and \
                not self.mem.pins.range(head, per).any()
            if only_ref:
                vma.excl[i:i + per] = True
            else:
                del vma.folios[head]

    def _can_reuse(self, vma: Vma, idx: I64Array) -> BoolArray:
        """``wp_can_reuse_anon_folio`` of the anonymous pages at ``idx``: a 4K page when
        its mapping here is its only reference. A page of a large folio mapped by 4K
        pages: never in 6.12; from 6.15 when all the folio's references are mappings in
        this mm and there is more than one (``__wp_can_reuse_large_anon_folio``), decided
        once per folio. O(pages) numpy work and a Python step per large folio."""
        pfns = vma.pfns[idx]
        heads = self.anon.folio_of(pfns)
        small = heads < 0
        reuse: BoolArray = small & (self.anon.maps.get(pfns) == 1) & \
            (self.mem.pins.get(pfns) == 0)
        if self.kernel >= LARGE_FOLIO_COW_REUSE:
            large = np.flatnonzero(~small)
            folios, first, which = np.unique(heads[large], return_index=True,
                                             return_inverse=True)
            here_only = np.array([self._folio_mapped_here_only(vma, i, head) for i, head in
                                  zip(idx[large[first]].tolist(), folios.tolist(),
                                      strict=True)], dtype=np.bool_)
            reuse[large] = here_only[which]
        return reuse

    def _folio_mapped_here_only(self, vma: Vma, i: int, head: int) -> bool:
        """Every reference of the large folio at ``head`` is a mapping in this mm, and it
        has more than one. A page of an anonymous folio is mapped at most once per mm,
        at the address it was first faulted at, which ``vma``'s page ``i`` gives: only
        the VMAs over that folio-sized stretch are looked at (found by bisection)."""
        order = self.anon.folios[head]
        per = 1 << order
        total = int(self.anon.maps.range(head, per).sum())
        if total <= 1 or self.mem.pins.range(head, per).any():
            return False
        base = vma.start + ((i - (int(vma.pfns[i]) - head)) << PAGE_SHIFT)
        end = base + (per << PAGE_SHIFT)
        mine = 0
        for j in range(max(0, bisect.bisect(self._starts, base) - 1),
                       bisect.bisect_left(self._starts, end)):
            other = self.vmas[j]
            lo, hi = max(base, other.start), min(end, other.end)
            if lo < hi:
                got = other.pfns[(lo - other.start) >> PAGE_SHIFT:(hi - other.start) >> PAGE_SHIFT]
                want = head + ((lo - base) >> PAGE_SHIFT) + _offsets(order)[:len(got)]
                mine += int(np.count_nonzero(got == want))
        return mine == total

    def _wp_page_copy(self, vma: Vma, idx: I64Array) -> None:
        """``wp_page_copy``: the pages at ``idx`` become new copies of their own; the old
        anonymous ones lose this mapping (a file page stays the file's)."""
        old = vma.pfns[idx]
        new = self._copies(old, "alloc_pages(copy on write)")
        was_anon = ~vma.cow[idx] if vma.cow is not None else np.ones(len(idx), np.bool_)
        vma.pfns[idx] = new
        vma.excl[idx] = True
        if vma.cow is not None:
            vma.cow[idx] = False
        self.anon.unmap(old[was_anon])

    def _hugetlb_wp(self, vma: Vma, first: int, hi: int) -> None:
        """``hugetlb_wp`` for each shared huge page of ``[first, hi)``: reused when this
        is its only mapping, else copied whole into a new huge page (ENOMEM if the
        machine has none; Linux would take the page from the children when the writer
        owns the mapping's reservation, which the model does not keep)."""
        at, heads = vma.pmd_slots(first, hi)
        per = 1 << vma.order
        span = _offsets(vma.order)
        hit = ~vma.excl[at]
        for i, head in zip(at[hit].tolist(), heads[hit].tolist(), strict=True):
            if self.anon.maps.range(head, 1)[0] != 1:
                new = self._copy_huge(vma, i, head, "hugetlb copy on write")
                del vma.folios[head]
                vma.folios[new] = vma.order
                vma.pfns[i:i + per] = new + span
                self.anon.unmap(head + span)
            vma.excl[i:i + per] = True

    # -- GUP -------------------------------------------------------------------------------------
    def pin_user_pages(self, addr: int, npages: int, write: bool) -> I64Array:
        """``pin_user_pages_remote(FOLL_LONGTERM)``: the pfns of the first pages that could
        be pinned (fewer than ``npages`` at a hole, a PFNMAP or a read-only VMA for a
        write; none there raises EFAULT, as vfio turns a 0 return into EFAULT). A page
        the mapping does not have alone is copied first, for a write (FOLL_WRITE's
        write fault) and for a read-only pin too (``gup_must_unshare``: a shared
        anonymous page, a file page of a private mapping), so later writes keep the
        pinned page. Sets MMF_HAS_PINNED first, as ``__get_user_pages_locked`` does."""
        views = self._gup(addr, npages, write)
        pfns = np.concatenate(views) if len(views) > 1 else views[0].copy()
        self.mem.pin_pages(pfns)
        self.pinned_pages += len(pfns)
        return pfns

    def pin_user_page_runs(self, addr: int, npages: int, write: bool) -> list[tuple[int, int]]:
        """:meth:`pin_user_pages`, answering with the ``(first pfn, pages)`` runs, found
        VMA by VMA in the VMAs' own pfns (no array of the pages is made); a run that
        goes on across a VMA boundary is one run."""
        runs: list[tuple[int, int]] = []
        for view in self._gup(addr, npages, write):
            more = pfn_runs(view)
            if runs and runs[-1][0] + runs[-1][1] == more[0][0]:
                pfn, count = runs.pop()
                more[0] = (pfn, count + more[0][1])
            runs += more
        self.mem.pin_runs(runs)
        self.pinned_pages += sum(n for _, n in runs)
        return runs

    def _gup(self, addr: int, npages: int, write: bool) -> list[I64Array]:
        """The pages :meth:`pin_user_pages` pins, faulted in and made the mapping's own:
        a view of each VMA's pfns, in address order (valid until the mm next changes)."""
        self.has_pinned = True
        views: list[I64Array] = []
        for vma, first, n in self._gup_vmas(addr, npages, write):
            self._fault(vma, first, n)
            self._break_cow(vma, first, n)
            views.append(vma.pfns[first:first + n])
        if not views:
            raise BadAddress(f"pin_user_pages: nothing pinnable at {addr:#x}")
        return views

    def gup_fast(self, addr: int, npages: int, write: bool) -> int:
        """How many pages from ``addr`` (up to ``npages``) GUP would pin as they are:
        present, in a VMA it may pin from, and needing no copy (the pages ``gup_fast``
        takes without a fault; lab: callers pin those in one go and fault the rest as
        the kernel's batches do). O(the answer) numpy work: windows that double."""
        done = 0
        for vma, first, n in self._gup_vmas(addr, npages, write):
            pos, end, window = first, first + n, 512
            while pos < end:
                hi = min(end, pos + window)
                ready = vma.pfns[pos:hi] >= 0 if vma.shared else vma.excl[pos:hi]
                if not ready.all():
                    return done + pos - first + int(np.argmin(ready))
                pos, window = hi, window * 2
            done += n
        return done

    def get_user_pages(self, addr: int, npages: int) -> I64Array:
        """``get_user_pages_fast(addr, npages, 0, pages)``, a plain read get (no FOLL_PIN,
        so nothing is unshared or marked pinned): the pfns of the first pages that could
        be had, faulted in; fewer than ``npages`` at a hole or a PFNMAP, none raises
        EFAULT. The model keeps no page references, so nothing is held afterwards (the
        callers ``put_page`` at once)."""
        out: list[I64Array] = []
        for vma, first, n in self._gup_vmas(addr, npages, False):
            self._fault(vma, first, n)
            out.append(vma.pfns[first:first + n])
        if not out:
            raise BadAddress(f"get_user_pages: nothing to get at {addr:#x}")
        return np.concatenate(out) if len(out) > 1 else out[0].copy()

    def _gup_vmas(self, addr: int, npages: int, write: bool) -> Iterator[tuple[Vma, int, int]]:
        """``(vma, first page, pages)`` of ``[addr, addr + npages pages)`` VMA by VMA, up to
        the first page GUP may not pin (a hole, a PFNMAP, a write to a read-only VMA)."""
        done = 0
        while done < npages:
            vaddr = addr + (done << PAGE_SHIFT)
            vma = self.find_vma(vaddr)
            if vma is None or vma.pfnmap or (write and not vma.writable):
                return
            first = (vaddr - vma.start) >> PAGE_SHIFT
            n = min(npages - done, vma.npages - first)
            yield vma, first, n
            done += n

    def unpin_user_pages(self, pfns: I64Array) -> None:
        """``unpin_user_pages``; a page nobody maps or caches any more is freed with its
        last pin (:class:`PhysMem` frees it)."""
        self.mem.unpin_pages(pfns)
        self.pinned_pages -= len(pfns)

    def unpin_user_page_runs(self, runs: list[tuple[int, int]]) -> None:
        """:meth:`unpin_user_pages` of ``(first pfn, pages)`` runs, as
        ``unpin_user_page_range_dirty_lock`` takes them."""
        self.mem.unpin_runs(runs)
        self.pinned_pages -= sum(n for _, n in runs)

    def follow_pfn(self, addr: int, write: bool) -> tuple[int, int] | None:
        """``follow_fault_pfn`` on a VM_PFNMAP VMA: (pfn, pages to the VMA's end), or None
        when ``addr`` is not in one. EFAULT for a write through a read-only mapping (its
        PTEs are not writable: ``if (write_fault && !args.writable) ret = -EFAULT``)."""
        vma = self.find_vma(addr)
        if vma is None or not vma.pfnmap:
            return None
        if write and not vma.writable:
            raise BadAddress(f"follow_fault_pfn: write through the read-only PFNMAP at "
                             f"{addr:#x}")
        i = (addr - vma.start) >> PAGE_SHIFT
        return int(vma.pfns[i]), vma.npages - i

    # -- the CPU's view --------------------------------------------------------------------------
    def _runs(self, addr: int, n: int, write: bool) -> list[tuple[int, int]]:
        """``(pa, length)`` runs of ``[addr, addr + n)``, faulting it in a VMA at a time."""
        runs: list[tuple[int, int]] = []
        pos, end = addr, addr + n
        while pos < end:
            vma = self.find_vma(pos)
            if vma is None or (write and not vma.writable):
                raise BadAddress(f"{'write' if write else 'read'} at {pos:#x}: "
                                 "no mapping allows it (SIGSEGV)")
            seg_end = min(end, vma.end)
            first = (pos - vma.start) >> PAGE_SHIFT
            count = ((seg_end - 1 - vma.start) >> PAGE_SHIFT) - first + 1
            self._fault(vma, first, count)
            if write:
                self._break_cow(vma, first, count)
            page_va = vma.start + (first << PAGE_SHIFT)  # start of the run's first page
            for pfn, pages in pfn_runs(vma.pfns[first:first + count]):
                lo = max(pos, page_va)
                hi = min(seg_end, page_va + (pages << PAGE_SHIFT))
                runs.append(((pfn << PAGE_SHIFT) + lo - page_va, hi - lo))
                page_va += pages << PAGE_SHIFT
            pos = seg_end
        return runs

    def read(self, addr: int, n: int) -> bytes:
        return b"".join(self.mem.read(pa, k) for pa, k in self._runs(addr, n, False))

    def copy_to_user(self, addr: int, data: bytes) -> int:
        """``copy_to_user``: write what fits in writable mappings from ``addr`` on and
        return the bytes left uncopied (the copy stops at the first page it cannot
        write, as x86's does)."""
        end, pos = addr + len(data), addr
        while pos < end:
            vma = self.find_vma(pos)
            if vma is None or not vma.writable:
                break
            pos = min(end, vma.end)
        if pos > addr:
            self.write(addr, data[:pos - addr])
        return end - pos

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        done = 0
        cache = self.mem.cpu_cache
        for pa, k in self._runs(addr, len(view), True):
            if cache is not None and self.mem.is_ram(pa):
                cache.cpu_write(pa, view[done:done + k])
            else:
                self.mem.write(pa, view[done:done + k])
            done += k

    def clflush(self, addr: int, n: int) -> None:
        """``clflush`` of every line of ``[addr, addr + n)`` (lab: the CPU cache model; a
        flush is per page there)."""
        cache = self.mem.cpu_cache
        if cache is None or n <= 0:
            return
        base = addr & ~(PAGE_SIZE - 1)
        runs = self._runs(base, -(-(addr - base + n) // PAGE_SIZE) * PAGE_SIZE, False)
        cache.flush_pfns(np.concatenate([np.arange(pa >> PAGE_SHIFT, (pa + k) >> PAGE_SHIFT)
                                         for pa, k in runs]))

    # -- checks ----------------------------------------------------------------------------------
    def anon_pfns(self) -> I64Array:
        """The anonymous pages this mm maps, one entry per mapping."""
        parts = [vma.pfns[vma.anon()] for vma in self.vmas]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def _check(self) -> None:
        """O(pages): VMAs ordered and disjoint; a page is exclusive only where an anonymous
        page is mapped; a PMD-mapped folio is a live large folio mapped whole here."""
        assert self._starts == [v.start for v in self.vmas] == sorted(self._starts)
        for prev, vma in zip(self.vmas, self.vmas[1:], strict=False):
            assert prev.end <= vma.start, f"{prev!r} overlaps {vma!r}"
        for vma in self.vmas:
            assert len(vma.pfns) == len(vma.excl) == vma.npages
            assert not (vma.excl & ~vma.anon()).any(), f"{vma!r}: exclusive non-anon page"
            assert (self.anon.maps.get(vma.pfns[vma.excl]) == 1).all(), \
                f"{vma!r}: an exclusive page has another mapping"
            at, heads = vma.pmd_slots()
            assert len(heads) == len(vma.folios), f"{vma!r}: a PMD folio is not in place"
            for i, head in zip(at.tolist(), heads.tolist(), strict=True):
                assert self.anon.folios.get(head) == vma.order, f"{head:#x}: no such folio"
                per = 1 << vma.order
                assert (vma.pfns[i:i + per] == head + np.arange(per)).all()
                assert len(set(vma.excl[i:i + per].tolist())) == 1
