"""The driver-facing DMA API (kernel/dma/mapping.c) for devices behind an IOMMU.

Devices whose group's default domain is a DMA domain go through dma-iommu
(:mod:`.iommu_dma`); the others (identity domain, no IOMMU) use the direct
mapping: the DMA address is the physical address, if the mask reaches it.
``cpu`` is the CPU the caller runs on (per-CPU IOVA caches and flush queues).
``DMA_ATTR_MMIO`` is 7.0's (6.18+) way to map MMIO with ``dma_map_page``/
``dma_map_phys``; Linux 6.12 has no such attribute (the bit means nothing there)
and maps MMIO with ``dma_map_resource`` only, which both releases have.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..kernel import LINUX_7_0
from . import iommu_dma
from .cookie import MsiPage
from .types import (
    DMA_ATTR_MMIO,
    DMA_MAPPING_ERROR,
    CoherentBuffer,
    DmaDirection,
    Scatterlist,
)

if TYPE_CHECKING:
    from ..devices import DmaDevice

__all__ = [
    "dma_alloc_coherent",
    "dma_free_coherent",
    "dma_get_msi_page",
    "dma_map_page",
    "dma_map_resource",
    "dma_map_sg",
    "dma_mapping_error",
    "dma_set_coherent_mask",
    "dma_set_mask",
    "dma_set_mask_and_coherent",
    "dma_unmap_page",
    "dma_unmap_resource",
    "dma_unmap_sg",
    "use_dma_iommu",
]


def use_dma_iommu(dev: DmaDevice) -> bool:
    """``use_dma_iommu``: ``dev->dma_iommu``, set when the IOMMU core gave the device a
    DMA (or DMA_FQ) default domain."""
    return dev.dma_iommu


def dma_mapping_error(dev: DmaDevice, addr: int) -> bool:
    """``dma_mapping_error``."""
    return addr == DMA_MAPPING_ERROR


def dma_set_mask(dev: DmaDevice, mask: int) -> None:
    """``dma_set_mask``: dma-iommu supports any mask."""
    dev.dma_mask = mask & ((1 << 64) - 1)


def dma_set_coherent_mask(dev: DmaDevice, mask: int) -> None:
    """``dma_set_coherent_mask``."""
    dev.coherent_dma_mask = mask & ((1 << 64) - 1)


def dma_set_mask_and_coherent(dev: DmaDevice, mask: int) -> None:
    """``dma_set_mask_and_coherent``."""
    dma_set_mask(dev, mask)
    dma_set_coherent_mask(dev, mask)


def _direct(dev: DmaDevice, phys: int, size: int, mask: int) -> int:
    """``dma_direct_map_phys`` without swiotlb: phys itself if the mask reaches it."""
    limit = min(mask, dev.bus_dma_limit) if dev.bus_dma_limit else mask
    return phys if size and phys + size - 1 <= limit else DMA_MAPPING_ERROR


def _known_attrs(dev: DmaDevice, attrs: int) -> int:
    """``attrs`` as the device's kernel reads them: 6.12 has no DMA_ATTR_MMIO."""
    group = dev.group
    if attrs & DMA_ATTR_MMIO and group is not None and group.core.kernel < LINUX_7_0:
        return attrs & ~DMA_ATTR_MMIO
    return attrs


def dma_map_page(dev: DmaDevice, phys: int, size: int, dir: DmaDirection, attrs: int = 0, *,
                 cpu: int = 0) -> int:
    """``dma_map_page_attrs``/``dma_map_phys``: the DMA address or DMA_MAPPING_ERROR.
    Without attrs, dma-iommu's flattened single-granule path (map_phys_single) runs."""
    if dev.dma_iommu:  # use_dma_iommu()
        if not attrs:
            return iommu_dma.map_phys_single(dev, phys, size, dir, cpu)
        return iommu_dma.map_phys(dev, phys, size, dir, _known_attrs(dev, attrs), cpu)
    return _direct(dev, phys, size, dev.dma_mask)


