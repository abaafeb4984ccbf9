"""The host's side of a PCI function's MSIs: the message a vector gets
(``pci_alloc_irq_vectors`` composing it through the platform's interrupt controller)
and the handler ``request_irq`` attached to it.

x86-vtd: the message is a write to the interrupt address range 0xFEEx_xxxx with the
vector as data; VT-d takes such a write as an interrupt request, not as DMA to
translate (lab: interrupt remapping is not modelled). arm64-smmuv3: the message is a
write of the EventID to a GICv3 ITS doorbell, at the IOVA ``iommu_dma_prepare_msi``
mapped in the device's domain, so it goes through the SMMU like any DMA write and
faults if that mapping is gone. mock: lab: the write reaches the handler directly.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import NoSpace
from .irqchip import GicV3Its

if TYPE_CHECKING:
    from .machine import Machine, PciDevice

__all__ = ["X86_MSI_BASE", "HostMsi"]

X86_MSI_BASE = 0xFEE0_0000
_X86_MSI_END = 0xFEF0_0000
_FIRST_VECTOR = 0x30  # FIRST_EXTERNAL_VECTOR on x86_64
_LAST_VECTOR = 0xEB  # below FIRST_SYSTEM_VECTOR (0xec)


class HostMsi:
    """MSI vectors of the machine's devices: ``(sid, data)`` -> handler."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.handlers: dict[tuple[int, int], Callable[[], None]] = {}
        self.spurious = 0  # messages no handler took
        self.allocated: set[tuple[int, int]] = set()  # (sid, data) of each live vector
        self._x86_vectors: set[int] = set()
        self._its: GicV3Its | None = None

    def _check(self) -> None:
        """Invariants (tests only): a handler only on an allocated vector."""
        assert set(self.handlers) <= self.allocated, set(self.handlers) - self.allocated
        assert {d for _, d in self.allocated} >= self._x86_vectors or \
            self.machine.platform == "arm64-smmuv3"

    def its(self) -> GicV3Its:
        """arm64: the ITS at QEMU virt's address, made at the first MSI."""
        if self._its is None:
            self._its = GicV3Its(self.machine.mem)
            self._its.on_interrupt = self._deliver
        return self._its

    def alloc(self, dev: PciDevice) -> tuple[int, int]:
        """The message (address, data) of a new vector of ``dev``: x86, the lowest free
        vector of the CPU (ENOSPC when none is); arm64, the device's lowest free
        EventID, once the doorbell page is mapped in the device's domain
        (``iommu_dma_prepare_msi``, whose ENOMEM passes up)."""
        if self.machine.platform == "arm64-smmuv3":
            from .dma import prepare_msi
            its = self.its()
            event = next(e for e in itertools.count() if (dev.sid, e) not in self.allocated)
            address = prepare_msi(dev, its.doorbell)
            self.allocated.add((dev.sid, event))
            return address, event
        vector = next((v for v in range(_FIRST_VECTOR, _LAST_VECTOR + 1)
                       if v not in self._x86_vectors), None)
        if vector is None:
            raise NoSpace("no free interrupt vector")
        self._x86_vectors.add(vector)
        self.allocated.add((dev.sid, vector))
        return X86_MSI_BASE, vector

    def release(self, dev: PciDevice, data: int) -> None:
        """The vector goes back (``pci_free_irq_vectors``)."""
        self.allocated.discard((dev.sid, data))
        if self.machine.platform != "arm64-smmuv3":
            self._x86_vectors.discard(data)

    def request(self, dev: PciDevice, data: int, handler: Callable[[], None]) -> None:
        """``request_irq`` on the vector whose message carries ``data``."""
        self.handlers[(dev.sid, data)] = handler

    def free(self, dev: PciDevice, data: int) -> None:
        """``free_irq``."""
        self.handlers.pop((dev.sid, data), None)

    def sink(self, dev: PciDevice) -> Callable[[int, int], None]:
        """The path of ``dev``'s MSI writes (the function's ``msi_sink``)."""
        def send(address: int, data: int) -> None:
            if self.machine.platform == "arm64-smmuv3":
                dev.msi_write(address, data)  # through the SMMU; the ITS delivers
            elif self.machine.platform == "x86-vtd" and not \
                    X86_MSI_BASE <= address < _X86_MSI_END:
                dev.msi_write(address, data)  # not an interrupt request: plain DMA
            else:
                dev.stats.msi_writes += 1
                self._deliver(dev.sid, data)
        return send

    def _deliver(self, sid: int, data: int) -> None:
        handler = self.handlers.get((sid, data))
        if handler is None:
            self.spurious += 1
        else:
            handler()
