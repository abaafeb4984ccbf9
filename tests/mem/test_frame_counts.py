"""FrameCounts against a dense array per frame: random range, run and scattered updates
(whole sections, parts of them, going below zero) and every read, with sections kept
uniform as one value where they can be."""

from __future__ import annotations

import random

import numpy as np
import pytest

from iommulab.mem.pins import SECTION_FRAMES, FrameCounts, PinCounts

_SECTIONS = 3
_FRAMES = _SECTIONS * SECTION_FRAMES


def _random_run(rng: random.Random) -> tuple[int, int]:
    kind = rng.random()
    if kind < 0.35:  # whole sections
        sec = rng.randrange(_SECTIONS)
        n = rng.randrange(1, _SECTIONS - sec + 1)
        return sec * SECTION_FRAMES, n * SECTION_FRAMES
    if kind < 0.6:  # a piece from a section's start or up to its end
        sec = rng.randrange(_SECTIONS)
        n = rng.choice((1, SECTION_FRAMES // 4, SECTION_FRAMES - 1, rng.randrange(1, 5000)))
        return (sec * SECTION_FRAMES, n) if rng.random() < 0.5 else \
            ((sec + 1) * SECTION_FRAMES - n, n)
    pfn = rng.randrange(_FRAMES - 1)
    return pfn, rng.randrange(1, min(70_000, _FRAMES - pfn) + 1)


@pytest.mark.parametrize("seed", range(60))
def test_frame_counts_match_a_dense_array(seed: int) -> None:
    rng = random.Random(seed)
    fc = PinCounts() if seed % 2 else FrameCounts()
    ref = np.zeros(_FRAMES, dtype=np.int64)
    for _ in range(60):
        op = rng.random()
        delta = rng.choice((1, 1, 2, -1, -1, -2))
        if op < 0.4:
            pfn, n = _random_run(rng)
            want_ok = (ref[pfn:pfn + n] + delta >= 0).all()
            try:
                fc.add_range(pfn, n, delta)
                assert want_ok
                ref[pfn:pfn + n] += delta
            except ValueError:
                assert not want_ok
        elif op < 0.7:
            runs = sorted({_random_run(rng) for _ in range(rng.randrange(1, 4))})
            covered = np.zeros(_FRAMES, dtype=np.int64)
            for pfn, n in runs:
                covered[pfn:pfn + n] += 1
            if (covered > 1).any():  # the runs of one call are distinct frames
                continue
            want_ok = (ref + delta * covered >= 0).all()
            try:
                zeros = fc.add_runs(runs, delta)
                assert want_ok
                ref += delta * covered
                if delta < 0:
                    want = np.flatnonzero((covered > 0) & (ref == 0))
                    assert sorted(zeros.tolist()) == want.tolist()
            except ValueError:
                assert not want_ok
        else:
            pfns = np.array(sorted(rng.sample(range(_FRAMES), rng.randrange(1, 3000))),
                            dtype=np.int64)
            if rng.random() < 0.3:  # a long run: the run path of add
                lo = rng.randrange(_FRAMES - 40_000)
                pfns = np.arange(lo, lo + 40_000, dtype=np.int64)
            want_ok = (ref[pfns] + delta >= 0).all()
            try:
                zeros = fc.add(pfns, delta)
                assert want_ok
                ref[pfns] += delta
                if delta < 0:
                    assert sorted(zeros.tolist()) == pfns[ref[pfns] == 0].tolist()
            except ValueError:
                assert not want_ok
        fc._check()
        assert fc.total == int(ref.sum())
        assert fc.nonzero_frames == int(np.count_nonzero(ref))
        assert fc.nonzero().tolist() == np.flatnonzero(ref).tolist()
        pfn, n = _random_run(rng)
        assert fc.range(pfn, n).tolist() == ref[pfn:pfn + n].tolist()
        assert fc.nonzero_in(pfn, n).tolist() == (np.flatnonzero(ref[pfn:pfn + n])
                                                  + pfn).tolist()
        pfns = np.array(sorted(rng.sample(range(_FRAMES), 500)), dtype=np.int64)
        assert fc.get(pfns).tolist() == ref[pfns].tolist()
        if isinstance(fc, PinCounts):
            p = rng.randrange(_FRAMES)
            assert fc.count(p) == ref[p]
            assert fc.counts(pfn, n).tolist() == ref[pfn:pfn + n].tolist()


def test_whole_sections_cost_no_array() -> None:
    """A TiB pinned by whole sections, or by quarter sections in order, is kept as one
    value per section; unpinned, nothing is left."""
    fc = PinCounts()
    tib = (1 << 40) >> 12
    fc.add_runs([(0, tib)], 1)
    assert fc.model_bytes() < 1 << 20 and fc.pins == tib
    for pfn in range(tib, tib + 8 * SECTION_FRAMES, SECTION_FRAMES // 4):
        fc.pin(pfn, SECTION_FRAMES // 4)
    assert fc.model_bytes() < 1 << 20 and fc.count(tib + 5) == 1
    fc.pin(7, 3)  # part of a uniform section: an array again
    assert fc.counts(5, 6).tolist() == [1, 1, 2, 2, 2, 1]
    fc.unpin(7, 3)
    fc._check()
    assert fc.model_bytes() < 1 << 20
    fc.add_runs([(0, tib + 8 * SECTION_FRAMES)], -1)
    assert fc.pins == 0 and fc.model_bytes() == 0
    fc._check()
