"""The chunked split and merge (pgtable/reshape.py, ``CHUNKED``) against the whole-range
reference passes: same tables bit for bit, invalidations, stats, errnos and fail-nth
points, over random layouts and chunk sizes."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iommulab import Prot
from iommulab.errors import KernelError
from iommulab.iommu import IommuDirtyBitmap, IovaBitmap
from iommulab.kernel import LINUX_7_0
from iommulab.mem import PhysMem
from iommulab.pgtable import (
    IoPgtable,
    IoPgtableCfg,
    IoPgtableFmt,
    Quirk,
    alloc_io_pgtable_ops,
    reshape,
)
from iommulab.sizes import SZ_1G, SZ_2M, SZ_4K
from iommulab.testing import RecordingTlb

RW = Prot.READ | Prot.WRITE
S1, S2 = IoPgtableFmt.ARM_64_LPAE_S1, IoPgtableFmt.ARM_64_LPAE_S2
PTE_AP_RDONLY = 1 << 7
SPAN = 8 * SZ_1G  # the IOVA the layouts use


@contextmanager
def _mode(chunked: bool, tables_per_chunk: int) -> Iterator[None]:
    saved = reshape.CHUNKED, reshape._CHUNK_ENTRIES, reshape._STEP_ENTRIES
    reshape.CHUNKED = chunked
    reshape._CHUNK_ENTRIES = tables_per_chunk * 512
    reshape._STEP_ENTRIES = max(1, tables_per_chunk // 2) * 512
    try:
        yield
    finally:
        reshape.CHUNKED, reshape._CHUNK_ENTRIES, reshape._STEP_ENTRIES = saved


def _ops(fmt: IoPgtableFmt, coherent: bool) -> tuple[IoPgtable, RecordingTlb]:
    tlb = RecordingTlb(cookie := object())
    quirks = Quirk.NO_WARN | (Quirk.ARM_HD if fmt == S1 else Quirk(0))
    cfg = IoPgtableCfg(SZ_4K | SZ_2M | SZ_1G, 48, 48, quirks=quirks, coherent_walk=coherent,
                       tlb=tlb, kernel=LINUX_7_0)
    return alloc_io_pgtable_ops(fmt, cfg, cookie, mem=PhysMem("16G")), tlb


def _write(ops: IoPgtable, iova: int) -> None:
    """HTTU's dirty update of the leaf mapping ``iova`` (no-op where unmapped)."""
    walk = ops.pgtable_walk(iova)
    if not walk or not ops.iova_to_phys(iova):
        return
    table_pa = ops.pgd_pa if len(walk) == 1 else ops.format.table_pa(walk[-2])
    level = ops.format.levels[len(walk) - 1]
    pa = table_pa + ((iova >> level.shift) & level.index_mask) * 8
    ops.mem.write_u64(pa, ops.mem.read_u64(pa) & ~PTE_AP_RDONLY)


def _state(ops: IoPgtable, tlb: RecordingTlb) -> tuple[Any, ...]:
    mem = ops.mem
    return (ops.iter_entries(), copy.deepcopy(ops.stats), list(tlb.calls), mem.iommu_pages,
            mem.frames.free_frames, sorted(mem.frames._allocated.items()), mem.fail_nth.calls,
            sorted(mem.contents.pfns()))


_Op = tuple[str, int, int, int]  # kind, slot, length in slots, flag


