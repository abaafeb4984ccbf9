"""Reserved regions and capabilities a driver reports (include/linux/iommu.h).

``struct iommu_resv_region`` and ``enum iommu_resv_type``; ``enum iommu_cap``
as ``device_iommu_capable`` asks it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, replace

from ..prot import Prot

__all__ = [
    "MSI_IOVA_BASE",
    "MSI_IOVA_LENGTH",
    "IommuCap",
    "ResvRegion",
    "ResvType",
    "insert_resv_region",
    "merge_resv_regions",
]

_ULLONG_MAX = (1 << 64) - 1

#: The software-managed MSI window ARM drivers reserve (arm-smmu-v3.c, arm-smmu.c, virtio-iommu).
MSI_IOVA_BASE = 0x8000000
MSI_IOVA_LENGTH = 0x100000


class ResvType(enum.IntEnum):
    """``enum iommu_resv_type``."""

    DIRECT = 0  # identity-mapped, must stay so
    DIRECT_RELAXABLE = 1  # identity-mapped, may be given up for device assignment
    RESERVED = 2  # never mapped
    MSI = 3  # hardware MSI window (translated by the interrupt controller)
    SW_MSI = 4  # software-managed MSI window (the MSI cookie maps doorbells here)


@dataclass(frozen=True)
class ResvRegion:
    """``struct iommu_resv_region``: ``[start, start + length)`` of a kind."""

    start: int
    length: int
    prot: Prot
    type: ResvType

    @property
    def last(self) -> int:
        return self.start + self.length - 1

    def __repr__(self) -> str:
        return (f"ResvRegion({self.type.name} [{self.start:#x}, {self.last:#x}] "
                f"prot={self.prot!r})")


def insert_resv_region(new: ResvRegion, regions: list[ResvRegion]) -> None:
    """``iommu_insert_resv_region``: insert ``new`` in place, merging regions of its type.

    The list is kept sorted by start, then type; regions of ``new``'s type
    that overlap or touch (``start <= top_end + 1``) become one; regions of
    other types are never merged, even when they overlap. The arithmetic is the
    kernel's u64: a region ending at ULLONG_MAX has ``top_end + 1 == 0``, so every
    later region of its type stays a separate (overlapping) entry. O(n).
    """
    at = next((i for i, it in enumerate(regions)
               if new.start < it.start or (new.start == it.start and new.type <= it.type)),
              len(regions))
    regions.insert(at, new)
    stack: list[ResvRegion] = []
    for it in regions:
        if it.type != new.type:
            stack.append(it)
            continue
        top = next((k for k in range(len(stack) - 1, -1, -1) if stack[k].type == it.type), -1)
        if top < 0:
            stack.append(it)
            continue
        top_end = stack[top].last & _ULLONG_MAX
        if it.start > (top_end + 1) & _ULLONG_MAX:
            stack.append(it)
        else:
            length = (max(top_end, it.last & _ULLONG_MAX) - stack[top].start + 1) & _ULLONG_MAX
            stack[top] = replace(stack[top], length=length)
    regions[:] = stack


def merge_resv_regions(per_device: Iterable[Iterable[ResvRegion]]) -> list[ResvRegion]:
    """``iommu_get_group_resv_regions``: every device's regions inserted in turn."""
    out: list[ResvRegion] = []
    for regions in per_device:
        for region in regions:
            insert_resv_region(region, out)
    return out


class IommuCap(enum.IntEnum):
    """``enum iommu_cap``."""

    CACHE_COHERENCY = 0
    NOEXEC = 1
    PRE_BOOT_PROTECTION = 2
    ENFORCE_CACHE_COHERENCY = 3
    DEFERRED_FLUSH = 4
    DIRTY_TRACKING = 5
    PCI_ATS_SUPPORTED = 6
