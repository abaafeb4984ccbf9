"""drivers/vfio/vfio_iommu_type1.c: the container's IOMMU state behind VFIO_IOMMU_* ioctls.

Mappings (``vfio_dma``) sit in a sorted list standing for the rb-tree; each
is pinned and mapped by runs of physically contiguous pages, into every
domain of the container, so the IOMMU core can use 2M and 1G entries where
IOVA and physical alignment allow. Where GUP has to fault pages in (or copy
them) it is asked for one 512-entry ``vfio_batch`` at a time, and only when the
run being built reaches the end of the last one, as ``vfio_pin_pages_remote``
does; pages it can pin as they are go in one call (lab: the end state is the
same). So a RLIMIT_MEMLOCK refusal, a hole or a failed ``iommu_map`` leaves
faulted in exactly the batches the kernel fetched.
Unmapping finds the runs again through the first domain (``vfio_unmap_unpin``).
Check order and errno follow ``vfio_dma_do_map`` / ``vfio_dma_do_unmap``; a
mapping's dirty bitmap is the kernel's ``dma->bitmap``, shifted in place by
``update_user_bitmap`` as there.

Linux 6.12 and 7.0 differ here: 6.12 still has VFIO_TYPE1_NESTING_IOMMU and probes
each new domain for fine-grained superpages (``vfio_test_domain_fgsp``); 7.0 answers
EOVERFLOW, not EINVAL, for a MAP_DMA, UNMAP_DMA or GET_BITMAP range that wraps.
Lab: ``stats`` counts pins and calls; ``report()`` adds the bytes mapped at each IOPTE
size (from the domains' tables) and the pages charged to locked_vm.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ..dma.cookie import get_msi_cookie
from ..errors import (
    AlreadyExists,
    BadAddress,
    Busy,
    InvalidArgument,
    KernelError,
    NoEntry,
    NoSpace,
    NotPermitted,
    OutOfMemory,
    Overflow,
)
from ..iommu.domain import IommuDomain
from ..iommu.gather import IommuIotlbGather
from ..iommu.resv import ResvRegion, ResvType
from ..kernel import DEFAULT_KERNEL, LINUX_7_0, KernelVersion
from ..prot import Prot
from . import uapi as u

if TYPE_CHECKING:
    from ..iommu.core import IommuGroup
    from ..mem.fault import FailNth
    from ..mem.mm import MmStruct
    from ..mem.physmem import PhysMem

__all__ = ["Task", "Type1Report", "Type1Stats", "VfioDma", "VfioIommu",
           "type1_check_extension"]

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PAGE_MASK = ~(PAGE_SIZE - 1) & ((1 << 64) - 1)
U64_MAX = (1 << 64) - 1
VFIO_IOMMU_TLB_SYNC_MAX = 512
VFIO_BATCH_MAX_CAPACITY = PAGE_SIZE // 8  # page pointers in one page: 512
BITS_PER_LONG = 64


class Task(Protocol):
    """What type1 reads of a process (``current``, ``dma->task``): its address space,
    ``rlimit(RLIMIT_MEMLOCK)`` in bytes (None: unlimited) and ``capable(CAP_IPC_LOCK)``.
    :class:`~iommulab.machine.Process` is one."""

    @property
    def mm(self) -> MmStruct: ...

    @property
    def memlock_limit(self) -> int | None: ...

    @property
    def cap_ipc_lock(self) -> bool: ...


@dataclass
class VfioDma:
    """``struct vfio_dma``: one MAP_DMA; ``size`` grows as runs are mapped. ``task`` and
    ``mm`` are the process that mapped it (or took it over with VADDR) and its address
    space, which locked_vm is charged to; ``lock_cap`` its CAP_IPC_LOCK then."""

    iova: int
    vaddr: int
    size: int
    prot: int
    task: Task
    mm: MmStruct
    lock_cap: bool
    iommu_mapped: bool = False
    vaddr_invalid: bool = False
    locked_vm: int = 0
    #: ``dma->bitmap`` while dirty tracking is on (bit i: page i of the mapping, and
    #: past the mapping what ``update_user_bitmap`` shifted or ORed there), else None
    bitmap: int | None = None

    @property
    def end(self) -> int:
        return self.iova + self.size


@dataclass
class VfioDomain:
    """``struct vfio_domain``."""

    domain: IommuDomain
    groups: list[IommuGroup] = field(default_factory=list)
    enforce_cache_coherency: bool = False


@dataclass
class _Batch:
    """``struct vfio_batch``: the pages one refill got that no run has used yet, as
    ``(first pfn, pages)`` runs in address order; ``rsvd`` when they are a PFNMAP run
    (MMIO: no struct page, nothing pinned)."""

    capacity: int
    runs: deque[tuple[int, int]] = field(default_factory=deque)
    rsvd: bool = False


@dataclass
class Type1Stats:
    """Lab counters of one container."""

    iommu_map_calls: int = 0
    iommu_unmap_calls: int = 0
    iotlb_syncs: int = 0
    pinned_pages: int = 0  # pages pinned now
    log: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Type1Report:
    """Lab statistics of one container at one moment.

    ``iopte_bytes`` has, per domain in the container's order, the bytes
    mapped at each IOPTE size; ``locked_vm`` counts the pages this container
    charged to RLIMIT_MEMLOCK (MMIO is never charged).
    """

    dma_entries: int
    mapped_bytes: int
    iopte_bytes: tuple[dict[int, int], ...]
    pinned_pages: int
    locked_vm: int
    iommu_map_calls: int
    iommu_unmap_calls: int
    iotlb_syncs: int


class VfioIommu:
    """``struct vfio_iommu`` of a container opened as type1 (``v2`` for TYPE1v2;
    ``nesting`` for Linux 6.12's VFIO_TYPE1_NESTING_IOMMU, which implies v2)."""

    def __init__(self, v2: bool, dma_entry_limit: int, disable_hugepages: bool,
                 allow_unsafe_interrupts: bool = False, *,
                 kernel: KernelVersion = DEFAULT_KERNEL, nesting: bool = False) -> None:
        self.v2 = v2 or nesting
        self.nesting = nesting
        self.kernel = kernel
        self.dma_avail = dma_entry_limit
        self.disable_hugepages = disable_hugepages
        self.allow_unsafe_interrupts = allow_unsafe_interrupts
        self.domains: list[VfioDomain] = []  # newest first, as list_add() keeps them
        self.iova_list: list[tuple[int, int]] = []  # inclusive ranges
        self.dmas: list[VfioDma] = []
        self._starts: list[int] = []
        self.pgsize_bitmap = PAGE_MASK
        self.vaddr_invalid_count = 0
        self.dirty_page_tracking = False
        self.num_non_pinned_groups = 0
        self.stats = Type1Stats()

    @property
    def pgsize(self) -> int:
        return self.pgsize_bitmap & -self.pgsize_bitmap

    # -- the dma tree ----------------------------------------------------------------------------
    def find_dma(self, start: int, size: int) -> VfioDma | None:
        """``vfio_find_dma``: a node overlapping ``[start, start + size)`` (size 0: one
        with ``iova < start < end``). Nodes never overlap, so only the last one starting
        before ``start + size`` can."""
        i = bisect.bisect_left(self._starts, start + size)
        if i and self.dmas[i - 1].end > start:
            return self.dmas[i - 1]
        return None

    def _first_node(self, start: int, size: int) -> int:
        """``vfio_find_dma_first_node``: index of the lowest node ending after ``start``."""
        i = bisect.bisect_right(self._starts, start)
        if i and self.dmas[i - 1].end > start:
            return i - 1
        return i

    def _link(self, dma: VfioDma) -> None:
        i = bisect.bisect(self._starts, dma.iova)
        self.dmas.insert(i, dma)
        self._starts.insert(i, dma.iova)

    def _unlink(self, dma: VfioDma) -> None:
        i = self.dmas.index(dma)
        del self.dmas[i], self._starts[i]

    # -- MAP_DMA ---------------------------------------------------------------------------------
    def map_dma(self, current: Task, flags: int, vaddr: int, iova: int, size: int) -> None:
        """``vfio_dma_do_map`` (after the ioctl's argsz/flags checks) by the process
        ``current``. Linux 7.0 checks the size and a wrapping range first, the wrap with
        EOVERFLOW; 6.12 checks both after the flags and the alignment, with EINVAL."""
        if self.kernel >= LINUX_7_0:
            check_range_7_0("MAP_DMA", iova, size, vaddr)
        prot = (Prot.WRITE if flags & u.VFIO_DMA_MAP_FLAG_WRITE else 0) | \
            (Prot.READ if flags & u.VFIO_DMA_MAP_FLAG_READ else 0)
        set_vaddr = bool(flags & u.VFIO_DMA_MAP_FLAG_VADDR)
        if bool(prot) == set_vaddr:
            raise InvalidArgument("MAP_DMA: need READ or WRITE, or VADDR alone")
        pgsize = self.pgsize
        if not size or (size | iova | vaddr) & (pgsize - 1):
            raise InvalidArgument(f"MAP_DMA: size {size:#x} iova {iova:#x} vaddr {vaddr:#x} "
                                  f"not aligned to {pgsize:#x}")
        if iova + size - 1 > U64_MAX or vaddr + size - 1 > U64_MAX:
            raise InvalidArgument("MAP_DMA: iova or vaddr range wraps")
        dma = self.find_dma(iova, size)
        if set_vaddr:
            if dma is None:
                raise NoEntry(f"MAP_DMA VADDR: nothing mapped at {iova:#x}")
            if not dma.vaddr_invalid or dma.iova != iova or dma.size != size:
                raise InvalidArgument("MAP_DMA VADDR: not an invalidated mapping of exactly "
                                      "this range")
            self._change_owner(dma, current)
            dma.vaddr, dma.vaddr_invalid = vaddr, False
            self.vaddr_invalid_count -= 1
            return
        if dma is not None:
            raise AlreadyExists(f"MAP_DMA: [{iova:#x}, +{size:#x}) overlaps "
                                f"[{dma.iova:#x}, +{dma.size:#x})")
        if not self.dma_avail:
            raise NoSpace("MAP_DMA: dma_entry_limit reached")
        end = iova + size - 1
        if self.iova_list and not any(lo <= iova and end <= hi for lo, hi in self.iova_list):
            raise InvalidArgument(f"MAP_DMA: [{iova:#x}, {end:#x}] is not inside one valid "
                                  "IOVA range")
        current.mm.mem.fail_nth.check("kzalloc(vfio_dma)")
        self.dma_avail -= 1
        dma = VfioDma(iova, vaddr, 0, int(prot), current, current.mm, current.cap_ipc_lock)
        self._link(dma)
        try:
            if self.domains:
                self._pin_map(dma, size, current, self.domains)
                dma.iommu_mapped = True
            else:
                dma.size = size  # pinned when a domain arrives (replay)
            if self.dirty_page_tracking:
                self._bitmap_alloc(dma, pgsize)
        except KernelError:
            self._remove_dma(dma)
            raise

    def _pin_map(self, dma: VfioDma, size: int, current: Task,
                 domains: list[VfioDomain]) -> None:
        """``vfio_pin_map_dma``: pin a run, map it, until ``size`` is mapped into
        ``domains``. When a map fails, the run and what the batch still holds are
        unpinned (the pages stay faulted in); the mapped part goes with the dma. One
        batch serves the whole mapping, pinned by ``current`` (:meth:`_pin_pages_remote`)."""
        fail = current.mm.mem.fail_nth  # vfio_batch_init: one page if it can, else a slot
        batch = _Batch(1 if self.disable_hugepages or fail.fails(
            "__get_free_page(vfio_batch_init)") else VFIO_BATCH_MAX_CAPACITY)
        try:
            while dma.size < size:
                pfn, npage, rsvd = self._pin_pages_remote(
                    dma, dma.vaddr + dma.size, (size - dma.size) >> PAGE_SHIFT, current, batch)
                try:
                    self._iommu_map(domains, dma.iova + dma.size, pfn, npage, dma.prot)
                except KernelError:
                    if not rsvd:  # vfio_unpin_pages_remote(..., true)
                        dma.mm.unpin_user_page_runs([(pfn, npage)])
                        self._unpinned(dma, npage)
                    raise
                dma.size += npage << PAGE_SHIFT
        finally:
            self._batch_unpin(current.mm, batch)

    def _pin_pages_remote(self, dma: VfioDma, vaddr: int, npage: int, current: Task,
                          batch: _Batch) -> tuple[int, int, bool]:
        """``vfio_pin_pages_remote``: ``(first pfn, pages, reserved)`` of the physically
        contiguous run from ``vaddr``, taken from the batch and refilled while the run
        reaches its end; the pages are charged to locked_vm (a PFNMAP run of MMIO is
        neither pinned nor charged). With large pages disabled a run is one page (6.12's
        one-page batch, 7.0's ``npage = 1``). The page that would take locked_vm past
        RLIMIT_MEMLOCK is refused with ENOMEM (6.12 checks page by page, 7.0 by
        contiguous chunks of the batch: the same page of the same batch); that, or a
        refill that finds nothing (EFAULT), unpins the run and the batch.

        As the kernel does, GUP pins from ``current->mm`` and the check reads that mm's
        locked_vm against ``current``'s RLIMIT_MEMLOCK, bypassed by the dma's
        CAP_IPC_LOCK; the pages are then charged to the dma's mm under its task's limit
        (:meth:`_lock_acct`). ``current`` is the mapping's own process for MAP_DMA, and
        the attaching one for a replay (:meth:`_replay`)."""
        mm = current.mm
        limit = current.memlock_limit
        budget = None if dma.lock_cap or limit is None else \
            (limit >> PAGE_SHIFT) - mm.locked_vm
        if self.disable_hugepages:
            npage = 1
        base, pinned, rsvd = 0, 0, False
        try:
            while npage:
                if not batch.runs:
                    # lab: the THP folios the next refills would fault, in one step
                    ahead = npage if budget is None or rsvd else \
                        (max(budget - pinned, 0) // batch.capacity + 1) * batch.capacity
                    mm.fault_ahead(vaddr, min(npage, ahead), base + pinned if pinned else None)
                    self._refill(dma, mm, vaddr, npage, batch)
                pfn, count = batch.runs[0]
                if not pinned:
                    base, rsvd = pfn, batch.rsvd
                elif pfn != base + pinned or batch.rsvd != rsvd:
                    break
                take = min(count, npage)
                if not rsvd and budget is not None and pinned + take > budget:
                    msg = f"RLIMIT_MEMLOCK ({limit}) exceeded"
                    self.stats.log.append(msg)
                    raise OutOfMemory(f"MAP_DMA: {msg}")
                if take < count:
                    batch.runs[0] = (pfn + take, count - take)
                else:
                    batch.runs.popleft()
                pinned += take
                npage -= take
                vaddr += take << PAGE_SHIFT
                if batch.runs:  # the batch's next page does not continue the run
                    break
            if not rsvd:
                self._lock_acct(dma, mm, pinned)
        except KernelError:
            if pinned and not rsvd:
                mm.unpin_user_page_runs([(base, pinned)])
            self._batch_unpin(mm, batch)
            raise
        return base, pinned, rsvd

    def _lock_acct(self, dma: VfioDma, pinned_from: MmStruct, npage: int) -> None:
        """``vfio_lock_acct`` of ``npage`` pages just pinned: charged to the dma's mm
        under its task's RLIMIT_MEMLOCK unless the dma has CAP_IPC_LOCK (ENOMEM, nothing
        charged). Lab: the pins move to the dma's mm, which unpins them."""
        _account_locked_vm(dma.mm, npage, dma.task.memlock_limit, dma.lock_cap,
                           "vfio_lock_acct")
        dma.locked_vm += npage
        self.stats.pinned_pages += npage
        if pinned_from is not dma.mm:
            pinned_from.pinned_pages -= npage
            dma.mm.pinned_pages += npage

    def _refill(self, dma: VfioDma, mm: MmStruct, vaddr: int, npage: int,
                batch: _Batch) -> None:
        """``vaddr_get_pfns`` of ``mm`` into an empty batch: ``pin_user_pages_remote`` of
        up to a batch of pages (GUP faults them in); pages it can pin as they are, in
        whole batches, all at once (lab: pinning them changes nothing else, and the
        kernel's next refills would pin the same). Nothing pinnable at ``vaddr``: a PFNMAP of
        MMIO gives a reserved run (``follow_fault_pfn``, EFAULT for a write through a
        read-only mapping) to the end of the VMA, whose pfns follow each other (the
        page after it is a guard gap here); a PFNMAP of RAM, or nothing, is EFAULT."""
        write = bool(dma.prot & Prot.WRITE)
        want = min(npage, batch.capacity)
        ready = mm.gup_fast(vaddr, npage, write)
        if ready > want:
            want = npage if ready == npage else ready // batch.capacity * batch.capacity
        try:
            runs = mm.pin_user_page_runs(vaddr, want, write)
        except BadAddress as err:
            first = mm.follow_pfn(vaddr, write)
            if first is None or mm.mem.is_ram(first[0] << PAGE_SHIFT):
                raise err from None
            batch.runs.append((first[0], min(npage, first[1])))
            batch.rsvd = True
            return
        batch.runs.extend(runs)
        batch.rsvd = False

    def _batch_unpin(self, mm: MmStruct, batch: _Batch) -> None:
        """``vfio_batch_unpin``: drop the pins of the pages no run used (never charged;
        ``mm``: the one they were pinned from)."""
        if batch.runs and not batch.rsvd:
            mm.unpin_user_page_runs(list(batch.runs))
        batch.runs.clear()

    def _iommu_map(self, domains: list[VfioDomain], iova: int, pfn: int, npage: int,
                   prot: int) -> None:
        """``vfio_iommu_map``: the run into every domain (IOMMU_CACHE added); unwinds the
        domains already mapped on failure."""
        done: list[IommuDomain] = []
        for d in domains:
            try:
                d.domain.map(iova, pfn << PAGE_SHIFT, npage << PAGE_SHIFT,
                             prot | Prot.CACHE)
            except KernelError:
                for m in reversed(done):
                    m.unmap(iova, npage << PAGE_SHIFT)
                raise
            self.stats.iommu_map_calls += 1
            done.append(d.domain)

    def _change_owner(self, dma: VfioDma, current: Task) -> None:
        """``vfio_change_dma_owner``: charge the new mm first, under ``current``'s
        RLIMIT_MEMLOCK unless it has CAP_IPC_LOCK (``mm_lock_acct``: ENOMEM, nothing
        moved), then uncharge the old mm if it still exists; ``current`` becomes the
        dma's task."""
        mm = current.mm
        if mm is dma.mm:
            return
        npage = dma.locked_vm
        _account_locked_vm(mm, npage, current.memlock_limit, current.cap_ipc_lock,
                           "MAP_DMA VADDR")
        if not dma.mm.gone:
            dma.mm.locked_vm -= npage
        dma.mm.pinned_pages -= npage  # lab: the pins are the new owner's to release
        mm.pinned_pages += npage
        dma.task, dma.mm, dma.lock_cap = current, mm, current.cap_ipc_lock

    # -- unmap -----------------------------------------------------------------------------------
    def _unpinned(self, dma: VfioDma, pages: int) -> None:
        """The accounting ``vfio_unpin_pages_remote`` does for ``pages`` unpinned."""
        dma.mm.locked_vm -= pages
        dma.locked_vm -= pages
        self.stats.pinned_pages -= pages

    def _unmap_unpin(self, dma: VfioDma) -> None:
        """``vfio_unmap_unpin``: other domains in one call each, then the first one by the
        runs it maps."""
        if not dma.size or not self.domains:
            return
        for d in self.domains[1:]:
            d.domain.unmap(dma.iova, dma.size)
            self.stats.iommu_unmap_calls += 1
        self._unmap_unpin_runs(self.domains[0].domain, dma)
        dma.iommu_mapped = False

    def _unmap_unpin_runs(self, domain: IommuDomain, dma: VfioDma) -> None:
        """The ``vfio_unmap_unpin`` loop over the domain that tracks the pfns: it finds the
        runs through ``iova_to_phys`` contiguity, unmaps them with a sync every 512, and
        unpins what is RAM. A run whose list entry (``kzalloc(vfio_regions)``) cannot be
        had goes by ``unmap_unpin_slow``: what is queued is synced and unpinned, the run
        unmapped with a sync of its own and unpinned."""
        gather = IommuIotlbGather()
        pending: list[tuple[int, int]] = []
        fail = dma.mm.mem.fail_nth
        for iova, pa, length in domain.leaf_runs(dma.iova, dma.size):
            if fail.fails("kzalloc(vfio_regions)"):
                self._sync_unpin(domain, gather, dma, pending)
                domain.unmap(iova, length)
                self.stats.iommu_unmap_calls += 1
                self._sync_unpin(domain, IommuIotlbGather(), dma, [(pa, length)])
                continue
            domain.unmap_fast(iova, length, gather)
            self.stats.iommu_unmap_calls += 1
            pending.append((pa, length))
            if len(pending) >= VFIO_IOMMU_TLB_SYNC_MAX:
                self._sync_unpin(domain, gather, dma, pending)
        self._sync_unpin(domain, gather, dma, pending)

    def _sync_unpin(self, domain: IommuDomain, gather: IommuIotlbGather, dma: VfioDma,
                    pending: list[tuple[int, int]]) -> None:
        """``vfio_sync_unpin``: one IOTLB sync, then unpin every queued RAM run."""
        domain.iotlb_sync(gather)
        self.stats.iotlb_syncs += 1
        ram = [(pa >> PAGE_SHIFT, n >> PAGE_SHIFT) for pa, n in pending
               if dma.mm.mem.is_ram(pa)]
        if ram:
            pages = sum(n for _, n in ram)
            dma.mm.unpin_user_page_runs(ram)
            self._unpinned(dma, pages)
        pending.clear()

    def _remove_dma(self, dma: VfioDma) -> None:
        """``vfio_remove_dma``."""
        if dma.vaddr_invalid:
            self.vaddr_invalid_count -= 1
        self._unmap_unpin(dma)
        self._unlink(dma)
        self.dma_avail += 1

    def unmap_dma(self, flags: int, iova: int, size: int,
                  dirty: tuple[int, int, MmStruct] | None = None) -> int:
        """``vfio_dma_do_unmap``: bytes unmapped (``dirty``: bitmap pgsize, user address and
        the mm it lives in, for GET_DIRTY_BITMAP). A range that wraps is EOVERFLOW in Linux
        7.0, EINVAL in 6.12. EFAULT writing a mapping's bits stops there: the mappings
        before it are gone, it and those after it stay."""
        pgsize = self.pgsize
        unmap_all = bool(flags & u.VFIO_DMA_UNMAP_FLAG_ALL)
        invalidate = bool(flags & u.VFIO_DMA_UNMAP_FLAG_VADDR)
        if iova & (pgsize - 1):
            raise InvalidArgument(f"UNMAP_DMA: iova {iova:#x} not aligned to {pgsize:#x}")
        if unmap_all:
            if iova or size:
                raise InvalidArgument("UNMAP_DMA ALL: iova and size must be 0")
            size = U64_MAX
        elif not size or size & (pgsize - 1):
            raise InvalidArgument(f"UNMAP_DMA: bad size {size:#x} at {iova:#x}")
        elif iova + size - 1 > U64_MAX:
            wraps = Overflow if self.kernel >= LINUX_7_0 else InvalidArgument
            raise wraps(f"UNMAP_DMA: [{iova:#x}, +{size:#x}) wraps")
        if dirty is not None and (not self.dirty_page_tracking or dirty[0] != pgsize):
            raise InvalidArgument("UNMAP_DMA: dirty bitmap without tracking or with another "
                                  "page size")
        if self.v2 and not unmap_all:
            self._check_no_bisection(iova, size, "UNMAP_DMA")
        unmapped = 0
        end = iova + size
        i = self._first_node(iova, size)
        marked: list[VfioDma] = []
        while i < len(self.dmas) and self.dmas[i].iova < end:
            dma = self.dmas[i]
            if not self.v2 and iova > dma.iova:
                break
            if invalidate:
                if dma.vaddr_invalid:
                    for m in marked:
                        m.vaddr_invalid = False
                        self.vaddr_invalid_count -= 1
                    raise InvalidArgument("UNMAP_DMA VADDR: already invalidated")
                dma.vaddr_invalid = True
                self.vaddr_invalid_count += 1
                marked.append(dma)
                unmapped += dma.size
                i += 1
                continue
            if dirty is not None:
                self._update_user_bitmap(dirty, dma, iova)
            unmapped += dma.size
            self._remove_dma(dma)
        return unmapped

    # -- dirty pages -------------------------------------------------------------------------------
    def _bitmap_alloc(self, dma: VfioDma, pgsize: int) -> None:
        """``vfio_dma_bitmap_alloc``: EINVAL over DIRTY_BITMAP_PAGES_MAX pages (8 TiB of
        4K); the kernel's buffer has a spare u64 for the shift, which an int does not
        need."""
        npages = dma.size // pgsize
        if npages > u.DIRTY_BITMAP_PAGES_MAX:
            raise InvalidArgument(f"dirty bitmap: {npages} pages at {dma.iova:#x} exceed "
                                  f"DIRTY_BITMAP_PAGES_MAX ({u.DIRTY_BITMAP_PAGES_MAX})")
        dma.mm.mem.fail_nth.kvmalloc("vfio_dma bitmap",
                                     u.DIRTY_BITMAP_BYTES(npages) + 8)
        dma.bitmap = 0  # vfio_dma_populate_bitmap: no page pinned by a driver (no mdev)

    def set_dirty_tracking(self, start: bool) -> None:
        """VFIO_IOMMU_DIRTY_PAGES START (``vfio_dma_bitmap_alloc_all``: a bitmap per
        mapping; a failure frees those made and leaves tracking off) or STOP (frees them).
        Both do nothing when tracking already is in that state."""
        if start == self.dirty_page_tracking:
            return
        if not start:
            for dma in self.dmas:
                dma.bitmap = None
            self.dirty_page_tracking = False
            return
        pgsize = self.pgsize
        try:
            for dma in self.dmas:
                self._bitmap_alloc(dma, pgsize)
        except KernelError:
            for dma in self.dmas:
                dma.bitmap = None
            raise
        self.dirty_page_tracking = True

    def _update_user_bitmap(self, dirty: tuple[int, int, MmStruct], dma: VfioDma,
                            base_iova: int) -> None:
        """``update_user_bitmap``, with its warts: with a group that does not pin through
        VFIO (every group here) all ``nbits`` pages of a mapped dma are set; when the user's
        bit offset is not a multiple of 64 the dma's own bitmap is shifted left *in place*
        over ``nbits + shift`` bits rounded up to whole words, and the user's whole u64 at
        the seam is ORed into its first word; then ``DIRTY_BITMAP_BYTES(nbits + shift)``
        bytes are copied out, overwriting the user's words. The caller clears only
        ``nbits`` bits afterwards, so bits shifted past the mapping stay and come back in
        a later report of it. EFAULT when the user memory cannot be read or written (the
        shift is kept). Python ints: O(nbits / 64)."""
        pgsize, user, mm = dirty
        assert dma.bitmap is not None
        pgshift = _ffs(pgsize)
        nbits = dma.size >> pgshift
        copy_offset, shift = divmod((dma.iova - base_iova) >> pgshift, BITS_PER_LONG)
        bits = dma.bitmap
        if self.num_non_pinned_groups and dma.iommu_mapped:
            bits |= (1 << nbits) - 1
        seam = user + copy_offset * 8
        if shift:
            words = -(-(nbits + shift) // BITS_PER_LONG)
            low = (1 << (words * BITS_PER_LONG)) - 1
            bits = (bits & ~low) | ((bits << shift) & low)  # bits past ``words`` are lost
            dma.bitmap = bits
            bits |= int.from_bytes(mm.read(seam, 8), "little")  # EFAULT: shift stays
        dma.bitmap = bits
        nbytes = u.DIRTY_BITMAP_BYTES(nbits + shift)
        out = (bits & ((1 << (nbytes * 8)) - 1)).to_bytes(nbytes, "little")
        if mm.copy_to_user(seam, out):
            raise BadAddress(f"dirty bitmap: cannot write {nbytes} bytes at {seam:#x}")

    def dirty_get_bitmap(self, iova: int, size: int, pgsize: int, user: int,
                         mm: MmStruct) -> None:
        """VFIO_IOMMU_DIRTY_PAGES GET_BITMAP after its size checks (``vfio_iova_dirty_bitmap``
        for each mapping that starts in the range, whose first ``nbits`` bits are then
        cleared and refilled with the pages pinned through VFIO: none here)."""
        mpgsize = self.pgsize
        if pgsize != mpgsize:
            raise InvalidArgument(f"dirty bitmap pgsize {pgsize:#x} is not {mpgsize:#x}")
        if iova & (mpgsize - 1) or not size or size & (mpgsize - 1):
            raise InvalidArgument("dirty bitmap: iova or size not aligned")
        if not self.dirty_page_tracking:
            raise InvalidArgument("dirty bitmap: tracking is not started")
        self._check_no_bisection(iova, size, "dirty bitmap")
        last = iova + size - 1
        i = bisect.bisect_left(self._starts, iova)
        while i < len(self.dmas) and self.dmas[i].iova <= last:
            dma = self.dmas[i]
            self._update_user_bitmap((pgsize, user, mm), dma, iova)
            assert dma.bitmap is not None
            nbits = dma.size >> _ffs(pgsize)
            dma.bitmap = dma.bitmap >> nbits << nbits  # bitmap_clear(bitmap, 0, nbits)
            i += 1

    def report(self) -> Type1Report:
        """Lab: what is mapped, at which IOPTE sizes, pinned and charged, and the calls."""
        st = self.stats
        iopte = tuple({size: size * n for size, n in d.domain.leaf_histogram().items()}
                      for d in self.domains)
        return Type1Report(len(self.dmas), sum(d.size for d in self.dmas), iopte,
                           st.pinned_pages, sum(d.locked_vm for d in self.dmas),
                           st.iommu_map_calls, st.iommu_unmap_calls, st.iotlb_syncs)

    def _check_no_bisection(self, iova: int, size: int, what: str) -> None:
        """The v2 rule of ``vfio_dma_do_unmap`` and ``vfio_iova_dirty_bitmap``: EINVAL when
        ``[iova, iova + size)`` starts or ends inside a mapping."""
        dma = self.find_dma(iova, 1)
        if dma is not None and dma.iova != iova:
            raise InvalidArgument(f"{what}: the range bisects a mapping at its start")
        dma = self.find_dma(iova + size - 1, 0)
        if dma is not None and dma.end != iova + size:
            raise InvalidArgument(f"{what}: the range bisects a mapping at its end")

    # -- groups ----------------------------------------------------------------------------------
    def attach_group(self, group: IommuGroup, domain: IommuDomain, *, msi_isolated: bool,
                     enforce_cc: bool, join: Callable[[IommuDomain], bool] | None = None,
                     current: Task) -> IommuDomain:
        """``vfio_iommu_type1_attach_group`` after the new domain is allocated and attached:
        aperture and reserved regions against existing mappings, the IOVA list, MSI
        isolation, then reuse of a compatible domain or replay into the new one and its
        MSI cookie where the group has a software MSI window. The IOVA list is worked on
        in a copy, a node allocated per range (``vfio_iova``).

        A domain with the same driver ops and coherency is tried, newest first, with
        ``join``, which moves the group onto it (``iommu_attach_group``) and says
        whether the driver accepted; a refusal leaves the group on ``domain``. Linux
        6.12 probes a domain it keeps for fine-grained superpages. ``current`` is the
        process attaching (SET_IOMMU, GROUP_SET_CONTAINER), which a replay pins from.
        Returns the domain the group ends up on; nothing changes on failure."""
        if self.vaddr_invalid_count:
            raise Busy("attach: mappings with invalidated vaddr exist")
        geo = domain.geometry
        if self._aper_conflict(geo.aperture_start, geo.aperture_end):
            raise InvalidArgument(f"attach: aperture [{geo.aperture_start:#x}, "
                                  f"{geo.aperture_end:#x}] conflicts with the IOVA list or "
                                  "a mapping")
        fail = group.devices[0].mem.fail_nth
        resv = group.resv_regions()
        for r in resv:
            if r.type != ResvType.DIRECT_RELAXABLE and \
                    self.find_dma(r.start, r.length) is not None:
                raise InvalidArgument(f"attach: reserved region {r!r} overlaps a mapping")
        for _ in self.iova_list:  # vfio_iommu_iova_get_copy
            fail.check("kmalloc(vfio_iova)")
        if not self.iova_list:  # vfio_iommu_aper_resize of an empty list inserts one
            fail.check("kmalloc(vfio_iova)")
        ranges = _resv_exclude(_aper_resize(self.iova_list, geo.aperture_start,
                                            geo.aperture_end), resv, fail)
        if not ranges:
            raise InvalidArgument("attach: no valid IOVA range remains")
        if not msi_isolated and not self.allow_unsafe_interrupts:
            raise NotPermitted("attach: no interrupt remapping or MSI isolation "
                               "(allow_unsafe_interrupts is off)")
        for d in self.domains:  # same driver ops and coherency: try that domain
            if (type(d.domain.ops) is type(domain.ops) and d.enforce_cache_coherency ==
                    enforce_cc and (join is None or self._join(join, d.domain, fail))):
                d.groups.append(group)
                self.iova_list = ranges
                self.num_non_pinned_groups += 1
                return d.domain
        if self.kernel < LINUX_7_0:
            _test_domain_fgsp(domain, ranges, group.devices[0].mem)
        self._replay(domain, current)
        msi_base = _sw_msi_base(resv)
        if msi_base is not None:  # iommu_get_msi_cookie: the new domain goes on ENOMEM
            get_msi_cookie(domain, msi_base, fail, self.kernel)
        self.domains.insert(0, VfioDomain(domain, [group], enforce_cc))
        self._update_pgsize_bitmap()
        self.iova_list = ranges
        self.num_non_pinned_groups += 1
        return domain

    @staticmethod
    def _join(join: Callable[[IommuDomain], bool], existing: IommuDomain,
              fail: FailNth) -> bool:
        """The move onto a compatible domain: a refusal (an allocation of the attach
        included) means "not compatible", and the new domain is kept."""
        with fail.within("vfio_iommu_type1_attach_group: iommu_attach_group(compatible)"):
            return join(existing)

    def _aper_conflict(self, start: int, end: int) -> bool:
        """``vfio_iommu_aper_conflict``: an aperture disjoint from the IOVA list, or one
        that would leave a mapping outside."""
        if not self.iova_list:
            return False
        first, last = self.iova_list[0][0], self.iova_list[-1][1]
        if start > last or end < first:
            return True
        if start > first and self.find_dma(first, start - first) is not None:
            return True
        return end < last and self.find_dma(end + 1, last - end) is not None

    def _replay(self, domain: IommuDomain, current: Task) -> None:
        """``vfio_iommu_replay``: existing mappings into a new domain, by runs read from the
        first domain. A mapping made while there was no domain is pinned now, as
        ``vfio_pin_pages_remote`` does it for ``current``, the process attaching: from
        its mm at the mapping's vaddr, under its locked_vm and RLIMIT_MEMLOCK (the dma's
        CAP_IPC_LOCK bypasses that), then charged to the dma's mm under its task's limit.
        So a process other than the mapping's pins what its own address space has there.
        On failure what was mapped into the domain, and pinned for it, is undone.

        Through the ioctls no such mapping exists: a container has a domain from its
        first group on and loses its mappings with its last one; a mapping without a
        domain needs the emulated (mdev) groups the model does not have. Tests drive
        :class:`VfioIommu` directly."""
        done: list[tuple[VfioDma, int]] = []  # (dma, its size) in the order mapped
        try:
            for dma in self.dmas:
                done.append((dma, dma.size))
                if dma.iommu_mapped:
                    self._copy_runs(self.domains[0].domain, domain, dma)
                else:
                    size, dma.size = dma.size, 0
                    self._pin_map(dma, size, current, [VfioDomain(domain)])
        except KernelError:
            for dma, size in reversed(done):
                if dma.iommu_mapped:
                    domain.unmap(dma.iova, dma.size)
                else:
                    self._unmap_unpin_runs(domain, dma)
                    dma.size = size
            raise
        for dma in self.dmas:
            dma.iommu_mapped = True

    def _copy_runs(self, src: IommuDomain, dst: IommuDomain, dma: VfioDma) -> None:
        """The replay of a mapped dma: ``iommu_map`` of each physically contiguous run
        ``iommu_iova_to_phys`` finds in ``src``."""
        for iova, pa, length in src.leaf_runs(dma.iova, dma.size):
            dst.map(iova, pa, length, dma.prot | Prot.CACHE)
            self.stats.iommu_map_calls += 1

    def _update_pgsize_bitmap(self) -> None:
        """``vfio_update_pgsize_bitmap``: AND of the domains, never below PAGE_SIZE."""
        if not self.domains:
            self.pgsize_bitmap = PAGE_MASK
            return
        bitmap = U64_MAX
        for d in self.domains:
            bitmap &= d.domain.pgsize_bitmap
        if bitmap & (PAGE_SIZE - 1):
            bitmap = (bitmap & PAGE_MASK) | PAGE_SIZE
        self.pgsize_bitmap = bitmap

    def detach_group(self, group: IommuGroup,
                     iommu_detach: Callable[[], None] | None = None) -> IommuDomain | None:
        """``vfio_iommu_type1_detach_group``; returns the domain to free if it is now empty.
        In the kernel's order: the IOVA list copied (``vfio_iommu_iova_get_copy``), the
        group taken off the domain (``iommu_detach_group``: ``iommu_detach``, which
        must not fail), and only then, for the last group of the last domain, every
        mapping unmapped and unpinned from the domain no device uses any more; the
        domain goes (the caller frees it: ``iommu_domain_free``, which allocates
        nothing), giving its aperture back (``vfio_iommu_aper_expand``), and the IOVA
        list is rebuilt from the reserved regions of the groups that stay
        (``vfio_iommu_resv_refresh``). The old list stays if nothing valid would remain,
        or if a node of the copy or of the new list cannot be had, or a group's regions
        cannot be copied: the detach absorbs those failures."""
        fail = group.devices[0].mem.fail_nth
        for d in self.domains:
            if group not in d.groups:
                continue
            with fail.within("vfio_iommu_type1_detach_group"):  # vfio_iommu_iova_get_copy
                copied = all(not fail.fails("kmalloc(vfio_iova)") for _ in self.iova_list)
            if iommu_detach is not None:
                iommu_detach()
            d.groups.remove(group)
            ranges = list(self.iova_list)
            freed = None
            if not d.groups:
                if len(self.domains) == 1:
                    for dma in list(self.dmas):
                        self._remove_dma(dma)
                self.domains.remove(d)
                ranges = self._aper_expand(ranges)
                self._update_pgsize_bitmap()
                freed = d.domain
            with fail.within("vfio_iommu_type1_detach_group"):
                refreshed = self._resv_refresh(ranges, fail) if copied else []
            if refreshed:
                self.iova_list = refreshed
            # the kernel's vfio_iommu_populate_bitmap_full here sets bits that every report
            # sets anyway while a group that does not pin through VFIO (any group here) is in
            self.num_non_pinned_groups -= 1
            return freed
        return None

    def _aper_expand(self, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """``vfio_iommu_aper_expand``: the list's ends move to the smallest aperture of the
        domains left (all of the 64-bit space when none is)."""
        if not ranges:
            return ranges
        start = max((d.domain.geometry.aperture_start for d in self.domains), default=0)
        end = min((d.domain.geometry.aperture_end for d in self.domains), default=U64_MAX)
        ranges[0] = (start, ranges[0][1])
        ranges[-1] = (ranges[-1][0], end)
        return ranges

    def _resv_refresh(self, ranges: list[tuple[int, int]],
                      fail: FailNth | None = None) -> list[tuple[int, int]]:
        """``vfio_iommu_resv_refresh``: one range from the list's first start to its last
        end, less the reserved regions of every group still attached; empty on failure."""
        if not ranges:
            return []
        try:
            resv = [r for d in self.domains for g in d.groups for r in g.resv_regions()]
            if fail is not None:  # vfio_iommu_aper_resize of the emptied copy
                fail.check("kmalloc(vfio_iova)")
            return _resv_exclude([(ranges[0][0], ranges[-1][1])], resv, fail)
        except OutOfMemory:  # the old list stays
            return []

    # -- GET_INFO ----------------------------------------------------------------------------------
    def info_caps(self, fail: FailNth | None = None) -> bytes:
        """The capability chain ``vfio_iommu_type1_get_info`` builds, offsets relative to a
        buffer whose 24-byte info struct comes first. With ``fail``, its allocations: the
        buffer grows by ``krealloc`` at each capability (32, 48, then 64 or more bytes:
        a new slab object each time), and the IOVA ranges are put together first in a
        buffer of their own (``kzalloc``); ENOMEM."""
        def add(cap: bytes) -> None:
            if fail is not None:
                fail.check("krealloc(vfio_info_cap_add)")
            caps.append(cap)

        caps: list[bytes] = []
        add(u.CAP_MIGRATION.pack(u.VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION, 1, 0, 0,
                                 self.pgsize, u.DIRTY_BITMAP_SIZE_MAX))
        add(u.CAP_DMA_AVAIL.pack(u.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, 1, 0, self.dma_avail))
        if self.iova_list:
            if fail is not None:
                fail.check("kzalloc(cap_iovas)")
            add(u.CAP_IOVA_RANGE.pack(u.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, 1, 0,
                                      len(self.iova_list), 0)
                + b"".join(u.IOVA_RANGE.pack(lo, hi) for lo, hi in self.iova_list))
        out = bytearray()
        offset = u.IOMMU_INFO.size
        for i, cap in enumerate(caps):
            padded = cap + bytes(-len(cap) % 8)
            nxt = offset + len(padded) if i + 1 < len(caps) else 0
            out += padded[:4] + nxt.to_bytes(4, "little") + padded[8:]
            offset += len(padded)
        return bytes(out)

    def _check(self) -> None:
        """Sorted, non-overlapping mappings; the counters agree with them; a dirty bitmap
        for each mapping exactly while tracking."""
        assert self._starts == [d.iova for d in self.dmas]
        for a, b in zip(self.dmas, self.dmas[1:], strict=False):
            assert a.end <= b.iova, f"{a} overlaps {b}"
        assert self.vaddr_invalid_count == sum(d.vaddr_invalid for d in self.dmas)
        assert self.stats.pinned_pages == sum(d.locked_vm for d in self.dmas)
        assert all((d.bitmap is not None) == self.dirty_page_tracking for d in self.dmas)


def _account_locked_vm(mm: MmStruct, npage: int, limit: int | None, lock_cap: bool,
                       what: str) -> None:
    """``__account_locked_vm`` of ``npage`` more pages: ENOMEM (nothing charged) when
    they take ``mm``'s locked_vm past ``limit`` (the task's RLIMIT_MEMLOCK in bytes;
    None: unlimited), unless ``lock_cap``."""
    if npage and not lock_cap and limit is not None and \
            mm.locked_vm + npage > limit >> PAGE_SHIFT:
        raise OutOfMemory(f"{what}: {npage} more pages would take locked_vm past "
                          f"RLIMIT_MEMLOCK ({limit})")
    mm.locked_vm += npage


def check_range_7_0(what: str, iova: int, size: int, vaddr: int | None = None) -> None:
    """Linux 7.0's first checks of a range (``check_add_overflow``): EINVAL for size 0,
    EOVERFLOW when ``iova + size - 1`` (or ``vaddr + size - 1``) passes 2^64."""
    if not size:
        raise InvalidArgument(f"{what}: size 0")
    for start in (iova,) if vaddr is None else (iova, vaddr):
        if start + size - 1 > U64_MAX:
            raise Overflow(f"{what}: [{start:#x}, +{size:#x}) wraps")


def _test_domain_fgsp(domain: IommuDomain, ranges: list[tuple[int, int]],
                      mem: PhysMem) -> None:
    """``vfio_test_domain_fgsp`` (Linux 6.12; gone by 7.0): map two zeroed pages at the
    first 8K-aligned IOVA of the valid ranges that has room, unmap the first page, and
    the second when the first unmap took only that page. An IOMMU that unmaps more has
    fine-grained superpages (AMD-Vi's), which makes 6.12's ``vfio_unmap_unpin`` unmap a
    page at a time; none of the model's formats has them, so only the probe's map, its
    unmaps and its allocation are modelled, not its answer. Failures only skip the
    probe. Its map and unmaps are not counted in the lab's ``stats``, which count what
    the user's mappings cost."""
    with mem.fail_nth.within("vfio_test_domain_fgsp"):
        _fgsp_probe(domain, ranges, mem)


def _fgsp_probe(domain: IommuDomain, ranges: list[tuple[int, int]], mem: PhysMem) -> None:
    try:
        pfn = mem.alloc_pages(1, site="alloc_pages")
    except OutOfMemory:
        return
    for lo, hi in ranges:
        start = -(-lo // (2 * PAGE_SIZE)) * 2 * PAGE_SIZE
        if start >= hi or hi - start < 2 * PAGE_SIZE:
            continue
        try:
            domain.map(start, pfn << PAGE_SHIFT, 2 * PAGE_SIZE,
                       Prot.READ | Prot.WRITE | Prot.CACHE)
        except KernelError:
            break
        if domain.unmap(start, PAGE_SIZE) == PAGE_SIZE:
            domain.unmap(start + PAGE_SIZE, PAGE_SIZE)
        break
    mem.free_pages(pfn, 1)


def _aper_resize(ranges: list[tuple[int, int]], start: int, end: int
                 ) -> list[tuple[int, int]]:
    """``vfio_iommu_aper_resize``: the list cut to ``[start, end]`` (a new list of that
    one range when empty). As there, a range that ``start`` hits at its last byte, or
    ``end`` at its first, is dropped rather than cut to one byte."""
    if not ranges:
        return [(start, end)]
    out = list(ranges)
    while out and start >= out[0][0]:
        hi = out[0][1]
        if start < hi:
            out[0] = (start, hi)
            break
        del out[0]
    return [(lo, hi) if end > hi else (lo, end) for lo, hi in out if end > lo]


def _resv_exclude(ranges: list[tuple[int, int]], resv: list[ResvRegion],
                  fail: FailNth | None = None) -> list[tuple[int, int]]:
    """``vfio_iommu_resv_exclude``: the ranges less every reserved region except
    DIRECT_RELAXABLE ones (empty: the kernel's EINVAL); with ``fail``, each piece a
    region leaves of a range it cuts is a new node (``vfio_iova``, ENOMEM)."""
    for r in resv:
        if r.type != ResvType.DIRECT_RELAXABLE:
            ranges = _exclude(ranges, r.start, r.last, fail)
    return ranges


def _exclude(ranges: list[tuple[int, int]], lo: int, hi: int,
             fail: FailNth | None = None) -> list[tuple[int, int]]:
    """``vfio_iommu_resv_exclude`` of one region: split the ranges around ``[lo, hi]``."""
    out: list[tuple[int, int]] = []
    for a, b in ranges:
        if hi < a or lo > b:
            out.append((a, b))
            continue
        for piece in ((a, lo - 1) if a < lo else None, (hi + 1, b) if hi < b else None):
            if piece is not None:
                if fail is not None:
                    fail.check("kmalloc(vfio_iova)")
                out.append(piece)
    return out


def _sw_msi_base(resv: list[ResvRegion]) -> int | None:
    """``vfio_iommu_has_sw_msi``: the last IOMMU_RESV_SW_MSI region's start, or None when
    the group has a hardware MSI region (which takes precedence)."""
    base = None
    for r in resv:
        if r.type == ResvType.MSI:
            return None
        if r.type == ResvType.SW_MSI:
            base = r.start
    return base


def _ffs(x: int) -> int:
    """``__ffs``: index of the lowest set bit."""
    return (x & -x).bit_length() - 1


def type1_check_extension(iommu: VfioIommu | None, ext: int,
                          kernel: KernelVersion = DEFAULT_KERNEL) -> int:
    """``vfio_iommu_type1_check_extension``; ``iommu`` is None before SET_IOMMU. Linux 6.12
    still answers 1 for VFIO_TYPE1_NESTING_IOMMU; 6.13 reserved the number."""
    if ext in (u.VFIO_TYPE1_IOMMU, u.VFIO_TYPE1v2_IOMMU, u.VFIO_UNMAP_ALL):
        return 1
    if ext == u.VFIO_TYPE1_NESTING_IOMMU:
        return int(kernel < (6, 13))
    if ext == u.VFIO_UPDATE_VADDR:
        return int(iommu is not None)  # and no emulated (mdev) groups, which the model lacks
    if ext == u.VFIO_DMA_CC_IOMMU:
        return int(iommu is not None and
                   all(d.enforce_cache_coherency for d in iommu.domains))
    return 0
