"""Where Linux 6.12 and 7.0 differ on pSeries (arch/powerpc/platforms/pseries/iommu.c
``enable_ddw``, arch/powerpc/kernel/dma-iommu.c, kernel/dma/mapping.c), and the kernel
warts both keep in the DMA API's direct/IOMMU choice."""

from __future__ import annotations

import pytest

from iommulab import Machine
from iommulab.devices import DMA_BIT_MASK, DmaDevice
from iommulab.drivers.pseries import DMA_MAPPING_ERROR, DdwOffer, SgEntry
from iommulab.drivers.pseries.ddw import PseriesDev

M64 = DMA_BIT_MASK(64)
BASE64 = 1 << 59  # QEMU's dma64_win_addr


def _dev(kernel: str, ram: str = "4G", pmem: bool = False,
         **offer: object) -> tuple[Machine, DmaDevice, PseriesDev]:
    m = Machine("ppc64-pseries", ram=ram, kernel=kernel)
    m.pseries.pmem_present = pmem
    dev = m.add_pci_device("0000:00:01.0", ddw=DdwOffer(**offer))  # type: ignore[arg-type]
    return m, dev, m.pseries.devs[dev.sid]


def test_machine_hands_its_kernel_to_the_pseries_code() -> None:
    assert str(Machine("ppc64-pseries", ram="1G", kernel="7.0").pseries.kernel) == "7.0"
    assert str(Machine("ppc64-pseries", ram="1G").pseries.kernel) == "6.12"


