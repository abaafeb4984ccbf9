"""DMA API values (include/linux/dma-direction.h, dma-mapping.h, scatterlist.h)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "DMA_ATTR_ALLOC_SINGLE_PAGES",
    "DMA_ATTR_FORCE_CONTIGUOUS",
    "DMA_ATTR_MMIO",
    "DMA_ATTR_PRIVILEGED",
    "DMA_ATTR_SKIP_CPU_SYNC",
    "DMA_MAPPING_ERROR",
    "CoherentBuffer",
    "DmaDirection",
    "Scatterlist",
]

DMA_MAPPING_ERROR = (1 << 64) - 1  # (~(dma_addr_t)0)

DMA_ATTR_SKIP_CPU_SYNC = 1 << 5
DMA_ATTR_FORCE_CONTIGUOUS = 1 << 6
DMA_ATTR_ALLOC_SINGLE_PAGES = 1 << 7
DMA_ATTR_PRIVILEGED = 1 << 9
DMA_ATTR_MMIO = 1 << 10

_PAGE = 4096


class DmaDirection(enum.IntEnum):
    """``enum dma_data_direction``."""

    BIDIRECTIONAL = 0
    TO_DEVICE = 1
    FROM_DEVICE = 2
    NONE = 3


@dataclass
class Scatterlist:
    """One ``struct scatterlist`` entry: ``length`` bytes at ``page + offset``.

    ``dma_address``/``dma_length`` are filled by ``dma_map_sg``; entries after
    the returned count have ``dma_length`` 0.
    """

    page: int
    offset: int
    length: int
    dma_address: int = DMA_MAPPING_ERROR
    dma_length: int = 0

    @classmethod
    def at(cls, phys: int, length: int) -> Scatterlist:
        """An entry for ``length`` bytes at physical address ``phys``."""
        return cls(phys & ~(_PAGE - 1), phys & (_PAGE - 1), length)

    @property
    def phys(self) -> int:
        """``sg_phys``."""
        return self.page + self.offset


@dataclass
class CoherentBuffer:
    """What ``dma_alloc_coherent`` hands out: the pages (CPU side) and the DMA handle.

    ``pages`` are 4K physical addresses in order; ``blocks`` the buddy blocks
    they came from, as ``(pfn, order)`` (lab: to give them back).
    """

    size: int
    dma_handle: int
    pages: list[int]
    blocks: list[tuple[int, int]]

    def phys(self, offset: int) -> int:
        """The physical address of byte ``offset`` of the buffer."""
        if not 0 <= offset < self.size:
            raise ValueError(f"offset {offset:#x} is outside the {self.size:#x}-byte buffer")
        return self.pages[offset // _PAGE] + offset % _PAGE
