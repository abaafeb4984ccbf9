"""The hypervisor's TCE hcalls and the guest's iommu_table allocator (ppc64-pseries)."""

from __future__ import annotations

import numpy as np
import pytest

from iommulab import Machine
from iommulab.drivers.pseries import SgEntry
from iommulab.drivers.pseries.hv import (
    H_NOT_ENOUGH_RESOURCES,
    H_PARAMETER,
    H_SUCCESS,
    DdwOffer,
    SpaprPhb,
)
from iommulab.drivers.pseries.lpar import LparTceOps
from iommulab.drivers.pseries.table import (
    DMA_MAPPING_ERROR,
    IommuTable,
    hash_32,
    iommu_init_table,
)
from iommulab.mem import PhysMem
from iommulab.pgtable.tce import TCE_PCI_READ, TceTable

LIOBN = 0x80000000


def _phb(**offer: object) -> SpaprPhb:
    return SpaprPhb(PhysMem("1G", ram_base=0), DdwOffer(**offer))  # type: ignore[arg-type]


@pytest.mark.parametrize("shift", [12, 16, 24])
def test_tce_values_follow_the_window_page_shift(shift: int) -> None:
    """A DMA window of 4K, 64K or 16M IO pages: the entry holds the page's real address
    with the permission bits, the bus address keeps the offset inside the IO page, and a
    device's access lands at the right byte (nothing assumes 4K)."""
    m = Machine("ppc64-pseries", ram="1G")
    dev = m.add_pci_device("0000:00:01.0", ddw=DdwOffer(page_shifts=(shift,),
                                                        largest_block=(1 << 29) >> shift))
    m.dma.dma_set_mask(dev, (1 << 64) - 1)
    pdev = m.pseries.devs[dev.sid]
    tbl = pdev.table
    assert tbl is not None and tbl.it_page_shift == shift and not pdev.dma_ops_bypass
    pa = (5 << shift) + 0x234
    dma = m.dma.map_phys(dev, pa, 64, write=False)
    assert dma & ((1 << shift) - 1) == 0x234
    rc, tce = pdev.pdn.phb.h_get_tce(tbl.it_index, dma)
    assert rc == H_SUCCESS and tce == (5 << shift) | TCE_PCI_READ
    m.mem.write(pa, b"tce!")
    assert dev.dma_read(dma, 4) == b"tce!"
    with pytest.raises(OSError):
        dev.dma_write(dma, b"x")  # read-only entry
    m.dma.unmap_phys(dev, dma, 64)
    assert pdev.pdn.phb.h_get_tce(tbl.it_index, dma) == (H_SUCCESS, 0)


def test_hcall_errors_for_bad_input_change_nothing() -> None:
    phb = _phb()
    tbl = phb.window_of(LIOBN)
    assert tbl is not None
    assert phb.h_put_tce(0xDEAD, 0, 0x1003) == H_PARAMETER  # unknown LIOBN
    assert phb.h_put_tce(LIOBN, 1 << 30, 0x1003) == H_PARAMETER  # past the 1G window
    assert phb.h_get_tce(LIOBN, 1 << 30) == (H_PARAMETER, 0)
    assert phb.h_put_tce_indirect(LIOBN, 0, 0x2000, 513) == H_PARAMETER  # > 512
    assert phb.h_put_tce_indirect(LIOBN, 0, 0x2008, 4) == H_PARAMETER  # list not 4K aligned
    assert phb.h_put_tce_indirect(LIOBN, 0, 0x2000, 0) == H_PARAMETER  # nothing to do
    assert phb.h_stuff_tce(LIOBN, 0, 0, tbl.nb_table + 1) == H_PARAMETER
    assert phb.h_stuff_tce(LIOBN, 0, 0, 0) == H_PARAMETER
    assert tbl.used() == 0
    # an indirect list running off the end writes the entries inside, then fails
    phb.mem.write(0x2000, np.array([0x5003, 0x6003], dtype=">u8").tobytes())
    assert phb.h_put_tce_indirect(LIOBN, (tbl.nb_table - 1) << 12, 0x2000, 2) == H_PARAMETER
    assert tbl.get(tbl.nb_table - 1) == 0x5003 and tbl.used() == 1
    # the IOBA is rounded down to its IO page
    assert phb.h_put_tce(LIOBN, 0x3FFF, 0x7003) == H_SUCCESS and tbl.get(3) == 0x7003


