"""A domain's DMA-API state (drivers/iommu/dma-iommu.c, Linux 7.0): cookies and flush queues.

``struct iommu_dma_cookie`` holds the IOVA domain, the MSI pages and the
flush queue (``iova_fq``) that makes lazy invalidation safe: an unmapped
IOVA waits in a per-CPU ring until a full IOTLB flush that started after it
was queued has finished, and only then goes back to the allocator.
``struct iommu_dma_msi_cookie`` is the MSI-only cookie of domains whose
IOVAs their owner manages (VFIO): a bump allocator from a base.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..clock import Clock, Timer
from ..errors import AlreadyExists, InvalidArgument
from ..iommu.domain import DomainType
from ..kernel import DEFAULT_KERNEL, LINUX_7_0, KernelVersion

if TYPE_CHECKING:
    from ..iommu.domain import IommuDomain
    from ..iova import IovaDomain
    from ..mem.fault import FailNth

__all__ = [
    "IOVA_DEFAULT_FQ_SIZE",
    "IOVA_DEFAULT_FQ_TIMEOUT",
    "IOVA_SINGLE_FQ_SIZE",
    "IOVA_SINGLE_FQ_TIMEOUT",
    "CookieType",
    "DmaCookie",
    "FqStats",
    "MsiCookie",
    "MsiPage",
    "get_msi_cookie",
]

IOVA_DEFAULT_FQ_SIZE = 256
IOVA_SINGLE_FQ_SIZE = 32768
IOVA_DEFAULT_FQ_TIMEOUT = 10  # ms
IOVA_SINGLE_FQ_TIMEOUT = 1000


class CookieType(enum.IntEnum):
    """``enum iommu_domain_cookie_type``."""

    NONE = 0
    DMA_IOVA = 1
    DMA_MSI = 2
    IOMMUFD = 3
    SVA = 4


@dataclass
class MsiPage:
    """``struct iommu_dma_msi_page``: a doorbell page and the IOVA it is mapped at."""

    iova: int
    phys: int


@dataclass
class FqStats:
    """Lab counters of one cookie's flush queue."""

    queued: int = 0  # queue_iova calls
    freed: int = 0  # entries whose IOVA went back to the allocator
    full_flushes: int = 0  # flush_iotlb_all because a ring was full
    timer_flushes: int = 0  # flush_iotlb_all from the timeout


class _Ring:
    """``struct iova_fq``: a ring of ``size`` entries, one slot always empty."""

    __slots__ = ("entries", "head", "mod_mask", "tail")

    def __init__(self, size: int) -> None:
        self.entries: list[tuple[int, int, int]] = [(0, 0, 0)] * size  # pfn, pages, counter
        self.head = self.tail = 0
        self.mod_mask = size - 1

    def __len__(self) -> int:
        return (self.tail - self.head) & self.mod_mask


class MsiCookie:
    """``struct iommu_dma_msi_cookie``."""

    type = CookieType.DMA_MSI

    def __init__(self, base: int) -> None:
        self.msi_iova = base
        self.msi_pages: list[MsiPage] = []


