"""Per-page state of a long run of pages, kept only where pages have been: the PTEs of a
VMA, the page cache of a file.

A mapping or a file may be far longer than the memory it ever holds (a 32 TiB
``mmap`` of which one page is touched, a memfd truncated to 1 PiB). The kernel's page
tables and xarray only hold what was populated; so does this: the state lives in
*extents*, dense arrays over runs of 512-page granules (a PTE table's worth,
``PTRS_PER_PTE``), made when a page of a granule is first set and merged with the
extents they touch. Host memory is therefore in proportion to the granules ever
populated, never to the length. Reads and views of a range are dense over that range,
so callers only ask for ranges bounded by what is present or about to be allocated;
:meth:`SparsePages.present` and :meth:`SparsePages.pieces` walk only the extents.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["GRANULE", "ROOM", "Extent", "SparsePages"]

#: pages per granule: the pages one PTE table maps (x86_64 and arm64 with 4K pages)
GRANULE = 512
#: the room, in multiples of itself, an extent that grows keeps on the side it grew on:
#: copies of a mapping faulted in a batch at a time add up to a third of its size
ROOM = 3
I64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass
class Extent:
    """Pages ``[lo, lo + len(pfns))``: the pfn of each (-1: none) and, where kept, its
    ``PageAnonExclusive`` flag, as views into the storage (writes go through)."""

    lo: int
    pfns: I64Array
    excl: BoolArray | None

    @property
    def hi(self) -> int:
        return self.lo + len(self.pfns)

    def part(self, lo: int, hi: int) -> Extent:
        """Views of pages ``[lo, hi)``, which lie inside this extent."""
        a, b = lo - self.lo, hi - self.lo
        return Extent(lo, self.pfns[a:b], None if self.excl is None else self.excl[a:b])


class _Run:
    """One extent's storage: buffers over pages ``[base, base + len(buf))`` of which
    ``[lo, hi)`` are in use; the rest is room to grow into (left uninitialised, so it
    costs the host nothing until used), so faults that walk up or down a mapping grow
    it in amortised O(1) per page instead of copying it each time."""

    def __init__(self, base: int, size: int, excl: bool) -> None:
        self.base = base
        self.buf = np.empty(size, dtype=np.int64)
        self.ebuf = np.empty(size, dtype=np.bool_) if excl else None
        self.lo = self.hi = base

    def view(self, lo: int, hi: int) -> Extent:
        a, b = lo - self.base, hi - self.base
        return Extent(lo, self.buf[a:b], None if self.ebuf is None else self.ebuf[a:b])

    @property
    def extent(self) -> Extent:
        return self.view(self.lo, self.hi)

    def fits(self, lo: int, hi: int) -> bool:
        return self.base <= lo and hi <= self.base + len(self.buf)

    def extend(self, lo: int, hi: int) -> None:
        """Use ``[lo, hi)`` (inside the room), the pages new to it without a page."""
        for a, b in ((lo, self.lo), (self.hi, hi)):
            if a < b:
                part = self.view(a, b)
                part.pfns[:] = -1
                if part.excl is not None:
                    part.excl[:] = False
        self.lo, self.hi = lo, hi


class SparsePages:
    """``npages`` pages, each with a pfn (-1 where there is none) and, with ``excl``, a
    ``PageAnonExclusive`` flag (False where there is no page). ``phase`` is the granule
    position of page 0 (a VMA's first virtual page number), so granules follow the
    address space's own 2M boundaries."""

    def __init__(self, npages: int, *, excl: bool = False, phase: int = 0) -> None:
        self.npages = npages
        self.with_excl = excl
        self.phase = phase % GRANULE
        self._los: list[int] = []
        self._runs: list[_Run] = []

    # -- reading -----------------------------------------------------------------------------
    def pieces(self, lo: int, hi: int) -> list[Extent]:
        """Views of the kept pages of ``[lo, hi)``, extent by extent in order (pages in no
        extent have no page). O(log extents + extents met); nothing is copied."""
        i = max(0, bisect.bisect_right(self._los, lo) - 1)
        out: list[Extent] = []
        for run in self._runs[i:]:
            if run.lo >= hi:
                break
            if run.hi > lo:
                out.append(run.view(max(lo, run.lo), min(hi, run.hi)))
        return out

    def get(self, lo: int, hi: int) -> I64Array:
        """A dense copy of the pfns of ``[lo, hi)`` (the caller bounds the range)."""
        out = np.full(hi - lo, -1, dtype=np.int64)
        for ext in self.pieces(lo, hi):
            out[ext.lo - lo:ext.hi - lo] = ext.pfns
        return out

    def get_excl(self, lo: int, hi: int) -> BoolArray:
        """A dense copy of the exclusive flags of ``[lo, hi)``."""
        out = np.zeros(hi - lo, dtype=np.bool_)
        for ext in self.pieces(lo, hi):
            assert ext.excl is not None
            out[ext.lo - lo:ext.hi - lo] = ext.excl
        return out

    def present(self, lo: int = 0, hi: int | None = None) -> tuple[I64Array, I64Array]:
        """``(indices, pfns)`` of the pages of ``[lo, hi)`` that have one, in order: arrays
        as long as the pages present."""
        hi = self.npages if hi is None else hi
        idx: list[I64Array] = []
        pfns: list[I64Array] = []
        for ext in self.pieces(lo, hi):
            at = np.flatnonzero(ext.pfns >= 0)
            idx.append(at + ext.lo)
            pfns.append(ext.pfns[at])
        if not idx:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty.copy()
        return np.concatenate(idx), np.concatenate(pfns)

    def first_unset(self, lo: int, hi: int, *, excl: bool) -> int:
        """The first page of ``[lo, hi)`` with no page (with ``excl``: or not exclusive),
        ``hi`` if none. O(the answer) numpy work over views, windows that double."""
        pos = lo
        for ext in self.pieces(lo, hi):
            if ext.lo > pos:
                return pos
            flags = ext.excl if excl and ext.excl is not None else ext.pfns >= 0
            start, window = 0, 512
            while start < len(flags):
                seg = flags[start:start + window]
                if not seg.all():
                    return ext.lo + start + int(np.argmin(seg))
                start, window = start + window, window * 2
            pos = ext.hi
        return pos

    def count(self, lo: int, hi: int) -> int:
        """How many pages of ``[lo, hi)`` have one. O(extents met) numpy work."""
        return sum(int(np.count_nonzero(ext.pfns >= 0)) for ext in self.pieces(lo, hi))

    def gather(self, idx: I64Array) -> I64Array:
        """The pfns at the sorted page indices ``idx`` (each in an extent)."""
        out = np.full(len(idx), -1, dtype=np.int64)
        for ext, a, b in self._groups(idx):
            out[a:b] = ext.pfns[idx[a:b] - ext.lo]
        return out

    def gather_excl(self, idx: I64Array) -> BoolArray:
        """The exclusive flags at the sorted page indices ``idx`` (each in an extent)."""
        out = np.zeros(len(idx), dtype=np.bool_)
        for ext, a, b in self._groups(idx):
            assert ext.excl is not None
            out[a:b] = ext.excl[idx[a:b] - ext.lo]
        return out

    # -- writing -----------------------------------------------------------------------------
    def window(self, lo: int, hi: int) -> Extent:
        """Views of pages ``[lo, hi)`` that writes go through: the extents there are
        made (whole granules, within ``npages``) or merged into one. Costs host memory
        in proportion to ``hi - lo``, which the caller bounds (the room a growing extent
        keeps is left untouched, so the host does not back it until it is used)."""
        if hi <= lo:
            return Extent(lo, np.zeros(0, dtype=np.int64),
                          np.zeros(0, dtype=np.bool_) if self.with_excl else None)
        i = max(0, bisect.bisect_right(self._los, lo) - 1)
        if i < len(self._runs) and self._runs[i].lo <= lo and hi <= self._runs[i].hi:
            return self._runs[i].view(lo, hi)  # the common case: one extent holds it
        g_lo = max(0, (lo + self.phase) // GRANULE * GRANULE - self.phase)
        g_hi = min(self.npages, -(-(hi + self.phase) // GRANULE) * GRANULE - self.phase)
        first = bisect.bisect_left(self._los, g_lo)
        if first and self._runs[first - 1].hi >= g_lo:
            first -= 1
        last = bisect.bisect_right(self._los, g_hi)  # extents starting at or before g_hi
        merged = self._runs[first:last]
        if merged:
            g_lo, g_hi = min(g_lo, merged[0].lo), max(g_hi, merged[-1].hi)
        if len(merged) == 1 and merged[0].fits(g_lo, g_hi):
            run = merged[0]  # grows into its room
        else:
            run = self._grown(merged, g_lo, g_hi)
            self._runs[first:last] = [run]
            self._los[first:last] = [g_lo]
        run.extend(g_lo, g_hi)
        self._los[first] = g_lo
        return run.view(lo, hi)

    def _grown(self, merged: list[_Run], lo: int, hi: int) -> _Run:
        """A run for ``[lo, hi)`` holding the pages of ``merged``, with :data:`ROOM` times
        as much room on each side it grew on (none for a new run: scattered pages stay
        small)."""
        size = hi - lo
        left = ROOM * size if merged and lo < merged[0].lo else 0
        right = ROOM * size if merged and hi > merged[-1].hi else 0
        base = max(0, lo - left)
        run = _Run(base, min(self.npages, hi + right) - base, self.with_excl)
        pos = lo
        for old in [*merged, None]:
            gap = run.view(pos, hi if old is None else old.lo)  # pages no run had
            gap.pfns[:] = -1
            if gap.excl is not None:
                gap.excl[:] = False
            if old is None:
                break
            ext, into = old.extent, run.view(old.lo, old.hi)
            into.pfns[:] = ext.pfns
            if into.excl is not None and ext.excl is not None:
                into.excl[:] = ext.excl
            pos = old.hi
        run.lo, run.hi = lo, hi
        return run

    def scatter(self, idx: I64Array, pfns: I64Array | int | None = None,
                excl: BoolArray | bool | None = None) -> None:
        """Set the pfn and/or exclusive flag at the sorted page indices ``idx``, which
        lie in extents (pages present, or in a :meth:`window` made before)."""
        for ext, a, b in self._groups(idx):
            at = idx[a:b] - ext.lo
            if pfns is not None:
                ext.pfns[at] = pfns if isinstance(pfns, int) else pfns[a:b]
            if excl is not None:
                assert ext.excl is not None
                ext.excl[at] = excl if isinstance(excl, bool) else excl[a:b]

    def _groups(self, idx: I64Array) -> list[tuple[Extent, int, int]]:
        """``(extent, a, b)``: ``idx[a:b]`` are the indices in that extent."""
        out: list[tuple[Extent, int, int]] = []
        if not len(idx):
            return out
        los = np.array(self._los, dtype=np.int64)
        which = np.searchsorted(los, idx, side="right") - 1
        cuts = np.flatnonzero(np.diff(which)) + 1
        bounds = [0, *cuts.tolist(), len(idx)]
        for a, b in itertools.pairwise(bounds):
            ext = self._runs[int(which[a])].extent
            assert int(which[a]) >= 0 and ext.lo <= idx[a] and idx[b - 1] < ext.hi, \
                f"pages {int(idx[a])}..{int(idx[b - 1])} are not kept"
            out.append((ext, a, b))
        return out

    # -- reshaping ---------------------------------------------------------------------------
    def slice(self, lo: int, hi: int) -> SparsePages:
        """A copy of pages ``[lo, hi)`` as pages of their own (the two sides of a VMA
        split, a file cut short). O(pages kept there)."""
        out = SparsePages(hi - lo, excl=self.with_excl, phase=self.phase + lo)
        for ext in self.pieces(lo, hi):
            out._add(ext, -lo)
        return out

    def _add(self, ext: Extent, shift: int) -> None:
        """A copy of ``ext``, moved by ``shift`` pages, as the last run."""
        run = _Run(ext.lo + shift, len(ext.pfns), self.with_excl)
        run.lo, run.hi = ext.lo + shift, ext.hi + shift  # all of it is copied below
        into = run.extent
        into.pfns[:] = ext.pfns
        if into.excl is not None and ext.excl is not None:
            into.excl[:] = ext.excl
        self._runs.append(run)
        self._los.append(run.lo)

    def copy(self) -> SparsePages:
        """A copy of everything (a VMA a fork duplicates)."""
        return self.slice(0, self.npages)

    def resize(self, npages: int) -> None:
        """Pages from ``npages`` on are gone (shrink) or added without pages (grow)."""
        if npages < self.npages:
            keep = self.pieces(0, npages)
            self._runs, self._los = [], []
            for ext in keep:
                self._add(ext, 0)
        self.npages = npages

    def clear(self) -> None:
        self._los.clear()
        self._runs.clear()

    @property
    def kept(self) -> int:
        """Pages the extents hold, present or not."""
        return sum(run.hi - run.lo for run in self._runs)

    @property
    def host_pages(self) -> int:
        """Pages the storage has room for: what the host memory is in proportion to."""
        return sum(len(run.buf) for run in self._runs)

    def _check(self) -> None:
        """Extents ordered, disjoint, inside ``[0, npages)``, excl only on present pages."""
        assert self._los == [run.lo for run in self._runs]
        prev = 0
        for run in self._runs:
            assert prev <= run.lo < run.hi <= self.npages, f"extent [{run.lo}, {run.hi})"
            assert run.fits(run.lo, run.hi) and run.base + len(run.buf) <= self.npages
            prev = run.hi
            assert (run.ebuf is None) != self.with_excl
            ext = run.extent
            if ext.excl is not None:
                assert not (ext.excl & (ext.pfns < 0)).any(), "an absent page is exclusive"
