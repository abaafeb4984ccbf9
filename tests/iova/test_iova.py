"""IovaDomain against drivers/iommu/iova.c: values worked out by hand from the kernel's code."""

from __future__ import annotations

import pytest

from iommulab.clock import Clock
from iommulab.errors import OutOfMemory
from iommulab.iova import IOVA_ANCHOR, IOVA_MAG_SIZE, Iova, IovaDomain
from iommulab.mem.fault import FailNth

LIMIT32 = 0xFFFFF  # DMA_BIT_MASK(32) >> 12


def test_init_geometry() -> None:
    d = IovaDomain(4096, 1)
    assert d.dma_32bit_pfn == 1 << 20 and d.max32_alloc_size == 1 << 20
    assert d.cached_node == d.cached32_node == IOVA_ANCHOR
    assert IovaDomain(0x800, 1).dma_32bit_pfn == 1 << 21
    for bad in (0, 3, 0x2000):
        with pytest.raises(ValueError, match="granule must be a power of two"):
            IovaDomain(bad, 1)


def test_granule_1_is_a_power_of_two_and_accepted() -> None:
    """init_iova_domain: BUG_ON((granule > PAGE_SIZE) || !is_power_of_2(granule)) lets 1
    through (iova_shift 0: a pfn is a byte address, the 32-bit boundary is 1 << 32)."""
    d = IovaDomain(1, 1)
    assert (d.shift, d.dma_32bit_pfn) == (0, 1 << 32)
    assert d.alloc_iova(0x1000, (1 << 32) - 1, True) == Iova(0xFFFF_F000, 0xFFFF_FFFF)
    assert d.alloc_iova_fast(3, (1 << 32) - 1, True) == 0xFFFF_EFFC
    d._check()


def test_top_down_order_and_alignment() -> None:
    d = IovaDomain(4096, 1)
    assert d.alloc_iova(1, LIMIT32, True) == Iova(0xFFFFF, 0xFFFFF)
    # (0xFFFFF - 3) & ~3: a size-3 range starts on a 4-granule boundary, below the first
    assert d.alloc_iova(3, LIMIT32, True) == Iova(0xFFFFC, 0xFFFFE)
    assert d.alloc_iova(3, LIMIT32, False) == Iova(0xFFFF9, 0xFFFFB)
    assert d.alloc_iova(16, LIMIT32, True) == Iova(0xFFFE0, 0xFFFEF)
    assert d.cached32_node == 0xFFFE0 and d.cached_node == IOVA_ANCHOR
    # a 64-bit limit starts from the other cursor, at the anchor
    assert d.alloc_iova(1, (1 << 36) - 1, True) == Iova((1 << 36) - 1, (1 << 36) - 1)
    assert d.cached_node == (1 << 36) - 1
    d._check()


def test_limit_is_inclusive() -> None:
    d = IovaDomain(4096, 1)
    assert d.alloc_iova(4, 0x1003, True) == Iova(0x1000, 0x1003)
    assert d.alloc_iova(4, 0x1003, True) == Iova(0xFFC, 0xFFF)


def test_exhaustion_and_max32_fast_fail() -> None:
    d = IovaDomain(4096, 1)
    got = [d.alloc_iova(1, 15, True) for _ in range(15)]
    assert [g.pfn_lo for g in got if g] == list(range(15, 0, -1))
    assert d.alloc_iova(1, 15, True) is None
    assert d.max32_alloc_size == 1 and d.stats.fast_fails_32 == 0
    # any 32-bit request of >= 1 granule now fails without a walk, even with room elsewhere
    assert d.alloc_iova(1, LIMIT32, True) is None
    assert d.stats.fast_fails_32 == 1
    d.free_iova(7)  # a free below 4 GiB resets the shortcut
    assert d.max32_alloc_size == d.dma_32bit_pfn
    assert d.alloc_iova(1, 15, True) == Iova(7, 7)
    d._check()


def test_failed_64bit_allocation_also_sets_max32_alloc_size() -> None:
    d = IovaDomain(4096, 1 << 20)  # nothing below 4 GiB is allocatable
    assert d.alloc_iova(8, (1 << 20) + 3, True) is None
    assert d.max32_alloc_size == 8  # the kernel records it whatever the limit was


