"""The domain ops generic_pt gives a driver whose tables it runs (Linux 7.0's
``IOMMU_PT_DOMAIN_OPS``): the core hands whole ranges to ``map_range``/``unmap_range``
(``iommupt_from_domain``), never ``map_pages``/``unmap_pages``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..pgtable.iommu_pt import PtIommu
    from .domain import IommuDomain
    from .gather import IommuIotlbGather

__all__ = ["PtDomainOps"]


class PtDomainOps:
    """Mixin for a driver's domain ops over ``self.pt`` (its ``struct pt_iommu``) of
    ``self.domain``; the driver sets ``domain.iommupt`` to the object."""

    pt: PtIommu[IommuIotlbGather]
    domain: IommuDomain

    def map_range(self, iova: int, paddr: int, size: int, prot: int, gfp: int) -> int:
        return self.pt.map_range(iova, paddr, size, prot, self.domain.pgsize_bitmap)

    def unmap_range(self, iova: int, size: int, gather: IommuIotlbGather) -> int:
        return self.pt.unmap_range(iova, size, gather)

    def map_pages(self, domain: IommuDomain, iova: int, paddr: int, pgsize: int, pgcount: int,
                  prot: int, gfp: int) -> int:
        raise AssertionError("a generic_pt domain is mapped with map_range")

    def unmap_pages(self, domain: IommuDomain, iova: int, pgsize: int, pgcount: int,
                    gather: IommuIotlbGather) -> int:
        raise AssertionError("a generic_pt domain is unmapped with unmap_range")

    def iova_to_phys(self, domain: IommuDomain, iova: int) -> int:
        """generic_pt ``iova_to_phys``: the OA with the offset into the leaf, 0 where
        nothing is mapped, ``(phys_addr_t)-ERANGE`` past the IOVA width."""
        return self.pt.iova_to_phys(iova)
