"""QEMU's ``edu`` teaching device (hw/misc/edu.c, docs/specs/edu.rst): 1234:11e8 rev
0x10, BAR 0 of 1 MiB of registers, INTx pin A and one MSI vector, a factorial unit and
a DMA engine with a 4 KiB buffer at 0x40000 and a 28-bit DMA mask.

Register map (BAR 0 offsets): 0x00 identification 0x010000ed; 0x04 liveness (reads the
inverse of what was written); 0x08 factorial; 0x20 status (0x01 computing, 0x80 raise
an interrupt when done); 0x24 interrupt status; 0x60 raise (OR into the status);
0x64 acknowledge (clear); 0x80 DMA source, 0x88 destination, 0x90 count, 0x98 command
(0x1 run, 0x2 direction: 0 from RAM to the buffer, 1 from the buffer to RAM, 0x4
interrupt 0x100 when done). Accesses below 0x80 must be 4 bytes wide, from 0x80 on 4
or 8; other widths read all ones and drop writes, as edu's handlers do.

The device's DMA is the machine's: :meth:`~iommulab.devices.DmaDevice.dma_read` and
``dma_write`` through the IOMMU, so an unmapped address faults there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import DmaFault
from .pcihw import PciFunction, PciIdentity

if TYPE_CHECKING:
    from .devices import DmaDevice

__all__ = ["EDU_IDENTITY", "EduDevice"]

#: QEMU's ``edu_class_init`` and ``pci_edu_realize``: class PCI_CLASS_OTHERS (0xff);
#: a conventional PCI function, so no function-level reset (no PCIe FLR, no PM
#: capability), and on the root bus no bus reset either
EDU_IDENTITY = PciIdentity(vendor=0x1234, device=0x11E8, revision=0x10, class_code=0x00FF,
                           interrupt_pin=1, msi=True, reset=False)
EDU_BAR0_SIZE = 1 << 20

FACT_IRQ = 0x00000001
DMA_IRQ = 0x00000100
DMA_START = 0x40000
DMA_SIZE = 4096
STATUS_COMPUTING = 0x01
STATUS_IRQFACT = 0x80
DMA_RUN = 0x1
DMA_TO_PCI_DIR = 0x2  # set: from the buffer to RAM (EDU_DMA_TO_PCI)
DMA_CMD_IRQ = 0x4
_ONES = (1 << 64) - 1
_M32 = 0xFFFF_FFFF


class EduDevice:
    """The registers of one edu function behind ``dev``'s BAR 0 (``fn`` is its config
    space and interrupt pins).

    Lab: edu computes a factorial on a thread and runs DMA from a 100 ms timer; the
    model finishes both before the write that starts them returns, as if the program
    had waited for the status and command registers. A DMA range outside the 4 KiB
    buffer (which QEMU only logs, then copies out of bounds) moves nothing here and
    is noted in ``dev.notices``; a DMA while bus mastering is off moves nothing (the
    function cannot start a transaction); one the IOMMU faults moves nothing (the
    IOMMU has recorded the fault). Each still completes: RUN clears and the
    interrupt is raised if asked."""

    def __init__(self, dev: DmaDevice, fn: PciFunction) -> None:
        self.dev, self.fn = dev, fn
        self.dma_mask = (1 << 28) - 1  # edu_instance_init
        self.addr4 = 0
        self.fact = 0
        self.status = 0
        self.irq_status = 0
        self.dma_src = self.dma_dst = self.dma_cnt = self.dma_cmd = 0
        self.dma_buf = bytearray(DMA_SIZE)
        self.dma_runs = 0
        self.dma_faults = 0

    def _check(self) -> None:
        """Invariants (tests only): 32-bit registers hold 32 bits; no DMA is left
        running (the model finishes each at once); the INTx pin is asserted exactly while
        an interrupt is pending and MSI is off, once edu has driven it."""
        assert all(0 <= r <= _M32 for r in (self.addr4, self.fact, self.status,
                                              self.irq_status))
        assert not self.dma_cmd & DMA_RUN and not self.status & STATUS_COMPUTING
        assert len(self.dma_buf) == DMA_SIZE
        if self.fn.intx_level:
            assert self.irq_status

    # -- BAR 0 -------------------------------------------------------------------------------
    def mmio_read(self, pa: int, n: int) -> bytes:
        """``edu_mmio_read``: one load of ``n`` bytes at ``pa``."""
        addr = pa - self.fn.bar0
        val = _ONES
        if n == 4 or (n == 8 and addr >= 0x80):
            val = {0x00: 0x010000ED, 0x04: self.addr4, 0x08: self.fact, 0x20: self.status,
                   0x24: self.irq_status, 0x80: self.dma_src, 0x88: self.dma_dst,
                   0x90: self.dma_cnt, 0x98: self.dma_cmd}.get(addr, _ONES)
        return (val & ((1 << (8 * n)) - 1)).to_bytes(n, "little")

    def mmio_write(self, pa: int, data: bytes, source: int | None) -> None:
        """``edu_mmio_write``: one store at ``pa``."""
        addr, n = pa - self.fn.bar0, len(data)
        if not (n == 4 or (n == 8 and addr >= 0x80)):
            return
        val = int.from_bytes(data, "little")
        if addr == 0x04:
            self.addr4 = ~val & _M32
        elif addr == 0x08:
            if not self.status & STATUS_COMPUTING:
                self.fact = val & _M32
                self.status |= STATUS_COMPUTING
                self._factorial()
        elif addr == 0x20:
            if val & STATUS_IRQFACT:
                self.status |= STATUS_IRQFACT
            else:
                self.status &= ~STATUS_IRQFACT
        elif addr == 0x60:
            self.raise_irq(val & _M32)
        elif addr == 0x64:
            self.lower_irq(val & _M32)
        elif addr in (0x80, 0x88, 0x90) and not self.dma_cmd & DMA_RUN:
            setattr(self, {0x80: "dma_src", 0x88: "dma_dst", 0x90: "dma_cnt"}[addr], val)
        elif addr == 0x98 and val & DMA_RUN and not self.dma_cmd & DMA_RUN:
            self.dma_cmd = val
            self._dma_timer()

    # -- the units ---------------------------------------------------------------------------
    def _factorial(self) -> None:
        """``edu_fact_thread``: the 32-bit product n * (n - 1) * ... * 1 (0 once it has
        34 factors of two, so the loop stops there), then the interrupt if asked."""
        n, ret = self.fact, 1
        while n > 0 and ret:
            ret = ret * n & _M32
            n -= 1
        self.fact = ret
        self.status &= ~STATUS_COMPUTING
        if self.status & STATUS_IRQFACT:
            self.raise_irq(FACT_IRQ)

    def _dma_timer(self) -> None:
        """``edu_dma_timer``: move ``dma_cnt`` bytes between RAM (through the IOMMU,
        the address clamped to the DMA mask) and the buffer, then clear RUN and raise
        DMA_IRQ if the command asked."""
        to_ram = bool(self.dma_cmd & DMA_TO_PCI_DIR)
        inside = self.dma_src if to_ram else self.dma_dst
        ram = (self.dma_dst if to_ram else self.dma_src) & self.dma_mask
        cnt = self.dma_cnt
        self.dma_runs += 1
        if not (inside >= DMA_START and inside + cnt <= DMA_START + DMA_SIZE):
            self.dev.notices.append(f"edu: DMA range {inside:#x}+{cnt:#x} is outside the "
                                    f"buffer [{DMA_START:#x}, {DMA_START + DMA_SIZE:#x})")
        elif self.fn.bus_master and cnt:
            off = inside - DMA_START
            try:
                if to_ram:
                    self.dev.dma_write(ram, self.dma_buf[off:off + cnt])
                else:
                    self.dma_buf[off:off + cnt] = self.dev.dma_read(ram, cnt)
            except DmaFault:
                self.dma_faults += 1
        self.dma_cmd &= ~DMA_RUN
        if self.dma_cmd & DMA_CMD_IRQ:
            self.raise_irq(DMA_IRQ)

    def raise_irq(self, val: int) -> None:
        """``edu_raise_irq``: OR into the status; MSI if enabled, else assert INTx."""
        self.irq_status |= val
        if self.irq_status:
            if self.fn.msi_enabled:
                self.fn.msi_notify()
            else:
                self.fn.set_intx(True)

    def lower_irq(self, val: int) -> None:
        """``edu_lower_irq``: clear; deassert INTx when nothing is left (without MSI)."""
        self.irq_status &= ~val
        if not self.irq_status and not self.fn.msi_enabled:
            self.fn.set_intx(False)
