"""One 4K iommu_map + iommu_unmap through a paging domain, per call.

The page and its tables already exist after the first call, as for a
driver that maps and unmaps a buffer repeatedly; the figure is the median
over ``--repeat`` batches of ``--calls`` map+unmap pairs (wall, and process
CPU time beside it). The domain takes the single-page fast path
(``IommuDomain.enable_single_fast``) as every paging domain does by default;
``--layered`` measures the layered path instead.
"""

from __future__ import annotations

import argparse

from _common import Figure, median_wall_cpu, print_figures
from iommulab import Prot
from iommulab.iommu import alloc_paging_domain
from iommulab.pgtable import IoPgtableCfg, IoPgtableFmt
from iommulab.sizes import SZ_1G, SZ_2M, SZ_4K

RW = Prot.READ | Prot.WRITE


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--layered", action="store_true", help="without the single-page fast path")
    args = ap.parse_args()
    d = alloc_paging_domain(IoPgtableFmt.ARM_64_LPAE_S1,
                            IoPgtableCfg(SZ_4K | SZ_2M | SZ_1G, 48, 48))
    if args.layered:
        d.disable_single_fast()
    iova, pa = 0x1234_5000, 0x8765_4000
    d.map(iova, pa, SZ_4K, RW)
    assert d.unmap(iova, SZ_4K) == SZ_4K
    calls = range(args.calls)
    dmap, dunmap = d.map, d.unmap

    def run() -> None:
        for _ in calls:
            dmap(iova, pa, SZ_4K, RW)
            dunmap(iova, SZ_4K)

    wall, cpu = median_wall_cpu(run, None, args.repeat)
    per = 1e6 / args.calls
    print_figures(f"bench_domain_single: median of {args.repeat} x {args.calls} pairs",
                  [Figure("iommu_map + iommu_unmap of one 4K page", wall * per, "us/pair", 1.5,
                          cpu=cpu * per)])


if __name__ == "__main__":
    main()
