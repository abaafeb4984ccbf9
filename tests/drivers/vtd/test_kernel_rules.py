"""The intel-iommu rules of Linux 6.12 (its own table code) and 7.0 (generic_pt vtdss).

Each test names the kernel function it follows; where the releases differ, both
sides are checked.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from iommulab.devices import DmaDevice
from iommulab.drivers.vtd import IntelIommu, VtdHw
from iommulab.errors import DmaFault
from iommulab.iommu import IommuCap, IommuDomain, IommuIotlbGather
from iommulab.kernel import LINUX_6_12, LINUX_7_0, KernelVersion
from iommulab.mem import PhysMem
from iommulab.prot import Prot
from iommulab.sizes import SZ_1G, SZ_2M, SZ_4K

RW = Prot.READ | Prot.WRITE
KERNELS = [LINUX_6_12, LINUX_7_0]


@dataclass
class Vtd:
    """One unit, one device, its domain attached; ``close`` checks nothing is left."""

    mem: PhysMem
    drv: IntelIommu
    dev: DmaDevice
    master: Any
    domain: IommuDomain

    def new_domain(self) -> IommuDomain:
        d = self.drv.domain_alloc_paging(self.master)
        self.drv.attach_dev(d, self.master)
        return d

    def close(self) -> None:
        self.drv.release_device(self.master)
        self.domain.free()
        assert self.mem.iommu_pages == 0


def _vtd(kernel: KernelVersion, **hw: Any) -> Vtd:
    mem = PhysMem("8G")
    unit = VtdHw(mem, **hw)
    drv = IntelIommu(unit, kernel=kernel)
    dev = DmaDevice("edu", mem, unit, 0x10)
    master = drv.probe_device(dev.sid)
    domain = drv.domain_alloc_paging(master)
    drv.attach_dev(domain, master)
    return Vtd(mem, drv, dev, master, domain)


@pytest.fixture(params=KERNELS, ids=str)
def vtd(request: pytest.FixtureRequest) -> Iterator[Vtd]:
    v = _vtd(request.param)
    yield v
    v.close()


def _leaf(d: IommuDomain, iova: int) -> int:
    assert d.pgtbl is not None
    return d.pgtbl.pgtable_walk(iova)[-1]


# -- D3: a map over a present entry --------------------------------------------------------------
def test_612_map_over_a_present_page_warns_keeps_it_and_maps_the_rest() -> None:
    """6.12 __domain_mapping: try_cmpxchg64_local fails on a set PTE, pr_crit + WARN_ON,
    the old PTE stays, the loop goes on and the map returns 0."""
    v = _vtd(LINUX_6_12)
    d = v.domain
    d.map(0x1000, 0xA000, SZ_4K, RW)
    d.map(0x0, 0x5_0000, 3 * SZ_4K, RW)  # pages 0 and 2 are new, page 1 is taken
    assert [d.iova_to_phys(i * SZ_4K) for i in range(3)] == [0x5_0000, 0xA000, 0x5_2000]
    assert d.pgtbl is not None
    assert d.pgtbl.stats.warnings["ERROR: DMA PTE for vPFN already set"] == 1
    d.unmap(0, 3 * SZ_4K)
    v.close()


def test_70_map_over_a_present_entry_is_eaddrinuse_and_leaves_nothing() -> None:
    """7.0 iommu_pt.h __map_range_leaf/clear_contig: -EADDRINUSE over a present OA; the
    core unmaps what the call mapped before it (iommu_map_nosync)."""
    v = _vtd(LINUX_7_0)
    d = v.domain
    d.map(0x1000, 0xA000, SZ_4K, RW)
    with pytest.raises(OSError) as err:
        d.map(0x0, 0x5_0000, 3 * SZ_4K, RW)
    assert err.value.errno == errno.EADDRINUSE and "0x1000" in str(err.value)
    assert [d.iova_to_phys(i * SZ_4K) for i in range(3)] == [0, 0xA000, 0]
    with pytest.raises(OSError) as err:
        d.map(0x1000, 0x5_0000, SZ_4K, RW)  # __do_map_single_page
    assert err.value.errno == errno.EADDRINUSE
    assert d.pgtbl is not None and not d.pgtbl.stats.warnings
    d.unmap(0x1000, SZ_4K)
    v.close()


def test_612_superpage_over_small_pages_drops_them_frees_the_table_and_flushes() -> None:
    """6.12 switch_to_super_page: dma_pte_free_pagetable on each present slot, then
    cache_tag_flush_range; the 2M leaf is written, no error."""
    v = _vtd(LINUX_6_12)
    d = v.domain
    d.map(SZ_2M, 0x7000_0000, 2 * SZ_4K, RW)
    assert d.pgtbl is not None
    freed = d.pgtbl.stats.tables_freed
    d.map(SZ_2M, 0x4000_0000, SZ_2M, RW)
    assert d.iova_to_phys(SZ_2M + SZ_4K) == 0x4000_1000
    assert d.leaf_histogram() == {SZ_2M: 1}
    assert d.pgtbl.stats.tables_freed == freed + 1
    assert (d.tlb_stats.flush_walk, d.tlb_stats.flush_walk_bytes) == (1, SZ_2M)
    d.map(SZ_2M, 0x6000_0000, SZ_2M, RW)  # a superpage over a superpage: replaced too
    assert d.iova_to_phys(SZ_2M) == 0x6000_0000 and d.tlb_stats.flush_walk == 2
    d.unmap(SZ_2M, SZ_2M)
    v.close()


def test_612_superpage_switch_invalidates_on_a_scalable_unit() -> None:
    """6.12 switch_to_super_page's cache_tag_flush_range reaches the unit: a 4K
    translation the device has cached is gone once a 2M leaf replaces its table, so
    the next DMA lands in the superpage (without the descriptor it would hit the old
    page)."""
    v = _vtd(LINUX_6_12, scalable=True, flts=True, slts=True, smpwc=True, srs=True)
    d = v.domain
    assert v.drv.hw.sm is not None
    d.map(SZ_2M, 0x7000_0000, 2 * SZ_4K, RW)
    v.dev.dma_write(SZ_2M + 8, b"old")
    sent = dict(v.drv.hw.sm.counts)
    d.map(SZ_2M, 0x4000_0000, SZ_2M, RW)
    counts = v.drv.hw.sm.counts
    assert sum(counts[k] - sent.get(k, 0) for k in ("IotlbInv", "PiotlbInv")) == 1
    v.dev.dma_write(SZ_2M + 8, b"new")
    assert v.mem.read(0x4000_0008, 3) == b"new" and v.mem.read(0x7000_0008, 3) == b"old"
    d.unmap(SZ_2M, SZ_2M)
    v.drv.release_device(v.master)
    d.free()
    assert v.mem.iommu_pages == 2  # the root table and the bus's context table stay


def test_70_superpage_over_a_table_needs_it_empty() -> None:
    """7.0 clear_contig: a table with a leaf under it is -EADDRINUSE; an empty one is
    freed through the map's gather and synced once (iotlb_sync after do_map)."""
    v = _vtd(LINUX_7_0)
    d = v.domain
    d.map(SZ_2M, 0x7000_0000, SZ_4K, RW)
    with pytest.raises(OSError) as err:
        d.map(SZ_2M, 0x4000_0000, SZ_2M, RW)
    assert err.value.errno == errno.EADDRINUSE
    assert d.iova_to_phys(SZ_2M) == 0x7000_0000
    assert d.unmap(SZ_2M, SZ_4K) == SZ_4K  # the 4K table stays (range does not cover it)
    assert d.pgtbl is not None
    freed, syncs = d.pgtbl.stats.tables_freed, d.tlb_stats.iotlb_sync
    d.map(SZ_2M, 0x4000_0000, SZ_2M, RW)
    assert d.pgtbl.stats.tables_freed == freed + 1 and d.tlb_stats.iotlb_sync == syncs + 1
    assert d.leaf_histogram() == {SZ_2M: 1}
    d.unmap(SZ_2M, SZ_2M)
    v.close()


