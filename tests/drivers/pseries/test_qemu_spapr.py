"""The sPAPR hypervisor answers as QEMU 10 does (hw/ppc/spapr_rtas_ddw.c, spapr_pci.c,
include/hw/ppc/spapr.h), and as older QEMUs do through ``DdwOffer.qemu_before_7_1``."""

from __future__ import annotations

from iommulab import Machine
from iommulab.devices import DMA_BIT_MASK
from iommulab.drivers.pseries.hv import (
    RTAS_HW_ERROR,
    RTAS_PARAM_ERROR,
    RTAS_TOKENS,
    DdwOffer,
    SpaprPhb,
)
from iommulab.mem import PhysMem

BUID = 0x800000020000000
PE = (0x800, BUID >> 32, BUID & 0xFFFF_FFFF)
LIOBN0, LIOBN1 = 0x80000000, 0x80000001


def _phb(offer: DdwOffer | None = None) -> SpaprPhb:
    return SpaprPhb(PhysMem("1G", ram_base=0), offer)


def test_rtas_tokens_are_qemus_numbers() -> None:
    """QEMU registers the DDW calls at RTAS_TOKEN_BASE (0x2000) + 0x26..0x29 (query,
    create, remove, reset); ibm,ddw-extensions carries the reset token."""
    assert RTAS_TOKENS == {"query": 0x2026, "create": 0x2027, "remove": 0x2028,
                           "reset": 0x2029}
    assert DdwOffer().extensions()[1] == 0x2029


def test_ddw_extensions_offer_the_6_output_query() -> None:
    """QEMU 7.1 and later: ibm,ddw-extensions = <2, reset token, 1>, the 1 saying the
    query returns 6 outputs (LoPAR 2.8); QEMU before 7.1 had the reset token only."""
    assert DdwOffer().extensions() == [2, 0x2029, 1]
    assert DdwOffer.qemu_before_7_1().extensions() == [1, 0x2029]
    assert DdwOffer(ddw=False).extensions() == []


def test_query_answer_follows_nret_and_pgsz() -> None:
    """pgsz defaults to 4K | 64K | 2M | 16M: LoPAR bits 0x1, 0x2, 0x4 and 0x100 (2M is
    bit 8). The 5-output answer reports a largest block of 0x80000000 TCEs, the 6-output
    one 0x20_0000_0000 (1 << 37) as two words; migration is 0; nret other than 5 or 6 is
    a parameter error (and 6 was one before QEMU 7.1)."""
    phb = _phb()
    assert phb.rtas_query(*PE, nret=5) == [0, 1, 0x8000_0000, 0x107, 0]
    assert phb.rtas_query(*PE, nret=6) == [0, 1, 0x20, 0, 0x107, 0]
    assert phb.rtas_query(*PE, nret=4) == [RTAS_PARAM_ERROR]
    old = _phb(DdwOffer.qemu_before_7_1())
    assert old.rtas_query(*PE, nret=5) == [0, 1, 0x8000_0000, 0x3, 0]
    assert old.rtas_query(*PE, nret=6) == [RTAS_PARAM_ERROR]


def test_guest_on_qemu_10_takes_16m_pages_from_the_6_output_query() -> None:
    """The kernel reads DDW_EXT_QUERY_OUT_SIZE == 1, asks for 6 outputs, sees 2^37 TCEs
    and 16M pages (the largest offered) and maps 4G of RAM with 256 TCEs."""
    m = Machine("ppc64-pseries", ram="4G")
    dev = m.add_pci_device("0000:00:01.0")
    pd = m.pseries.devs[dev.sid]
    m.dma.dma_set_mask(dev, DMA_BIT_MASK(64))
    assert any("lb=2000000000 ps=107 wn=1" in line for line in pd.pdn.log)
    assert pd.pdn.ddw is not None and pd.pdn.ddw.tce_shift == 24
    window = pd.pdn.phb.window_of(pd.pdn.ddw.liobn)
    assert window is not None and window.used() == 256
    assert pd.pdn.phb.stats.hcalls["H_PUT_TCE_INDIRECT"] == 1


