"""The folio-at-a-time readings of a VMA's pages (``mem/runs.py``) give what the
page-by-page ones give: the same physically contiguous runs, present pages and first
page GUP cannot take as it is, on THP and hugetlb VMAs that are whole, partly faulted,
partly 4K (a fragmented host), shared with a fork (not exclusive) or cut by holes."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iommulab.errors import KernelError
from iommulab.mem import PhysMem, runs
from iommulab.mem.mm import MmStruct
from iommulab.mem.pins import pfn_runs
from iommulab.mem.vma import PAGE_SHIFT

PMD_PAGES = 512


@pytest.fixture(autouse=True)
def _folio_path_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runs, "MIN_PAGES", 0)  # the folio path even for small ranges


def _compare(mm: MmStruct, lo_frac: float, hi_frac: float) -> None:
    for vma in mm.vmas:
        lo = int(vma.npages * lo_frac)
        hi = max(lo + 1, int(vma.npages * hi_frac))
        assert runs.present_count(vma, lo, hi) == vma.pages.count(lo, hi)
        assert runs.first_not_ready(vma, lo, hi) == vma.ready(lo, hi)
        for ext in vma.pages.pieces(lo, hi):
            assert runs.view_runs(vma, ext.lo, ext.hi, ext.pfns) == pfn_runs(ext.pfns)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["thp", "hugetlb-2M", "anon"]), st.sampled_from([0.0, 0.3, 1.0]),
       st.lists(st.integers(0, 8 * PMD_PAGES - 1), max_size=6),
       st.lists(st.tuples(st.integers(0, 8 * PMD_PAGES - 1), st.integers(1, 3 * PMD_PAGES)),
                max_size=3),
       st.booleans(), st.booleans(), st.floats(0, 0.9), st.floats(0.1, 1.0))
def test_folio_readings_match_page_readings(backing: str, fragment: float, touches: list[int],
                                            pins: list[tuple[int, int]], fork: bool,
                                            hole: bool, lo: float, hi: float) -> None:
    mem = PhysMem("128M")
    if fragment and backing != "hugetlb-2M":  # hugetlb has no 4K fallback: ENOMEM
        mem.fragment(order=9, fraction=fragment)
    mm = MmStruct(mem)
    va = mm.mmap(8 << 21, backing)
    for page in touches:  # partly prefaulted: 4K pages where a stretch had one first
        with contextlib.suppress(KernelError):
            mm.write(va + (page << PAGE_SHIFT), b"x")
    pinned: list[list[tuple[int, int]]] = []
    for page, n in pins:  # faulted by GUP: whole folios
        n = min(n, 8 * PMD_PAGES - page)
        with contextlib.suppress(KernelError):
            pinned.append(mm.pin_user_page_runs(va + (page << PAGE_SHIFT), n, True))
    child = mm.fork() if fork else None  # shared pages: not exclusive
    if hole:
        mm.munmap(va + (3 << 21), 1 << 21)
    _compare(mm, min(lo, hi), max(lo, hi))
    if child is not None:
        _compare(child, min(lo, hi), max(lo, hi))
        child.close()
    for got in pinned:  # call by call (one call with a page twice: see the report)
        mm.unpin_user_page_runs(got)
    mm._check()
    mm.close()
    assert mem.pins.pins == 0 and mem.anon.maps.total == 0


def test_pin_runs_match_pin_pages_on_whole_folios() -> None:
    """A pin of whole THP and hugetlb folios, with unaligned ends: the runs are the ones
    the pinned pfns make, and the pins the same."""
    for backing in ("thp", "hugetlb-2M"):
        mem = PhysMem("128M")
        mm = MmStruct(mem)
        va = mm.mmap(16 << 21, backing)
        got = mm.pin_user_page_runs(va + (5 << PAGE_SHIFT), 14 * PMD_PAGES + 3, True)
        vma = mm.find_vma(va)
        assert vma is not None
        ext = vma.pages.pieces(0, vma.npages)[0]
        assert runs.folio_rows(vma, ext.lo, ext.hi, ext.pfns) is not None  # the folio path
        pfns = mm.pin_user_pages(va + (5 << PAGE_SHIFT), 14 * PMD_PAGES + 3, True)
        assert got == pfn_runs(pfns)
        assert mem.pins.pins == 2 * len(pfns)
        mm.unpin_user_page_runs(got)
        mm.unpin_user_pages(pfns)
        mm.close()
        assert mem.pins.pins == 0
