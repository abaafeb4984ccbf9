"""Helpers shared by the page-table tests."""

from __future__ import annotations

from typing import Any

from iommulab.pgtable import IommuFlushOps

S1_S2 = ("ARM_64_LPAE_S1", "ARM_64_LPAE_S2")


class RecordingTlb(IommuFlushOps):
    """Records every callback; fails on a foreign cookie or a size outside the bitmap.

    This is the kernel selftest's ``dummy_tlb_ops`` with the WARN_ONs made
    into assertions.
    """

    def __init__(self, cookie: object) -> None:
        self.cookie = cookie
        self.bitmap = 0  # set once the table's restricted bitmap is known
        self.calls: list[tuple[Any, ...]] = []

    def _check(self, cookie: Any, size: int | None = None) -> None:
        assert cookie is self.cookie, "TLB callback with a foreign cookie"
        if size is not None:
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
