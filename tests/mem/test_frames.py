"""The buddy frame allocator."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iommulab.mem import MAX_ORDER, FrameAllocator


def _alloc(ranges: list[tuple[int, int]]) -> FrameAllocator:
    fa = FrameAllocator()
    for pfn, count in ranges:
        fa.add_range(pfn, count)
    fa._check()
    return fa


def test_blocks_are_naturally_aligned_and_lowest_first() -> None:
    fa = _alloc([(0x40000, 1 << 20)])  # 4 GiB at 1 GiB
    a = fa.alloc(0)
    b = fa.alloc(0)
    c = fa.alloc(9)
    assert (a, b) == (0x40000, 0x40001)  # consecutive 4K frames are contiguous
    assert c is not None and c % 512 == 0
    big = fa.alloc(MAX_ORDER)
    assert big is not None and big % (1 << MAX_ORDER) == 0
    fa._check()


def test_free_merges_buddies_back_to_the_largest_block() -> None:
    fa = _alloc([(0, 1 << MAX_ORDER)])
    blocks = [fa.alloc(0) for _ in range(1000)]
    assert fa.largest_free_order() < MAX_ORDER
    for pfn in blocks:
        assert pfn is not None
        fa.free(pfn, 0)
    fa._check()
    assert fa.largest_free_order() == MAX_ORDER
    assert fa.free_frames == fa.total_frames and fa.allocated_blocks == 0


def test_unaligned_range_is_carved_into_aligned_blocks() -> None:
    fa = _alloc([(3, 1000)])
    got = []
    while (pfn := fa.alloc(0)) is not None:
        got.append(pfn)
    assert sorted(got) == list(range(3, 1003))
    fa._check()


def test_exhaustion_returns_none() -> None:
    fa = _alloc([(0, 512)])
    assert fa.alloc(9) == 0
    assert fa.alloc(0) is None


def test_bad_free_is_refused_and_changes_nothing() -> None:
    fa = _alloc([(0, 1024)])
    pfn = fa.alloc(1)
    assert pfn is not None
    with pytest.raises(ValueError, match="order 1"):
        fa.free(pfn, 0)
    with pytest.raises(ValueError, match="not allocated"):
        fa.free(pfn + 8, 0)
    fa._check()
    fa.free(pfn, 1)
    assert fa.free_frames == 1024


def test_alloc_at_takes_one_specific_frame() -> None:
    fa = _alloc([(0, 1024)])
    assert fa.alloc_at(517)
    assert not fa.alloc_at(517)
    fa._check()
    assert fa.largest_free_order() == 9  # the other 512-frame half survives
    got = {fa.alloc(0) for _ in range(1023)}
    assert 517 not in got and None not in got
    fa.free(517, 0)
    fa._check()


def test_bad_order_is_rejected() -> None:
    with pytest.raises(ValueError, match="19"):
        FrameAllocator().alloc(MAX_ORDER + 1)


def _state(fa: FrameAllocator) -> tuple[list[set[int]], dict[int, int], int]:
    return [set(b) for b in fa._free], dict(fa._allocated), fa.free_frames


@given(st.lists(st.tuples(st.integers(0, 3), st.booleans()), max_size=30),
       st.integers(1, 3000), st.randoms(use_true_random=False))
def test_bulk_alloc_and_free_match_page_by_page(history: list[tuple[int, bool]], n: int,
                                                rnd: random.Random) -> None:
    """alloc_bulk(n) gives the frames of n alloc(0) calls; free_bulk leaves the same lists."""
    one, bulk = _alloc([(5, 4000)]), _alloc([(5, 4000)])
    held: list[tuple[int, int]] = []
    for order, free in history:  # the same fragmented state in both
        if free and held:
            block, o = held.pop(rnd.randrange(len(held)))
            one.free(block, o)
            bulk.free(block, o)
        elif (got := one.alloc(order)) is not None:
            assert bulk.alloc(order) == got
            held.append((got, order))
    runs = bulk.alloc_bulk(n)
    if n > one.free_frames:
        assert runs is None and _state(one) == _state(bulk)
        return
    pages = [one.alloc(0) for _ in range(n)]
    assert runs is not None and None not in pages
    assert [p for pfn, k in runs for p in range(pfn, pfn + k)] == pages
    assert _state(one) == _state(bulk)
    rnd.shuffle(pages)
    for page in pages:
        assert page is not None
        one.free(page, 0)
    bulk.free_bulk(runs)
    assert _state(one) == _state(bulk)
    bulk._check()


def test_free_bulk_refuses_a_frame_it_did_not_hand_out() -> None:
    fa = _alloc([(0, 64)])
    runs = fa.alloc_bulk(4)
    assert runs == [(0, 4)]
    before = _state(fa)
    with pytest.raises(ValueError, match="pfn 0x4 order 0, but it was not allocated"):
        fa.free_bulk([(0, 5)])
    assert _state(fa) == before
