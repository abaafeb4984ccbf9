"""The PAPR hypervisor side of a pSeries PHB: TCE hcalls, DDW RTAS calls, DMA translation.

Follows QEMU 10's sPAPR model (``hw/ppc/spapr_iommu.c``, ``hw/ppc/spapr_rtas_ddw.c``,
``hw/ppc/spapr_pci.c``, ``include/hw/ppc/spapr.h``) with what it offers made configurable
(:class:`DdwOffer`), so PowerVM's answers (one window per PE, a small largest block,
limited addressing) and older QEMUs can be asked for too:

- ``H_PUT_TCE``, ``H_GET_TCE``: one entry; the IOBA is rounded down to the IO page;
  an unknown LIOBN or an entry outside the window is ``H_PARAMETER``.
- ``H_PUT_TCE_INDIRECT``: up to 512 entries read big-endian from a 4K-aligned list in
  guest memory; more, or an unaligned list, is ``H_PARAMETER``; entries are written in
  order up to the first one outside the window.
- ``H_STUFF_TCE``: one value into ``npages`` entries; more pages than the table has is
  ``H_PARAMETER``.
- ``ibm,query-pe-dma-window`` (5 outputs, or 6 when the query-size extension is
  offered: QEMU answers the 5-output form with a largest block of 2^31 TCEs and the
  6-output form with 2^37), ``ibm,create-pe-dma-window``, ``ibm,remove-pe-dma-window``
  (removing the last window, when it is not the default one, brings the default window
  back: PAPR's rule, in QEMU since 7.1), ``ibm,reset-pe-dma-window`` (every window gone,
  the default 32-bit window with 4K pages back and empty, as ``spapr_phb_dma_reset``
  does; with the limited-addressing argument when that extension is offered), with
  RTAS status 0, -1 (hardware error) and -3 (parameter error).

Lab: ``tce_resources`` (a :class:`~iommulab.mem.fault.FailNth`) makes an armed
``H_PUT_TCE`` or ``H_PUT_TCE_INDIRECT`` answer ``H_NOT_ENOUGH_RESOURCES`` without writing,
as PowerVM does when it is short of resources (QEMU never returns it).

DMA through a window walks nothing: the entry of the IO page is read and its permission
bits are checked; a missing or read-only entry is a fault (EEH would freeze the PE).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from ...errors import DmaFault
from ...mem import PhysMem
from ...mem.fault import FailNth
from ...pgtable.tce import TCE_PCI_READ, TCE_PCI_WRITE, TceTable, tce_rpn_address

__all__ = [
    "DDW_PAGE_SHIFTS",
    "H_NOT_ENOUGH_RESOURCES",
    "H_PARAMETER",
    "H_SUCCESS",
    "RTAS_HW_ERROR",
    "RTAS_PARAM_ERROR",
    "RTAS_TOKENS",
    "DdwOffer",
    "SpaprPhb",
    "TceFault",
]

H_SUCCESS = 0
H_PARAMETER = -4
H_NOT_ENOUGH_RESOURCES = -44
RTAS_SUCCESS = 0
RTAS_HW_ERROR = -1
RTAS_PARAM_ERROR = -3
TCE_LIST_MAX = 512  # SPAPR_TCE_PAGE_SIZE / sizeof(u64)

#: LoPAR "IO Page Sizes" bits of ibm,query-pe-dma-window, in bit order (2M comes last).
DDW_PAGE_SHIFTS = (12, 16, 24, 25, 26, 27, 28, 34, 21)

#: The RTAS tokens of the DDW calls as QEMU numbers them (include/hw/ppc/spapr.h:
#: RTAS_TOKEN_BASE 0x2000, RTAS_IBM_QUERY_PE_DMA_WINDOW + 0x26 ... RESET + 0x29);
#: ``ibm,ddw-applicable`` carries the first three, ``ibm,ddw-extensions`` the last.
RTAS_TOKENS = {"query": 0x2026, "create": 0x2027, "remove": 0x2028, "reset": 0x2029}

#: The largest block QEMU reports in the 6-output query: 1 << (58 - 21), "the biggest
#: window with 2M pages below the start of the 64-bit window" (spapr_rtas_ddw.c).
QEMU_LARGEST_BLOCK_64 = 1 << 37
#: ... and in the 5-output query (a 32-bit word).
QEMU_LARGEST_BLOCK_32 = 0x8000_0000


@dataclass
class DdwOffer:
    """What the hypervisor offers one PE. The defaults are QEMU 10's
    ``spapr-pci-host-bridge`` on a current ``pseries`` machine (``spapr_phb_properties``
    and ``spapr_dt_phb`` in hw/ppc/spapr_pci.c, hw/ppc/spapr_rtas_ddw.c):

    - ``ddw`` (QEMU's ``ddw``, on): ``ibm,ddw-applicable`` and ``ibm,ddw-extensions`` are
      in the device tree and the DDW RTAS calls answer; off, every DDW call is a
      parameter error and the PE keeps its default window.
    - ``dma32_base``, ``dma32_size`` (``dma_win_addr`` 0, ``dma_win_size`` 1 GiB): the
      default window, 4K pages; ``dma64_base`` (``dma64_win_addr`` 1 << 59): where a
      window created while another one exists goes (the first one goes at
      ``dma32_base``).
    - ``page_shifts`` (``pgsz``): 4K, 64K, 2M and 16M (since the pseries-4.2 machine).
    - ``max_windows``: 2 (SPAPR_PCI_DMA_MAX_WINDOWS); lab: 1 as PowerVM gives SR-IOV VFs.
    - ``largest_block``: what the 6-output query reports, 2^37 TCEs; the 5-output query
      reports at most ``largest_block_32`` (QEMU: 2^31 whatever the other figure).
    - ``reset_extension``, ``query_out_6``: ``ibm,ddw-extensions`` = [2, the reset token,
      1 (6-output query, LoPAR 2.8)], since QEMU 7.1.
    - ``restore_default``: removing the last window, unless it is the default one,
      restores the default window (PAPR; QEMU 7.1).
    - ``limited_addressing`` (LoPAR 2.13; QEMU has no such extension): None absent, else
      whether the PHB supports it.

    :meth:`qemu_before_7_1` is the older QEMU (the offer this model made before)."""

    max_windows: int = 2
    largest_block: int = QEMU_LARGEST_BLOCK_64  # TCEs
    largest_block_32: int = QEMU_LARGEST_BLOCK_32
    page_shifts: tuple[int, ...] = (12, 16, 21, 24)
    dma32_base: int = 0
    dma32_size: int = 0x4000_0000
    dma64_base: int = 0x0800_0000_0000_0000
    ddw: bool = True
    reset_extension: bool = True  # LoPAR 2.7 ibm,reset-pe-dma-windows
    query_out_6: bool = True  # LoPAR 2.8: 64-bit largest block
    restore_default: bool = True
    limited_addressing: bool | None = None  # LoPAR 2.13: None absent, else supported?
    limited_base: int = 1 << 32  # lab: where a window goes in limited addressing mode
    migration_mask: int = 0

    @classmethod
    def qemu_before_7_1(cls) -> DdwOffer:
        """QEMU before 7.1 on a pseries-4.1 or older machine: 4K and 64K pages, only the
        5-output query (largest block 2^31), the reset token as the only extension, and
        the default window not restored when the last window goes. (QEMU 4.2 to 7.0 on
        newer machines also accepted 2M and 16M pages but reported only 4K, 64K and 16M:
        ``page_shifts=(12, 16, 24)`` gives what the guest sees.)"""
        return cls(page_shifts=(12, 16), largest_block=QEMU_LARGEST_BLOCK_32,
                   query_out_6=False, restore_default=False)

    def page_mask(self) -> int:
        """The query's "IO Page Sizes" bit field (``spapr_page_mask_to_query_mask``)."""
        bad = [s for s in self.page_shifts if s not in DDW_PAGE_SHIFTS]
        if bad:
            raise ValueError(f"page shifts {bad}: LoPAR has no bit for them")
        return sum(1 << DDW_PAGE_SHIFTS.index(s) for s in set(self.page_shifts))

    def extensions(self) -> list[int]:
        """``ibm,ddw-extensions``: the count, then the values by index (1 reset token,
        2 query output size, 3 limited addressing); none without DDW."""
        ext: list[int] = []
        if not self.ddw:
            return ext
        if self.reset_extension or self.query_out_6 or self.limited_addressing is not None:
            ext = [RTAS_TOKENS["reset"] if self.reset_extension else 0]
        if self.query_out_6 or self.limited_addressing is not None:
            ext.append(1 if self.query_out_6 else 0)
        if self.limited_addressing is not None:
            ext.append(1 if self.limited_addressing else 0)
        return [len(ext), *ext] if ext else []


@dataclass
class TceFault:
    """A DMA the PHB refused (the model's record of what EEH would report)."""

    sid: int
    iova: int
    write: bool
    reason: str


@dataclass
class HcallStats:
    """Counters (lab): hcalls by name, entries they wrote, RTAS calls by name."""

    hcalls: dict[str, int] = field(default_factory=dict)
    tces_written: int = 0
    rtas: dict[str, int] = field(default_factory=dict)

    def count(self, name: str, n: int = 1) -> None:
        self.hcalls[name] = self.hcalls.get(name, 0) + n

    def count_rtas(self, name: str) -> None:
        self.rtas[name] = self.rtas.get(name, 0) + 1


class SpaprPhb:
    """One PHB and its PE's DMA windows, keyed by LIOBN (window 0 is the default one)."""

    def __init__(self, mem: PhysMem, offer: DdwOffer | None = None, *,
                 buid: int = 0x800000020000000, liobn_base: int = 0x80000000) -> None:
        self.mem = mem
        self.offer = offer or DdwOffer()
        self.buid = buid
        self.liobns = (liobn_base, liobn_base + 1)  # SPAPR_PCI_LIOBN(index, 0/1)
        self.windows: dict[int, TceTable] = {}
        self.limited_mode = False
        self.stats = HcallStats()
        self.faults: list[TceFault] = []
        #: Lab: arm it to make a TCE-writing hcall answer H_NOT_ENOUGH_RESOURCES.
        self.tce_resources = FailNth()
        self.reset()

    # -- windows -------------------------------------------------------------------------
    def reset(self) -> None:
        """``spapr_phb_dma_reset``: every window gone, the default one back, empty (and,
        lab, out of limited addressing mode)."""
        self.windows.clear()
        o = self.offer
        self.windows[self.liobns[0]] = TceTable(o.dma32_base, 12, o.dma32_size >> 12)
        self.limited_mode = False

    def window_of(self, liobn: int) -> TceTable | None:
        return self.windows.get(liobn)

    def _locate(self, liobn: int, ioba: int) -> tuple[TceTable, int] | None:
        """The window and entry index of ``ioba`` (``put_tce_emu``'s bounds check, with
        the unsigned wrap of an IOBA below the window)."""
        tbl = self.windows.get(liobn)
        if tbl is None:
            return None
        index = ((ioba & ~((1 << tbl.page_shift) - 1)) - tbl.bus_offset) >> tbl.page_shift
        if not 0 <= index < tbl.nb_table:
            return None
        return tbl, index

    # -- hcalls -------------------------------------------------------------------------------
    def h_put_tce(self, liobn: int, ioba: int, tce: int) -> int:
        self.stats.count("H_PUT_TCE")
        if self._locate(liobn, ioba) is None:
            return H_PARAMETER
        return self._write_entries("H_PUT_TCE", liobn, ioba, np.array([tce], dtype=np.uint64))

    def h_get_tce(self, liobn: int, ioba: int) -> tuple[int, int]:
        """(return code, entry)."""
        self.stats.count("H_GET_TCE")
        hit = self._locate(liobn, ioba)
        if hit is None:
            return H_PARAMETER, 0
        tbl, index = hit
        return H_SUCCESS, tbl.get(index)

    def h_put_tce_indirect(self, liobn: int, ioba: int, tce_list: int, npages: int) -> int:
        """Entries from the list at guest address ``tce_list`` (big-endian u64s)."""
        self.stats.count("H_PUT_TCE_INDIRECT")
        if liobn not in self.windows:
            return H_PARAMETER
        if npages > TCE_LIST_MAX or tce_list & 0xFFF:
            return H_PARAMETER
        if not npages:  # the loop never runs: QEMU's initial H_PARAMETER
            return H_PARAMETER
        raw = self.mem.read(tce_list, npages * 8)
        tces = np.frombuffer(raw, dtype=">u8").astype(np.uint64)
        return self._write_entries("H_PUT_TCE_INDIRECT", liobn, ioba, tces)

    def h_stuff_tce(self, liobn: int, ioba: int, tce_value: int, npages: int) -> int:
        self.stats.count("H_STUFF_TCE")
        tbl = self.windows.get(liobn)
        if tbl is None or npages > tbl.nb_table or not npages:
            return H_PARAMETER
        hit = self._locate(liobn, ioba)
        if hit is None:
            return H_PARAMETER
        _, index = hit
        n = min(npages, tbl.nb_table - index)
        tbl.stuff(index, n, tce_value)
        self.stats.tces_written += n
        return H_SUCCESS if n == npages else H_PARAMETER

    def put_tce_indirect_run(self, liobn: int, ioba: int, tces: npt.NDArray[np.uint64]) -> int:
        """Lab fast path: exactly what consecutive ``H_PUT_TCE_INDIRECT`` calls of 512
        entries (the last one shorter) do, counted as those calls, without staging each
        list in guest memory. Stops at the first failing call, as the callers' loops do."""
        if liobn not in self.windows:
            self.stats.count("H_PUT_TCE_INDIRECT")
            return H_PARAMETER
        if self.tce_resources.armed:
            return self._indirect_calls(liobn, ioba, tces)
        hit = self._locate(liobn, ioba)
        room = 0 if hit is None else self.windows[liobn].nb_table - hit[1]
        # every call fits, or the calls up to the one that runs off the window are made
        calls = -(-len(tces) // TCE_LIST_MAX) if room >= len(tces) \
            else room // TCE_LIST_MAX + 1
        self.stats.count("H_PUT_TCE_INDIRECT", calls)
        return self._put_run(liobn, ioba, tces[:calls * TCE_LIST_MAX])

    def _indirect_calls(self, liobn: int, ioba: int, tces: npt.NDArray[np.uint64]) -> int:
        """The calls of :meth:`put_tce_indirect_run` one at a time, so that an armed
        resource failure hits the right one."""
        step = TCE_LIST_MAX << self.windows[liobn].page_shift
        rc, done = H_SUCCESS, 0
        while not rc and done < len(tces):
            self.stats.count("H_PUT_TCE_INDIRECT")
            rc = self._write_entries("H_PUT_TCE_INDIRECT", liobn,
                                     ioba + done // TCE_LIST_MAX * step,
                                     tces[done:done + TCE_LIST_MAX])
            done += TCE_LIST_MAX
        return rc

    def _write_entries(self, hcall: str, liobn: int, ioba: int,
                       tces: npt.NDArray[np.uint64]) -> int:
        """A TCE-writing hcall past its argument checks: the lab's armed resource
        failure writes nothing, else :meth:`_put_run`."""
        if self.tce_resources.fails(hcall):
            return H_NOT_ENOUGH_RESOURCES
        return self._put_run(liobn, ioba, tces)

    def _put_run(self, liobn: int, ioba: int, tces: npt.NDArray[np.uint64]) -> int:
        """Entries in order from ``ioba``: those inside the window are written, the first
        one outside ends the call with ``H_PARAMETER``."""
        if not len(tces):
            return H_SUCCESS
        hit = self._locate(liobn, ioba)
        if hit is None:
            return H_PARAMETER
        tbl, index = hit
        n = min(len(tces), tbl.nb_table - index)
        tbl.put(index, tces[:n])
        self.stats.tces_written += n
        return H_SUCCESS if n == len(tces) else H_PARAMETER

    # -- RTAS ---------------------------------------------------------------------------------
    def _pe_ok(self, buid_hi: int, buid_lo: int) -> bool:
        """``spapr_pci_find_phb`` found this PHB and it has DDW enabled."""
        return self.offer.ddw and (buid_hi << 32 | buid_lo) == self.buid

    def rtas_query(self, cfg_addr: int, buid_hi: int, buid_lo: int,
                   nret: int = 5) -> list[int]:
        """``ibm,query-pe-dma-window`` with ``nret`` outputs: [status, windows available,
        largest block (one word, or two with 6 outputs), page sizes, migration]. A
        6-output call needs the query-size extension (QEMU before 7.1 accepted 5 only)."""
        self.stats.count_rtas("query")
        o = self.offer
        if nret not in ((5, 6) if o.query_out_6 else (5,)) \
                or not self._pe_ok(buid_hi, buid_lo):
            return [RTAS_PARAM_ERROR]
        avail = max(0, o.max_windows - len(self.windows))
        largest = [o.largest_block >> 32 & 0xFFFF_FFFF, o.largest_block & 0xFFFF_FFFF] \
            if nret == 6 else [min(o.largest_block, o.largest_block_32) & 0xFFFF_FFFF]
        return [RTAS_SUCCESS, avail, *largest, o.page_mask(), o.migration_mask]

    def rtas_create(self, cfg_addr: int, buid_hi: int, buid_lo: int, page_shift: int,
                    window_shift: int) -> list[int]:
        """``ibm,create-pe-dma-window``: [status, liobn, bus address hi, lo]. The table
        size is QEMU's ``uint32_t nb_table``: a window of 2^32 entries or more truncates
        to none and fails as a hardware error, as does (lab) one larger than the
        offer's largest block."""
        self.stats.count_rtas("create")
        o = self.offer
        if not self._pe_ok(buid_hi, buid_lo) or page_shift not in o.page_shifts \
                or window_shift < page_shift:
            return [RTAS_PARAM_ERROR]
        free = [liobn for liobn in self.liobns if liobn not in self.windows]
        if not free or len(self.windows) >= o.max_windows:
            return [RTAS_HW_ERROR]
        entries = window_shift - page_shift
        nb_table = (1 << entries) & 0xFFFF_FFFF if entries < 64 else 0
        if not nb_table or nb_table > o.largest_block:
            return [RTAS_HW_ERROR]
        base = o.dma32_base if not self.windows else o.dma64_base
        if self.limited_mode and self.windows:
            base = o.limited_base  # above 4G, below what a short mask reaches
        liobn = free[0]
        self.windows[liobn] = TceTable(base, page_shift, nb_table)
        return [RTAS_SUCCESS, liobn, base >> 32, base & 0xFFFF_FFFF]

    def rtas_remove(self, liobn: int) -> list[int]:
        """``ibm,remove-pe-dma-window``: [status]; the entries go with the window. When
        it was the last window and not the default one, the default window comes back
        (``spapr_phb_dma_reset``). QEMU marks the default LIOBN's table object, so a
        window later created on that LIOBN counts as the default one (QEMU's reading of
        the rule, kept)."""
        self.stats.count_rtas("remove")
        if not self.offer.ddw or self.windows.pop(liobn, None) is None:
            return [RTAS_PARAM_ERROR]
        if self.offer.restore_default and not self.windows and liobn != self.liobns[0]:
            self.reset()
        return [RTAS_SUCCESS]

    def rtas_reset(self, cfg_addr: int, buid_hi: int, buid_lo: int,
                   limited: int | None = None) -> list[int]:
        """``ibm,reset-pe-dma-window``: [status]; the default window restored. The
        limited-addressing argument (a fourth one) needs that extension (QEMU takes three
        arguments only)."""
        self.stats.count_rtas("reset")
        if not self._pe_ok(buid_hi, buid_lo) or not self.offer.reset_extension:
            return [RTAS_PARAM_ERROR]
        if limited is not None and not self.offer.limited_addressing:
            return [RTAS_PARAM_ERROR]
        self.reset()
        self.limited_mode = bool(limited)
        return [RTAS_SUCCESS]

    # -- DMA ------------------------------------------------------------------------------------
    def translate_run(self, sid: int, iova: int, write: bool, privileged: bool = False
                      ) -> tuple[int, int]:
        """The physical address of ``iova`` and the end of its IO page."""
        for tbl in self.windows.values():
            index = (iova - tbl.bus_offset) >> tbl.page_shift
            if iova - tbl.bus_offset >= 0 and index < tbl.nb_table:
                tce = tbl.get(index)
                if not tce & (TCE_PCI_WRITE if write else TCE_PCI_READ):
                    raise self._fault(sid, iova, write, "no valid TCE" if not tce
                                      else "TCE does not allow the access")
                size = 1 << tbl.page_shift
                return tce_rpn_address(tce, tbl.page_shift) | (iova & (size - 1)), \
                    (iova | (size - 1)) + 1
        raise self._fault(sid, iova, write, "outside every DMA window")

    def _fault(self, sid: int, iova: int, write: bool, reason: str) -> DmaFault:
        self.faults.append(TceFault(sid, iova, write, reason))
        return DmaFault(f"PHB {self.buid:#x}: DMA {'write' if write else 'read'} at "
                        f"{iova:#x}: {reason}", sid=sid, iova=iova, write=write, reason=reason)
