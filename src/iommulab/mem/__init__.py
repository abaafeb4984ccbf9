"""Physical memory: RAM/MMIO regions, frame allocator, sparse contents, pin counts."""

from .contents import PAGE_BYTES, SparseContents
from .fault import FailNth
from .frames import MAX_ORDER, FrameAllocator
from .physmem import MemRegion, PhysMem, get_order
from .pins import SECTION_FRAMES, PinCounts

__all__ = [
    "MAX_ORDER",
    "PAGE_BYTES",
    "SECTION_FRAMES",
    "FailNth",
    "FrameAllocator",
    "MemRegion",
    "PhysMem",
    "PinCounts",
    "SparseContents",
    "get_order",
]
