"""IOMMU protection flags with the kernel's values (include/linux/iommu.h)."""

from __future__ import annotations

import enum

__all__ = ["Prot"]


class Prot(enum.IntFlag):
    """``IOMMU_READ`` … ``IOMMU_PRIV`` from include/linux/iommu.h."""

    READ = 1 << 0
    WRITE = 1 << 1
    CACHE = 1 << 2  # DMA cache coherency
    NOEXEC = 1 << 3
    MMIO = 1 << 4  # e.g. MSI doorbells
    PRIV = 1 << 5