def test_map_below_a_superpage() -> None:
    """6.12 pfn_to_dma_pte with a target level descends through a superpage as if it were a
    table: the PTE lands in the superpage's memory and the map succeeds. 7.0 __map_range:
    an OA in the way is -EADDRINUSE."""
    for kernel in KERNELS:
        v = _vtd(kernel)
        d = v.domain
        pa = v.mem.alloc_pages(9) << 12
        d.map(SZ_2M, pa, SZ_2M, RW)
        if kernel == LINUX_6_12:
            d.map(SZ_2M + SZ_4K, 0x5000, SZ_4K, RW)
            assert v.mem.read_u64(pa + 8) == 0x5000 | 3  # entry 1 of the "table"
            assert d.iova_to_phys(SZ_2M + SZ_4K) == pa + SZ_4K  # still the superpage
        else:
            with pytest.raises(OSError) as err:
                d.map(SZ_2M + SZ_4K, 0x5000, SZ_4K, RW)
            assert err.value.errno == errno.EADDRINUSE
        d.unmap(SZ_2M, SZ_2M)
        v.mem.free_pages(pa >> 12, 9)
        v.close()


# -- D4: depth from SAGAW, IOVA width from MGAW----------------------------------------------------
@pytest.mark.parametrize("kernel", KERNELS, ids=str)
@pytest.mark.parametrize(("aw", "sagaw", "levels"), [
    (46, 0, 4), (57, 0, 5), (39, 0b100, 4), (48, 0, 4), (39, 0, 3)])
