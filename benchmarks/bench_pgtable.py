"""Bulk page-table figures: map, unmap, dirty scan, iova_to_phys, model memory.

Maps ``--size`` bytes (default 16 GiB) through an ARM LPAE stage-1 paging
domain with iommu_map, once with 4K pages (physical address offset so that
no block fits) and once with 2M blocks; times iommu_unmap of both; times
read_and_clear_dirty over the 4K mapping with every page clean and with
every page dirty; times iova_to_phys of ``--lookups`` random addresses; and
measures the model's memory (tracemalloc) against the bytes a real table
of that shape occupies. Bulk 4K figures have issue 22's 15 ns/PTE target and
print process CPU time beside the wall time; ``--reference`` forces the
per-table-page path (``walker.BULK_PASSES = False``) for before/after. Then
Linux 7.0's generic_pt read_and_clear_dirty over ``--size`` of dirty 4K leaves
of the iommufd selftest's mock domain (AMDv1, 2K items), into a user bitmap as
IOMMU_HWPT_GET_DIRTY_BITMAP makes it (one record per table), and Linux 6.12's
xarray mock read over 1024 periods of one dirty 1M entry and 512 dirty 2K
entries (a walk that changes step 2048 times). Times are medians of
``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import tracemalloc

import numpy as np

from _common import Figure, median_seconds, median_wall_cpu, print_figures
from iommulab import Prot
from iommulab.drivers.mock import (
    MOCK_FLAGS_DEVICE_HUGE_IOVA,
    MOCK_HUGE_PAGE_SIZE,
    MOCK_IO_PAGE_SIZE,
    MOCK_PFN_DIRTY_IOVA,
    MockDirtyOps,
    MockDomainOps,
    MockHw,
    MockIommu,
)
from iommulab.drivers.mock_pt import (
    MOCK_IOMMUPT_HUGE,
    HwptSelftest,
    MockPtDirtyOps,
    MockPtDomainOps,
    mock_domain_alloc_pgtable,
)
from iommulab.iommu import IommuDirtyBitmap, IommuDomain, IommuIotlbGather, IovaBitmap
from iommulab.iommu import alloc_paging_domain as _alloc
from iommulab.iommu.dirty import UserIovaBitmap
from iommulab.kernel import LINUX_7_0
from iommulab.mem import FailNth, PhysMem
from iommulab.pgtable import IoPgtable, IoPgtableCfg, IoPgtableFmt, Quirk, walker
from iommulab.sizes import SZ_1G, SZ_2M, SZ_4K, parse_size

RW = Prot.READ | Prot.WRITE
PA_4K = 0x10_0000_1000  # iova ^ pa not 2M-aligned: only 4K pages fit
PA_2M = 0x10_0020_0000  # 2M-aligned, not 1G: only 2M blocks fit
BULK_NS = 15.0  # issue 22: bulk map/unmap/dirty, ns per 4K PTE
MEMORY_RATIO = 1.1  # issue 22: model bytes per byte of real table


def _domain() -> tuple[IommuDomain, IoPgtable]:
    mem = PhysMem("64G")
    d = _alloc(IoPgtableFmt.ARM_64_LPAE_S1,
               IoPgtableCfg(SZ_4K | SZ_2M | SZ_1G, 48, 48, quirks=Quirk.ARM_HD), mem=mem)
    assert d.pgtbl is not None
    return d, d.pgtbl


def _model_ratio(size: int, pa: int) -> float:
    d, pgtbl = _domain()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    d.map(0, pa, size, RW)
    model = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return model / (pgtbl.stats.table_bytes - pgtbl.format.levels[0].table_bytes)


def _mock_7_0_scan_seconds(size: int, repeat: int) -> float:
    """7.0 mock: read_and_clear_dirty over ``size`` of 4K leaves, each made dirty first."""
    d = mock_domain_alloc_pgtable(PhysMem("64G"), HwptSelftest(0, MOCK_IOMMUPT_HUGE), True,
                                  LINUX_7_0)
    ops, dirty_ops = d.ops, d.dirty_ops
    assert isinstance(ops, MockPtDomainOps) and isinstance(dirty_ops, MockPtDirtyOps)
    d.map(0, PA_4K, size, RW)
    leaves = np.arange(0, size, SZ_4K, dtype=np.int64)

    def scan() -> None:
        bitmap = UserIovaBitmap(0, size, SZ_4K, data=0x7F00_0000_0000)
        dirty_ops.read_and_clear_dirty(d, 0, size, 0,
                                       IommuDirtyBitmap(bitmap, IommuIotlbGather()))

    t = median_seconds(scan, lambda: ops.pt.set_dirty(leaves), repeat)
    d.unmap(0, size)
    d.free()
    return t


def _mock_6_12_mixed_scan_seconds(repeat: int, periods: int = 1024) -> float:
    """6.12 mock: read_and_clear_dirty over ``periods`` of one dirty 1M entry followed by
    512 dirty 2K entries, so the walk changes its step at every stretch."""
    drv = MockIommu(MockHw(FailNth()))
    drv.device_flags[7] = MOCK_FLAGS_DEVICE_HUGE_IOVA
    d = drv.domain_alloc_paging(drv.probe_device(7))
    ops = d.ops
    assert isinstance(ops, MockDomainOps)
    period = 2 * MOCK_HUGE_PAGE_SIZE
    for i in range(periods):
        ops.map_pages(d, i * period, PA_2M, MOCK_HUGE_PAGE_SIZE, 1, RW, 0)
        ops.map_pages(d, i * period + MOCK_HUGE_PAGE_SIZE, PA_2M, MOCK_IO_PAGE_SIZE, 512, RW,
                      0)
    dirty_ops = MockDirtyOps()
    dirty_ops.tracking = True

    def dirty_all() -> None:
        idx, vals = ops.pfns.present(0, periods * period // MOCK_IO_PAGE_SIZE)
        ops.pfns.update(idx, vals | np.uint64(MOCK_PFN_DIRTY_IOVA))

    def scan() -> None:
        bitmap = IovaBitmap(0, periods * period, SZ_4K)
        dirty_ops.read_and_clear_dirty(d, 0, periods * period, 0, IommuDirtyBitmap(bitmap))

    return median_seconds(scan, dirty_all, repeat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="16G")
    ap.add_argument("--lookups", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--reference", action="store_true",
                    help="force the per-table-page path (no bulk passes)")
    args = ap.parse_args()
    if args.reference:
        walker.BULK_PASSES = False
    size = parse_size(args.size)
    ptes = size // SZ_4K
    blocks = size // SZ_2M
    figs: list[Figure] = []
    state: dict[str, IommuDomain] = {}

    def fresh() -> None:
        state["d"] = _domain()[0]

    def mapped(pa: int) -> None:
        fresh()
        state["d"].map(0, pa, size, RW)

    def per_pte(name: str, wall_cpu: tuple[float, float], target: float | None = BULK_NS
                ) -> Figure:
        wall, cpu = wall_cpu
        return Figure(name, wall * 1e9 / ptes, "ns/4K PTE", target, cpu=cpu * 1e9 / ptes)

    wc = median_wall_cpu(lambda: state["d"].map(0, PA_4K, size, RW), fresh, args.repeat)
    figs.append(per_pte(f"iommu_map {args.size} in 4K pages", wc))
    wc = median_wall_cpu(lambda: state["d"].unmap(0, size), lambda: mapped(PA_4K), args.repeat)
    figs.append(per_pte(f"iommu_unmap {args.size} of 4K pages", wc))
    t = median_seconds(lambda: state["d"].map(0, PA_2M, size, RW), fresh, args.repeat)
    figs.append(Figure(f"iommu_map {args.size} in 2M blocks", t * 1e9 / blocks, "ns/2M PTE"))
    figs.append(Figure("  the same per 4K page mapped", t * 1e9 / ptes, "ns/4K page", 50))
    t = median_seconds(lambda: state["d"].unmap(0, size), lambda: mapped(PA_2M), args.repeat)
    figs.append(Figure(f"iommu_unmap {args.size} of 2M blocks", t * 1e9 / blocks, "ns/2M PTE"))

    d, pgtbl = _domain()
    d.map(0, PA_4K, size, RW)

    def scan() -> None:
        bitmap = IovaBitmap(0, size, SZ_4K)
        pgtbl.read_and_clear_dirty(0, size, 0, IommuDirtyBitmap(bitmap, IommuIotlbGather()))

    scan()  # fresh writable mappings start dirty: clear them
    figs.append(per_pte("read_and_clear_dirty, all 4K pages clean",
                        median_wall_cpu(scan, None, args.repeat)))

    def dirty_all() -> None:  # what HTTU leaves after a write to every page
        for _, table in pgtbl._iter_tables():
            table[:] &= ~np.uint64(1 << 7)

    figs.append(per_pte("read_and_clear_dirty, all 4K pages dirty",
                        median_wall_cpu(scan, dirty_all, args.repeat)))

    rng = np.random.default_rng(0)
    iovas = rng.integers(0, size, args.lookups).tolist()
    lookup = pgtbl.iova_to_phys

    def lookups() -> None:
        for iova in iovas:
            lookup(iova)

    t = median_seconds(lookups, None, args.repeat)
    figs.append(Figure(f"iova_to_phys, {args.lookups} random iovas", t * 1e9 / len(iovas),
                       "ns/call"))
    figs.append(Figure("model memory / real table bytes, 4K map", _model_ratio(size, PA_4K),
                       "x", MEMORY_RATIO))
    figs.append(Figure("model memory / real table bytes, 2M map", _model_ratio(size, PA_2M),
                       "x", 1.25))  # 16 tables: the fixed part weighs; 1.1 is for 4K
    t = _mock_7_0_scan_seconds(size, args.repeat)
    figs.append(Figure("7.0 mock read_and_clear_dirty, 4K leaves dirty", t * 1e9 / ptes,
                       "ns/4K PTE"))
    t = _mock_6_12_mixed_scan_seconds(args.repeat)
    figs.append(Figure("6.12 mock read_and_clear_dirty, 1M/2K mix",
                       t * 1e3, "ms"))
    path = "per-table reference path" if args.reference else "bulk passes"
    print_figures(f"bench_pgtable: ARM LPAE S1 4K granule, {args.size}, "
                  f"median of {args.repeat}, {path}", figs)


if __name__ == "__main__":
    main()