def test_free_above_cursor_moves_it_up() -> None:
    d = IovaDomain(4096, 1)
    d.alloc_iova(1, LIMIT32, True)
    d.alloc_iova(1, LIMIT32, True)
    assert d.cached32_node == 0xFFFFE
    d.free_iova(0xFFFFF)  # above the cursor: it moves to the freed node's successor
    assert d.cached32_node == IOVA_ANCHOR
    assert d.alloc_iova(1, LIMIT32, True) == Iova(0xFFFFF, 0xFFFFF)


def test_retry_pass_above_the_cached_node() -> None:
    d = IovaDomain(4096, 0xFF000)
    assert d.alloc_iova(0x800, 0xFF7FF, True) == Iova(0xFF000, 0xFF7FF)
    assert d.cached32_node == 0xFF000
    # below the cursor is start_pfn: the second pass searches above it, from the limit
    assert d.alloc_iova(0x100, LIMIT32, True) == Iova(0xFFF00, 0xFFFFF)
    assert d.stats.retry_passes == 1
    d._check()


def test_reserve_merges_into_existing_nodes() -> None:
    d = IovaDomain(4096, 1)
    assert d.reserve_iova(10, 19) == Iova(10, 19)
    assert d.reserve_iova(30, 39) == Iova(30, 39)
    # the first node grows down to 5, the second fills the gap above 19, the rest is new
    assert d.reserve_iova(5, 50) == Iova(40, 50)
    assert d.ranges() == [Iova(5, 19), Iova(20, 39), Iova(40, 50)]
    assert d.reserve_iova(22, 25) == Iova(20, 39)  # inside one node: that node
    d._check()


def test_reserve_extends_an_allocated_node() -> None:
    d = IovaDomain(4096, 1)
    a = d.alloc_iova(0x100, LIMIT32, True)
    assert a == Iova(0xFFF00, 0xFFFFF)
    assert d.reserve_iova(0xFFE80, 0xFFF7F) == Iova(0xFFE80, 0xFFFFF)
    assert d.cached32_node == 0xFFE80  # the cursor follows the node
    d.free_iova(0xFFF00)  # freeing the allocation frees the reservation with it
    assert d.ranges() == []
    d._check()


def test_reserve_rejects_nonsensical_pfns() -> None:
    d = IovaDomain(4096, 1)
    assert d.reserve_iova(1 << 52, 1 << 52) is None
    assert d.warnings["reserve_iova: nonsensical pfns"] == 1
    assert d.ranges() == []


def test_find_and_free_by_any_pfn_of_a_range() -> None:
    d = IovaDomain(4096, 1)
    d.alloc_iova(16, LIMIT32, True)
    assert d.find_iova(0xFFFF5) == Iova(0xFFFF0, 0xFFFFF)
    assert d.find_iova(0xFFFEF) is None
    d.free_iova(0x1234)  # absent: nothing happens
    d.free_iova(0xFFFF9)
    assert d.ranges() == []


def test_rcache_hit_returns_the_freed_range() -> None:
    d = IovaDomain(4096, 1, ncpus=2)
    pfn = d.alloc_iova_fast(3, LIMIT32)
    assert pfn == 0xFFFFC  # rounded up to 4 and aligned
    d.free_iova_fast(pfn, 3, cpu=0)
    assert d.find_iova(pfn) == Iova(0xFFFFC, 0xFFFFF)  # still in the tree
    assert d.alloc_iova_fast(4, LIMIT32, cpu=1) == 0xFFFF8  # other CPU: a miss
    assert d.alloc_iova_fast(4, LIMIT32, cpu=0) == pfn
    assert d.stats.rcache_hits == 1 and d.stats.rcache_misses == 2
    d._check()


def test_rcache_respects_the_limit() -> None:
    d = IovaDomain(4096, 1)
    high = d.alloc_iova_fast(1, (1 << 40) - 1)
    low = d.alloc_iova_fast(1, LIMIT32)
    d.free_iova_fast(low, 1)
    d.free_iova_fast(high, 1)  # on top of the magazine, but above a 32-bit limit
    assert d.alloc_iova_fast(1, LIMIT32) == low  # found below the top
    assert d.alloc_iova_fast(1, LIMIT32) == 0xFFFFE  # only 'high' is cached: a miss


def test_large_sizes_bypass_the_cache() -> None:
    d = IovaDomain(4096, 1)
    pfn = d.alloc_iova_fast(33, LIMIT32)
    assert d.find_iova(pfn) == Iova(pfn, pfn + 32)  # not rounded up: 33 >= 32
    d.free_iova_fast(pfn, 33)
    assert d.ranges() == [] and d.stats.rcache_insert_fails == 1