def test_table_depth_from_sagaw_and_aperture_from_mgaw(kernel: KernelVersion, aw: int,
                                                       sagaw: int, levels: int) -> None:
    """6.12 paging_domain_alloc / prepare_domain_attach_device (agaw from SAGAW, gaw =
    min(agaw width, MGAW)); 7.0 compute_vasz_lg2_ss: a table of ``levels`` and an
    aperture of 2^aw - 1; a device reaches the top page."""
    v = _vtd(kernel, aw=aw, sagaw=sagaw)
    d = v.domain
    assert d.pgtbl is not None and len(d.pgtbl.format.levels) == levels
    assert d.geometry.aperture_end == (1 << aw) - 1
    top = (1 << aw) - SZ_4K
    pa = v.mem.alloc_pages(0) << 12
    d.map(top, pa, SZ_4K, RW)
    v.mem.write(pa + 8, b"top")
    assert v.dev.dma_read(top + 8, 3) == b"top"
    with pytest.raises(OSError):
        d.map(1 << aw, pa, SZ_4K, RW)
    d.unmap(top, SZ_4K)
    v.mem.free_pages(pa >> 12, 0)
    v.close()


def test_612_domain_is_57_bits_with_4k_pages_until_the_first_attach() -> None:
    """6.12 intel_iommu_domain_alloc: md_domain_init(57) (5 levels), ops->pgsize_bitmap
    (4K); domain_attach_iommu -> domain_update_iommu_cap sizes it to the unit. 7.0
    sizes the domain to the unit at allocation."""
    for kernel, before in ((LINUX_6_12, ((1 << 57) - 1, SZ_4K, 5)),
                           (LINUX_7_0, ((1 << 39) - 1, SZ_4K | SZ_2M | SZ_1G, 3))):
        v = _vtd(kernel)
        d = v.drv.domain_alloc_paging(v.master)
        assert d.pgtbl is not None
        assert (d.geometry.aperture_end, d.pgsize_bitmap, len(d.pgtbl.format.levels)) == before
        v.drv.attach_dev(d, v.master)
        assert (d.geometry.aperture_end, d.pgsize_bitmap, len(d.pgtbl.format.levels)) == (
            (1 << 39) - 1, SZ_4K | SZ_2M | SZ_1G, 3)
        v.drv.attach_dev(v.domain, v.master)
        d.free()
        v.close()


def test_612_a_wide_domain_goes_onto_a_narrow_unit_and_loses_its_top_level() -> None:
    """6.12 prepare_domain_attach_device: only what is mapped (max_addr) must fit the unit;
    gaw shrinks and "Knock out extra levels" makes pgd[0]'s table the root. The other
    unit's context still points at the freed root (the model's freed page reads zero).
    7.0 paging_domain_compatible_second_stage: MGAW below the IOVA width is EINVAL."""
    for kernel in KERNELS:
        mem = PhysMem("8G")
        wide, narrow = VtdHw(mem, aw=48), VtdHw(mem, aw=39)
        drv = IntelIommu(wide, kernel=kernel)
        drv.units.append(narrow)
        drv.unit_of[0x18] = narrow
        dev1, dev2 = DmaDevice("a", mem, wide, 0x10), DmaDevice("b", mem, narrow, 0x18)
        m1, m2 = drv.probe_device(0x10), drv.probe_device(0x18)
        d = drv.domain_alloc_paging(m1)
        drv.attach_dev(d, m1)
        pa = mem.alloc_pages(0) << 12
        mem.write(pa, b"ok")
        d.map(0x1000, pa, SZ_4K, RW)
        assert d.pgtbl is not None and len(d.pgtbl.format.levels) == 4
        if kernel == LINUX_6_12:
            drv.attach_dev(d, m2)
            assert len(d.pgtbl.format.levels) == 3 and d.geometry.aperture_end == (1 << 39) - 1
            assert dev2.dma_read(0x1000, 2) == b"ok"
            with pytest.raises(DmaFault):
                dev1.dma_read(0x1000, 2)
            with pytest.raises(OSError) as err:  # gaw is 39 now
                d.map(1 << 39, pa, SZ_4K, RW)
            assert err.value.errno == errno.EFAULT
        else:
            with pytest.raises(OSError) as err:
                drv.attach_dev(d, m2)
            assert err.value.errno == errno.EINVAL and "MGAW 39" in str(err.value)
        for m in (m1, m2):
            drv.release_device(m)
        d.unmap(0x1000, SZ_4K)
        d.free()
        mem.free_pages(pa >> 12, 0)
        assert mem.iommu_pages == 0


def test_612_attach_refuses_a_domain_mapped_beyond_the_unit() -> None:
    """6.12 prepare_domain_attach_device: dmar_domain->max_addr > 1 << addr_width is
    EINVAL, and the device is left blocked."""
    mem = PhysMem("8G")
    wide, narrow = VtdHw(mem, aw=48), VtdHw(mem, aw=39)
    drv = IntelIommu(wide, kernel=LINUX_6_12)
    drv.units.append(narrow)
    drv.unit_of[0x18] = narrow
    m1, m2 = drv.probe_device(0x10), drv.probe_device(0x18)
    d = drv.domain_alloc_paging(m1)
    drv.attach_dev(d, m1)
    d.map(1 << 40, 0x10_0000, SZ_4K, RW)
    with pytest.raises(OSError, match="beyond the unit's 39-bit width") as err:
        drv.attach_dev(d, m2)
    assert err.value.errno == errno.EINVAL and m2.domain is None and not narrow.contexts
    for m in (m1, m2):
        drv.release_device(m)
    d.unmap(1 << 40, SZ_4K)
    d.free()
    assert mem.iommu_pages == 0


