"""SparsePages: per-page state kept only where pages were, checked against a dense model."""

from __future__ import annotations

import random

import numpy as np
import pytest

from iommulab.mem.sparse import GRANULE, ROOM, SparsePages


def _model_check(pages: SparsePages, pfns: np.ndarray, excl: np.ndarray) -> None:
    pages._check()
    n = pages.npages
    assert (pages.get(0, n) == pfns).all()
    assert (pages.get_excl(0, n) == excl).all()
    idx, got = pages.present()
    assert (idx == np.flatnonzero(pfns >= 0)).all() and (got == pfns[pfns >= 0]).all()
    assert pages.count(0, n) == int((pfns >= 0).sum())


@pytest.mark.parametrize("seed", range(20))
def test_windows_scatters_slices_and_resizes_agree_with_a_dense_array(seed: int) -> None:
    """Whatever sequence of windows (made, grown, merged), scatters, slices and resizes:
    the pages read back are those of a plain array that had the same writes."""
    rng = random.Random(seed)
    n = rng.choice([1, 7, 600, 5000])
    pages = SparsePages(n, excl=True, phase=rng.randrange(GRANULE))
    pfns = np.full(n, -1, dtype=np.int64)
    excl = np.zeros(n, dtype=np.bool_)
    for _ in range(40):
        op = rng.randrange(4)
        lo = rng.randrange(n)
        hi = min(n, lo + rng.choice([1, 3, 512, 700, n]))
        if op == 0:
            w = pages.window(lo, hi)
            assert w.lo == lo and len(w.pfns) == hi - lo
            vals = np.array([rng.choice([-1, rng.randrange(1 << 20)]) for _ in range(hi - lo)])
            w.pfns[:] = vals
            assert w.excl is not None
            w.excl[:] = vals >= 0
            pfns[lo:hi], excl[lo:hi] = vals, vals >= 0
        elif op == 1:
            idx, _ = pages.present(lo, hi)
            pages.scatter(idx, excl=False)
            excl[idx] = False
        elif op == 2 and hi - lo > 1:
            cut = rng.randrange(lo, hi)
            left, right = pages.slice(0, cut), pages.slice(cut, n)
            _model_check(left, pfns[:cut], excl[:cut])
            _model_check(right, pfns[cut:], excl[cut:])
        elif op == 3:
            new = rng.randrange(1, n + 1)
            pages.resize(new)
            pfns, excl = pfns[:new], excl[:new]
            pages.resize(n)
            pfns = np.concatenate([pfns, np.full(n - new, -1, dtype=np.int64)])
            excl = np.concatenate([excl, np.zeros(n - new, dtype=np.bool_)])
        _model_check(pages, pfns, excl)


def test_a_growing_window_keeps_one_extent_and_at_most_twice_its_pages() -> None:
    """Faults that walk up a long range a batch at a time make one extent that grows into
    room it keeps: the storage is never more than 1 + ROOM times what is used, nothing
    is kept beyond the pages touched, and 2^40 pages cost nothing until touched."""
    pages = SparsePages(1 << 40, excl=True)
    assert pages.host_pages == 0
    for lo in range(0, 1 << 20, 512):
        pages.window(lo, lo + 512).pfns[:] = np.arange(lo, lo + 512)
    assert len(pages.pieces(0, 1 << 40)) == 1
    assert pages.kept == 1 << 20 and pages.host_pages <= (1 + ROOM) << 20
    w = pages.window((1 << 40) - 1, 1 << 40)  # a page at the far end: one granule
    w.pfns[:] = 7
    assert pages.kept == (1 << 20) + GRANULE
    assert pages.count(0, 1 << 40) == (1 << 20) + 1
