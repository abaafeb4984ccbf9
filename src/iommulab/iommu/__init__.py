"""The IOMMU core: domains, ``iommu_pgsize``, map/unmap/map_sg, IOTLB gathers, dirty tracking,
reserved regions, devices, groups and default domains."""

from .core import DevIommu, IommuCore, IommuDriver, IommuGroup
from .dirty import IommuDirtyBitmap, IovaBitmap
from .domain import (
    DirtyOps,
    DomainGeometry,
    DomainOps,
    DomainType,
    IommuDomain,
    SgEntry,
    TlbStats,
)
from .gather import IommuIotlbGather, iommu_iotlb_gather_add_page
from .pgsize import iommu_pgsize
from .pgtbl_domain import PgtblDomainOps, PgtblFlushOps, alloc_paging_domain
from .resv import (
    MSI_IOVA_BASE,
    MSI_IOVA_LENGTH,
    IommuCap,
    ResvRegion,
    ResvType,
    insert_resv_region,
    merge_resv_regions,
)

__all__ = [
    "MSI_IOVA_BASE",
    "MSI_IOVA_LENGTH",
    "DevIommu",
    "DirtyOps",
    "DomainGeometry",
    "DomainOps",
    "DomainType",
    "IommuCap",
    "IommuCore",
    "IommuDirtyBitmap",
    "IommuDomain",
    "IommuDriver",
    "IommuGroup",
    "IommuIotlbGather",
    "IovaBitmap",
    "PgtblDomainOps",
    "PgtblFlushOps",
    "ResvRegion",
    "ResvType",
    "SgEntry",
    "TlbStats",
    "alloc_paging_domain",
    "insert_resv_region",
    "iommu_iotlb_gather_add_page",
    "iommu_pgsize",
    "merge_resv_regions",
]
