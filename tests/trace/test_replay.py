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
    """The top 4M of a 46-bit space (i915 on VT-d): fine on a 46- or 48-bit unit; a 39-bit
    one refuses it with 6.12 intel_iommu_map's EFAULT or 7.0 pt_check_range's ERANGE."""
    trace = parse_trace_file(FIXTURES / "i915_high_iova.txt")
    for width in (46, 48):
        assert replay(trace, address_width=width).headline["disagreements"] == 0
    assert replay(trace).headline["task_gem_exec_gttfil-1010.iopte_2M"] == 2
    for kernel, err in (("6.12", "EFAULT"), ("7.0", "ERANGE")):
        (d,) = replay(trace, address_width=39, kernel=kernel).details["disagreements"]
        assert d["kind"] == "map refused" and err in d["text"]


def test_an_unmap_from_the_start_of_a_superpage_agrees_on_vtd() -> None:
    """intel_iommu_unmap (6.12, "Cope with horrid API") and __unmap_range (7.0) remove the
    whole 2M page a 4K unmap starts at and report 2M: a trace saying so agrees on x86-vtd
    with either kernel; one that says 4K (a kernel that split it) does not."""
    def unmap_4k_of_2m(unmapped: int) -> list[str]:
        return [frame(1, "map: IOMMU: iova=0x0000000000200000 - 0x0000000000400000 "
                         "paddr=0x0000000040200000 size=2097152"),
                frame(2, "unmap: IOMMU: iova=0x0000000000200000 - 0x0000000000201000 "
                         f"size=4096 unmapped_size={unmapped}")]
    for kernel in ("6.12", "7.0"):
        assert replay(parse_trace(unmap_4k_of_2m(2097152)), kernel=kernel).headline[
            "disagreements"] == 0
        (d,) = replay(parse_trace(unmap_4k_of_2m(4096)), kernel=kernel).details[
            "disagreements"]
        assert d["kind"] == "unmapped_size differs" and "model unmapped 2097152" in d["text"]
    # the LPAE table refuses to cut a large IOPTE (Linux 6.13+) and unmaps 0
    (d,) = replay(parse_trace(unmap_4k_of_2m(4096)), platform="arm64-smmuv3",
                  kernel="7.0").details["disagreements"]
    assert "model unmapped 0" in d["text"]


def test_a_map_over_a_live_mapping_per_kernel() -> None:
    """6.12 __domain_mapping keeps the old PTE with a pr_crit + WARN and succeeds, so the
    trace's map agrees and the WARN is noted; 7.0 refuses it (EADDRINUSE)."""
    t = parse_trace([
        frame(3, "map: IOMMU: iova=0x0000000000600000 - 0x0000000000601000 "
                 "paddr=0x0000000050000000 size=4096"),
        frame(4, "map: IOMMU: iova=0x0000000000600000 - 0x0000000000601000 "
                 "paddr=0x0000000050000000 size=4096"),
    ])
    old = replay(t, kernel="6.12")
    assert old.headline["disagreements"] == 0
    assert any("would have warned: ERROR: DMA PTE for vPFN already set (1x)" in n
               for n in old.notes)
    (d,) = replay(t, kernel="7.0").details["disagreements"]
    assert (d["line"], d["kind"]) == (2, "map refused") and "EADDRINUSE" in d["text"]


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
    with pytest.raises(UsageError, match=r"take 32 to 57 bits"):
        replay(trace, address_width=58)
    with pytest.raises(UsageError, match=r"--kernel: kernel '6.1'"):
        replay(trace, kernel="6.1")
    with pytest.raises(UsageError, match="not ppc64-pseries"):
        replay(trace, platform="ppc64-pseries")
