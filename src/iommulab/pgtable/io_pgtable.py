"""``alloc_io_pgtable_ops`` / ``free_io_pgtable_ops`` (drivers/iommu/io-pgtable.c)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..errors import InvalidArgument
from ..mem import PhysMem
from ..sizes import PAGE_SIZE
from .arm_lpae import LPAE_FORMATS, arm_lpae_alloc
from .cfg import IoPgtableCfg, IoPgtableFmt
from .vtd_ss import vtd_ss_alloc
from .walker import IoPgtable

__all__ = ["alloc_io_pgtable_ops", "free_io_pgtable_ops"]


def alloc_io_pgtable_ops(fmt: IoPgtableFmt, cfg: IoPgtableCfg, cookie: Any = None, *,
                         mem: PhysMem | None = None,
                         cpu_page_size: int = PAGE_SIZE) -> IoPgtable:
    """Allocate a page table of format ``fmt``; its ``cfg`` is the filled-in config.

    Table memory comes from ``mem`` (a private 4 GiB :class:`PhysMem` if
    omitted). ``cpu_page_size`` is the kernel's ``PAGE_SIZE``, which picks the
    granule. Where the kernel returns NULL this raises: InvalidArgument for a
    configuration the format refuses (naming why), OutOfMemory when the
    table memory cannot be had.
    """
    if fmt not in LPAE_FORMATS and fmt != IoPgtableFmt.INTEL_VTD_SS:
        raise InvalidArgument(f"alloc_io_pgtable_ops: format {fmt!r} is not modelled")
    if mem is None:
        mem = PhysMem("4G")
    if fmt == IoPgtableFmt.INTEL_VTD_SS:
        vtd, filled = vtd_ss_alloc(cfg)
        return IoPgtable(fmt, filled, vtd, mem, cookie)
    pt, filled = arm_lpae_alloc(fmt, cfg, cpu_page_size, mem.fail_nth)
    ops = IoPgtable(fmt, filled, pt, mem, cookie)
    if filled.arm_lpae_s1_cfg is not None:
        ops.cfg = replace(filled, arm_lpae_s1_cfg=replace(filled.arm_lpae_s1_cfg,
                                                          ttbr=ops.pgd_pa))
    elif filled.arm_lpae_s2_cfg is not None:
        ops.cfg = replace(filled, arm_lpae_s2_cfg=replace(filled.arm_lpae_s2_cfg,
                                                          vttbr=ops.pgd_pa))
    return ops


def free_io_pgtable_ops(ops: IoPgtable | None) -> None:
    """Flush the TLB and free all table memory (NULL is allowed, as in the kernel)."""
    if ops is not None:
        ops.free()
