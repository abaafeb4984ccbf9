"""Table memory in bulk (PhysMem.alloc_iommu_frames / free_iommu_pages_bulk, used by the
walker's _alloc_tables and _free_tables): the same frames, buddy state, fail-nth points
and errors as one alloc_pages / free per table, over random fragmentation."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iommulab.errors import OutOfMemory
from iommulab.mem import PhysMem


def _fragmented(seed: int, holes: int) -> tuple[PhysMem, list[int]]:
    """A small machine with ``holes`` random single pages and 2^k blocks given back."""
    mem = PhysMem("64M")
    rng = random.Random(seed)
    taken = [mem.alloc_pages(rng.choice([0, 0, 1, 3])) for _ in range(3 * holes)]
    rng.shuffle(taken)
    for pfn in taken[:holes]:
        mem.free_pages(pfn, mem.frames.order_of(pfn) or 0)
    return mem, taken[holes:]


def _buddy(mem: PhysMem) -> tuple[Any, ...]:
    frames = mem.frames
    return ([sorted(s) for s in frames._free], sorted(frames._allocated.items()),
            frames.free_frames, mem.iommu_pages, mem.fail_nth.calls, sorted(mem.contents.pfns()))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 1000), holes=st.integers(0, 200), count=st.integers(1, 700),
       frees=st.integers(0, 700))
def test_bulk_frames_are_the_per_call_frames(seed: int, holes: int, count: int,
                                             frees: int) -> None:
    bulk, _ = _fragmented(seed, holes)
    loop, _ = _fragmented(seed, holes)
    loop.fail_nth.arm(10**9)  # armed (never reached): the per-call path
    bulk.fail_nth.log, loop.fail_nth.log = [], []
    got = bulk.alloc_iommu_frames(4096, count)
    want = loop.alloc_iommu_frames(4096, count)
    assert got == want
    assert bulk.fail_nth.log == loop.fail_nth.log
    loop.fail_nth.disarm()
    pas, rows = bulk.attach_iommu_pages(4096, got)
    loop.attach_iommu_pages(4096, want)
    assert rows.shape == (count, 512) and pas == [p << 12 for p in got]
    assert _buddy(bulk) == _buddy(loop)
    order = list(range(count))
    random.Random(seed).shuffle(order)
    gone = [pas[i] for i in order[:frees]]
    bulk.free_iommu_pages_bulk(gone)
    for pa in gone:
        loop.free_iommu_pages(pa)
    assert _buddy(bulk) == _buddy(loop)
    bulk.frames._check()


def test_running_out_gives_back_and_counts_the_same_points() -> None:
    for armed in (False, True):
        mem = PhysMem("16M")
        free = mem.frames.free_frames
        if armed:
            mem.fail_nth.arm(10**9)
        calls = mem.fail_nth.calls
        with pytest.raises(OutOfMemory, match="iommu_alloc_pages"):
            mem.alloc_iommu_frames(4096, free + 1)
        assert mem.frames.free_frames == free
        assert mem.fail_nth.calls - calls == free + 1  # each call a point, the last fails


def test_injected_failure_is_the_nth_table() -> None:
    mem = PhysMem("16M")
    mem.fail_nth.arm(5)
    with pytest.raises(OutOfMemory, match="fail-nth"):
        mem.alloc_iommu_frames(4096, 10)
    assert mem.fail_nth.fired == "iommu_alloc_pages" and mem.frames.allocated_blocks == 0


@pytest.mark.parametrize("bad", ["twice", "never allocated"])
def test_bad_frees_raise_as_one_by_one(bad: str) -> None:
    mem = PhysMem("16M")
    pas, _ = mem.attach_iommu_pages(4096, mem.alloc_iommu_frames(4096, 4))
    with pytest.raises(ValueError, match="not an allocated block"):
        mem.free_iommu_pages_bulk([pas[0], pas[1], pas[1]] if bad == "twice"
                                  else [pas[0], 0x1234_5000])
    assert mem.frames.order_of(pas[0] >> 12) is None  # freed before the bad one


def test_a_larger_block_goes_back_whole() -> None:
    mem = PhysMem("16M")
    big = mem.alloc_pages(2)  # a block of order 2 goes back whole, as free_iommu_pages does
    mem.free_iommu_pages_bulk([big << 12, *mem.attach_iommu_pages(
        4096, [mem.alloc_pages(0)])[0]])
    assert mem.frames.allocated_blocks == 0
