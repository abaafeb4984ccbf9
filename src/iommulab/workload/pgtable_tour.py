"""The demo scenario: a few GiB mapped with mixed page sizes, then walked.

Backing memory comes from the machine's frame allocator the way a VMM's
would: guest RAM on 1G huge pages, a buffer on 2M (THP-like) blocks, a
buffer of 4K pages after memory was fragmented on purpose, and two more
views of guest RAM: one whose IOVA and physical address are co-aligned
(2M entries up to a 1G boundary, then 1G, then 2M again) and one 4K off. Each region's physical
runs are mapped with ``iommu_map``; ``iommu_pgsize`` decides the IOPTE
sizes. The result holds what the page table and its counters say.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..iommu import TlbStats, alloc_paging_domain
from ..mem import PhysMem
from ..pgtable import IoPgtableCfg, IoPgtableFmt, PgtableStats
from ..prot import Prot
from ..sizes import SZ_1G, SZ_2M, SZ_4K

__all__ = ["Region", "TourResult", "run_pgtable_tour"]

RW = Prot.READ | Prot.WRITE | Prot.CACHE


@dataclass
class Region:
    name: str
    iova: int
    size: int
    runs: int  # physically contiguous runs, one iommu_map each
    leaves: dict[int, int] = field(default_factory=dict)  # IOPTE size -> count
    walk: list[tuple[int, str]] = field(default_factory=list)  # (level, descriptor) at iova


@dataclass
class TourResult:
    seed: int
    fmt: str
    regions: list[Region]
    leaf_histogram: dict[int, int]
    tables_by_level: dict[int, int]
    table_bytes: int
    pgtable: PgtableStats
    tlb: TlbStats
    unmapped: int


def _runs(pfns: list[int], order: int) -> list[tuple[int, int]]:
    """Merge blocks of ``1 << order`` frames into physically contiguous (pa, size) runs."""
    out: list[tuple[int, int]] = []
    size = SZ_4K << order
    for pfn in sorted(pfns):
        pa = pfn * SZ_4K
        if out and out[-1][0] + out[-1][1] == pa:
            out[-1] = (out[-1][0], out[-1][1] + size)
        else:
            out.append((pa, size))
    return out


def run_pgtable_tour(seed: int = 0, ram: str = "8G") -> TourResult:
    """Map the four regions, walk them, unmap everything; deterministic for a seed."""
    mem = PhysMem(ram, ram_base=0x4000_0000)
    domain = alloc_paging_domain(IoPgtableFmt.ARM_64_LPAE_S1,
                                 IoPgtableCfg(SZ_4K | SZ_2M | SZ_1G, 48, 48), mem=mem)
    pgtbl = domain.pgtbl
    assert pgtbl is not None
    layout: list[tuple[str, int, list[tuple[int, int]]]] = []

    huge = [mem.alloc_pages(18) for _ in range(2)]
    layout.append(("guest RAM on 1G pages", 0x1_0000_0000, _runs(huge, 18)))
    thp = [mem.alloc_pages(9) for _ in range(256)]
    layout.append(("buffer on 2M blocks", 0x2_0000_0000, _runs(thp, 9)))
    mem.fragment(order=4, fraction=1.0, seed=seed)  # no free 64K run anywhere
    small = [mem.alloc_pages(0) for _ in range(4096)]
    layout.append(("16M of 4K pages, fragmented", 0x3_0000_0000, _runs(small, 0)))
    base = huge[0] * SZ_4K  # second views of guest RAM, as a VMM's extra DMA windows
    mixed = 0x5_0000_0000 + SZ_1G - 3 * SZ_2M  # co-aligned with base + 1G - 6M
    layout.append(("window, IOVA and PA co-aligned", mixed,
                   [(base + SZ_1G - 3 * SZ_2M, SZ_1G + 5 * SZ_2M)]))
    layout.append(("window, IOVA 4K off the PA", 0x6_0000_1000, [(base, 256 << 20)]))

    regions = []
    for name, iova, runs in layout:
        at = iova
        for run_pa, size in runs:
            domain.map(at, run_pa, size, RW)
            at += size
        region = Region(name, iova, at - iova, len(runs))
        for e_iova, e_size, leaf, _ in pgtbl.iter_entries():
            if leaf and iova <= e_iova < at:
                region.leaves[e_size] = region.leaves.get(e_size, 0) + 1
        region.walk = [(pgtbl.format.levels[i].lvl, pgtbl.format.describe(pte, i))
                       for i, pte in enumerate(pgtbl.pgtable_walk(iova))]
        regions.append(region)

    result = TourResult(
        seed=seed, fmt=f"{pgtbl.fmt.name}, {pgtbl.format.granule // 1024}K granule, "
                       f"ias {pgtbl.cfg.ias} / oas {pgtbl.cfg.oas}",
        regions=regions, leaf_histogram=pgtbl.leaf_histogram(),
        tables_by_level=pgtbl.table_histogram(), table_bytes=pgtbl.stats.table_bytes,
        pgtable=pgtbl.stats, tlb=domain.tlb_stats, unmapped=0)
    for region in regions:
        result.unmapped += domain.unmap(region.iova, region.size)
    domain.free()
    mem.release_fragmentation()
    return result
