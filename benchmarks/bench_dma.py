"""4K dma_map_page + dma_unmap_page through dma-iommu and the SMMUv3 model, lazy and strict.

The rcache is warm (the IOVA comes back from the CPU's magazine), the page
tables exist, and in lazy mode the flush queue fills and flushes as it
would; strict mode invalidates and syncs on every unmap. Each figure is
given as the best and the median of ``--repeat`` batches of ``--calls``
pairs: these are microsecond calls, and on a shared VM the steal time of
a batch only ever adds to them, so the best batch is the cost of the code
(timeit's convention) and the median shows what a busy machine gives.
The target is shown against both; process CPU time is printed beside each.
Without attrs the calls take dma-iommu's flattened single-granule path
(map_phys_single/unmap_phys_single).
"""

from __future__ import annotations

import argparse
import statistics

from _common import Figure, print_figures, run_wall_cpu
from iommulab.clock import Clock
from iommulab.devices import DmaDevice
from iommulab.dma import DmaDirection, dma_map_page, dma_unmap_page
from iommulab.drivers.smmuv3 import ArmSmmuDevice, SmmuV3Config, SmmuV3Hw
from iommulab.iommu import IommuCore
from iommulab.mem import PhysMem


def pair_us(strict: bool, calls: int, repeat: int) -> tuple[float, float, float, float]:
    """Best and median microseconds per pair, wall then process CPU."""
    mem = PhysMem("1G")
    hw = SmmuV3Hw(mem, SmmuV3Config())
    smmu = ArmSmmuDevice(hw)
    core = IommuCore(smmu, clock=Clock(), strict=strict)
    dev = DmaDevice("nic", mem, hw, 0x10)
    core.probe_device(dev)
    pa = mem.alloc_pages(0) << 12
    to_dev = DmaDirection.TO_DEVICE
    for _ in range(1000):  # warm the rcache and the tables
        dma_unmap_page(dev, dma_map_page(dev, pa, 1500, to_dev), 1500, to_dev)
    loop = range(calls)

    def run() -> None:
        for _ in loop:
            dma_unmap_page(dev, dma_map_page(dev, pa, 1500, to_dev), 1500, to_dev)

    pairs = run_wall_cpu(run, None, repeat)
    core.release_device(dev)
    smmu.remove()
    mem.free_pages(pa >> 12, 0)
    per = 1e6 / calls
    walls, cpus = [w for w, _ in pairs], [c for _, c in pairs]
    return (min(walls) * per, statistics.median(walls) * per, min(cpus) * per,
            statistics.median(cpus) * per)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=5_000)
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()
    lb, lm, lbc, lmc = pair_us(False, args.calls, args.repeat)
    sb, sm, sbc, smc = pair_us(True, args.calls, args.repeat)
    print_figures(f"bench_dma: best and median of {args.repeat} batches of {args.calls} pairs", [
        Figure("lazy: dma_map_page + dma_unmap_page (4K, warm), best", lb, "us/pair", 2.5,
               cpu=lbc),
        Figure("lazy: the same, median", lm, "us/pair", 2.5, cpu=lmc),
        Figure("strict: dma_map_page + dma_unmap_page (4K), best", sb, "us/pair", cpu=sbc),
        Figure("strict: the same, median", sm, "us/pair", cpu=smc),
    ])


if __name__ == "__main__":
    main()
