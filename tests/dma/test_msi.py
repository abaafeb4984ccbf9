"""MSI doorbells: the MSI cookie's rules, one mapping per doorbell page, writes through it."""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest

from iommulab import Prot
from iommulab.dma import MsiCookie, dma_get_msi_page, get_msi_cookie, prepare_msi
from iommulab.errors import DmaFault, KernelError
from iommulab.iommu import MSI_IOVA_BASE, DomainType, ResvRegion, ResvType

from .platform import DmaPlatform, make_dma_platform


@pytest.fixture
def plat() -> Iterator[DmaPlatform]:
    p = make_dma_platform(strict=True)
    yield p
    p.close()


def test_dma_domain_maps_the_doorbell_once(plat: DmaPlatform) -> None:
    dev = plat.device()
    other = plat.device(0x20, "other")
    doorbell = plat.its.doorbell
    with pytest.raises(DmaFault):  # no mapping yet: the write never reaches the ITS
        dev.msi_write(doorbell, 7)
    assert plat.its.interrupts == []
    addr = prepare_msi(dev, doorbell)
    assert addr == 0xFFFFF000 | (doorbell & 0xFFF)  # from the IOVA allocator, top-down
    page = dma_get_msi_page(dev, doorbell + 4)  # same page: the same mapping
    assert page is not None and page.iova == 0xFFFFF000 and page.phys == doorbell & ~0xFFF
    domain = dev.group.default_domain  # type: ignore[union-attr]
    assert domain is not None and domain.iova_to_phys(page.iova) == page.phys
    assert prepare_msi(dev, doorbell) == addr
    dev.msi_write(addr, 7)
    dev.msi_write(addr, 8)
    assert plat.its.interrupts == [(0x10, 7), (0x10, 8)]
    with pytest.raises(DmaFault):  # another group's domain has no such mapping
        other.msi_write(addr, 9)
    assert prepare_msi(other, doorbell) == addr  # its own domain, its own allocator
    other.msi_write(addr, 9)
    assert plat.its.interrupts[-1] == (0x20, 9)


def test_msi_cookie_rules_and_bump_allocator(plat: DmaPlatform) -> None:
    dev = plat.device()
    group = dev.group
    assert group is not None and group.default_domain is not None
    with pytest.raises(OSError, match="not UNMANAGED") as e:
        get_msi_cookie(group.default_domain, MSI_IOVA_BASE)
    assert e.value.errno == errno.EINVAL
    assert dev.dev_iommu is not None
    unmanaged = plat.smmu.domain_alloc_paging_flags(dev.dev_iommu.priv)
    assert unmanaged.type == DomainType.UNMANAGED
    get_msi_cookie(unmanaged, MSI_IOVA_BASE)
    with pytest.raises(OSError, match="already has a DMA_MSI cookie") as e:
        get_msi_cookie(unmanaged, MSI_IOVA_BASE)
    assert e.value.errno == errno.EEXIST
    plat.core.set_group_domain(group, unmanaged)
    try:
        a = prepare_msi(dev, plat.its.doorbell)
        assert a == MSI_IOVA_BASE | (plat.its.doorbell & 0xFFF)
        second = plat.mem.add_mmio(0x0900_0000, 0x1000, "second doorbell")
        b = dma_get_msi_page(dev, second.start)
        assert b is not None and b.iova == MSI_IOVA_BASE + 0x1000  # the bump allocator
        assert isinstance(unmanaged.cookie, MsiCookie)
        assert unmanaged.cookie.msi_iova == MSI_IOVA_BASE + 0x2000
        assert unmanaged.iova_to_phys(MSI_IOVA_BASE) == plat.its.doorbell & ~0xFFF
        dev.msi_write(a, 3)
        assert plat.its.interrupts == [(0x10, 3)]
        # WRITE without READ: LPAE has no write-only permission, so the PTE is read-write
        assert plat.smmu.hw.translate(0x10, a) == plat.its.doorbell
    finally:
        plat.core.set_group_domain(group, group.default_domain)
        unmanaged.free()


def test_identity_passes_the_doorbell_through(plat: DmaPlatform) -> None:
    dev = plat.device()
    group = dev.group
    assert group is not None and group.default_domain is not None
    plat.core.set_group_domain(group, plat.smmu.identity_domain)
    assert prepare_msi(dev, plat.its.doorbell) == plat.its.doorbell
    dev.msi_write(plat.its.doorbell, 1)
    assert plat.its.interrupts == [(0x10, 1)]
    plat.core.set_group_domain(group, group.default_domain)


def test_hardware_msi_region_is_identity(plat: DmaPlatform) -> None:
    hw_msi = ResvRegion(0x0808_0000, 0x20000, Prot.WRITE | Prot.MMIO, ResvType.MSI)
    dev = plat.device(resv=[hw_msi])
    # cookie_init_hw_msi_region pre-entered identity pages: nothing new is mapped
    assert prepare_msi(dev, plat.its.doorbell) == plat.its.doorbell
    domain = dev.group.default_domain  # type: ignore[union-attr]
    assert domain is not None and domain.iova_to_phys(plat.its.doorbell) == 0


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_a_domain_without_cookie_by_version(kernel: str) -> None:
    """6.12 iommu_dma_prepare_msi: ``if (!domain || !domain->iova_cookie)`` the doorbell is
    used as is (so the write is translated by a domain that never mapped it: a fault);
    7.0 iommu_dma_prepare_msi: a cookie neither DMA nor MSI is ``-EOPNOTSUPP``."""
    p = make_dma_platform(strict=True, kernel=kernel)
    dev = p.device()
    group = dev.group
    assert group is not None and group.default_domain is not None and dev.dev_iommu
    bare = p.smmu.domain_alloc_paging_flags(dev.dev_iommu.priv)
    p.core.set_group_domain(group, bare)
    try:
        if kernel == "6.12":
            assert prepare_msi(dev, p.its.doorbell) == p.its.doorbell
            with pytest.raises(DmaFault):
                dev.msi_write(p.its.doorbell, 1)
            p.smmu.handle_events()
        else:
            with pytest.raises(KernelError) as exc:
                prepare_msi(dev, p.its.doorbell)
            assert exc.value.errno == errno.EOPNOTSUPP
    finally:
        p.core.set_group_domain(group, group.default_domain)
        bare.free()
        p.close()