def dma_unmap_page(dev: DmaDevice, addr: int, size: int, dir: DmaDirection, attrs: int = 0,
                   *, cpu: int = 0) -> None:
    """``dma_unmap_page_attrs``. Without attrs, dma-iommu's flattened single-granule lazy
    path (unmap_phys_single) runs."""
    if dev.dma_iommu:  # use_dma_iommu()
        if not attrs:
            iommu_dma.unmap_phys_single(dev, addr, size, dir, cpu)
            return
        iommu_dma.unmap_phys(dev, addr, size, dir, _known_attrs(dev, attrs), cpu)


def dma_map_resource(dev: DmaDevice, phys: int, size: int, dir: DmaDirection,
                     attrs: int = 0, *, cpu: int = 0) -> int:
    """``dma_map_resource``: MMIO (a peer's BAR, a doorbell) mapped IOMMU_MMIO and never
    cacheable. 6.12 ``iommu_dma_map_resource`` (``dma_info_to_prot(dir, false, attrs) |
    IOMMU_MMIO``) and 7.0 ``dma_map_phys(..., attrs | DMA_ATTR_MMIO)`` give the same
    prot."""
    if dev.dma_iommu:
        return iommu_dma.map_phys(dev, phys, size, dir, attrs | DMA_ATTR_MMIO, cpu)
    return _direct(dev, phys, size, dev.dma_mask)


def dma_unmap_resource(dev: DmaDevice, addr: int, size: int, dir: DmaDirection,
                       attrs: int = 0, *, cpu: int = 0) -> None:
    """``dma_unmap_resource``: unmapped without looking the address up first."""
    if dev.dma_iommu:
        iommu_dma.unmap_phys(dev, addr, size, dir, attrs | DMA_ATTR_MMIO, cpu)


def dma_map_sg(dev: DmaDevice, sg: list[Scatterlist], dir: DmaDirection, attrs: int = 0, *,
               cpu: int = 0) -> int:
    """``dma_map_sg_attrs``: the number of DMA segments, 0 on failure."""
    if use_dma_iommu(dev):
        return max(iommu_dma.map_sg(dev, sg, dir, attrs, cpu), 0)
    for s in sg:
        s.dma_address = _direct(dev, s.phys, s.length, dev.dma_mask)
        s.dma_length = s.length
        if s.dma_address == DMA_MAPPING_ERROR:
            return 0
    return len(sg)


def dma_unmap_sg(dev: DmaDevice, sg: list[Scatterlist], dir: DmaDirection, attrs: int = 0,
                 *, cpu: int = 0) -> None:
    """``dma_unmap_sg_attrs``."""
    if use_dma_iommu(dev):
        iommu_dma.unmap_sg(dev, sg, dir, attrs, cpu)


def dma_alloc_coherent(dev: DmaDevice, size: int, attrs: int = 0, *,
                       cpu: int = 0) -> CoherentBuffer | None:
    """``dma_alloc_attrs`` through dma-iommu: zeroed pages at one DMA range, or None."""
    if not use_dma_iommu(dev):
        raise NotImplementedError("dma_alloc_coherent needs a DMA domain in this model")
    return iommu_dma.alloc_coherent(dev, size, attrs, cpu)


def dma_free_coherent(dev: DmaDevice, buf: CoherentBuffer, *, cpu: int = 0) -> None:
    """``dma_free_attrs``."""
    iommu_dma.free_coherent(dev, buf, cpu)


def dma_get_msi_page(dev: DmaDevice, msi_addr: int) -> MsiPage | None:
    """``iommu_dma_get_msi_page`` for the domain ``dev`` is attached to."""
    group = dev.group
    if group is None or group.domain is None:
        raise ValueError(f"{dev.name} is not attached to a domain")
    return iommu_dma.get_msi_page(dev, msi_addr, group.domain)
