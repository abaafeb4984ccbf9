"""An ``iommu_flush_ops`` that records every call, like the kernel selftest's dummy ops."""

from __future__ import annotations

from typing import Any

from ..pgtable import IommuFlushOps

__all__ = ["RecordingTlb"]


class RecordingTlb(IommuFlushOps):
    """Records each callback as a tuple; asserts on a foreign cookie or a bad size.

    The kernel's ``dummy_tlb_ops`` WARN when the cookie is not the one given
    to ``alloc_io_pgtable_ops`` or a walk/page flush size is not in the
    table's page sizes; these are assertions here. Set :attr:`bitmap` to the
    allocated table's ``cfg.pgsize_bitmap`` to enable the size check.
    """

    def __init__(self, cookie: object = None) -> None:
        self.cookie = cookie
        self.bitmap = 0
        self.calls: list[tuple[Any, ...]] = []

    def _check(self, cookie: Any, size: int | None = None) -> None:
        assert cookie is self.cookie, "TLB callback with a foreign cookie"
        if size is not None and self.bitmap:
            assert size & self.bitmap, f"flush size {size:#x} outside {self.bitmap:#x}"

    def tlb_flush_all(self, cookie: Any) -> None:
        self._check(cookie)
        self.calls.append(("flush_all",))

    def tlb_flush_walk(self, iova: int, size: int, granule: int, cookie: Any) -> None:
        self._check(cookie, size)
        self.calls.append(("flush_walk", iova, size, granule))

    def tlb_add_page(self, gather: Any, iova: int, granule: int, cookie: Any) -> None:
        self._check(cookie, granule)
        self.calls.append(("add_page", iova, granule))