@pytest.mark.parametrize("kernel", KERNELS, ids=str)
def test_an_iommufd_domain_of_a_wide_unit_does_not_attach_to_a_narrow_one(
        kernel: KernelVersion) -> None:
    """6.12 paging_domain_alloc (intel_iommu_domain_alloc_user's domains) sets
    max_addr = __DOMAIN_MAX_ADDR(addr_width), so prepare_domain_attach_device's
    max_addr > 1 << addr_width refuses the unmapped 48-bit domain on a 39-bit unit
    (EINVAL, the device left blocked, the table untouched), and takes it on a unit as
    wide. Only md_domain_init's domains start at max_addr 0. 7.0
    paging_domain_compatible_second_stage refuses it too (MGAW below the width)."""
    mem = PhysMem("8G")
    wide, narrow, twin = VtdHw(mem, aw=48), VtdHw(mem, aw=39), VtdHw(mem, aw=48)
    drv = IntelIommu(wide, kernel=kernel)
    drv.units += [narrow, twin]
    drv.unit_of.update({0x18: narrow, 0x20: twin})
    m1, m2, m3 = drv.probe_device(0x10), drv.probe_device(0x18), drv.probe_device(0x20)
    d = drv.domain_alloc_paging_flags(m1)
    assert d.pgtbl is not None and len(d.pgtbl.format.levels) == 4
    with pytest.raises(OSError, match=r"beyond the unit's 39-bit width|MGAW 39") as err:
        drv.attach_dev(d, m2)
    assert err.value.errno == errno.EINVAL and m2.domain is None and not narrow.contexts
    assert len(d.pgtbl.format.levels) == 4 and d.geometry.aperture_end == (1 << 48) - 1
    drv.attach_dev(d, m3)
    d.map((1 << 48) - SZ_4K, 0x10_0000, SZ_4K, RW)
    assert d.iova_to_phys((1 << 48) - SZ_4K) == 0x10_0000
    for m in (m1, m2, m3):
        drv.release_device(m)
    d.unmap((1 << 48) - SZ_4K, SZ_4K)
    d.free()
    assert mem.iommu_pages == 0


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_iommufd_gives_a_narrow_units_device_its_own_hwpt(kernel: str) -> None:
    """What the rule above means through iommufd: the auto domain of a device behind
    the 48-bit unit refuses the 39-bit unit's device (EINVAL), so
    iommufd_device_auto_get_domain allocates it a second HWPT on the same IOAS, and
    both devices translate."""
    from iommulab import Machine

    from ...helpers import Host

    m = Machine("x86-vtd", ram="256M", kernel=kernel)
    wide = m.add_iommu_unit(aw=48)
    devs = [m.add_pci_device("0000:00:02.0", iommu_unit=wide),
            m.add_pci_device("0000:00:03.0")]
    tables = m.mem.iommu_pages  # the default domains'
    p = m.spawn_process(memlock_limit=None)
    h = Host(m, p, p.open("/dev/iommu"))
    ioas = h.ioas()
    hwpts = [h.attach(h.bind(n)[0], ioas) for n in (0, 1)]
    assert hwpts[0] != hwpts[1]
    buf = p.mmap(SZ_2M, "thp")
    p.write(buf, b"both")
    iova = h.map(ioas, buf, SZ_2M)
    assert [d.dma_read(iova, 4) for d in devs] == [b"both", b"both"]
    p.exit()
    assert m.mem.pins.pins == 0 and m.mem.iommu_pages == tables


def test_612_the_last_device_of_a_unit_leaving_updates_the_aperture() -> None:
    """6.12 domain_detach_iommu: when the unit's reference count drops to 0 it runs
    domain_update_iommu_cap, which sets the aperture from gaw. A 48-bit unit's device
    joining after a 39-bit unit's has cut gaw to 39 sets gaw back to 48
    (prepare_domain_attach_device) without an update (its unit is already held), so
    the aperture stays 39 bits until the 39-bit unit's device leaves."""
    mem = PhysMem("8G")
    wide, narrow = VtdHw(mem, aw=48), VtdHw(mem, aw=39)
    drv = IntelIommu(wide, kernel=LINUX_6_12)
    drv.units.append(narrow)
    drv.unit_of[0x18] = narrow
    m1, m2, m3 = drv.probe_device(0x10), drv.probe_device(0x18), drv.probe_device(0x20)
    d = drv.domain_alloc_paging(m1)
    apertures = []
    for m in (m1, m2, m3):
        drv.attach_dev(d, m)
        apertures.append(d.geometry.aperture_end.bit_length())
    drv.release_device(m2)
    apertures.append(d.geometry.aperture_end.bit_length())
    assert apertures == [48, 39, 39, 48]
    for m in (m1, m3):
        drv.release_device(m)
    d.free()
    assert mem.iommu_pages == 0


