"""The HTML report opened in headless Chromium: a screenshot shows every plot's bars.

Chromium is Debian's ``chromium`` package, which ``.ci/run`` installs; without it
this test fails and says how to install it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from iommulab.report.html import SERIES_COLOURS, render_html
from iommulab.scenarios import Plot, ScenarioResult, Table, run_scenario

_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--hide-scrollbars"]


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("headless Chromium is needed for the HTML report test: install Debian's "
                    "chromium package (apt-get install chromium), as .ci/run does")
    return path


def _screenshot(html: Path, png: Path, tmp: Path, height: int) -> Image.Image:
    subprocess.run([_chromium(), *_FLAGS, f"--user-data-dir={tmp / 'profile'}",
                    f"--window-size=1100,{height}", f"--screenshot={png}", html.as_uri()],
                   check=True, capture_output=True, timeout=120)
    return Image.open(png).convert("RGB")


def _count(img: Image.Image, colour: str) -> int:
    want = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
    hist = img.getcolors(maxcolors=1 << 20) or []
    return sum(n for n, rgb in hist if rgb == want)


def test_plots_render_in_headless_chromium(tmp_path: Path) -> None:
    # a plot whose bar areas are known: two series, three categories, linear scale
    known = ScenarioResult("check", "known bars", "x86-vtd", 0, True, {})
    known.plots.append(Plot("two series", "count", ["a", "b", "c"],
                            {"first": [10.0, 20.0, 30.0], "second": [30.0, 20.0, 10.0]}))
    known.tables.append(Table("t", ["k", "v"], [["x", 1]]))
    html = tmp_path / "report.html"
    html.write_text(render_html([known]))
    img = _screenshot(html, tmp_path / "known.png", tmp_path, 700)
    first, second = _count(img, SERIES_COLOURS[0]), _count(img, SERIES_COLOURS[1])
    assert first > 5000 and second > 5000  # bars, not just the legend swatches
    assert abs(first - second) < 0.05 * first  # the same total height
    # an empty page draws none of the series colours
    html.write_text(render_html([ScenarioResult("e", "empty", "x86-vtd", 0, True, {})]))
    blank = _screenshot(html, tmp_path / "blank.png", tmp_path, 400)
    assert _count(blank, SERIES_COLOURS[0]) == 0


def test_a_scenario_report_shows_each_plot(tmp_path: Path) -> None:
    results = [run_scenario("msi-doorbell", quick=True), run_scenario("ddw", quick=True)]
    html = tmp_path / "report.html"
    html.write_text(render_html(results))
    assert "<script" not in html.read_text()  # self-contained, static
    img = _screenshot(html, tmp_path / "report.png", tmp_path, 2600)
    # msi-doorbell: delivered (first colour) and faulted (second); ddw: one series
    assert _count(img, SERIES_COLOURS[0]) > 3000
    assert _count(img, SERIES_COLOURS[1]) > 500
