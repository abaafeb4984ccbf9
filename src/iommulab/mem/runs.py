"""Runs of a VMA's pages found a folio at a time: where the pages are PMD-mapped large
folios (THP, hugetlb), their pfns follow each other by construction
(:meth:`~iommulab.mem.mm.MmStruct._check_folios`), so the physically contiguous runs and
the present pages of a range come from one pfn per folio instead of one per 4K page.
Pages outside such folios (a range's unaligned ends, 4K pages) are read page by page,
as :func:`~iommulab.mem.pins.pfn_runs` does; the answers are the same. A hugetlb VMA's
pages, kept a folio at a time (:class:`~iommulab.mem.sparse.FolioPages`), answer from
their folios directly."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .pins import pfn_runs
from .sparse import FolioPages, ThpPages
from .vma import PAGE_SHIFT, Vma

__all__ = ["MIN_PAGES", "first_not_ready", "folio_rows", "present_count", "view_runs"]

I64Array = npt.NDArray[np.int64]

#: below this many pages a range is read page by page: the folio lookup is not worth it
#: (tests set it to 0 to take the folio path everywhere, or past any range to never)
MIN_PAGES = 1 << 12


def folio_rows(vma: Vma, lo: int, hi: int, pfns: I64Array) -> tuple[int, int] | None:
    """``(a, b)``: pages ``[a, b)`` of ``[lo, hi)`` (whose pfns, a view, are ``pfns``) are
    whole aligned stretches each mapped by a PMD folio of ``vma`` (``vma.folios``), or
    None when not all of the aligned stretches there are. O((hi - lo) / folio pages)."""
    order = vma.order
    if not order or not vma.folios or vma.file is not None or hi - lo < MIN_PAGES:
        return None
    per = 1 << order
    a = lo + (-((vma.start >> PAGE_SHIFT) + lo)) % per
    rows = (hi - a) // per
    if rows <= 0:
        return None
    heads = pfns[a - lo:a - lo + rows * per:per]
    if len(heads) <= 64:
        if not all(h in vma.folios for h in heads.tolist()):
            return None
    else:  # sorted folio heads and a binary search: cheaper than np.isin's sort
        keys = np.sort(np.fromiter(vma.folios, np.int64, len(vma.folios)))
        at = np.minimum(np.searchsorted(keys, heads), len(keys) - 1)
        if not (keys[at] == heads).all():
            return None
    return a, a + rows * per


def _join(runs: list[tuple[int, int]], more: list[tuple[int, int]]) -> None:
    """Append ``more`` to ``runs``, merging a run that continues the last one."""
    if runs and more and runs[-1][0] + runs[-1][1] == more[0][0]:
        pfn, count = runs.pop()
        more = [(pfn, count + more[0][1]), *more[1:]]
    runs += more


def view_runs(vma: Vma, lo: int, hi: int, pfns: I64Array) -> list[tuple[int, int]]:
    """``pfn_runs(pfns)`` for ``pfns``, a view of the present pages ``[lo, hi)`` of
    ``vma``'s own pages: the PMD folios by their first pfns (consecutive folios whose
    pfns follow each other make one run), the rest page by page. O(folios + pages
    outside them) numpy work."""
    rows = folio_rows(vma, lo, hi, pfns)
    if rows is None:
        return pfn_runs(pfns)
    a, b = rows
    per = 1 << vma.order
    runs = pfn_runs(pfns[:a - lo])
    heads = pfns[a - lo:b - lo:per]
    cuts = (np.flatnonzero(np.diff(heads) != per) + 1).tolist()
    bounds = [0, *cuts, len(heads)]
    firsts = heads[bounds[:-1]].tolist()
    _join(runs, [(f, (j - i) * per) for f, i, j in zip(firsts, bounds[:-1], bounds[1:],
                                                       strict=True)])
    _join(runs, pfn_runs(pfns[b - lo:]))
    return runs


def present_count(vma: Vma, lo: int, hi: int) -> int:
    """``vma.pages.count(lo, hi)``: the pages of ``[lo, hi)`` that have one, counting a
    PMD folio's stretch whole. O(folios + pages outside them) numpy work."""
    if isinstance(vma.pages, (FolioPages, ThpPages)):
        return vma.pages.count(lo, hi)
    total = 0
    for ext in vma.pages.pieces(lo, hi):
        rows = folio_rows(vma, ext.lo, ext.hi, ext.pfns)
        if rows is None:
            total += int(np.count_nonzero(ext.pfns >= 0))
            continue
        a, b = rows
        total += b - a + int(np.count_nonzero(ext.pfns[:a - ext.lo] >= 0)) + \
            int(np.count_nonzero(ext.pfns[b - ext.lo:] >= 0))
    return total


def first_not_ready(vma: Vma, lo: int, hi: int) -> int:
    """``vma.ready(lo, hi)``: the first page of ``[lo, hi)`` GUP could not take as it is,
    ``hi`` if none, reading a PMD folio's flag once (a folio's pages share
    ``PageAnonExclusive``). O(folios + pages outside them) numpy work."""
    if vma.pfnmap or vma.file is not None:
        return vma.ready(lo, hi)
    if isinstance(vma.pages, (FolioPages, ThpPages)):
        return vma.pages.first_unset(lo, hi, excl=True)
    pos = lo
    for ext in vma.pages.pieces(lo, hi):
        if ext.lo > pos:
            return pos
        rows = folio_rows(vma, ext.lo, ext.hi, ext.pfns)
        a, b = (ext.hi, ext.hi) if rows is None else rows
        head = vma.pages.first_unset(ext.lo, a, excl=True)
        if head < a:
            return head
        if b > a:
            assert ext.excl is not None
            flags = ext.excl[a - ext.lo:b - ext.lo:1 << vma.order]
            if not flags.all():
                return a + (int(np.argmin(flags)) << vma.order)
            tail = vma.pages.first_unset(b, ext.hi, excl=True)
            if tail < ext.hi:
                return tail
        pos = ext.hi
    return pos
