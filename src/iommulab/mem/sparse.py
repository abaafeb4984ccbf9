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

:class:`FolioPages` keeps the same state a folio at a time for mappings whose folios are
never split (hugetlb), :class:`ThpPages` for the THP folios a mapping has whole until
something asks for their pages one by one: the model's own storage choice (the kernel
keeps a PTE, PMD or PUD per mapping, not this), 9 bytes per folio instead of 9 per 4K
page.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["GRANULE", "ROOM", "Extent", "FolioPages", "SparsePages", "ThpPages"]

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


class _DenseReads:
    """The dense reads every page store answers from its :meth:`pieces`."""

    npages: int

    def pieces(self, lo: int, hi: int) -> list[Extent]:
        raise NotImplementedError

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


class SparsePages(_DenseReads):
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
        out: list[Extent] = []
        if hi <= lo:  # an empty range meets no extent (nor makes an empty one in slice)
            return out
        i = max(0, bisect.bisect_right(self._los, lo) - 1)
        for run in self._runs[i:]:
            if run.lo >= hi:
                break
            if run.hi > lo:
                out.append(run.view(max(lo, run.lo), min(hi, run.hi)))
        return out

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

    def model_bytes(self) -> int:
        """Host bytes of the storage's arrays (room included): 8 per page, 9 with
        ``excl``."""
        return sum(run.buf.nbytes + (run.ebuf.nbytes if run.ebuf is not None else 0)
                   for run in self._runs)

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