def _run(fmt: IoPgtableFmt, coherent: bool, layout: list[tuple[int, int, bool, bool]],
         ops_list: list[_Op], nth: int) -> list[Any]:
    ops, tlb = _ops(fmt, coherent)
    for slot, size, writable, dirty in layout:
        iova = slot * SZ_1G
        if size == SZ_4K:  # a 2M run mapped as pages
            ops.map_pages_run(iova, 4 * SZ_1G + iova, SZ_4K, 512, RW)
        else:
            ops.map_pages(iova, 4 * SZ_1G + iova, size, 1, RW if writable else Prot.READ)
        if dirty:
            _write(ops, iova + 5 * SZ_4K)
    out: list[Any] = [_state(ops, tlb)]
    unit = SZ_2M
    for kind, slot, length, flag in ops_list:
        lo, size = slot * unit, length * unit
        if nth:
            ops.mem.fail_nth.arm(nth)
        try:
            if kind == "split":
                out.append(ops.split_blocks(lo, size, SZ_4K if flag else SZ_2M,
                                            bbm_level=flag % 3))
            elif kind == "merge":
                out.append(ops.merge_pages(lo, size, bbm_level=flag % 3,
                                           split_only=bool(flag & 1)))
            elif kind == "unmap":
                out.append(ops.unmap_pages(lo + flag * SZ_4K, SZ_4K, 1))
            elif kind == "write":
                _write(ops, lo + flag * SZ_4K)
            else:
                bitmap = IovaBitmap(0, SPAN, SZ_4K)
                try:
                    ops.read_and_clear_dirty(0, SPAN, 0, IommuDirtyBitmap(bitmap))
                except KernelError as e:
                    out.append(("dirty", e.errno, str(e)))
                out.append([i for i in range(SPAN // SZ_4K) if bitmap.is_set(i * SZ_4K)])
        except KernelError as e:
            out.append((kind, e.errno, str(e)))
        ops.mem.fail_nth.disarm()
        out.append(_state(ops, tlb))
        ops._check()
    ops.free()
    assert ops.mem.iommu_pages == 0
    return out


_layout = st.lists(st.tuples(st.integers(0, 7), st.sampled_from([SZ_4K, SZ_2M, SZ_1G]),
                             st.booleans(), st.booleans()),
                   max_size=5, unique_by=lambda b: b[0])
_op = st.tuples(st.sampled_from(["split", "merge", "merge", "unmap", "write", "dirty"]),
                st.integers(0, 4 * 512 - 1), st.integers(1, 4 * 512), st.integers(0, 5))


@settings(max_examples=60, deadline=None)
@given(fmt=st.sampled_from([S1, S2]), coherent=st.booleans(), layout=_layout,
       ops_list=st.lists(_op, max_size=6), tables_per_chunk=st.sampled_from([1, 3, 512]),
       nth=st.sampled_from([0, 0, 1, 2, 7, 300, 514]))
def test_chunked_passes_match_the_reference(fmt: IoPgtableFmt, coherent: bool,
                                            layout: list[tuple[int, int, bool, bool]],
                                            ops_list: list[_Op], tables_per_chunk: int,
                                            nth: int) -> None:
    with _mode(False, tables_per_chunk):
        want = _run(fmt, coherent, layout, ops_list, nth)
    with _mode(True, tables_per_chunk):
        got = _run(fmt, coherent, layout, ops_list, nth)
    assert got == want


@pytest.mark.parametrize("tables_per_chunk", [1, 5, 512])
def test_split_of_1g_blocks_then_scan_and_merge_match_the_reference(
        tables_per_chunk: int) -> None:
    """Whole 1G blocks: several chunks per level, the scans on chunked rows in place."""
    script: list[_Op] = [("split", 0, 8 * 512, 1), ("write", 3, 0, 7), ("dirty", 0, 0, 0),
                         ("write", 700, 0, 1), ("merge", 0, 8 * 512, 1), ("dirty", 0, 0, 0)]
    layout = [(0, SZ_1G, True, True), (1, SZ_1G, True, False), (3, SZ_1G, False, False),
              (5, SZ_4K, True, False)]
    with _mode(False, tables_per_chunk):
        want = _run(S1, True, layout, script, 0)
    with _mode(True, tables_per_chunk):
        got = _run(S1, True, layout, script, 0)
    assert got == want
    assert got[1] == 3  # three 1G blocks split (slot 5 is pages)


@pytest.mark.parametrize(("tables_per_chunk", "run"), [(512, 512), (1024, 512), (2048, 512)])
def test_each_tables_children_are_rows_in_place_after_a_split(tables_per_chunk: int,
                                                              run: int) -> None:
    """The dirty scan and the merge find the children of every new table as the rows
    of one bulk allocation in place, when a chunk holds a table's children or more
    (a chunk of several tables' children is recorded as one run per table)."""
    with _mode(True, tables_per_chunk):
        ops, _ = _ops(S1, True)
        ops.map_pages(0, 4 * SZ_1G, SZ_1G, 2, RW)
        assert ops.split_blocks(0, 2 * SZ_1G, SZ_4K) == 2
    for iova in (0, SZ_1G):
        table = ops._deref(ops.pgtable_walk(iova)[1])  # the new table of 2M entries
        for pos in range(0, 512, run):
            rows, m = ops._rows_in_place(table[pos:512], 512)
            assert m == min(run, 512 - pos)
            assert (rows[:, 0] == [ops._deref(int(p))[0] for p in table[pos:pos + m]]).all()
