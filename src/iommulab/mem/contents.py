"""Sparse byte contents of physical memory: only touched 4K pages cost memory.

Each touched page is a numpy ``uint8`` array of 4096 bytes. A block handed
out as one allocation (a page table of 16K, say) is one contiguous buffer
whose 4K slices are registered page by page, so code holding the whole
buffer (the page-table walker) and code reading by physical address (a
device, the hardware table walker) see the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

__all__ = ["PAGE_BYTES", "SparseContents"]

PAGE_BYTES = 4096
_ZERO_PAGE = np.zeros(PAGE_BYTES, dtype=np.uint8)
_ZERO_PAGE.flags.writeable = False


class SparseContents:
    """pfn -> 4K byte page, created on first write."""

    def __init__(self) -> None:
        self._pages: dict[int, npt.NDArray[np.uint8]] = {}

    def __len__(self) -> int:
        return len(self._pages)

    def attach(self, pfn: int, buf: npt.NDArray[np.uint8]) -> None:
        """Back the pages from ``pfn`` with ``buf`` (a multiple of 4K bytes)."""
        if len(buf) == PAGE_BYTES:
            self._pages[pfn] = buf
            return
        for i in range(len(buf) // PAGE_BYTES):
            self._pages[pfn + i] = buf[i * PAGE_BYTES:(i + 1) * PAGE_BYTES]

    def drop(self, pfn: int, count: int) -> None:
        """Forget ``count`` pages (their frames were freed)."""
        pages = self._pages
        if count == 1:
            pages.pop(pfn, None)
            return
        if count > len(pages):  # e.g. a 1G page of which few 4K pages were written
            for key in [k for k in pages if pfn <= k < pfn + count]:
                del pages[key]
            return
        for i in range(count):
            pages.pop(pfn + i, None)

    def pfns(self) -> list[int]:
        """The pages that have been written."""
        return list(self._pages)

    def copy_pages(self, src: npt.NDArray[np.int64], dst: npt.NDArray[np.int64]) -> None:
        """Copy page ``src[i]`` to ``dst[i]`` (fresh frames, no bytes yet) for the pages
        that have bytes; the others read as zeros anyway. O(min(pages, written pages))
        Python steps: the written pages are the ones the model holds bytes for."""
        pages = self._pages
        if len(src) <= len(pages):
            pairs = [(s, d) for s, d in zip(src.tolist(), dst.tolist(), strict=True)
                     if s in pages]
        else:
            written = np.fromiter(pages, dtype=np.int64, count=len(pages))
            has = np.isin(src, written)
            pairs = list(zip(src[has].tolist(), dst[has].tolist(), strict=True))
        for s, d in pairs:
            self.page_for_write(d)[:] = pages[s]

    def page(self, pfn: int) -> npt.NDArray[np.uint8]:
        """The page's bytes, read-only zeros if never written."""
        return self._pages.get(pfn, _ZERO_PAGE)

    def written_page_lookup(self) -> Callable[[int], npt.NDArray[np.uint8] | None]:
        """Lab fast path for table walkers: the lookup of written pages by pfn (None for a
        page never written, which reads as zeros). Valid for the life of this object."""
        return self._pages.get

    def page_for_write(self, pfn: int) -> npt.NDArray[np.uint8]:
        page = self._pages.get(pfn)
        if page is None:
            page = self._pages[pfn] = np.zeros(PAGE_BYTES, dtype=np.uint8)
        return page

    def read(self, pa: int, n: int) -> bytes:
        off = pa & (PAGE_BYTES - 1)
        if off + n <= PAGE_BYTES:  # within one page (most device accesses)
            page = self._pages.get(pa >> 12)
            return bytes(n) if page is None else page[off:off + n].tobytes()
        out = bytearray(n)
        done = 0
        while done < n:
            off = (pa + done) & (PAGE_BYTES - 1)
            chunk = min(n - done, PAGE_BYTES - off)
            page = self._pages.get((pa + done) >> 12)
            if page is not None:
                out[done:done + chunk] = page[off:off + chunk].tobytes()
            done += chunk
        return bytes(out)

    def write(self, pa: int, data: bytes | bytearray | memoryview) -> None:
        src = np.frombuffer(data, dtype=np.uint8)
        done, n = 0, len(src)
        while done < n:
            off = (pa + done) & (PAGE_BYTES - 1)
            chunk = min(n - done, PAGE_BYTES - off)
            self.page_for_write((pa + done) >> 12)[off:off + chunk] = src[done:done + chunk]
            done += chunk