def test_70_attach_checks_sagaw_depth() -> None:
    """7.0 paging_domain_compatible_second_stage: !(cap_sagaw & BIT(pt_info.aw)) is EINVAL
    (a 4-level domain on a 3-level-only unit of the same MGAW)."""
    mem = PhysMem("8G")
    deep, shallow = VtdHw(mem, aw=39, sagaw=0b100), VtdHw(mem, aw=39)
    drv = IntelIommu(deep, kernel=LINUX_7_0)
    drv.units.append(shallow)
    drv.unit_of[0x18] = shallow
    m1, m2 = drv.probe_device(0x10), drv.probe_device(0x18)
    d = drv.domain_alloc_paging(m1)
    with pytest.raises(OSError, match="4-level table on a unit with SAGAW 0x2"):
        drv.attach_dev(d, m2)
    drv.release_device(m2)
    d.free()


# -- D5: output addresses ------------------------------------------------------------------------
@pytest.mark.parametrize("kernel", KERNELS, ids=str)
def test_output_address_is_not_limited_by_mgaw(kernel: KernelVersion) -> None:
    """6.12 __domain_mapping checks only the IOVA; 7.0 map_range checks the OA against
    vtdss's 52 bits (oalog2_div): a PA at 2^40 maps on a 39-bit domain in both; 2^52
    maps in 6.12 (dma_pte_addr keeps bit 52) and is ERANGE in 7.0."""
    v = _vtd(kernel)
    d = v.domain
    d.map(0x1_0000, 1 << 40, SZ_4K, RW)
    assert d.iova_to_phys(0x1_0000) == 1 << 40
    if kernel == LINUX_6_12:
        d.map(0x2_0000, 1 << 52, SZ_4K, RW)
        assert d.iova_to_phys(0x2_0000) == 1 << 52
        d.unmap(0x2_0000, SZ_4K)
    else:
        with pytest.raises(OSError) as err:
            d.map(0x2_0000, 1 << 52, SZ_4K, RW)
        assert err.value.errno == errno.ERANGE
    d.unmap(0x1_0000, SZ_4K)
    v.close()


# -- D6: the gather -------------------------------------------------------------------------------
def test_unmap_across_page_sizes_syncs_per_kernel() -> None:
    """6.12 intel_iommu_unmap: iommu_iotlb_gather_add_page per unmap_pages call syncs when
    the size changes (1M of 4K pages, then a 2M superpage: 2 syncs). 7.0
    gather_range_pages with PT_FEAT_FLUSH_RANGE: one range, one sync of [1M, 4M)."""
    for kernel, syncs in ((LINUX_6_12, 2), (LINUX_7_0, 1)):
        v = _vtd(kernel)
        d = v.domain
        d.map(0x10_0000, 0x1_0010_0000, 256 * SZ_4K, RW)
        d.map(SZ_2M, 0x1_0020_0000, SZ_2M, RW)
        assert d.unmap(0x10_0000, 0x30_0000) == 0x30_0000
        assert (d.tlb_stats.iotlb_sync, d.tlb_stats.sync_bytes) == (syncs, 0x30_0000)
        d.map(0x10_0000, 0x1_0010_0000, SZ_4K, RW)
        queued = IommuIotlbGather(queued=True)  # DMA-FQ: neither adds to the gather
        assert d.unmap_fast(0x10_0000, SZ_4K, queued) == SZ_4K and queued.empty
        v.close()


def test_612_syncs_even_an_empty_gather() -> None:
    """6.12 iommu_iotlb_sync calls ->iotlb_sync whatever the gather holds (7.0 only when
    start < end): an unaligned unmap that unmaps nothing still reaches the driver."""
    for kernel, syncs in ((LINUX_6_12, 1), (LINUX_7_0, 0)):
        v = _vtd(kernel)
        d = v.domain
        d.map(0x10_0000, 0x1_0010_0000, SZ_4K, RW)
        assert d.unmap(0x10_0800, SZ_4K) == 0
        assert d.tlb_stats.iotlb_sync == syncs
        d.unmap(0x10_0000, SZ_4K)
        v.close()


# -- issue item 4: an unmap that starts at a superpage ---------------------------------------------
def test_unmap_from_a_superpage_start_removes_all_of_it(vtd: Vtd) -> None:
    """6.12 intel_iommu_unmap ("Cope with horrid API ..."): size raised to the superpage;
    7.0 __unmap_range: an OA at the start goes whole. Both return 2M for a 4K unmap."""
    d = vtd.domain
    d.map(SZ_2M, 0x4000_0000, SZ_2M, RW)
    assert d.unmap(SZ_2M, SZ_4K) == SZ_2M
    assert d.iova_to_phys(SZ_2M + 0x1000) == 0 and d.leaf_histogram() == {}
    d.map(SZ_1G, 0x8000_0000, SZ_1G, RW)
    assert d.unmap(SZ_1G, SZ_2M) == SZ_1G


