"""Every branch of ``enable_ddw`` and the DMA API around it (ppc64-pseries)."""

from __future__ import annotations

import errno

import pytest

from iommulab import Machine
from iommulab.devices import DMA_BIT_MASK, DmaDevice
from iommulab.drivers.pseries import DMA_MAPPING_ERROR, DdwOffer, SgEntry
from iommulab.drivers.pseries.ddw import MAX_PHYSMEM_BITS, PseriesDev

M64 = DMA_BIT_MASK(64)


def _dev(ram: str = "4G", **offer: object) -> tuple[Machine, DmaDevice, PseriesDev]:
    m = Machine("ppc64-pseries", ram=ram)
    dev = m.add_pci_device("0000:00:01.0", ddw=DdwOffer(**offer))  # type: ignore[arg-type]
    return m, dev, m.pseries.devs[dev.sid]


def _roundtrip(m: Machine, dev: DmaDevice, pa: int) -> int:
    m.mem.write(pa, b"ddw!")
    dma: int = m.dma.map_phys(dev, pa, 4)
    assert dma != DMA_MAPPING_ERROR
    assert dev.dma_read(dma, 4) == b"ddw!"
    return dma


def test_qemu_default_second_window_maps_all_ram_directly() -> None:
    """QEMU 10 offers a second window with 4K, 64K, 2M and 16M pages: the default one
    stays, a window of the largest pages (16M) covering RAM (2^32) is created at 1 << 59
    and pre-mapped with one H_PUT_TCE_INDIRECT of 256 entries; DMA bypasses the table."""
    m, dev, pd = _dev()
    m.dma.dma_set_mask(dev, M64)
    assert pd.dma_ops_bypass and pd.dma_offset == 1 << 59
    assert pd.pdn.ddw is not None and pd.pdn.ddw.name == "linux,direct64-ddr-window-info"
    assert (pd.pdn.ddw.tce_shift, pd.pdn.ddw.window_shift) == (24, 32)
    assert pd.pdn.tables[0] is not None and pd.pdn.dma_window is not None
    assert pd.pdn.phb.stats.hcalls["H_PUT_TCE_INDIRECT"] == 1
    assert _roundtrip(m, dev, 0xABC000) == (1 << 59) + 0xABC000
    queries = pd.pdn.phb.stats.rtas["query"]
    m.dma.dma_set_mask(dev, M64)  # the window is reused, no RTAS call
    assert pd.pdn.phb.stats.rtas["query"] == queries


def test_one_window_per_pe_replaces_the_unused_default_window() -> None:
    """PowerVM-like: no window available; the default table is unused, so its window is
    cleared and removed, the query repeated and a direct window created; table 0 goes."""
    m, dev, pd = _dev(max_windows=1, page_shifts=(12, 16, 24, 21))
    m.dma.dma_set_mask(dev, M64)
    assert pd.dma_ops_bypass and pd.pdn.tables == [None, None] and pd.table is None
    assert pd.pdn.dma_window is None and pd.pdn.dma_window_saved is not None
    assert pd.pdn.ddw is not None and pd.pdn.ddw.tce_shift == 24  # the largest offered
    assert pd.pdn.phb.stats.rtas == {"query": 2, "remove": 1, "create": 1}
    # as QEMU does, the freed LIOBN and bus address 0 of the default window are reused
    assert (pd.pdn.ddw.liobn, pd.dma_offset) == (pd.pdn.phb.liobns[0], 0)
    assert _roundtrip(m, dev, 0x7654_3000) == 0x7654_3000


def test_default_table_in_use_refuses_ddw_and_mappings_keep_working() -> None:
    """A driver maps under the 32-bit mask, then asks for 64 bits: with no second window
    and the default table in use, DDW is refused (never retried), the mask is still
    accepted through the table, and the earlier mapping keeps working."""
    m, dev, pd = _dev(max_windows=1)
    m.dma.dma_set_mask(dev, DMA_BIT_MASK(32))
    early = _roundtrip(m, dev, 0x10_0000)
    m.dma.dma_set_mask(dev, M64)
    assert not pd.dma_ops_bypass and pd.pdn.failed and pd.pdn.ddw is None
    assert "current IOMMU table in use, can't be replaced." in pd.pdn.log
    assert dev.dma_read(early, 4) == b"ddw!"
    later = _roundtrip(m, dev, 0x20_0000)
    assert later < 1 << 30  # still the default window
    queries = pd.pdn.phb.stats.rtas["query"]
    m.dma.unmap_phys(dev, early, 4)
    m.dma.unmap_phys(dev, later, 4)
    m.dma.dma_set_mask(dev, M64)  # on the failed list: not even queried again
    assert pd.pdn.phb.stats.rtas["query"] == queries and not pd.dma_ops_bypass


