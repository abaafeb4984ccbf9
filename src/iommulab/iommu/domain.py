"""``struct iommu_domain`` and the core's map/unmap paths (drivers/iommu/iommu.c).

The core calls a driver through :class:`DomainOps` (``iommu_domain_ops``):
``map_pages``/``unmap_pages`` in a loop driven by :func:`iommu_pgsize`, then
``iotlb_sync`` with the gathered range. A domain follows the release its driver
set in :attr:`IommuDomain.kernel`: 7.0 (with the fix of commit 6fc7e8a3b811 to
``iommu_map_nosync``: errors are returned) skips ``iotlb_sync`` for an empty
gather and gives a driver that gathers nothing the unmapped range; 6.12's
``iommu_iotlb_sync`` calls the driver whatever the gather holds.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import InvalidArgument, KernelError, NoDevice, NotSupported
from ..kernel import DEFAULT_KERNEL, LINUX_7_0, KernelVersion
from ..pgtable import IOMMU_DIRTY_NO_CLEAR
from .dirty import IommuDirtyBitmap, IovaBitmap
from .gather import IommuIotlbGather
from .pgsize import iommu_pgsize

if TYPE_CHECKING:
    from ..dma.cookie import DmaCookie, MsiCookie
    from ..pgtable import IoPgtable
    from ..pgtable.reshape import StepHook
    from ..pgtable.single import SinglePage

__all__ = [
    "DirtyOps",
    "DomainGeometry",
    "DomainOps",
    "DomainType",
    "IommuDomain",
    "PtIommuOps",
    "SgEntry",
    "SingleFast",
    "TlbStats",
]

_PAGING = 1 << 0  # __IOMMU_DOMAIN_PAGING


class DomainType(enum.IntEnum):
    """``IOMMU_DOMAIN_*`` (type bits as in include/linux/iommu.h)."""

    BLOCKED = 0
    UNMANAGED = _PAGING
    DMA = _PAGING | 1 << 1
    IDENTITY = 1 << 2
    DMA_FQ = _PAGING | 1 << 1 | 1 << 3
    SVA = 1 << 4
    PLATFORM = 1 << 5
    NESTED = 1 << 6


@dataclass
class DomainGeometry:
    """``struct iommu_domain_geometry``: the aperture a domain can map."""

    aperture_start: int = 0
    aperture_end: int = (1 << 64) - 1
    force_aperture: bool = False


@dataclass(frozen=True)
class SgEntry:
    """A scatterlist entry as ``iommu_map_sg`` reads it (``sg_phys``, ``length``)."""

    phys: int
    length: int
    bus_address: bool = False  # sg_dma_is_bus_address(): P2P, skipped


@dataclass
class TlbStats:
    """Lab counters of every invalidation a driver was asked for."""

    flush_all: int = 0  # tlb_flush_all / flush_iotlb_all
    flush_walk: int = 0  # tlb_flush_walk calls
    flush_walk_bytes: int = 0
    add_page: int = 0  # tlb_add_page calls (leaves queued for invalidation)
    iotlb_sync: int = 0  # iotlb_sync calls that reached the driver
    sync_bytes: int = 0  # sum of the synced ranges' lengths
    sync_map: int = 0  # iotlb_sync_map calls


_IDENTITY, _BLOCKED = int(DomainType.IDENTITY), int(DomainType.BLOCKED)  # plain ints: fast


class SingleFast:
    """Lab (model-only): what :meth:`IommuDomain.map`/``unmap`` need for one smallest page
    without the layered calls, fixed when :meth:`IommuDomain.enable_single_fast` found
    the domain's driver to be the plain io-pgtable one it flattens.

    ``ops`` and ``bitmap`` are the driver ops and page sizes the path was checked
    against (another object in ``domain.ops``, e.g. a test's recording wrapper, or
    other page sizes turn the path off; ``iotlb_sync_map`` was None then);
    ``count_sync`` says the driver's ``iotlb_sync`` only counts (PgtblDomainOps'),
    so it is done inline; ``mask`` is ``pgsize - 1``.
    """

    __slots__ = ("bitmap", "count_sync", "mask", "ops", "pgsize", "sp")

    def __init__(self, sp: SinglePage, ops: DomainOps, count_sync: bool, bitmap: int) -> None:
        self.sp = sp
        self.bitmap = bitmap
        self.ops = ops
        self.pgsize = sp.pgsize
        self.mask = sp.pgsize - 1
        self.count_sync = count_sync


class DomainOps(Protocol):
    """The driver side of a domain (``struct iommu_domain_ops``)."""

    def map_pages(self, domain: IommuDomain, iova: int, paddr: int, pgsize: int, pgcount: int,
                  prot: int, gfp: int) -> int:
        """Map up to ``pgcount`` pages; return bytes mapped, raise KernelError(.mapped)."""

    def unmap_pages(self, domain: IommuDomain, iova: int, pgsize: int, pgcount: int,
                    gather: IommuIotlbGather) -> int:
        """Unmap; return bytes unmapped, 0 on failure."""

    def iova_to_phys(self, domain: IommuDomain, iova: int) -> int: ...
    def iotlb_sync(self, domain: IommuDomain, gather: IommuIotlbGather) -> None: ...
    @property
    def iotlb_sync_map(self) -> Callable[[IommuDomain, int, int], None] | None:
        """Optional, as in the kernel: None when the driver has no iotlb_sync_map."""
    def flush_iotlb_all(self, domain: IommuDomain) -> None: ...
    def free(self, domain: IommuDomain) -> None: ...
    def leaf_runs(self, domain: IommuDomain, iova: int, size: int
                  ) -> list[tuple[int, int, int]]:
        """Lab: ``(iova, pa, length)`` of the mapped parts, merged while both continue."""
    def leaf_histogram(self, domain: IommuDomain) -> dict[int, int]:
        """Lab: number of leaf entries by mapping size."""


class PtIommuOps(Protocol):
    """A generic_pt table's ``pt_iommu_ops`` (Linux 7.0: VT-d, AMD, RISC-V): the core
    hands it whole ranges instead of looping ``map_pages``/``unmap_pages``."""

    def map_range(self, iova: int, paddr: int, size: int, prot: int, gfp: int) -> int:
        """Map ``size`` bytes; raise KernelError with ``mapped`` set on failure."""

    def unmap_range(self, iova: int, size: int, gather: IommuIotlbGather) -> int:
        """Unmap; return bytes unmapped (0 for a bad range)."""


class DirtyOps(Protocol):
    """``struct iommu_dirty_ops``, hung off ``domain.dirty_ops``."""

    def set_dirty_tracking(self, domain: IommuDomain, enabled: bool) -> None: ...
    def read_and_clear_dirty(self, domain: IommuDomain, iova: int, size: int, flags: int,
                             dirty: IommuDirtyBitmap) -> None: ...


class IommuDomain:
    """An IOMMU domain: an address space devices are attached to.

    ``ops`` is None for domains without page tables (blocked, identity);
    ``dirty_ops`` is set by drivers that track dirty pages; ``iommupt`` by drivers
    whose tables are generic_pt's (``iommupt_from_domain``); ``kernel`` is the release
    whose core paths the domain follows (its driver's). Lab attributes:
    ``pgtbl`` is the driver's io-pgtable when it uses one, and
    ``max_bbm_level`` the break-before-make level the hardware supports
    (split/merge at a higher level is refused).
    """

    def __init__(self, type: DomainType, ops: DomainOps | None = None, pgsize_bitmap: int = 0,
                 geometry: DomainGeometry | None = None, *,
                 kernel: KernelVersion = DEFAULT_KERNEL) -> None:
        self.type = type
        self.kernel = kernel
        self.ops = ops
        self.pgsize_bitmap = pgsize_bitmap
        self.geometry = geometry or DomainGeometry()
        self.tlb_stats = TlbStats()
        self.warnings: Counter[str] = Counter()  # WARN()/pr_err() the kernel would print
        self.dirty_ops: DirtyOps | None = None
        self.iommupt: PtIommuOps | None = None
        self.pgtbl: IoPgtable | None = None
        self.max_bbm_level = 0
        self.dirty_granule: int | None = None  # lab: granule blocks were split to, if any
        self.cookie: DmaCookie | MsiCookie | None = None  # iova_cookie / msi_cookie
        # Linux 7.0: an iommufd HWPT's domain (cookie_type IOMMU_COOKIE_IOMMUFD) answers
        # iommu_dma_prepare_msi itself: iommufd_sw_msi(dev, msi_addr) -> the MSI address
        self.iommufd_sw_msi: Callable[[Any, int], int] | None = None
        # iopf_handler (with fault_data bound in): who takes the I/O page fault groups
        # of devices attached to this domain (iommufd: a HWPT's fault queue)
        self.iopf_handler: Callable[[Any], None] | None = None
        self._one: SingleFast | None = None  # lab: see enable_single_fast

    def __repr__(self) -> str:
        return f"<IommuDomain {self.type.name} pgsize_bitmap={self.pgsize_bitmap:#x}>"

    @property
    def kernel(self) -> KernelVersion:
        """The release whose core paths (gather, iotlb_sync) this domain follows."""
        return self._kernel

    @kernel.setter
    def kernel(self, kernel: KernelVersion) -> None:
        self._kernel = kernel
        self._sync_empty_gathers = kernel < LINUX_7_0  # read on the unmap fast path

    # -- map ------------------------------------------------------------------------------
    def map(self, iova: int, paddr: int, size: int, prot: int, gfp: int = 0) -> None:
        """``iommu_map``: map ``size`` bytes; on any error nothing stays mapped.

        Raises EINVAL (not a paging domain, or iova/paddr/size not aligned to
        the smallest page size), ENODEV (no map op), or the driver's errno
        (EEXIST, ENOMEM, ERANGE, …). O(pages / entries per table) calls.
        One smallest page takes the flattened path when it is on (enable_single_fast).
        """
        one = self._one
        if one is not None and size == one.pgsize and self.ops is one.ops \
                and self.pgsize_bitmap == one.bitmap \
                and not (iova | paddr) & one.mask and one.sp.map_one(iova, paddr, prot):
            return  # the layered path below, to the same entry and counters
        self.map_nosync(iova, paddr, size, prot, gfp)
        if self.ops is not None and self.ops.iotlb_sync_map is not None:
            try:
                self.ops.iotlb_sync_map(self, iova, size)
            except KernelError:
                self.unmap(iova, size)
                raise

    def map_nosync(self, iova: int, paddr: int, size: int, prot: int, gfp: int = 0) -> None:
        """``iommu_map_nosync`` / ``__iommu_map_domain_pgtbl``: map and roll back on error.

        A generic_pt domain gets the whole range in one ``map_range`` (no paging-type,
        alignment or ``iommu_pgsize`` step in the core), and what it mapped before
        failing is unmapped again."""
        pt = self.iommupt
        if pt is not None:
            try:
                pt.map_range(iova, paddr, size, prot, gfp)
            except KernelError as err:
                self.unmap(iova, err.mapped)
                raise
            return
        if not self.type & _PAGING:
            raise InvalidArgument(f"iommu_map: {self.type.name} domain is not a paging domain")
        if self.ops is None or not self.pgsize_bitmap:
            self.warnings["iommu_map: no map_pages or empty pgsize_bitmap"] += 1
            raise NoDevice("iommu_map: domain has no map_pages op or no page sizes")
        min_pagesz = self.pgsize_bitmap & -self.pgsize_bitmap
        if (iova | paddr | size) & (min_pagesz - 1):
            self.warnings["iommu_map: unaligned"] += 1
            raise InvalidArgument(f"unaligned: iova {iova:#x} pa {paddr:#x} size {size:#x} "
                                  f"min_pagesz {min_pagesz:#x}")
        ops = self.ops
        if size == min_pagesz:  # what iommu_pgsize() gives for one smallest page, sooner
            ops.map_pages(self, iova, paddr, size, 1, prot, gfp)  # nothing stays on error
            return
        orig_iova, orig_size = iova, size
        while size:
            pgsize, count = iommu_pgsize(self.pgsize_bitmap, iova, paddr, size)
            try:
                mapped = ops.map_pages(self, iova, paddr, pgsize, count, prot, gfp)
            except KernelError as err:
                size -= err.mapped  # some pages may be mapped even on error
                self.unmap(orig_iova, orig_size - size)
                raise
            size -= mapped
            iova += mapped
            paddr += mapped

    def sync_map(self, iova: int, size: int) -> None:
        """``iommu_sync_map``: the driver's ``iotlb_sync_map``, if it has one."""
        if self.ops is not None and self.ops.iotlb_sync_map is not None:
            self.ops.iotlb_sync_map(self, iova, size)

    def map_sg(self, iova: int, sg: Sequence[SgEntry], prot: int, gfp: int = 0) -> int:
        """``iommu_map_sg``: map physically contiguous runs of ``sg`` back to back at ``iova``.

        Returns the bytes mapped; on error unmaps everything it mapped and
        raises. Bus-address (P2P) entries are skipped. Follows the kernel's
        loop exactly, including its final pass over the last entry.
        """
        nents = len(sg)
        if not nents:
            self.sync_map(iova, 0)
            return 0
        length = mapped = start = 0
        cur = i = 0
        try:
            while i <= nents:
                s = sg[cur]
                if length and s.phys != start + length:
                    self.map_nosync(iova + mapped, start, length, prot, gfp)
                    mapped += length
                    length = 0
                if not s.bus_address:
                    if length:
                        length += s.length
                    else:
                        length, start = s.length, s.phys
                i += 1
                if i < nents:
                    cur += 1
            self.sync_map(iova, mapped)
        except KernelError:
            self.unmap(iova, mapped)
            raise
        return mapped

    # -- unmap --------------------------------------------------------------------------------
    def unmap(self, iova: int, size: int) -> int:
        """``iommu_unmap``: bytes unmapped (may exceed ``size``; ``iova + ret`` is where it
        stopped), then one IOTLB sync of the gathered range. Never raises for bad input.
        One smallest page takes the flattened path when it is on (enable_single_fast)."""
        one = self._one
        if one is not None and size == one.pgsize and self.ops is one.ops \
                and self.pgsize_bitmap == one.bitmap \
                and not iova & one.mask and one.sp.unmap_one(iova):
            # what the layered path does after clearing the entry: the driver's
            # tlb_add_page into a fresh gather (io_pgtable_tlb_add_page), then
            # iommu_iotlb_sync of that one page
            stats = self.tlb_stats
            stats.add_page += 1
            if one.count_sync:
                stats.iotlb_sync += 1
                stats.sync_bytes += size
            else:
                one.ops.iotlb_sync(self, IommuIotlbGather(iova, iova + size - 1, size))
            return size
        gather = IommuIotlbGather()
        unmapped = self.unmap_fast(iova, size, gather)
        self.iotlb_sync(gather)
        return unmapped

    def unmap_fast(self, iova: int, size: int, gather: IommuIotlbGather) -> int:
        """``iommu_unmap_fast`` / ``__iommu_unmap_domain_pgtbl``: unmap without syncing
        (a generic_pt domain's ``unmap_range`` takes the whole range)."""
        one = self._one
        if one is not None and size == one.pgsize and self.ops is one.ops \
                and self.pgsize_bitmap == one.bitmap \
                and not iova & one.mask and one.sp.unmap_one(iova):
            if not gather.queued:  # as io-pgtable does after clearing the entry
                tlb = one.sp.pgtbl.cfg.tlb
                assert tlb is not None
                tlb.tlb_add_pages(gather, iova, size, 1, self)
            return size
        pt = self.iommupt
        if pt is not None:
            return pt.unmap_range(iova, size, gather)
        if not self.type & _PAGING:
            return 0
        if self.ops is None or not self.pgsize_bitmap:
            self.warnings["iommu_unmap: no unmap_pages or empty pgsize_bitmap"] += 1
            return 0
        min_pagesz = self.pgsize_bitmap & -self.pgsize_bitmap
        if (iova | size) & (min_pagesz - 1):
            self.warnings["iommu_unmap: unaligned"] += 1
            return 0
        ops = self.ops
        gather_for_driver = not self._sync_empty_gathers
        if size == min_pagesz:  # one smallest page: the loop below, once
            done = ops.unmap_pages(self, iova, size, 1, gather)
            if done and gather.start >= gather.end and not gather.queued and gather_for_driver:
                gather.add_range(iova, size)  # the driver did not gather
            return done
        unmapped = 0
        while unmapped < size:
            pgsize, count = iommu_pgsize(self.pgsize_bitmap, iova, iova, size - unmapped)
            done = ops.unmap_pages(self, iova, pgsize, count, gather)
            if not done:
                break
            if gather.empty and gather_for_driver:  # the driver did not gather: sync anyway
                gather.add_range(iova, size)
            iova += done
            unmapped += done
        return unmapped

    def iotlb_sync(self, gather: IommuIotlbGather) -> None:
        """``iommu_iotlb_sync``: the driver's iotlb_sync, then reset the gather. 7.0 skips an
        empty gather (``likely(iotlb_gather->start < iotlb_gather->end)``); 6.12 calls the
        driver whatever the gather holds."""
        if self.ops is not None and (not gather.empty or self._sync_empty_gathers):
            self.ops.iotlb_sync(self, gather)
        gather.init()

    def flush_iotlb_all(self) -> None:
        """``iommu_flush_iotlb_all``."""
        if self.ops is not None:
            self.ops.flush_iotlb_all(self)

    # -- dirty tracking -------------------------------------------------------------------------
    def set_dirty_tracking(self, enabled: bool, *, granule: int | None = None,
                           bbm_level: int | None = None, on_step: StepHook | None = None
                           ) -> int:
        """``iommu_dirty_ops.set_dirty_tracking`` (EOPNOTSUPP without dirty ops).

        Lab: with ``granule`` on enable, every block of the aperture is split
        into entries of that size first; the next disable merges exactly those
        runs back (pages mapped as pages stay pages). ``bbm_level`` defaults to
        the highest the hardware supports (``max_bbm_level``). Returns the
        number of blocks split or merged (0 for the upstream behaviour).
        """
        if self.dirty_ops is None:
            raise NotSupported(f"set_dirty_tracking: {self!r} has no dirty tracking ops")
        reshape = granule is not None if enabled else self.dirty_granule is not None
        level = self.max_bbm_level if bbm_level is None else bbm_level
        if reshape:
            if self.pgtbl is None:
                raise NotSupported("set_dirty_tracking: split/merge needs an io-pgtable domain")
            if level > self.max_bbm_level:
                raise NotSupported(f"set_dirty_tracking: BBM level {level} is above the "
                                   f"hardware's {self.max_bbm_level}")
        self.dirty_ops.set_dirty_tracking(self, enabled)
        if not reshape:
            return 0
        assert self.pgtbl is not None
        start = self.geometry.aperture_start
        size = self.geometry.aperture_end - start + 1
        if enabled:
            changed = self.pgtbl.split_blocks(start, size, granule, bbm_level=level,
                                              on_step=on_step)
            self.dirty_granule = granule
        else:
            changed = self.pgtbl.merge_pages(start, size, bbm_level=level, on_step=on_step,
                                             split_only=True)
            self.dirty_granule = None
        return changed

    def read_and_clear_dirty(self, iova: int, size: int, flags: int = 0,
                             bitmap: IovaBitmap | None = None) -> IovaBitmap:
        """Read dirty leaves into ``bitmap`` and clear them, as iommufd does.

        ``iommu_read_and_clear_dirty``: the driver's ``read_and_clear_dirty``
        records into a bitmap and a gather; then ``iommu_iotlb_sync`` unless
        IOMMU_DIRTY_NO_CLEAR. Without ``bitmap`` one at the smallest page
        size is made. Returns the bitmap.
        """
        if self.dirty_ops is None:
            raise NotSupported(f"read_and_clear_dirty: {self!r} has no dirty tracking ops")
        if bitmap is None:
            bitmap = IovaBitmap(iova, size, self.pgsize_bitmap & -self.pgsize_bitmap)
        gather = IommuIotlbGather()
        self.dirty_ops.read_and_clear_dirty(self, iova, size, flags,
                                            IommuDirtyBitmap(bitmap, gather))
        if not flags & IOMMU_DIRTY_NO_CLEAR:
            self.iotlb_sync(gather)
        return bitmap

    # -- lookups / teardown -----------------------------------------------------------------
    def iova_to_phys(self, iova: int) -> int:
        """``iommu_iova_to_phys``: identity returns iova, blocked 0, else the driver's walk."""
        type = self.type
        if type == _IDENTITY:
            return iova
        if type == _BLOCKED or self.ops is None:
            return 0
        return self.ops.iova_to_phys(self, iova)

    def leaf_runs(self, iova: int, size: int) -> list[tuple[int, int, int]]:
        """Lab: the runs ``vfio_unmap_unpin`` finds by probing ``iova_to_phys`` page by
        page, as ``(iova, pa, length)``, found by table or by slot range instead."""
        return [] if self.ops is None else self.ops.leaf_runs(self, iova, size)

    def leaf_histogram(self) -> dict[int, int]:
        """Lab: number of leaf entries (IOPTEs) by mapping size."""
        return {} if self.ops is None else self.ops.leaf_histogram(self)

    def enable_single_fast(self) -> bool:
        """Lab (model-only): let :meth:`map`, :meth:`unmap` and :meth:`unmap_fast` of one
        smallest page skip the layered calls (``iommu_map`` -> ``__iommu_map`` ->
        ``iommu_pgsize`` -> ``map_pages`` -> ``arm_lpae_map_pages`` …) when the page
        table has the leaf table and the entry is free (map) or a page (unmap).

        On only for a paging domain whose driver is :class:`~.pgtbl_domain.PgtblDomainOps`
        (or a subclass that keeps its map/unmap and flush callbacks) over a coherent
        io-pgtable with no ``iotlb_sync_map``; otherwise, or after :meth:`free`, the
        layered path runs. Gives the same entries, gathers, syncs and counters;
        returns whether it is on.
        """
        from .pgtbl_domain import single_fast_for

        self._one = single_fast_for(self)
        return self._one is not None

    def disable_single_fast(self) -> None:
        """Lab: every call takes the layered path (tests compare the two)."""
        self._one = None

    def free(self) -> None:
        """``iommu_domain_free``: its DMA or MSI cookie goes with it
        (``iommu_put_dma_cookie``), then the driver frees it."""
        self._one = None
        self.cookie = None
        if self.ops is not None:
            self.ops.free(self)
            self.ops = None
