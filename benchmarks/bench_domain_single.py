"""One 4K iommu_map + iommu_unmap through a paging domain, per call.

The page and its tables already exist after the first call, as for a
driver that maps and unmaps a buffer repeatedly; the figure is the median
over ``--repeat`` batches of ``--calls`` map+unmap pairs.
"""

from __future__ import annotations

import argparse

from _common import Figure, median_seconds, print_figures
from iommulab import Prot
from iommulab.iommu import alloc_paging_domain
from iommulab.pgtable import IoPgtableCfg, IoPgtableFmt
from iommulab.sizes import SZ_1G, SZ_2M, SZ_4K

RW = Prot.READ | Prot.WRITE


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    d = alloc_paging_domain(IoPgtableFmt.ARM_64_LPAE_S1,
                            IoPgtableCfg(SZ_4K | SZ_2M | SZ_1G, 48, 48))
    iova, pa = 0x1234_5000, 0x8765_4000
    d.map(iova, pa, SZ_4K, RW)
    assert d.unmap(iova, SZ_4K) == SZ_4K
    calls = range(args.calls)
    dmap, dunmap = d.map, d.unmap

    def run() -> None:
        for _ in calls:
            dmap(iova, pa, SZ_4K, RW)
            dunmap(iova, SZ_4K)

    t = median_seconds(run, None, args.repeat)
    print_figures(f"bench_domain_single: median of {args.repeat} x {args.calls} pairs",
                  [Figure("iommu_map + iommu_unmap of one 4K page", t * 1e6 / args.calls,
                          "us/pair", 5)])


if __name__ == "__main__":
    main()
