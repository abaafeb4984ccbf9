"""TLB maintenance callbacks a format calls (``struct iommu_flush_ops``)."""

from __future__ import annotations

from typing import Any

__all__ = ["IommuFlushOps"]


class IommuFlushOps:
    """The driver's ``iommu_flush_ops``; subclass and override what you need.

    The page-table code calls these with the ``cookie`` given to
    ``alloc_io_pgtable_ops``. :meth:`tlb_add_pages` is the model's batching of
    ``count`` consecutive ``tlb_add_page`` calls of the same granule (what
    ``__arm_lpae_unmap`` does in its loop); the default makes exactly those
    calls, and a driver may override it with an equivalent O(1) version.
    """

    def tlb_flush_all(self, cookie: Any) -> None:
        """Invalidate the whole context (``free_io_pgtable_ops``)."""

    def tlb_flush_walk(self, iova: int, size: int, granule: int, cookie: Any) -> None:
        """Invalidate walk caches for a range whose tables were freed."""

    def tlb_add_page(self, gather: Any, iova: int, granule: int, cookie: Any) -> None:
        """Queue invalidation of one leaf in ``gather``."""

    def tlb_add_pages(self, gather: Any, iova: int, granule: int, count: int,
                      cookie: Any) -> None:
        for i in range(count):
            self.tlb_add_page(gather, iova + i * granule, granule, cookie)
