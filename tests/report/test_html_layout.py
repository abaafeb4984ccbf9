"""The HTML report's layout measured in headless Chromium: every label inside its SVG,
plots above the headline table, log axes on data that spans decades, a replay's timeline.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import pytest

from iommulab.report.html import render_html
from iommulab.scenarios import SCENARIOS, Plot, ScenarioResult, run_scenario
from iommulab.trace import parse_trace_file, replay

from .browser import inside, measure, overlap

FIXTURES = Path(__file__).parents[1] / "trace" / "fixtures"
REPLAYED = sorted(p for p in FIXTURES.glob("*.txt") if p.name != "malformed.txt")


def _long_labels() -> ScenarioResult:
    """Long category and series names, many series: rotation and legend wrapping."""
    r = ScenarioResult("long", "long labels", "x86-vtd", 0, True, {})
    cats = [f"a rather long category name number {i} (WWW MMM)" for i in range(7)]
    r.plots.append(Plot("long", "a y axis label that is long too", cats, {
        f"series with a long name {s}": [float(10 ** s + c) for c in range(7)]
        for s in range(8)}))
    r.headline["long.key"] = 1
    return r


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    results = [run_scenario(name, quick=True) for name in SCENARIOS]
    results += [replay(parse_trace_file(p)) for p in REPLAYED]
    results.append(_long_labels())
    html = render_html(results)
    assert "<script" not in html
    return measure(html, tmp_path_factory.mktemp("layout"))


def test_every_label_of_every_report_lies_inside_its_svg(measured: dict[str, Any]) -> None:
    svgs = measured["svgs"]
    # a plot per scenario, the replays' plots and timelines, the long-label plot
    assert len(svgs) >= len(SCENARIOS) + len(REPLAYED) + 1
    clipped = [(s["label"], t["text"]) for s in svgs for t in s["texts"]
               if not inside(t["box"], s["box"])]
    assert clipped == []
    for s in svgs:  # level labels (all but the slanted ones) do not run into each other
        level = [t for t in s["texts"] if not t["rotated"]]
        hits = [(a["text"], b["text"]) for i, a in enumerate(level) for b in level[i + 1:]
                if overlap(a["box"], b["box"])]
        assert hits == [], s["label"]


def test_plots_come_before_the_headline_table(measured: dict[str, Any]) -> None:
    with_plots = [s for s in measured["sections"] if s["svg_bottoms"]]
    assert len(with_plots) >= len(SCENARIOS)
    for s in with_plots:
        assert s["headline_top"] is not None, s["id"]
        assert max(s["svg_bottoms"]) < s["headline_top"], s["id"]


def _bars(svg: dict[str, Any]) -> dict[str, float]:
    """Bar title -> height in pixels."""
    return {r["title"]: r["box"]["b"] - r["box"]["t"] for r in svg["rects"] if r["cls"] == "bar"}


def test_ddw_axis_is_log_with_ticks_at_powers_of_ten(measured: dict[str, Any]) -> None:
    (ddw,) = [s for s in measured["svgs"] if s["label"].startswith("H_PUT_TCE_INDIRECT")]
    assert ddw["scale"] == "log"
    ticks = [t["text"] for t in ddw["texts"] if t["cls"] == "tick"]
    assert ticks == ["0.1", "1", "10", "100", "1k"]  # 1 to 256 calls
    assert any("log scale" in t["text"] for t in ddw["texts"] if t["cls"] == "axis-title")
    bars = _bars(ddw)
    one, many = bars["H_PUT_TCE_INDIRECT / 8G qemu: 1"], \
        bars["H_PUT_TCE_INDIRECT / 8G qemu-before-7.1: 256"]
    # heights measured from the 0.1 line: one decade for 1, 1 + log10(256) for 256
    assert many / one == pytest.approx(1 + math.log10(256), rel=0.02)
    # tick rows are evenly spaced on a log axis
    ys = [t["box"]["t"] for t in ddw["texts"] if t["cls"] == "tick"]
    gaps = [a - b for a, b in itertools.pairwise(ys)]
    assert max(gaps) - min(gaps) < 1.0
    # msi-doorbell (0 to 8) stays linear
    (msi,) = [s for s in measured["svgs"] if s["label"] == "MSIs delivered and faulted"]
    assert msi["scale"] == "linear"


def test_the_ath12k_replay_shows_map_unmap_and_fault_on_its_device_lane(
        measured: dict[str, Any]) -> None:
    """The real 6.12 trace: a map at 4.878 s, its unmap at 327.748 s, the device's fault
    at 327.754 s, on one lane for 0000:c2:00.0."""
    timelines = [s for s in measured["svgs"] if "timeline" in (s["cls"] or "")]
    (tl,) = [s for s in timelines if any(t["text"] == "0000:c2:00.0" for t in s["texts"])]
    kinds = {r["cls"]: r for r in tl["rects"]}
    assert set(kinds) == {"maps", "unmaps", "fault"}
    m, u, f = kinds["maps"]["box"], kinds["unmaps"]["box"], kinds["fault"]["box"]
    assert m["r"] < u["l"] <= f["l"]  # the map long before, the fault after the unmap
    assert m["b"] <= u["t"] + 0.5 and u["b"] <= f["t"] + 0.5  # rows: maps, unmaps, faults
    grid = sorted({round(t["box"]["l"] + t["box"]["r"]) / 2 for t in tl["texts"]
                   if t["cls"] == "tick"})
    # the fault's place on the time axis: (327.753942 - 4.878076) s of 400 s
    x0, x400 = grid[0], grid[-1]
    want = x0 + (327.753942 - 4.878076) / 400 * (x400 - x0)
    assert (f["l"] + f["r"]) / 2 == pytest.approx(want, abs=1.5)
    assert "line 19" in kinds["fault"]["title"]


def test_the_ufs_replay_has_a_lane_per_stream(measured: dict[str, Any]) -> None:
    """A trace without timestamps: event order on x, one lane per stream."""
    (tl,) = [s for s in measured["svgs"] if "timeline" in (s["cls"] or "")
             and any(t["text"] == "1d84000.ufshc" for t in s["texts"])]
    lanes = [t["text"] for t in tl["texts"] if t["cls"] == "lane-name"]
    assert lanes == ["task (no task)", "1d84000.ufshc"]
    assert any("event number" in t["text"] for t in tl["texts"])