def test_unmap_from_inside_a_superpage() -> None:
    """7.0 __unmap_range: a start inside an OA is -EINVAL, 0 unmapped, nothing changes.
    6.12 rounds the size up to 2M from the unaligned start (returns 2M) and walks into
    the superpage's memory as a table; the superpage itself stays mapped."""
    for kernel, got in ((LINUX_6_12, SZ_2M), (LINUX_7_0, 0)):
        v = _vtd(kernel)
        d = v.domain
        pa = v.mem.alloc_pages(9) << 12
        d.map(SZ_2M, pa, SZ_2M, RW)
        assert d.unmap(SZ_2M + SZ_4K, SZ_4K) == got
        assert d.iova_to_phys(SZ_2M + SZ_4K) == pa + SZ_4K
        d.unmap(SZ_2M, SZ_2M)
        v.mem.free_pages(pa >> 12, 9)
        v.close()


def test_unmap_of_nothing_and_across_holes() -> None:
    """6.12 intel_iommu_unmap returns the size of the empty entry its walk stops at and
    clears the whole range; 7.0 __unmap_range stops at the first empty entry."""
    for kernel, empty, holes in ((LINUX_6_12, SZ_2M, 3 * SZ_4K), (LINUX_7_0, 0, SZ_4K)):
        v = _vtd(kernel)
        d = v.domain
        d.map(0x0, 0x5000, SZ_4K, RW)
        d.map(0x2000, 0x7000, SZ_4K, RW)
        assert d.unmap(0x0, 3 * SZ_4K) == holes
        assert d.unmap(4 * SZ_2M, SZ_4K) == empty
        d.unmap(0x2000, SZ_4K)
        assert d.leaf_histogram() == {}
        v.close()


# -- README gap: IOVA beyond the address width-----------------------------------------------------
def test_iova_beyond_the_width() -> None:
    """6.12 intel_iommu_map: -EFAULT when iova + size passes 2^gaw ("iommu width ... is not
    sufficient"); 7.0 map_range -> pt_check_range: -ERANGE. iova_to_phys: 6.12 0 (NULL
    from pfn_to_dma_pte), 7.0 (phys_addr_t)-ERANGE from make_range."""
    for kernel, err_no, phys in ((LINUX_6_12, errno.EFAULT, 0),
                                 (LINUX_7_0, errno.ERANGE, 2**64 - errno.ERANGE)):
        v = _vtd(kernel)
        d = v.domain
        with pytest.raises(OSError) as err:
            d.map((1 << 39) - SZ_4K, 0x5000, 2 * SZ_4K, RW)
        assert err.value.errno == err_no
        assert d.iova_to_phys(1 << 39) == phys
        assert d.unmap(1 << 39, SZ_4K) == 0
        v.close()


# -- other 6.12 / 7.0 differences------------------------------------------------------------------
def test_write_only_leaf() -> None:
    """6.12 __domain_mapping sets DMA_FL_PTE_PRESENT (bit 0, the read bit) in every leaf, so
    a write-only mapping reads; 7.0 vtdss_pt_iommu_set_prot writes W alone."""
    for kernel, bits in ((LINUX_6_12, 0b11), (LINUX_7_0, 0b10)):
        v = _vtd(kernel)
        d = v.domain
        pa = v.mem.alloc_pages(0) << 12
        d.map(0x1000, pa, SZ_4K, Prot.WRITE)
        assert _leaf(d, 0x1000) == pa | bits
        if kernel == LINUX_6_12:
            assert v.dev.dma_read(0x1000, 4) == bytes(4)
        else:
            with pytest.raises(DmaFault, match="PTE Read access is not set"):
                v.dev.dma_read(0x1000, 4)
        d.unmap(0x1000, SZ_4K)
        v.mem.free_pages(pa >> 12, 0)
        v.close()


def test_failed_map_rollback() -> None:
    """6.12 intel_iommu_map_pages sets *mapped only on success: what __domain_mapping
    wrote before -ENOMEM stays mapped after iommu_map's unwind. 7.0 map_range reports
    *mapped and iommu_map_nosync unmaps it."""
    for kernel, left in ((LINUX_6_12, 512 - 1), (LINUX_7_0, 0)):
        v = _vtd(kernel)
        d = v.domain
        # 4K off a 2M boundary in a new 1G: a level-2 table, then three last-level
        # tables; the second of those fails
        v.mem.fail_nth.arm(3)
        with pytest.raises(OSError) as err:
            d.map(SZ_1G + SZ_4K, 0x1_0000_0000, 2 * SZ_2M, RW)
        v.mem.fail_nth.disarm()
        assert err.value.errno == errno.ENOMEM
        assert d.leaf_histogram().get(SZ_4K, 0) == left
        d.unmap(SZ_1G, SZ_1G)
        v.close()


