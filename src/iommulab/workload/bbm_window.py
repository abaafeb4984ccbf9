"""Lab: what a device sees while blocks are split and merged, at each break-before-make level.

A stage-1 domain maps guest RAM with 2M blocks; dirty tracking at 4K splits
them and stopping it merges them back. Between the steps of each (after
the entries are written, after the invalidation) and once more after, a
device stream translates an address in every 4K page of guest RAM, half of
them as writes. The result counts the accesses, the transient faults, and
any access that reached a physical address other than the one mapped
(which must never happen). BBM level 0 faults in its window; levels 1 and
2 replace entries in place and must not.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..drivers.smmuv3 import HWPT_ALLOC_DIRTY_TRACKING, ArmSmmuDevice, SmmuV3Config, SmmuV3Hw
from ..errors import DmaFault
from ..mem import PhysMem
from ..prot import Prot
from ..sizes import SZ_2M, SZ_4K

__all__ = ["BbmWindowResult", "run_bbm_window"]

_IOVA = 0x8000_0000
_PA = 0x2_0020_0000  # 2M aligned, not 1G: 2M blocks; the stream translates, it moves no data


@dataclass(frozen=True)
class BbmWindowResult:
    bbm_level: int
    guest_ram: int
    accesses: int
    faults: int  # transient translation faults the stream saw
    wrong: int  # accesses translated to another physical address than mapped
    events: int  # fault events the SMMU queued
    events_lost: int  # fault events dropped because the event queue was full


def run_bbm_window(bbm_level: int, *, guest_ram: int = 64 << 20) -> BbmWindowResult:
    """Split and merge ``guest_ram`` of 2M blocks at ``bbm_level`` under a DMA stream."""
    mem = PhysMem("1G")
    hw = SmmuV3Hw(mem, SmmuV3Config(bbml=2))
    smmu = ArmSmmuDevice(hw)
    master = smmu.probe_device(0x10)
    domain = smmu.domain_alloc_paging_flags(master, HWPT_ALLOC_DIRTY_TRACKING)
    smmu.attach_dev(domain, master)
    domain.map(_IOVA, _PA, guest_ram, Prot.READ | Prot.WRITE)
    counts = {"accesses": 0, "faults": 0, "wrong": 0}

    def stream(_step: str) -> None:
        for off in range(0, guest_ram, SZ_4K):
            counts["accesses"] += 1
            try:
                pa, _ = hw.translate_run(0x10, _IOVA + off + 8, bool(off & SZ_4K))
            except DmaFault:
                counts["faults"] += 1
                continue
            counts["wrong"] += pa != _PA + off + 8

    for off in range(0, guest_ram, SZ_2M):  # the IOTLB holds some blocks when it starts
        hw.translate_run(0x10, _IOVA + off, False)
    domain.set_dirty_tracking(True, granule=SZ_4K, bbm_level=bbm_level, on_step=stream)
    stream("split")
    domain.set_dirty_tracking(False, bbm_level=bbm_level, on_step=stream)
    stream("merged")
    events = len(smmu.handle_events())
    lost = hw.stats.events_lost
    smmu.release_device(master)
    domain.free()
    smmu.remove()
    return BbmWindowResult(bbm_level, guest_ram, counts["accesses"], counts["faults"],
                           counts["wrong"], events, lost)
