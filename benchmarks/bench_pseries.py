"""pSeries DMA: 4K streaming map/unmap through a 64K-page dynamic DDW, and the direct
window for 1 TiB of RAM.

Streaming: a device whose PE offers only 2^14 TCEs of 64K (a 1 GiB dynamic window, its
own iommu_table) maps 4K buffers NIC-style: a ring of 256 outstanding mappings, each
new map_phys followed by the unmap of the oldest; every map is one H_PUT_TCE, every
unmap one H_STUFF_TCE. Direct window: ``dma_set_mask(64)`` on a 1 TiB guest whose PE
offers a second window of 64K pages (QEMU 10 offers 16M pages too; the offer is kept
at 4K and 64K so that the figure measures 2^24 TCEs): query, create, and 2^24 TCEs
written by H_PUT_TCE_INDIRECT calls of 512 (32768 calls), done by runs, never page by
page.
Target for the direct window: <= 1 s.
"""

from __future__ import annotations

import argparse
import time

from _common import Figure, print_figures
from iommulab import Machine
from iommulab.devices import DMA_BIT_MASK
from iommulab.drivers.pseries import DdwOffer

PAGE_SHIFTS_64K = (12, 16)  # 4K and 64K IO pages: the largest the guest can pick is 64K


def streaming(pairs: int) -> tuple[float, int]:
    """Seconds per map+unmap pair, and the hcalls made."""
    m = Machine("ppc64-pseries", ram="4G")
    dev = m.add_pci_device("0000:00:01.0", ddw=DdwOffer(largest_block=1 << 14,
                                                        page_shifts=PAGE_SHIFTS_64K))
    m.dma.dma_set_mask(dev, DMA_BIT_MASK(64))
    phb = m.pseries.devs[dev.sid].pdn.phb
    before = sum(phb.stats.hcalls.values())
    ring: list[int] = []
    start = time.perf_counter()
    for i in range(pairs):
        ring.append(m.dma.map_phys(dev, (i % 4096) << 12, 4096, cpu=i & 7))
        if len(ring) > 256:
            m.dma.unmap_phys(dev, ring.pop(0), 4096)
    elapsed = time.perf_counter() - start
    for dma in ring:
        m.dma.unmap_phys(dev, dma, 4096)
    return elapsed / pairs, sum(phb.stats.hcalls.values()) - before


def direct_window(ram: str) -> tuple[float, int]:
    m = Machine("ppc64-pseries", ram=ram)
    dev = m.add_pci_device("0000:00:01.0", ddw=DdwOffer(page_shifts=PAGE_SHIFTS_64K))
    start = time.perf_counter()
    m.dma.dma_set_mask(dev, DMA_BIT_MASK(64))
    elapsed = time.perf_counter() - start
    pdev = m.pseries.devs[dev.sid]
    assert pdev.dma_ops_bypass
    return elapsed, pdev.pdn.phb.stats.hcalls["H_PUT_TCE_INDIRECT"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=20000)
    ap.add_argument("--ram", default="1T")
    args = ap.parse_args()
    per_pair, hcalls = streaming(args.pairs)
    t_direct, calls = direct_window(args.ram)
    print_figures("bench_pseries", [
        Figure(f"4K map+unmap via 64K-page DDW table ({hcalls} hcalls)", per_pair * 1e6,
               "us/pair"),
        Figure(f"direct DDW for {args.ram} RAM ({calls} H_PUT_TCE_INDIRECT)", t_direct, "s",
               1.0),
    ])


if __name__ == "__main__":
    main()
