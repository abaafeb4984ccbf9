"""The iommufd selftest's mock IOMMU (selftest.c, Linux 6.12): slot values, WARNs, DMA."""

from __future__ import annotations

import errno
import struct

import numpy as np
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
from iommulab.mem import FailNth, PhysMem
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
    fail = FailNth(iommufd_test=True)  # the mock exists only in CONFIG_IOMMUFD_TEST
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
    mem = PhysMem("64M")
    drv = MockIommu(MockHw(mem.fail_nth), kernel=KernelVersion.parse(kernel), mem=mem)
    dev = drv.probe_device(7)
    pasid = 1 << 3
    if kernel == "6.12":
        with pytest.raises(KernelError) as exc:
            drv.domain_alloc_paging_flags(dev, pasid)
        assert exc.value.errno == errno.EOPNOTSUPP
    else:
        assert drv.domain_alloc_paging_flags(dev, pasid).type == DomainType.UNMANAGED
    assert drv.domain_alloc_paging_flags(dev, 1 << 0 | 1 << 1).dirty_ops is not None


# -- 6.12 mock_domain_read_and_clear_dirty -------------------------------------------------------
_DIRTY = MOCK_PFN_START_IOVA << 1  # MOCK_PFN_DIRTY_IOVA


def _reference_read_and_clear_dirty(slots: dict[int, int], iova: int, size: int, flags: int
                                    ) -> list[tuple[int, int]]:
    """selftest.c's loop, a slot at a time: the records ``(iova, pgsize)`` it makes, and
    ``slots`` cleared as it clears them."""
    records = []
    end = iova + size
    while True:  # do { ... } while (iova < end)
        ent = slots.get(iova // MOCK_IO_PAGE_SIZE)
        pgsize = MOCK_IO_PAGE_SIZE
        if ent is not None:
            if ent & MOCK_PFN_HUGE_IOVA:
                pgsize = MOCK_HUGE_PAGE_SIZE
            head = iova & ~(pgsize - 1)
            dirty = False
            # mock_test_and_clear_dirty
            for cur in range(head, head + pgsize - 1, MOCK_IO_PAGE_SIZE):
                slot = cur // MOCK_IO_PAGE_SIZE
                if slot in slots and slots[slot] & _DIRTY:
                    dirty = True
                    if not flags & 1:  # IOMMU_DIRTY_NO_CLEAR
                        slots[slot] &= ~_DIRTY
            if dirty:
                records.append((iova, pgsize))
        iova += pgsize
        if iova >= end:
            return records


def _mixed_dirty_domain(rng: np.random.Generator, periods: int) -> IommuDomain:
    """Runs of 1M HUGE entries and of 2K slots, with holes, some slots dirty."""
    d = _domain(MOCK_FLAGS_DEVICE_HUGE_IOVA)
    assert isinstance(d.ops, MockDomainOps)
    iova = BASE
    for _ in range(periods):
        kind = int(rng.integers(3))
        n = int(rng.integers(1, 4))
        if kind == 0:
            d.ops.map_pages(d, iova, PA, MOCK_HUGE_PAGE_SIZE, n, 3, 0)
        elif kind == 1:
            slots = int(rng.integers(1, 700))
            d.ops.map_pages(d, iova, PA, MOCK_IO_PAGE_SIZE, slots, 3, 0)
        iova += n * MOCK_HUGE_PAGE_SIZE
    idx, vals = d.ops.pfns.present(BASE >> 11, (iova - BASE) >> 11)
    dirty = rng.random(len(idx)) < 0.05
    d.ops.pfns.update(idx[dirty], vals[dirty] | np.uint64(_DIRTY))
    return d


@pytest.mark.parametrize("seed", range(6))
def test_6_12_dirty_read_follows_the_kernels_walk(seed: int) -> None:
    """``mock_domain_read_and_clear_dirty`` against selftest.c's loop run slot by slot:
    steps of 2K past empty and ordinary slots, of 1M from a HUGE slot (testing and
    clearing the whole 1M region around it, recording 1M from the walked IOVA); the
    same bitmap, gather and slots afterwards, with and without NO_CLEAR, from aligned
    and unaligned starts."""
    from iommulab.drivers.mock import MockDirtyOps
    from iommulab.iommu import IommuDirtyBitmap, IommuIotlbGather, IovaBitmap

    rng = np.random.default_rng(seed)
    d = _mixed_dirty_domain(rng, 40)
    assert isinstance(d.ops, MockDomainOps)
    ops = MockDirtyOps()
    ops.tracking = True
    length = 40 * 3 * MOCK_HUGE_PAGE_SIZE
    for _ in range(4):
        start = BASE + int(rng.integers(0, length // 2)) // MOCK_IO_PAGE_SIZE * MOCK_IO_PAGE_SIZE
        size = int(rng.integers(1, length // 2)) // MOCK_IO_PAGE_SIZE * MOCK_IO_PAGE_SIZE
        flags = int(rng.integers(2))
        idx, vals = d.ops.pfns.present(BASE >> 11, length >> 11)
        slots = dict(zip(idx.tolist(), vals.tolist(), strict=True))
        records = _reference_read_and_clear_dirty(slots, start, size, flags)
        want, got = IovaBitmap(BASE, 2 * length, MOCK_IO_PAGE_SIZE), \
            IovaBitmap(BASE, 2 * length, MOCK_IO_PAGE_SIZE)
        want_gather, gather = IommuIotlbGather(), IommuIotlbGather()
        for iova, pgsize in records:
            IommuDirtyBitmap(want, want_gather).record(iova, pgsize)
        ops.read_and_clear_dirty(d, start, size, flags, IommuDirtyBitmap(got, gather))
        assert got.to_bytes() == want.to_bytes()
        assert (gather.start, gather.end) == (want_gather.start, want_gather.end)
        idx, vals = d.ops.pfns.present(BASE >> 11, length >> 11)
        assert dict(zip(idx.tolist(), vals.tolist(), strict=True)) == slots


def test_6_12_dirty_read_over_alternating_steps_reports_every_page() -> None:
    """A walk that alternates 1M and 2K steps (periods of one HUGE entry and 1M of 2K
    slots, all dirty) reports every page and clears every slot it walked. (Its cost,
    one vector step per stretch, is a figure of benchmarks/bench_pgtable.py.)"""
    from iommulab.drivers.mock import MockDirtyOps
    from iommulab.iommu import IommuDirtyBitmap, IovaBitmap

    d = _domain(MOCK_FLAGS_DEVICE_HUGE_IOVA)
    assert isinstance(d.ops, MockDomainOps)
    periods, period = 64, 2 * MOCK_HUGE_PAGE_SIZE
    for i in range(periods):
        d.ops.map_pages(d, i * period, PA, MOCK_HUGE_PAGE_SIZE, 1, 3, 0)
        d.ops.map_pages(d, i * period + MOCK_HUGE_PAGE_SIZE, PA, MOCK_IO_PAGE_SIZE, 512, 3, 0)
    idx, vals = d.ops.pfns.present(0, periods * period >> 11)
    d.ops.pfns.update(idx, vals | np.uint64(_DIRTY))
    ops = MockDirtyOps()
    ops.tracking = True
    bitmap = IovaBitmap(0, periods * period, 4096)
    ops.read_and_clear_dirty(d, 0, periods * period, 0, IommuDirtyBitmap(bitmap))
    assert bitmap.count() == bitmap.npages
    idx, vals = d.ops.pfns.present(0, periods * period >> 11)
    assert len(idx) == periods * 1024 and not (vals & np.uint64(_DIRTY)).any()


def test_7_0_mock_needs_the_machines_memory() -> None:
    """7.0's mock domains are generic_pt tables in the machine's memory (its page
    accounting and fail_nth): a MockIommu without ``mem`` would keep them in memory of
    its own, so 7.0 refuses to build one; 6.12's xarray mock needs none."""
    with pytest.raises(ValueError, match="pass mem="):
        MockIommu(MockHw(FailNth()), kernel=KernelVersion.parse("7.0"))
    assert MockIommu(MockHw(FailNth())).domain_alloc_paging().pgsize_bitmap == MOCK_IO_PAGE_SIZE