def test_no_reset_extension_keeps_the_default_window() -> None:
    m, dev, pd = _dev(max_windows=1, reset_extension=False, query_out_6=False)
    m.dma.dma_set_mask(dev, M64)
    assert pd.pdn.failed and "remove" not in pd.pdn.phb.stats.rtas
    assert pd.table is pd.pdn.tables[0] is not None


def test_nothing_after_removal_resets_the_default_window() -> None:
    """The default window is removed but the PE still has no window: the reset brings the
    default window back and the device keeps its table."""
    m, dev, pd = _dev(max_windows=0)
    m.dma.dma_set_mask(dev, M64)
    assert pd.pdn.failed and pd.pdn.phb.stats.rtas["reset"] == 1
    assert pd.pdn.phb.window_of(pd.pdn.phb.liobns[0]) is not None
    assert pd.table is pd.pdn.tables[0] is not None
    _roundtrip(m, dev, 0x30_0000)


def test_small_largest_block_gives_a_dynamic_window() -> None:
    """2^14 TCEs of 64K cannot cover 4G: a 1 GiB dynamic window with its own table;
    DMA goes through TCEs there, above the 64-bit window base."""
    m, dev, pd = _dev(largest_block=1 << 14, page_shifts=(12, 16))
    m.dma.dma_set_mask(dev, M64)
    assert not pd.dma_ops_bypass and pd.pdn.ddw is not None
    assert pd.pdn.ddw.name == "linux,dma64-ddr-window-info" and pd.pdn.ddw.window_shift == 30
    tbl = pd.table
    assert tbl is pd.pdn.tables[1] and tbl is not None and tbl.it_page_shift == 16
    assert tbl.bus_start == 1 << 59 and tbl.it_size == 1 << 14
    dma = _roundtrip(m, dev, 0xF234_5000)
    assert dma >> 16 == tbl.it_offset + (dma - tbl.bus_start >> 16)
    assert tbl.bus_start <= dma < tbl.bus_start + (1 << 30)


def test_no_ddw_applicable_property_fails_without_rtas() -> None:
    m, dev, pd = _dev()
    pd.pdn.ddw_applicable = False
    m.dma.dma_set_mask(dev, M64)
    assert pd.pdn.failed and pd.pdn.phb.stats.rtas == {} and not pd.dma_ops_bypass


def test_no_page_size_offered_fails() -> None:
    m, dev, pd = _dev(page_shifts=())
    m.dma.dma_set_mask(dev, M64)
    assert pd.pdn.failed and "create" not in pd.pdn.phb.stats.rtas


def test_vpmem_hybrid_splits_the_window() -> None:
    """SR-IOV with vPMEM: default window removed, the window made as large as offered,
    RAM direct below 1 << max_ram_len, a dynamic table above it; a bus DMA limit keeps
    dma_ops_bypass off, RAM still goes direct and the rest through the table."""
    m, dev, pd = _dev(max_windows=1, largest_block=1 << 20, page_shifts=(12, 16))
    m.pseries.pmem_present = True
    m.dma.dma_set_mask(dev, M64)
    assert pd.pdn.ddw is not None and pd.pdn.ddw.name == "linux,direct64-ddr-window-info"
    assert pd.pdn.ddw.window_shift == 36 and pd.pdn.direct
    assert dev.bus_dma_limit == pd.dma_offset + (1 << 32) and not pd.dma_ops_bypass
    tbl = pd.table
    assert tbl is pd.pdn.tables[0] and tbl is not None
    assert tbl.bus_start == pd.dma_offset + (1 << 32)
    assert _roundtrip(m, dev, 0x4000) == pd.dma_offset + 0x4000  # RAM: direct


def test_vpmem_with_a_window_too_small_to_split_is_dynamic_only() -> None:
    # 2^32: RAM but not 2G more
    m, dev, pd = _dev(max_windows=1, largest_block=1 << 16, page_shifts=(12, 16))
    m.pseries.pmem_present = True
    m.dma.dma_set_mask(dev, M64)
    assert not pd.pdn.direct and pd.pdn.ddw is not None and pd.pdn.ddw.window_shift == 32
    assert pd.table is pd.pdn.tables[0] and pd.table is not None
    assert pd.table.bus_start == pd.dma_offset and dev.bus_dma_limit == 0


