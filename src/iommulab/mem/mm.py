"""A process's address space: VMAs, their backing, fault-in, pinning and locked_vm (mm/).

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
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

import numpy as np
import numpy.typing as npt

from ..errors import BadAddress, InvalidArgument, OutOfMemory
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
I64Array = npt.NDArray[np.int64]


def access_ok(addr: int, size: int) -> bool:
    """x86_64 ``access_ok``: a range check only (``addr + size`` within user space and not
    wrapping), whether or not anything is mapped there; the copy itself faults (EFAULT)."""
    return addr >= 0 and addr + size <= TASK_SIZE_MAX


@dataclass
class Vma:
    """``struct vm_area_struct``: ``[start, end)`` with a pfn per page (-1: not present)."""

    start: int
    end: int
    backing: str
    writable: bool
    pfns: I64Array = field(repr=False)
    pfnmap: bool = False  # VM_PFNMAP | VM_IO (a device region)
    folios: list[tuple[int, int]] = field(default_factory=list, repr=False)  # (pfn, order>0)
    pages: list[tuple[int, int]] = field(default_factory=list, repr=False)  # 4K pages' runs
    file: MemFd | None = field(default=None, repr=False)  # a mapping of a memfd
    cow: npt.NDArray[np.bool_] | None = field(default=None, repr=False)  # MAP_PRIVATE of
    # a file: True where the page is still the file's (copied on the first write)

    @property
    def npages(self) -> int:
        return (self.end - self.start) >> PAGE_SHIFT


@dataclass
class _Orphans:
    """Pages munmapped while pinned: freed with their last unpin, whichever process's GUP
    pin that is (a pin can move to another process with VFIO's VADDR update)."""

    folios: list[tuple[int, int]] = field(default_factory=list)  # (pfn, order)
    pages: list[tuple[int, int]] = field(default_factory=list)  # 4K pages' runs


_ORPHANS: WeakKeyDictionary[PhysMem, _Orphans] = WeakKeyDictionary()

class MmStruct:
    """One process's memory: VMAs in address order, ``locked_vm`` in pages."""

    def __init__(self, mem: PhysMem) -> None:
        self.mem = mem
        self.vmas: list[Vma] = []
        self._starts: list[int] = []
        self.locked_vm = 0  # pages charged against RLIMIT_MEMLOCK (mm->locked_vm)
        self.pinned_vm = 0  # mm->pinned_vm (iommufd charges it in every account mode)
        self.pinned_pages = 0  # pages this mm's GUP pins hold (lab)
        self._top = _TASK_TOP
        self._orphans = _ORPHANS.setdefault(mem, _Orphans())  # shared by the machine's mms
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
            self._fault(vma, 0, vma.npages, strict=True)
        self._top = start - PAGE_SIZE  # a guard gap between mappings
        self._link(vma)
        return start

    def munmap(self, addr: int, length: int) -> None:
        """``munmap``: unmap ``[addr, addr + length)`` (length rounded up to pages),
        splitting the VMAs it cuts. EINVAL for an unaligned ``addr``, a length of 0, or a
        cut through a hugetlb page (nothing is changed then).

        A THP folio the cut goes through is split into 4K pages (``split_huge_page``,
        which Linux defers): the pages outside the range stay mapped, those inside are
        freed unless pinned, in which case they go with their last unpin.
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

    def fork(self) -> MmStruct:
        """``dup_mmap``: the child's copy. Shared memfd mappings share the file's pages and
        device regions their PFNs; private memory is copied now, folio by folio as the
        parent has it (the model copies eagerly where Linux copies on write; pinned pages
        are copied at fork by Linux too), so the two never share a private page."""
        child = MmStruct(self.mem)
        child._top = self._top
        for vma in self.vmas:
            copy = Vma(vma.start, vma.end, vma.backing, vma.writable,
                       np.full(vma.npages, -1, dtype=np.int64), vma.pfnmap)
            if vma.pfnmap or vma.file is not None:
                copy.pfns[:] = vma.pfns
                copy.file = vma.file.get() if vma.file is not None else None
                if vma.cow is not None:  # the parent's private copies are copied again
                    copy.cow = ~vma.cow
                    child._unshare(copy, 0, vma.npages)
                    copy.cow[:] = vma.cow
            else:
                present = np.flatnonzero(vma.pfns >= 0)
                for first, count in pfn_runs(present):
                    child._fault(copy, first, count, strict=True)
                self._copy_contents(vma.pfns[present], copy.pfns[present])
            child._link(copy)
        return child

    def _copy_contents(self, src: I64Array, dst: I64Array) -> None:
        """Copy the bytes of the pages that have any (others read as zeros anyway)."""
        written = np.fromiter(self.mem.contents.pfns(), dtype=np.int64)
        has = np.isin(src, written)
        contents = self.mem.contents
        for s, d in zip(src[has].tolist(), dst[has].tolist(), strict=True):
            contents.page_for_write(d)[:] = contents.page(s)

    def _link(self, vma: Vma) -> None:
        i = bisect.bisect(self._starts, vma.start)
        self.vmas.insert(i, vma)
        self._starts.insert(i, vma.start)

    def _unlink(self, vma: Vma) -> None:
        i = self.vmas.index(vma)
        del self.vmas[i], self._starts[i]

    def _drop(self, vma: Vma) -> None:
        self._unlink(vma)
        if vma.file is not None:
            vma.file.put()
            vma.file = None
        self._orphans.folios += self.mem.free_unpinned_folios(vma.folios)
        vma.folios.clear()
        self._orphans.pages += self.mem.free_unpinned(vma.pages)
        vma.pages.clear()
        vma.pfns[:] = -1

    def _cut(self, vma: Vma, lo: int, hi: int) -> None:
        """Unmap ``[lo, hi)``, strictly inside ``vma``: the parts left and right of it
        become VMAs of their own, each with the folios and pages it maps."""
        i0, i1 = (lo - vma.start) >> PAGE_SHIFT, (hi - vma.start) >> PAGE_SHIFT
        pfns = vma.pfns
        heads = np.array([pfn for pfn, _ in vma.folios], dtype=np.int64)
        pos = np.flatnonzero(np.isin(pfns, heads)) if len(heads) else np.zeros(0, np.int64)
        where = {int(pfns[i]): int(i) for i in pos}  # folio head pfn -> its page index
        covered = np.zeros(vma.npages, dtype=bool)  # pages of folios that stay whole
        parts: list[list[tuple[int, int]]] = [[], [], []]  # folios left, cut out, right
        for pfn, order in vma.folios:
            at, n = where[pfn], 1 << order
            if at + n <= i0 or at >= i1 or (i0 <= at and at + n <= i1):
                parts[0 if at < i0 else 2 if at >= i1 else 1].append((pfn, order))
                covered[at:at + n] = True
            else:  # the cut goes through it: split_huge_page
                self.mem.frames.split(pfn, order)
        own = ~vma.cow if vma.cow is not None else np.full(vma.npages, vma.file is None)
        small = (pfns >= 0) & ~covered & own  # the file keeps its pages
        gone = pfns[i0:i1][small[i0:i1]]
        self._orphans.folios += self.mem.free_unpinned_folios(parts[1])
        self._orphans.pages += self.mem.free_unpinned(pfn_runs(gone))
        self._unlink(vma)
        for first, last, folios in ((0, i0, parts[0]), (i1, vma.npages, parts[2])):
            if first == last:
                continue
            piece = Vma(vma.start + (first << PAGE_SHIFT), vma.start + (last << PAGE_SHIFT),
                        vma.backing, vma.writable, pfns[first:last].copy(), vma.pfnmap,
                        folios, pfn_runs(pfns[first:last][small[first:last]]),
                        vma.file.get() if vma.file is not None else None,
                        vma.cow[first:last].copy() if vma.cow is not None else None)
            self._link(piece)
        if vma.file is not None:
            vma.file.put()

    # -- faults ----------------------------------------------------------------------------------
    def find_vma(self, addr: int) -> Vma | None:
        i = bisect.bisect(self._starts, addr) - 1
        if i >= 0 and addr < self.vmas[i].end:
            return self.vmas[i]
        return None

    def _fault(self, vma: Vma, first: int, count: int, *, strict: bool = False) -> None:
        """Fault in pages ``[first, first + count)`` of ``vma``, a folio at a time."""
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
            pfns[missing] = np.concatenate([np.arange(p, p + n, dtype=np.int64)
                                            for p, n in runs])
            vma.pages += runs

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
            vma.folios += [(pfn, order) for pfn in got]
            offsets = np.arange(per, dtype=np.int64)
            for i in range(0, len(rows), 4096):  # bounded temporaries
                stretches[rows[i:i + 4096]] = np.array(got[i:i + 4096],
                                                       dtype=np.int64)[:, None] + offsets

    def _unshare(self, vma: Vma, first: int, count: int) -> None:
        """``wp_page_copy`` / FAULT_FLAG_UNSHARE: the file pages of ``[first, first +
        count)`` in a MAP_PRIVATE mapping become private copies."""
        if vma.cow is None:
            return
        idx = np.flatnonzero(vma.cow[first:first + count]) + first
        if not len(idx):
            return
        runs = self.mem.alloc_page_runs(len(idx), site="alloc_pages(copy on write)")
        new = np.concatenate([np.arange(p, p + n, dtype=np.int64) for p, n in runs])
        self._copy_contents(vma.pfns[idx], new)
        vma.pfns[idx] = new
        vma.cow[idx] = False
        vma.pages += runs

    # -- GUP -------------------------------------------------------------------------------------
    def pin_user_pages(self, addr: int, npages: int, write: bool) -> I64Array:
        """``pin_user_pages_remote(FOLL_LONGTERM)``: the pfns of the first pages that could
        be pinned (fewer than ``npages`` at a hole, a PFNMAP or a read-only VMA for a
        write; none there raises EFAULT, as vfio turns a 0 return into EFAULT)."""
        out: list[I64Array] = []
        done = 0
        while done < npages:
            vaddr = addr + (done << PAGE_SHIFT)
            vma = self.find_vma(vaddr)
            if vma is None or vma.pfnmap or (write and not vma.writable):
                break
            first = (vaddr - vma.start) >> PAGE_SHIFT
            n = min(npages - done, vma.npages - first)
            self._fault(vma, first, n)
            # a long-term pin of a file page in a private mapping, even read-only, takes a
            # private copy first (gup_must_unshare), so later writes keep the pinned page
            self._unshare(vma, first, n)
            out.append(vma.pfns[first:first + n])
            done += n
        if not done:
            raise BadAddress(f"pin_user_pages: nothing pinnable at {addr:#x}")
        pfns = np.concatenate(out) if len(out) > 1 else out[0].copy()
        self.mem.pin_pages(pfns)
        self.pinned_pages += len(pfns)
        return pfns

    def unpin_user_pages(self, pfns: I64Array) -> None:
        """``unpin_user_pages``; a munmapped folio is freed with its last pin."""
        self.mem.unpin_pages(pfns)
        self.pinned_pages -= len(pfns)
        orphans = self._orphans
        if orphans.folios:
            orphans.folios = self.mem.free_unpinned_folios(orphans.folios)
        if orphans.pages:
            orphans.pages = self.mem.free_unpinned(orphans.pages)

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
                self._unshare(vma, first, count)
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
