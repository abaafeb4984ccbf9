"""DMA-capable devices: real bytes moved through an IOMMU's translation path.

A device issues reads and writes at I/O virtual addresses; the IOMMU
(anything with ``translate_run``, e.g. :class:`~iommulab.drivers.smmuv3.SmmuV3Hw`)
turns them into physical addresses leaf by leaf. Every leaf of a transfer
is translated before any byte moves, so a fault means nothing was read or
written (the IOMMU has queued its fault event); translations done before
the faulting one may already have set access and dirty flags, as a real
device's earlier transactions would have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .errors import DmaFault
from .mem import PhysMem

__all__ = ["DmaDevice", "DmaStats", "Translator"]


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


class DmaDevice:
    """A device with StreamID/RID ``sid`` behind ``iommu`` (None: no IOMMU, iova = pa)."""

    def __init__(self, name: str, mem: PhysMem, iommu: Translator | None, sid: int) -> None:
        self.name = name
        self.mem = mem
        self.iommu = iommu
        self.sid = sid
        self.stats = DmaStats()

    def __repr__(self) -> str:
        return f"<DmaDevice {self.name} sid={self.sid:#x}>"

    def dma_read(self, iova: int, n: int, *, privileged: bool = False) -> bytes:
        """Read ``n`` bytes at ``iova``; DmaFault (nothing read) if any part faults."""
        runs = self._translate(iova, n, False, privileged)
        read = self.mem.read
        out = read(*runs[0]) if len(runs) == 1 else b"".join(read(pa, k) for pa, k in runs)
        self.stats.reads += 1
        self.stats.bytes_read += n
        return out

    def dma_write(self, iova: int, data: bytes | bytearray | memoryview, *,
                  privileged: bool = False) -> None:
        """Write ``data`` at ``iova``; DmaFault (nothing written) if any part faults."""
        view = memoryview(data).cast("B")
        runs = self._translate(iova, len(view), True, privileged)
        done = 0
        for pa, length in runs:
            self.mem.write(pa, view[done:done + length])
            done += length
        self.stats.writes += 1
        self.stats.bytes_written += len(view)

    def _translate(self, iova: int, n: int, write: bool, privileged: bool
                   ) -> list[tuple[int, int]]:
        """Physically contiguous runs covering ``[iova, iova + n)``: one translation per leaf."""
        if n < 0:
            raise ValueError(f"DMA length must not be negative, not {n}")
        if not n:
            return []
        if self.iommu is None:
            return [(iova, n)]
        pos, end = iova, iova + n
        try:
            pa, leaf_end = self.iommu.translate_run(self.sid, pos, write, privileged)
            self.stats.translations += 1
            if leaf_end >= end:  # one leaf holds the whole transfer
                return [(pa, n)]
            runs = [(pa, leaf_end - pos)]
            pos = leaf_end
            while pos < end:
                pa, leaf_end = self.iommu.translate_run(self.sid, pos, write, privileged)
                self.stats.translations += 1
                length = min(end, leaf_end) - pos
                if runs[-1][0] + runs[-1][1] == pa:
                    runs[-1] = (runs[-1][0], runs[-1][1] + length)
                else:
                    runs.append((pa, length))
                pos += length
        except DmaFault:
            self.stats.faults += 1
            raise
        return runs