def test_vpmem_with_max_physmem_window_maps_everything_directly() -> None:
    m, dev, pd = _dev(largest_block=1 << 40, query_out_6=True)
    m.pseries.pmem_present = True
    m.dma.dma_set_mask(dev, M64)
    assert pd.pdn.ddw is not None and pd.pdn.ddw.window_shift == MAX_PHYSMEM_BITS
    assert pd.dma_ops_bypass and dev.bus_dma_limit == 0


def test_limited_addressing() -> None:
    """A 48-bit mask needs limited addressing: without the extension DDW fails and the
    default window stays; with it the PE is reset into that mode and the window fits
    the mask."""
    m, dev, pd = _dev()
    m.dma.dma_set_mask(dev, DMA_BIT_MASK(48))
    assert pd.pdn.failed and "reset" not in pd.pdn.phb.stats.rtas
    assert "Limited Address Space for DDW not Supported, err: -75" in pd.pdn.log
    m, dev, pd = _dev(limited_addressing=True)
    m.dma.dma_set_mask(dev, DMA_BIT_MASK(48))
    assert pd.pdn.phb.limited_mode and pd.dma_ops_bypass
    assert pd.dma_offset + (1 << 32) - 1 <= DMA_BIT_MASK(48)


def test_limited_addressing_refusals_as_limited_dma_window_logs_them() -> None:
    """``limited_dma_window``: an extension list without the LoPAR 2.13 entry is
    -EOVERFLOW, one saying no is -EPROTO (both logged); no reset extension at all fails
    before anything is logged."""
    m, dev, pd = _dev(limited_addressing=False)
    m.dma.dma_set_mask(dev, DMA_BIT_MASK(48))
    assert "Limited Address Space for DDW not Supported, err: -71" in pd.pdn.log
    m, dev, pd = _dev(reset_extension=False, query_out_6=False)
    m.dma.dma_set_mask(dev, DMA_BIT_MASK(48))
    assert pd.pdn.failed and not any("Limited" in line for line in pd.pdn.log)


def test_32bit_mask_and_disable_ddw_use_the_table() -> None:
    m, dev, pd = _dev()
    m.dma.dma_set_mask(dev, DMA_BIT_MASK(32))
    assert "query" not in pd.pdn.phb.stats.rtas and not pd.dma_ops_bypass
    m.pseries.disable_ddw = True
    m.dma.dma_set_mask(dev, M64)
    assert "query" not in pd.pdn.phb.stats.rtas


def test_mask_below_the_table_is_eio() -> None:
    m, dev, _ = _dev(largest_block=1 << 14, page_shifts=(12, 16))
    m.dma.dma_set_mask(dev, M64)  # dynamic window at 1 << 59
    with pytest.raises(OSError) as e:
        m.dma.dma_set_mask(dev, DMA_BIT_MASK(40))
    assert e.value.errno == errno.EIO


def test_map_sg_merges_contiguous_segments_and_coherent_is_aligned() -> None:
    m, dev, pd = _dev()
    sgl = [SgEntry(0x10_0000, 0x1000), SgEntry(0x20_0000, 0x1000), SgEntry(0x30_0800, 0x100)]
    n = m.dma.map_sg(dev, sgl)
    # the handle continues the first segment's entries: the first two merge; the third
    # starts mid-page, so its bus address does not follow on
    assert n == 2 and (sgl[0].dma_length, sgl[1].dma_length, sgl[2].dma_length) == (
        0x2000, 0x100, 0)
    assert sgl[1].dma_address & 0xFFF == 0x800
    m.dma.unmap_sg(dev, sgl)
    assert pd.table is not None and not pd.table.in_use()
    phys, dma = m.dma.alloc_coherent(dev, 0x30000)  # 192K: 4 x 64K kernel pages, order 2
    assert dma % (0x40000) == 0  # get_iommu_order alignment
    m.dma.free_coherent(dev, 0x30000, phys, dma)
    assert not pd.table.in_use()
    assert m.dma.alloc_coherent(dev, 1 << 30) == (0, DMA_MAPPING_ERROR)  # IOMAP_MAX_ORDER


def test_no_vfio_on_pseries() -> None:
    m = Machine("ppc64-pseries", ram="1G")
    p = m.spawn_process()
    with pytest.raises(OSError) as e:
        p.open("/dev/vfio/vfio")
    assert e.value.errno == errno.ENODEV


def test_bar_size_is_checked_as_on_other_platforms() -> None:
    m = Machine("ppc64-pseries", ram="1G")
    with pytest.raises(ValueError, match="power of two"):
        m.add_pci_device("0000:00:01.0", bar0_size=3000)
    assert not m.devices and not m.pseries.devs