def test_tce_table_bytes_are_big_endian_and_sparse() -> None:
    t = TceTable(1 << 59, 16, 1 << 24)
    t.put(5, np.array([0x10003], dtype=np.uint64))
    assert t.raw(5, 1) == bytes.fromhex("0000000000010003")
    assert t.allocated_bytes == 4096 * 8  # one chunk for a 16M-entry window
    t.stuff(0, 1 << 24, 0)
    assert t.allocated_bytes == 0 and t.used() == 0


def _table(size: int, shift: int = 12, res: tuple[int, int] = (0, 0),
           offset: int = 0) -> IommuTable:
    phb = _phb(dma32_size=max(size << shift, 1 << 20))
    ops = LparTceOps(phb, phb.mem)
    return iommu_init_table(IommuTable(LIOBN, offset, size, shift, ops), *res)


def test_page_zero_and_the_mmio_hole_are_never_handed_out() -> None:
    tbl = _table(4096, res=(1000, 1100))
    got = []
    while True:
        n = tbl.range_alloc(1, (1 << 64) - 1, 0)
        if n == DMA_MAPPING_ERROR:
            break
        got.append(n)
    assert 0 not in got and not any(1000 <= n < 1100 for n in got)
    assert tbl.in_use()
    for n in got:
        tbl.free(n << 12, 1)
    assert not tbl.in_use()  # page 0 and the hole do not count as use
    tbl._check()


def test_small_allocations_spread_over_pools_large_ones_use_the_large_pool() -> None:
    """A 1 GiB table has four pools over its bottom 3/4 and the large pool on top: each
    CPU's small allocations start in its pool (``hash_32(cpu, 2)``), more than 15 pages
    come from the large pool, and hints move by blocks of 16 entries."""
    tbl = _table(1 << 18)
    assert tbl.nr_pools == 4 and tbl.poolsize == (1 << 18) * 3 // 4 // 4
    pools: dict[int, set[int]] = {}
    for cpu in range(8):
        n = tbl.range_alloc(1, (1 << 64) - 1, 0, cpu=cpu)
        pools.setdefault(hash_32(cpu, 2), set()).add(tbl.get_pool(n).start)
    assert all(len(starts) == 1 for starts in pools.values()) and len(pools) > 1
    assert {s for starts in pools.values() for s in starts} <= {p.start for p in tbl.pools}
    big = tbl.range_alloc(16, (1 << 64) - 1, 0)
    assert tbl.get_pool(big) is tbl.large_pool and big == tbl.large_pool.start
    a = tbl.range_alloc(15, (1 << 64) - 1, 0, cpu=0)
    b = tbl.range_alloc(1, (1 << 64) - 1, 0, cpu=0)
    assert tbl.get_pool(a) is not tbl.large_pool and b == (a + 15 + 15) // 16 * 16


def test_small_table_has_one_pool_and_masks_limit_the_search() -> None:
    tbl = _table(1024)  # 4M: below 1 GiB, one pool
    assert tbl.nr_pools == 1
    n = tbl.range_alloc(4, 63, 2)  # mask: entries 0..63, 4-aligned
    assert n % 4 == 0 and n + 4 <= 63
    assert tbl.range_alloc(64, 63, 0) == DMA_MAPPING_ERROR


def test_segment_boundary_is_not_crossed() -> None:
    tbl = _table(1024)
    tbl.it_map[1:14] = True
    n = tbl.range_alloc(4, (1 << 64) - 1, 0, boundary_pages=16)
    assert n // 16 == (n + 3) // 16


def test_free_outside_the_window_is_refused() -> None:
    tbl = _table(1024, offset=0x100)
    assert not tbl.free(0x10 << 12, 1)
    assert not tbl.free((0x100 + 1020) << 12, 8)


