"""Replay through the model: attribution, agreement and each kind of disagreement."""

from __future__ import annotations

from pathlib import Path

import pytest

from iommulab.scenarios import UsageError
from iommulab.trace import parse_trace, parse_trace_file, replay

FIXTURES = Path(__file__).parent / "fixtures"


def frame(n: int, body: str, task: str = "fio-7", cpu: int = 1) -> str:
    return f"  {task} [{cpu:03d}] ..... {100 + n / 1e6:.6f}: {body}"


def test_ath12k_fault_after_unmap_agrees_strict_and_is_missed_lazy() -> None:
    trace = parse_trace_file(FIXTURES / "ath12k_use_after_unmap.txt")
    strict = replay(trace)
    h = strict.headline
    assert h["streams"] == 1 and h["disagreements"] == 0
    assert h["0000:c2:00.0.faults_agreed"] == 1
    assert h["0000:c2:00.0.iopte_4K"] == 128  # 512K at an IOVA with no 2M alignment
    assert h["unattributed_map_unmap"] == 0 and h["unparsed_lines"] == 1
    lazy = replay(trace, strict_invalidation=False)
    (d,) = lazy.details["disagreements"]
    assert d["kind"] == "fault the model misses" and d["line"] == 19


def test_high_iova_refused_by_a_39_bit_domain() -> None:
    trace = parse_trace_file(FIXTURES / "i915_high_iova.txt")
    assert replay(trace).headline["disagreements"] == 0
    assert replay(trace).headline["task_gem_exec_gttfil-1010.iopte_2M"] == 2
    (d,) = replay(trace, address_width=39).details["disagreements"]
    assert d["kind"] == "map refused" and "ERANGE" in d["text"]


def test_unmapped_size_that_differs_and_a_map_over_a_live_mapping() -> None:
    t = parse_trace([
        frame(1, "map: IOMMU: iova=0x0000000000200000 - 0x0000000000400000 "
                 "paddr=0x0000000040200000 size=2097152"),
        # the trace's kernel unmapped 4K of the 2M page; the model refuses to cut a large
        # IOPTE (as __arm_lpae_unmap has since the split-on-unmap removal) and unmaps 0
        frame(2, "unmap: IOMMU: iova=0x0000000000200000 - 0x0000000000201000 size=4096 "
                 "unmapped_size=4096"),
        frame(3, "map: IOMMU: iova=0x0000000000600000 - 0x0000000000601000 "
                 "paddr=0x0000000050000000 size=4096"),
        frame(4, "map: IOMMU: iova=0x0000000000600000 - 0x0000000000601000 "
                 "paddr=0x0000000050000000 size=4096"),
    ])
    r = replay(t)
    kinds = [(d["line"], d["kind"]) for d in r.details["disagreements"]]
    assert kinds == [(2, "unmapped_size differs"), (4, "map refused")]
    assert "model unmapped 0" in r.details["disagreements"][0]["text"]
    assert "EEXIST" in r.details["disagreements"][1]["text"]


def test_attribution_by_pairing_by_mapping_and_by_task() -> None:
    t = parse_trace([
        frame(1, "map: IOMMU: iova=0x00000000ffffe000 - 0x00000000fffff000 "
                 "paddr=0x0000000012345000 size=4096"),
        frame(2, "dma_map_phys: 0000:01:00.0 dir=FROM_DEVICE dma_addr=ffffe800 size=1500 "
                 "phys_addr=12345800 attrs="),
        # another task unmaps it: no dma event here, but one stream holds the range
        frame(3, "unmap: IOMMU: iova=0x00000000ffffe000 - 0x00000000fffff000 size=4096 "
                 "unmapped_size=4096", task="kworker/1:0-9"),
        # the same task maps again with no dma event: the task paired with one device
        frame(4, "map: IOMMU: iova=0x00000000ffffd000 - 0x00000000ffffe000 "
                 "paddr=0x0000000012346000 size=4096"),
        # a VMM mapping guest RAM: nothing names a device
        frame(5, "map: IOMMU: iova=0x0000000000000000 - 0x0000000000200000 "
                 "paddr=0x0000000080000000 size=2097152", task="qemu-kvm-4575"),
    ])
    r = replay(t)
    rows = {row[0]: row[-1] for tbl in r.tables if tbl.title == "replayed streams"
            for row in tbl.rows}
    assert rows["0000:01:00.0"] == ("paired with a dma event 1; unmap of a range one stream "
                                    "had mapped 1; task paired with one device 1")
    assert rows["task qemu-kvm-4575"] == "not attributed to a device 1"
    assert r.headline["unattributed_map_unmap"] == 1
    assert r.headline["task_qemu-kvm-4575.iopte_2M"] == 1


def test_a_sync_after_unmap_is_a_fault_the_model_predicts() -> None:
    t = parse_trace([
        frame(1, "map: IOMMU: iova=0x00000000ffffe000 - 0x00000000fffff000 "
                 "paddr=0x0000000012345000 size=4096"),
        frame(2, "dma_map_phys: 0000:01:00.0 dir=FROM_DEVICE dma_addr=ffffe000 size=4096 "
                 "phys_addr=12345000 attrs="),
        frame(3, "unmap: IOMMU: iova=0x00000000ffffe000 - 0x00000000fffff000 size=4096 "
                 "unmapped_size=4096"),
        frame(4, "dma_unmap_phys: 0000:01:00.0 dir=FROM_DEVICE dma_addr=ffffe000 size=4096 "
                 "attrs="),
        frame(5, "dma_sync_single_for_cpu: 0000:01:00.0 dir=FROM_DEVICE dma_addr=ffffe000 "
                 "size=4096"),
    ])
    ds = replay(t).details["disagreements"]
    # not the dma_unmap_phys at line 4: dma_unmap_phys traces after the iommu unmap
    assert [(d["line"], d["kind"]) for d in ds] == [(5, "fault the model predicts")]


def test_group_and_attach_events_and_faults_with_no_mapping() -> None:
    r = replay(parse_trace_file(FIXTURES / "dma_formats_constructed.txt"))
    devices = next(t for t in r.tables if t.title == "devices")
    assert devices.rows == [["0000:02:00.0", 7, "attach 1"]]
    faults = replay(parse_trace_file(FIXTURES / "amdvi_fault_burst.txt"))
    assert faults.headline["unattributed_faults"] == 6


def test_replay_saves_states_and_checks_its_options() -> None:
    trace = parse_trace_file(FIXTURES / "ath12k_use_after_unmap.txt")
    r = replay(trace, save_states=True, platform="arm64-smmuv3")
    assert set(r.states) == {"0000:c2:00.0"}
    with pytest.raises(UsageError, match=r"take 39, 48"):
        replay(trace, address_width=40)
    with pytest.raises(UsageError, match="not ppc64-pseries"):
        replay(trace, platform="ppc64-pseries")
