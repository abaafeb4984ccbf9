"""DMA-capable devices: real bytes moved through an IOMMU's translation path.

A device issues reads and writes at I/O virtual addresses; the IOMMU
(anything with ``translate_run``, e.g. :class:`~iommulab.drivers.smmuv3.SmmuV3Hw`)
turns them into physical addresses leaf by leaf. Every leaf of a transfer
is translated before any byte moves, so a fault means nothing was read or
written (the IOMMU has queued its fault event); translations done before
the faulting one may already have set access and dirty flags, as a real
device's earlier transactions would have.

A device also carries what the kernel's ``struct device`` holds for the DMA
and IOMMU layers: its DMA masks, whether it snoops CPU caches, reserved
regions firmware declares for it (RMRR, IORT RMR), its IOMMU group and
``dev->iommu`` once the IOMMU core has probed it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .errors import DmaFault, InvalidArgument
from .mem import PhysMem

if TYPE_CHECKING:
    from .iommu.core import DevIommu, IommuGroup
    from .iommu.resv import ResvRegion

__all__ = ["DMA_BIT_MASK", "DmaDevice", "DmaStats", "Translator"]


def DMA_BIT_MASK(n: int) -> int:
    """``DMA_BIT_MASK(n)``: the highest address an n-bit DMA engine can drive."""
    return (1 << n) - 1 if n < 64 else (1 << 64) - 1


class Translator(Protocol):
    def translate_run(self, sid: int, iova: int, write: bool, privileged: bool = False
                      ) -> tuple[int, int]:
        """The physical address of ``iova`` and where its leaf ends (input address)."""


@dataclass
class DmaStats:
    """Counters of one device (reports read these)."""

    reads: int = 0
    writes: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    translations: int = 0
    faults: int = 0
    msi_writes: int = 0


class DmaDevice:
    """A device with StreamID/RID ``sid`` behind ``iommu`` (None: no IOMMU, iova = pa)."""

    def __init__(self, name: str, mem: PhysMem, iommu: Translator | None, sid: int, *,
                 pci: bool = True, coherent: bool = True) -> None:
        self.name = name
        self.mem = mem
        self.iommu = iommu
        self.sid = sid
        self.stats = DmaStats()
        self.is_pci = pci
        self.coherent = coherent  # dev_is_dma_coherent()
        self.snoop = True  # lab: its DMA snoops CPU caches (no PCIe No Snoop attribute)
        self._forced_snoop = False
        self.dma_mask = DMA_BIT_MASK(32)  # what the PCI core sets before a driver probes
        self.coherent_dma_mask = DMA_BIT_MASK(32)
        self.bus_dma_limit = 0  # 0: no limit beyond the masks
        self.max_seg_size = 0x10000  # dma_get_max_seg_size() default (64K)
        self.seg_boundary_mask = 0xFFFF_FFFF  # dma_get_seg_boundary() default
        self.firmware_resv: list[ResvRegion] = []  # regions firmware reserves for it
        self.group: IommuGroup | None = None  # dev->iommu_group
        self.dev_iommu: DevIommu | None = None
        self.dma_iommu = False  # dev->dma_iommu: DMA API calls go through dma-iommu
        self.notices: list[str] = []  # dev_notice() lines

    def __repr__(self) -> str:
        return f"<DmaDevice {self.name} sid={self.sid:#x}>"

    @property
    def iommu_group(self) -> int | None:
        """The IOMMU group number (``/sys/bus/pci/devices/<bdf>/iommu_group``), if probed."""
        return None if self.group is None else self.group.id

    def dma_read(self, iova: int, n: int, *, privileged: bool = False) -> bytes:
        """Read ``n`` bytes at ``iova``; DmaFault (nothing read) if any part faults."""
        runs = self._translate(iova, n, False, privileged)
        cache = self.mem.cpu_cache
        if cache is not None:
            out = cache.device_read(runs, self._snoops(), self.name)
        elif len(runs) == 1:
            out = self.mem.read(*runs[0])
        else:
            out = b"".join(self.mem.read(pa, k) for pa, k in runs)
        self.stats.reads += 1
        self.stats.bytes_read += n
        return out

    def dma_write(self, iova: int, data: bytes | bytearray | memoryview, *,
                  privileged: bool = False) -> None:
        """Write ``data`` at ``iova``; DmaFault (nothing written) if any part faults."""
        view = memoryview(data).cast("B")
        runs = self._translate(iova, len(view), True, privileged)
        cache = self.mem.cpu_cache
        snoop = self._snoops() if cache is not None else True
        done = 0
        for pa, length in runs:
            if cache is not None:
                cache.device_write(pa, view[done:done + length], snoop, self.sid)
            else:
                self.mem.write(pa, view[done:done + length], source=self.sid)
            done += length
        self.stats.writes += 1
        self.stats.bytes_written += len(view)

    def msi_write(self, address: int, data: int) -> None:
        """Signal an MSI: a 32-bit write of ``data`` to ``address`` through the IOMMU."""
        self.dma_write(address, (data & 0xFFFF_FFFF).to_bytes(4, "little"))
        self.stats.msi_writes += 1

    def _snoops(self) -> bool:
        """Whether the transfer just translated snoops: the device does, or the IOMMU forced
        it for every leaf (VT-d's SNP bit with snoop control)."""
        return self.snoop or self._forced_snoop

    def _translate(self, iova: int, n: int, write: bool, privileged: bool
                   ) -> list[tuple[int, int]]:
        """Physically contiguous runs covering ``[iova, iova + n)``: one translation per leaf.
        EINVAL for a range no device can put on the bus (a negative length, an address
        outside 64 bits)."""
        if n < 0 or iova < 0 or iova + n > 1 << 64:
            raise InvalidArgument(f"DMA of {n} bytes at {iova:#x}: not a range of 64-bit bus "
                                  "addresses")
        if not n:
            return []
        self._forced_snoop = False
        if self.iommu is None:
            return [(iova, n)]
        pos, end = iova, iova + n
        iommu = self.iommu
        try:
            pa, leaf_end = iommu.translate_run(self.sid, pos, write, privileged)
            self.stats.translations += 1
            forced = getattr(iommu, "last_snoop", False)
            if leaf_end >= end:  # one leaf holds the whole transfer
                self._forced_snoop = forced
                return [(pa, n)]
            runs = [(pa, leaf_end - pos)]
            pos = leaf_end
            while pos < end:
                pa, leaf_end = iommu.translate_run(self.sid, pos, write, privileged)
                self.stats.translations += 1
                forced = forced and getattr(iommu, "last_snoop", False)
                length = min(end, leaf_end) - pos
                if runs[-1][0] + runs[-1][1] == pa:
                    runs[-1] = (runs[-1][0], runs[-1][1] + length)
                else:
                    runs.append((pa, length))
                pos += length
        except DmaFault:
            self.stats.faults += 1
            raise
        self._forced_snoop = forced
        return runs
