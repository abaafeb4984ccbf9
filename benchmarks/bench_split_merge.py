"""Split 16 GiB of 2M blocks into 4K pages, scan dirty, merge back, and the naive merge.

Through a dirty-tracking stage-1 domain of the SMMUv3 driver, attached to a
device, so each call also builds and issues its invalidation commands. The
single-pass figures are medians of ``--repeat`` split/scan/merge cycles; the
naive merge (the approach the 2021 review rejected: find runs by calling
iova_to_phys page by page from the core, then unmap and map each run as a
block) runs once on the same split tables. Figures are per 4K page.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import TypeVar

from _common import Figure, print_figures
from iommulab import Prot
from iommulab.drivers.smmuv3 import (
    HWPT_ALLOC_DIRTY_TRACKING,
    ArmSmmuDevice,
    ArmSmmuDomain,
    SmmuV3Config,
    SmmuV3Hw,
)
from iommulab.mem import PhysMem
from iommulab.sizes import SZ_2M, SZ_4K, parse_size

T = TypeVar("T")
RW = Prot.READ | Prot.WRITE
BASE = 0x100_0000_0000  # IOVA of the guest RAM mapping
GUEST_PA = 0x10_0020_0000  # 2M but not 1G aligned: 2M blocks; no RAM needed behind it


def naive_merge(d: ArmSmmuDomain, iova: int, size: int, prot: int) -> int:
    """Merge from the core: probe each 4K page with iova_to_phys, remap contiguous runs.

    Benchmark only. It cannot see attributes, so it would also merge runs
    the page-table pass refuses, and the range is unmapped between the
    unmap and the map (a fault window for DMA).
    """
    merged = 0
    to_phys = d.iova_to_phys
    for base in range(iova, iova + size, SZ_2M):
        first = to_phys(base)
        if not first or first % SZ_2M:
            continue
        for off in range(SZ_4K, SZ_2M, SZ_4K):
            if to_phys(base + off) != first + off:
                break
        else:
            d.unmap(base, SZ_2M)
            d.map(base, first, SZ_2M, prot)
            merged += 1
    return merged


def _timed(fn: Callable[[], T]) -> tuple[tuple[float, float], T]:
    """Wall and process CPU seconds of ``fn()``, and its result."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return (time.perf_counter() - wall, time.process_time() - cpu), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="16G", help="guest RAM mapped with 2M blocks")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    size = parse_size(args.size)
    pages = size // SZ_4K
    mem = PhysMem("2G")
    hw = SmmuV3Hw(mem, SmmuV3Config())
    smmu = ArmSmmuDevice(hw)
    master = smmu.probe_device(0x10)
    d = smmu.domain_alloc_paging_flags(master, HWPT_ALLOC_DIRTY_TRACKING)
    smmu.attach_dev(d, master)
    d.map(BASE, GUEST_PA, size, RW)
    assert d.pgtbl is not None
    d.read_and_clear_dirty(BASE, size)
    blocks = size // SZ_2M

    splits, scans, merges = [], [], []
    for _ in range(args.repeat):
        t, n = _timed(lambda: d.set_dirty_tracking(True, granule=SZ_4K))
        assert n == blocks, n
        splits.append(t)
        t, bitmap = _timed(lambda: d.read_and_clear_dirty(BASE, size))
        assert bitmap.count() == 0  # nothing wrote since the blocks were cleaned
        scans.append(t)
        t, n = _timed(lambda: d.set_dirty_tracking(False))
        assert n == blocks, n
        merges.append(t)
    d.set_dirty_tracking(True, granule=SZ_4K)
    (naive, naive_cpu), n = _timed(lambda: naive_merge(d, BASE, size, RW))
    assert n == blocks and d.pgtbl.leaf_histogram() == {SZ_2M: blocks}

    def per_page(name: str, times: list[tuple[float, float]]) -> Figure:
        wall = statistics.median(w for w, _ in times) * 1e9 / pages
        cpu = statistics.median(c for _, c in times) * 1e9 / pages
        return Figure(name, wall, "ns/4K page", 50, cpu=cpu)

    merge = statistics.median(w for w, _ in merges)
    print_figures(f"bench_split_merge: {args.size} of 2M blocks = {pages} 4K pages, "
                  f"median of {args.repeat}", [
                      per_page("split_blocks (2M -> 4K, one pass)", splits),
                      per_page("read_and_clear_dirty over the split range", scans),
                      per_page("merge_pages (4K -> 2M, one pass)", merges),
                      Figure("naive merge (iova_to_phys per page, remap)",
                             naive * 1e9 / pages, "ns/4K page", cpu=naive_cpu * 1e9 / pages),
                      Figure("single pass speedup over the naive merge", naive / merge, "x",
                             50, at_least=True),
                  ])
    smmu.release_device(master)
    d.free()
    smmu.remove()
    assert mem.frames.allocated_blocks == 0


if __name__ == "__main__":
    main()
