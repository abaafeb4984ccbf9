"""io-pgtable: page-table formats as the hardware reads them.

``alloc_io_pgtable_ops(fmt, cfg)`` returns an :class:`IoPgtable` with the
kernel's ``map_pages``, ``unmap_pages``, ``iova_to_phys``, ``pgtable_walk``
and ``read_and_clear_dirty``; each format is a small set of hooks
(:class:`PtFormat`) over one shared walker.
"""

from .arm_lpae import ArmLpaeFormat
from .bits import Field, Layout, genmask
from .cfg import (
    ArmLpaeS1Cfg,
    ArmLpaeS2Cfg,
    ArmLpaeTcr,
    ArmLpaeVtcr,
    IoPgtableCfg,
    IoPgtableFmt,
    Quirk,
)
from .flush import IommuFlushOps
from .format import Level, PtFormat
from .io_pgtable import alloc_io_pgtable_ops, free_io_pgtable_ops
from .walker import IOMMU_DIRTY_NO_CLEAR, DirtyRecorder, GatherLike, IoPgtable, PgtableStats

__all__ = [
    "IOMMU_DIRTY_NO_CLEAR",
    "ArmLpaeFormat",
    "ArmLpaeS1Cfg",
    "ArmLpaeS2Cfg",
    "ArmLpaeTcr",
    "ArmLpaeVtcr",
    "DirtyRecorder",
    "Field",
    "GatherLike",
    "IoPgtable",
    "IoPgtableCfg",
    "IoPgtableFmt",
    "IommuFlushOps",
    "Layout",
    "Level",
    "PgtableStats",
    "PtFormat",
    "Quirk",
    "alloc_io_pgtable_ops",
    "free_io_pgtable_ops",
    "genmask",
]
