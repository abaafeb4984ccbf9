"""Device accesses through the SMMUv3 model: an IOTLB hit, a walk, a 64-byte DMA read.

A stage-1 domain maps 64 MiB with 4K pages; the hit figure translates one
address repeatedly (the IOTLB entry stays), the miss figure translates
addresses of a 2-entry LRU IOTLB in turn (every access walks four levels
from memory). Medians of ``--repeat`` batches of ``--calls``, wall and process
CPU time. A hit takes SmmuV3Hw.translate's inlined IOTLB probe.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from _common import Figure, median_wall_cpu, print_figures
from iommulab import Prot
from iommulab.devices import DmaDevice
from iommulab.drivers.smmuv3 import ArmSmmuDevice, IotlbConfig, SmmuV3Config, SmmuV3Hw
from iommulab.mem import PhysMem
from iommulab.sizes import SZ_4K

IOVA = 0x10_0000_0000
SIZE = 64 << 20


def _platform(iotlb: IotlbConfig) -> tuple[SmmuV3Hw, DmaDevice]:
    mem = PhysMem("1G")
    hw = SmmuV3Hw(mem, SmmuV3Config(iotlb=iotlb))
    smmu = ArmSmmuDevice(hw)
    master = smmu.probe_device(0x10)
    d = smmu.domain_alloc_paging_flags(master)
    smmu.attach_dev(d, master)
    pa = mem.alloc_pages(14) << 12  # 64 MiB
    d.map(IOVA, pa + SZ_4K, SIZE - SZ_4K, Prot.READ | Prot.WRITE)  # unaligned PA: 4K pages
    return hw, DmaDevice("bench", mem, hw, 0x10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    calls = range(args.calls)
    hw, dev = _platform(IotlbConfig.qemu())
    translate, read = hw.translate, dev.dma_read
    translate(0x10, IOVA)

    def hits() -> None:
        for _ in calls:
            translate(0x10, IOVA + 0x123)

    def dma_hits() -> None:
        for _ in calls:
            read(IOVA + 0x40, 64)

    whw, _ = _platform(IotlbConfig.tiny())
    wtranslate = whw.translate
    addrs = [IOVA + (i % 1000) * SZ_4K for i in calls]

    def walks() -> None:
        for a in addrs:
            wtranslate(0x10, a)

    per = 1e6 / args.calls

    def figure(name: str, run: Callable[[], None], target: float | None = None) -> Figure:
        wall, cpu = median_wall_cpu(run, None, args.repeat)
        return Figure(name, wall * per, "us/access", target, cpu=cpu * per)

    print_figures(f"bench_translate: median of {args.repeat} x {args.calls} accesses", [
        figure("translate, IOTLB hit", hits, 0.5),
        figure("64-byte DMA read, IOTLB hit", dma_hits, 2),
        figure("translate, IOTLB miss (4-level walk)", walks),
    ])


if __name__ == "__main__":
    main()