def test_buildmulti_clears_only_the_calls_before_the_failing_one() -> None:
    """``tce_buildmulti_pSeriesLP`` on H_NOT_ENOUGH_RESOURCES frees
    ``npages_start - (npages + limit)`` entries: those of the H_PUT_TCE_INDIRECT calls
    before the failing one (one H_STUFF_TCE of 512 here, not of all 600), then returns
    the error; ``iommu_alloc`` then frees the whole range (two more H_STUFF_TCE)."""
    m = Machine("ppc64-pseries", ram="1G")
    dev = m.add_pci_device("0000:00:01.0")
    pd = m.pseries.devs[dev.sid]
    phb, tbl = pd.pdn.phb, pd.table
    assert tbl is not None
    tbl_ops = tbl.ops
    assert isinstance(tbl_ops, LparTceOps)
    phb.tce_resources.arm(2)  # the second H_PUT_TCE_INDIRECT of the mapping
    stuffs = phb.stats.hcalls.get("H_STUFF_TCE", 0)
    assert tbl_ops.set(tbl, 64, 600, 0x100000, True) == H_NOT_ENOUGH_RESOURCES
    assert phb.stats.hcalls["H_STUFF_TCE"] - stuffs == 1
    window = phb.window_of(tbl.it_index)
    assert window is not None and window.used() == 0
    phb.tce_resources.arm(1)
    before = phb.stats.hcalls["H_STUFF_TCE"]
    assert m.dma.map_phys(dev, 0x100000, 600 << 12) == DMA_MAPPING_ERROR
    assert phb.stats.hcalls["H_STUFF_TCE"] - before == 1 + 2  # 0 entries, then 512 + 88
    assert not tbl.in_use()


def test_buildmulti_failing_first_call_still_makes_one_stuff_call() -> None:
    """When the first H_PUT_TCE_INDIRECT fails, the kernel's do-while clear still makes
    one H_STUFF_TCE, of 0 entries, which QEMU refuses (the kernel prints it)."""
    phb = _phb()
    tbl = iommu_init_table(IommuTable(LIOBN, 0, 1 << 18, 12, LparTceOps(phb, phb.mem)), 0, 0)
    ops = tbl.ops
    assert isinstance(ops, LparTceOps)
    phb.tce_resources.arm(1)
    stuffs = phb.stats.hcalls["H_STUFF_TCE"]
    assert ops.set(tbl, 16, 20, 0x100000, True) == H_NOT_ENOUGH_RESOURCES
    assert phb.stats.hcalls["H_STUFF_TCE"] - stuffs == 1 and ops.failures == 1
    phb.tce_resources.arm(1)  # one page: H_PUT_TCE, nothing written before it
    assert ops.set(tbl, 16, 1, 0x100000, True) == H_NOT_ENOUGH_RESOURCES
    assert phb.stats.hcalls["H_STUFF_TCE"] - stuffs == 1
    ops.release()


def test_map_sg_leaks_the_segment_whose_tces_failed() -> None:
    """``ppc_iommu_map_sg``: when ``it_ops->set`` fails it jumps to ``failure``, which
    frees the segments already made (up to ``outs``) but not the entries just allocated
    for the failing one: they stay set in ``it_map`` (kernel wart, kept), though the
    mapping returns -EIO."""
    m = Machine("ppc64-pseries", ram="1G")
    dev = m.add_pci_device("0000:00:01.0")
    pd = m.pseries.devs[dev.sid]
    tbl = pd.table
    assert tbl is not None
    taken = int(tbl.it_map.sum())
    pd.pdn.phb.tce_resources.arm(2)  # the second segment's H_PUT_TCE
    sgl = [SgEntry(0x10_0000, 0x1000), SgEntry(0x30_0000, 0x1000)]
    assert m.dma.map_sg(dev, sgl) == -5
    assert sgl[0].dma_length == 0
    assert int(tbl.it_map.sum()) == taken + 1 and tbl.in_use()