def test_magazines_depot_and_trimming() -> None:
    clock = Clock(hz=250)
    d = IovaDomain(4096, 1, clock=clock)
    pfns = [d.alloc_iova_fast(1, LIMIT32) for _ in range(3 * IOVA_MAG_SIZE + 1)]
    for pfn in pfns:
        d.free_iova_fast(pfn, 1)
    # loaded and prev hold 254; two full magazines went to the depot
    assert d.rcaches.depot_size(0) == 2
    assert d.rcaches.cached_count() == len(pfns)
    d._check()
    clock.advance(100_000_000)  # the delayed work trims while depot > online CPUs (1)
    assert d.rcaches.depot_size(0) == 1 and d.rcaches.depot_trims == 1
    assert len(d) == len(pfns) - IOVA_MAG_SIZE
    clock.advance(1_000_000_000)
    assert d.rcaches.depot_size(0) == 1
    d._check()


def test_get_takes_a_magazine_from_the_depot() -> None:
    d = IovaDomain(4096, 1)
    pfns = [d.alloc_iova_fast(1, LIMIT32) for _ in range(3 * IOVA_MAG_SIZE)]
    for pfn in pfns:
        d.free_iova_fast(pfn, 1)
    assert d.rcaches.depot_size(0) == 1
    for _ in range(2 * IOVA_MAG_SIZE + 1):
        assert d.alloc_iova_fast(1, LIMIT32)
    assert d.rcaches.depot_size(0) == 0 and d.stats.rcache_misses == len(pfns)
    d._check()


def test_flush_and_retry_reclaims_other_cpus_caches() -> None:
    d = IovaDomain(4096, 1, ncpus=2)
    pfns = [d.alloc_iova_fast(1, 7, cpu=1) for _ in range(7)]
    assert sorted(pfns) == list(range(1, 8))
    for pfn in pfns:
        d.free_iova_fast(pfn, 1, cpu=1)
    assert d.alloc_iova_fast(1, 7, flush_rcache=False, cpu=0) == 0
    assert d.alloc_iova_fast(1, 7, cpu=0) == 7  # flushed, then the top again
    assert d.stats.flush_retries == 1 and d.rcaches.cached_count() == 0
    d._check()


def test_cpu_dead_returns_its_ranges() -> None:
    d = IovaDomain(4096, 1, ncpus=2)
    pfn = d.alloc_iova_fast(2, LIMIT32, cpu=1)
    d.free_iova_fast(pfn, 2, cpu=1)
    d.rcaches.cpu_dead(1)
    assert d.ranges() == []
    with pytest.raises(ValueError, match="CPU 1 is not online"):
        d.alloc_iova_fast(1, LIMIT32, cpu=1)


def test_magazine_allocation_failure_frees_to_the_tree() -> None:
    fail = FailNth()
    d = IovaDomain(4096, 1, fail_nth=fail)
    pfns = [d.alloc_iova_fast(1, LIMIT32) for _ in range(2 * IOVA_MAG_SIZE + 1)]
    for pfn in pfns[:-1]:
        d.free_iova_fast(pfn, 1)
    fail.arm(1)
    d.free_iova_fast(pfns[-1], 1)
    assert fail.triggered and d.find_iova(pfns[-1]) is None
    assert d.rcaches.depot_size(0) == 0
    d._check()


def test_node_allocation_failure() -> None:
    fail = FailNth()
    d = IovaDomain(4096, 1, fail_nth=fail)
    fail.arm(1)
    assert d.alloc_iova(1, LIMIT32, True) is None and d.ranges() == []
    fail.arm(1)
    assert d.reserve_iova(5, 6) is None and d.ranges() == []
    fail.arm(1)
    with pytest.raises(OutOfMemory, match="magazines"):
        IovaDomain(4096, 1, fail_nth=fail)


def test_put_drops_everything() -> None:
    d = IovaDomain(4096, 1)
    d.free_iova_fast(d.alloc_iova_fast(1, LIMIT32), 1)
    d.alloc_iova(5, LIMIT32, False)
    d.put()
    assert d.ranges() == [] and d.rcaches.cached_count() == 0 and d.rcaches.magazines == 0
    d._check()