def test_caching_mode_sync_on_map() -> None:
    """6.12 sets dmar_domain->iotlb_sync_map when attached to a caching-mode unit
    (domain_need_iotlb_sync_map); 7.0 at allocation, and refuses to attach a domain
    without it to a caching-mode unit (paging_domain_compatible_second_stage)."""
    for kernel in KERNELS:
        mem = PhysMem("1G")
        plain, cm = VtdHw(mem, caching_mode=False), VtdHw(mem)
        drv = IntelIommu(plain, kernel=kernel)
        drv.units.append(cm)
        drv.unit_of[0x18] = cm
        m1, m2 = drv.probe_device(0x10), drv.probe_device(0x18)
        d = drv.domain_alloc_paging(m1)
        drv.attach_dev(d, m1)
        d.map(0x1000, 0x5000, SZ_4K, RW)
        assert d.tlb_stats.sync_map == 0
        if kernel == LINUX_6_12:
            drv.attach_dev(d, m2)
            d.map(0x2000, 0x6000, SZ_4K, RW)
            assert d.tlb_stats.sync_map == 1
            d.unmap(0x2000, SZ_4K)
        else:
            with pytest.raises(OSError, match="caching mode"):
                drv.attach_dev(d, m2)
        for m in (m1, m2):
            drv.release_device(m)
        d.unmap(0x1000, SZ_4K)
        d.free()


def test_enforce_cache_coherency_after_mappings() -> None:
    """6.12 intel_iommu_enforce_cache_coherency refuses a second-stage domain that has
    mappings (has_mappings); 7.0 _ss does not look, forces SNP for later maps only."""
    for kernel, ok in ((LINUX_6_12, False), (LINUX_7_0, True)):
        v = _vtd(kernel, snoop_control=True)
        d = v.domain
        d.map(0x1000, 0x5000, SZ_4K, RW)
        assert v.drv.enforce_cache_coherency(d) is ok
        d.map(0x2000, 0x6000, SZ_4K, RW)
        assert bool(_leaf(d, 0x2000) & 1 << 11) is ok and not _leaf(d, 0x1000) & 1 << 11
        d.unmap(0x1000, 2 * SZ_4K)
        v.close()


def test_612_a_map_counts_as_mappings_once_past_its_checks() -> None:
    """6.12 __domain_mapping sets has_mappings after its EINVAL checks (no READ/WRITE,
    beyond the table) and before writing anything: a map they refuse leaves
    enforce_cache_coherency possible; one that fails later (ENOMEM for a table) does
    not."""
    v = _vtd(LINUX_6_12, snoop_control=True)
    d = v.domain
    assert d.ops is not None
    with pytest.raises(OSError) as err:
        d.ops.map_pages(d, 0x1000, 0x5000, SZ_4K, 1, 0, 0)
    assert err.value.errno == errno.EINVAL
    fresh = v.new_domain()
    v.mem.fail_nth.arm(1)
    with pytest.raises(OSError) as err:
        fresh.map(1 << 30, 0x5000, SZ_4K, RW)
    v.mem.fail_nth.disarm()
    assert err.value.errno == errno.ENOMEM
    assert (v.drv.enforce_cache_coherency(d), v.drv.enforce_cache_coherency(fresh)) == (
        True, False)
    v.drv.attach_dev(d, v.master)
    fresh.free()
    v.close()


def test_deferred_flush_capability_and_the_flush_queue() -> None:
    """6.12 intel_iommu_capable lists IOMMU_CAP_DEFERRED_FLUSH; 7.0 does not, and
    dma-iommu's iommu_domain_supports_fq lets generic_pt domains use the queue anyway."""
    from iommulab import Machine
    from iommulab.iommu import DomainType
    for kernel, cap in (("6.12", True), ("7.0", False)):
        m = Machine("x86-vtd", ram="256M", kernel=kernel)
        dev = m.add_pci_device("0000:00:03.0", driver="e1000e")
        assert dev.dev_iommu is not None and dev.group is not None
        assert m.driver.capable(dev.dev_iommu.priv, IommuCap.DEFERRED_FLUSH) is cap
        default = dev.group.default_domain
        assert default is not None and default.type == DomainType.DMA_FQ


def test_unaligned_map_and_unmap() -> None:
    """6.12 core __iommu_map: unaligned is -EINVAL before the driver; 7.0 sends iommupt
    domains straight to map_range, where no page size fits: -ENXIO. An unmap of a
    page's first half: 6.12 core returns 0 (unaligned); 7.0 unmap_range removes the
    page and returns 4K."""
    for kernel, err_no, half in ((LINUX_6_12, errno.EINVAL, 0), (LINUX_7_0, errno.ENXIO, SZ_4K)):
        v = _vtd(kernel)
        d = v.domain
        with pytest.raises(OSError) as err:
            d.map(0x1800, 0x5000, SZ_4K, RW)
        assert err.value.errno == err_no
        d.map(0x1000, 0x5000, SZ_4K, RW)
        assert d.unmap(0x1000, 0x800) == half
        d.unmap(0x1000, SZ_4K)
        v.close()


