"""The DMA API of a pSeries device: ``dma_iommu_ops`` over its TCE table, or dma-direct at
``dma_offset`` once a direct DDW maps all RAM (arch/powerpc/kernel/dma-iommu.c, iommu.c).

- ``dma_set_mask``: ``dma_supported`` (which may run ``enable_ddw``), then the mask.
- ``map_phys``: direct when ``dma_ops_bypass`` and the mask (or the bus DMA limit, if
  lower) reaches the required mask (``dma_go_direct``), or when the bus DMA limit
  reaches the buffer's end (``arch_dma_map_phys_direct``); otherwise
  ``iommu_map_phys``: ``iommu_num_pages`` entries, aligned to the kernel page when the
  IO page is smaller and the buffer is a whole, aligned kernel page, below
  ``mask >> it_page_shift``.
- ``unmap``: direct when ``dma_go_direct`` or, with a bus DMA limit, when the handle's
  end lies at or above ``dma_offset`` (``arch_dma_unmap_phys_direct``). Kernel wart
  kept: in the vPMEM hybrid split the table's handles lie above ``dma_offset`` too, so
  their unmaps go the direct way and leave their TCEs and table entries behind.
- ``map_sg``: ``ppc_iommu_map_sg`` with its handle continuation and merging of
  contiguous segments up to ``max_seg_size``; ``-EIO`` undoes the segments made so far
  (kernel wart kept: not the one whose TCEs failed, whose entries stay allocated).
  Direct per ``arch_dma_map_sg_direct``, which counts each entry's in-page offset twice
  (``sg_phys(s) + s->offset + s->length``).
- ``alloc_coherent``: direct when ``dma_go_direct`` for the coherent mask, or (7.0's
  ``arch_dma_alloc_direct``) when ``dma_ops_bypass`` is on with a bus DMA limit; else
  pages of ``get_order(size)`` (nothing from order ``IOMAP_MAX_ORDER`` up), mapped with
  ``get_iommu_order`` alignment.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...devices import DmaDevice
from ...errors import InvalidArgument, IoError
from ...kernel import LINUX_7_0
from ...mem import get_order
from .ddw import PseriesDev, PseriesIommu
from .table import DMA_MAPPING_ERROR, IommuTable

__all__ = ["IOMAP_MAX_ORDER", "PseriesDma", "SgEntry"]

IOMAP_MAX_ORDER = 13


def iommu_num_pages(addr: int, length: int, io_page_size: int) -> int:
    return -(-((addr & (io_page_size - 1)) + length) // io_page_size)


@dataclass
class SgEntry:
    """One scatterlist entry: ``phys``/``length`` in, ``dma_address``/``dma_length`` out."""

    phys: int
    length: int
    dma_address: int = 0
    dma_length: int = 0


class PseriesDma:
    """DMA API calls for the pSeries devices of one machine."""

    def __init__(self, iommu: PseriesIommu) -> None:
        self.iommu = iommu
        self.page_shift = iommu.kernel_page_shift

    def _pdev(self, dev: DmaDevice) -> PseriesDev:
        return self.iommu.devs[dev.sid]

    def dma_set_mask(self, dev: DmaDevice, mask: int) -> None:
        """``dma_set_mask``: EIO if the platform cannot honour the mask."""
        if not self.iommu.dma_supported(dev, mask):
            raise IoError(f"{dev.name}: DMA mask {mask:#x} not supported")
        dev.dma_mask = mask

    def dma_set_coherent_mask(self, dev: DmaDevice, mask: int) -> None:
        """``dma_set_coherent_mask``: the same check, for ``coherent_dma_mask``."""
        if not self.iommu.dma_supported(dev, mask):
            raise IoError(f"{dev.name}: coherent DMA mask {mask:#x} not supported")
        dev.coherent_dma_mask = mask

    def dma_set_mask_and_coherent(self, dev: DmaDevice, mask: int) -> None:
        """``dma_set_mask_and_coherent``: the streaming mask first, then the coherent."""
        self.dma_set_mask(dev, mask)
        self.dma_set_coherent_mask(dev, mask)

    def _align_order(self, tbl: IommuTable, phys: int, size: int) -> int:
        """A whole, aligned kernel page mapped with smaller IO pages keeps its alignment."""
        if tbl.it_page_shift < self.page_shift and size >= 1 << self.page_shift \
                and not phys & ((1 << self.page_shift) - 1):
            return self.page_shift - tbl.it_page_shift
        return 0

    def _coherent_size(self, size: int) -> tuple[int, int]:
        """``PAGE_ALIGN(size)`` in kernel pages and the order of 4K frames that holds it."""
        ps = self.page_shift
        size = -(-size >> ps) << ps
        return size, get_order(size)

    def _required_mask(self, pdev: PseriesDev) -> int:
        """``dma_direct_get_required_mask``: the mask covering the bus address of the last
        RAM page, ``(max_pfn - 1) << PAGE_SHIFT`` at ``dma_offset``."""
        top = max(r.end for r in self.iommu.mem.regions if r.kind == "ram")
        max_dma = pdev.dma_offset + top - (1 << self.page_shift)
        return (1 << max_dma.bit_length()) - 1

    def _go_direct(self, dev: DmaDevice, pdev: PseriesDev, mask: int) -> bool:
        """``dma_go_direct`` for dma_iommu_ops: only with ``dma_ops_bypass``, when the
        mask (or a lower bus DMA limit: ``min_not_zero``) reaches the required mask."""
        if not pdev.dma_ops_bypass:
            return False
        limit = min(mask, dev.bus_dma_limit) if dev.bus_dma_limit else mask
        return limit >= self._required_mask(pdev)

    def _direct(self, dev: DmaDevice, pdev: PseriesDev, phys: int, size: int) -> bool:
        """``dma_map_direct(dev, ops) || arch_dma_map_phys_direct(dev, phys + size)``."""
        if self._go_direct(dev, pdev, dev.dma_mask):
            return True
        return bool(dev.bus_dma_limit) and \
            dev.bus_dma_limit >= pdev.dma_offset + phys + size

    def _alloc_direct(self, dev: DmaDevice, pdev: PseriesDev) -> bool:
        """``dma_alloc_direct``, or 7.0's ``arch_dma_alloc_direct`` (bypass with a bus DMA
        limit: RAM is pre-mapped, so coherent buffers never use the table)."""
        if self._go_direct(dev, pdev, dev.coherent_dma_mask):
            return True
        return self.iommu.kernel >= LINUX_7_0 and pdev.dma_ops_bypass \
            and bool(dev.bus_dma_limit)

    def map_phys(self, dev: DmaDevice, phys: int, size: int, write: bool = True,
                 cpu: int = 0) -> int:
        """``dma_map_phys``: the bus address, or DMA_MAPPING_ERROR."""
        pdev = self._pdev(dev)
        if self._direct(dev, pdev, phys, size):
            addr = pdev.dma_offset + phys
            limit = min(dev.dma_mask, dev.bus_dma_limit or dev.dma_mask)
            return addr if addr + size - 1 <= limit else DMA_MAPPING_ERROR
        tbl = pdev.table
        if tbl is None:
            return DMA_MAPPING_ERROR
        npages = iommu_num_pages(phys, size, tbl.page_size)
        handle = self._alloc(dev, tbl, phys & ~(tbl.page_size - 1), npages, write,
                             dev.dma_mask >> tbl.it_page_shift,
                             self._align_order(tbl, phys, size), cpu)
        if handle == DMA_MAPPING_ERROR:
            return handle
        return handle | (phys & (tbl.page_size - 1))

    def _alloc(self, dev: DmaDevice, tbl: IommuTable, pa: int, npages: int, write: bool,
               mask: int, align_order: int, cpu: int) -> int:
        """``iommu_alloc``: entries, then their TCEs; a failed build frees them."""
        entry = tbl.range_alloc(npages, mask, align_order, cpu=cpu,
                                boundary_pages=self._boundary(dev, tbl))
        if entry == DMA_MAPPING_ERROR:
            return entry
        entry += tbl.it_offset
        if tbl.ops.set(tbl, entry, npages, pa, write):
            tbl.free(entry << tbl.it_page_shift, npages)
            return DMA_MAPPING_ERROR
        return entry << tbl.it_page_shift

    @staticmethod
    def _boundary(dev: DmaDevice, tbl: IommuTable) -> int:
        """``dma_get_seg_boundary_nr_pages``."""
        return (dev.seg_boundary_mask >> tbl.it_page_shift) + 1

    def unmap_phys(self, dev: DmaDevice, dma_addr: int, size: int) -> None:
        """``dma_unmap_phys``; an address outside the table is only reported."""
        pdev = self._pdev(dev)
        tbl = pdev.table
        if tbl is None or self._unmap_direct(dev, pdev, dma_addr + size):
            return
        if not tbl.free(dma_addr, iommu_num_pages(dma_addr, size, tbl.page_size)):
            dev.notices.append(f"iommu_free: invalid entry, dma_addr {dma_addr:#x}")

    def _unmap_direct(self, dev: DmaDevice, pdev: PseriesDev, handle_end: int) -> bool:
        """``dma_map_direct(dev, ops) || arch_dma_unmap_phys_direct(dev, addr + size)``:
        with a bus DMA limit any handle ending at or above ``dma_offset`` is taken for a
        direct one (``is_direct_handle``)."""
        if self._go_direct(dev, pdev, dev.dma_mask):
            return True
        return bool(dev.bus_dma_limit) and handle_end >= pdev.dma_offset

    def map_sg(self, dev: DmaDevice, sgl: list[SgEntry], write: bool = True,
               cpu: int = 0) -> int:
        """``ppc_iommu_map_sg`` (or dma-direct per entry): segments out, ``-EIO`` on
        failure with everything undone."""
        pdev = self._pdev(dev)
        if not sgl:
            raise InvalidArgument("map_sg: no entries")
        if self._sg_direct(dev, pdev, sgl):
            for s in sgl:
                s.dma_address, s.dma_length = pdev.dma_offset + s.phys, s.length
            return len(sgl)
        tbl = pdev.table
        if tbl is None:
            raise InvalidArgument("map_sg: no table")
        handle = [0]
        outs, outcount, dma_next = 0, 1, 0
        segstart = 0
        sgl[0].dma_length = 0
        for i, s in enumerate(sgl):
            if s.length == 0:
                dma_next = 0
                continue
            npages = iommu_num_pages(s.phys, s.length, tbl.page_size)
            entry = tbl.range_alloc(npages, dev.dma_mask >> tbl.it_page_shift,
                                    self._align_order(tbl, s.phys, s.length),
                                    cpu=cpu, boundary_pages=self._boundary(dev, tbl),
                                    handle=handle)
            if entry == DMA_MAPPING_ERROR:
                return self._sg_failure(tbl, sgl, outs)
            entry += tbl.it_offset
            dma_addr = entry << tbl.it_page_shift | (s.phys & (tbl.page_size - 1))
            if tbl.ops.set(tbl, entry, npages, s.phys & ~(tbl.page_size - 1), write):
                # the kernel backs out the finished segments only: this one's entries
                # stay allocated in it_map
                return self._sg_failure(tbl, sgl, outs)
            if segstart != i:
                if dma_addr != dma_next or sgl[outs].dma_length + s.length > dev.max_seg_size:
                    segstart = i
                    outcount += 1
                    outs += 1
                else:
                    sgl[outs].dma_length += s.length
            if segstart == i:
                sgl[outs].dma_address, sgl[outs].dma_length = dma_addr, s.length
            dma_next = dma_addr + s.length
        if outcount < len(sgl):
            sgl[outs + 1].dma_length = 0
        return outcount

    @staticmethod
    def _sg_failure(tbl: IommuTable, sgl: list[SgEntry], outs: int) -> int:
        for i, s in enumerate(sgl):
            if s.dma_length:
                tbl.free(s.dma_address & ~(tbl.page_size - 1),
                         iommu_num_pages(s.dma_address, s.dma_length, tbl.page_size))
                s.dma_length = 0
            if i == outs:
                break
        return -5  # -EIO

    def _sg_direct(self, dev: DmaDevice, pdev: PseriesDev, sgl: list[SgEntry]) -> bool:
        """``dma_map_direct || arch_dma_map_sg_direct``: every entry's
        ``sg_phys(s) + s->offset + s->length`` (the in-page offset counted twice) within
        the bus DMA limit."""
        if self._go_direct(dev, pdev, dev.dma_mask):
            return True
        page_mask = (1 << self.page_shift) - 1
        return bool(dev.bus_dma_limit) and all(
            dev.bus_dma_limit >= pdev.dma_offset + s.phys + (s.phys & page_mask) + s.length
            for s in sgl)

    def unmap_sg(self, dev: DmaDevice, sgl: list[SgEntry]) -> None:
        """``dma_unmap_sg``: direct when ``dma_go_direct`` or when every entry's
        ``dma_address + length`` is a direct handle (``arch_dma_unmap_sg_direct``), else
        ``ppc_iommu_unmap_sg`` up to the first empty segment."""
        pdev = self._pdev(dev)
        tbl = pdev.table
        if tbl is None or self._go_direct(dev, pdev, dev.dma_mask) or (
                dev.bus_dma_limit and all(s.dma_address + s.length >= pdev.dma_offset
                                          for s in sgl)):
            return
        for s in sgl:
            if s.dma_length == 0:
                break
            tbl.free(s.dma_address, iommu_num_pages(s.dma_address, s.dma_length,
                                                    tbl.page_size))

    def alloc_coherent(self, dev: DmaDevice, size: int, cpu: int = 0) -> tuple[int, int]:
        """``iommu_alloc_coherent`` (or dma-direct): (physical address, bus address);
        (0, DMA_MAPPING_ERROR) when it fails, as the kernel returns NULL."""
        size, frames = self._coherent_size(size)
        pdev = self._pdev(dev)
        if self._alloc_direct(dev, pdev):
            phys = self.iommu.mem.alloc_pages(frames, site="alloc_coherent") << 12
            return phys, pdev.dma_offset + phys
        if frames - (self.page_shift - 12) >= IOMAP_MAX_ORDER:  # order in kernel pages
            return 0, DMA_MAPPING_ERROR
        tbl = pdev.table
        if tbl is None:  # the kernel reads tbl->it_page_shift first: lab, a plain failure
            return 0, DMA_MAPPING_ERROR
        pfn = self.iommu.mem.alloc_pages(frames, site="alloc_coherent")
        phys = pfn << 12
        nio = -(-size >> tbl.it_page_shift)
        io_order = ((size - 1) >> tbl.it_page_shift).bit_length()
        mapping = self._alloc(dev, tbl, phys, nio, True,
                              dev.coherent_dma_mask >> tbl.it_page_shift, io_order, cpu)
        if mapping == DMA_MAPPING_ERROR:
            self.iommu.mem.free_pages(pfn, frames)
            return 0, DMA_MAPPING_ERROR
        return phys, mapping | (phys & (tbl.page_size - 1))

    def _free_direct(self, dev: DmaDevice, pdev: PseriesDev, dma_addr: int) -> bool:
        """``dma_alloc_direct``, or 7.0's ``arch_dma_free_direct`` (bypass with a bus DMA
        limit and a handle at or above ``dma_offset``)."""
        if self._go_direct(dev, pdev, dev.coherent_dma_mask):
            return True
        return self.iommu.kernel >= LINUX_7_0 and pdev.dma_ops_bypass \
            and bool(dev.bus_dma_limit) and dma_addr >= pdev.dma_offset

    def free_coherent(self, dev: DmaDevice, size: int, phys: int, dma_addr: int) -> None:
        size, frames = self._coherent_size(size)
        pdev = self._pdev(dev)
        tbl = pdev.table
        if tbl is not None and not self._free_direct(dev, pdev, dma_addr):
            tbl.free(dma_addr, -(-size >> tbl.it_page_shift))
        self.iommu.mem.free_pages(phys >> 12, frames)
