"""Linux 7.0's mock domain (selftest.c on generic_pt AMDv1, fmt/iommu_mock.c) against 6.12's
xarray mock: what a domain user sees differently, each side tested."""

from __future__ import annotations

import errno
import struct

import numpy as np
import pytest

from iommulab import Machine
from iommulab.drivers.mock import MockDomainOps, MockHw, MockIommu
from iommulab.drivers.mock_pt import MockPtDomainOps
from iommulab.errors import DmaFault, KernelError
from iommulab.iommu import IommuDomain
from iommulab.iommu.dirty import IommuDirtyBitmap, IovaBitmap
from iommulab.kernel import LINUX_7_0, KernelVersion
from iommulab.mem import PhysMem
from iommulab.vfio import uapi as u

BASE = 1 << 24
PA = 0x4010_0000


def _domain(kernel: str, mem: PhysMem | None = None, dirty: bool = False) -> IommuDomain:
    mem = mem or PhysMem("1G")
    drv = MockIommu(MockHw(mem.fail_nth), kernel=KernelVersion.parse(kernel), mem=mem)
    return drv.domain_alloc_paging_flags(drv.probe_device(7), 1 << 1 if dirty else 0)


def test_7_0_domain_is_a_generic_pt_table() -> None:
    """7.0 ``mock_domain_alloc_pgtable``: an iommupt domain (``is_iommupt``, map_range and
    unmap_range for the core) whose top table is a 4K page of the machine's memory."""
    mem = PhysMem("1G")
    before = mem.iommu_pages
    d = _domain("7.0", mem)
    assert isinstance(d.ops, MockPtDomainOps) and d.iommupt is d.ops
    assert mem.iommu_pages == before + 1
    d.free()  # pt_iommu_deinit frees every table
    assert mem.iommu_pages == before
    assert isinstance(_domain("6.12").ops, MockDomainOps)


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_unmap_inside_a_map(kernel: str) -> None:
    """6.12 ``mock_domain_unmap_pages`` erases whatever slots the range covers, reports the
    whole size and WARNs unless it starts and ends on a map's START/LAST slots. 7.0
    ``__unmap_range``: a start inside a leaf unmaps nothing (0, no WARN); a start at a
    leaf takes all of it."""
    d = _domain(kernel)
    d.map(BASE, PA, 0x4000, 3)  # 7.0: one 16K leaf; 6.12: eight slots
    if kernel == "6.12":
        assert d.unmap(BASE + 0x800, 0x1000) == 0x1000
        assert sum(d.warnings.values()) == 2
        assert d.iova_to_phys(BASE) == PA
    else:
        assert d.unmap(BASE + 0x800, 0x1000) == 0
        assert d.unmap(BASE, 0x800) == 0x4000 and not d.warnings
        assert d.iova_to_phys(BASE) == 0


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_fault_injection_point(kernel: str) -> None:
    """6.12 ``mock_domain_map_pages`` starts with ``iommufd_should_fail()`` (ENOENT); 7.0's
    map path has no such point, so the first failure a fail_nth sweep meets is the
    table allocation's ENOMEM (``iommu_alloc_pages_node_sz``). Nothing stays mapped."""
    mem = PhysMem("1G")
    mem.fail_nth.iommufd_test = True  # the mock exists only in CONFIG_IOMMUFD_TEST
    d = _domain(kernel, mem)
    mem.fail_nth.arm(1)
    with pytest.raises(KernelError) as err:
        d.map(BASE, PA, 0x1000, 3)
    assert err.value.errno == (errno.ENOENT if kernel == "6.12" else errno.ENOMEM)
    assert d.iova_to_phys(BASE) == 0
    mem.fail_nth.disarm()


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_free_of_a_mapped_domain(kernel: str) -> None:
    """6.12 ``mock_domain_free``: ``WARN_ON(!xa_empty(&mock->pfns))``; 7.0's
    ``pt_iommu_deinit`` frees the tables whatever they hold, without a WARN."""
    d = _domain(kernel)
    d.map(BASE, PA, 0x1000, 3)
    d.free()
    assert bool(d.warnings) == (kernel == "6.12")