class FolioPages(_DenseReads):
    """:class:`SparsePages`'s reads and reshapes for ``npages`` pages that are only ever
    set, cleared and flagged a whole aligned folio of ``order`` at a time (a hugetlb
    VMA: its folios are never split, it is only cut at huge page boundaries and copied
    on write a huge page at a time). The model's own storage choice: each folio's first
    pfn and ``PageAnonExclusive`` flag, kept sparse a slot per folio (a
    :class:`SparsePages` over the slots), so a mapping costs 9 bytes per folio; a
    page's pfn is its folio's first plus its offset, computed when read.

    Reads answer by computed ranges; :meth:`pieces` (and so :meth:`get`,
    :meth:`present`) builds dense read-only arrays of the range asked for, which
    callers bound. Writes go through :meth:`put` (or :meth:`scatter` of whole folios);
    there is no :meth:`window` to write through."""

    def __init__(self, npages: int, order: int, *, phase: int = 0) -> None:
        per = 1 << order
        assert not npages % per and not phase % per, \
            f"{npages} pages at {phase:#x} are not whole order-{order} folios"
        self.npages = npages
        self.order = order
        self.with_excl = True
        self.phase = phase % GRANULE
        self._slots = SparsePages(npages >> order, excl=True)

    def _span(self, lo: int, hi: int) -> tuple[int, int]:
        """The slots of the folios that hold a page of ``[lo, hi)``."""
        return lo >> self.order, -(-hi >> self.order)

    # -- reading -----------------------------------------------------------------------------
    def folio_slots(self, lo: int = 0, hi: int | None = None) -> tuple[I64Array, I64Array]:
        """``(first page index, first pfn)`` of each folio present that holds a page of
        ``[lo, hi)``, in order. O(log extents + folios there)."""
        hi = self.npages if hi is None else hi
        at, heads = self._slots.present(*self._span(lo, hi))
        return at << self.order, heads

    def pieces(self, lo: int, hi: int) -> list[Extent]:
        """Dense, read-only copies of the pages of ``[lo, hi)`` the slots kept there hold,
        extent by extent (pages in none have no page). O(pages given): the caller bounds
        the range."""
        mask = (1 << self.order) - 1
        out: list[Extent] = []
        for ext in self._slots.pieces(*self._span(lo, hi)):
            assert ext.excl is not None
            a, b = max(lo, ext.lo << self.order), min(hi, ext.hi << self.order)
            pages = np.arange(a, b, dtype=np.int64)
            at = (pages >> self.order) - ext.lo
            heads = ext.pfns[at]
            pfns = np.where(heads >= 0, heads + (pages & mask), -1)
            excl = ext.excl[at]
            pfns.flags.writeable = False
            excl.flags.writeable = False
            out.append(Extent(a, pfns, excl))
        return out

    def first_unset(self, lo: int, hi: int, *, excl: bool) -> int:
        """The first page of ``[lo, hi)`` with no page (with ``excl``: or not exclusive),
        ``hi`` if none. O(folios up to the answer)."""
        if hi <= lo:
            return hi
        s_lo, s_hi = self._span(lo, hi)
        slot = self._slots.first_unset(s_lo, s_hi, excl=excl)
        return hi if slot >= s_hi else max(lo, slot << self.order)

    def taken(self, lo: int, hi: int) -> BoolArray:
        """For the folios ``[lo, hi)`` (whole ones), whether each is present."""
        out = np.zeros((hi - lo) >> self.order, dtype=np.bool_)
        out[(self.folio_slots(lo, hi)[0] - lo) >> self.order] = True
        return out

    def count(self, lo: int, hi: int) -> int:
        """How many pages of ``[lo, hi)`` have one. O(folios there)."""
        if hi <= lo:
            return 0
        starts, _ = self.folio_slots(lo, hi)
        ends = np.minimum(starts + (1 << self.order), hi)
        return int((ends - np.maximum(starts, lo)).sum())

    def runs(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """``pfn_runs`` of the pfns of ``[lo, hi)``, all present (GUP's pages): a folio's
        pages follow each other, consecutive folios whose pfns do too make one run.
        O(folios there) numpy work, a Python step per run."""
        starts, heads = self.folio_slots(lo, hi)
        if hi <= lo:
            return []
        a = np.maximum(starts, lo)
        firsts = heads + (a - starts)
        lens = np.minimum(starts + (1 << self.order), hi) - a
        assert int(lens.sum()) == hi - lo, f"pages [{lo}, {hi}) are not all present"
        cuts = np.flatnonzero(firsts[1:] != firsts[:-1] + lens[:-1]) + 1
        bounds = [0, *cuts.tolist(), len(firsts)]
        return [(int(firsts[i]), int(lens[i:j].sum()))
                for i, j in itertools.pairwise(bounds)]

    def gather(self, idx: I64Array) -> I64Array:
        """The pfns at the sorted page indices ``idx`` (each in a slot kept)."""
        heads = self._slots.gather(idx >> self.order)
        return np.where(heads >= 0, heads + (idx & ((1 << self.order) - 1)), -1)

    def gather_excl(self, idx: I64Array) -> BoolArray:
        """The exclusive flags at the sorted page indices ``idx`` (each in a slot kept)."""
        return self._slots.gather_excl(idx >> self.order)

    # -- writing -----------------------------------------------------------------------------
    def window(self, lo: int, hi: int) -> Extent:
        """No views to write through: use :meth:`put`."""
        raise TypeError(f"FolioPages has no writable window of [{lo}, {hi}): use put()")

    def put(self, starts: I64Array, heads: I64Array | int | None = None,
            excl: BoolArray | bool | None = None) -> None:
        """Set the first pfn (-1: none) and/or the exclusive flag of the folios at the
        sorted page indices ``starts`` (multiples of the folio's pages); a folio with no
        page is never exclusive. O(log extents + folios)."""
        if not len(starts):
            return
        assert not (starts & ((1 << self.order) - 1)).any(), "a folio's start is unaligned"
        slots = starts >> self.order
        self._slots.window(int(slots[0]), int(slots[-1]) + 1)
        self._slots.scatter(slots, heads, excl)
        if heads is not None:
            gone = slots[np.asarray(heads) < 0] if not isinstance(heads, int) else \
                (slots if heads < 0 else slots[:0])
            self._slots.scatter(gone, None, False)

    def scatter(self, idx: I64Array, pfns: I64Array | int | None = None,
                excl: BoolArray | bool | None = None) -> None:
        """:meth:`SparsePages.scatter` of whole folios: ``idx`` (sorted) covers each folio
        it touches, with its pages' pfns following each other from the first (or all
        -1) and one flag for them all. O(len(idx)) numpy work."""
        per = 1 << self.order
        if not len(idx):
            return
        rows = idx.reshape(-1, per)
        assert (rows == rows[:, :1] + np.arange(per)).all() and not (rows[:, 0] % per).any(), \
            "scatter of pages that are not whole folios"
        starts = rows[:, 0].copy()
        heads: I64Array | int | None = pfns if pfns is None or isinstance(pfns, int) else \
            pfns[::per].copy()
        if heads is not None and not isinstance(heads, int):
            assert isinstance(pfns, np.ndarray)
            ok = np.where(heads[:, None] >= 0, heads[:, None] + np.arange(per), -1)
            assert (pfns.reshape(-1, per) == ok).all(), "a folio's pfns do not follow"
        flags: BoolArray | bool | None = excl if excl is None or isinstance(excl, bool) \
            else excl[::per].copy()
        if flags is not None and not isinstance(flags, bool):
            assert isinstance(excl, np.ndarray)
            assert (excl.reshape(-1, per) == flags[:, None]).all(), "a folio's flags differ"
        self.put(starts, heads, flags)

    # -- reshaping ---------------------------------------------------------------------------
    def slice(self, lo: int, hi: int) -> FolioPages | SparsePages:
        """A copy of pages ``[lo, hi)`` as pages of their own: a folio store for whole
        folios, per-page storage for a cut inside one (hugetlb's are never cut there:
        munmap and mprotect refuse it; a caller that does gets the pages as they are).
        O(folios there), O(pages) for per-page storage."""
        mask = (1 << self.order) - 1
        if lo & mask or hi & mask:
            return self.to_sparse().slice(lo, hi)
        out = FolioPages(hi - lo, self.order, phase=self.phase + lo)
        out._slots = self._slots.slice(*self._span(lo, hi))
        return out

    def to_sparse(self) -> SparsePages:
        """The same pages in per-page storage. O(pages present)."""
        out = SparsePages(self.npages, excl=True, phase=self.phase)
        for ext in self.pieces(0, self.npages):
            into = out.window(ext.lo, ext.hi)
            assert into.excl is not None and ext.excl is not None
            into.pfns[:] = ext.pfns
            into.excl[:] = ext.excl
        return out

    def copy(self) -> FolioPages:
        """A copy of everything (a VMA a fork duplicates)."""
        out = FolioPages(self.npages, self.order, phase=self.phase)
        out._slots = self._slots.copy()
        return out

    def resize(self, npages: int) -> None:
        """Pages from ``npages`` (whole folios) on are gone (shrink) or added without
        pages (grow)."""
        assert not npages % (1 << self.order), f"{npages} pages are not whole folios"
        self._slots.resize(npages >> self.order)
        self.npages = npages

    def clear(self) -> None:
        self._slots.clear()

    @property
    def kept(self) -> int:
        """Pages the kept slots stand for, present or not."""
        return self._slots.kept << self.order

    @property
    def host_pages(self) -> int:
        """Slots the storage has room for (one per folio): what the host memory is in
        proportion to."""
        return self._slots.host_pages

    def model_bytes(self) -> int:
        """Host bytes of the slots' arrays: 9 per folio (room included)."""
        return self._slots.model_bytes()

    def _check(self) -> None:
        self._slots._check()
        assert self._slots.npages << self.order == self.npages


class ThpPages(_DenseReads):
    """:class:`SparsePages` for a THP VMA: each PMD-sized aligned stretch faulted whole as
    one folio while nothing else was kept there is kept a folio at a time (first pfn,
    ``PageAnonExclusive``: a slot of a :class:`SparsePages` over the stretches), every
    other page per page. The model's own storage choice. A stretch moves to per-page
    storage (it *unfolds*, the pages unchanged) the first time a caller asks for a
    writable view of it (:meth:`window`, :meth:`scatter`: a copy on write, a fork's
    copy of a pinned THP) or a cut goes through it; it never moves back. A folio kept
    whole is always one its VMA maps with a PMD (``Vma.folios``). Folio slots and
    per-page extents never overlap (the stretches are the per-page store's granules).
    Reads of folio stretches build dense read-only arrays, as :class:`FolioPages`'s."""

    def __init__(self, npages: int, order: int, *, phase: int = 0) -> None:
        assert 1 << order == GRANULE, f"order-{order} stretches are not granules"
        self.npages = npages
        self.order = order
        self.with_excl = True
        self.phase = phase % GRANULE
        self._off = -phase % GRANULE  # the first aligned stretch's first page
        self._pages = SparsePages(npages, excl=True, phase=phase)
        self._folios = SparsePages(max(0, (npages - self._off) >> order), excl=True)

    # -- the folio slots ---------------------------------------------------------------------
    def _folio_slots(self, lo: int, hi: int) -> tuple[I64Array, I64Array, BoolArray]:
        """``(first page, first pfn, flag)`` of each folio kept whole that holds a page of
        ``[lo, hi)``, in order. O(log extents + folios there)."""
        n = self._folios.npages
        a = min(n, max(0, (lo - self._off) >> self.order))
        b = max(a, min(n, -(-(hi - self._off) >> self.order)))
        if hi <= lo or a >= b:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty.copy(), np.zeros(0, dtype=np.bool_)
        slots, heads = self._folios.present(a, b)
        flags = self._folios.gather_excl(slots)
        return (slots << self.order) + self._off, heads, flags

    def folio_slots(self, lo: int = 0, hi: int | None = None) -> tuple[I64Array, I64Array]:
        """``(first page index, first pfn)`` of each folio kept whole that holds a page of
        ``[lo, hi)`` (the others are in per-page storage)."""
        starts, heads, _ = self._folio_slots(lo, self.npages if hi is None else hi)
        return starts, heads

    def _folio_runs(self, lo: int, hi: int) -> list[tuple[int, int, I64Array, I64Array,
                                                          BoolArray]]:
        """``(a, b, starts, heads, flags)`` per run of adjacent folios kept whole, clipped
        to ``[lo, hi)``."""
        starts, heads, flags = self._folio_slots(lo, hi)
        per = 1 << self.order
        cuts = (np.flatnonzero(np.diff(starts) != per) + 1).tolist()
        bounds = [0, *cuts, len(starts)] if len(starts) else []
        return [(max(lo, int(starts[i])), min(hi, int(starts[j - 1]) + per), starts[i:j],
                 heads[i:j], flags[i:j]) for i, j in itertools.pairwise(bounds)]

    def _covered(self, starts: I64Array) -> BoolArray:
        """Which of the stretches at ``starts`` lie in per-page extents."""
        runs = self._pages._runs
        if not runs or not len(starts):
            return np.zeros(len(starts), dtype=np.bool_)
        los = np.array(self._pages._los, dtype=np.int64)
        his = np.array([run.hi for run in runs], dtype=np.int64)
        i = np.searchsorted(los, starts, side="right") - 1
        out: BoolArray = (i >= 0) & (his[np.maximum(i, 0)] > starts)
        return out

    def _unfold(self, lo: int, hi: int) -> None:
        """Move the folios kept whole that hold a page of ``[lo, hi)`` to per-page
        storage, pages unchanged. O(their pages)."""
        self._unfold_at(*self._folio_slots(lo, hi))

    def _unfold_at(self, starts: I64Array, heads: I64Array, flags: BoolArray) -> None:
        """Move the folios kept whole at ``starts`` (sorted; their first pfns and flags)
        to per-page storage, a window per run of adjacent ones."""
        if not len(starts):
            return
        per = 1 << self.order
        self._folios.scatter((starts - self._off) >> self.order, -1, False)
        offs = np.arange(per, dtype=np.int64)
        cuts = (np.flatnonzero(np.diff(starts) != per) + 1).tolist()
        for a, b in itertools.pairwise([0, *cuts, len(starts)]):
            first = int(starts[a])
            w = self._pages.window(first, int(starts[b - 1]) + per)
            assert w.excl is not None
            for i in range(a, b, 4096):  # bounded temporaries
                j = min(b, i + 4096)
                w.pfns.reshape(-1, per)[i - a:j - a] = heads[i:j, None] + offs
            w.excl.reshape(-1, per)[:] = flags[a:b, None]

    def unfold_except(self, keep: I64Array) -> None:
        """Every folio kept whole but those at the page indices ``keep`` moves to
        per-page storage (a fork writes the others through views)."""
        starts, heads, flags = self._folio_slots(0, self.npages)
        drop = ~np.isin(starts, keep)
        self._unfold_at(starts[drop], heads[drop], flags[drop])

    def page_pieces(self, lo: int, hi: int) -> list[Extent]:
        """Views of the pages of ``[lo, hi)`` kept page by page (writes go through)."""
        return self._pages.pieces(lo, hi)

    # -- reading -----------------------------------------------------------------------------
    def pieces(self, lo: int, hi: int) -> list[Extent]:
        """The per-page extents' views and dense read-only copies of the folios kept
        whole, of ``[lo, hi)``, in order. O(pages of the folios met)."""
        out = self._pages.pieces(lo, hi)
        mask = (1 << self.order) - 1
        for a, b, starts, heads, flags in self._folio_runs(lo, hi):
            pages = np.arange(a, b, dtype=np.int64)
            k = (pages - int(starts[0])) >> self.order
            pfns = heads[k] + ((pages - int(starts[0])) & mask)
            excl = flags[k]
            pfns.flags.writeable = False
            excl.flags.writeable = False
            out.append(Extent(a, pfns, excl))
        out.sort(key=lambda e: e.lo)
        return out

    def segments(self, lo: int, hi: int) -> list[tuple[int, int, I64Array | None]]:
        """``(a, b, view)`` of ``[lo, hi)`` in order: per-page extents with their pfns'
        view, runs of folios kept whole with None (read them by :meth:`folio_runs`)."""
        out: list[tuple[int, int, I64Array | None]] = \
            [(e.lo, e.hi, e.pfns) for e in self._pages.pieces(lo, hi)]
        out += [(a, b, None) for a, b, *_ in self._folio_runs(lo, hi)]
        out.sort(key=lambda s: s[0])
        return out

    def folio_runs(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """``pfn_runs`` of pages ``[lo, hi)``, all in folios kept whole."""
        out: list[tuple[int, int]] = []
        for a, b, starts, heads, _ in self._folio_runs(lo, hi):
            firsts = heads + (np.maximum(starts, a) - starts)
            lens = np.minimum(starts + (1 << self.order), b) - np.maximum(starts, a)
            cuts = np.flatnonzero(firsts[1:] != firsts[:-1] + lens[:-1]) + 1
            bounds = [0, *cuts.tolist(), len(firsts)]
            more = [(int(firsts[i]), int(lens[i:j].sum())) for i, j in itertools.pairwise(bounds)]
            if out and more and out[-1][0] + out[-1][1] == more[0][0]:
                more[0] = (out[-1][0], out.pop()[1] + more[0][1])
            out += more
        assert sum(n for _, n in out) == hi - lo, f"pages [{lo}, {hi}) are not all folios"
        return out

    def first_unset(self, lo: int, hi: int, *, excl: bool) -> int:
        """As :meth:`SparsePages.first_unset`; a folio kept whole is read once.
        O(folios + per-page answer)."""
        if hi <= lo:
            return hi
        segs: list[tuple[int, int, I64Array | None, BoolArray | None]] = \
            [(e.lo, e.hi, None, None) for e in self._pages.pieces(lo, hi)]
        segs += [(a, b, starts, flags) for a, b, starts, _, flags in self._folio_runs(lo, hi)]
        segs.sort(key=lambda s: s[0])
        pos = lo
        for a, b, starts, flags in segs:
            if a > pos:
                return pos
            if starts is None:
                at = self._pages.first_unset(a, b, excl=excl)
                if at < b:
                    return at
            elif excl and flags is not None and not flags.all():
                return max(a, int(starts[int(np.argmin(flags))]))
            pos = b
        return pos

    def count(self, lo: int, hi: int) -> int:
        if hi <= lo:
            return 0
        starts, _, _ = self._folio_slots(lo, hi)
        whole = int((np.minimum(starts + (1 << self.order), hi) - np.maximum(starts, lo)).sum())
        return self._pages.count(lo, hi) + whole

    def _lookup(self, idx: I64Array) -> tuple[BoolArray, I64Array, BoolArray]:
        """For the sorted page indices ``idx``: which are in folios kept whole, and their
        pfns and flags there."""
        s = (idx - self._off) >> self.order
        inside = (idx >= self._off) & (s < self._folios.npages)
        pfns = np.full(len(idx), -1, dtype=np.int64)
        flags = np.zeros(len(idx), dtype=np.bool_)
        if inside.any():
            sv = s[inside]
            a, b = int(sv.min()), int(sv.max()) + 1
            heads = self._folios.get(a, b)[sv - a]
            pfns[inside] = np.where(heads >= 0, heads + ((idx[inside] - self._off)
                                                         & ((1 << self.order) - 1)), -1)
            flags[inside] = self._folios.get_excl(a, b)[sv - a]
        return pfns >= 0, pfns, flags

    def gather(self, idx: I64Array) -> I64Array:
        folio, pfns, _ = self._lookup(idx)
        if not folio.all():
            pfns[~folio] = self._pages.gather(idx[~folio])
        return pfns

    def gather_excl(self, idx: I64Array) -> BoolArray:
        folio, _, flags = self._lookup(idx)
        if not folio.all():
            flags[~folio] = self._pages.gather_excl(idx[~folio])
        return flags

    # -- writing -----------------------------------------------------------------------------
    def window(self, lo: int, hi: int) -> Extent:
        """:meth:`SparsePages.window`, the folios there unfolded first."""
        self._unfold(lo, hi)
        return self._pages.window(lo, hi)

    def scatter(self, idx: I64Array, pfns: I64Array | int | None = None,
                excl: BoolArray | bool | None = None) -> None:
        """:meth:`SparsePages.scatter`, the folios holding a page of ``idx`` unfolded
        first."""
        folio, _, _ = self._lookup(idx)
        if folio.any():
            per = 1 << self.order
            hit = np.unique((idx[folio] - self._off) // per * per + self._off)
            starts, heads, flags = self._folio_slots(int(hit[0]), int(hit[-1]) + per)
            at = np.isin(starts, hit)
            self._unfold_at(starts[at], heads[at], flags[at])
        self._pages.scatter(idx, pfns, excl)

    def put(self, starts: I64Array, heads: I64Array | int | None = None,
            excl: BoolArray | bool | None = None) -> None:
        """Set the first pfn and/or the flag of the aligned stretches at the sorted page
        indices ``starts``, whole: kept a folio at a time where no per-page extent holds
        the stretch, else page by page (a new folio needs ``heads`` and ``excl``)."""
        if not len(starts):
            return
        per = 1 << self.order
        offs = np.arange(per, dtype=np.int64)
        heads_a = None if heads is None else np.broadcast_to(np.asarray(heads, np.int64),
                                                             starts.shape)
        excl_a = None if excl is None else np.broadcast_to(np.asarray(excl, np.bool_),
                                                           starts.shape)
        cov = np.flatnonzero(self._covered(starts))
        cuts = (np.flatnonzero(np.diff(starts[cov]) != per) + 1).tolist()
        for a, b in itertools.pairwise([0, *cuts, len(cov)] if len(cov) else []):
            at = cov[a:b]  # adjacent stretches: one window (whole granules, so a
            w = self._pages.window(int(starts[at[0]]),  # stretch an extent holds in part
                                   int(starts[at[-1]]) + per)  # is then all kept)
            assert w.excl is not None
            if heads_a is not None:
                h = heads_a[at][:, None]
                w.pfns.reshape(-1, per)[:] = np.where(h >= 0, h + offs, -1)
            if excl_a is not None:
                w.excl.reshape(-1, per)[:] = excl_a[at][:, None]
            if heads_a is not None:
                w.excl.reshape(-1, per)[heads_a[at] < 0] = False
        cov_mask = np.zeros(len(starts), dtype=np.bool_)
        cov_mask[cov] = True
        fold = ~cov_mask
        if fold.any():
            slots = (starts[fold] - self._off) >> self.order
            self._folios.window(int(slots[0]), int(slots[-1]) + 1)
            self._folios.scatter(slots, None if heads_a is None else heads_a[fold].copy(),
                                 None if excl_a is None else excl_a[fold].copy())
            if heads_a is not None:
                self._folios.scatter(slots[heads_a[fold] < 0], None, False)

    def taken(self, lo: int, hi: int) -> BoolArray:
        """For the aligned stretches ``[lo, hi)`` (whole ones), whether any page has one."""
        per = 1 << self.order
        out = np.zeros((hi - lo) >> self.order, dtype=np.bool_)
        out[(self._folio_slots(lo, hi)[0] - lo) >> self.order] = True
        idx, _ = self._pages.present(lo, hi)
        out[(idx - lo) // per] = True
        return out

    # -- reshaping ---------------------------------------------------------------------------
    def slice(self, lo: int, hi: int) -> ThpPages:
        """A copy of pages ``[lo, hi)`` as pages of their own; a folio the cut goes
        through is in per-page storage there. O(pages kept per page + folios)."""
        out = ThpPages(hi - lo, self.order, phase=self.phase + lo)
        out._pages = self._pages.slice(lo, hi)
        starts, heads, flags = self._folio_slots(lo, hi)
        per = 1 << self.order
        inside = (starts >= lo) & (starts + per <= hi)
        out.put(starts[inside] - lo, heads[inside], flags[inside])
        for s, h, f in zip(starts[~inside].tolist(), heads[~inside].tolist(),
                           flags[~inside].tolist(), strict=True):
            a, b = max(lo, s), min(hi, s + per)
            w = out._pages.window(a - lo, b - lo)
            assert w.excl is not None
            w.pfns[:] = np.arange(h + a - s, h + b - s, dtype=np.int64)
            w.excl[:] = f
        return out

    def copy(self) -> ThpPages:
        return self.slice(0, self.npages)

    def resize(self, npages: int) -> None:
        """Pages from ``npages`` on are gone (shrink) or added without pages (grow)."""
        if npages < self.npages:
            cut = self.slice(0, npages)
            self._pages, self._folios = cut._pages, cut._folios
        else:
            self._pages.resize(npages)
            self._folios.resize(max(0, (npages - self._off) >> self.order))
        self.npages = npages

    def clear(self) -> None:
        self._pages.clear()
        self._folios.clear()

    @property
    def kept(self) -> int:
        """Pages the per-page extents hold, plus those of the folios kept whole."""
        return self._pages.kept + (self._folios.count(0, self._folios.npages) << self.order)

    @property
    def host_pages(self) -> int:
        """Entries the storage has room for (a page's or a folio's)."""
        return self._pages.host_pages + self._folios.host_pages

    def model_bytes(self) -> int:
        """Host bytes of both stores' arrays (room included)."""
        return self._pages.model_bytes() + self._folios.model_bytes()

    def _check(self) -> None:
        """Both stores' checks; no folio kept whole lies in a per-page extent."""
        self._pages._check()
        self._folios._check()
        assert self._folios.npages == max(0, (self.npages - self._off) >> self.order)
        starts, _, _ = self._folio_slots(0, self.npages)
        assert not self._covered(starts).any(), "a folio is kept twice"
