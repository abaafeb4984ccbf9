"""io-pgtable formats, quirks and configuration (include/linux/io-pgtable.h)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..kernel import DEFAULT_KERNEL, KernelVersion

if TYPE_CHECKING:
    from .flush import IommuFlushOps

__all__ = [
    "ArmLpaeS1Cfg",
    "ArmLpaeS2Cfg",
    "ArmLpaeTcr",
    "ArmLpaeVtcr",
    "IoPgtableCfg",
    "IoPgtableFmt",
    "Quirk",
]


class IoPgtableFmt(enum.IntEnum):
    """``enum io_pgtable_fmt`` (values as in the kernel)."""

    ARM_32_LPAE_S1 = 0
    ARM_32_LPAE_S2 = 1
    ARM_64_LPAE_S1 = 2
    ARM_64_LPAE_S2 = 3
    ARM_V7S = 4
    ARM_MALI_LPAE = 5
    AMD_IOMMU_V1 = 6
    AMD_IOMMU_V2 = 7
    APPLE_DART = 8
    APPLE_DART2 = 9
    INTEL_VTD_SS = 100  # lab: VT-d second stage, which the kernel keeps outside io-pgtable


class Quirk(enum.IntFlag):
    """``IO_PGTABLE_QUIRK_*`` bits."""

    ARM_NS = 1 << 0
    NO_PERMS = 1 << 1
    ARM_MTK_EXT = 1 << 3
    ARM_MTK_TTBR_EXT = 1 << 4
    ARM_TTBR1 = 1 << 5
    ARM_OUTER_WBWA = 1 << 6
    ARM_HD = 1 << 7
    ARM_S2FWB = 1 << 8
    NO_WARN = 1 << 9


@dataclass(frozen=True)
class ArmLpaeTcr:
    """``cfg->arm_lpae_s1_cfg.tcr``: fields the driver writes to TCR / the CD."""

    ips: int
    tg: int
    sh: int
    orgn: int
    irgn: int
    tsz: int


@dataclass(frozen=True)
class ArmLpaeS1Cfg:
    ttbr: int
    tcr: ArmLpaeTcr
    mair: int

    def __repr__(self) -> str:
        return f"ArmLpaeS1Cfg(ttbr={self.ttbr:#x}, tcr={self.tcr}, mair={self.mair:#x})"


@dataclass(frozen=True)
class ArmLpaeVtcr:
    """``cfg->arm_lpae_s2_cfg.vtcr``: fields for VTCR / the STE's S2 fields."""

    ps: int
    tg: int
    sh: int
    orgn: int
    irgn: int
    tsz: int
    sl: int


@dataclass(frozen=True)
class ArmLpaeS2Cfg:
    vttbr: int
    vtcr: ArmLpaeVtcr

    def __repr__(self) -> str:
        return f"ArmLpaeS2Cfg(vttbr={self.vttbr:#x}, vtcr={self.vtcr})"


@dataclass(frozen=True)
class IoPgtableCfg:
    """``struct io_pgtable_cfg``: what the driver asks for.

    :func:`~iommulab.pgtable.alloc_io_pgtable_ops` returns ops whose ``cfg`` is
    this value filled in: the restricted ``pgsize_bitmap``, clamped ``ias``/
    ``oas`` and the register values for the driver. ``kernel`` is the release whose
    io-pgtable code the table follows (the driver passes its machine's).
    """

    pgsize_bitmap: int
    ias: int
    oas: int
    quirks: Quirk = Quirk(0)  # noqa: RUF009 (an immutable enum value)
    coherent_walk: bool = True
    tlb: IommuFlushOps | None = None
    arm_lpae_s1_cfg: ArmLpaeS1Cfg | None = None
    arm_lpae_s2_cfg: ArmLpaeS2Cfg | None = None
    kernel: KernelVersion = DEFAULT_KERNEL

    def __repr__(self) -> str:
        parts = [f"pgsize_bitmap={self.pgsize_bitmap:#x}", f"ias={self.ias}", f"oas={self.oas}"]
        if self.quirks:
            parts.append(f"quirks={self.quirks!r}")
        if not self.coherent_walk:
            parts.append("coherent_walk=False")
        for extra in (self.arm_lpae_s1_cfg, self.arm_lpae_s2_cfg):
            if extra is not None:
                parts.append(repr(extra))
        if self.kernel != DEFAULT_KERNEL:
            parts.append(f"kernel={self.kernel}")
        return f"IoPgtableCfg({', '.join(parts)})"
