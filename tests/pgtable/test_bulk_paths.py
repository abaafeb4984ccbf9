"""Bulk page-table passes against the per-table-page reference (issue 22).

Two tables of the same configuration, one with :attr:`IoPgtable.bulk_passes` and one
without, run the same random map / unmap / hardware-write / dirty-scan sequence
(4K runs across table pages, 2M blocks, holes, scans that start and end inside
tables); after every step the PTEs of every table (so also which frames the tables
got), the TLB calls, the statistics, the errno and the dirty records must agree.
A fail-nth sweep over a bulk map checks that a failing allocation leaves the same
state in both.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iommulab import Prot
from iommulab.drivers.mock_pt import MOCK_IOMMUPT_HUGE, HwptSelftest, mock_domain_alloc_pgtable
from iommulab.drivers.vtd import IntelIommu, VtdHw
from iommulab.errors import KernelError
from iommulab.kernel import LINUX_6_12, LINUX_7_0
from iommulab.mem import PhysMem
from iommulab.pgtable import IoPgtable, IoPgtableCfg, IoPgtableFmt, Quirk, alloc_io_pgtable_ops
from iommulab.pgtable.format import BoolArray
from iommulab.sizes import SZ_1G, SZ_2M, SZ_4K
from iommulab.testing import RecordingTlb

RW = Prot.READ | Prot.WRITE
SPAN = 3 * SZ_1G  # the IOVA space the sequences use: three level-2 tables
_DBM, _RDONLY = np.uint64(1 << 51), np.uint64(1 << 7)


class _Recorder:
    """A DirtyRecorder keeping every recorded page (as iommu_dirty_bitmap_record would
    set bits) and the widest range, as a gather would."""

    def __init__(self) -> None:
        self.pages: set[tuple[int, int]] = set()
        self.span: tuple[int, int] | None = None

    def record_run(self, iova: int, size: int, hit: BoolArray) -> None:
        for i in np.flatnonzero(hit).tolist():
            self.pages.add((iova + i * size, size))
        pos = np.flatnonzero(hit)
        if len(pos):
            lo, hi = iova + int(pos[0]) * size, iova + (int(pos[-1]) + 1) * size
            old = self.span or (lo, hi)
            self.span = (min(old[0], lo), max(old[1], hi))


class _Gather:
    queued = False


def _pair(kernel: Any = LINUX_7_0, *, ias: int = 48, ram: str = "1G",
          quirks: Quirk = Quirk.ARM_HD) -> tuple[tuple[IoPgtable, RecordingTlb], ...]:
    """The per-table reference and the bulk table, alike otherwise."""
    out = []
    for bulk in (False, True):
        tlb = RecordingTlb(cookie := object())
        cfg = IoPgtableCfg(SZ_4K | SZ_2M | SZ_1G, ias, 48, quirks=quirks, tlb=tlb,
                           kernel=kernel)
        ops = alloc_io_pgtable_ops(IoPgtableFmt.ARM_64_LPAE_S1, cfg, cookie,
                                   mem=PhysMem(ram))
        ops.bulk_passes = bulk
        out.append((ops, tlb))
    return tuple(out)


def _core_map(ops: IoPgtable, iova: int, pa: int, pgsize: int, count: int) -> tuple[int, Any]:
    """``__iommu_map``'s loop at one page size: bytes mapped and the errno, if any."""
    done = 0
    try:
        while done < count * pgsize:
            done += ops.map_pages_run(iova + done, pa + done, pgsize, count - done // pgsize, RW)
    except KernelError as err:
        return done + err.mapped, (type(err), str(err))
    return done, None


def _core_unmap(ops: IoPgtable, iova: int, pgsize: int, count: int) -> int:
    done = 0
    while done < count * pgsize:
        k = ops.unmap_pages(iova + done, pgsize, count - done // pgsize, _Gather())
        if not k:
            break
        done += k
    return done


def _hw_writes(ops: IoPgtable, seed: int, frac: float) -> None:
    """HTTU after DMA writes: AP[2] cleared on a random ``frac`` of the DBM leaves (the
    same ones in both tables, whose tables are visited in the same order)."""
    rng = np.random.default_rng(seed)
    for _, table in ops._iter_tables():
        pick = (rng.random(len(table)) < frac) & ((table & _DBM) != 0)
        table[pick] &= ~_RDONLY


def _same(a: tuple[IoPgtable, RecordingTlb], b: tuple[IoPgtable, RecordingTlb]) -> None:
    (ra, ta), (rb, tb) = a, b
    assert ra.iter_entries() == rb.iter_entries()
    assert ta.calls == tb.calls
    assert dataclasses.asdict(ra.stats) == dataclasses.asdict(rb.stats)
    assert ra.mem.frames.free_frames == rb.mem.frames.free_frames
    rb._check()


_op = st.one_of(
    st.tuples(st.just("map4k"), st.integers(0, SPAN // SZ_4K - 1), st.integers(1, 1600),
              st.integers(0, 3)),
    st.tuples(st.just("map2m"), st.integers(0, SPAN // SZ_2M - 1), st.integers(1, 600),
              st.just(0)),
    st.tuples(st.just("unmap4k"), st.integers(0, SPAN // SZ_4K - 1), st.integers(1, 1600),
              st.just(0)),
    st.tuples(st.just("unmap2m"), st.integers(0, SPAN // SZ_2M - 1), st.integers(1, 600),
              st.just(0)),
    st.tuples(st.just("write"), st.integers(0, 1000), st.sampled_from([0.0, 0.01, 0.5, 1.0]),
              st.just(0)),
    st.tuples(st.just("dirty"), st.integers(0, SPAN // SZ_4K - 1), st.integers(1, 2000),
              st.integers(0, 1)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_op, min_size=1, max_size=12), st.sampled_from([LINUX_6_12, LINUX_7_0]))
def test_bulk_passes_match_the_per_table_code(steps: list[tuple[str, Any, Any, int]],
                                              kernel: Any) -> None:
    ref, bulk = _pair(kernel)
    for kind, at, n, extra in steps:
        results: list[Any] = []
        for ops, _ in (ref, bulk):
            if kind == "map4k":  # extra: 0 aligned run; else a start inside a table
                iova = (at * SZ_4K) & ~(SZ_2M - 1) if extra == 0 else at * SZ_4K
                n = min(n, (SPAN - iova) // SZ_4K)
                results.append(_core_map(ops, iova, 0x4000_1000 + iova, SZ_4K, n))
            elif kind == "map2m":
                n = min(n, SPAN // SZ_2M - at)
                results.append(_core_map(ops, at * SZ_2M, 0x4000_0000, SZ_2M, n))
            elif kind == "unmap4k":
                results.append(_core_unmap(ops, at * SZ_4K, SZ_4K,
                                           min(n, SPAN // SZ_4K - at)))
            elif kind == "unmap2m":
                results.append(_core_unmap(ops, at * SZ_2M, SZ_2M,
                                           min(n, SPAN // SZ_2M - at)))
            elif kind == "write":
                _hw_writes(ops, at, n)
            else:
                rec = _Recorder()
                err = None
                try:
                    ops.read_and_clear_dirty(at * SZ_4K, n * SZ_4K * 512 ** extra, 0, rec)
                except KernelError as e:
                    err = (type(e), str(e))
                results.append((sorted(rec.pages), rec.span, err))
        assert results[0] == results[1] if results else True
        _same(ref, bulk)


def test_bulk_map_and_scan_of_whole_tables() -> None:
    """A 4K run over two 1G tables from inside a leaf table: the bulk path is taken
    (one alloc of many tables) and every result is the reference's."""
    ref, bulk = _pair()
    for ops, _ in (ref, bulk):
        assert _core_map(ops, 0x5000, 0x4000_5000, SZ_4K, 2 * 512 * 512) == (
            2 * SZ_1G, None)
        assert ops.stats.map_pages == 1025  # one per table page the run touches
        _hw_writes(ops, 7, 0.3)
    _same(ref, bulk)
    # the bulk path ran: its leaf tables are rows of a few arrays, the reference's not
    assert len({id(t.base) for t in bulk[0]._tables.values()}) < 10
    assert len({id(t.base) for t in ref[0]._tables.values()}) > 1000
    recs = []
    for ops, _ in (ref, bulk):
        rec = _Recorder()
        ops.read_and_clear_dirty(0x7000, 2 * SZ_1G - 0x3000, 0, rec)
        recs.append((rec.pages, rec.span))
    assert recs[0] == recs[1] and recs[0][0]
    _same(ref, bulk)


def test_fail_nth_in_a_bulk_map_leaves_the_reference_state() -> None:
    """Fail the n-th allocation of a bulk map, n = 1, 2, ... until none fails: the
    errno, the bytes mapped and the whole state are the per-table code's."""
    n = 1
    while True:
        ref, bulk = _pair()
        out = []
        for ops, _ in (ref, bulk):
            _core_map(ops, 0, 0x4000_0000, SZ_2M, 1)  # a block in the way of nothing
            ops.mem.fail_nth.load(n)
            out.append(_core_map(ops, SZ_1G - SZ_2M, 0x4000_1000, SZ_4K, 1200))
        assert out[0] == out[1]
        _same(ref, bulk)
        if out[0][1] is None:
            break
        n += 1
    assert n > 3


def _domains(kind: str) -> list[tuple[Any, IoPgtable]]:
    """The same domain twice, reference then bulk: VT-d second stage under 6.12 (its own
    ``__domain_mapping``) and 7.0 (generic_pt), and the 7.0 iommufd mock (AMDv1)."""
    out = []
    for bulk in (False, True):
        mem = PhysMem("256M")
        if kind == "mock":
            d = mock_domain_alloc_pgtable(mem, HwptSelftest(0, MOCK_IOMMUPT_HUGE), True,
                                          LINUX_7_0)
        else:
            drv = IntelIommu(VtdHw(mem, aw=48), kernel=LINUX_6_12 if kind == "vtd612"
                             else LINUX_7_0)
            master = drv.probe_device(0x10)
            d = drv.domain_alloc_paging(master)
            drv.attach_dev(d, master)
        pgtbl = d.pgtbl if kind != "mock" else d.ops.pgtbl  # type: ignore[union-attr]
        assert isinstance(pgtbl, IoPgtable)
        pgtbl.bulk_passes = bulk
        out.append((d, pgtbl))
    return out


def _same_domains(a: tuple[Any, IoPgtable], b: tuple[Any, IoPgtable]) -> None:
    assert a[1].iter_entries() == b[1].iter_entries()
    assert dataclasses.asdict(a[1].stats) == dataclasses.asdict(b[1].stats)
    assert dataclasses.asdict(a[0].tlb_stats) == dataclasses.asdict(b[0].tlb_stats)
    assert a[1].mem.fail_nth.calls == b[1].mem.fail_nth.calls
    b[1]._check()


_dop = st.tuples(st.sampled_from(["map", "unmap"]), st.integers(0, 3 * 512 - 1),
                 st.integers(1, 1600), st.sampled_from([0, SZ_4K, SZ_2M]))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["vtd612", "vtd70", "mock"]), st.lists(_dop, min_size=1, max_size=8))
def test_other_formats_bulk_map_matches(kind: str, steps: list[tuple[str, int, int, int]]
                                        ) -> None:
    pair = _domains(kind)
    for op, at, n, pa_shift in steps:
        iova = at * SZ_2M // 4 if at % 3 else at * SZ_2M  # some runs start inside a table
        outs: list[Any] = []
        for d, _ in pair:
            try:
                if op == "map":
                    d.map(iova, 0x4000_0000 + pa_shift, n * SZ_4K, RW)
                    outs.append(None)
                else:
                    outs.append(d.unmap(iova, n * SZ_4K))
            except KernelError as err:
                outs.append((type(err), str(err)))
        assert outs[0] == outs[1]
        _same_domains(*pair)


def test_fail_nth_in_a_bulk_map_of_vtd() -> None:
    """The fail-nth sweep of a VT-d bulk map (6.12's __domain_mapping, 7.0's
    generic_pt): errno, fail-nth calls and state are the per-table code's."""
    for kind in ("vtd612", "vtd70"):
        n = 1
        while True:
            pair = _domains(kind)
            outs: list[Any] = []
            for d, pg in pair:
                pg.mem.fail_nth.load(n)
                try:
                    d.map(SZ_1G - SZ_4K, 0x4000_1000, 3 * SZ_2M, RW)
                    outs.append(None)
                except KernelError as err:
                    outs.append((type(err), str(err)))
            assert outs[0] == outs[1]
            _same_domains(*pair)
            if outs[0] is None:
                break
            n += 1
        assert n > 3


def test_a_bulk_run_past_the_ias_stops_where_the_calls_do() -> None:
    """A 4K run that leaves a 32-bit IAS: the per-table calls map up to 4G and the next
    one is ERANGE; the bulk run stops at the same place with the same error."""
    outs = []
    for ops, tlb in _pair(ias=32, quirks=Quirk(0)):
        got = _core_map(ops, (1 << 32) - 3 * 512 * SZ_4K - SZ_4K, 0x4000_0000, SZ_4K, 5 * 512)
        assert got[0] == 3 * 512 * SZ_4K + SZ_4K and got[1] is not None
        assert "outside ias 32" in got[1][1]
        outs.append((got, ops.iter_entries(), dataclasses.asdict(ops.stats), tlb.calls))
    assert outs[0] == outs[1]


def test_running_out_of_frames_in_a_bulk_map_is_the_reference_enomem() -> None:
    """Too few free frames for the tables a bulk run wants: the run goes table by
    table and fails with ENOMEM where the per-table calls do, with the same state."""
    outs = []
    for ops, tlb in _pair(ram="1M", quirks=Quirk(0)):
        got = _core_map(ops, 0, 0x4000_0000, SZ_4K, 400 * 512)
        assert got[1] is not None and "ENOMEM" in got[1][1]
        outs.append((got, ops.iter_entries(), dataclasses.asdict(ops.stats), tlb.calls,
                     ops.mem.frames.free_frames))
    assert outs[0] == outs[1]
