"""pSeries DMA windows from the guest kernel's side (arch/powerpc/platforms/pseries/iommu.c).

Each PCI device sits in its own PE behind its own :class:`~.hv.SpaprPhb` (SR-IOV VFs on
PowerVM, or one device per PHB in QEMU). At probe the default 32-bit window becomes
``table_group->tables[0]`` (``pci_dma_dev_setup_pSeriesLP``). When the driver asks for
more than 32 bits of DMA mask, :meth:`PseriesIommu.enable_ddw` runs ``enable_ddw``:

1. a window made before for this PE is reused; a PE that failed before is not retried;
   no ``ibm,ddw-applicable`` fails;
2. query; a mask short of 64 bits needs limited addressing (reset extension and the
   LoPAR 2.13 extension saying yes), which resets the PE into that mode;
3. no window available: refuse if the default table is in use
   (``iommu_table_in_use``), else (needing the default window property and the reset
   extension) clear and remove the default window and query again;
4. the largest page size offered; ``ddw_sz = min(log2(largest block << page shift),
   fls64(mask))``; the window must cover ``max_ram_len`` bits (or MAX_PHYSMEM_BITS with
   vPMEM when it can);
5. too small: a dynamic window of ``ddw_sz`` bits with a new table; big enough: a direct
   window (all RAM pre-mapped, the default table dropped if it was removed); with the
   default window removed and vPMEM present, the hybrid split: RAM direct below the
   split, a dynamic table above, when the window has 2 GiB to spare;
6. any failure resets the default window (if removed or in limited mode) and puts the PE
   on the failed list; ``dma_offset`` is the window's bus address.

Where 6.12 and 7.0 differ (``kernel``): the hybrid split sits at the end of RAM
(``pseries_ddw_max_ram``, 6.12) or at ``1 << max_ram_len`` (7.0); 6.12 sets a bus DMA
limit (the end of RAM) only for a direct window that leaves vPMEM out, 7.0 sets one
(``1 << max_ram_len``) for every direct window and then keeps ``dma_ops_bypass`` on,
sending what lies above the limit through the table and coherent allocations direct.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

from ...devices import DmaDevice
from ...kernel import DEFAULT_KERNEL, LINUX_7_0, KernelVersion
from ...mem import PhysMem
from .hv import DDW_PAGE_SHIFTS, RTAS_TOKENS, SpaprPhb
from .lpar import LparTceOps, setrange, stuff_range
from .table import IommuTable, iommu_init_table

__all__ = ["MAX_PHYSMEM_BITS", "MIN_DDW_VPMEM_DMA_WINDOW", "DdwProp", "PciDn",
           "PseriesIommu"]

MAX_PHYSMEM_BITS = 51  # book3s64
MIN_DDW_VPMEM_DMA_WINDOW = 1 << 31
DIRECT64_PROPNAME = "linux,direct64-ddr-window-info"
DMA64_PROPNAME = "linux,dma64-ddr-window-info"
DDW_EXT_RESET_DMA_WIN, DDW_EXT_QUERY_OUT_SIZE, DDW_EXT_LIMITED_ADDR_MODE = 1, 2, 3


def order_base_2(n: int) -> int:
    return (n - 1).bit_length() if n > 1 else 0


def fls64(x: int) -> int:
    return x.bit_length()


@dataclass
class DdwProp:
    """``struct dynamic_dma_window_prop`` and the property's name."""

    name: str
    liobn: int
    dma_base: int
    tce_shift: int
    window_shift: int


@dataclass
class PciDn:
    """The PE's device-tree node and ``pci_dn``: its DMA window properties and tables."""

    phb: SpaprPhb
    ops: LparTceOps
    dma_window: tuple[int, int, int] | None  # "ibm,dma-window": liobn, bus address, size
    ddw_applicable: bool = True
    ddw_extensions: list[int] = field(default_factory=list)
    dma_window_saved: tuple[int, int, int] | None = None
    ddw: DdwProp | None = None
    direct: bool = False  # dma_win_list entry's ->direct
    failed: bool = False  # on failed_ddw_pdn_list
    tables: list[IommuTable | None] = field(default_factory=lambda: [None, None])
    log: list[str] = field(default_factory=list)  # dev_info/dev_warn lines

    def read_ext(self, extnum: int) -> int | None:
        """``ddw_read_ext``: the extension's value, or None (missing, or past the count)."""
        ext = self.ddw_extensions
        if not ext or ext[0] < extnum or len(ext) <= extnum:
            return None
        return ext[extnum]


