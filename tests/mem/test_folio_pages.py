"""FolioPages (a hugetlb VMA's pages, kept a folio at a time) and ThpPages (a THP VMA's,
its whole folios kept a folio at a time) answer as SparsePages does for the same
writes, and an mm whose hugetlb and THP VMAs use them gives the same pfns, pins,
exclusivity, fork and copy-on-write results and errors as one whose VMAs keep a pfn
per 4K page."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from iommulab.errors import KernelError
from iommulab.mem import PhysMem, vma
from iommulab.mem.mm import MmStruct
from iommulab.mem.pins import pfn_runs
from iommulab.mem.sparse import GRANULE, FolioPages, SparsePages, ThpPages
from iommulab.mem.vma import PAGE_SHIFT

ORDER = 2
PER = 1 << ORDER


def _same(f: FolioPages, s: SparsePages, lo: int, hi: int) -> None:
    f._check()
    s._check()
    n = f.npages
    assert f.npages == s.npages
    assert (f.get(0, n) == s.get(0, n)).all()
    assert (f.get_excl(0, n) == s.get_excl(0, n)).all()
    for a, b in ((f.present(), s.present()), (f.present(lo, hi), s.present(lo, hi))):
        assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
    assert f.count(lo, hi) == s.count(lo, hi) and f.count(0, n) == s.count(0, n)
    for excl in (False, True):
        assert f.first_unset(lo, hi, excl=excl) == s.first_unset(lo, hi, excl=excl)
    dense = np.full(max(0, hi - lo), -1, dtype=np.int64)
    for ext in f.pieces(lo, hi):  # read-only copies that say what get() says
        assert lo <= ext.lo <= ext.hi <= hi and not ext.pfns.flags.writeable
        dense[ext.lo - lo:ext.hi - lo] = ext.pfns
    assert (dense == s.get(lo, hi)).all()
    idx, pfns = s.present()
    if len(idx):
        assert (f.gather(idx) == pfns).all()
        assert (f.gather_excl(idx) == s.gather_excl(idx)).all()
    starts, heads = f.folio_slots(lo, hi)
    assert not (starts % PER).any() and (f.gather(starts) == heads).all()
    at = s.first_unset(lo, hi, excl=False)
    if at > lo:  # pages [lo, at) all present: the runs GUP pins
        assert f.runs(lo, at) == pfn_runs(s.get(lo, at))


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 40), st.integers(0, 3), st.data())
def test_folio_pages_agree_with_sparse_pages(slots: int, phase: int, data: Any) -> None:
    """Random sequences of whole-folio sets, clears, flag changes, copies, slices and
    resizes: every read of FolioPages equals SparsePages's after the same writes."""
    n = slots * PER
    f = FolioPages(n, ORDER, phase=phase * PER)
    s = SparsePages(n, excl=True, phase=phase * PER)
    for _ in range(data.draw(st.integers(1, 12))):
        op = data.draw(st.sampled_from(["set", "put", "clear", "flag", "copy", "slice",
                                        "resize"]))
        a = data.draw(st.integers(0, f.npages // PER))
        b = data.draw(st.integers(a, f.npages // PER))
        if op in ("set", "put") and b > a:
            heads = np.array([data.draw(st.integers(0, 1 << 12)) * PER for _ in range(b - a)],
                             dtype=np.int64)
            flags = np.array([data.draw(st.booleans()) for _ in range(b - a)])
            pfns = (heads[:, None] + np.arange(PER)).ravel()
            excl = np.repeat(flags, PER)
            w = s.window(a * PER, b * PER)
            assert w.excl is not None
            w.pfns[:] = pfns
            w.excl[:] = excl
            if op == "set":
                f.scatter(np.arange(a * PER, b * PER, dtype=np.int64), pfns, excl)
            else:
                f.put(np.arange(a, b, dtype=np.int64) * PER, heads, flags)
        elif op == "clear":
            idx, _ = s.present(a * PER, b * PER)
            s.scatter(idx, -1, False)
            f.put(np.unique(idx // PER) * PER, -1)
        elif op == "flag":
            flag = data.draw(st.booleans())
            idx, _ = s.present(a * PER, b * PER)
            s.scatter(idx, None, flag)
            f.put(np.unique(idx // PER) * PER, None, flag)
        elif op == "copy":
            f, s = f.copy(), s.copy()
        elif op == "slice":
            piece = f.slice(a * PER, b * PER)
            assert isinstance(piece, FolioPages)
            f, s = piece, s.slice(a * PER, b * PER)
        elif op == "resize":
            f.resize(b * PER)
            s.resize(b * PER)
        lo = data.draw(st.integers(0, f.npages))
        _same(f, s, lo, data.draw(st.integers(lo, f.npages)))


def test_a_cut_inside_a_folio_gives_per_page_storage() -> None:
    """Not hugetlb's (munmap and mprotect refuse the cut), but a caller that cuts gets
    the pages as they are."""
    f = FolioPages(4 * PER, ORDER)
    f.put(np.array([0, 2 * PER]), np.array([8 * PER, 3 * PER]), np.array([True, False]))
    for lo, hi in ((1, 3 * PER), (0, PER + 1), (PER, 3 * PER + 2)):
        piece = f.slice(lo, hi)
        assert isinstance(piece, SparsePages)
        piece._check()
        assert (piece.get(0, hi - lo) == f.get(lo, hi)).all()
        assert (piece.get_excl(0, hi - lo) == f.get_excl(lo, hi)).all()


def test_folio_pages_refuse_a_window_and_part_folios() -> None:
    f = FolioPages(4 * PER, ORDER)
    with pytest.raises(TypeError, match="put"):
        f.window(0, PER)
    with pytest.raises(AssertionError, match="whole folios"):
        f.scatter(np.arange(1, PER + 1, dtype=np.int64), 8)


# -- mm level: the same process with hugetlb pages kept per 4K page --------------------------------
def _state(mm: MmStruct) -> list[Any]:
    mm._check()
    out: list[Any] = [mm.pinned_pages, mm.mem.pins.pins, mm.mem.frames.free_frames]
    for v in mm.vmas:
        out += [v.start, v.end, sorted(v.folios), v.pfns().tolist(), v.excl().tolist()]
    return out


def _run(steps: list[tuple[str, int, int]], folio: bool, backing: str = "hugetlb-2M",
         fragment: float = 0.0, arm: tuple[int, int] | None = None) -> list[Any]:
    """The steps on a fresh machine, the hugetlb VMAs kept a folio at a time or not:
    every observable after each step (a step's errno included)."""
    vma.FOLIO_PAGES = folio
    try:
        mem = PhysMem("64M")
        if fragment:
            mem.fragment(order=9, fraction=fragment)
        mm = MmStruct(mem)
        huge = 1 << 21
        va = mm.mmap(8 * huge, backing)
        procs = [mm]
        held: list[tuple[MmStruct, Any]] = []
        log: list[Any] = []
        mem.fail_nth.log = []  # every allocation point reached, in order
        for step, (op, x, y) in enumerate(steps):
            if arm is not None and arm[0] == step:
                mem.fail_nth.arm(arm[1])
            p = procs[x % len(procs)]
            addr = va + (y % (8 << 9) << PAGE_SHIFT)
            try:
                if op == "write":
                    p.write(addr, b"w")
                elif op == "pin":
                    held.append((p, p.pin_user_pages(addr, 1 + x % 700, True)))
                elif op == "pin_runs":
                    held.append((p, p.pin_user_page_runs(addr, 1 + x % 1300, x % 2 == 0)))
                elif op == "unpin" and held:
                    q, got = held.pop(x % len(held))
                    if isinstance(got, list):
                        q.unpin_user_page_runs(got)
                    else:
                        q.unpin_user_pages(got)
                elif op == "fork" and len(procs) < 4:
                    procs.append(p.fork())
                elif op == "munmap":
                    p.munmap(va + (y % 8) * huge, (1 + x % 3) * huge)
                elif op == "munmap_cut":  # hugetlb: not whole huge pages, EINVAL
                    p.munmap(addr, 4096 * (1 + x % 600))
                elif op == "gup_fast":
                    log.append(p.gup_fast(addr, 1 + x % 2000, True))
                log.append(("ok", op))
            except KernelError as err:
                log.append((type(err).__name__, err.errno, str(err)))
            if arm is not None and arm[0] == step:
                log.append(("triggered", mem.fail_nth.triggered))
            mem.fail_nth.disarm()
            log.append((mem.fail_nth.fired, list(mem.fail_nth.log)))
            log.append([_state(q) for q in procs])
        for q, got in held:
            if isinstance(got, list):
                q.unpin_user_page_runs(got)
            else:
                q.unpin_user_pages(got)
        for q in procs:
            q.close()
        assert mem.pins.pins == 0 and mem.anon.maps.total == 0
        log.append(mem.frames.free_frames)
        return log
    finally:
        vma.FOLIO_PAGES = True


_OPS = st.sampled_from(["write", "pin", "pin_runs", "unpin", "fork", "munmap", "munmap_cut",
                        "gup_fast"])


@settings(max_examples=40, deadline=None)
@example([("pin", 600, 700), ("fork", 0, 0), ("write", 1, 5), ("write", 0, 5),
          ("write", 1, 3000), ("pin_runs", 1201, 1), ("fork", 1, 0), ("gup_fast", 1999, 0),
          ("munmap_cut", 0, 9), ("munmap", 1, 3), ("unpin", 0, 0), ("write", 0, 700)])
@given(st.lists(st.tuples(_OPS, st.integers(0, 5000), st.integers(0, 1 << 13)), max_size=12))
def test_hugetlb_folio_store_is_invisible_to_the_mm(steps: list[tuple[str, int, int]]) -> None:
    """Writes (copy on write after fork), pins and pin runs (unsharing), forks of pinned
    huge pages (copied whole for the child), munmaps whole and cut: the same pfns, pins,
    flags, folios, free frames and errors with either storage."""
    assert _run(steps, True) == _run(steps, False)


def test_hugetlb_folio_store_costs_per_folio() -> None:
    """A 1G hugetlb mapping's pages cost their folios' slots, not 9 bytes per 4K page."""
    mem = PhysMem("4G")
    mm = MmStruct(mem)
    va = mm.mmap(2 << 30, "hugetlb-1G")
    v = mm.find_vma(va)
    assert v is not None and isinstance(v.pages, FolioPages)
    assert v.pages.count(0, v.npages) == v.npages and v.pages.model_bytes() <= 2 * 9
    runs = mm.pin_user_page_runs(va + 4096, v.npages - 2, True)
    assert sum(n for _, n in runs) == v.npages - 2 and v.pages.model_bytes() <= 2 * 9
    mm.unpin_user_page_runs(runs)
    mm.close()


@settings(max_examples=40, deadline=None)
@example([("write", 0, 5), ("pin", 600, 700), ("munmap_cut", 0, 1000), ("fork", 0, 0),
          ("write", 1, 5), ("write", 0, 2000), ("pin_runs", 1201, 3), ("gup_fast", 1999, 0),
          ("unpin", 0, 0), ("write", 0, 700)], 0.0)
@given(st.lists(st.tuples(_OPS, st.integers(0, 5000), st.integers(0, 1 << 13)), max_size=12),
       st.sampled_from([0.0, 0.5]))
def test_thp_folio_store_is_invisible_to_the_mm(steps: list[tuple[str, int, int]],
                                                fragment: float) -> None:
    """The same on THP (whole folios, or 4K pages where the host is fragmented), with
    cuts through folios, forks, copies on write and unaligned pins."""
    assert _run(steps, True, "thp", fragment) == _run(steps, False, "thp", fragment)


def _same_thp(t: ThpPages, s: SparsePages, lo: int, hi: int) -> None:
    t._check()
    s._check()
    n = t.npages
    assert n == s.npages
    assert (t.get(0, n) == s.get(0, n)).all() and (t.get_excl(0, n) == s.get_excl(0, n)).all()
    for a, b in ((t.present(), s.present()), (t.present(lo, hi), s.present(lo, hi))):
        assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
    assert t.count(lo, hi) == s.count(lo, hi)
    for excl in (False, True):
        assert t.first_unset(lo, hi, excl=excl) == s.first_unset(lo, hi, excl=excl)
    dense = np.full(max(0, hi - lo), -1, dtype=np.int64)
    prev = lo
    for ext in t.pieces(lo, hi):
        assert prev <= ext.lo <= ext.hi <= hi
        prev = ext.hi
        dense[ext.lo - lo:ext.hi - lo] = ext.pfns
    assert (dense == s.get(lo, hi)).all()
    idx, pfns = s.present()
    if len(idx):
        assert (t.gather(idx) == pfns).all() and (t.gather_excl(idx) == s.gather_excl(idx)).all()
    for seg_lo, seg_hi, view in t.segments(lo, hi):
        if view is None:
            assert t.folio_runs(seg_lo, seg_hi) == pfn_runs(s.get(seg_lo, seg_hi))


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 5 * GRANULE), st.integers(0, GRANULE - 1), st.data())
def test_thp_pages_agree_with_sparse_pages(n: int, phase: int, data: Any) -> None:
    """Random sequences of whole-folio puts, windows written page by page (which
    unfold the folios there), flag scatters, copies, slices anywhere and resizes: every
    read of ThpPages equals SparsePages's after the same writes."""
    t = ThpPages(n, 9, phase=phase)
    s = SparsePages(n, excl=True, phase=phase)
    per = GRANULE
    for _ in range(data.draw(st.integers(1, 10))):
        op = data.draw(st.sampled_from(["fold", "fold", "window", "flag", "flag_folio",
                                        "copy", "slice", "resize"]))
        off = -(t.phase) % per
        slots = max(0, (t.npages - off) // per)
        if op == "fold" and slots:
            k = data.draw(st.integers(0, slots - 1))
            start = off + k * per
            head = data.draw(st.integers(0, 1 << 10)) * per
            flag = data.draw(st.booleans())
            t.put(np.array([start], dtype=np.int64), np.array([head]), np.array([flag]))
            w = s.window(start, start + per)
            assert w.excl is not None
            w.pfns[:] = head + np.arange(per)
            w.excl[:] = flag
        elif op == "window" and t.npages:
            lo = data.draw(st.integers(0, t.npages - 1))
            hi = data.draw(st.integers(lo + 1, min(t.npages, lo + 700)))
            vals = np.array([data.draw(st.sampled_from([-1, 7, 1 << 20])) for _ in range(3)])
            pfns = np.resize(vals, hi - lo)
            pfns[pfns >= 0] += np.arange(hi - lo)[pfns >= 0]
            for store in (t, s):
                w = store.window(lo, hi)
                assert w.excl is not None
                w.pfns[:] = pfns
                w.excl[:] = pfns >= 0
        elif op == "flag":
            idx, _ = s.present()
            idx = idx[::3]
            flag = data.draw(st.booleans())
            t.scatter(idx, None, flag)
            s.scatter(idx, None, flag)
        elif op == "flag_folio":
            starts, _ = t.folio_slots()
            if len(starts):
                flag = data.draw(st.booleans())
                t.put(starts[:1], None, flag)
                s.scatter(int(starts[0]) + np.arange(per, dtype=np.int64), None, flag)
        elif op == "copy":
            t, s = t.copy(), s.copy()
        elif op == "slice":
            lo = data.draw(st.integers(0, t.npages))
            hi = data.draw(st.integers(lo, t.npages))
            t, s = t.slice(lo, hi), s.slice(lo, hi)
        elif op == "resize":
            m = data.draw(st.integers(0, 5 * GRANULE))
            t.resize(m)
            s.resize(m)
        lo = data.draw(st.integers(0, t.npages))
        _same_thp(t, s, lo, data.draw(st.integers(lo, t.npages)))


def test_thp_store_keeps_whole_folios_a_folio_at_a_time() -> None:
    """An unaligned pin of a THP mapping: its folios cost their slots; a cut through one
    unfolds only that one; a fork while they are pinned unfolds them (copied for the
    child page by page), one after the unpin keeps them whole on both sides."""
    mem = PhysMem("1G")
    mm = MmStruct(mem)
    va = mm.mmap(256 << 20, "thp")
    runs = mm.pin_user_page_runs(va + 5 * 4096, 60000, True)
    v = mm.find_vma(va)
    assert v is not None and isinstance(v.pages, ThpPages)
    assert v.pages.count(0, v.npages) == 118 * GRANULE and v.pages._pages.kept == 0
    assert v.pages.model_bytes() < 2000
    mm.munmap(va + (10 << 21) + 4096, 4096)  # a cut through the 11th folio
    kept = [w.pages._pages.kept for w in mm.vmas if isinstance(w.pages, ThpPages)]
    assert kept == [1, GRANULE - 2]  # the cut folio's pages either side, page by page
    child = mm.fork()
    assert all(isinstance(w.pages, ThpPages) and not w.pages.folio_slots()[0].size
               for w in mm.vmas + child.vmas)
    child.close()
    mm._check()
    mm.unpin_user_page_runs(runs)
    va2 = mm.mmap(64 << 21, "thp", populate=True)
    mm.has_pinned = False  # lab: as if never pinned, so the fork shares every folio
    child = mm.fork()
    for proc in (mm, child):
        w = proc.find_vma(va2)
        assert w is not None and isinstance(w.pages, ThpPages) and w.pages._pages.kept == 0
        assert len(w.pages.folio_slots()[0]) == 64 and not w.excl().any()
        proc._check()
    child.close()
    mm.close()
    assert mem.pins.pins == 0 and mem.anon.maps.total == 0


@pytest.mark.parametrize("backing", ["hugetlb-2M", "thp"])
def test_fail_nth_sweep_is_the_same_with_either_store(backing: str) -> None:
    """Each allocation of a fork of pinned memory, a copy on write and a pin after it
    failed in turn (``fail_nth`` n = 1, 2, ... at each step until nothing fails): the
    same sites, errnos, pfns, pins and state afterwards with either storage."""
    steps = [("pin", 600, 700), ("write", 0, 2000), ("fork", 0, 0), ("write", 1, 5),
             ("pin_runs", 1201, 3), ("write", 0, 5), ("munmap_cut", 1, 1500)]
    fired = 0
    for step in range(len(steps)):
        for nth in range(1, 40):
            got = _run(steps, True, backing, 0.0, (step, nth))
            assert got == _run(steps, False, backing, 0.0, (step, nth)), (step, nth)
            if ("triggered", True) not in got:  # past the step's last allocation point
                break
            fired += 1
    assert fired >= (2 if backing.startswith("hugetlb") else 6), fired