def test_7_0_unmap_syncs_through_mock_iotlb_sync() -> None:
    """7.0's mock has an ``iotlb_sync`` op (``mock_iotlb_sync``: put the gather's freed
    tables): an unmap that gathered a range calls it once."""
    d = _domain("7.0")
    d.map(BASE, PA, 0x4000, 3)
    assert d.unmap(BASE, 0x4000) == 0x4000
    assert d.tlb_stats.iotlb_sync == 1 and d.tlb_stats.sync_bytes == 0x4000


def test_7_0_dirty_set_and_read_by_items() -> None:
    """``set_dirty`` marks the item holding the IOVA; a read of a range that starts inside
    a dirty leaf records from the range's start (``pts->range->va``), not the leaf's."""
    d = _domain("7.0", dirty=True)
    d.map(BASE, PA, 1 << 20, 3)  # one 1M item at level 1
    assert d.dirty_ops is not None
    d.dirty_ops.set_dirty(d, np.array([BASE + 0x1000], dtype=np.int64))  # type: ignore[attr-defined]
    bitmap = IovaBitmap(BASE, 1 << 21, 0x1000)
    d.dirty_ops.read_and_clear_dirty(d, BASE + 0x8000, 0x8000, 0, IommuDirtyBitmap(bitmap))
    got = bitmap.set_bits().tolist()
    assert got == list(range(8, 8 + 256))  # 1M from +32K, past the leaf's end
    d.unmap(BASE, 1 << 20)


def test_machine_mock_7_0_dma_and_vfio_type1_use_the_table() -> None:
    """``Machine("mock", kernel="7.0")``: VFIO type1 maps a 2M hugetlb page into the AMDv1
    mock as one 2M leaf (two 1M items at level 1), device DMA translates through it
    with the offset into the leaf, and an unmapped IOVA faults."""
    m = Machine("mock", ram="256M", kernel="7.0")
    dev = m.add_pci_device("0000:00:03.0")
    p = m.spawn_process()
    c, g = p.open("/dev/vfio/vfio"), p.open(f"/dev/vfio/{dev.iommu_group}")
    p.ioctl(g, u.VFIO_GROUP_SET_CONTAINER, bytearray(struct.pack("<i", c)))
    p.ioctl(c, u.VFIO_SET_IOMMU, u.VFIO_TYPE1v2_IOMMU)
    buf = p.mmap(2 << 20, "hugetlb-2M", populate=True)
    p.write(buf + 0x5802, b"amdv1")
    p.ioctl(c, u.VFIO_IOMMU_MAP_DMA, bytearray(u.DMA_MAP.pack(32, 3, buf, BASE, 2 << 20)))
    assert dev.dma_read(BASE + 0x5802, 5) == b"amdv1"
    domain = dev.group.domain if dev.group else None
    assert domain is not None and isinstance(domain.ops, MockPtDomainOps)
    assert domain.leaf_histogram() == {2 << 20: 1}
    with pytest.raises(DmaFault):
        dev.dma_read(BASE + (2 << 20), 4)
    p.ioctl(c, u.VFIO_IOMMU_UNMAP_DMA, bytearray(u.DMA_UNMAP.pack(24, 0, BASE, 2 << 20)))
    assert domain.leaf_histogram() == {}
    p.exit()
    assert m.mem.pins.pins == 0 and p.mm.locked_vm == 0
    assert m.kernel == LINUX_7_0


@pytest.mark.parametrize(("iova", "size", "err"), [
    (BASE, 0, errno.EINVAL), ((1 << 64) - 0x1000, 0x2000, errno.EOVERFLOW),
    (1 << 38, 0x1000, errno.ERANGE)])
def test_7_0_dirty_read_of_a_bad_range_fails_without_a_warning(iova: int, size: int,
                                                                err: int) -> None:
    """generic_pt ``read_and_clear_dirty`` returns ``make_range``'s error (EINVAL for no
    bytes, EOVERFLOW on wrap, ERANGE past the 38-bit table) as it is: its
    ``PT_WARN_ON(ret)`` only follows ``pt_walk_range`` (and is compiled out without
    CONFIG_DEBUG_GENERIC_PT)."""
    d = _domain("7.0", dirty=True)
    assert d.dirty_ops is not None
    with pytest.raises(KernelError) as exc:
        d.dirty_ops.read_and_clear_dirty(d, iova, size, 0, IommuDirtyBitmap())
    assert exc.value.errno == err and not d.warnings
    assert str(exc.value.strerror).startswith("read_and_clear_dirty: ")
