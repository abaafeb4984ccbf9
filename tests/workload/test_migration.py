"""The migration scenario: block-granular overshoot, split/merge precision, missed writes."""

from __future__ import annotations

import pytest

from iommulab.drivers.smmuv3 import SmmuV3Config
from iommulab.sizes import SZ_2M
from iommulab.workload.migration import run_migration


def test_upstream_resends_whole_blocks() -> None:
    r = run_migration("upstream", guest_ram=64 << 20, rounds=2, writes_per_round=50)
    first = r.rounds[0]
    assert first.missed_pages == 0 and first.reported_pages * 4096 % SZ_2M == 0
    assert first.reported_pages > 10 * first.written_pages
    assert r.blocks_split == r.blocks_merged == 0 and r.frames_left == 0


def test_split_tracking_reports_exactly_the_written_pages_before_caching_bites() -> None:
    r = run_migration("split", guest_ram=64 << 20, rounds=3, writes_per_round=50)
    assert r.rounds[0].reported_pages == r.rounds[0].written_pages
    assert r.blocks_split == r.blocks_merged == 32 and r.frames_left == 0


def test_the_sync_fix_or_a_non_caching_iotlb_misses_nothing() -> None:
    for r in (run_migration("sync_fix", guest_ram=64 << 20, rounds=3, writes_per_round=80),
              run_migration("split", guest_ram=64 << 20, rounds=3, writes_per_round=80,
                            config=SmmuV3Config(iotlb_caches_dirty=False))):
        assert all(x.missed_pages == 0 and x.reported_pages == x.written_pages
                   for x in r.rounds)
    upstream = run_migration("upstream", guest_ram=64 << 20, rounds=3, writes_per_round=80)
    assert upstream.missed_pages > 0  # rewritten hot pages go unreported


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="mode"):
        run_migration("bogus")
    with pytest.raises(ValueError, match="multiple of 2M"):
        run_migration(guest_ram=3 << 20)