def test_removing_the_last_non_default_window_restores_the_default() -> None:
    """PAPR, in QEMU since 7.1: removing the PE's last window, when it is not the default
    one, brings the default window back (4K pages, empty). Removing the default window
    itself does not."""
    phb = _phb()
    assert phb.rtas_create(*PE, 16, 32)[:2] == [0, LIOBN1]
    assert phb.rtas_remove(LIOBN0) == [0]  # the default, with a window left
    assert list(phb.windows) == [LIOBN1]
    assert phb.rtas_remove(LIOBN1) == [0]  # the last one: the default comes back
    back = phb.window_of(LIOBN0)
    assert back is not None and (back.bus_offset, back.page_shift) == (0, 12)
    assert back.window_size == 1 << 30 and back.used() == 0
    assert phb.rtas_remove(LIOBN0) == [0] and not phb.windows  # default: not restored
    assert phb.rtas_remove(LIOBN0) == [RTAS_PARAM_ERROR]


def test_before_qemu_7_1_removing_the_last_window_leaves_none() -> None:
    phb = _phb(DdwOffer.qemu_before_7_1())
    phb.rtas_create(*PE, 16, 32)
    phb.rtas_remove(LIOBN0)
    phb.rtas_remove(LIOBN1)
    assert not phb.windows


def test_a_window_created_on_the_default_liobn_counts_as_the_default() -> None:
    """QEMU keeps ``def_win`` on the table object of the default LIOBN: a window created
    there after the default one was removed is not restored when it goes."""
    phb = _phb()
    phb.rtas_remove(LIOBN0)
    assert phb.rtas_create(*PE, 24, 33) == [0, LIOBN0, 0, 0]
    assert phb.rtas_remove(LIOBN0) == [0] and not phb.windows


def test_a_window_of_2_32_entries_or_more_is_a_hardware_error() -> None:
    """QEMU's ``nb_table`` is a uint32_t: 1 << 32 entries truncates to 0 and the create
    fails with RTAS -1 (changing nothing); 1 << 31 entries is accepted."""
    phb = _phb()
    assert phb.rtas_create(*PE, 12, 44) == [RTAS_HW_ERROR] and list(phb.windows) == [LIOBN0]
    assert phb.rtas_create(*PE, 12, 43)[0] == 0
    assert phb.windows[LIOBN1].nb_table == 1 << 31


def test_ddw_off_refuses_every_ddw_call_and_the_guest_keeps_its_window() -> None:
    """QEMU's ``ddw=off``: no ibm,ddw-applicable, every DDW RTAS call is a parameter
    error; the guest never calls them and keeps the default window."""
    phb = _phb(DdwOffer(ddw=False))
    assert phb.rtas_query(*PE) == [RTAS_PARAM_ERROR]
    assert phb.rtas_create(*PE, 16, 32) == [RTAS_PARAM_ERROR]
    assert phb.rtas_reset(*PE) == [RTAS_PARAM_ERROR]
    assert phb.rtas_remove(LIOBN0) == [RTAS_PARAM_ERROR] and LIOBN0 in phb.windows
    m = Machine("ppc64-pseries", ram="4G")
    dev = m.add_pci_device("0000:00:01.0", ddw=DdwOffer(ddw=False))
    pd = m.pseries.devs[dev.sid]
    m.dma.dma_set_mask(dev, DMA_BIT_MASK(64))
    assert pd.pdn.failed and pd.pdn.phb.stats.rtas == {} and pd.table is pd.pdn.tables[0]


def test_reset_brings_back_the_default_window_only() -> None:
    """``spapr_phb_dma_reset``: every window disabled, the default one re-enabled empty
    at dma_win_addr with 4K pages."""
    phb = _phb(DdwOffer(dma32_base=1 << 32))
    phb.rtas_create(*PE, 16, 32)
    phb.h_put_tce(LIOBN0, 1 << 32, 0x5003)
    assert phb.rtas_reset(*PE) == [0]
    assert list(phb.windows) == [LIOBN0]
    tbl = phb.windows[LIOBN0]
    assert tbl.bus_offset == 1 << 32 and tbl.used() == 0
