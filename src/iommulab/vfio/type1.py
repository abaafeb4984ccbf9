"""drivers/vfio/vfio_iommu_type1.c: the container's IOMMU state behind VFIO_IOMMU_* ioctls.

Mappings (``vfio_dma``) sit in a sorted list standing for the rb-tree; each
is pinned and mapped by runs of physically contiguous pages, into every
domain of the container, so the IOMMU core can use 2M and 1G entries where
IOVA and physical alignment allow. Unmapping finds the runs again through
the first domain (``vfio_unmap_unpin``). Check order and errno follow
``vfio_dma_do_map`` / ``vfio_dma_do_unmap`` (see kernel_upper.md §1).
Lab: ``stats`` counts pins and calls; ``report()`` adds the bytes mapped at each IOPTE
size (from the domains' tables) and the pages charged to locked_vm.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

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
)
from ..iommu.domain import IommuDomain
from ..iommu.gather import IommuIotlbGather
from ..iommu.resv import ResvType
from ..mem.mm import pfn_runs
from ..prot import Prot
from . import uapi as u

if TYPE_CHECKING:
    from ..iommu.core import IommuGroup
    from ..mem.mm import I64Array, MmStruct

__all__ = ["Type1Report", "Type1Stats", "VfioDma", "VfioIommu", "type1_check_extension"]

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PAGE_MASK = ~(PAGE_SIZE - 1) & ((1 << 64) - 1)
U64_MAX = (1 << 64) - 1
VFIO_IOMMU_TLB_SYNC_MAX = 512


@dataclass
class VfioDma:
    """``struct vfio_dma``: one MAP_DMA; ``size`` grows as runs are mapped."""

    iova: int
    vaddr: int
    size: int
    prot: int
    mm: MmStruct
    lock_cap: bool
    iommu_mapped: bool = False
    vaddr_invalid: bool = False
    locked_vm: int = 0
    bitmap: bool = False  # dirty tracking has a bitmap for it

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
    """``struct vfio_iommu`` of a container opened as type1 (``v2`` for TYPE1v2)."""

    def __init__(self, v2: bool, dma_entry_limit: int, disable_hugepages: bool,
                 allow_unsafe_interrupts: bool = False) -> None:
        self.v2 = v2
        self.dma_avail = dma_entry_limit
        self.disable_hugepages = disable_hugepages
        self.allow_unsafe_interrupts = allow_unsafe_interrupts
        self.domains: list[VfioDomain] = []
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
    def map_dma(self, mm: MmStruct, flags: int, vaddr: int, iova: int, size: int, *,
                memlock_limit: int | None, lock_cap: bool) -> None:
        """``vfio_dma_do_map`` (after the ioctl's argsz/flags checks)."""
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
            self._change_owner(dma, mm, lock_cap)
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
        mm.mem.fail_nth.check("kzalloc(vfio_dma)")
        self.dma_avail -= 1
        dma = VfioDma(iova, vaddr, 0, int(prot), mm, lock_cap)
        self._link(dma)
        if not self.domains:
            dma.size = size  # pinned when a domain arrives (replay)
            return
        try:
            self._pin_map(dma, size, memlock_limit)
        except KernelError:
            self._remove_dma(dma)
            raise
        dma.iommu_mapped = True
        if self.dirty_page_tracking:
            dma.bitmap = True

    def _pin_map(self, dma: VfioDma, size: int, limit: int | None) -> None:
        """``vfio_pin_map_dma``: pin and map run by run until ``size`` is mapped; pages
        pinned but not yet mapped when a map fails are unpinned here, the mapped part
        goes with the dma."""
        npage = size >> PAGE_SHIFT
        while dma.size < size:
            runs, pfns = self._pin_runs(dma, dma.vaddr + dma.size,
                                        npage - (dma.size >> PAGE_SHIFT), limit)
            used = 0
            for start, count, rsvd in runs:
                try:
                    self._iommu_map(dma.iova + dma.size, start, count, dma.prot)
                except KernelError:
                    self._unpin(dma, pfns[used:])
                    raise
                dma.size += count << PAGE_SHIFT
                used += 0 if rsvd else count

    def _pin_runs(self, dma: VfioDma, vaddr: int, npage: int, limit: int | None
                  ) -> tuple[list[tuple[int, int, bool]], I64Array]:
        """``vfio_pin_pages_remote`` repeated: the runs of ``[vaddr, +npage)`` as
        ``(first pfn, pages, reserved)`` and the pfns pinned; RAM pages are pinned and
        charged, an MMIO PFNMAP run (no struct page) is neither. A hole ends the runs
        early; nothing pinnable at ``vaddr`` raises EFAULT, the memlock limit ENOMEM."""
        mm = dma.mm
        try:
            pfns = mm.pin_user_pages(vaddr, npage, bool(dma.prot & Prot.WRITE))
        except BadAddress:
            pfn_run = mm.follow_pfn(vaddr)
            if pfn_run is None or mm.mem.is_ram(pfn_run[0] << PAGE_SHIFT):
                raise  # a pfnmap of a valid, non-reserved page is refused too
            count = min(npage, pfn_run[1])
            return [(pfn_run[0], count, True)], np.empty(0, dtype=np.int64)
        n = len(pfns)
        if not dma.lock_cap and limit is not None and mm.locked_vm + n > limit >> PAGE_SHIFT:
            mm.unpin_user_pages(pfns)
            msg = f"RLIMIT_MEMLOCK ({limit}) exceeded"
            self.stats.log.append(msg)
            raise OutOfMemory(f"MAP_DMA: {msg}")
        mm.locked_vm += n
        dma.locked_vm += n
        self.stats.pinned_pages += n
        if self.disable_hugepages:
            return [(pfn, 1, False) for pfn in pfns.tolist()], pfns
        return [(pfn, count, False) for pfn, count in pfn_runs(pfns)], pfns

    def _iommu_map(self, iova: int, pfn: int, npage: int, prot: int) -> None:
        """``vfio_iommu_map``: the run into every domain (IOMMU_CACHE added); unwinds the
        domains already mapped on failure."""
        done: list[IommuDomain] = []
        for d in self.domains:
            try:
                d.domain.map(iova, pfn << PAGE_SHIFT, npage << PAGE_SHIFT,
                             prot | Prot.CACHE)
            except KernelError:
                for m in reversed(done):
                    m.unmap(iova, npage << PAGE_SHIFT)
                raise
            self.stats.iommu_map_calls += 1
            done.append(d.domain)

    def _change_owner(self, dma: VfioDma, mm: MmStruct, lock_cap: bool) -> None:
        """``vfio_change_dma_owner``: move the locked_vm charge to the new mm."""
        if mm is not dma.mm:
            dma.mm.locked_vm -= dma.locked_vm
            mm.locked_vm += dma.locked_vm
            dma.mm, dma.lock_cap = mm, lock_cap

    # -- unmap -----------------------------------------------------------------------------------
    def _unpin(self, dma: VfioDma, pfns: I64Array) -> None:
        if len(pfns):
            dma.mm.unpin_user_pages(pfns)
            dma.mm.locked_vm -= len(pfns)
            dma.locked_vm -= len(pfns)
            self.stats.pinned_pages -= len(pfns)

    def _unmap_unpin(self, dma: VfioDma) -> None:
        """``vfio_unmap_unpin``: other domains in one call; the first finds the runs
        through ``iova_to_phys`` contiguity, unmaps them with a sync every 512, and
        unpins what is RAM."""
        if not dma.size or not self.domains:
            return
        for d in self.domains[1:]:
            d.domain.unmap(dma.iova, dma.size)
            self.stats.iommu_unmap_calls += 1
        first = self.domains[0].domain
        gather = IommuIotlbGather()
        pending: list[tuple[int, int]] = []
        for iova, pa, length in first.leaf_runs(dma.iova, dma.size):
            first.unmap_fast(iova, length, gather)
            self.stats.iommu_unmap_calls += 1
            pending.append((pa, length))
            if len(pending) >= VFIO_IOMMU_TLB_SYNC_MAX:
                self._sync_unpin(first, gather, dma, pending)
        self._sync_unpin(first, gather, dma, pending)
        dma.iommu_mapped = False

    def _sync_unpin(self, domain: IommuDomain, gather: IommuIotlbGather, dma: VfioDma,
                    pending: list[tuple[int, int]]) -> None:
        """``vfio_sync_unpin``: one IOTLB sync, then unpin every queued RAM run."""
        domain.iotlb_sync(gather)
        self.stats.iotlb_syncs += 1
        ram = [np.arange(pa >> PAGE_SHIFT, (pa + n) >> PAGE_SHIFT, dtype=np.int64)
               for pa, n in pending if dma.mm.mem.is_ram(pa)]
        if ram:
            self._unpin(dma, np.concatenate(ram))
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
        the mm it lives in, for GET_DIRTY_BITMAP)."""
        pgsize = self.pgsize
        unmap_all = bool(flags & u.VFIO_DMA_UNMAP_FLAG_ALL)
        invalidate = bool(flags & u.VFIO_DMA_UNMAP_FLAG_VADDR)
        if iova & (pgsize - 1):
            raise InvalidArgument(f"UNMAP_DMA: iova {iova:#x} not aligned to {pgsize:#x}")
        if unmap_all:
            if iova or size:
                raise InvalidArgument("UNMAP_DMA ALL: iova and size must be 0")
            size = U64_MAX
        elif not size or size & (pgsize - 1) or iova + size - 1 > U64_MAX:
            raise InvalidArgument(f"UNMAP_DMA: bad size {size:#x} at {iova:#x}")
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
    def _update_user_bitmap(self, dirty: tuple[int, int, MmStruct], dma: VfioDma,
                            base_iova: int) -> None:
        """``update_user_bitmap``: with a non-pinned group every page of a mapped dma is
        dirty; the bits land at the user's bit offset, OR-merged into its words."""
        pgsize, user, mm = dirty
        if not (self.num_non_pinned_groups and dma.iommu_mapped):
            return
        first = (dma.iova - base_iova) // pgsize
        count = dma.size // pgsize
        lo, hi = first // 8, (first + count + 7) // 8
        bits = np.zeros((hi - lo) * 8, dtype=np.uint8)
        bits[first - lo * 8:first - lo * 8 + count] = 1
        new = np.packbits(bits, bitorder="little")
        old = np.frombuffer(mm.read(user + lo, hi - lo), dtype=np.uint8)
        mm.write(user + lo, (old | new).tobytes())

    def dirty_get_bitmap(self, iova: int, size: int, pgsize: int, user: int,
                         mm: MmStruct) -> None:
        """VFIO_IOMMU_DIRTY_PAGES GET_BITMAP after its size checks."""
        mpgsize = self.pgsize
        if pgsize != mpgsize:
            raise InvalidArgument(f"dirty bitmap pgsize {pgsize:#x} is not {mpgsize:#x}")
        if iova & (mpgsize - 1) or not size or size & (mpgsize - 1):
            raise InvalidArgument("dirty bitmap: iova or size not aligned")
        if not self.dirty_page_tracking:
            raise InvalidArgument("dirty bitmap: tracking is not started")
        self._check_no_bisection(iova, size, "dirty bitmap")
        i = self._first_node(iova, size)
        while i < len(self.dmas) and self.dmas[i].iova < iova + size:
            self._update_user_bitmap((pgsize, user, mm), self.dmas[i], iova)
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

    def set_dirty_tracking(self, start: bool) -> None:
        self.dirty_page_tracking = start
        for dma in self.dmas:
            dma.bitmap = start

    # -- groups ----------------------------------------------------------------------------------
    def attach_group(self, group: IommuGroup, domain: IommuDomain, *, msi_isolated: bool,
                     enforce_cc: bool, join: Callable[[IommuDomain], bool] | None = None
                     ) -> IommuDomain:
        """``vfio_iommu_type1_attach_group`` after the new domain is allocated and attached:
        aperture and reserved regions against existing mappings, the IOVA list, MSI
        isolation, then reuse of a compatible domain or replay into the new one.

        A domain with the same driver ops and coherency is tried with ``join``,
        which moves the group onto it (``iommu_attach_group``) and says whether
        the driver accepted; a refusal leaves the group on ``domain``. Returns
        the domain the group ends up on."""
        if self.vaddr_invalid_count:
            raise Busy("attach: mappings with invalidated vaddr exist")
        geo = domain.geometry
        if self.dmas and (self.dmas[0].iova < geo.aperture_start or
                          self.dmas[-1].end - 1 > geo.aperture_end):
            raise InvalidArgument("attach: existing mappings lie outside the new aperture")
        resv = [r for r in group.resv_regions() if r.type != ResvType.DIRECT_RELAXABLE]
        for r in resv:
            if self.find_dma(r.start, r.length) is not None:
                raise InvalidArgument(f"attach: reserved region {r!r} overlaps a mapping")
        ranges = self._aperture_ranges(geo.aperture_start, geo.aperture_end)
        for r in resv:
            ranges = _exclude(ranges, r.start, r.last)
        if not ranges:
            raise InvalidArgument("attach: no valid IOVA range remains")
        if not msi_isolated and not self.allow_unsafe_interrupts:
            raise NotPermitted("attach: no interrupt remapping or MSI isolation "
                               "(allow_unsafe_interrupts is off)")
        self.iova_list = ranges
        self.num_non_pinned_groups += 1
        for d in self.domains:  # same driver ops and coherency: try that domain
            if (type(d.domain.ops) is type(domain.ops) and d.enforce_cache_coherency ==
                    enforce_cc and (join is None or join(d.domain))):
                d.groups.append(group)
                return d.domain
        self._replay(domain)
        self.domains.append(VfioDomain(domain, [group], enforce_cc))
        self._update_pgsize_bitmap()
        return domain

    def _aperture_ranges(self, start: int, end: int) -> list[tuple[int, int]]:
        if not self.iova_list:
            return [(start, end)]
        out = [(max(lo, start), min(hi, end)) for lo, hi in self.iova_list]
        return [(lo, hi) for lo, hi in out if lo <= hi]

    def _replay(self, domain: IommuDomain) -> None:
        """``vfio_iommu_replay``: existing mappings into a new domain, by runs read from the
        first domain (or pinned now when there was none)."""
        mapped: list[tuple[int, int]] = []
        try:
            for dma in self.dmas:
                if dma.iommu_mapped:
                    src = self.domains[0].domain
                    for iova, pa, length in src.leaf_runs(dma.iova, dma.size):
                        domain.map(iova, pa, length, dma.prot | Prot.CACHE)
                        self.stats.iommu_map_calls += 1
                        mapped.append((iova, length))
                else:
                    size, dma.size = dma.size, 0
                    self.domains.append(VfioDomain(domain))  # map into the new one only
                    try:
                        self._pin_map(dma, size, None)
                    finally:
                        self.domains.pop()
                    mapped.append((dma.iova, dma.size))
        except KernelError:
            for iova, length in mapped:
                domain.unmap(iova, length)
            raise
        for dma in self.dmas:
            dma.iommu_mapped = True

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

    def detach_group(self, group: IommuGroup) -> IommuDomain | None:
        """``vfio_iommu_type1_detach_group``; returns the domain to free if it is now empty.
        The last group out unmaps and unpins everything."""
        for d in self.domains:
            if group in d.groups:
                d.groups.remove(group)
                self.num_non_pinned_groups -= 1
                if d.groups:
                    return None
                if len(self.domains) == 1:
                    for dma in list(self.dmas):
                        self._remove_dma(dma)
                    self.iova_list = []
                self.domains.remove(d)
                self._update_pgsize_bitmap()
                return d.domain
        return None

    # -- GET_INFO ----------------------------------------------------------------------------------
    def info_caps(self) -> bytes:
        """The capability chain ``vfio_iommu_type1_get_info`` builds, offsets relative to a
        buffer whose 24-byte info struct comes first."""
        caps: list[bytes] = []
        caps.append(u.CAP_MIGRATION.pack(u.VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION, 1, 0, 0, 0,
                                         self.pgsize, u.DIRTY_BITMAP_SIZE_MAX))
        caps.append(u.CAP_DMA_AVAIL.pack(u.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, 1, 0,
                                         self.dma_avail))
        if self.iova_list:
            caps.append(u.CAP_IOVA_RANGE.pack(u.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, 1, 0,
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
        """Sorted, non-overlapping mappings; the counters agree with them."""
        assert self._starts == [d.iova for d in self.dmas]
        for a, b in zip(self.dmas, self.dmas[1:], strict=False):
            assert a.end <= b.iova, f"{a} overlaps {b}"
        assert self.vaddr_invalid_count == sum(d.vaddr_invalid for d in self.dmas)
        assert self.stats.pinned_pages == sum(d.locked_vm for d in self.dmas)


def _exclude(ranges: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    """``vfio_iommu_resv_exclude`` of one region: split the ranges around ``[lo, hi]``."""
    out: list[tuple[int, int]] = []
    for a, b in ranges:
        if hi < a or lo > b:
            out.append((a, b))
            continue
        if a < lo:
            out.append((a, lo - 1))
        if hi < b:
            out.append((hi + 1, b))
    return out


def type1_check_extension(iommu: VfioIommu | None, ext: int) -> int:
    """``vfio_iommu_type1_check_extension``; ``iommu`` is None before SET_IOMMU."""
    if ext in (u.VFIO_TYPE1_IOMMU, u.VFIO_TYPE1v2_IOMMU, u.VFIO_TYPE1_NESTING_IOMMU,
               u.VFIO_UNMAP_ALL):
        return 1
    if ext == u.VFIO_UPDATE_VADDR:
        return int(iommu is not None)  # and no emulated (mdev) groups, which the model lacks
    if ext == u.VFIO_DMA_CC_IOMMU:
        return int(iommu is not None and
                   all(d.enforce_cache_coherency for d in iommu.domains))
    return 0
