"""The IOMMU core: domains, ``iommu_pgsize``, map/unmap/map_sg, IOTLB gathers, dirty bitmaps."""

from .dirty import IommuDirtyBitmap, IovaBitmap
from .domain import DomainGeometry, DomainOps, DomainType, IommuDomain, SgEntry, TlbStats
from .gather import IommuIotlbGather, iommu_iotlb_gather_add_page
from .pgsize import iommu_pgsize
from .pgtbl_domain import PgtblDomainOps, PgtblFlushOps, alloc_paging_domain

__all__ = [
    "DomainGeometry",
    "DomainOps",
    "DomainType",
    "IommuDirtyBitmap",
    "IommuDomain",
    "IommuIotlbGather",
    "IovaBitmap",
    "PgtblDomainOps",
    "PgtblFlushOps",
    "SgEntry",
    "TlbStats",
    "alloc_paging_domain",
    "iommu_iotlb_gather_add_page",
    "iommu_pgsize",
]
