"""Dirty bitmaps: ``struct iommu_dirty_bitmap`` over an IOVA bitmap.

:class:`IovaBitmap` stands for the kernel's ``struct iova_bitmap``
(drivers/iommu/iommufd/iova_bitmap.c): one bit per ``page_size`` of
``[iova, iova + length)``, laid out as the little-endian u64 words the user
buffer holds. The model keeps one byte per page internally and packs on
export, so recording a run of leaves is one vector operation.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .gather import IommuIotlbGather

__all__ = ["IommuDirtyBitmap", "IovaBitmap"]

_SLICE_LOOP_PAGES = 64  # leaves covering more pages than this are set by slices


class IovaBitmap:
    """Dirty bits of ``[iova, iova + length)`` at ``page_size`` granularity."""

    def __init__(self, iova: int, length: int, page_size: int) -> None:
        if page_size <= 0 or page_size & (page_size - 1):
            raise ValueError(f"page_size must be a power of two, not {page_size:#x}")
        if length <= 0:
            raise ValueError(f"length must be positive, not {length:#x}")
        self.iova = iova
        self.length = length
        self.page_size = page_size
        self._shift = page_size.bit_length() - 1
        self._bits = np.zeros(((length - 1) >> self._shift) + 1, dtype=np.bool_)

    def set(self, iova: int, length: int) -> None:
        """``iova_bitmap_set``: mark every page overlapping ``[iova, iova+length)``."""
        first = max(iova, self.iova) - self.iova
        last = min(iova + length, self.iova + self.length) - 1 - self.iova
        if last >= first:
            self._bits[first >> self._shift:(last >> self._shift) + 1] = True

    def set_pages(self, iovas: npt.NDArray[np.uint64], length: int) -> None:
        """``set(iova, length)`` for each of ``iovas`` (vectorised)."""
        if length >> self._shift > _SLICE_LOOP_PAGES:
            for iova in iovas.tolist():
                self.set(iova, length)
            return
        rel = iovas.astype(np.int64) - self.iova
        keep = (rel + length > 0) & (rel < self.length)
        first = np.maximum(rel[keep], 0)
        last = np.minimum(rel[keep] + length, self.length) - 1
        first >>= self._shift
        last >>= self._shift
        span = int((last - first).max(initial=0)) + 1
        if span == 1:
            self._bits[first] = True
            return
        idx = first[:, None] + np.arange(span)
        self._bits[np.where(idx <= last[:, None], idx, first[:, None])] = True

    def is_set(self, iova: int) -> bool:
        return bool(self._bits[(iova - self.iova) >> self._shift])

    @property
    def npages(self) -> int:
        return len(self._bits)

    def count(self) -> int:
        """Number of dirty pages."""
        return int(np.count_nonzero(self._bits))

    def to_bytes(self) -> bytes:
        """The bitmap as the kernel writes it: u64 words, bit i = page i."""
        packed = np.packbits(self._bits, bitorder="little")
        pad = -len(packed) % 8
        return packed.tobytes() + bytes(pad)

    def clear(self) -> None:
        self._bits[:] = False


class IommuDirtyBitmap:
    """``struct iommu_dirty_bitmap``: where dirty leaves go (bitmap and/or gather)."""

    def __init__(self, bitmap: IovaBitmap | None = None,
                 gather: IommuIotlbGather | None = None) -> None:
        self.bitmap = bitmap
        self.gather = gather

    def record(self, iova: int, length: int) -> None:
        """``iommu_dirty_bitmap_record``."""
        if self.bitmap is not None:
            self.bitmap.set(iova, length)
        if self.gather is not None:
            self.gather.add_range(iova, length)

    def record_pages(self, iovas: npt.NDArray[np.uint64], size: int) -> None:
        """``record(iova, size)`` for each of ``iovas`` (one gather widening)."""
        if not len(iovas):
            return
        if self.bitmap is not None:
            self.bitmap.set_pages(iovas, size)
        if self.gather is not None:
            self.gather.add_range(int(iovas.min()), int(iovas.max()) + size - int(iovas.min()))
