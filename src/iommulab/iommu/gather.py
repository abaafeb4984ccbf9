"""``struct iommu_iotlb_gather`` and its helpers (include/linux/iommu.h, Linux 7.0)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["ULONG_MAX", "IommuIotlbGather", "SyncsGather", "iommu_iotlb_gather_add_page"]

ULONG_MAX = (1 << 64) - 1


@dataclass(slots=True)
class IommuIotlbGather:
    """Range of a pending IOTLB flush: ``[start, end]`` inclusive, flush granule ``pgsize``.

    ``queued`` is set by the DMA layer in flush-queue mode, where the page
    table code does not add pages because a full flush follows later.
    """

    start: int = ULONG_MAX
    end: int = 0
    pgsize: int = 0
    queued: bool = False

    def init(self) -> None:
        """``iommu_iotlb_gather_init``."""
        self.start, self.end, self.pgsize, self.queued = ULONG_MAX, 0, 0, False

    def add_range(self, iova: int, size: int) -> None:
        """``iommu_iotlb_gather_add_range``: widen the range to cover ``[iova, iova+size)``."""
        end = (iova + size - 1) & ULONG_MAX
        if self.start > iova:
            self.start = iova
        if self.end < end:
            self.end = end

    def is_disjoint(self, iova: int, size: int) -> bool:
        """``iommu_iotlb_gather_is_disjoint``: neither overlapping nor adjacent."""
        end = iova + size - 1
        return self.end != 0 and (end + 1 < self.start or iova > self.end + 1)

    @property
    def empty(self) -> bool:
        """What ``iommu_iotlb_sync`` tests (``start < end`` is non-empty)."""
        return not self.start < self.end


class SyncsGather(Protocol):
    def iotlb_sync(self, gather: IommuIotlbGather) -> None: ...


def iommu_iotlb_gather_add_page(domain: SyncsGather, gather: IommuIotlbGather, iova: int,
                                size: int) -> None:
    """Add one page, syncing first if it has another granule or is disjoint."""
    if (gather.pgsize and gather.pgsize != size) or gather.is_disjoint(iova, size):
        domain.iotlb_sync(gather)
    gather.pgsize = size
    gather.add_range(iova, size)
