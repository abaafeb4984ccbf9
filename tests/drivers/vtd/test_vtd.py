"""VT-d second-stage entries and the legacy-mode unit (values from iommu.h and the spec)."""

from __future__ import annotations

import pytest

from iommulab.devices import DmaDevice
from iommulab.drivers.vtd import IntelIommu, VtdHw
from iommulab.errors import DmaFault
from iommulab.iommu.resv import ResvType
from iommulab.mem import PhysMem
from iommulab.pgtable import IoPgtableCfg, IoPgtableFmt, alloc_io_pgtable_ops
from iommulab.pgtable.vtd_ss import VtdSsFormat, vtd_ss_alloc
from iommulab.prot import Prot
from iommulab.sizes import SZ_1G, SZ_2M, SZ_4K

RW = Prot.READ | Prot.WRITE


@pytest.fixture
def mem() -> PhysMem:
    return PhysMem("8G")


def test_descriptors_are_the_drivers(mem: PhysMem) -> None:
    """Tables are phys|R|W; a 4K leaf is phys|prot; superpages add bit 7 (DMA_PTE_LARGE_PAGE)."""
    pt = alloc_io_pgtable_ops(IoPgtableFmt.INTEL_VTD_SS,
                              IoPgtableCfg(SZ_4K | SZ_2M | SZ_1G, 39, 39), mem=mem)
    assert isinstance(pt.format, VtdSsFormat) and len(pt.format.levels) == 3
    pt.map_pages(0x1000, 0x5000, SZ_4K, 1, Prot.READ)
    top, mid, leaf = pt.pgtable_walk(0x1000)
    assert top & 0xFFF == 0x003 and mid & 0xFFF == 0x003
    assert leaf == 0x5001
    pt.map_pages(0x4000_0000, 0x8000_0000, SZ_1G, 1, Prot.WRITE)
    assert pt.pgtable_walk(0x4000_0000) == [0x8000_0082]
    pt.map_pages(0x20_0000, 0x4060_0000, SZ_2M, 1, RW)
    assert pt.pgtable_walk(0x20_0000)[-1] == 0x4060_0083
    assert pt.leaf_histogram() == {SZ_4K: 1, SZ_2M: 1, SZ_1G: 1}
    pt.free()


def test_four_levels_at_48_bits_and_bad_widths(mem: PhysMem) -> None:
    """The shallowest table that holds the width (40 and 46 bits: 4 levels, as MGAW 46
    parts have); more than 57 bits, or a depth SAGAW cannot offer, is EINVAL."""
    for width in (40, 46, 48):
        pt = alloc_io_pgtable_ops(IoPgtableFmt.INTEL_VTD_SS, IoPgtableCfg(SZ_4K, width, 48),
                                  mem=mem)
        assert [lv.lvl for lv in pt.format.levels] == [4, 3, 2, 1]
        pt.map_pages((1 << width) - SZ_4K, 0x5000, SZ_4K, 1, Prot.READ)
        with pytest.raises(OSError, match="outside ias"):
            pt.map_pages(1 << width, 0x5000, SZ_4K, 1, Prot.READ)
        pt.free()
    with pytest.raises(OSError, match="6 levels"):
        alloc_io_pgtable_ops(IoPgtableFmt.INTEL_VTD_SS, IoPgtableCfg(SZ_4K, 58, 48), mem=mem)
    with pytest.raises(OSError, match="2 levels"):
        vtd_ss_alloc(IoPgtableCfg(SZ_4K, 30, 48), levels=2)
    with pytest.raises(OSError, match="49 bits does not fit a 4-level table"):
        vtd_ss_alloc(IoPgtableCfg(SZ_4K, 49, 48), levels=4)


def test_leaf_runs_merge_what_continues(mem: PhysMem) -> None:
    pt = alloc_io_pgtable_ops(IoPgtableFmt.INTEL_VTD_SS,
                              IoPgtableCfg(SZ_4K | SZ_2M | SZ_1G, 39, 39), mem=mem)
    pt.map_pages(0x20_0000, 0x4000_0000, SZ_2M, 3, RW)
    pt.map_pages(0x80_0000, 0x4060_0000, SZ_4K, 5, RW)  # continues the blocks physically
    pt.map_pages(0x90_0000, 0x5060_0000, SZ_4K, 5, RW)
    assert pt.leaf_runs(0, 1 << 39) == [(0x20_0000, 0x4000_0000, 0x60_5000),
                                        (0x90_0000, 0x5060_0000, 0x5000)]
    assert pt.leaf_runs(0x30_0000, 0x50_2000) == [(0x30_0000, 0x4010_0000, 0x50_2000)]
    assert pt.leaf_runs(0xA0_0000, SZ_2M) == []
    pt.free()


def test_device_dma_walks_the_tables_and_faults_are_recorded(mem: PhysMem) -> None:
    hw = VtdHw(mem)
    drv = IntelIommu(hw)
    dev = DmaDevice("edu", mem, hw, 0x0010)
    master = drv.probe_device(dev.sid)
    assert [(r.start, r.last, r.type) for r in drv.get_resv_regions(master)] == [
        (0xFEE0_0000, 0xFEEF_FFFF, ResvType.MSI)]
    with pytest.raises(DmaFault, match="Present bit in context entry is clear"):
        dev.dma_read(0x1000, 4)
    domain = drv.domain_alloc_paging(master)
    drv.attach_dev(domain, master)
    pa = mem.alloc_pages(9) << 12
    domain.map(0x20_0000, pa, SZ_2M, Prot.READ)
    mem.write(pa + 0x1234, b"vtd!")
    assert dev.dma_read(0x20_1234, 4) == b"vtd!"
    with pytest.raises(DmaFault, match="PTE Write access is not set"):
        dev.dma_write(0x20_0000, b"x")
    with pytest.raises(DmaFault, match="PTE Read access is not set"):
        dev.dma_read(0x40_0000, 1)
    assert [f.reason for f in hw.faults] == [2, 5, 6]
    assert str(hw.faults[1]).startswith("DMAR: [DMA Write NO_PASID] Request device [00:02.0]")
    assert domain.tlb_stats.sync_map == 1  # caching mode: invalidate after the map
    drv.release_device(master)
    domain.unmap(0x20_0000, SZ_2M)
    domain.free()
    mem.free_pages(pa >> 12, 9)
