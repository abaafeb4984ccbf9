"""The iommufd selftest's mock IOMMU (selftest.c, Linux 6.12): slot values, WARNs, DMA."""

from __future__ import annotations

import errno
import struct

import pytest

from iommulab import Machine
from iommulab.drivers.mock import (
    MOCK_APERTURE_LAST,
    MOCK_APERTURE_START,
    MOCK_FLAGS_DEVICE_HUGE_IOVA,
    MOCK_HUGE_PAGE_SIZE,
    MOCK_IO_PAGE_SIZE,
    MOCK_PFN_HUGE_IOVA,
    MOCK_PFN_START_IOVA,
    MockDomainOps,
    MockHw,
    MockIommu,
)
from iommulab.errors import DmaFault, KernelError, NoEntry
from iommulab.iommu import DomainType, IommuDomain
from iommulab.kernel import KernelVersion
from iommulab.mem import FailNth
from iommulab.vfio import Container
from iommulab.vfio import uapi as u

BASE = MOCK_APERTURE_START
PA = 0x4010_0000


def _domain(flags: int = 0) -> IommuDomain:
    drv = MockIommu(MockHw(FailNth()))
    drv.device_flags[7] = flags
    return drv.domain_alloc_paging(drv.probe_device(7))


def _slots(domain: IommuDomain, iova: int, n: int) -> list[int | None]:
    assert isinstance(domain.ops, MockDomainOps)
    return [domain.ops.pfns.load((iova >> 11) + i) for i in range(n)]


def test_constants_are_the_selftests() -> None:
    """iommufd_test.h / selftest.c values on a 4K-page host."""
    assert (MOCK_APERTURE_START, MOCK_APERTURE_LAST) == (0x100_0000, 0x7FFF_FFFF)
    assert (MOCK_IO_PAGE_SIZE, MOCK_HUGE_PAGE_SIZE) == (2048, 1 << 20)
    assert MOCK_PFN_START_IOVA == 1 << 53 and MOCK_PFN_HUGE_IOVA == 1 << 55


def test_domain_geometry_and_page_sizes() -> None:
    d = _domain()
    assert d.pgsize_bitmap == 2048
    assert (d.geometry.aperture_start, d.geometry.aperture_end) == (BASE, (1 << 31) - 1)
    assert _domain(MOCK_FLAGS_DEVICE_HUGE_IOVA).pgsize_bitmap == 2048 | 1 << 20


def test_a_map_marks_its_first_and_last_slot() -> None:
    d = _domain()
    d.map(BASE, PA, 4 * 2048, 3)
    start = 1 << 53
    first = PA >> 11
    assert _slots(d, BASE, 5) == [first | start, first + 1, first + 2, (first + 3) | start,
                                  None]
    d.map(BASE + 0x4000, PA + 0x10000, 2048, 3)  # one slot: START and LAST at once
    assert _slots(d, BASE + 0x4000, 1) == [((PA + 0x10000) >> 11) | start]
    assert d.iova_to_phys(BASE + 0x800) == PA + 0x800
    assert not d.warnings


def test_a_huge_map_flags_every_slot() -> None:
    d = _domain(MOCK_FLAGS_DEVICE_HUGE_IOVA)
    d.map(1 << 24, 0x4000_0000, 1 << 20, 3)
    slots = _slots(d, 1 << 24, 512)
    assert all(s is not None and s & MOCK_PFN_HUGE_IOVA for s in slots)
    assert d.leaf_histogram() == {1 << 20: 1}
    assert d.unmap(1 << 24, 1 << 20) == 1 << 20 and not d.warnings


def test_unmap_inside_a_map_warns_and_unmapping_nothing_still_reports_the_size() -> None:
    d = _domain()
    d.map(BASE, PA, 0x4000, 3)
    assert d.unmap(BASE + 0x800, 0x1000) == 0x1000
    assert d.warnings["mock_domain_unmap_pages: unmap does not start a map"] == 1
    assert d.warnings["mock_domain_unmap_pages: unmap does not end a map"] == 1
    assert d.unmap(BASE + 0x10_0000, 0x800) == 0x800  # no slots there: still "unmapped"
    d.free()
    assert d.warnings["mock_domain_free: slots still mapped"] == 1


def test_iova_to_phys_returns_the_slot_without_the_offset() -> None:
    d = _domain()
    d.map(BASE, PA, 2048, 3)
    assert d.iova_to_phys(BASE + 0x10) == PA
    assert d.warnings["mock_domain_iova_to_phys: iova not 2K aligned"] == 1
    assert d.iova_to_phys(BASE + 0x800) == 0
    assert d.warnings["mock_domain_iova_to_phys: no entry"] == 1