class DmaCookie:
    """``struct iommu_dma_cookie`` (``iommu_get_dma_cookie``): IOVA space set up later
    by ``iommu_dma_init_domain``; ``fq_domain`` is set once the flush queue works."""

    type = CookieType.DMA_IOVA

    def __init__(self, clock: Clock) -> None:
        self.iovad: IovaDomain | None = None
        self.msi_pages: list[MsiPage] = []
        self.clock = clock
        self.single_queue = False
        self.fq_size = IOVA_DEFAULT_FQ_SIZE
        self.fq_timeout = IOVA_DEFAULT_FQ_TIMEOUT
        self.rings: list[_Ring] = []
        self.fq_flush_start_cnt = 0
        self.fq_flush_finish_cnt = 0
        self.fq_timer = Timer(self._timeout)
        self.fq_timer_on = False
        self.fq_timer_cpu = 0
        self.fq_domain: IommuDomain | None = None
        self.fq_stats = FqStats()
        self.single: object = None  # lab: iommu_dma's single-granule constants

    def init_fq(self, domain: IommuDomain, ncpus: int) -> None:
        """``iommu_dma_init_fq``: counters at zero, one ring per CPU (or one big ring)."""
        if self.fq_domain is not None:
            return
        self.fq_flush_start_cnt = self.fq_flush_finish_cnt = 0
        nrings = 1 if self.single_queue else ncpus
        self.rings = [_Ring(self.fq_size) for _ in range(nrings)]
        self.fq_timer_on = False
        self.fq_domain = domain

    # -- the flush queue ----------------------------------------------------------------------
    def _ring_free(self, ring: _Ring, cpu: int) -> None:
        """``fq_ring_free_locked``: give back every entry a finished flush covers,
        into the rcache of ``cpu`` (the CPU running this code)."""
        finish = self.fq_flush_finish_cnt
        iovad = self.iovad
        assert iovad is not None
        entries, mask = ring.entries, ring.mod_mask
        idx = ring.head
        while idx != ring.tail:
            pfn, pages, counter = entries[idx]
            if counter >= finish:
                break
            iovad.free_iova_fast(pfn, pages, cpu)
            self.fq_stats.freed += 1
            idx = (idx + 1) & mask
        ring.head = idx

    def flush_iotlb(self) -> None:
        """``fq_flush_iotlb``: one flush_iotlb_all between the start and finish counters."""
        self.fq_flush_start_cnt += 1
        assert self.fq_domain is not None
        self.fq_domain.flush_iotlb_all()
        self.fq_flush_finish_cnt += 1

    def _timeout(self) -> None:
        """``fq_flush_timeout``: flush once, then reclaim every ring."""
        self.fq_timer_on = False
        self.fq_stats.timer_flushes += 1
        self.flush_iotlb()
        for ring in self.rings:  # on the CPU that armed the timer
            self._ring_free(ring, self.fq_timer_cpu)

    def queue_iova(self, pfn: int, pages: int, cpu: int) -> None:
        """``queue_iova``: park an unmapped range until a flush that covers it finishes."""
        ring = self.rings[0 if self.single_queue else cpu]
        head = ring.head
        if head != ring.tail and ring.entries[head][2] < self.fq_flush_finish_cnt:
            self._ring_free(ring, cpu)  # (it would find nothing to free otherwise)
        if ((ring.tail + 1) & ring.mod_mask) == ring.head:  # fq_full
            self.fq_stats.full_flushes += 1
            self.flush_iotlb()
            self._ring_free(ring, cpu)
        idx = ring.tail
        ring.tail = (idx + 1) & ring.mod_mask
        ring.entries[idx] = (pfn, pages, self.fq_flush_start_cnt)
        self.fq_stats.queued += 1
        if not self.fq_timer_on:
            self.fq_timer_on = True
            self.fq_timer_cpu = cpu
            clock = self.clock
            clock.mod_timer(self.fq_timer, clock.jiffies + clock.msecs_to_jiffies(self.fq_timeout))

    def queued(self) -> int:
        """Entries waiting in every ring."""
        return sum(len(r) for r in self.rings)

    def free_fq(self) -> None:
        """``iommu_dma_free_fq``: stop the timer; queued IOVAs go with the IOVA domain."""
        if self.fq_domain is None:
            return
        self.clock.del_timer(self.fq_timer)
        self.rings = []
        self.fq_domain = None


def get_msi_cookie(domain: IommuDomain, base: int, fail: FailNth | None = None,
                   kernel: KernelVersion = DEFAULT_KERNEL) -> None:
    """``iommu_get_msi_cookie``: MSI remapping for a domain whose owner manages its IOVAs.

    EINVAL unless the domain is UNMANAGED, EEXIST if it has a cookie already; then
    the cookie is allocated (with ``fail``, a fail-nth point: 6.12's ``cookie_alloc``
    of a whole ``iommu_dma_cookie``, 7.0's ``kzalloc`` of the smaller
    ``iommu_dma_msi_cookie``), ENOMEM. The owner must keep
    ``[base, base + n * PAGE_SIZE)`` free for the doorbells. The cookie goes with the
    domain (``iommu_domain_free``).
    """
    if domain.type != DomainType.UNMANAGED:
        raise InvalidArgument(f"iommu_get_msi_cookie: {domain!r} is {domain.type.name}, "
                              "not UNMANAGED")
    if domain.cookie is not None:
        raise AlreadyExists(f"iommu_get_msi_cookie: {domain!r} already has a "
                            f"{domain.cookie.type.name} cookie")
    if fail is not None:
        fail.check("kzalloc(iommu_dma_msi_cookie)" if kernel >= LINUX_7_0
                   else "kzalloc(iommu_dma_cookie)")
    domain.cookie = MsiCookie(base)
