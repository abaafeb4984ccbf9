"""The CPU data cache as non-snooping DMA sees it (lab model, not kernel code).

Only what a device that does not snoop can observe is modelled. The machine's
contents are what the CPU sees. For a page the CPU has written since it was
last flushed or evicted, the cache keeps a separate copy of what DRAM holds
and a 64-bit mask of its ``dirty`` 64-byte lines: lines the CPU wrote that
DRAM does not have yet. A device read that does not snoop gets DRAM's old
bytes there: a *stale read*. A non-snooping device write goes to the DRAM
copy under the CPU's cached one: the CPU still sees the old line until it is
invalidated, and a dirty line written back over it loses the device's data.

``flush`` is ``clflush`` over a range (``clflush_cache_range``,
``arch_clean_nonsnoop_dma``): dirty lines are written back, all lines
invalidated. The cache holds ``capacity`` bytes of pages and evicts the
oldest first, writing back as a flush does. Reads by the CPU do not
allocate lines, so a page the CPU only read is never cached here.

Every page a non-snooping device wrote since its last flush is remembered
(evictions do not forget it: the kernel cannot know about them); unpinning
such a page is counted as an *unflushed unpin*, the page's next owner could
read the stale lines or lose data to a late write-back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ..sizes import parse_size
from .contents import PAGE_BYTES

if TYPE_CHECKING:
    from .physmem import PhysMem

__all__ = ["CacheStats", "CpuCache"]

LINE = 64
_LINES = PAGE_BYTES // LINE
_SHIFT = 12


@dataclass
class CacheStats:
    """What the cache saw; ``events`` keeps the first problems as text for reports."""

    stale_reads: int = 0  # device reads that returned at least one stale line
    stale_lines: int = 0
    unflushed_unpins: int = 0  # pages
    flushes: int = 0  # flush calls
    flushed_pages: int = 0
    writebacks: int = 0  # lines written back by flushes and evictions
    evictions: int = 0  # pages
    events: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.events) < 20:
            self.events.append(text)


def _mask(off: int, n: int) -> int:
    """The lines of a page touched by ``n`` bytes from offset ``off``."""
    first, last = off // LINE, (off + n - 1) // LINE
    return ((1 << (last - first + 1)) - 1) << first


def _bytes_of(mask: int) -> npt.NDArray[np.bool_]:
    bits = np.unpackbits(np.array([mask], dtype="<u8").view(np.uint8), bitorder="little")
    return np.repeat(bits.astype(bool), LINE)


def _pieces(pa: int, n: int) -> list[tuple[int, int, int, int]]:
    """``(pfn, offset in page, offset in data, length)`` for each page of a range."""
    out, done = [], 0
    while done < n:
        off = (pa + done) & (PAGE_BYTES - 1)
        k = min(n - done, PAGE_BYTES - off)
        out.append(((pa + done) >> _SHIFT, off, done, k))
        done += k
    return out


class CpuCache:
    """Per-page cache state over ``mem``'s RAM (see the module docstring)."""

    def __init__(self, mem: PhysMem, capacity: int | str = "32M") -> None:
        self.mem = mem
        self.capacity_pages = max(1, parse_size(capacity) // PAGE_BYTES)
        self.dram: dict[int, npt.NDArray[np.uint8]] = {}  # oldest first
        self.dirty: dict[int, int] = {}
        top = max((r.end for r in mem.regions if r.kind == "ram"), default=0)
        self.written = np.zeros(top >> _SHIFT, dtype=np.bool_)  # by non-snooping DMA
        self.stats = CacheStats()

    # -- the CPU --------------------------------------------------------------------------
    def cpu_write(self, pa: int, data: bytes | bytearray | memoryview) -> None:
        """A store by the CPU: the lines become dirty in the cache (the caller's process
        write lands in the CPU view)."""
        view = memoryview(data).cast("B")
        pieces = _pieces(pa, len(view))
        if len(pieces) > self.capacity_pages:  # the head would be written back at once
            head, pieces = pieces[:-self.capacity_pages], pieces[-self.capacity_pages:]
            for pfn, _, _, _ in head:
                self._evict(pfn)
            last = head[-1]
            self.mem.contents.write(pa, view[:last[2] + last[3]])
        for pfn, off, at, k in pieces:
            self._allocate(pfn)
            self.dirty[pfn] |= _mask(off, k)  # a device's bytes there go at write-back
            self.mem.contents.page_for_write(pfn)[off:off + k] = np.frombuffer(
                view[at:at + k], dtype=np.uint8)

    def _allocate(self, pfn: int) -> None:
        if pfn in self.dram:
            return
        self.dram[pfn] = self.mem.contents.page(pfn).copy()
        self.dirty[pfn] = 0
        while len(self.dram) > self.capacity_pages:
            self._evict(next(iter(self.dram)))
            self.stats.evictions += 1

    def _evict(self, pfn: int) -> None:
        """Write back the dirty lines, drop the rest: the CPU view becomes DRAM."""
        dram = self.dram.pop(pfn, None)
        if dram is None:
            return
        dirty = self.dirty.pop(pfn)
        page = self.mem.contents.page_for_write(pfn)
        keep = _bytes_of(dirty)
        page[~keep] = dram[~keep]  # including what a device wrote under clean lines
        self.stats.writebacks += bin(dirty).count("1")

    # -- devices --------------------------------------------------------------------------
    def device_read(self, runs: list[tuple[int, int]], snoop: bool, who: str) -> bytes:
        """What one device read of these physical runs returns: the CPU view when it
        snoops, DRAM otherwise."""
        if snoop or not self.dram:
            return b"".join(self.mem.read(pa, n) for pa, n in runs)
        parts, stale = [], 0
        for pa, n in runs:
            out = bytearray(self.mem.read(pa, n))
            for pfn, off, at, k in _pieces(pa, n):
                dram = self.dram.get(pfn)
                if dram is not None:
                    out[at:at + k] = dram[off:off + k].tobytes()
                    stale += bin(self.dirty[pfn] & _mask(off, k)).count("1")
            parts.append(bytes(out))
        if stale:
            self.stats.stale_reads += 1
            self.stats.stale_lines += stale
            self.stats.note(f"{who}: stale read of {stale} line(s) at {runs[0][0]:#x}")
        return b"".join(parts)

    def device_write(self, pa: int, data: bytes | bytearray | memoryview, snoop: bool,
                     source: int) -> None:
        """A device store: snooped, it replaces the lines in the cache too; not snooped,
        it goes to DRAM under whatever the CPU has cached."""
        view = memoryview(data).cast("B")
        if not self.mem.is_ram(pa):
            self.mem.write(pa, view, source=source)
            return
        if not snoop:
            first, last = pa >> _SHIFT, (pa + len(view) - 1) >> _SHIFT
            self.written[first:last + 1] = True
        if not self.dram:
            self.mem.write(pa, view, source=source)
            return
        for pfn, off, at, k in _pieces(pa, len(view)):
            chunk = np.frombuffer(view[at:at + k], dtype=np.uint8)
            dram = self.dram.get(pfn)
            if dram is None:
                self.mem.contents.page_for_write(pfn)[off:off + k] = chunk
                continue
            if snoop:  # the dirty lines are written back, then the device's bytes merge
                lines = _mask(off, k)
                page = self.mem.contents.page_for_write(pfn)
                page[off:off + k] = chunk
                span = _bytes_of(lines)
                dram[span] = page[span]
                self.dirty[pfn] &= ~lines
            else:
                dram[off:off + k] = chunk

    # -- flushes and unpins ---------------------------------------------------------------
    def flush_pfns(self, pfns: npt.NDArray[np.int64]) -> None:
        """``clflush`` every line of these pages: write back, invalidate, forget the
        device writes."""
        self.stats.flushes += 1
        self.stats.flushed_pages += len(pfns)
        pfns = pfns[pfns < len(self.written)]
        self.written[pfns] = False
        if not self.dram or not len(pfns):
            return
        cached = np.fromiter(self.dram, dtype=np.int64, count=len(self.dram))
        for pfn in cached[np.isin(cached, pfns)].tolist():
            self._evict(pfn)

    def unpinned(self, pfns: npt.NDArray[np.int64]) -> None:
        """Pages whose pin is dropped: those a non-snooping device wrote since their last
        flush are counted."""
        pfns = pfns[pfns < len(self.written)]
        bad = pfns[self.written[pfns]]
        if len(bad):
            self.stats.unflushed_unpins += len(bad)
            self.stats.note(f"unpin of {len(bad)} page(s) with unflushed device writes, "
                            f"first pfn {int(bad[0]):#x}")
            self.written[bad] = False

    def _check(self) -> None:
        assert len(self.dram) <= self.capacity_pages
        assert self.dram.keys() == self.dirty.keys()
