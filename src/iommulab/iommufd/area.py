"""``struct iopt_area``: one mapped IOVA range over part of an ``iopt_pages``
(drivers/iommu/iommufd/io_pagetable.h).

An area covers the byte range ``[iova, last]`` of the IOAS; its bytes are
the bytes ``[start_byte, start_byte + length)`` of its pages, where
``start_byte = index * PAGE_SIZE + page_offset``. The helpers are the
header's inline functions of the same names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..sizes import PAGE_SIZE

if TYPE_CHECKING:
    from ..iommu.domain import IommuDomain
    from .pages import IoptPages

__all__ = ["IoptArea"]


@dataclass(eq=False)
class IoptArea:
    """``struct iopt_area``; ``pages`` is None while the area is being set up or torn down."""

    iova: int
    last: int
    pages: IoptPages | None
    start_byte: int  # offset of the first byte in ``pages``
    prot: int  # IOMMU_READ/WRITE/CACHE
    storage_domain: IommuDomain | None = None
    num_accesses: int = 0
    prevent_access: bool = False
    num_locks: int = 0

    @property
    def length(self) -> int:
        """``iopt_area_length``."""
        return self.last - self.iova + 1

    @property
    def page_offset(self) -> int:
        return self.start_byte % PAGE_SIZE

    @property
    def index(self) -> int:
        """``iopt_area_index``: the first page of ``pages`` the area uses."""
        return self.start_byte // PAGE_SIZE

    @property
    def last_index(self) -> int:
        """``iopt_area_last_index``."""
        return (self.start_byte + self.length - 1) // PAGE_SIZE

    def start_byte_of(self, iova: int) -> int:
        """``iopt_area_start_byte``: the byte of ``pages`` at ``iova``."""
        return iova - self.iova + self.start_byte

    def iova_to_index(self, iova: int) -> int:
        """``iopt_area_iova_to_index``."""
        return self.start_byte_of(iova) // PAGE_SIZE

    def index_to_iova(self, index: int) -> int:
        """``iopt_area_index_to_iova``: the IOVA of the first area byte in page ``index``."""
        if index == self.index:
            return self.iova
        return self.iova - self.page_offset + (index - self.index) * PAGE_SIZE
