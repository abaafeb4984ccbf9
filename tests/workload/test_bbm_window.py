"""Transient faults of a DMA stream during split and merge, by BBM level."""

from __future__ import annotations

import pytest

from iommulab.workload.bbm_window import run_bbm_window


@pytest.mark.parametrize("level", [0, 1, 2])
def test_only_bbm_level_0_faults_and_nothing_is_misrouted(level: int) -> None:
    r = run_bbm_window(level, guest_ram=8 << 20)
    assert r.accesses == 6 * 2048 and r.wrong == 0
    if level == 0:
        # In the break window the IOTLB still serves the blocks warmed before; once it
        # is invalidated every access faults until the replacement is written.
        assert r.faults >= 2 * 2048 and r.events + r.events_lost == r.faults
    else:
        assert r.faults == r.events == r.events_lost == 0
