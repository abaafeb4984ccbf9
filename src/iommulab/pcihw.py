"""The hardware side of a PCI function: its type 0 config space, its INTx line and its
MSI capability (PCI Local Bus 3.0 ch. 6; the register names of
include/uapi/linux/pci_regs.h).

What a host kernel reads with ``pci_read_config_*`` is :meth:`PciFunction.cfg_read`;
vfio-pci's virtualised view of it is :mod:`iommulab.vfio.pci_config`. A device model
(:mod:`iommulab.edu`) raises and lowers its INTx line and signals MSIs here; the
host's interrupt handlers attach with :attr:`PciFunction.intx_handler` and
:attr:`PciFunction.msi_sink`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "PCI_BASE_ADDRESS_0", "PCI_CAPABILITY_LIST", "PCI_CAP_ID_MSI", "PCI_CFG_SPACE_SIZE",
    "PCI_COMMAND", "PCI_COMMAND_INTX_DISABLE", "PCI_COMMAND_IO", "PCI_COMMAND_MASTER",
    "PCI_COMMAND_MEMORY", "PCI_DEVICE_ID", "PCI_INTERRUPT_LINE", "PCI_INTERRUPT_PIN",
    "PCI_MSI_ADDRESS_HI", "PCI_MSI_ADDRESS_LO", "PCI_MSI_DATA_32", "PCI_MSI_DATA_64",
    "PCI_MSI_FLAGS", "PCI_MSI_FLAGS_64BIT", "PCI_MSI_FLAGS_ENABLE", "PCI_MSI_FLAGS_MASKBIT",
    "PCI_MSI_FLAGS_QMASK", "PCI_MSI_FLAGS_QSIZE", "PCI_ROM_ADDRESS", "PCI_STATUS",
    "PCI_STATUS_CAP_LIST", "PCI_STATUS_INTERRUPT", "PCI_STD_HEADER_SIZEOF", "PCI_VENDOR_ID",
    "PciFunction", "PciIdentity",
]

PCI_VENDOR_ID = 0x00
PCI_DEVICE_ID = 0x02
PCI_COMMAND = 0x04
PCI_COMMAND_IO = 0x1
PCI_COMMAND_MEMORY = 0x2
PCI_COMMAND_MASTER = 0x4
PCI_COMMAND_PARITY = 0x40
PCI_COMMAND_SERR = 0x100
PCI_COMMAND_INTX_DISABLE = 0x400
PCI_STATUS = 0x06
PCI_STATUS_INTERRUPT = 0x08
PCI_STATUS_CAP_LIST = 0x10
PCI_REVISION_ID = 0x08
PCI_CLASS_DEVICE = 0x0A
PCI_CACHE_LINE_SIZE = 0x0C
PCI_LATENCY_TIMER = 0x0D
PCI_BASE_ADDRESS_0 = 0x10
PCI_BASE_ADDRESS_MEM_TYPE_64 = 0x4
PCI_SUBSYSTEM_VENDOR_ID = 0x2C
PCI_SUBSYSTEM_ID = 0x2E
PCI_ROM_ADDRESS = 0x30
PCI_CAPABILITY_LIST = 0x34
PCI_INTERRUPT_LINE = 0x3C
PCI_INTERRUPT_PIN = 0x3D
PCI_STD_HEADER_SIZEOF = 0x40
PCI_CFG_SPACE_SIZE = 0x100
PCI_CAP_ID_MSI = 0x05
PCI_MSI_FLAGS = 0x02
PCI_MSI_FLAGS_ENABLE = 0x0001
PCI_MSI_FLAGS_QMASK = 0x000E
PCI_MSI_FLAGS_QSIZE = 0x0070
PCI_MSI_FLAGS_64BIT = 0x0080
PCI_MSI_FLAGS_MASKBIT = 0x0100
PCI_MSI_ADDRESS_LO = 0x04
PCI_MSI_ADDRESS_HI = 0x08
PCI_MSI_DATA_32 = 0x08
PCI_MSI_DATA_64 = 0x0C

#: where the MSI capability goes: the first free dword after the header, as QEMU's
#: ``pci_add_capability(offset 0)`` places it
_MSI_CAP = 0x40
_MSI_CAP_LEN = 14  # 64-bit message address, no per-vector masking


@dataclass(frozen=True)
class PciIdentity:
    """What a function says it is: IDs, class, interrupt pin (0: none), an MSI
    capability (one vector, 64-bit, no per-vector mask: QEMU's ``msi_init(pdev, 0, 1,
    true, false)``) and whether a function-level reset works for it (the host's
    ``pci_reset_function`` finds a method)."""

    vendor: int
    device: int
    revision: int = 0
    class_code: int = 0  # the word at PCI_CLASS_DEVICE (sub-class, class)
    subsystem_vendor: int = 0x1AF4  # QEMU's default: Red Hat / Qumranet
    subsystem: int = 0x1100  # QEMU's default
    interrupt_pin: int = 0
    msi: bool = False
    reset: bool = False


class PciFunction:
    """A function's config space as the hardware answers it, with BAR 0 (32-bit memory,
    or 64-bit when it sits above 4 GiB), the INTx line and the MSI capability.

    Writes keep the read-only bits: the command register's I/O, memory, bus master,
    parity, SERR and INTx-disable bits, cache line size, latency timer, the BAR's
    address bits, the interrupt line and the MSI capability's enable, queue size,
    address and data. The status register's interrupt bit shows the device's INTx
    level whatever INTx disable says (PCI 2.3); the line reaches ``intx_handler`` only
    while INTx disable is clear."""

    def __init__(self, ident: PciIdentity, bar0: int, bar0_size: int) -> None:
        self.ident = ident
        self.bar0, self.bar0_size = bar0, bar0_size
        self.cfg = bytearray(PCI_CFG_SPACE_SIZE)
        self.wmask = bytearray(PCI_CFG_SPACE_SIZE)
        self.intx_level = False
        self._intx_out = False
        #: the host's handler of the INTx line (``request_irq``); None when none is
        self.intx_handler: Callable[[], None] | None = None
        #: where an MSI write goes: ``msi_sink(address, data)`` (the platform's path)
        self.msi_sink: Callable[[int, int], None] | None = None
        self.msi_sent = 0
        self.msi_dropped = 0
        self.intx_raised = 0
        self._power_on()

    def _power_on(self) -> None:
        """The config space at power-on (and after a reset)."""
        ident, cfg, wmask = self.ident, self.cfg, self.wmask
        cfg[:] = bytes(PCI_CFG_SPACE_SIZE)
        wmask[:] = bytes(PCI_CFG_SPACE_SIZE)
        _put(cfg, PCI_VENDOR_ID, 2, ident.vendor)
        _put(cfg, PCI_DEVICE_ID, 2, ident.device)
        cfg[PCI_REVISION_ID] = ident.revision
        _put(cfg, PCI_CLASS_DEVICE, 2, ident.class_code)
        _put(cfg, PCI_SUBSYSTEM_VENDOR_ID, 2, ident.subsystem_vendor)
        _put(cfg, PCI_SUBSYSTEM_ID, 2, ident.subsystem)
        cfg[PCI_INTERRUPT_PIN] = ident.interrupt_pin
        _put(wmask, PCI_COMMAND, 2, PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER |
             PCI_COMMAND_PARITY | PCI_COMMAND_SERR | PCI_COMMAND_INTX_DISABLE)
        wmask[PCI_CACHE_LINE_SIZE] = wmask[PCI_LATENCY_TIMER] = 0xFF
        wmask[PCI_INTERRUPT_LINE] = 0xFF
        mem64 = self.bar0 + self.bar0_size > 1 << 32
        mask = ~(self.bar0_size - 1) & ((1 << 64) - 1)
        flags = PCI_BASE_ADDRESS_MEM_TYPE_64 if mem64 else 0
        _put(cfg, PCI_BASE_ADDRESS_0, 4, (self.bar0 & 0xFFFF_FFFF) | flags)
        _put(wmask, PCI_BASE_ADDRESS_0, 4, mask & 0xFFFF_FFF0)
        if mem64:
            _put(cfg, PCI_BASE_ADDRESS_0 + 4, 4, self.bar0 >> 32)
            _put(wmask, PCI_BASE_ADDRESS_0 + 4, 4, mask >> 32)
        if ident.msi:
            _put(cfg, PCI_STATUS, 2, PCI_STATUS_CAP_LIST)
            cfg[PCI_CAPABILITY_LIST] = _MSI_CAP
            cfg[_MSI_CAP] = PCI_CAP_ID_MSI
            _put(cfg, _MSI_CAP + PCI_MSI_FLAGS, 2, PCI_MSI_FLAGS_64BIT)
            _put(wmask, _MSI_CAP + PCI_MSI_FLAGS, 2, PCI_MSI_FLAGS_ENABLE | PCI_MSI_FLAGS_QSIZE)
            _put(wmask, _MSI_CAP + PCI_MSI_ADDRESS_LO, 4, 0xFFFF_FFFC)
            _put(wmask, _MSI_CAP + PCI_MSI_ADDRESS_HI, 4, 0xFFFF_FFFF)
            _put(wmask, _MSI_CAP + PCI_MSI_DATA_64, 2, 0xFFFF)
        self.intx_level = self._intx_out = False

    def _check(self) -> None:
        """Invariants (tests only): the status interrupt bit is the INTx level; the line
        the host sees is the level unless INTx disable holds it."""
        status = self.cfg_read(PCI_STATUS, 2)
        assert bool(status & PCI_STATUS_INTERRUPT) == self.intx_level
        assert self._intx_out == (self.intx_level and
                                  not self.command & PCI_COMMAND_INTX_DISABLE)

    @property
    def msi_cap(self) -> int:
        """``pdev->msi_cap``: the MSI capability's offset, 0 when there is none."""
        return _MSI_CAP if self.ident.msi else 0

    # -- config cycles -----------------------------------------------------------------------
    def cfg_read(self, offset: int, size: int) -> int:
        """One config read of ``size`` (1, 2, 4) bytes at ``offset`` (naturally aligned)."""
        return int.from_bytes(self.cfg[offset:offset + size], "little")

    def cfg_write(self, offset: int, size: int, value: int) -> None:
        """One config write: only the writable bits change."""
        for i in range(size):
            m = self.wmask[offset + i]
            if m:
                byte = (value >> (8 * i)) & 0xFF
                self.cfg[offset + i] = (self.cfg[offset + i] & ~m) | (byte & m)
        if offset <= PCI_COMMAND + 1 and offset + size > PCI_COMMAND:
            self._update_intx()
        cap = self.msi_cap
        if cap and offset < cap + _MSI_CAP_LEN and offset + size > cap:
            self._msi_write_config(cap)

    def _msi_write_config(self, cap: int) -> None:
        """QEMU's ``msi_write_config``: once MSI is enabled a write to the capability
        deasserts INTx (MSI and INTx are exclusive, PCI 3.0 6.8.3.3) and clamps the
        queue size to what the function is capable of."""
        flags = self.cfg_read(cap + PCI_MSI_FLAGS, 2)
        if not flags & PCI_MSI_FLAGS_ENABLE:
            return
        self.set_intx(False)
        qmax = (flags & PCI_MSI_FLAGS_QMASK) >> 1
        if (flags & PCI_MSI_FLAGS_QSIZE) >> 4 > qmax:
            _put(self.cfg, cap + PCI_MSI_FLAGS, 2, (flags & ~PCI_MSI_FLAGS_QSIZE) | qmax << 4)

    @property
    def command(self) -> int:
        return self.cfg_read(PCI_COMMAND, 2)

    @property
    def bus_master(self) -> bool:
        return bool(self.command & PCI_COMMAND_MASTER)

    # -- interrupts --------------------------------------------------------------------------
    def set_intx(self, level: bool) -> None:
        """The device drives its INTx pin (``pci_set_irq``): the status bit follows the
        level; the line reaches the host unless INTx disable is set."""
        if not self.ident.interrupt_pin:
            return
        self.intx_level = level
        status = self.cfg_read(PCI_STATUS, 2)
        status = status | PCI_STATUS_INTERRUPT if level else status & ~PCI_STATUS_INTERRUPT
        _put(self.cfg, PCI_STATUS, 2, status)
        self._update_intx()

    def _update_intx(self) -> None:
        """The level the interrupt controller sees; a rising edge runs the handler (a
        level-triggered line that stays asserted is not signalled again)."""
        out = self.intx_level and not self.command & PCI_COMMAND_INTX_DISABLE
        rising = out and not self._intx_out
        self._intx_out = out
        if rising:
            self.intx_raised += 1
            if self.intx_handler is not None:
                self.intx_handler()

    def check_and_mask_intx(self, mask: bool) -> bool:
        """``pci_check_and_set_intx_mask``: with ``mask``, set INTx disable if an
        interrupt is pending (True when done); without, clear it unless one is pending
        (True when done)."""
        pending = bool(self.cfg_read(PCI_STATUS, 2) & PCI_STATUS_INTERRUPT)
        if mask != pending:
            return False
        cmd = self.command
        new = cmd | PCI_COMMAND_INTX_DISABLE if mask else cmd & ~PCI_COMMAND_INTX_DISABLE
        if new != cmd:
            self.cfg_write(PCI_COMMAND, 2, new)
        return True

    def intx(self, enable: bool) -> None:
        """``pci_intx``: clear (enable) or set INTx disable."""
        cmd = self.command
        new = cmd & ~PCI_COMMAND_INTX_DISABLE if enable else cmd | PCI_COMMAND_INTX_DISABLE
        if new != cmd:
            self.cfg_write(PCI_COMMAND, 2, new)

    @property
    def msi_enabled(self) -> bool:
        """The MSI capability's enable bit (``msi_enabled`` in QEMU)."""
        cap = self.msi_cap
        return bool(cap and self.cfg_read(cap + PCI_MSI_FLAGS, 2) & PCI_MSI_FLAGS_ENABLE)

    def msi_notify(self) -> None:
        """Send vector 0's message (``msi_notify``): the 32-bit data to the 64-bit
        address the capability holds, along the platform's path; dropped while bus
        mastering is off (QEMU sends it through the bus master address space)."""
        cap = self.msi_cap
        addr = self.cfg_read(cap + PCI_MSI_ADDRESS_LO, 4) | \
            self.cfg_read(cap + PCI_MSI_ADDRESS_HI, 4) << 32
        data = self.cfg_read(cap + PCI_MSI_DATA_64, 2)
        if not self.bus_master:  # the message is a memory write: bus mastering gates it
            self.msi_dropped += 1
            return
        self.msi_sent += 1
        if self.msi_sink is not None:
            self.msi_sink(addr, data)

    def program_msi(self, address: int, data: int, enable: bool) -> None:
        """The host's MSI set-up (``pci_write_msi_msg`` and the enable bit)."""
        cap = self.msi_cap
        self.cfg_write(cap + PCI_MSI_ADDRESS_LO, 4, address & 0xFFFF_FFFF)
        self.cfg_write(cap + PCI_MSI_ADDRESS_HI, 4, address >> 32)
        self.cfg_write(cap + PCI_MSI_DATA_64, 2, data)
        flags = self.cfg_read(cap + PCI_MSI_FLAGS, 2)
        self.cfg_write(cap + PCI_MSI_FLAGS, 2, flags | PCI_MSI_FLAGS_ENABLE if enable
                       else flags & ~PCI_MSI_FLAGS_ENABLE)

    def function_reset(self) -> None:
        """A function-level reset: config space back to power-on (the device model
        resets its own registers through :attr:`on_reset`)."""
        self._power_on()
        if self.on_reset is not None:
            self.on_reset()

    on_reset: Callable[[], None] | None = None


def _put(buf: bytearray, offset: int, size: int, value: int) -> None:
    buf[offset:offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
