"""The sweep's page opened in headless Chromium, as the report tests open the report:
each plot's lines are drawn in their colours, every label lies inside its SVG, and the
x labels and legend entries do not overlap."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from iommulab.report.html import SERIES_COLOURS
from iommulab.report.line_svg import LinePlot, svg_line_chart
from iommulab.scenarios import UsageError
from iommulab.sweep import OutputDir, SerialEngine, SweepSpec, run_sweep
from iommulab.sweep.html import check_plot_choice, render_sweep_html, sweep_plots

from ..report.browser import FLAGS, chromium, inside, measure, overlap

#: the README's example, smaller: resent bytes against writes per round, a line per mode
SPEC = SweepSpec("migration-dirty", {"writes_per_round": ["25", "100", "400"],
                                     "modes": ["upstream", "split", "sync_fix"]},
                 settings=("bbm_levels=2",), quick=True)


def _count(img: Image.Image, colour: str) -> int:
    want = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return sum(n for n, rgb in img.getcolors(maxcolors=1 << 20) or [] if rgb == want)


def _long_labels() -> str:
    """Long x labels close together, many series: rotation and legend wrapping."""
    xs = [f"thp+hugetlb-2M+hugetlb-1G, case {k}" for k in range(9)]
    return svg_line_chart(LinePlot("long", "a parameter", "a number", xs, xs, {
        f"a line with a long name {s}": [float(s * 10 + k) for k in range(9)]
        for s in range(8)}))


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Any]:
    tmp = tmp_path_factory.mktemp("sweep-html")
    result = run_sweep(SPEC, SerialEngine(), OutputDir(tmp / "out"))
    html = render_sweep_html(result)
    assert "<script" not in html
    return html, result


def test_the_page_draws_every_line(page: tuple[str, Any], tmp_path: Path) -> None:
    html, result = page
    plots, left_out = sweep_plots(result)
    assert left_out == 0
    titles = [p.title for p in plots]
    assert titles[:2] == ["resent_bytes against writes_per_round",
                          "missed_pages against writes_per_round"]
    assert all(list(p.series) == ["modes=upstream", "modes=split", "modes=sync_fix"]
               for p in plots)
    # one plot alone on a page, screenshot: each of the three lines has its colour
    only = html.split("<h3>")[0] + "<h3>" + html.split("<h3>")[1].split("<h3>")[0] + \
        "</body></html>"
    path = tmp_path / "one.html"
    path.write_text(only)
    png = tmp_path / "one.png"
    subprocess.run([chromium(), *FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                    "--window-size=1100,700", f"--screenshot={png}", path.as_uri()],
                   check=True, capture_output=True, timeout=120)
    img = Image.open(png).convert("RGB")
    counts = [_count(img, c) for c in SERIES_COLOURS[:3]]
    assert all(n > 400 for n in counts), counts  # lines and dots, not only the swatches
    assert _count(img, SERIES_COLOURS[3]) == 0


def _many_points() -> str:
    """120 evenly spaced x values: more labels than fit even rotated."""
    xs = [f"case {k:03}" for k in range(120)]
    return svg_line_chart(LinePlot("many", "a parameter", "a number", xs, xs,
                                   {"one": [float(k % 7) for k in range(120)]}))


def test_every_label_inside_its_svg_and_noneoverlap(page: tuple[str, Any],
                                                      tmp_path: Path) -> None:
    html, result = page
    html = html.replace("</body>", _long_labels() + _many_points() + "</body>")
    doc = measure(html, tmp_path)
    svgs = doc["svgs"]
    assert len(svgs) == len(sweep_plots(result)[0]) + 2
    for svg in svgs:
        clipped = [t["text"] for t in svg["texts"] if not inside(t["box"], svg["box"])]
        assert not clipped, (svg["label"], clipped)
        for kind in ("category", None):  # x labels, legend entries
            boxes = [t for t in svg["texts"] if t["cls"] == kind and not t["rotated"]]
            hits = [(a["text"], b["text"]) for a, b in itertools.combinations(boxes, 2)
                    if overlap(a["box"], b["box"])]
            assert not hits, (svg["label"], hits)
    for long, drawn in ((svgs[-2], 9), (svgs[-1], None)):
        turned = [t for t in long["texts"] if t["cls"] == "category"]
        assert turned and all(t["rotated"] for t in turned)
        # parallel labels 30 degrees up are a line (11 px) apart when their ends are
        # twice that apart across (sin 30 = 1/2)
        ends = [t["box"]["r"] for t in turned]
        assert all(b - a >= 22 for a, b in itertools.pairwise(ends)), ends
        if drawn is not None:
            assert len(turned) == drawn
    # 120 ticks: every one drawn, a label on every third or fourth, the first labelled
    many = [t["text"] for t in svgs[-1]["texts"] if t["cls"] == "category"]
    assert many[0] == "case 000" and 120 // 5 < len(many) < 120 // 2, many
    assert not any(t["rotated"] for s in svgs[:-2] for t in s["texts"])


def test_the_page_lists_failed_points(tmp_path: Path) -> None:
    spec = SweepSpec("noncoherent-flush", {"ram": ["64K", "1020M"]},
                     settings=("buffer_pages=1", "policies=none"), quick=True)
    result = run_sweep(spec, SerialEngine(), OutputDir(tmp_path / "o"))
    html = render_sweep_html(result)
    assert "<h2>Failed points</h2>" in html
    assert "UsageError: noncoherent-flush: --set ram + buffer_pages" in html
    assert sweep_plots(result) == ([], 0)  # one point left: nothing to draw a line through


def test_x_and_lines_choose_the_axes(page: tuple[str, Any]) -> None:
    """--x modes --lines writes_per_round: the same numbers, the other way round."""
    _, result = page
    auto, _ = sweep_plots(result)
    turned, left_out = sweep_plots(result, x="modes", lines="writes_per_round")
    assert left_out == 0 and len(turned) == len(auto)
    for a, t in zip(auto, turned, strict=True):
        assert t.title == a.title.replace("writes_per_round", "modes")
        assert t.x_labels == ["upstream", "split", "sync_fix"]
        assert list(t.series) == [f"writes_per_round={w}" for w in (25, 100, 400)]
        for i, (name, ys) in enumerate(a.series.items()):
            assert [t.series[s][i] for s in t.series] == ys, name
    # --lines alone: the x axis is the other dimension
    alone, _ = sweep_plots(result, lines="writes_per_round")
    assert [p.title for p in alone] == [p.title for p in turned]


def test_x_and_lines_must_name_a_swept_dimension() -> None:
    with pytest.raises(UsageError, match=r"--x ram: not a dimension of this sweep \(its "
                       r"dimensions: writes_per_round, modes\)"):
        check_plot_choice(SPEC, "ram", None)
    with pytest.raises(UsageError, match="--lines platform: not a dimension"):
        check_plot_choice(SPEC, None, "platform")
    with pytest.raises(UsageError, match="--x and --lines both name modes"):
        check_plot_choice(SPEC, "modes", "modes")
    two = SweepSpec("migration-dirty", SPEC.grid, platforms=("x86-vtd", "arm-smmu-v3"))
    check_plot_choice(two, "platform", "modes")
