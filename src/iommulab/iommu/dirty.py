"""Dirty bitmaps: ``struct iommu_dirty_bitmap`` over an IOVA bitmap.

:class:`IovaBitmap` stands for the kernel's ``struct iova_bitmap``
(drivers/iommu/iommufd/iova_bitmap.c): one bit per ``page_size`` of
``[iova, iova + length)``, laid out as the little-endian u64 words the user
buffer holds. The model keeps one byte per page internally, in chunks that
exist once one of their bits is set, and packs on export, so recording a
run of leaves is a vector operation per chunk and no length sizes the bitmap.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ..kernel import LINUX_7_0, KernelVersion
from .gather import IommuIotlbGather

__all__ = ["BatchedDirtyBitmap", "CheckedIovaBitmap", "IommuDirtyBitmap", "IovaBitmap",
           "UserIovaBitmap", "user_iova_bitmap"]

I64Array = npt.NDArray[np.int64]

_SLICE_LOOP_PAGES = 64  # leaves covering more pages than this are set by slices
_I64_MAX = (1 << 63) - 1
_CHUNK_SHIFT = 15  # bits stored together: one 4K page of the user's bitmap
_CHUNK_BITS = 1 << _CHUNK_SHIFT
_DENSE_SPAN_PER_RANGE = 64  # closer ranges are marked in one pass over their span
_BITMAP_PAGE = 4096  # PAGE_SIZE of the pages iova_bitmap pins
_MAX_PINNED_PAGES = _BITMAP_PAGE // 8  # PAGE_SIZE / sizeof(struct page *)


class IovaBitmap:
    """Dirty bits of ``[iova, iova + length)`` at ``page_size`` granularity.

    Bits are stored in chunks of a user bitmap page (32768 bits) that exist only once a
    bit in them was set, so a bitmap over any length costs what its records touch, as
    the kernel's pins the user's bitmap a window at a time."""

    def __init__(self, iova: int, length: int, page_size: int) -> None:
        if page_size <= 0 or page_size & (page_size - 1):
            raise ValueError(f"page_size must be a power of two, not {page_size:#x}")
        if length <= 0:
            raise ValueError(f"length must be positive, not {length:#x}")
        self.iova = iova
        self.length = length
        self.page_size = page_size
        self._shift = page_size.bit_length() - 1
        self._nbits = ((length - 1) >> self._shift) + 1
        self._chunks: dict[int, npt.NDArray[np.bool_]] = {}  # bit >> _CHUNK_SHIFT -> bits

    def _fill(self, lo: int, hi: int, marks: npt.NDArray[np.bool_] | None = None) -> None:
        """Set bits ``[lo, hi)``, or OR ``marks`` (one per bit) into them, chunk by
        chunk."""
        while lo < hi:
            c = lo >> _CHUNK_SHIFT
            base = c << _CHUNK_SHIFT
            end = min(hi, base + _CHUNK_BITS)
            chunk = self._chunks.get(c)
            if chunk is None:
                if marks is not None and not marks[:end - lo].any():
                    marks, lo = marks[end - lo:], end
                    continue
                chunk = self._chunks[c] = np.zeros(_CHUNK_BITS, dtype=np.bool_)
            if marks is None:
                chunk[lo - base:end - base] = True
            else:
                chunk[lo - base:end - base] |= marks[:end - lo]
                marks = marks[end - lo:]
            lo = end

    def _set_bits(self, bits: I64Array) -> None:
        """Set each of ``bits``."""
        for c in np.unique(bits >> _CHUNK_SHIFT).tolist():
            chunk = self._chunks.get(c)
            if chunk is None:
                chunk = self._chunks[c] = np.zeros(_CHUNK_BITS, dtype=np.bool_)
            mine = bits[(bits >> _CHUNK_SHIFT) == c]
            chunk[mine - (c << _CHUNK_SHIFT)] = True

    def set(self, iova: int, length: int) -> None:
        """``iova_bitmap_set``: mark every page overlapping ``[iova, iova+length)``."""
        first = max(iova, self.iova) - self.iova
        last = min(iova + length, self.iova + self.length) - 1 - self.iova
        if last >= first:
            self._fill(first >> self._shift, (last >> self._shift) + 1)

    def set_run(self, iova: int, size: int, hit: npt.NDArray[np.bool_]) -> None:
        """``set(iova + i * size, size)`` for each ``hit[i]``, in O(1) numpy operations
        per chunk touched.

        Leaves aligned to the bitmap either cover whole bitmap pages (each hit
        repeated over its pages) or fall inside one page (each hit marks its
        page); anything else, and huge leaves, go leaf by leaf.
        """
        ps = self.page_size
        rel = iova - self.iova
        if not rel % ps and not size % ps and size // ps <= _SLICE_LOOP_PAGES:
            ratio = size // ps
            marks = hit if ratio == 1 else np.repeat(hit, ratio)
            first = rel // ps
            lo, hi = max(first, 0), min(first + len(marks), self._nbits)
            if lo < hi:
                self._fill(lo, hi, marks[lo - first:hi - first])
        elif not rel % size and not ps % size:
            pages = (rel + np.flatnonzero(hit) * size) // ps
            self._set_bits(pages[(pages >= 0) & (pages < self._nbits)])
        else:
            for i in np.flatnonzero(hit).tolist():
                self.set(iova + i * size, size)

    def set_ranges(self, iovas: I64Array, lengths: I64Array) -> None:
        """:meth:`set` of each ``(iovas[i], lengths[i])``, in O(pages + ranges)."""
        rel = iovas - self.iova
        first = np.maximum(rel, 0)
        last = np.minimum(rel + lengths, min(self.length, _I64_MAX)) - 1  # no IOVA is past
        keep = last >= first
        self._mark(first[keep] >> self._shift, last[keep] >> self._shift)

    def _mark(self, first: I64Array, last: I64Array) -> None:
        """Set bits ``[first[i], last[i]]`` for each ``i``. A dirty read marks once per
        table, so the cost is that of the ranges and the bits they set, never of the
        whole bitmap: ranges packed close together are summed over their span (one
        vector pass), sparse ones merged into runs (sorted, joined where they overlap or
        touch) that are set one by one."""
        if not len(first):
            return
        lo, hi = int(first.min()), int(last.max()) + 1
        if len(first) == 1:
            self._fill(lo, hi)
            return
        span = hi - lo
        if span <= _DENSE_SPAN_PER_RANGE * len(first) + _CHUNK_BITS:
            # ranges open at each bit of the span: +1 where one starts, -1 after one ends
            depth = np.bincount(first - lo, minlength=span + 1) - \
                np.bincount(last + 1 - lo, minlength=span + 1)
            self._fill(lo, hi, np.cumsum(depth[:span]) > 0)
            return
        order = np.argsort(first, kind="stable")
        first, last = first[order], last[order]
        reach = np.maximum.accumulate(last)  # the furthest bit the ranges so far set
        starts = np.concatenate(([0], np.flatnonzero(first[1:] > reach[:-1] + 1) + 1))
        ends = np.append(starts[1:], len(first)) - 1
        for run_lo, run_hi in zip(first[starts].tolist(), reach[ends].tolist(), strict=True):
            self._fill(run_lo, run_hi + 1)

    def is_set(self, iova: int) -> bool:
        bit = (iova - self.iova) >> self._shift
        chunk = self._chunks.get(bit >> _CHUNK_SHIFT)
        return chunk is not None and bool(chunk[bit & (_CHUNK_BITS - 1)])

    @property
    def npages(self) -> int:
        return self._nbits

    def count(self) -> int:
        """Number of dirty pages."""
        total = 0
        for c, chunk in self._chunks.items():
            total += int(np.count_nonzero(chunk[:max(0, self._nbits - (c << _CHUNK_SHIFT))]))
        return total

    def set_bits(self) -> I64Array:
        """The indexes of the set bits, in order (7.0's overrun past ``length`` too)."""
        parts = [np.flatnonzero(self._chunks[c]) + (c << _CHUNK_SHIFT)
                 for c in sorted(self._chunks)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def words(self) -> list[tuple[int, bytes]]:
        """The u64 words with set bits as the kernel writes them (bit i = page i, little
        endian), chunk by chunk in order: ``(index of the first word, the bytes from it to
        the chunk's last word with a set bit)``."""
        out: list[tuple[int, bytes]] = []
        for c in sorted(self._chunks):
            hit = np.flatnonzero(self._chunks[c])
            if not len(hit):
                continue
            lo_word, hi_word = int(hit[0]) >> 6, (int(hit[-1]) >> 6) + 1
            raw = np.packbits(self._chunks[c][lo_word * 64:hi_word * 64], bitorder="little")
            out.append(((c << _CHUNK_SHIFT >> 6) + lo_word, raw.tobytes()))
        return out

    def to_bytes(self) -> bytes:
        """The whole bitmap as the kernel writes it: u64 words, bit i = page i, as far
        as the last set bit when that lies past ``length`` (7.0's overrun). O(length):
        for small bitmaps; the ioctl writes :meth:`words`."""
        words = self.words()
        last = words[-1][0] + len(words[-1][1]) // 8 if words else 0
        out = bytearray(max((self._nbits + 63) >> 6, last) * 8)
        for first, raw in words:
            out[first * 8:first * 8 + len(raw)] = raw
        return bytes(out)

    def clear(self) -> None:
        self._chunks.clear()


def user_iova_bitmap(kernel: KernelVersion, iova: int, length: int, page_size: int,
                     data: int) -> CheckedIovaBitmap | UserIovaBitmap:
    """The ``struct iova_bitmap`` IOMMU_HWPT_GET_DIRTY_BITMAP fills for the user's bitmap
    at ``data``, as ``kernel``'s ``iova_bitmap_set`` records: 6.12
    :class:`CheckedIovaBitmap`, 7.0 :class:`UserIovaBitmap`."""
    if kernel >= LINUX_7_0:
        return UserIovaBitmap(iova, length, page_size, data)
    return CheckedIovaBitmap(iova, length, page_size)


class CheckedIovaBitmap(IovaBitmap):
    """Linux 6.12's ``iova_bitmap_set``: a record that does not lie inside the bitmap's
    range (or is empty) sets nothing and is remembered in ``refused``, for the ioctl to
    fail with EPROTO (``bitmap->err``)."""

    refused = False

    def set(self, iova: int, length: int) -> None:
        if not length or iova < self.iova or iova + length > self.iova + self.length:
            self.refused = True
            return
        super().set(iova, length)

    def set_ranges(self, iovas: I64Array, lengths: I64Array) -> None:
        inside = (lengths > 0) & (iovas >= self.iova) & (iovas + lengths <= self.iova + self.length)
        if not inside.all():
            self.refused = True
        super().set_ranges(iovas[inside], lengths[inside])

    def set_run(self, iova: int, size: int, hit: npt.NDArray[np.bool_]) -> None:
        starts = iova + np.flatnonzero(hit) * size
        inside = (starts >= self.iova) & (starts + size <= self.iova + self.length)
        if inside.all():
            super().set_run(iova, size, hit)
            return
        self.refused = True
        keep = np.zeros_like(hit)
        keep[np.flatnonzero(hit)[inside]] = True
        super().set_run(iova, size, keep)


class UserIovaBitmap(IovaBitmap):
    """Linux 7.0's ``iova_bitmap_set`` into the user's bitmap at ``data``.

    A record inside the range sets its bits. One that starts before the range sets
    nothing (``iova_bitmap_advance_to`` finds no such word). One that starts in a
    word of the bitmap but ends past the range is not cut: its bits go on past the
    bitmap's last one, into the user's memory, as far as the pages pinned for it
    reach: ``iova_bitmap_get`` pins from the page of the start's word, one page more
    than the remaining words need when that word is not page aligned, at most 512
    pages a window. 6.12 refuses such a record instead (EPROTO); 7.0 dropped the
    check (``refused`` stays False). :meth:`to_bytes` holds those bits too.
    """

    refused = False

    def __init__(self, iova: int, length: int, page_size: int, data: int) -> None:
        super().__init__(iova, length, page_size)
        self.data = data
        self._words = ((length - 1) >> self._shift) // 64 + 1  # mapped_total_index

    def _reach(self, word: int) -> int:
        """The first bit (counted from ``data``) the pins for a record starting in
        ``word`` cannot reach: window after window while words remain."""
        while True:
            addr = self.data + 8 * word
            npages = min(-(-(self._words - word) * 8 // _BITMAP_PAGE)
                         + (addr % _BITMAP_PAGE != 0), _MAX_PINNED_PAGES)
            end_bit = ((addr & ~(_BITMAP_PAGE - 1)) + npages * _BITMAP_PAGE - self.data) * 8
            if end_bit >> 6 >= self._words:
                return end_bit
            word = end_bit >> 6

    def set(self, iova: int, length: int) -> None:
        self.set_ranges(np.array([iova], dtype=np.int64), np.array([length], dtype=np.int64))

    def set_run(self, iova: int, size: int, hit: npt.NDArray[np.bool_]) -> None:
        starts = iova + np.flatnonzero(hit).astype(np.int64) * size
        self.set_ranges(starts, np.full(len(starts), size, dtype=np.int64))

    def set_ranges(self, iovas: I64Array, lengths: I64Array) -> None:
        rel = iovas - self.iova
        first = rel >> self._shift
        last = (rel + lengths - 1) >> self._shift
        keep = (rel >= 0) & (first >> 6 < self._words)
        first, last = first[keep], last[keep]
        over = last >= self._nbits
        if over.any():
            reach = np.array([self._reach(int(w)) for w in (first[over] >> 6).tolist()],
                             dtype=np.int64)
            last[over] = np.minimum(last[over], reach - 1)
        self._mark(first, last)


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

    def record_ranges(self, iovas: I64Array, lengths: I64Array, *, gather: bool) -> None:
        """``iova_bitmap_set`` of each range when there is a bitmap; with ``gather``, each
        added to the gather too (generic_pt's ``record_dirty``)."""
        if not len(iovas):
            return
        if self.bitmap is not None:
            self.bitmap.set_ranges(iovas, lengths)
        if gather and self.gather is not None:
            start = int(iovas.min())
            self.gather.add_range(start, int((iovas + lengths).max()) - start)

    def record_run(self, iova: int, size: int, hit: npt.NDArray[np.bool_]) -> None:
        """``record(iova + i * size, size)`` for each ``hit[i]`` (one gather widening)."""
        if self.bitmap is not None:
            self.bitmap.set_run(iova, size, hit)
        if self.gather is not None:
            pos = np.flatnonzero(hit)
            if len(pos):
                first, last = int(pos[0]), int(pos[-1])
                self.gather.add_range(iova + first * size, (last - first + 1) * size)


class BatchedDirtyBitmap(IommuDirtyBitmap):
    """:class:`IommuDirtyBitmap` that gathers :meth:`record_run`'s dirty leaves and sets
    them in the bitmap ``batch`` records at a time (one ``set_ranges``, one gather
    widening), since a dirty walk records once per table and a bitmap update per call
    costs more than the walk. Bits and gather are OR-ed and widened, so the order does
    not matter; :meth:`flush` must run before the bitmap is read (the ioctl does it
    in a ``finally``), and any other record flushes first."""

    def __init__(self, bitmap: IovaBitmap | None = None,
                 gather: IommuIotlbGather | None = None, *, batch: int = 1024) -> None:
        super().__init__(bitmap, gather)
        self._batch = batch
        self._starts: list[I64Array] = []
        self._sizes: list[int] = []

    def record_run(self, iova: int, size: int, hit: npt.NDArray[np.bool_]) -> None:
        """``record(iova + i * size, size)`` for each ``hit[i]``, buffered. O(len(hit))."""
        pos = hit.nonzero()[0]  # hit is 1-D: flatnonzero without its ravel
        if len(pos):
            self._starts.append(pos * size + iova)
            self._sizes.append(size)
            if len(self._starts) >= self._batch:
                self.flush()

    def record(self, iova: int, length: int) -> None:
        self.flush()
        super().record(iova, length)

    def record_ranges(self, iovas: I64Array, lengths: I64Array, *, gather: bool) -> None:
        self.flush()
        super().record_ranges(iovas, lengths, gather=gather)

    def flush(self) -> None:
        """Set what was buffered: one ``set_ranges`` and one gather widening."""
        if not self._starts:
            return
        starts, sizes = self._starts, self._sizes
        self._starts, self._sizes = [], []
        if self.bitmap is not None:
            iovas = np.concatenate(starts) if len(starts) > 1 else starts[0]
            lengths = np.repeat(np.array(sizes, dtype=np.int64),
                                [len(s) for s in starts])
            self.bitmap.set_ranges(iovas, lengths)
        if self.gather is not None:
            lo = min(int(s[0]) for s in starts)
            hi = max(int(s[-1]) + size for s, size in zip(starts, sizes, strict=True))
            self.gather.add_range(lo, hi - lo)
