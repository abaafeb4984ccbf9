"""IOTLB gather helpers (include/linux/iommu.h)."""

from iommulab.iommu import IommuIotlbGather, iommu_iotlb_gather_add_page
from iommulab.iommu.gather import ULONG_MAX


class _Domain:
    def __init__(self) -> None:
        self.synced: list[tuple[int, int, int]] = []

    def iotlb_sync(self, gather: IommuIotlbGather) -> None:
        self.synced.append((gather.start, gather.end, gather.pgsize))
        gather.init()


def test_init_and_add_range() -> None:
    g = IommuIotlbGather()
    assert (g.start, g.end, g.pgsize, g.queued) == (ULONG_MAX, 0, 0, False) and g.empty
    g.add_range(0x5000, 0x1000)
    g.add_range(0x2000, 0x1000)
    assert (g.start, g.end) == (0x2000, 0x5FFF) and not g.empty


def test_disjoint_means_neither_overlapping_nor_adjacent() -> None:
    g = IommuIotlbGather()
    assert not g.is_disjoint(0x100000, 0x1000)  # empty gather is never disjoint
    g.add_range(0x10000, 0x1000)
    assert not g.is_disjoint(0x11000, 0x1000)  # adjacent above
    assert not g.is_disjoint(0xF000, 0x1000)  # adjacent below
    assert g.is_disjoint(0x12000, 0x1000)
    assert g.is_disjoint(0xE000, 0x1000)


def test_add_page_syncs_on_new_granule_or_disjoint_page() -> None:
    d, g = _Domain(), IommuIotlbGather()
    iommu_iotlb_gather_add_page(d, g, 0x0, 0x1000)
    iommu_iotlb_gather_add_page(d, g, 0x1000, 0x1000)
    assert d.synced == []
    iommu_iotlb_gather_add_page(d, g, 0x200000, 0x200000)  # another granule
    assert d.synced == [(0, 0x1FFF, 0x1000)]
    iommu_iotlb_gather_add_page(d, g, 0x800000, 0x200000)  # disjoint
    assert d.synced[-1] == (0x200000, 0x3FFFFF, 0x200000)
    assert (g.start, g.end, g.pgsize) == (0x800000, 0x9FFFFF, 0x200000)
