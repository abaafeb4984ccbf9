"""The nested-migration workload: a nested guest's DMA under dirty tracking of the nest
parent, on x86-vtd.

The ground truth here does not come from the workload's bookkeeping: the guest's RAM is
read through the VMM's mapping before and after each round's DMA, and the 4K pages
whose bytes changed are what the device and the unit's A/D updates wrote."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from iommulab.sizes import SZ_2M, SZ_4K
from iommulab.workload.nested_migration import GPA_BASE, run_nested_migration

QUICK_RAM = 64 << 20
SMALL_RAM = 16 << 20  # the diffed runs read all of it twice a round


def _changed_pages(guest_ram: int) -> tuple[list[frozenset[int]], Callable[..., None]]:
    """A DMA hook that diffs guest RAM around each round: the pages that changed."""
    rounds: list[frozenset[int]] = []
    before: list[np.ndarray] = []

    def hook(phase: str, read: Callable[[int, int], bytes]) -> None:
        now = np.frombuffer(read(GPA_BASE, guest_ram), np.uint8).reshape(-1, SZ_4K)
        if phase == "before":
            before[:] = [now]
        else:
            rounds.append(frozenset(np.flatnonzero((now != before[0]).any(axis=1)).tolist()))

    return rounds, hook


@pytest.mark.parametrize(("mode", "guest_ad", "kernel"), [
    (mode, ad, "6.12") for mode in ("upstream", "split") for ad in ("hw", "preset")] + [
    ("upstream", "hw", "7.0"), ("split", "hw", "7.0")])
def test_reports_against_the_bytes_that_changed_in_guest_ram(mode: str, guest_ad: str,
                                                             kernel: str) -> None:
    """Each round: the workload's ground truth (data pages and A/D table pages) is exactly
    the pages whose bytes changed; split reports exactly those, upstream their whole 2M
    blocks; nothing is missed. A/D table pages are pages of the guest's table pool (the
    first 2M), and there are some only when the guest leaves A and D to the unit."""
    changed, hook = _changed_pages(SMALL_RAM)
    r = run_nested_migration(mode, guest_ad=guest_ad, kernel=kernel, guest_ram=SMALL_RAM,
                             rounds=3,
                             writes_per_round=80, ring=48, churn=50, seed=7, on_dma=hook)
    assert len(changed) == len(r.rounds) == 3
    for truth, rnd in zip(changed, r.rounds, strict=True):
        tables = frozenset(pg for pg in truth if pg < SZ_2M // SZ_4K)
        assert rnd.written | rnd.tables == truth
        assert rnd.tables == tables and (bool(tables) == (guest_ad == "hw"))
        if mode == "split":
            assert rnd.reported == truth
        else:
            blocks = {pg // 512 for pg in truth}
            assert rnd.reported == frozenset(b * 512 + i for b in blocks for i in range(512))
    assert r.missed_pages == 0
    assert r.pins_left == 0 and r.iommu_pages_left == 0


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_split_and_merge_cover_guest_ram_and_cost_one_invalidation_each(kernel: str) -> None:
    """The lab's split turns every 2M block of the parent into 4K pages when tracking
    starts, the merge puts them back when it stops (blocks the device touched included:
    the unit's A and D do not stop it), each with one flush more than upstream's."""
    up = run_nested_migration("upstream", kernel=kernel, guest_ram=QUICK_RAM, rounds=1,
                              writes_per_round=20, ring=16)
    split = run_nested_migration("split", kernel=kernel, guest_ram=QUICK_RAM, rounds=1,
                                 writes_per_round=20, ring=16)
    assert split.kernel == kernel
    assert (up.blocks_split, up.blocks_merged) == (0, 0)
    assert split.blocks_split == split.blocks_merged == QUICK_RAM // SZ_2M
    assert split.start_invalidations == up.start_invalidations + 1
    assert split.stop_invalidations == up.stop_invalidations + 1
    assert up.rounds[0].read_invalidations >= 1  # the sync after clearing flushes the DID
    assert split.missed_pages == up.missed_pages == 0
    assert split.pins_left == split.iommu_pages_left == 0


def test_guest_invalidations_follow_its_remaps() -> None:
    r = run_nested_migration("split", guest_ram=QUICK_RAM, rounds=3, writes_per_round=40,
                             ring=32, churn=25)
    assert [x.guest_unmaps for x in r.rounds] == [0, 8, 8]  # 25% of the 32 slots used
    assert all(x.guest_maps == x.guest_unmaps == x.guest_inv_entries ==
               x.guest_invalidations for x in r.rounds)
