"""Live migration of a VM with an assigned device: what dirty tracking makes it resend.

Guest RAM is mapped with 2M blocks in a dirty-tracking stage-1 domain of
the SMMUv3 model. Each round a NIC-like device DMAs packets into guest RAM
(mostly into a hot set of ring pages, some anywhere), then the VMM reads
and clears the dirty bits the way iommufd does and resends every page
reported dirty. The ground truth is the set of pages the device actually
wrote, so the report shows both the overshoot of block-granular tracking
and any write the tracking missed.

Modes: ``upstream`` (Linux as it is: blocks reported whole), ``split``
(the lab's ``set_dirty_tracking(..., granule=SZ_4K)``, which splits blocks
when tracking starts and merges them when it stops); ``sync_fix`` also
makes ``iotlb_sync`` invalidate what the dirty read cleaned (lab option).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..devices import DmaDevice
from ..drivers.smmuv3 import HWPT_ALLOC_DIRTY_TRACKING, ArmSmmuDevice, SmmuV3Config, SmmuV3Hw
from ..mem import PhysMem
from ..prot import Prot
from ..sizes import SZ_2M, SZ_4K

__all__ = ["MigrationResult", "MigrationRound", "run_migration"]

GUEST_IOVA = 0x4000_0000  # guest physical base as the device sees it
_HOT_PAGES = 64  # rx/tx rings and buffers the device keeps rewriting
_HOT_SHARE = 0.7


@dataclass(frozen=True)
class MigrationRound:
    written_pages: int  # ground truth: 4K pages the device wrote this round
    written_bytes: int
    reported_pages: int  # pages the dirty bitmap said to resend
    missed_pages: int  # written but not reported


@dataclass
class MigrationResult:
    mode: str
    guest_ram: int
    seed: int
    rounds: list[MigrationRound] = field(default_factory=list)
    blocks_split: int = 0
    blocks_merged: int = 0
    tlbi_commands: int = 0
    frames_left: int = -1  # frames still allocated after teardown (0: nothing leaked)
    state: dict[str, object] | None = None  # the domain before tracking stopped, if asked

    @property
    def reported_bytes(self) -> int:
        return sum(r.reported_pages for r in self.rounds) * SZ_4K

    @property
    def missed_pages(self) -> int:
        return sum(r.missed_pages for r in self.rounds)


def run_migration(mode: str = "upstream", *, guest_ram: int = 256 << 20, rounds: int = 4,
                  writes_per_round: int = 300, seed: int = 0, bbm_level: int | None = None,
                  config: SmmuV3Config | None = None, save_state: bool = False
                  ) -> MigrationResult:
    """Run ``rounds`` dirty-tracking rounds of a device writing into guest RAM; ``bbm_level``
    is the break-before-make level of the split and merge (None: the highest supported)."""
    if mode not in ("upstream", "split", "sync_fix"):
        raise ValueError(f"mode must be upstream, split or sync_fix, not {mode!r}")
    if guest_ram % SZ_2M or guest_ram <= 0:
        raise ValueError(f"guest RAM must be a positive multiple of 2M, not {guest_ram:#x}")
    pages = guest_ram // SZ_4K
    order = (2 * guest_ram // SZ_4K - 1).bit_length()  # room for a 2M (not 1G) aligned run
    mem = PhysMem(max(4 << 30, 4 << order << 12))
    hw = SmmuV3Hw(mem, config or SmmuV3Config())
    smmu = ArmSmmuDevice(hw, sync_dirty_clear=mode == "sync_fix")
    master = smmu.probe_device(0x10)
    nic = DmaDevice("nic", mem, hw, 0x10)
    domain = smmu.domain_alloc_paging_flags(master, HWPT_ALLOC_DIRTY_TRACKING)
    smmu.attach_dev(domain, master)
    pfn = mem.alloc_pages(order)
    guest_pa = (pfn << 12) + SZ_2M  # 2M aligned, not 1G: the domain uses 2M blocks
    domain.map(GUEST_IOVA, guest_pa, guest_ram, Prot.READ | Prot.WRITE | Prot.CACHE)
    assert domain.pgtbl is not None
    result = MigrationResult(mode, guest_ram, seed)
    rng = np.random.default_rng(seed)
    hot = rng.choice(pages, size=min(_HOT_PAGES, pages), replace=False)
    commands_before = sum(v for k, v in hw.stats.commands.items() if k.startswith("TLBI"))

    domain.read_and_clear_dirty(GUEST_IOVA, guest_ram)  # iommufd clears before enabling
    result.blocks_split = domain.set_dirty_tracking(
        True, granule=SZ_4K if mode != "upstream" else None, bbm_level=bbm_level)
    for _ in range(rounds):
        written: set[int] = set()
        nbytes = 0
        for _ in range(writes_per_round):
            page = int(hot[rng.integers(len(hot))] if rng.random() < _HOT_SHARE
                       else rng.integers(pages))
            length = int(rng.integers(64, 1519))
            offset = int(rng.integers(0, SZ_4K - 64))
            start = page * SZ_4K + offset
            length = min(length, guest_ram - start)
            nic.dma_write(GUEST_IOVA + start, rng.bytes(length))
            written.update(range(start // SZ_4K, (start + length - 1) // SZ_4K + 1))
            nbytes += length
        bitmap = domain.read_and_clear_dirty(GUEST_IOVA, guest_ram)
        reported = {i for i in written if bitmap.is_set(GUEST_IOVA + i * SZ_4K)}
        result.rounds.append(MigrationRound(len(written), nbytes, bitmap.count(),
                                            len(written) - len(reported)))
    if save_state:
        from ..inspect import save_domain
        result.state = save_domain(domain, name=f"{mode} while tracking")
    result.blocks_merged = domain.set_dirty_tracking(False, bbm_level=bbm_level)
    result.tlbi_commands = sum(v for k, v in hw.stats.commands.items()
                               if k.startswith("TLBI")) - commands_before

    smmu.release_device(master)
    domain.free()
    smmu.remove()
    mem.free_pages(pfn, order)
    result.frames_left = mem.frames.allocated_blocks
    return result
