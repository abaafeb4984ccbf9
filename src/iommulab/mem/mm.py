"""A process's address space: VMAs, their backing, fault-in, copy-on-write, pinning and
locked_vm (mm/).

``mmap`` follows ``ksys_mmap_pgoff``/``do_mmap``/``mmap_region``: EINVAL for a length
of 0, ENOMEM for one that does not fit the address space (``TASK_SIZE``), for a hole
that no longer fits, past ``vm.max_map_count`` mappings, or for a private writable or
shared anonymous mapping longer than RAM (``__vm_enough_memory`` under the default
heuristic overcommit); mappings go top-down into the highest hole that fits
(``vm_unmapped_area``), one guard page apart (lab: the kernel merges neighbours, the
model keeps them apart). A VMA keeps only what was faulted in
(:class:`~iommulab.mem.vma.Vma`), so no length costs host memory before pages exist.

Faults fill a folio at a time: anonymous memory takes 4K frames, THP a 2M folio for
every 2M-aligned stretch wholly inside the VMA when the frame allocator has one (4K
frames otherwise), hugetlb takes its huge pages at mmap time (the reservation:
ENOMEM, nothing taken, if the machine cannot supply them). MAP_POPULATE is best
effort, as ``mm_populate`` ignores errors. A file mapping faults the file's pages
(past the file's end: SIGBUS, EFAULT here). ``munmap`` may cut a VMA in two. A VMA
made from a device region is VM_PFNMAP over MMIO: it has pfns but no pages, so it
cannot be pinned. GUP (``pin_user_pages``) faults pages in, refuses writes to
read-only VMAs and stops at a hole, as ``__get_user_pages`` does; a munmapped page
that is still pinned stays allocated until its last unpin.

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
import itertools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ..errors import BadAddress, InvalidArgument, KernelError, OutOfMemory, Overflow
from ..kernel import DEFAULT_KERNEL, KernelVersion
from ..sizes import parse_size
from .memfd import file_setup, resv_map_alloc
from .physmem import PhysMem, pfn_runs
from .runs import first_not_ready, present_count, view_runs
from .sparse import Extent, FolioPages, ThpPages
from .vma import BACKINGS, PAGE_SHIFT, PAGE_SIZE, Vma

if TYPE_CHECKING:
    from .memfd import MemFd

__all__ = ["BACKINGS", "DEFAULT_MAX_MAP_COUNT", "TASK_SIZE_MAX", "MmStruct", "Vma",
           "access_ok", "pfn_runs"]

#: x86_64 ``TASK_SIZE_MAX`` with 4-level paging: the end of user space
TASK_SIZE_MAX = (1 << 47) - PAGE_SIZE
#: ``mmap_base``: mappings go top-down from here (the stack's gap above it)
MMAP_BASE = 0x7FFF_F000_0000
#: a PMD's span: what __get_unmapped_area aligns larger anonymous mappings to
PMD_SIZE = PAGE_SIZE << 9
#: ``mmap_min_addr`` (CONFIG_DEFAULT_MMAP_MIN_ADDR on x86_64): nothing is mapped below
MMAP_MIN_ADDR = 0x10000
#: ``sysctl_max_map_count``'s default (USHRT_MAX - MAPCOUNT_ELF_CORE_MARGIN)
DEFAULT_MAX_MAP_COUNT = 65530
#: the largest file offset a memfd (shmem) maps: MAX_LFS_FILESIZE (``file_mmap_ok``)
MAX_LFS_FILESIZE = (1 << 63) - 1
#: entries per temporary when filling a long run of pfns (8 MiB)
_FILL_CHUNK = 1 << 20
U64_MAX = (1 << 64) - 1
#: the release whose do_wp_page reuses a page of a PTE-mapped THP the writer's mm alone
#: maps (``__wp_can_reuse_large_anon_folio``, commit 1da190f4d0a6); 6.12 always copies it
LARGE_FOLIO_COW_REUSE = (6, 15)
I64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
#: the driver's ``mmap`` of a device region: the VMA's length -> the region's address
DeviceMmap = Callable[[int], int]


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


def _fill_run(out: I64Array, first: int) -> None:
    """``out[:] = first + arange(len(out))`` with temporaries of at most ``_FILL_CHUNK``
    entries (a fresh 16M-entry one costs the host more page faults than the fill)."""
    for i in range(0, len(out), _FILL_CHUNK):
        j = min(len(out), i + _FILL_CHUNK)
        out[i:j] = np.arange(first + i, first + j, dtype=np.int64)


def _put_folio(vma: Vma, i: int, head: int | None, excl: bool | None) -> None:
    """Set the first pfn (``head``) and/or the exclusive flag of ``vma``'s folio at page
    ``i``, whole: by its slot where the VMA keeps its pages a folio at a time, else page
    by page (whose pages are present)."""
    if isinstance(vma.pages, (FolioPages, ThpPages)):
        vma.pages.put(np.array([i], dtype=np.int64), head, excl)
    else:
        span = _offsets(vma.order)
        vma.pages.scatter(i + span, None if head is None else head + span, excl)


def _aranges(runs: list[tuple[int, int]]) -> I64Array:
    return np.concatenate([np.arange(p, p + n, dtype=np.int64) for p, n in runs])


def _unsigned_long(value: int | str, what: str) -> int:
    """``value`` as the ``unsigned long`` a C caller passes: a size string parsed, a
    negative int in two's complement. EINVAL for text that is no size, ENOMEM for an
    int no ``unsigned long`` holds (larger than any address space)."""
    if isinstance(value, str):
        try:
            return parse_size(value)
        except ValueError as err:
            raise InvalidArgument(f"{what}: {err}") from None
    if not -(1 << 63) <= value <= U64_MAX:
        raise OutOfMemory(f"{what}: length {value:#x} does not fit an unsigned long")
    return value & U64_MAX


class MmStruct:
    """One process's memory: VMAs in address order, ``locked_vm`` in pages. ``kernel``
    is the release whose copy-on-write rules it follows."""

    def __init__(self, mem: PhysMem, kernel: KernelVersion = DEFAULT_KERNEL) -> None:
        self.mem = mem
        self.kernel = kernel
        self.vmas: list[Vma] = []
        self._starts: list[int] = []
        self.max_map_count = DEFAULT_MAX_MAP_COUNT  # vm.max_map_count
        self.locked_vm = 0  # pages charged against RLIMIT_MEMLOCK (mm->locked_vm)
        self.pinned_vm = 0  # mm->pinned_vm (iommufd charges it in every account mode)
        self.pinned_pages = 0  # pages this mm's GUP pins hold (lab)
        self.has_pinned = False  # MMF_HAS_PINNED: FOLL_PIN has run on this mm, never cleared
        # lab: fault runs of THP folios in one step where that gives the same folios as
        # the kernel's batch-by-batch faults (fault_ahead, _fault_folios); False: never
        self.fast_faults = True
        self.faulted_ahead = 0  # lab: pages fault_ahead faulted
        self.anon = mem.anon  # the mapcounts it shares with the machine's other processes
        self.anon.mms.add(self)
        self.gone = False  # exit_mmap ran: mmget_not_zero() fails from now on

    @property
    def map_count(self) -> int:
        return len(self.vmas)

    # -- mmap ------------------------------------------------------------------------------------
    def mmap(self, length: int | str, backing: str = "anon", *, writable: bool = True,
             populate: bool = False, mmio_pa: int | None = None,
             device: DeviceMmap | None = None, file: MemFd | None = None, offset: int = 0,
             private: bool = False, shared: bool = False) -> int:
        """``mmap`` of ``length`` bytes (``ksys_mmap_pgoff``, ``do_mmap``, ``mmap_region``):
        anonymous memory of ``backing`` (``shared``: MAP_SHARED | MAP_ANONYMOUS, shmem a
        fork shares), a memfd from byte ``offset`` (``file``; ``private``: MAP_PRIVATE,
        copied on first write), or a device region (``device``: the driver's mmap, given
        the page-aligned length; or ``mmio_pa``). Returns the address; on failure the
        kernel's errno, nothing changed: EINVAL for a length of 0 (also one a hugetlb
        rounding wraps to 0) or an unaligned offset; ENOMEM for a length past the
        address space, too many mappings, no hole, an accountable mapping longer than
        RAM, hugetlb pages the machine lacks; EOVERFLOW for a file range past
        MAX_LFS_FILESIZE. hugetlb mappings are aligned to their huge size, private
        anonymous ones whose length is a multiple of 2M (THP or not) to 2M, as 6.12's
        ``__get_unmapped_area`` aligns them; ``backing`` is ignored for a file or a
        device region, whose pages are what they are (the model's contract, where Linux
        refuses MAP_HUGETLB of a file that is not on hugetlbfs). O(VMAs) to find the
        hole; no host memory in proportion to the length."""
        if mmio_pa is not None:
            device = self._fixed_region(mmio_pa)
        if backing not in BACKINGS:
            raise InvalidArgument(f"mmap: backing {backing!r} is not one of {sorted(BACKINGS)}")
        if not -(1 << 63) <= offset <= U64_MAX or offset & (PAGE_SIZE - 1):
            raise InvalidArgument(f"mmap: offset {offset:#x} is not a multiple of the page size")
        offset &= U64_MAX
        if file is not None or device is not None:
            backing = "anon"  # the file or the device region decides what backs the pages
        anon_hugetlb = backing.startswith("hugetlb")
        if shared and private:
            raise InvalidArgument("mmap: MAP_SHARED and MAP_PRIVATE together")
        nbytes = _unsigned_long(length, "mmap")
        order = file.order if file is not None and file.order else \
            0 if device is not None else BACKINGS[backing]
        huge = PAGE_SIZE << order
        if anon_hugetlb or (file is not None and file.order):
            nbytes = (nbytes + huge - 1) & ~(huge - 1) & U64_MAX  # ALIGN may wrap to 0
        if anon_hugetlb:  # ksys_mmap_pgoff: MAP_HUGETLB memory is a hugetlbfs file's
            file_setup(self.mem.fail_nth, hugetlb=True)
        if not nbytes:
            raise InvalidArgument(f"mmap: length {length!r} is 0 (after rounding to "
                                  f"{huge:#x})" if anon_hugetlb else "mmap: length 0")
        aligned = (nbytes + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1) & U64_MAX
        if not aligned:
            raise OutOfMemory(f"mmap: length {nbytes:#x} wraps when rounded up to pages")
        if self.map_count > self.max_map_count:
            raise OutOfMemory(f"mmap: {self.map_count} mappings, past vm.max_map_count "
                              f"({self.max_map_count})")
        if aligned > TASK_SIZE_MAX:
            raise OutOfMemory(f"mmap: length {aligned:#x} exceeds the address space "
                              f"(TASK_SIZE {TASK_SIZE_MAX:#x})")
        if anon_hugetlb or (file is not None and file.order):
            start = self._unmapped_area(aligned, huge)  # hugetlb_get_unmapped_area
        elif file is None and device is None and not shared and not aligned % PMD_SIZE:
            start = self._thp_unmapped_area(aligned)
        else:
            start = self._unmapped_area(aligned, PAGE_SIZE)
        if file is not None and aligned + offset > MAX_LFS_FILESIZE:
            raise Overflow(f"mmap: [{offset:#x}, +{aligned:#x}) of {file.name} passes "
                           f"MAX_LFS_FILESIZE")
        self._vm_enough_memory(aligned, writable,
                               device is not None or (file is not None and not private),
                               shared, anon_hugetlb or (file is not None and file.order > 0))
        return self._mmap_region(start, aligned, backing, writable, populate, device, file,
                                 offset, private, shared and file is None)

    @staticmethod
    def _fixed_region(pa: int) -> DeviceMmap:
        """A device region at ``pa`` whatever the length (the tests' direct mappings)."""
        return lambda _length: pa

    def _vm_enough_memory(self, nbytes: int, writable: bool, shared_file: bool,
                          shared_anon: bool, hugetlb: bool) -> None:
        """``__vm_enough_memory`` under the default heuristic overcommit (OVERCOMMIT_GUESS)
        for what ``mmap_region`` accounts: a private writable mapping
        (``accountable_mapping``) and shared anonymous memory (``shmem_acct_size``); not
        hugetlb (its reservation counts) nor a ``shared_file`` (a MAP_SHARED file or a
        device region, VM_SHARED). ENOMEM for more pages than RAM (the model has no
        swap)."""
        accountable = not hugetlb and not shared_file and (writable or shared_anon)
        total = self.mem.frames.total_frames
        if accountable and nbytes >> PAGE_SHIFT > total:
            raise OutOfMemory(f"mmap: {nbytes:#x} bytes of committed memory, more than the "
                              f"{total} pages of RAM (vm.overcommit_memory 0)")

    def _unmapped_area(self, nbytes: int, align: int) -> int:
        """``vm_unmapped_area`` top-down from ``mmap_base``: the highest ``align``-aligned
        place in a hole that keeps a guard page from its neighbours; ENOMEM when none
        fits. O(VMAs)."""
        hi = MMAP_BASE
        for vma in reversed(self.vmas):
            start = (hi - nbytes) & ~(align - 1)
            if start >= vma.end + PAGE_SIZE:
                return start
            hi = min(hi, vma.start - PAGE_SIZE)
        start = (hi - nbytes) & ~(align - 1)
        if start >= MMAP_MIN_ADDR:
            return start
        raise OutOfMemory(f"mmap: no hole of {nbytes:#x} bytes left in the address space")

    def _thp_unmapped_area(self, nbytes: int) -> int:
        """``__get_unmapped_area`` for a private anonymous mapping whose length is a
        multiple of PMD_SIZE (6.12, CONFIG_TRANSPARENT_HUGEPAGE, whatever the THP
        mode): ``thp_get_unmapped_area_vmflags`` looks for the length plus PMD_SIZE,
        then aligns up inside it (top-down: an area already aligned gives its upper
        part); without room for the padding, the plain search."""
        try:
            ret = self._unmapped_area(nbytes + PMD_SIZE, PAGE_SIZE)
        except OutOfMemory:
            return self._unmapped_area(nbytes, PAGE_SIZE)
        off_sub = -ret & (PMD_SIZE - 1)
        return ret + PMD_SIZE if not off_sub else ret + off_sub

    def _mmap_region(self, start: int, nbytes: int, backing: str, writable: bool,
                     populate: bool, device: DeviceMmap | None, file: MemFd | None,
                     offset: int, private: bool, shared_anon: bool) -> int:
        """``mmap_region``: the VMA, the driver's or the file's mmap (a device region's
        address; hugetlb's reservation, taken whole here, undone on failure), then
        MAP_POPULATE, whose failures are ignored as ``mm_populate`` ignores them."""
        fail = self.mem.fail_nth
        fail.check("vm_area_alloc")
        vma = Vma(start, start + nbytes, backing, writable)
        hugetlb = backing.split("-")[1] if backing.startswith("hugetlb") else None
        if device is not None:
            vma.pfnmap, vma.mmio_pfn = True, device(nbytes) >> PAGE_SHIFT
        elif shared_anon:
            from .memfd import MemFd
            if hugetlb is None:
                file_setup(fail, hugetlb=False)  # shmem_zero_setup
            vma.file = MemFd(self.mem, "/dev/zero (deleted)", nbytes, hugetlb)
        elif file is not None:
            if file.order and private:  # hugetlb_reserve_pages of a private mapping
                resv_map_alloc(fail)
            vma.file, vma.pgoff, vma.private = file.get(), offset >> PAGE_SHIFT, private
        elif hugetlb is not None:  # the hugetlbfs file's mapping is private
            resv_map_alloc(fail)
        self._link(vma)
        try:
            if vma.file is not None and vma.file.order:
                self._hugetlb_file_reserve(vma)
            elif backing.startswith("hugetlb") and device is None:
                self._fault(vma, 0, vma.npages)
        except KernelError:
            self._drop(vma)
            raise
        if populate:
            self._populate(vma)
        return start

    def _hugetlb_file_reserve(self, vma: Vma) -> None:
        """``hugetlbfs_file_mmap``: EINVAL for an offset that is not whole huge pages; the
        mapping's huge pages, taken now (the model's reservation: ENOMEM, nothing
        taken); a writable mapping past the end of the file grows it."""
        file = vma.file
        assert file is not None
        if (vma.pgoff << PAGE_SHIFT) % file.folio_bytes:
            raise InvalidArgument(f"mmap: offset {vma.pgoff << PAGE_SHIFT:#x} of {file.name} "
                                  f"is not a multiple of {file.folio_bytes:#x}")
        end = (vma.pgoff + vma.npages) << PAGE_SHIFT
        old = file.size
        if vma.writable and end > old:
            file.ftruncate(end)
        try:
            self._fault(vma, 0, vma.file_end)
        except KernelError:
            if file.size != old:
                file.ftruncate(old)
            raise

    def _populate(self, vma: Vma) -> None:
        """``populate_vma_page_range``: fault every page in, with a write fault where a
        write would copy (a private writable mapping); errors are ignored."""
        try:
            self._fault(vma, 0, vma.file_end)
            if vma.writable:
                self._break_cow(vma, 0, vma.file_end)
        except OutOfMemory:
            pass

    # -- munmap ----------------------------------------------------------------------------------
    def munmap(self, addr: int, length: int) -> None:
        """``do_vmi_munmap``: unmap ``[addr, addr + length)`` (length rounded up to pages),
        splitting the VMAs it cuts (``__split_vma``). EINVAL for an unaligned ``addr``, a
        range past ``TASK_SIZE`` (a negative length is a huge ``size_t``), a length of 0,
        or a cut through a hugetlb page; ENOMEM when a cut inside one VMA would pass
        vm.max_map_count. As ``vms_gather_munmap_vmas``, the cut at ``addr`` is made
        before the one at the end is tried: when the end's fails (EINVAL, or ENOMEM from
        ``__split_vma``), the first cut stays and nothing else is changed.

        A THP folio the cut goes through is mapped by 4K pages from then on (its PMD is
        split); the pages no process maps any more are freed unless pinned, in which
        case they go with their last unpin (:meth:`PhysMem.free_unpinned`).
        """
        size = length & U64_MAX if -(1 << 63) <= length <= U64_MAX else U64_MAX
        if addr & (PAGE_SIZE - 1) or not 0 <= addr <= TASK_SIZE_MAX or \
                size > TASK_SIZE_MAX - addr:
            raise InvalidArgument(f"munmap: addr {addr:#x} length {length:#x}")
        end = addr + ((size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))
        if end == addr:
            raise InvalidArgument(f"munmap: addr {addr:#x} length {length:#x}")
        hit = self._overlapping(addr, end)
        if not hit:
            return
        first = hit[0]
        if first.start < addr:
            if end < first.end and self.map_count >= self.max_map_count:
                raise OutOfMemory(f"munmap: splitting {first!r} would pass "
                                  f"vm.max_map_count ({self.max_map_count})")
            self._may_split(first, addr, end)
            hit[0] = self._split_vma(first, (addr - first.start) >> PAGE_SHIFT)[1]
        if end < hit[-1].end:  # a failure from here on keeps the first cut
            self._may_split(hit[-1], end, addr)
            hit[-1] = self._split_vma(hit[-1], (end - hit[-1].start) >> PAGE_SHIFT)[0]
        for vma in hit:
            self._drop(vma)

    @staticmethod
    def _may_split(vma: Vma, at: int, other: int) -> None:
        """``hugetlb_vm_op_split``, ``vm_ops->may_split`` of a hugetlb mapping: EINVAL for a
        cut at ``at`` inside a huge page (``other``: the range's other end, for the
        message)."""
        huge = vma.hugetlb_bytes
        if huge and at % huge:
            kind = vma.backing if vma.file is None else f"hugetlbfs {huge:#x}"
            lo, hi = sorted((at, other))
            raise InvalidArgument(f"munmap: [{lo:#x}, {hi:#x}) cuts a {kind} page of {vma!r}")

    def close(self) -> None:
        """exit_mmap: every mapping goes; the mm can no longer be pinned from."""
        for vma in list(self.vmas):
            self._drop(vma)
        self.gone = True
        self.anon.mms.discard(self)

    def _overlapping(self, lo: int, hi: int) -> list[Vma]:
        """The VMAs that meet ``[lo, hi)``, in order. O(log VMAs + those)."""
        i = max(0, bisect.bisect_right(self._starts, lo) - 1)
        j = bisect.bisect_left(self._starts, hi)
        return [v for v in self.vmas[i:j] if v.end > lo]

    def _link(self, vma: Vma) -> None:
        i = bisect.bisect(self._starts, vma.start)
        self.vmas.insert(i, vma)
        self._starts.insert(i, vma.start)

    def _unlink(self, vma: Vma) -> None:
        i = bisect.bisect_left(self._starts, vma.start)
        assert self.vmas[i] is vma
        del self.vmas[i], self._starts[i]

    def _drop(self, vma: Vma) -> None:
        """Unlink ``vma`` and unmap its pages (``unmap_region`` + ``remove_vma``)."""
        self._unlink(vma)
        self._zap(vma, 0, vma.npages)
        if vma.file is not None:
            vma.file.put()
            vma.file = None
        vma.folios.clear()
        vma.pages.clear()

    def _split_vma(self, vma: Vma, at: int) -> tuple[Vma, Vma]:
        """``__split_vma`` at page ``at``: two VMAs end to end over the same pages. A THP
        the cut goes through stays mapped by 4K pages on either side
        (``__split_huge_pmd``). O(pages kept)."""
        self.mem.fail_nth.check("vm_area_dup(__split_vma)")
        starts, heads = vma.pmd_slots()
        per = 1 << vma.order
        left = self._piece(vma, 0, at, heads[starts + per <= at])
        right = self._piece(vma, at, vma.npages, heads[starts >= at])
        if vma.file is not None:
            vma.file.get()  # one reference for each side
        self._unlink(vma)
        self._link(left)
        self._link(right)
        return left, right

    @staticmethod
    def _piece(vma: Vma, lo: int, hi: int, heads: I64Array) -> Vma:
        """Pages ``[lo, hi)`` of ``vma`` as a VMA of their own, with the PMD folios
        ``heads``."""
        piece = Vma(vma.start + (lo << PAGE_SHIFT), vma.start + (hi << PAGE_SHIFT),
                    vma.backing, vma.writable, vma.pfnmap,
                    vma.mmio_pfn + lo if vma.pfnmap else -1,
                    dict.fromkeys(heads.tolist(), vma.order), vma.file, vma.pgoff + lo,
                    vma.private)
        piece.pages = vma.pages.slice(lo, hi)
        return piece

    def _zap(self, vma: Vma, lo: int, hi: int) -> None:
        """``zap_page_range`` of the anonymous pages of ``[lo, hi)``: a PMD-mapped folio
        wholly inside goes as one mapping, every other page on its own. O(pages kept
        there) numpy work, a Python step per GiB."""
        if vma.shared:
            return
        starts, heads = vma.pmd_slots(lo, hi)
        per = 1 << vma.order
        inside = (starts >= lo) & (starts + per <= hi)
        self.anon.unmap_folios(heads[inside], vma.order)
        if isinstance(vma.pages, FolioPages):  # every page is in a folio, cut only whole
            assert inside.all(), f"{vma!r}: [{lo}, {hi}) cuts a huge page"
            return
        per_page = isinstance(vma.pages, ThpPages)
        if isinstance(vma.pages, ThpPages):  # folios kept whole are PMD-mapped (above)
            whole, _ = vma.pages.folio_slots(lo, hi)
            assert np.isin(whole, starts[inside]).all(), f"{vma!r}: a folio kept whole " \
                f"is not unmapped whole by [{lo}, {hi})"
        for ext in vma.chunks(lo, hi, per_page=per_page):
            pages = (ext.pfns >= 0) & ~vma.pmd_pages(ext, starts[inside])
            self.anon.unmap(ext.pfns[pages])

    # -- fork ------------------------------------------------------------------------------------
    def fork(self) -> MmStruct:
        """``dup_mmap``: the child's address space. Device regions and MAP_SHARED memory
        are the same pages; private memory is shared until written (:meth:`_dup_anon`).
        On failure (ENOMEM: the pages to copy now cannot be had) the half-built child is
        torn down as ``dup_mmap``'s error path does (``exit_mmap`` of it): its shares of
        the parent's pages, its copies and its file references go; the parent keeps
        what fork did to it (PMDs split, pages no longer exclusive), as in Linux."""
        fail = self.mem.fail_nth
        fail.check("allocate_mm(dup_mm)")
        child = MmStruct(self.mem, self.kernel)
        child.max_map_count = self.max_map_count
        pinned = self._pinned_folios()
        try:
            for vma in self.vmas:
                fail.check("vm_area_dup(dup_mmap)")
                copy = Vma(vma.start, vma.end, vma.backing, vma.writable, vma.pfnmap,
                           vma.mmio_pfn, file=vma.file.get() if vma.file is not None else None,
                           pgoff=vma.pgoff, private=vma.private)
                child._link(copy)
                self._dup_anon(vma, copy, pinned)
        except BaseException:  # whatever stopped it, the half-built child goes
            child.close()
            raise
        return child

    def _dup_anon(self, src: Vma, dst: Vma, pinned: I64Array | None) -> None:
        """``copy_page_range`` of the anonymous pages of ``src`` into the child's ``dst``
        (``pinned``: :meth:`_pinned_folios`). A page is shared (both lose
        PageAnonExclusive, its mapcount grows), except an exclusive page that may be
        pinned (``folio_try_dup_anon_rmap_*`` fails), which the child gets a copy of now
        (``copy_present_page``). A THP goes by its PMD (``copy_huge_pmd``), unless it may
        be pinned: then the parent's PMD is split and each of its pages copied. A
        hugetlb page is shared or copied whole (``copy_hugetlb_page_range``). O(pages
        kept) numpy work, a Python step per GiB, per run of shared folios and per folio
        copied."""
        if src.shared or not src.pages.kept:
            return
        starts, heads = src.pmd_slots()
        copy_folio = np.zeros(len(starts), dtype=np.bool_)
        if pinned is not None and len(starts):
            copy_folio = np.isin(heads, pinned) & src.pages.gather_excl(starts)
        shared_heads, copy_heads = heads[~copy_folio], heads[copy_folio]
        if isinstance(src.pages, ThpPages):  # only THPs shared by their PMD stay kept
            src.pages.unfold_except(starts[~copy_folio])  # whole: the rest is written
        dst.pages = src.pages.copy()  # through the chunks below
        if isinstance(src.pages, FolioPages):
            self._dup_hugetlb(src, dst, starts, heads, copy_folio)
            return
        if isinstance(src.pages, ThpPages) and isinstance(dst.pages, ThpPages):
            whole = src.pages.folio_slots()[0]  # shared: neither side has them alone
            src.pages.put(whole, excl=False)
            dst.pages.put(whole, excl=False)
        # per-page storage (vma.FOLIO_PAGES off: what FolioPages is tested against)
        copies: list[I64Array] = []
        for s_ext, d_ext in zip(src.chunks(per_page=True), dst.chunks(per_page=True),
                                strict=True):
            copy_pmds = src.pmd_pages(s_ext, starts[copy_folio])
            shared_pmds = src.pmd_pages(s_ext, starts[~copy_folio])
            copies.append(self._dup_chunk(s_ext, d_ext, copy_pmds, shared_pmds, pinned)
                          + s_ext.lo)
        self.anon.map_folios(shared_heads, src.order)
        dst.folios.update(dict.fromkeys(shared_heads.tolist(), src.order))
        if src.backing.startswith("hugetlb"):  # hugetlb_try_dup_anon_rmap failed: a copy
            for i, head in zip(starts[copy_folio].tolist(), copy_heads.tolist(), strict=True):
                new = self._copy_huge(src, i, head, "fork of a pinned page")
                _put_folio(dst, i, new, True)
                dst.folios[new] = src.order
            return
        for head in copy_heads.tolist():
            del src.folios[head]  # __split_huge_pmd: its pages are copied one by one
        idx = np.concatenate(copies) if copies else np.zeros(0, dtype=np.int64)
        if len(idx):
            dst.pages.scatter(idx, self._copies(src.pages.gather(idx), "alloc_pages(fork)"),
                              True)

    def _dup_hugetlb(self, src: Vma, dst: Vma, starts: I64Array, heads: I64Array,
                     copy_folio: BoolArray) -> None:
        """:meth:`_dup_anon` of a hugetlb VMA (``copy_hugetlb_page_range``), a huge page
        at a time (``dst`` starts as a copy of ``src``; every page is in one of the
        folios ``heads`` at ``starts``): those that may be pinned are left out of the
        child, the others are shared (neither side keeps them exclusive); then the child
        gets a copy of each left out (``hugetlb_try_dup_anon_rmap`` failed). O(folios)."""
        s_pages, d_pages = src.pages, dst.pages
        assert isinstance(s_pages, FolioPages) and isinstance(d_pages, FolioPages)
        d_pages.put(starts[copy_folio], -1)  # nothing up to the copies can fail
        d_pages.put(starts[~copy_folio], excl=False)
        s_pages.put(starts[~copy_folio], excl=False)
        self.anon.map_folios(heads[~copy_folio], src.order)
        dst.folios.update(dict.fromkeys(heads[~copy_folio].tolist(), src.order))
        for i, head in zip(starts[copy_folio].tolist(), heads[copy_folio].tolist(),
                           strict=True):
            new = self._copy_huge(src, i, head, "fork of a pinned page")
            _put_folio(dst, i, new, True)
            dst.folios[new] = src.order

    def _dup_chunk(self, src: Extent, dst: Extent, copy_pmds: BoolArray,
                   shared_pmds: BoolArray, pinned: I64Array | None) -> I64Array:
        """:meth:`_dup_anon` of one chunk (``dst`` starts as a copy of ``src``; the pages
        of PMD folios to copy and to share marked): the pages shared now are counted and
        lose exclusivity, those to copy are left out of the child; returns the offsets of
        those, which it copies after."""
        assert src.excl is not None and dst.excl is not None and src.lo == dst.lo
        pfns = src.pfns
        present = pfns >= 0
        ptes = present & ~copy_pmds & ~shared_pmds
        copy_ptes = np.zeros(len(pfns), dtype=np.bool_)
        if pinned is not None:
            at = np.flatnonzero(ptes & src.excl)
            copy_ptes[at] = self._maybe_pinned(pfns[at], pinned)
        shared_ptes = ptes & ~copy_ptes
        copy = copy_pmds | copy_ptes
        dst.pfns[copy] = -1  # nothing up to the copies can fail
        dst.excl[:] = False
        self.anon.map_pages(pfns[shared_ptes])
        src.excl[shared_pmds | shared_ptes] = False
        return np.flatnonzero(copy).astype(np.int64)

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
        """Fault in pages ``[first, first + count)`` of ``vma`` (inside the file for a file
        mapping), a folio at a time; new anonymous pages are the mapping's alone. ENOMEM,
        before any page is taken or any array of the range made, when the machine has
        too few free frames for the pages missing."""
        if vma.pfnmap or count <= 0:
            return
        if vma.file is not None:
            vma.file.pages(vma.pgoff + first, count)  # the page cache's (checked there)
            return
        missing = count - present_count(vma, first, first + count)
        if not missing:
            return
        where = f"page fault in [{vma.start + (first << PAGE_SHIFT):#x}, " \
                f"{vma.start + ((first + count) << PAGE_SHIFT):#x})"
        order = BACKINGS[vma.backing]
        if order:  # hugetlb checks its huge pages; THP needs the frames, folios or not
            if missing > self.mem.frames.free_frames and not vma.hugetlb_bytes:
                raise OutOfMemory(f"{where}: {missing} pages wanted, "
                                  f"{self.mem.frames.free_frames} free")
            missing -= self._fault_folios(vma, first, count, order)
            if not missing:
                return
        try:
            runs = self.mem.alloc_page_runs(missing, site="alloc_pages(page fault)")
        except OutOfMemory as err:
            raise OutOfMemory(f"{where}: {err}") from None
        if isinstance(vma.pages, ThpPages):  # windows of the missing pages only, so the
            self._fault_pages(vma.pages, first, count, _aranges(runs))  # folios stay whole
            return
        window = vma.pages.window(first, first + count)
        at = np.flatnonzero(window.pfns < 0)
        window.pfns[at] = _aranges(runs)
        assert window.excl is not None
        window.excl[at] = True
        self.anon.map_pages(window.pfns[at])

    def _fault_pages(self, pages: ThpPages, first: int, count: int, new: I64Array) -> None:
        """The 4K-page end of :meth:`_fault` for a THP VMA: ``new`` in the pages of
        ``[first, first + count)`` that have none, in order, written through a window
        per run of them (none holds a folio kept whole, which stays so)."""
        at = np.flatnonzero(pages.get(first, first + count) < 0) + first
        assert len(at) == len(new)
        cuts = (np.flatnonzero(np.diff(at) != 1) + 1).tolist()
        for a, b in itertools.pairwise([0, *cuts, len(at)]):
            window = pages.window(int(at[a]), int(at[b - 1]) + 1)
            assert window.excl is not None
            window.pfns[:] = new[a:b]
            window.excl[:] = True
        self.anon.map_pages(new)

    def _fault_folios(self, vma: Vma, first: int, count: int, order: int) -> int:
        """A folio of ``order`` for each aligned stretch wholly inside ``vma`` and wholly
        unpopulated that holds a page of ``[first, first + count)``, while the frame
        allocator has one (a stretch that already has 4K pages keeps faulting 4K pages, as a
        PMD with a page table does); hugetlb has no 4K fallback: ENOMEM, nothing taken,
        when the free huge pages are too few. Returns how many pages of ``[first, first +
        count)`` it filled. O(pages) numpy work and one allocation call per folio."""
        per = 1 << order
        off = -(vma.start >> PAGE_SHIFT) % per  # index of the VMA's first aligned stretch
        slots = (vma.npages - off) // per
        lo = max(0, (first - off) // per)
        hi = min(slots, -(-(first + count - off) // per))
        if lo >= hi:
            return 0
        s_lo, s_hi = off + lo * per, off + hi * per
        hugetlb = vma.backing.startswith("hugetlb")
        fail = self.mem.fail_nth
        if hugetlb:
            need = (s_hi - s_lo - present_count(vma, s_lo, s_hi)) // per
            free = self.mem.frames.free_blocks_of(order)
            if need > free:
                raise OutOfMemory(f"hugetlb: {need} pages of {PAGE_SIZE << order:#x} wanted "
                                  f"at {vma.start + (s_lo << PAGE_SHIFT):#x}, {free} free")
        rows: list[int] = []
        got: list[int] = []
        folio_pages = vma.pages if isinstance(vma.pages, (FolioPages, ThpPages)) else None
        if folio_pages is not None:  # kept a folio at a time: no window, put() below
            fresh, window = False, None
            empty = np.flatnonzero(~folio_pages.taken(s_lo, s_hi))
        else:
            fresh = not vma.pages.pieces(s_lo, s_hi)  # nothing kept: every stretch is empty
            window = vma.pages.window(s_lo, s_hi)
            empty = np.arange(hi - lo, dtype=np.int64) if fresh else \
                np.flatnonzero((window.pfns.reshape(hi - lo, per) < 0).all(axis=1))
        bulk = None if fail.armed or not self.fast_faults else \
            self.mem.frames.alloc_contiguous(order, len(empty))
        whole = None  # the first pfn when the window gets one run of folios from its start
        if bulk is not None:  # lab: the same folios as the loop below, in one step
            if not hugetlb:
                fail.passes("vma_alloc_folio(THP)", len(empty))
            rows, got = empty.tolist(), list(range(bulk, bulk + (len(empty) << order), per))
            whole = bulk if fresh else None
            empty = empty[:0]
        try:
            for row in empty.tolist():
                # a THP that cannot be had falls back to 4K pages (VM_FAULT_FALLBACK)
                thp_fails = not hugetlb and fail.fails("vma_alloc_folio(THP)")
                pfn = None if thp_fails else self.mem.frames.alloc(order)
                if pfn is not None:
                    rows.append(row)
                    got.append(pfn)
                elif hugetlb:
                    raise OutOfMemory(f"hugetlb: no free {PAGE_SIZE << order:#x} page for "
                                      f"{vma.start + ((s_lo + row * per) << PAGE_SHIFT):#x}")
        finally:  # the folios taken so far are mapped (whoever fails unmaps them)
            vma.folios.update(dict.fromkeys(got, order))
            self.anon.new_folios(got, order)
            if folio_pages is not None:
                folio_pages.put(np.array(rows, dtype=np.int64) * per + s_lo,
                                np.array(got, dtype=np.int64), True)
            elif whole is not None:  # slices, not rows: the same pfns in one pass
                assert window is not None and window.excl is not None
                _fill_run(window.pfns, whole)
                window.excl[:] = True
            else:
                assert window is not None and window.excl is not None
                stretches = window.pfns.reshape(hi - lo, per)
                offsets = _offsets(order)
                for i in range(0, len(rows), 4096):  # bounded temporaries
                    stretches[rows[i:i + 4096]] = np.array(got[i:i + 4096],
                                                           dtype=np.int64)[:, None] + offsets
                window.excl.reshape(hi - lo, per)[rows] = True
        starts = (np.array(rows, dtype=np.int64) + lo) * per + off
        return int((np.minimum(starts + per, first + count) - np.maximum(starts, first)).sum())

    # -- copy on write ---------------------------------------------------------------------------
    def _break_cow(self, vma: Vma, first: int, count: int) -> None:
        """The write fault (``do_wp_page``) or, for a pin, the unshare fault
        (FAULT_FLAG_UNSHARE) of every present page of ``[first, first + count)`` the
        mapping does not have alone: afterwards each is an anonymous page exclusive to
        it. Shared mappings are written in place. The pages are present (faulted in)."""
        hi = first + count
        if vma.shared or count <= 0:
            return
        if vma.file is None:
            if vma.pages.first_unset(first, hi, excl=True) == hi:  # all its own already
                return
            if vma.backing.startswith("hugetlb"):
                self._hugetlb_wp(vma, first, hi)
                return
            if vma.folios:
                self._huge_pmd_wp(vma, first, hi)
        window = vma.pages.window(first, hi)
        assert window.excl is not None
        if vma.file is None:
            idx = np.flatnonzero(~window.excl & (window.pfns >= 0))
            old = window.pfns[idx]
            reuse = self._can_reuse(vma, idx + first, old)
            window.excl[idx[reuse]] = True
            self._wp_page_copy(window, idx[~reuse], old[~reuse], None)
            return
        idx = np.flatnonzero(~window.excl)  # a file page not copied yet, or a shared copy
        old = window.pfns[idx]
        is_file = old < 0
        if is_file.any():
            old[is_file] = vma.file.lookup(vma.pgoff + first, count)[idx[is_file]]
        copy = is_file.copy()
        anon = np.flatnonzero(~is_file)
        reuse = self._can_reuse(vma, idx[anon] + first, old[anon])
        window.excl[idx[anon[reuse]]] = True
        copy[anon[~reuse]] = True
        self._wp_page_copy(window, idx[copy], old[copy], is_file[copy])

    def _huge_pmd_wp(self, vma: Vma, first: int, hi: int) -> None:
        """``do_huge_pmd_wp_page`` for each shared THP of ``[first, hi)`` mapped by a PMD:
        reused whole when this PMD is its only reference (every page mapped once, no
        pin), else the PMD is split and the written pages are copied one by one."""
        starts, heads = vma.pmd_slots(first, hi)
        per = 1 << vma.order
        for i, head in zip(starts.tolist(), heads.tolist(), strict=True):
            if vma.excl(i, i + 1)[0]:
                continue
            only_ref = (self.anon.maps.range(head, per) == 1).all() and \
                not self.mem.pins.range(head, per).any()
            if only_ref:
                _put_folio(vma, i, None, True)
            else:
                del vma.folios[head]

    def _can_reuse(self, vma: Vma, idx: I64Array, pfns: I64Array) -> BoolArray:
        """``wp_can_reuse_anon_folio`` of the anonymous pages ``pfns`` at page indices
        ``idx``: a 4K page when its mapping here is its only reference. A page of a large
        folio mapped by 4K pages: never in 6.12; from 6.15 when all the folio's
        references are mappings in this mm and there is more than one
        (``__wp_can_reuse_large_anon_folio``), decided once per folio. O(pages) numpy work
        and a Python step per large folio."""
        heads = self.anon.folio_of(pfns)
        small = heads < 0
        reuse: BoolArray = small & (self.anon.maps.get(pfns) == 1) & \
            (self.mem.pins.get(pfns) == 0)
        if self.kernel >= LARGE_FOLIO_COW_REUSE:
            large = np.flatnonzero(~small)
            folios, first, which = np.unique(heads[large], return_index=True,
                                             return_inverse=True)
            at = large[first]
            here_only = np.array([self._folio_mapped_here_only(vma, i, pfn, head)
                                  for i, pfn, head in zip(idx[at].tolist(), pfns[at].tolist(),
                                                          folios.tolist(), strict=True)],
                                 dtype=np.bool_)
            reuse[large] = here_only[which]
        return reuse

    def _folio_mapped_here_only(self, vma: Vma, i: int, pfn: int, head: int) -> bool:
        """Every reference of the large folio at ``head`` is a mapping in this mm, and it
        has more than one. A page of an anonymous folio is mapped at most once per mm,
        at the address it was first faulted at, which ``vma``'s page ``i`` (``pfn``)
        gives: only the VMAs over that folio-sized stretch are looked at (found by
        bisection)."""
        order = self.anon.folios[head]
        per = 1 << order
        total = int(self.anon.maps.range(head, per).sum())
        if total <= 1 or self.mem.pins.range(head, per).any():
            return False
        base = vma.start + ((i - (pfn - head)) << PAGE_SHIFT)
        end = base + (per << PAGE_SHIFT)
        mine = 0
        inside = vma.start <= base and end <= vma.end  # no other VMA can map a page of it
        for other in [vma] if inside else self._overlapping(base, end):
            lo, hi = max(base, other.start), min(end, other.end)
            first = (other.start - base) >> PAGE_SHIFT  # page of the stretch at other's 0
            for ext in other.pages.pieces((lo - other.start) >> PAGE_SHIFT,
                                          (hi - other.start) >> PAGE_SHIFT):
                at = first + ext.lo  # the folio page each of ext's pages would be
                want = head + at + _offsets(order)[:len(ext.pfns)]
                mine += int(np.count_nonzero(ext.pfns == want))
        return mine == total

    def _wp_page_copy(self, window: Extent, idx: I64Array, old: I64Array,
                      was_file: BoolArray | None) -> None:
        """``wp_page_copy``: the pages at offsets ``idx`` of ``window`` become new copies
        of ``old``, their own; the old anonymous ones lose this mapping (a file page,
        where ``was_file``, stays the file's)."""
        if not len(idx):
            return
        new = self._copies(old, "alloc_pages(copy on write)")
        assert window.excl is not None
        window.pfns[idx] = new
        window.excl[idx] = True
        self.anon.unmap(old if was_file is None else old[~was_file])

    def _hugetlb_wp(self, vma: Vma, first: int, hi: int) -> None:
        """``hugetlb_wp`` for each shared huge page of ``[first, hi)``: reused when this
        is its only mapping, else copied whole into a new huge page (ENOMEM if the
        machine has none; Linux would take the page from the children when the writer
        owns the mapping's reservation, which the model does not keep)."""
        starts, heads = vma.pmd_slots(first, hi)
        span = _offsets(vma.order)
        flags = vma.pages.gather_excl(starts)
        for i, head in zip(starts[~flags].tolist(), heads[~flags].tolist(), strict=True):
            if self.anon.maps.range(head, 1)[0] != 1:
                new = self._copy_huge(vma, i, head, "hugetlb copy on write")
                del vma.folios[head]
                vma.folios[new] = vma.order
                _put_folio(vma, i, new, None)
                self.anon.unmap(head + span)
            _put_folio(vma, i, None, True)

    # -- GUP -------------------------------------------------------------------------------------
    def pin_user_pages(self, addr: int, npages: int, write: bool) -> I64Array:
        """``pin_user_pages_remote(FOLL_LONGTERM)``: the pfns of the first pages that could
        be pinned (fewer than ``npages`` at a hole, a PFNMAP, the end of a mapped file or
        a read-only VMA for a write; none there raises EFAULT, as vfio turns a 0 return
        into EFAULT). A page the mapping does not have alone is copied first, for a write
        (FOLL_WRITE's write fault) and for a read-only pin too (``gup_must_unshare``: a
        shared anonymous page, a file page of a private mapping), so later writes keep
        the pinned page. Sets MMF_HAS_PINNED first, as ``__get_user_pages_locked`` does."""
        views = self._gup(addr, npages, write)
        pfns = np.concatenate(views) if len(views) > 1 else views[0].copy()
        self.mem.pin_pages(pfns)
        self.pinned_pages += len(pfns)
        return pfns

    def pin_user_page_runs(self, addr: int, npages: int, write: bool) -> list[tuple[int, int]]:
        """:meth:`pin_user_pages`, answering with the ``(first pfn, pages)`` runs, found
        VMA by VMA in the pages' own arrays (no array of the pages is made); a run that
        goes on across a VMA boundary is one run."""
        runs: list[tuple[int, int]] = []
        for vma, lo, hi, view in self._gup_pieces(addr, npages, write):
            if view is None:  # a VMA kept a folio at a time: its runs come from the folios
                assert vma is not None
                assert isinstance(vma.pages, (FolioPages, ThpPages))
                more = vma.pages.runs(lo, hi) if isinstance(vma.pages, FolioPages) else \
                    vma.pages.folio_runs(lo, hi)
            else:
                more = pfn_runs(view) if vma is None else view_runs(vma, lo, hi, view)
            if runs and runs[-1][0] + runs[-1][1] == more[0][0]:
                pfn, count = runs.pop()
                more[0] = (pfn, count + more[0][1])
            runs += more
        self.mem.pin_runs(runs)
        self.pinned_pages += sum(n for _, n in runs)
        return runs

    def _gup(self, addr: int, npages: int, write: bool) -> list[I64Array]:
        """The pages :meth:`pin_user_pages` pins, faulted in and made the mapping's own:
        views of their pfns, in address order (valid until the mm next changes)."""
        out: list[I64Array] = []
        for vma, lo, hi, view in self._gup_pieces(addr, npages, write):
            if view is None:
                assert vma is not None
                view = vma.pages.get(lo, hi)  # built for this call
            out.append(view)
        return out

    def _gup_pieces(self, addr: int, npages: int, write: bool
                    ) -> list[tuple[Vma | None, int, int, I64Array | None]]:
        """:meth:`_gup` with, beside each view, the VMA whose own pages it is and the
        indices of its pages ``[lo, hi)`` (None, 0, its length for a shared file's page
        cache): what :func:`~iommulab.mem.runs.view_runs` needs to find runs by folio.
        A VMA kept a folio at a time (:class:`~iommulab.mem.sparse.FolioPages`) has no
        views: its piece's view is None, read by its folios."""
        self.has_pinned = True
        out: list[tuple[Vma | None, int, int, I64Array | None]] = []
        for vma, first, n in self._gup_vmas(addr, npages, write):
            self._fault(vma, first, n)
            self._break_cow(vma, first, n)
            if vma.file is not None and not vma.private:
                out += [(None, 0, len(view), view) for view in vma.views(first, first + n)]
            elif isinstance(vma.pages, FolioPages):
                out.append((vma, first, first + n, None))  # all present: faulted whole
            elif isinstance(vma.pages, ThpPages):
                out += [(vma, a, b, view) for a, b, view in vma.pages.segments(first, first + n)]
            else:
                out += [(vma, e.lo, e.hi, e.pfns) for e in vma.pages.pieces(first, first + n)]
        if not out:
            raise BadAddress(f"pin_user_pages: nothing pinnable at {addr:#x}")
        return out

    def fault_ahead(self, addr: int, npages: int, follows: int | None) -> None:
        """Lab fast path for a pinner that faults ``[addr, addr + npages pages)`` a batch at
        a time and stops at the first page that does not continue its run: fault in
        now, in one step, the THP folios of that range that its batches would fault one
        after another with nothing else allocated in between, so that its next refills
        find them present. That holds for aligned, wholly unpopulated THP stretches
        while the frame allocator is certain to hand out contiguous folios (the first
        one continuing the run, when ``follows`` names the pfn that would): the folios,
        their order and each allocation's fault-injection point are those of the batch
        by batch faults. Nothing is done while a failure is armed (the fallback to 4K
        pages would break the run) or where any of this does not hold."""
        vma = self.find_vma(addr)
        if vma is None or vma.file is not None or vma.pfnmap or \
                vma.backing.startswith("hugetlb") or self.mem.fail_nth.armed or \
                not self.fast_faults:
            return
        order = BACKINGS[vma.backing]
        per = 1 << order
        first = (addr - vma.start) >> PAGE_SHIFT
        if not order or (addr >> PAGE_SHIFT) % per:
            return
        folios = min(npages, vma.npages - first) >> order
        if folios < 2 or present_count(vma, first, first + (folios << order)):
            return
        nxt = self.mem.frames.contiguous_allocs(order, folios)
        if nxt is None or (follows is not None and nxt[0] != follows) or nxt[1] < 2:
            return
        self._fault(vma, first, nxt[1] << order)
        self.faulted_ahead += nxt[1] << order

    def gup_fast(self, addr: int, npages: int, write: bool) -> int:
        """How many pages from ``addr`` (up to ``npages``) GUP would pin as they are:
        present, in a VMA it may pin from, and needing no copy (the pages ``gup_fast``
        takes without a fault; lab: callers pin those in one go and fault the rest as
        the kernel's batches do). O(the answer) numpy work, no copies."""
        done = 0
        for vma, first, n in self._gup_vmas(addr, npages, write):
            ready = first_not_ready(vma, first, first + n)
            if ready < first + n:
                return done + ready - first
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
            out.append(vma.pfns(first, first + n))
        if not out:
            raise BadAddress(f"get_user_pages: nothing to get at {addr:#x}")
        return np.concatenate(out) if len(out) > 1 else out[0]

    def _gup_vmas(self, addr: int, npages: int, write: bool) -> Iterator[tuple[Vma, int, int]]:
        """``(vma, first page, pages)`` of ``[addr, addr + npages pages)`` VMA by VMA, up to
        the first page GUP may not pin (a hole, a PFNMAP, a write to a read-only VMA, a
        page past the end of the mapped file: SIGBUS)."""
        done = 0
        while done < npages:
            vaddr = addr + (done << PAGE_SHIFT)
            vma = self.find_vma(vaddr)
            if vma is None or vma.pfnmap or (write and not vma.writable):
                return
            first = (vaddr - vma.start) >> PAGE_SHIFT
            n = min(npages - done, vma.file_end - first)
            if n <= 0:
                return
            yield vma, first, n
            done += n
            if first + n < vma.npages:  # the request, or the mapped file, ends here
                return

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
        return vma.mmio_pfn + i, vma.npages - i

    # -- the CPU's view --------------------------------------------------------------------------
    def _runs(self, addr: int, n: int, write: bool) -> list[tuple[int, int]]:
        """``(pa, length)`` runs of ``[addr, addr + n)``, faulting it in a VMA at a time:
        EFAULT (SIGSEGV) where nothing allows the access, (SIGBUS) past the end of a
        mapped file, ENOMEM where the pages cannot be had."""
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
            if first + count > vma.file_end:
                raise BadAddress(f"{'write' if write else 'read'} at {pos:#x}: past the end "
                                 "of the mapped file (SIGBUS)")
            self._fault(vma, first, count)
            if write:
                self._break_cow(vma, first, count)
            page_va = vma.start + (first << PAGE_SHIFT)  # start of the run's first page
            for pfn, pages in pfn_runs(vma.pfns(first, first + count)):
                lo = max(pos, page_va)
                hi = min(seg_end, page_va + (pages << PAGE_SHIFT))
                runs.append(((pfn << PAGE_SHIFT) + lo - page_va, hi - lo))
                page_va += pages << PAGE_SHIFT
            pos = seg_end
        return runs

    def read(self, addr: int, n: int) -> bytes:
        """``n`` bytes the process reads at ``addr`` (EINVAL for a negative ``n``)."""
        if n < 0:
            raise InvalidArgument(f"read of {n} bytes at {addr:#x}")
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
            pos = min(end, vma.end, vma.start + (vma.file_end << PAGE_SHIFT))
            if pos < vma.end:
                break
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
        parts = [vma.pages.present()[1] for vma in self.vmas if not vma.shared]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def _check(self) -> None:
        """O(pages): VMAs ordered and disjoint; a page is exclusive only where an anonymous
        page is mapped, and then mapped once; shared mappings keep no pages of their own;
        a PMD-mapped folio is a live large folio mapped whole here."""
        assert self._starts == [v.start for v in self.vmas] == sorted(self._starts)
        assert self.map_count <= self.max_map_count + 1
        for prev, vma in zip(self.vmas, self.vmas[1:], strict=False):
            assert prev.end <= vma.start, f"{prev!r} overlaps {vma!r}"
        for vma in self.vmas:
            vma.pages._check()
            assert vma.pages.npages == vma.npages
            if vma.shared:
                assert not vma.pages.kept and not vma.folios, f"{vma!r} keeps pages"
            for ext in vma.chunks():
                assert ext.excl is not None
                assert (self.anon.maps.get(ext.pfns[ext.excl]) == 1).all(), \
                    f"{vma!r}: an exclusive page has another mapping"
            self._check_folios(vma)

    def _check_folios(self, vma: Vma) -> None:
        starts, heads = vma.pmd_slots()
        assert len(heads) == len(vma.folios), f"{vma!r}: a PMD folio is not in place"
        if isinstance(vma.pages, ThpPages):
            whole = vma.pages.folio_slots()[1].tolist()
            assert all(h in vma.folios for h in whole), f"{vma!r}: a folio kept whole " \
                "is not PMD-mapped"
        per = 1 << vma.order
        for i, head in zip(starts.tolist(), heads.tolist(), strict=True):
            assert self.anon.folios.get(head) == vma.order, f"{head:#x}: no such folio"
            assert (vma.pfns(i, i + per) == head + np.arange(per)).all()
            assert len(set(vma.excl(i, i + per).tolist())) == 1
