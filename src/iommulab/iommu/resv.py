"""Reserved regions and capabilities a driver reports (include/linux/iommu.h).

``struct iommu_resv_region`` and ``enum iommu_resv_type``; ``enum iommu_cap``
as ``device_iommu_capable`` asks it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..prot import Prot

__all__ = ["MSI_IOVA_BASE", "MSI_IOVA_LENGTH", "IommuCap", "ResvRegion", "ResvType"]

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


class IommuCap(enum.IntEnum):
    """``enum iommu_cap``."""

    CACHE_COHERENCY = 0
    NOEXEC = 1
    PRE_BOOT_PROTECTION = 2
    ENFORCE_CACHE_COHERENCY = 3
    DEFERRED_FLUSH = 4
    DIRTY_TRACKING = 5
    PCI_ATS_SUPPORTED = 6