@dataclass
class PseriesDev:
    """What ``struct device`` holds for the pSeries DMA code."""

    pdn: PciDn
    table: IommuTable | None  # get_iommu_table_base()
    dma_offset: int = 0  # archdata.dma_offset
    dma_ops_bypass: bool = False
    cfg_addr: int = 0


class PseriesIommu:
    """The platform's DMA window code: probe, ``enable_ddw``, ``dma_iommu_dma_supported``.

    ``kernel_page_shift`` is the guest kernel's PAGE_SHIFT (16: 64K pages, as distribution
    kernels for POWER use); ``pmem_present`` stands for an ``ibm,pmemory`` node;
    ``memory_hotplug_max`` for ``ddw_memory_hotplug_max`` (default: the end of RAM);
    ``mmio32`` is the PHB's 32-bit MMIO resource (CPU addresses), reserved in dynamic
    tables; ``kernel`` the Linux release answered as."""

    def __init__(self, mem: PhysMem, *, kernel_page_shift: int = 16,
                 pmem_present: bool = False, disable_ddw: bool = False,
                 kernel: KernelVersion | str = DEFAULT_KERNEL) -> None:
        self.mem = mem
        self.kernel = KernelVersion.parse(kernel)
        self.kernel_page_shift = kernel_page_shift
        self.pmem_present = pmem_present
        self.disable_ddw = disable_ddw
        self.memory_hotplug_max: int | None = None
        self.mmio32 = (0x2000_8000_0000, 0x2000_FFFF_FFFF)
        self.devs: dict[int, PseriesDev] = {}  # by sid

    # -- probe ------------------------------------------------------------------------------
    def probe(self, dev: DmaDevice, phb: SpaprPhb) -> PseriesDev:
        """``pci_dma_dev_setup_pSeriesLP``: the default window's table for the device."""
        ops = LparTceOps(phb, self.mem)
        liobn = phb.liobns[0]
        window = phb.window_of(liobn)
        assert window is not None
        pdn = PciDn(phb, ops, (liobn, window.bus_offset, window.window_size),
                    ddw_applicable=phb.offer.ddw, ddw_extensions=phb.offer.extensions())
        tbl = IommuTable(liobn, window.bus_offset >> 12, window.window_size >> 12, 12, ops)
        iommu_init_table(tbl, 0, 0)
        pdn.tables[0] = tbl
        bus, devfn = dev.sid >> 8, dev.sid & 0xFF
        pdev = PseriesDev(pdn, tbl, cfg_addr=bus << 16 | devfn << 8)
        self.devs[dev.sid] = pdev
        return pdev

    def release(self, dev: DmaDevice) -> None:
        """Hot-unplug: the PE's tables go (with their TCEs), the list page is freed."""
        pdev = self.devs.pop(dev.sid)
        for tbl in pdev.pdn.tables:
            if tbl is not None:
                tbl.ops.clear(tbl, tbl.it_offset, tbl.it_size)
        pdev.pdn.ops.release()

    # -- RTAS wrappers ----------------------------------------------------------------------
    def _buid(self, pdn: PciDn) -> tuple[int, int]:
        return pdn.phb.buid >> 32, pdn.phb.buid & 0xFFFF_FFFF

    def _query(self, pdev: PseriesDev) -> tuple[int, int, int, int]:
        """``query_ddw``: (status, windows available, largest block, page size bits); six
        outputs are asked for when the query-size extension says 1."""
        pdn = pdev.pdn
        six = pdn.read_ext(DDW_EXT_QUERY_OUT_SIZE) == 1
        out = pdn.phb.rtas_query(pdev.cfg_addr, *self._buid(pdn), nret=6 if six else 5)
        if out[0]:
            return out[0], 0, 0, 0
        largest = (out[2] << 32 | out[3]) if six else out[2]
        pages = out[4] if six else out[3]
        pdn.log.append(f"ibm,query-pe-dma-windows({RTAS_TOKENS['query']:x}) "
                       f"{pdev.cfg_addr:x} returned {out[0]}, lb={largest:x} ps={pages:x} "
                       f"wn={out[1]}")
        return out[0], out[1], largest, pages

    def _reset(self, pdev: PseriesDev, limited: bool = False) -> int:
        """``reset_dma_window`` / ``limited_dma_window``'s RTAS call."""
        pdn = pdev.pdn
        if pdn.read_ext(DDW_EXT_RESET_DMA_WIN) is None:
            return -1
        out = pdn.phb.rtas_reset(pdev.cfg_addr, *self._buid(pdn), 1 if limited else None)
        return out[0]

    # -- enable_ddw ------------------------------------------------------------------------------
    def ram_end(self) -> int:
        """``ddw_memory_hotplug_max`` (6.12 keeps it from boot as ``pseries_ddw_max_ram``;
        the model's RAM does not change after boot, so both read the same)."""
        if self.memory_hotplug_max is not None:
            return self.memory_hotplug_max
        return max(r.end for r in self.mem.regions if r.kind == "ram")

    def enable_ddw(self, dev: DmaDevice, dma_mask: int) -> bool:
        """``enable_ddw``: True when the device can DMA to all RAM at ``dma_offset``."""
        pdev = self.devs[dev.sid]
        pdn = pdev.pdn
        max_ram_len = order_base_2(self.ram_end())
        if pdn.ddw is not None:  # find_existing_ddw
            pdev.dma_offset = pdn.ddw.dma_base
            return self._done(dev, pdev, pdn.direct, pdn.ddw.window_shift, max_ram_len)
        if pdn.failed:
            return self._done(dev, pdev, False, 0, max_ram_len)
        direct, dynamic, default_removed, limited = False, False, False, False
        length = 0
        ok = pdn.ddw_applicable
        if ok:
            rc, avail, largest, pages = self._query(pdev)
            ok = rc == 0
        if ok and dma_mask != (1 << 64) - 1:
            ok = self._limited(pdev)
            limited = ok
        if ok and avail == 0:
            tbl0 = pdn.tables[0]
            if tbl0 is not None and tbl0.in_use():
                pdn.log.append("current IOMMU table in use, can't be replaced.")
                ok = False
            elif pdn.dma_window is None or pdn.read_ext(DDW_EXT_RESET_DMA_WIN) is None:
                ok = False
            else:
                self._remove_default(pdn)
                default_removed = True
                rc, avail, largest, pages = self._query(pdev)
                ok = rc == 0 and avail > 0
        page_shift = 0
        if ok:
            page_shift = _largest_page_shift(pages)
            ok = page_shift > 0
        if ok:
            ddw_sz = min(order_base_2(largest << page_shift), fls64(dma_mask))
            length = max_ram_len
            if self.pmem_present and ddw_sz >= MAX_PHYSMEM_BITS:
                length = MAX_PHYSMEM_BITS
            elif self.pmem_present:
                pdn.log.append("Skipping ibm,pmemory")
            dynamic_offset = 0
            if ddw_sz < length:
                length, dynamic = ddw_sz, True
            else:
                direct = (not default_removed or length == MAX_PHYSMEM_BITS
                          or (not self.pmem_present and length == max_ram_len))
                if default_removed and self.pmem_present and not direct:
                    split = self._ram_limit(max_ram_len)
                    if 1 << ddw_sz >= MIN_DDW_VPMEM_DMA_WINDOW + split:
                        direct, dynamic_offset = True, split
                    dynamic, length = True, ddw_sz
            ok = self._create(dev, pdev, page_shift, length, direct, dynamic,
                              default_removed, dynamic_offset)
        if not ok:
            direct = False
            if default_removed or limited:
                self._reset(pdev)
                if default_removed:
                    self._restore_default(pdev)
            pdn.failed = True
        return self._done(dev, pdev, direct, length, max_ram_len)

    def _limited(self, pdev: PseriesDev) -> bool:
        """``limited_dma_window``: reset the PE into limited addressing mode. No reset
        extension fails quietly; a missing limited-addressing extension (-EOVERFLOW) or
        one saying no (-EPROTO) is logged."""
        pdn = pdev.pdn
        if pdn.read_ext(DDW_EXT_RESET_DMA_WIN) is None:
            return False
        las = pdn.read_ext(DDW_EXT_LIMITED_ADDR_MODE)
        if not las:
            err = -errno.EOVERFLOW if las is None else -errno.EPROTO
            pdn.log.append(f"Limited Address Space for DDW not Supported, err: {err}")
            return False
        return self._reset(pdev, limited=True) == 0

    def _remove_default(self, pdn: PciDn) -> None:
        """``remove_dma_window(pdn, ..., default_win, true)``: clear its TCEs, remove it."""
        assert pdn.dma_window is not None
        liobn, base, size = pdn.dma_window
        stuff_range(pdn.phb, liobn, base, size >> 12, 12)
        pdn.phb.rtas_remove(liobn)

    def _restore_default(self, pdev: PseriesDev) -> None:
        """After a reset the default window is back; its table is still ``tables[0]``."""
        pdn = pdev.pdn
        if pdn.tables[0] is not None:
            pdev.table = pdn.tables[0]

    def _create(self, dev: DmaDevice, pdev: PseriesDev, page_shift: int, length: int,
                direct: bool, dynamic: bool, default_removed: bool,
                dynamic_offset: int) -> bool:
        pdn = pdev.pdn
        out = pdn.phb.rtas_create(pdev.cfg_addr, *self._buid(pdn), page_shift, length)
        if out[0]:
            pdn.log.append(f"ibm,create-pe-dma-window returned {out[0]}")
            return False
        liobn, win_addr = out[1], out[2] << 32 | out[3]
        prop = DdwProp(DIRECT64_PROPNAME if direct else DMA64_PROPNAME, liobn, win_addr,
                       page_shift, length)
        if direct:
            rc = 0
            for r in self.mem.regions:  # walk_system_ram_range
                if r.kind == "ram" and r.name == "System RAM" and r.start < self.ram_end():
                    rc = setrange(pdn.phb, liobn, win_addr, page_shift, r.start,
                                  min(r.end, self.ram_end()) - r.start)
                    if rc:
                        break
            if rc:
                pdn.log.append(f"failed to map DMA window: {rc}")
                stuff_range(pdn.phb, liobn, win_addr, 1 << (length - page_shift), page_shift)
                pdn.phb.rtas_remove(liobn)
                return False
            if default_removed:
                pdn.tables[0] = None
                pdev.table = None
        if dynamic:
            start, end = self.mmio32
            newtbl = IommuTable(liobn, (win_addr + dynamic_offset) >> page_shift,
                                ((1 << length) - dynamic_offset) >> page_shift, page_shift,
                                pdn.ops)
            iommu_init_table(newtbl, start >> page_shift, end >> page_shift)
            pdn.tables[0 if default_removed else 1] = newtbl
            pdev.table = newtbl
        if default_removed:
            pdn.dma_window_saved = pdn.dma_window
            pdn.dma_window = None
            pdn.log.append("Removed default DMA window")
        pdn.ddw, pdn.direct = prop, direct
        pdev.dma_offset = win_addr
        return True

    def _ram_limit(self, max_ram_len: int) -> int:
        """Where pre-mapped RAM ends in a direct window: the end of RAM
        (``pseries_ddw_max_ram``, 6.12) or ``1 << max_ram_len`` (7.0)."""
        return 1 << max_ram_len if self.kernel >= LINUX_7_0 else self.ram_end()

    def _done(self, dev: DmaDevice, pdev: PseriesDev, direct: bool, length: int,
              max_ram_len: int) -> bool:
        """``enable_ddw``'s exit: the bus DMA limit of pre-mapped RAM. 7.0 sets it for
        every direct window; 6.12 only when vPMEM is left out of the window."""
        limited = direct if self.kernel >= LINUX_7_0 else (
            self.pmem_present and direct and length != MAX_PHYSMEM_BITS)
        if limited:
            dev.bus_dma_limit = pdev.dma_offset + self._ram_limit(max_ram_len)
        return direct

    # -- dma_supported --------------------------------------------------------------------
    def bypass_supported(self, dev: DmaDevice, mask: int) -> bool:
        """``iommu_bypass_supported_pSeriesLP``."""
        if self.disable_ddw or mask <= 0xFFFF_FFFF:
            return False
        return self.enable_ddw(dev, mask)

    def dma_supported(self, dev: DmaDevice, mask: int) -> bool:
        """``dma_iommu_dma_supported``: bypass when DDW maps all RAM, else the table must
        start below the mask. 6.12 turns ``dma_ops_bypass`` on only without a bus DMA
        limit (and warns when there is one); 7.0 always, and always says the limit."""
        pdev = self.devs[dev.sid]
        if self.bypass_supported(dev, mask):
            seven = self.kernel >= LINUX_7_0
            pdev.dma_ops_bypass = seven or dev.bus_dma_limit == 0
            if seven or not pdev.dma_ops_bypass:
                dev.notices.append(f"iommu: 64-bit OK but direct DMA is limited by "
                                   f"{dev.bus_dma_limit:x}")
            return True
        tbl = pdev.table
        if tbl is None:
            return False
        if tbl.it_offset > mask >> tbl.it_page_shift:
            dev.notices.append("Warning: IOMMU offset too big for device mask")
            return False
        pdev.dma_ops_bypass = False
        return True


def _largest_page_shift(query_page_size: int) -> int:
    """``iommu_get_page_shift``: the largest IO page size the query offers."""
    return max((s for i, s in enumerate(DDW_PAGE_SHIFTS) if query_page_size & (1 << i)),
               default=0)
