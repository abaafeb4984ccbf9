"""SmState's inlined IOTLB hit and fast nested walk against the reference path, on two
identical scalable-mode machines.

One machine translates with ``SmState.fast`` on, the other with it off (every access
through ``_pasid_entry``, ``_lookup``, ``_ss`` and ``_fs``). The guest changes its first
stage with and without the A/D flags Linux presets, to pages in two 2M regions of its
RAM, past its RAM and past MGAW, points a table entry at a data page or outside its
RAM, turns second-stage dirty tracking on and off and reads the dirty bitmap; the
device reads and writes. After every step the results (address or fault reason), the unit's counts,
fault records, IOTLB and PASID cache, and every byte of physical memory (A/D updates
included) must be the same.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from iommulab.drivers.vtd_sm import IotlbInv
from iommulab.errors import DmaFault
from iommulab.pgtable.vtd_fs import FL_A, FL_D, FL_P, FL_RW, FL_US

from .test_nested import _OPEN, DIRTY, GUEST, GUEST_PAGES, NEST_PARENT, Nest, _nest

IOVA = 0x4000_0000
FAR = 0x80_0000_0000  # root entry 1, then entry 0 at each level below
PAGES = 3
GUEST2, GUEST2_PAGES = GUEST + (4 << 20), 16  # more guest RAM, under another level-1 table
_RAM2: dict[int, int] = {}  # id(Nest) -> the VMM's address of GUEST2


def _pair() -> list[tuple[Nest, int]]:
    """Two alike machines with guest RAM in two 2M regions, the guest's pages mapped as
    Linux maps them (A and D set)."""
    out = []
    for fast in (True, False):
        n = _nest("7.0", parent_flags=NEST_PARENT | DIRTY)
        ram2 = n.p.mmap(GUEST2_PAGES * 4096)
        n.fd.ioas_map(n.ioas, ram2, GUEST2_PAGES * 4096, GUEST2)
        _RAM2[id(n)] = ram2
        hwpt = n.nested()
        n.attach(hwpt)
        n.sm.fast = fast
        for page in range(PAGES):
            n.fs.map(IOVA + page * 4096, GUEST + (16 + page) * 4096, extra=FL_A | FL_D)
        out.append((n, hwpt))
    return out


def _gpa(gpage: int) -> int:
    """Guest page ``gpage``: 0-47 the data pages of GUEST, 48-50 past its RAM, 51-62
    pages of GUEST2, 63 beyond the 48-bit MGAW (page 0 plus bit 48)."""
    if gpage == 63:
        return 1 << 48 | _gpa(0)
    return GUEST + (16 + gpage) * 4096 if gpage < 51 else GUEST2 + (gpage - 51) * 4096


def _write_gpa(n: Nest, gpa: int, value: int) -> None:
    if GUEST2 <= gpa < GUEST2 + GUEST2_PAGES * 4096:
        n.p.write(_RAM2[id(n)] + gpa - GUEST2, value.to_bytes(8, "little"))
    elif GUEST <= gpa < GUEST + GUEST_PAGES * 4096:
        n.fs.write_u64(gpa, value)


def _step(n: Nest, hwpt: int, op: tuple[Any, ...]) -> Any:
    kind, page, gpage, write, extra = op
    iova = IOVA + page * 4096
    if kind == "map":
        n.fs.map(iova, _gpa(gpage), write=write, user=extra != 4,
                 extra=(0, FL_A, FL_A | FL_D, FL_A | FL_D, FL_A | FL_D)[extra])
    elif kind == "unmap":
        if (n.fs.root, 0) in n.fs._tables:  # the builder has tables under IOVA
            n.fs.unmap(iova)
    elif kind == "far":
        # root entry 1 points at a table in a data page (or past the RAM) whose entry 0
        # is IOVA's level-2 table: FAR + x translates as IOVA + x through another page
        table = _gpa(gpage)
        flags = FL_P | FL_RW | FL_US | (FL_A if write else 0)
        n.fs.write_u64(n.fs.root + 8, table | flags)
        _write_gpa(n, table, n.fs._tables[(n.fs._tables[(n.fs.root, 0)], 1)] | flags)
        return None
    elif kind == "inv":
        return n.invalidate([(0, (1 << 64) - 1, 0, 0)], hwpt=hwpt)
    elif kind == "iotlb":
        n.sm.submit([IotlbInv(1)])
    elif kind == "dirty":
        n.fd.hwpt_set_dirty_tracking(n.parent, write)
        return None
    elif kind == "bitmap":
        return (n.fd.hwpt_get_dirty_bitmap(n.parent, GUEST, GUEST_PAGES * 4096),
                n.fd.hwpt_get_dirty_bitmap(n.parent, GUEST2, GUEST2_PAGES * 4096))
    else:
        target = FAR + page * 4096 if kind == "dma_far" else iova
        try:
            if write:
                n.dev.dma_write(target + 8, b"fast")
                return None
            return n.dev.dma_read(target + 8, 4)
        except DmaFault as f:
            return ("fault", f.reason)
    return None


def _state(n: Nest) -> Any:
    sm, mem = n.sm, n.m.mem
    pages = {pfn: mem.contents.page(pfn).tobytes() for pfn in mem.contents.pfns()}
    return (dict(sm.counts), [str(f) for f in n.m.translator.faults],
            {k: dataclasses.astuple(e) for k, e in sm.iotlb.items()},
            dict(sm.pasid_cache), dict(sm.ctx_cache), pages)


OPS = st.tuples(
    st.sampled_from(["dma", "map"] * 3 + ["dma", "iotlb", "inv"] * 2 + [
        "unmap", "far", "dirty", "dirty", "bitmap", "dma_far", "dma_far"]),
    st.integers(0, PAGES - 1),
    st.one_of(st.integers(0, 63), st.sampled_from([48, 51, 52, 63])),  # the edges more often
    st.booleans(), st.integers(0, 4))


_EDGES = [  # each fast-path check once for sure: an op, then the access that meets it
    [("map", 0, 63, True, 2), ("dma", 0, 0, False, 0)],  # output past MGAW
    [("far", 0, 63, True, 0), ("dma_far", 0, 0, False, 0)],  # a table past MGAW
    [("map", 0, 51, True, 2), ("dma", 0, 0, False, 0), ("iotlb", 0, 0, False, 0),
     ("map", 1, 52, True, 2), ("dma", 1, 0, True, 0)],  # the second 2M region
    [("dirty", 0, 0, True, 0), ("iotlb", 0, 0, False, 0), ("dma", 0, 0, True, 0),
     ("far", 0, 5, True, 0), ("dma_far", 1, 0, False, 0)],  # SSADE: A and D to set
    [("map", 0, 1, True, 4), ("dma", 0, 0, False, 0)],  # a leaf without US
    [("map", 0, 1, False, 2), ("dma", 0, 0, True, 0)],  # a write to a read-only leaf
    [("map", 0, 1, True, 1), ("dma", 0, 0, False, 0),  # a write through an entry a read
     ("dma", 0, 0, True, 0)],  # filled: walks again and sets D
]


@given(ops=st.lists(OPS, min_size=10, max_size=50))
@example(ops=_EDGES[0])
@example(ops=_EDGES[1])
@example(ops=_EDGES[2])
@example(ops=_EDGES[3])
@example(ops=_EDGES[4])
@example(ops=_EDGES[5])
@example(ops=_EDGES[6])
@settings(max_examples=100, deadline=None)
def test_fast_and_reference_paths_agree(ops: list[tuple[Any, ...]]) -> None:
    (fast, fhwpt), (ref, rhwpt) = _pair()
    try:
        for op in ops:
            assert _step(fast, fhwpt, op) == _step(ref, rhwpt, op), op
            assert _state(fast) == _state(ref), op
    finally:
        for n in (fast, ref):
            _OPEN.remove(n)
            n.close()
            del _RAM2[id(n)]


def test_a_steady_nested_miss_takes_the_fast_walk() -> None:
    """Once the walk has set every A/D flag, a miss is answered without ``_ss`` / ``_fs``:
    the fast path is what the differential test above compares."""
    n = _nest("7.0")
    hwpt = n.nested()
    n.attach(hwpt)
    n.fs.map(IOVA, GUEST + 40 * 4096)
    n.dev.dma_write(IOVA, b"warm")  # sets A and D in the first stage
    sm = n.sm
    sm.submit([IotlbInv(1)])
    reads = sm.counts["descriptor_read"]

    def refuse(*args: Any, **kw: Any) -> Any:
        raise AssertionError("the reference walk ran")

    sm._ss = sm._fs = refuse
    try:
        n.dev.dma_write(IOVA + 8, b"fast")
        assert n.dev.dma_read(IOVA, 12) == b"warm" + bytes(4) + b"fast"
    finally:
        del sm._ss, sm._fs
    assert sm.counts["descriptor_read"] - reads == 24
    assert sm.counts["iotlb_hit"] >= 1


@pytest.mark.parametrize("fast", [True, False])
def test_a_nested_miss_reads_24_entries(fast: bool) -> None:
    """4-level first stage, each entry fetched through a 4-level second stage, and the
    output address: 4 * (4 + 1) + 4 reads, counted alike by both paths."""
    n = _nest("7.0")
    hwpt = n.nested()
    n.attach(hwpt)
    n.sm.fast = fast
    n.fs.map(IOVA, GUEST + 40 * 4096, extra=FL_A | FL_D)
    n.dev.dma_read(IOVA, 8)  # the context and PASID entries fetched
    n.sm.submit([IotlbInv(1)])
    reads = n.sm.counts["descriptor_read"]
    n.dev.dma_read(IOVA, 8)
    assert n.sm.counts["descriptor_read"] - reads == 24
