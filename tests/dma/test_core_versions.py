"""Where iommu.c and the DMA API of Linux 6.12 and 7.0 differ in paths the model runs:
the empty IOTLB gather, the direct mappings of a default domain, the revert of a failed
group attach, and DMA_ATTR_MMIO."""

from __future__ import annotations

from collections import Counter

import pytest

from iommulab import Prot
from iommulab.dma import (
    DMA_ATTR_MMIO,
    DmaDirection,
    dma_map_page,
    dma_map_resource,
    dma_unmap_page,
    dma_unmap_resource,
)
from iommulab.errors import KernelError
from iommulab.iommu import ResvRegion, ResvType

from .platform import make_dma_platform

RW = Prot.READ | Prot.WRITE


@pytest.mark.parametrize(("kernel", "syncs"), [("6.12", 1), ("7.0", 0)])
def test_iotlb_sync_of_an_empty_gather_reaches_the_driver_in_6_12_only(
        kernel: str, syncs: int) -> None:
    """iommu_iotlb_sync: 6.12 ``if (domain->ops->iotlb_sync) domain->ops->iotlb_sync(...)``;
    7.0 adds ``&& likely(iotlb_gather->start < iotlb_gather->end)``. An unmap of nothing
    gathers nothing."""
    p = make_dma_platform(strict=True, kernel=kernel)
    dev = p.device()
    assert dev.group is not None and dev.group.domain is not None
    domain = dev.group.domain
    before = domain.tlb_stats.iotlb_sync
    assert domain.unmap(0x10_0000_0000, 0x1000) == 0
    assert domain.tlb_stats.iotlb_sync - before == syncs
    p.close()


@pytest.mark.parametrize(("kernel", "mapped"), [("6.12", 0), ("7.0", 0x1000)])
def test_direct_mapping_at_iova_0_by_version(kernel: str, mapped: int) -> None:
    """iommu_create_device_direct_mappings: 7.0 asks iommu_iova_to_phys(addr ? addr : 1)
    ("Return address by iommu_iova_to_phys for 0 is ambiguous"); 6.12 asks about 0, which
    a 1:1 page at 0 answers with 0, so a second device's region [0, 8K) is mapped whole
    again, fails with EEXIST (ignored by __iommu_probe_device) and 4K stays unmapped."""
    p = make_dma_platform(strict=True, kernel=kernel)
    first = p.device(resv=[ResvRegion(0, 0x1000, RW, ResvType.DIRECT)])
    second = p.device(0x20, "second", probe=False,
                      resv=[ResvRegion(0, 0x2000, RW, ResvType.DIRECT)])
    assert first.group is not None
    p.core.probe_device(second, first.group)
    domain = first.group.default_domain
    assert domain is not None
    assert domain.iova_to_phys(0x1000) == mapped
    p.close()


@pytest.mark.parametrize(("kernel", "flushes"), [("6.12", 1), ("7.0", 0)])
def test_6_12_flushes_the_iotlb_after_the_direct_mappings(kernel: str, flushes: int) -> None:
    """6.12: ``if (!list_empty(&mappings) && iommu_is_dma_domain(domain))
    iommu_flush_iotlb_all(domain);`` 7.0 has no such flush."""
    p = make_dma_platform(strict=True, kernel=kernel)
    dev = p.device(resv=[ResvRegion(0x8000_0000, 0x1000, RW, ResvType.DIRECT)])
    assert dev.group is not None and dev.group.default_domain is not None
    assert dev.group.default_domain.tlb_stats.flush_all == flushes
    p.close()


@pytest.mark.parametrize(("kernel", "prefetches"), [("6.12", 3), ("7.0", 2)])
def test_a_failed_group_attach_reverts_the_failing_device_in_6_12_only(
        kernel: str, prefetches: int) -> None:
    """__iommu_group_set_domain_internal, err_revert: 6.12 moves every device up to and
    including the one that failed back to group->domain; 7.0 stops before the failing
    one ("No need to revert the last gdev that failed to set domain"). The second device
    has a DIRECT region, so the blocking domain is refused for it (EINVAL)."""
    p = make_dma_platform(strict=True, kernel=kernel)
    first = p.device()
    second = p.device(0x20, "second", probe=False,
                      resv=[ResvRegion(0x8000_0000, 0x1000, RW, ResvType.DIRECT)])
    assert first.group is not None
    group = first.group
    p.core.probe_device(second, group)
    before = Counter(p.hw.stats.commands)
    with pytest.raises(KernelError, match="1:1"):
        p.core.set_group_domain(group, p.smmu.blocked_domain)
    assert (Counter(p.hw.stats.commands) - before)["PREFETCH_CFG"] == prefetches
    assert group.domain is group.default_domain
    p.close()


def _attr_index(domain: object, iova: int) -> int:
    pgtbl = domain.pgtbl  # type: ignore[attr-defined]
    return int(pgtbl.pgtable_walk(iova)[-1] >> 2 & 7)


@pytest.mark.parametrize(("kernel", "attr_index"), [("6.12", 1), ("7.0", 2)])
def test_dma_attr_mmio_exists_in_7_0_only(kernel: str, attr_index: int) -> None:
    """7.0 dma_info_to_prot: ``if (attrs & DMA_ATTR_MMIO) prot = IOMMU_MMIO`` (device
    memory, MAIR index 2); 6.12 has no DMA_ATTR_MMIO, so a coherent device's page is
    IOMMU_CACHE (index 1). dma_map_resource gives IOMMU_MMIO in both."""
    p = make_dma_platform(strict=True, kernel=kernel)
    dev = p.device()
    assert dev.group is not None
    domain = dev.group.default_domain
    bar = 0x10_0000_0000
    addr = dma_map_page(dev, bar, 0x1000, DmaDirection.FROM_DEVICE, DMA_ATTR_MMIO)
    assert _attr_index(domain, addr) == attr_index
    res = dma_map_resource(dev, bar, 0x1000, DmaDirection.FROM_DEVICE)
    assert _attr_index(domain, res) == 2
    dma_unmap_resource(dev, res, 0x1000, DmaDirection.FROM_DEVICE)
    dma_unmap_page(dev, addr, 0x1000, DmaDirection.FROM_DEVICE, DMA_ATTR_MMIO)
    p.close()


def test_setting_the_domain_a_group_is_on_does_nothing() -> None:
    """__iommu_group_set_domain_internal: ``if (group->domain == new_domain) return 0;``
    (both releases): no attach_dev, so no STE write and no command."""
    p = make_dma_platform(strict=True)
    dev = p.device()
    assert dev.group is not None and dev.group.domain is not None
    before = Counter(p.hw.stats.commands)
    p.core.set_group_domain(dev.group, dev.group.domain)
    assert Counter(p.hw.stats.commands) == before
    p.close()