def test_hwpt_pasid_flag() -> None:
    """IOMMU_HWPT_ALLOC_PASID: 6.12 intel_iommu_domain_alloc_user refuses it
    (EOPNOTSUPP); 7.0 intel_iommu_domain_alloc_second_stage accepts it."""
    for kernel in KERNELS:
        v = _vtd(kernel)
        if kernel == LINUX_6_12:
            with pytest.raises(OSError) as err:
                v.drv.domain_alloc_paging_flags(v.master, 1 << 3)
            assert err.value.errno == errno.EOPNOTSUPP
        else:
            v.drv.domain_alloc_paging_flags(v.master, 1 << 3).free()
        v.close()


def test_dma_beyond_the_context_width_is_a_mgaw_fault() -> None:
    """QEMU vtd_iova_range_check: an IOVA beyond min(MGAW, the context's table width)
    faults "Access beyond MGAW" (a 3-level table on a 48-bit unit, 6.12)."""
    mem = PhysMem("1G")
    narrow, wide = VtdHw(mem, aw=39), VtdHw(mem, aw=48)
    drv = IntelIommu(narrow, kernel=LINUX_6_12)
    drv.units.append(wide)
    drv.unit_of[0x18] = wide
    m1, m2 = drv.probe_device(0x10), drv.probe_device(0x18)
    d = drv.domain_alloc_paging(m1)
    drv.attach_dev(d, m1)
    drv.attach_dev(d, m2)  # gaw grows to 48, the table stays 3 levels
    d.map(0x1000, 0x5000, SZ_4K, RW)
    dev = DmaDevice("b", mem, wide, 0x18)
    with pytest.raises(DmaFault, match="Access beyond MGAW"):
        dev.dma_read((1 << 39) + 0x1000, 4)
    for m in (m1, m2):
        drv.release_device(m)
    d.unmap(0x1000, SZ_4K)
    d.free()


def test_a_saved_state_keeps_the_table_depth() -> None:
    """A 4-level table with 39-bit IOVAs (SAGAW 4-level only) reads back as 4 levels."""
    from iommulab.inspect import address_space_map, save_domain, view_state
    v = _vtd(LINUX_7_0, aw=39, sagaw=0b100)
    d = v.domain
    d.map(SZ_2M, 0x4000_0000, SZ_2M, RW)
    view = view_state(save_domain(d, name="deep"))
    assert len(view.pt.levels) == 4
    assert [r for r in address_space_map(view) if r.kind == "mapped"] == [
        r for r in address_space_map(d) if r.kind == "mapped"]
    d.unmap(SZ_2M, SZ_2M)
    v.close()


def test_612_vfio_puts_a_narrow_units_group_into_the_wide_domain() -> None:
    """Through VFIO type1 (its "match an existing compatible domain" loop) on 6.12: the
    39-bit unit's group joins the 48-bit domain, which prepare_domain_attach_device cuts
    to 3 levels; the first device's context still holds the freed 4-level root, so its
    DMA no longer translates (the kernel's use-after-free; the model's freed page reads
    zero). 7.0 refuses the join (tests/vfio/test_type1.py keeps two domains)."""
    import struct

    from iommulab import Machine
    from iommulab.vfio import Container
    from iommulab.vfio import uapi as u

    from ...vfio.vm import Vm

    m = Machine("x86-vtd", ram="512M", kernel="6.12")
    v = Vm.on(m, iommu_unit=m.add_iommu_unit(aw=48))
    buf = v.p.mmap(2 << 20, "thp")
    v.p.write(buf + 0x10, b"shared")
    v.map(buf, 1 << 32, 2 << 20)
    assert v.dev.dma_read((1 << 32) + 0x10, 6) == b"shared"
    dev2 = m.add_pci_device("0000:00:03.0")
    g = v.p.open(f"/dev/vfio/{dev2.iommu_group}")
    v.p.ioctl(g, u.VFIO_GROUP_SET_CONTAINER, bytearray(struct.pack("<i", v.c)))
    container = v.p.files[v.c]
    assert isinstance(container, Container) and container.iommu is not None
    (shared,) = [d.domain for d in container.iommu.domains]
    assert shared.pgtbl is not None and len(shared.pgtbl.format.levels) == 3
    assert dev2.dma_read((1 << 32) + 0x10, 6) == b"shared"
    with pytest.raises(DmaFault):
        v.dev.dma_read((1 << 32) + 0x10, 6)
    assert v.unmap(0, 0, u.VFIO_DMA_UNMAP_FLAG_ALL) == 2 << 20
    v.close()
