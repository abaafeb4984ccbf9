"""Streaming DMA strict vs lazy: invalidation counts, the stale window, sub-page exposure."""

import pytest

from iommulab.workload.streaming import run_streaming


def test_strict_has_no_stale_window() -> None:
    r = run_streaming("strict", packets=300)
    assert r.iotlb_syncs == 300 and r.stale_reads == 0 and r.stale_ns_max == 0
    assert r.tlbi_commands >= 300


def test_lazy_window_is_bounded_by_the_flush_queue() -> None:
    r = run_streaming("lazy", packets=600, interval_ns=5_000)
    assert r.iotlb_syncs == 0
    assert r.stale_pages_max == 255  # the ring's capacity: one slot stays empty
    # a ring fills in 255 packets; at most 12 ms (the 10 ms timer at HZ=250) at the end
    assert r.flush_all >= 600 // 256 and r.stale_ns_max <= 12_000_000
    assert r.tlbi_commands < 600 // 50


def test_slow_stream_is_flushed_by_the_timer() -> None:
    r = run_streaming("lazy", packets=50, interval_ns=1_000_000)
    assert r.stale_pages_max <= 13  # about one timeout's worth of packets
    assert 0 < r.stale_ns_max <= 12_000_000


def test_subpage_exposure() -> None:
    assert run_streaming("strict", packets=10, buffer_size=1536).exposed_bytes == 10 * 2560
    assert run_streaming("strict", packets=10, buffer_size=4096).exposed_bytes == 0


def test_bad_mode() -> None:
    with pytest.raises(ValueError, match="mode must be"):
        run_streaming("eager")
