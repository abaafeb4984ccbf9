"""An MSI doorbell: the translation frame of a GICv3 ITS (Arm IHI 0069, GITS_TRANSLATER).

A device signals an interrupt by writing its EventID to GITS_TRANSLATER; the
ITS takes the DeviceID from the transaction's requester ID. Behind an SMMU
that write is a DMA write like any other, so it reaches the doorbell only if
the device's domain maps the doorbell page.
"""

from __future__ import annotations

from collections.abc import Callable

from .mem import PhysMem

__all__ = ["GITS_TRANSLATER", "GicV3Its"]

GITS_TRANSLATER = 0x10040  # offset from the ITS base (second 64K frame)
_ITS_SIZE = 0x20000


class GicV3Its:
    """The doorbell side of an ITS at ``base`` (QEMU's ``virt`` board puts it at 0x08080000).

    ``interrupts`` lists ``(DeviceID, EventID)`` in arrival order; writes
    elsewhere in the frames, or by the CPU, are counted in ``ignored_writes``.
    """

    def __init__(self, mem: PhysMem, base: int = 0x0808_0000) -> None:
        self.base = base
        self.doorbell = base + GITS_TRANSLATER
        self.interrupts: list[tuple[int, int]] = []
        self.ignored_writes = 0
        #: lab: the host's interrupt handling, called with (DeviceID, EventID)
        self.on_interrupt: Callable[[int, int], None] | None = None
        mem.add_mmio(base, _ITS_SIZE, "GICv3 ITS", on_write=self._write)

    def _write(self, pa: int, data: bytes, source: int | None) -> None:
        if pa == self.doorbell and len(data) in (2, 4) and source is not None:
            event = int.from_bytes(data, "little")
            self.interrupts.append((source, event))
            if self.on_interrupt is not None:
                self.on_interrupt(source, event)
        else:
            self.ignored_writes += 1
