"""Nested (stage 1 + stage 2) translation through the SMMUv3 model: an IOTLB miss and a hit.

A guest stage-1 table (4 levels, 4K granule, in guest memory, addressed by
IPAs) over a host stage-2 nest parent (4 levels, 4K): the STE is
make_nested_domain_ste's. The miss figure uses an IOTLB of one entry (the qemu
organisation: emptied by each insert) and cycles over 1000 pages, so every
access walks both stages from memory: each of the
4 stage-1 descriptor fetches needs a 4-level stage-2 walk first, and the output
IPA one more, 24 descriptor reads (checked). The hit figure translates one
address whose combined entry stays cached (translate's inlined probe).
Medians of ``--repeat`` batches of ``--calls``, wall and process CPU time.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from _common import Figure, median_wall_cpu, print_figures
from iommulab import Prot
from iommulab.drivers.smmuv3 import (
    HWPT_ALLOC_NEST_PARENT,
    ArmSmmuDevice,
    IotlbConfig,
    SmmuV3Config,
    SmmuV3Hw,
    make_nested_domain_ste,
)
from iommulab.drivers.smmuv3.regs import CD0, CD1, STE0, STE1
from iommulab.kernel import KernelVersion
from iommulab.mem import PhysMem
from iommulab.sizes import SZ_4K

SID, ASID = 0x10, 7
IOVA = 0x10_0000_0000
GRAM_IPA, DATA_IPA = 0x8000_0000, 0x4000_0000
PAGES = 1000
_ADDR = ((1 << 48) - 1) & ~0xFFF


def _platform(iotlb: IotlbConfig) -> SmmuV3Hw:
    """A nested stream: guest tables at GRAM_IPA, PAGES data pages at DATA_IPA."""
    mem = PhysMem("1G")
    hw = SmmuV3Hw(mem, SmmuV3Config(iotlb=iotlb))
    smmu = ArmSmmuDevice(hw, kernel=KernelVersion.parse("7.0"))
    master = smmu.probe_device(SID)
    s2 = smmu.domain_alloc_paging_flags(master, HWPT_ALLOC_NEST_PARENT)
    smmu.attach_dev(s2, master)
    rw = Prot.READ | Prot.WRITE
    gram = mem.alloc_pages(8) << 12  # 1 MiB of guest RAM for the CD and the tables
    data = mem.alloc_pages(10) << 12  # 4 MiB of data pages
    s2.map(GRAM_IPA, gram, 1 << 20, rw)
    s2.map(DATA_IPA + SZ_4K, data + SZ_4K, PAGES * SZ_4K, rw)  # unaligned PA: 4K leaves
    nxt = [GRAM_IPA + SZ_4K]

    def gpa(ipa: int) -> int:
        return gram + ipa - GRAM_IPA

    def table() -> int:
        nxt[0] += SZ_4K
        return nxt[0] - SZ_4K

    pgd = table()
    for i in range(PAGES):
        iova, t = IOVA + i * SZ_4K, pgd
        for level in range(3):
            slot = t + ((iova >> (39 - 9 * level)) & 511) * 8
            desc = mem.read_u64(gpa(slot))
            if not desc & 1:
                desc = table() | 3
                mem.write_u64(gpa(slot), desc)
            t = desc & _ADDR
        mem.write_u64(gpa(t + ((iova >> 12) & 511) * 8),
                      (DATA_IPA + (i + 1) * SZ_4K) | 3 | 1 << 10 | 1 << 6)
    mem.write_u64(gpa(GRAM_IPA), CD0.encode(T0SZ=16, TG0=0, IR0=1, OR0=1, SH0=3, EPD1=1,
                                            V=1, IPS=5, AA64=1, R=1, A=1, ASET=1, ASID=ASID))
    mem.write_u64(gpa(GRAM_IPA) + 8, CD1.encode(TTB0=pgd))
    assert s2.pgtbl is not None and s2.pgtbl.cfg.arm_lpae_s2_cfg is not None
    vste = (STE0.encode(V=1, CONFIG=5, S1CTXPTR=GRAM_IPA), STE1.encode(S1DSS=2))
    smmu._write_ste(SID, make_nested_domain_ste(vste, s2.pgtbl.cfg.arm_lpae_s2_cfg, s2.vmid))
    return hw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    hw = _platform(IotlbConfig.qemu())
    translate = hw.translate
    translate(SID, IOVA)
    calls = range(args.calls)

    def hits() -> None:
        for _ in calls:
            translate(SID, IOVA + 0x123)

    whw = _platform(IotlbConfig("qemu", 1))
    wtranslate = whw.translate
    addrs = [IOVA + (i % PAGES) * SZ_4K for i in calls]
    wtranslate(SID, IOVA + SZ_4K * (PAGES - 1))  # the configuration cached
    reads = whw.stats.descriptor_reads

    def walks() -> None:
        for a in addrs:
            wtranslate(SID, a)

    walks()
    per_walk = (whw.stats.descriptor_reads - reads) / args.calls
    assert per_walk == 24, f"{per_walk} descriptor reads per miss, not 24"
    per = 1e6 / args.calls

    def figure(name: str, run: Callable[[], None], target: float) -> Figure:
        wall, cpu = median_wall_cpu(run, None, args.repeat)
        return Figure(name, wall * per, "us/access", target, cpu=cpu * per)

    hit = figure("nested translate, IOTLB hit", hits, 1)
    miss = figure("nested translate, IOTLB miss (24 reads)", walks, 30)
    assert hit.cpu is not None and miss.cpu is not None
    # on a shared VM the ratio is steadier than either figure (the README scales by it)
    print_figures(f"bench_nested: median of {args.repeat} x {args.calls} accesses", [
        hit, miss, Figure("miss / hit, CPU time", miss.cpu / hit.cpu, "x")])


if __name__ == "__main__":
    main()
