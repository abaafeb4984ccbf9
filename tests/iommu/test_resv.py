"""iommu_insert_resv_region's sort and merge rules (drivers/iommu/iommu.c)."""

from __future__ import annotations

from iommulab import Prot
from iommulab.iommu import ResvRegion, ResvType, insert_resv_region, merge_resv_regions

R = Prot.READ


def _r(start: int, length: int, t: ResvType) -> ResvRegion:
    return ResvRegion(start, length, R, t)


def test_same_type_overlapping_and_adjacent_merge() -> None:
    regions: list[ResvRegion] = []
    insert_resv_region(_r(0x1000, 0x1000, ResvType.RESERVED), regions)
    insert_resv_region(_r(0x2000, 0x1000, ResvType.RESERVED), regions)  # adjacent
    insert_resv_region(_r(0x2800, 0x2000, ResvType.RESERVED), regions)  # overlapping
    assert regions == [_r(0x1000, 0x3800, ResvType.RESERVED)]


def test_other_types_are_never_merged_but_sorted() -> None:
    regions: list[ResvRegion] = []
    insert_resv_region(_r(0x3000, 0x1000, ResvType.MSI), regions)
    insert_resv_region(_r(0x1000, 0x4000, ResvType.DIRECT), regions)
    insert_resv_region(_r(0x1000, 0x1000, ResvType.RESERVED), regions)
    assert regions == [_r(0x1000, 0x4000, ResvType.DIRECT), _r(0x1000, 0x1000, ResvType.RESERVED),
                       _r(0x3000, 0x1000, ResvType.MSI)]


def test_gap_keeps_regions_apart() -> None:
    regions = merge_resv_regions([[_r(0x1000, 0x1000, ResvType.SW_MSI)],
                                  [_r(0x2001, 0x10, ResvType.SW_MSI)]])
    assert regions == [_r(0x1000, 0x1000, ResvType.SW_MSI), _r(0x2001, 0x10, ResvType.SW_MSI)]


def test_a_region_ending_at_the_top_wraps_top_end_and_merges_nothing_after_it() -> None:
    """iommu_insert_resv_region: ``if (iter->start > top_end + 1)`` in phys_addr_t, so with
    top_end = ULLONG_MAX the sum is 0 and a later region of the same type, even inside
    the first, stays a separate entry (two lines in reserved_regions)."""
    top = _r(2**64 - 2**32, 2**32, ResvType.RESERVED)
    inside = _r(2**64 - 2**31, 0x1000, ResvType.RESERVED)
    regions: list[ResvRegion] = []
    insert_resv_region(top, regions)
    insert_resv_region(inside, regions)
    assert regions == [top, inside]
    # A region before the top one still merges it in: the test is on the earlier one's end.
    below = _r(2**64 - 2**33, 2**32, ResvType.RESERVED)
    insert_resv_region(below, regions)
    assert regions == [_r(2**64 - 2**33, 2**33, ResvType.RESERVED), inside]