@pytest.mark.parametrize(("kernel", "split"), [("6.12", 6 << 30), ("7.0", 8 << 30)])
def test_hybrid_split_at_the_end_of_ram_or_a_power_of_two(kernel: str, split: int) -> None:
    """vPMEM hybrid window on 6G of RAM: 6.12 splits at ``pseries_ddw_max_ram`` (6G) and
    limits direct DMA there; 7.0 at ``1ULL << max_ram_len`` (8G). 6.12 keeps
    ``dma_ops_bypass`` off under the limit, 7.0 turns it on."""
    m, dev, pd = _dev(kernel, "6G", pmem=True, max_windows=1, largest_block=1 << 20,
                      page_shifts=(12, 16))
    m.dma.dma_set_mask(dev, M64)
    tbl = pd.table
    assert tbl is not None and tbl.bus_start == pd.dma_offset + split
    assert dev.bus_dma_limit == pd.dma_offset + split
    assert pd.dma_ops_bypass == (kernel == "7.0")


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_direct_window_bus_limit_and_bypass(kernel: str) -> None:
    """QEMU's second window, no vPMEM: 6.12 leaves no bus DMA limit and says nothing;
    7.0 sets ``dma_offset + (1 << max_ram_len)`` for every direct window, keeps
    ``dma_ops_bypass`` on and always logs the limit. RAM goes direct in both."""
    m, dev, pd = _dev(kernel, "6G")
    m.dma.dma_set_mask(dev, M64)
    assert pd.dma_ops_bypass
    seven = kernel == "7.0"
    assert dev.bus_dma_limit == (BASE64 + (8 << 30) if seven else 0)
    notice = f"iommu: 64-bit OK but direct DMA is limited by {BASE64 + (8 << 30):x}"
    assert (notice in dev.notices) == seven
    assert m.dma.map_phys(dev, 0x1_2345_0000, 0x1000) == BASE64 + 0x1_2345_0000


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_mapping_from_before_ddw_is_unmapped_by_the_right_path(kernel: str) -> None:
    """A buffer mapped through the default window under a 32-bit mask, unmapped after
    the device got a direct DDW: 6.12's ``dma_map_direct`` (bypass, mask reaching all
    RAM) sends the unmap down the direct path, so its TCE and table entry stay (kernel
    wart kept); 7.0's bus limit makes ``dma_go_direct`` false and the handle, below
    ``dma_offset``, is freed from the table."""
    m, dev, pd = _dev(kernel)
    m.dma.dma_set_mask(dev, DMA_BIT_MASK(32))
    early = m.dma.map_phys(dev, 0x10_0000, 0x1000)
    tbl = pd.table
    assert tbl is not None and early < 1 << 30
    m.dma.dma_set_mask(dev, M64)
    m.dma.unmap_phys(dev, early, 0x1000)
    leaked = kernel == "6.12"
    assert tbl.in_use() == leaked
    assert (pd.pdn.phb.h_get_tce(tbl.it_index, early)[1] != 0) == leaked


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_coherent_memory_under_a_vpmem_bus_limit(kernel: str) -> None:
    """A direct window of RAM only (vPMEM left out): 6.12 has no direct-alloc hook, so
    with ``dma_ops_bypass`` off coherent memory is mapped through the default window's
    table; 7.0's ``arch_dma_alloc_direct`` (bypass with a bus limit) allocates it
    direct at ``dma_offset``."""
    m, dev, pd = _dev(kernel, pmem=True, page_shifts=(12, 16), query_out_6=False)
    m.dma.dma_set_mask_and_coherent(dev, M64)
    assert "Skipping ibm,pmemory" in pd.pdn.log  # a 2^47 window cannot reach vPMEM
    assert dev.bus_dma_limit == pd.dma_offset + (4 << 30)
    phys, dma = m.dma.alloc_coherent(dev, 0x10000)
    assert dma != DMA_MAPPING_ERROR
    if kernel == "6.12":
        assert not pd.dma_ops_bypass and dma < 1 << 30
    else:
        assert pd.dma_ops_bypass and dma == pd.dma_offset + phys
    m.dma.free_coherent(dev, 0x10000, phys, dma)
    assert pd.table is not None and not pd.table.in_use()


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_sg_direct_check_counts_the_in_page_offset_twice(kernel: str) -> None:
    """``arch_dma_map_sg_direct`` tests ``sg_phys(s) + s->offset + s->length``: a buffer
    ending at the end of RAM at a 64K-page offset fails it and goes through the table,
    while ``dma_map_phys`` of the same buffer (``phys + size``) goes direct."""
    m, dev, pd = _dev(kernel, pmem=True, page_shifts=(12, 16), query_out_6=False)
    m.dma.dma_set_mask(dev, M64)
    phys = (4 << 30) - 0x800  # offset 0xF800 in its 64K page
    assert m.dma.map_phys(dev, phys, 0x800) == pd.dma_offset + phys
    sgl = [SgEntry(phys, 0x800)]
    assert m.dma.map_sg(dev, sgl) == 1
    assert sgl[0].dma_address < 1 << 30  # the default window's table
    m.dma.unmap_sg(dev, sgl)
    assert pd.table is not None and not pd.table.in_use()


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_hybrid_unmap_of_a_table_handle_takes_the_direct_path(kernel: str) -> None:
    """In the hybrid split the table's handles lie above ``dma_offset``, and
    ``arch_dma_unmap_sg_direct`` only compares with ``dma_offset``: unmapping a
    scatterlist mapped through the table goes the direct way and its entries stay
    (kernel wart kept). The window sits at 1 << 40, so that 7.0's bus limit stays
    below the required mask (at bus address 0 it would cover it and map everything
    direct)."""
    m, dev, pd = _dev(kernel, pmem=True, max_windows=1, largest_block=1 << 20,
                      page_shifts=(12, 16), dma32_base=1 << 40)
    m.dma.dma_set_mask(dev, M64)
    tbl = pd.table
    assert tbl is not None and tbl.bus_start > pd.dma_offset
    sgl = [SgEntry((4 << 30) - 0x800, 0x800)]  # fails the sg direct check (above)
    assert m.dma.map_sg(dev, sgl) == 1 and sgl[0].dma_address >= tbl.bus_start
    m.dma.unmap_sg(dev, sgl)
    assert tbl.in_use()


def test_vpmem_with_a_max_physmem_window_on_7_0_is_still_limited() -> None:
    """A MAX_PHYSMEM_BITS window maps vPMEM too: 6.12 sets no limit; 7.0 limits direct
    DMA to RAM anyway (``1 << max_ram_len``) with ``dma_ops_bypass`` on."""
    m, dev, pd = _dev("7.0", pmem=True, largest_block=1 << 40)
    m.dma.dma_set_mask(dev, M64)
    assert pd.pdn.ddw is not None and pd.pdn.ddw.window_shift == 51
    assert pd.dma_ops_bypass and dev.bus_dma_limit == pd.dma_offset + (4 << 30)
