"""A replay's timeline: maps, unmaps and faults per device over time, in the JSON report."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest

from iommulab.report.json_report import load_schema, report_document
from iommulab.scenarios import run_scenario
from iommulab.trace import parse_trace, parse_trace_file, replay

FIXTURES = Path(__file__).parent / "fixtures"


def test_ath12k_timeline_holds_the_map_the_unmap_and_the_fault() -> None:
    """Linux 6.12.35 on AMD-Vi: a 512K coherent buffer mapped at 4.878076 s, freed at
    327.747766 s, and the device faulting on it at 327.753942 s (line 19)."""
    doc = report_document(replay(parse_trace_file(FIXTURES / "ath12k_use_after_unmap.txt")))
    jsonschema.validate(doc, load_schema())
    tl = doc["timeline"]
    assert (tl["clock"], tl["start"], tl["end"]) == ("seconds", 4.878076, 327.753942)
    (lane,) = tl["lanes"]
    assert (lane["name"], lane["device"]) == ("0000:c2:00.0", "0000:c2:00.0")
    bins = tl["bins"]
    assert lane["maps"] == [1] + [0] * (bins - 1)
    assert lane["unmaps"] == [0] * (bins - 1) + [1]
    assert lane["faults"] == [0] * (bins - 1) + [1]
    assert tl["fault_events"] == [{"lane": "0000:c2:00.0", "t": 327.753942,
                                   "iova": 0xfe980000, "line": 19, "agreed": True}]
    # lazy: the IOVA still sits in the flush queue, the model does not confirm the fault
    lazy = replay(parse_trace_file(FIXTURES / "ath12k_use_after_unmap.txt"),
                  strict_invalidation=False)
    assert lazy.timeline is not None
    assert [f["agreed"] for f in lazy.timeline["fault_events"]] == [False]


def test_faults_of_a_device_with_no_mappings_get_their_own_lane() -> None:
    """amd_iommu faults of a device whose mappings the trace does not show."""
    tl = replay(parse_trace_file(FIXTURES / "amdvi_fault_burst.txt")).timeline
    assert tl is not None
    (lane,) = tl["lanes"]
    assert lane["name"] == "0000:05:00.0" and sum(lane["maps"]) == 0
    assert sum(lane["faults"]) == tl["faults_total"] == len(tl["fault_events"]) == 6
    assert not any(f["agreed"] for f in tl["fault_events"])


def frame(n: int, body: str, task: str = "fio-7") -> str:
    return f"  {task} [001] ..... {100 + n / 1e6:.6f}: {body}"


def test_one_lane_per_device_in_order_of_appearance() -> None:
    lines = []
    for n, (dev, iova) in enumerate((("0000:02:00.0", 0x1000), ("0000:03:00.0", 0x2000),
                                     ("0000:02:00.0", 0x3000))):
        lines.append(frame(2 * n, f"map: IOMMU: iova=0x{iova:016x} - 0x{iova + 4096:016x} "
                                  f"paddr=0x{0x10000 + iova:016x} size=4096"))
        lines.append(frame(2 * n + 1, f"dma_map_phys: {dev} dir=TO_DEVICE dma_addr={iova:x} "
                                      f"size=4096 phys_addr={0x10000 + iova:x} attrs="))
    tl = replay(parse_trace(lines)).timeline
    assert tl is not None
    assert [(lane["name"], sum(lane["maps"])) for lane in tl["lanes"]] == [
        ("0000:02:00.0", 2), ("0000:03:00.0", 1)]
    assert tl["lanes"][0]["maps"][0] == 1 and tl["lanes"][0]["maps"][-1] == 1


def test_a_scenario_report_has_no_timeline_and_both_schemas_load() -> None:
    doc = report_document(run_scenario("ddw", quick=True))
    assert doc["version"] == 2 and doc["timeline"] is None
    jsonschema.validate(doc, load_schema())
    assert doc["plots"][0]["log"] is True  # 1 to 256 hcalls: decided from the data
    # version 1 is version 2 without the timeline; a strict v1 reader refuses v2
    v1 = {k: v for k, v in doc.items() if k != "timeline"} | {"version": 1}
    jsonschema.validate(v1, load_schema(1))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, load_schema(1))
    with pytest.raises(ValueError, match="no report schema version 3"):
        load_schema(3)


def test_faults_beyond_the_listed_ones_are_still_counted_and_drawn() -> None:
    from iommulab.report.timeline_svg import svg_timeline
    from iommulab.trace.timeline import TimelineRecorder

    rec = TimelineRecorder()
    for n in range(5):
        rec.add("fault", "0000:05:00.0", "0000:05:00.0", t=1.0 + n, order=n, iova=n << 12,
                line=n + 1, agreed=False)
    doc = rec.document(bins=4, max_faults=2)
    assert doc["faults_total"] == 5 and len(doc["fault_events"]) == 2
    assert doc["lanes"][0]["faults"] == [1, 1, 1, 2]
    svg = svg_timeline(doc)
    assert svg.count('class="fault"') == 2 and svg.count('class="faults"') == 4
    assert "<title>2 faults</title>" in svg and "<title>1 fault</title>" in svg