def test_injected_failure_is_enoent_and_the_core_rolls_back() -> None:
    fail = FailNth()
    drv = MockIommu(MockHw(fail))
    d = drv.domain_alloc_paging(None)
    fail.arm(1)
    with pytest.raises(NoEntry):
        d.map(BASE, PA, 0x1000, 3)
    assert isinstance(d.ops, MockDomainOps) and d.ops.pfns.count == 0


def test_leaf_runs_follow_physical_contiguity() -> None:
    d = _domain()
    d.map(BASE, PA, 0x2000, 3)
    d.map(BASE + 0x2000, PA + 0x2000, 0x800, 3)  # continues physically: one run
    d.map(BASE + 0x3000, PA + 0x8000, 0x1000, 3)
    assert d.leaf_runs(BASE, 0x10000) == [(BASE, PA, 0x2800), (BASE + 0x3000, PA + 0x8000,
                                                                0x1000)]
    assert d.leaf_runs(BASE + 0x800, 0x800) == [(BASE + 0x800, PA + 0x800, 0x800)]
    assert d.leaf_histogram() == {2048: 7}


def test_machine_default_domain_is_blocking_and_dma_faults_are_recorded() -> None:
    m = Machine("mock", ram="256M")
    dev = m.add_pci_device("0000:00:03.0")
    assert dev.group is not None and dev.group.domain is not None
    assert dev.group.domain.type == DomainType.BLOCKED and not dev.dma_iommu
    with pytest.raises(DmaFault):
        dev.dma_read(BASE, 4)
    assert str(m.faults[-1]) == f"mock: read of {BASE:#x} by 0x18: no mapping"


def test_vfio_type1_on_the_mock_maps_2k_slots_in_the_aperture() -> None:
    m = Machine("mock", ram="256M")
    dev = m.add_pci_device("0000:00:03.0")
    p = m.spawn_process()
    c, g = p.open("/dev/vfio/vfio"), p.open(f"/dev/vfio/{dev.iommu_group}")
    p.ioctl(g, u.VFIO_GROUP_SET_CONTAINER, bytearray(struct.pack("<i", c)))
    p.ioctl(c, u.VFIO_SET_IOMMU, u.VFIO_TYPE1v2_IOMMU)
    buf = p.mmap(1 << 20, "anon")
    p.write(buf + 0x1802, b"two-k")
    with pytest.raises(OSError) as err:  # below the aperture: not a valid IOVA
        p.ioctl(c, u.VFIO_IOMMU_MAP_DMA, bytearray(u.DMA_MAP.pack(32, 3, buf, 0, 1 << 20)))
    assert err.value.errno == 22
    p.ioctl(c, u.VFIO_IOMMU_MAP_DMA, bytearray(u.DMA_MAP.pack(32, 3, buf, BASE, 1 << 20)))
    assert dev.dma_read(BASE + 0x1802, 5) == b"two-k"
    domain = dev.group.domain if dev.group else None
    assert domain is not None and domain.leaf_histogram() == {2048: 512}
    # 6.12's vfio_test_domain_fgsp unmapped its two-page map a page at a time: the mock
    # WARNs that neither unmap matches the map, as the kernel's would
    probe_warnings = domain.warnings.copy()
    assert sum(probe_warnings.values()) == 2
    container = p.files[c]
    assert isinstance(container, Container)
    report = container.report()
    assert report.iopte_bytes == ({2048: 1 << 20},) and report.pinned_pages == 256
    buf2 = bytearray(u.DMA_UNMAP.pack(24, 0, BASE, 1 << 20))
    p.ioctl(c, u.VFIO_IOMMU_UNMAP_DMA, buf2)
    assert u.DMA_UNMAP.unpack(buf2)[3] == 1 << 20
    assert domain.warnings == probe_warnings  # type1 unmapped exactly what it mapped
    p.exit()
    assert m.mem.pins.pins == 0 and p.mm.locked_vm == 0


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_pasid_flag_is_a_7_0_flag(kernel: str) -> None:
    """mock_domain_alloc_user (6.12) takes IOMMU_HWPT_ALLOC_NEST_PARENT |
    IOMMU_HWPT_ALLOC_DIRTY_TRACKING only; 7.0's mock_domain_alloc_paging_flags adds
    IOMMU_HWPT_ALLOC_PASID."""
    drv = MockIommu(MockHw(FailNth()), kernel=KernelVersion.parse(kernel))
    dev = drv.probe_device(7)
    pasid = 1 << 3
    if kernel == "6.12":
        with pytest.raises(KernelError) as exc:
            drv.domain_alloc_paging_flags(dev, pasid)
        assert exc.value.errno == errno.EOPNOTSUPP
    else:
        assert drv.domain_alloc_paging_flags(dev, pasid).type == DomainType.UNMANAGED
    assert drv.domain_alloc_paging_flags(dev, 1 << 0 | 1 << 1).dirty_ops is not None
