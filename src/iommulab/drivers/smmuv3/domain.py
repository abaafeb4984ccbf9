"""Driver-side SMMUv3 domains: stage, ASID/VMID, and the callbacks io-pgtable and the core use.

``struct arm_smmu_domain`` with ``arm_smmu_flush_ops`` (page-table TLB
callbacks turned into commands), the domain ops' ``iotlb_sync`` /
``flush_iotlb_all`` / ``free``, and ``arm_smmu_dirty_ops``
(arm-smmu-v3.c, Linux 7.0). Commands go out through the owning
:class:`~.driver.ArmSmmuDevice`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ...errors import Busy
from ...iommu import (
    DomainType,
    IommuDirtyBitmap,
    IommuDomain,
    IommuIotlbGather,
    PgtblDomainOps,
    PgtblFlushOps,
)
from ...kernel import DEFAULT_KERNEL, KernelVersion

if TYPE_CHECKING:
    from .driver import ArmSmmuDevice

__all__ = [
    "HWPT_ALLOC_DIRTY_TRACKING",
    "HWPT_ALLOC_NEST_PARENT",
    "HWPT_ALLOC_PASID",
    "ArmSmmuDirtyOps",
    "ArmSmmuDomain",
    "ArmSmmuDomainOps",
    "ArmSmmuFlushOps",
    "ArmSmmuMaster",
]

# IOMMU_HWPT_ALLOC_* (include/uapi/linux/iommufd.h)
HWPT_ALLOC_NEST_PARENT = 1 << 0
HWPT_ALLOC_DIRTY_TRACKING = 1 << 1
HWPT_ALLOC_PASID = 1 << 3


@dataclass(eq=False)
class ArmSmmuMaster:
    """``struct arm_smmu_master``: a device's streams and its CD table."""

    smmu: ArmSmmuDevice
    sids: tuple[int, ...]
    domain: IommuDomain | None = None
    cd_table_pa: int | None = None
    cd_table: npt.NDArray[np.uint64] | None = field(default=None, repr=False)
    vmaster: Any = field(default=None, repr=False)  # 7.0: .vsmmu.ArmVmaster on a nested domain


class ArmSmmuDomain(IommuDomain):
    """``struct arm_smmu_domain``: a paging domain with its stage and ASID or VMID."""

    def __init__(self, type: DomainType, stage: int, *,
                 kernel: KernelVersion = DEFAULT_KERNEL) -> None:
        super().__init__(type, kernel=kernel)
        self.smmu: ArmSmmuDevice | None = None  # set once finalised
        self.stage = stage  # 1 or 2
        self.asid = 0
        self.vmid = 0
        self.nest_parent = False
        self.masters: list[ArmSmmuMaster] = []

    def __repr__(self) -> str:
        tag = f"asid={self.asid}" if self.stage == 1 else f"vmid={self.vmid}"
        return f"<ArmSmmuDomain S{self.stage} {tag} pgsize_bitmap={self.pgsize_bitmap:#x}>"


class ArmSmmuFlushOps(PgtblFlushOps):
    """``arm_smmu_flush_ops``: the page-table code's TLB callbacks, as commands."""

    def tlb_flush_all(self, cookie: Any) -> None:
        super().tlb_flush_all(cookie)
        if cookie.smmu is not None:
            cookie.smmu.tlb_inv_context(cookie)

    def tlb_flush_walk(self, iova: int, size: int, granule: int, cookie: Any) -> None:
        super().tlb_flush_walk(iova, size, granule, cookie)
        if cookie.smmu is not None:
            cookie.smmu.domain_inv_range(cookie, iova, size, granule, leaf=False)


class ArmSmmuDomainOps(PgtblDomainOps):
    """``arm_smmu_domain_ops`` over the io-pgtable."""

    def iotlb_sync(self, domain: IommuDomain, gather: IommuIotlbGather) -> None:
        """``arm_smmu_iotlb_sync``: nothing when no page was gathered (pgsize 0)."""
        super().iotlb_sync(domain, gather)
        assert isinstance(domain, ArmSmmuDomain)
        smmu = domain.smmu
        if smmu is None:
            return
        pgsize = gather.pgsize
        if not pgsize:
            if not smmu.sync_dirty_clear or gather.empty:
                return
            pgsize = domain.pgsize_bitmap & -domain.pgsize_bitmap  # lab fix, see ArmSmmuDevice
        smmu.domain_inv_range(domain, gather.start, gather.end - gather.start + 1, pgsize,
                              leaf=True)

    def flush_iotlb_all(self, domain: IommuDomain) -> None:
        super().flush_iotlb_all(domain)
        assert isinstance(domain, ArmSmmuDomain)
        if domain.smmu is not None:
            domain.smmu.tlb_inv_context(domain)

    def free(self, domain: IommuDomain) -> None:
        """``arm_smmu_domain_free_paging``: the tables, then the ASID or VMID.

        EBUSY while a stream is still attached (the core never frees one then;
        its STE would point at freed tables).
        """
        assert isinstance(domain, ArmSmmuDomain)
        if domain.masters:
            sids = ", ".join(hex(sid) for m in domain.masters for sid in m.sids)
            raise Busy(f"free: {domain!r} is still attached to StreamIDs {sids}")
        super().free(domain)
        if domain.smmu is not None:
            domain.smmu.release_tag(domain)


class ArmSmmuDirtyOps:
    """``arm_smmu_dirty_ops``."""

    def set_dirty_tracking(self, domain: IommuDomain, enabled: bool) -> None:
        """``arm_smmu_set_dirty_tracking``: always on; the caller cleared the bits before."""

    def read_and_clear_dirty(self, domain: IommuDomain, iova: int, size: int, flags: int,
                             dirty: IommuDirtyBitmap) -> None:
        assert domain.pgtbl is not None
        domain.pgtbl.read_and_clear_dirty(iova, size, flags, dirty)
