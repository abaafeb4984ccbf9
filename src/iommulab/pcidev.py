"""A PCI device on the machine's bus (moved out of :mod:`iommulab.machine` so that the
front ends can name it without importing the machine)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .devices import DmaDevice
from .pcihw import PciFunction, PciIdentity

if TYPE_CHECKING:
    from .edu import EduDevice
    from .syscall.host import Host

__all__ = ["GENERIC_IDENTITY", "PciDevice"]


#: Lab: the identity of the plain DMA device ``add_pci_device`` makes without a
#: ``model``: QEMU's pci-testdev IDs, no interrupt pin, no capability, and a working
#: function reset (so GET_INFO reports VFIO_DEVICE_FLAGS_RESET for it)
GENERIC_IDENTITY = PciIdentity(vendor=0x1B36, device=0x0005, class_code=0x00FF, reset=True)


class PciDevice(DmaDevice):
    """A PCI function at ``bdf`` with BAR 0 (MMIO) and the driver bound to it; ``fn``
    is its config space and interrupt pins, ``model`` the registers behind BAR 0
    (None: plain memory). ``bar0_mmap`` is vfio-pci's ``bar_mmap_supported[0]`` for it
    (``vfio_pci_probe_mmaps``: a memory BAR of at least a page, which every model BAR
    is); a front end whose mappings would bypass the BAR's registers clears it."""

    def __init__(self, machine: Host, bdf: str, driver: str, bar0: int,
                 bar0_size: int, translator: Any, ident: PciIdentity = GENERIC_IDENTITY
                 ) -> None:
        bus, devfn = _parse_bdf(bdf)
        super().__init__(bdf, machine.mem, translator, (bus << 8) | devfn)
        self.bdf = bdf
        self.driver = driver
        self.bar0, self.bar0_size = bar0, bar0_size
        self.machine = machine
        self.fn = PciFunction(ident, bar0, bar0_size)
        self.model: EduDevice | None = None
        self.bar0_mmap = True


def _parse_bdf(bdf: str) -> tuple[int, int]:
    """``DDDD:BB:DD.F`` -> (bus, devfn); ValueError naming the text otherwise."""
    try:
        dom, bus, rest = bdf.split(":")
        dev, fn = rest.split(".")
        b, d, f = int(bus, 16), int(dev, 16), int(fn, 16)
        int(dom, 16)
    except ValueError:
        raise ValueError(f"bad PCI address {bdf!r} (want DDDD:BB:DD.F)") from None
    if b > 255 or d > 31 or f > 7:
        raise ValueError(f"bad PCI address {bdf!r}: bus, device or function out of range")
    return b, d << 3 | f
