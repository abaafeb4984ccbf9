"""A driver's domain over an io-pgtable, as arm-smmu-v3 and arm-smmu build theirs.

The page-table code calls back into :class:`PgtblFlushOps` for TLB
maintenance; leaves go into the core's gather (``iommu_iotlb_gather_add_page``,
as ``arm_smmu_tlb_inv_page_nosync`` does) and ``iotlb_sync`` flushes the
range. A real hardware model (the SMMUv3 driver) subclasses these to turn
the same calls into invalidation commands; here every call is counted in the
domain's :class:`~.domain.TlbStats`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..mem import PhysMem
from ..pgtable import (
    IommuFlushOps,
    IoPgtable,
    IoPgtableCfg,
    IoPgtableFmt,
    alloc_io_pgtable_ops,
    free_io_pgtable_ops,
)
from ..pgtable.single import SinglePage
from .domain import _PAGING, DomainGeometry, DomainType, IommuDomain, SingleFast
from .gather import IommuIotlbGather, iommu_iotlb_gather_add_page

__all__ = ["PgtblDomainOps", "PgtblFlushOps", "alloc_paging_domain", "single_fast_for"]


class PgtblFlushOps(IommuFlushOps):
    """``iommu_flush_ops`` whose cookie is the :class:`IommuDomain`."""

    def tlb_flush_all(self, cookie: Any) -> None:
        cookie.tlb_stats.flush_all += 1

    def tlb_flush_walk(self, iova: int, size: int, granule: int, cookie: Any) -> None:
        stats = cookie.tlb_stats
        stats.flush_walk += 1
        stats.flush_walk_bytes += size

    def tlb_add_page(self, gather: Any, iova: int, granule: int, cookie: Any) -> None:
        cookie.tlb_stats.add_page += 1
        iommu_iotlb_gather_add_page(cookie, gather, iova, granule)

    def tlb_add_pages(self, gather: Any, iova: int, granule: int, count: int,
                      cookie: Any) -> None:
        # count x iommu_iotlb_gather_add_page: only the first page can sync (a
        # gather of another granule or range); the rest are adjacent, same granule.
        cookie.tlb_stats.add_page += count
        if (gather.pgsize and gather.pgsize != granule) or gather.is_disjoint(iova, granule):
            cookie.iotlb_sync(gather)
        gather.pgsize = granule
        gather.add_range(iova, count * granule)


class PgtblDomainOps:
    """``iommu_domain_ops`` forwarding to an io-pgtable; syncs are counted."""

    def __init__(self, pgtbl: IoPgtable) -> None:
        self.pgtbl = pgtbl

    def map_pages(self, domain: IommuDomain, iova: int, paddr: int, pgsize: int, pgcount: int,
                  prot: int, gfp: int) -> int:
        return self.pgtbl.map_pages_run(iova, paddr, pgsize, pgcount, prot, gfp)

    def unmap_pages(self, domain: IommuDomain, iova: int, pgsize: int, pgcount: int,
                    gather: IommuIotlbGather) -> int:
        return self.pgtbl.unmap_pages(iova, pgsize, pgcount, gather)

    def iova_to_phys(self, domain: IommuDomain, iova: int) -> int:
        return self.pgtbl.iova_to_phys(iova)

    def iotlb_sync(self, domain: IommuDomain, gather: IommuIotlbGather) -> None:
        stats = domain.tlb_stats
        stats.iotlb_sync += 1
        if not gather.empty:  # 6.12 syncs empty gathers too: no range to count
            stats.sync_bytes += gather.end - gather.start + 1

    # arm-smmu-v3 (and any coherent table walker) has no iotlb_sync_map
    iotlb_sync_map: Callable[[IommuDomain, int, int], None] | None = None

    def flush_iotlb_all(self, domain: IommuDomain) -> None:
        domain.tlb_stats.flush_all += 1

    def free(self, domain: IommuDomain) -> None:
        free_io_pgtable_ops(self.pgtbl)

    def leaf_runs(self, domain: IommuDomain, iova: int, size: int
                  ) -> list[tuple[int, int, int]]:
        return self.pgtbl.leaf_runs(iova, size)

    def leaf_histogram(self, domain: IommuDomain) -> dict[int, int]:
        return self.pgtbl.leaf_histogram()


def alloc_paging_domain(fmt: IoPgtableFmt, cfg: IoPgtableCfg, *, mem: PhysMem | None = None,
                        type: DomainType = DomainType.UNMANAGED) -> IommuDomain:
    """A paging domain whose driver keeps an io-pgtable of ``fmt`` (aperture = ias)."""
    domain = IommuDomain(type, kernel=cfg.kernel)
    pgtbl = alloc_io_pgtable_ops(fmt, replace(cfg, tlb=PgtblFlushOps()), domain, mem=mem)
    domain.ops = PgtblDomainOps(pgtbl)
    domain.pgtbl = pgtbl
    domain.pgsize_bitmap = pgtbl.cfg.pgsize_bitmap
    domain.geometry = DomainGeometry(0, (1 << pgtbl.cfg.ias) - 1, True)
    domain.enable_single_fast()
    return domain


def single_fast_for(domain: IommuDomain) -> SingleFast | None:
    """Lab: the single-page fast path's data for ``domain``, or None when its driver or
    table is not the one the path flattens (see IommuDomain.enable_single_fast)."""
    ops, pg = domain.ops, domain.pgtbl
    if ops is None or pg is None or not isinstance(ops, PgtblDomainOps) or ops.pgtbl is not pg:
        return None
    cls = type(ops)
    if cls.map_pages is not PgtblDomainOps.map_pages \
            or cls.unmap_pages is not PgtblDomainOps.unmap_pages \
            or cls.iova_to_phys is not PgtblDomainOps.iova_to_phys \
            or ops.iotlb_sync_map is not None:
        return None
    tlb = pg.cfg.tlb
    if tlb is None or type(tlb).tlb_add_pages is not PgtblFlushOps.tlb_add_pages:
        return None
    if domain.iommupt is not None or not domain.type & _PAGING or pg.cookie is not domain \
            or domain.pgsize_bitmap != pg.cfg.pgsize_bitmap or not SinglePage.usable(pg):
        return None
    return SingleFast(SinglePage(pg), ops, cls.iotlb_sync is PgtblDomainOps.iotlb_sync,
                      domain.pgsize_bitmap)
