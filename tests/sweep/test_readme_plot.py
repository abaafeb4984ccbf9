"""The README's sweep plot (docs/sweep-resent-bytes.svg) is what the README's sweep draws
today: the first plot of its page, as a file of its own."""

from __future__ import annotations

import re
from pathlib import Path

from iommulab.report.line_svg import standalone_svg, svg_line_chart
from iommulab.sweep import SweepSpec, run_sweep
from iommulab.sweep.html import sweep_plots

ROOT = Path(__file__).resolve().parents[2]
SVG = ROOT / "docs" / "sweep-resent-bytes.svg"

GRID = {"writes_per_round": ["25", "50", "100", "200", "400"],
        "modes": ["upstream", "split", "sync_fix"]}


def test_the_readme_shows_this_sweep_and_this_plot() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "](docs/sweep-resent-bytes.svg)" in readme
    command = re.search(r"^\$ (iommulab sweep migration-dirty .*?--html)$", readme,
                        re.M | re.S)
    assert command is not None
    words = command.group(1).replace("\\\n", " ").split()
    grids = [words[k + 1] for k, w in enumerate(words) if w == "--grid"]
    assert grids == [f"{k}={','.join(v)}" for k, v in GRID.items()]
    assert words[words.index("--set") + 1] == "bbm_levels=2" and "--quick" in words


def test_the_plot_file_is_current() -> None:
    """Regenerate with: the body of this test, writing instead of comparing."""
    result = run_sweep(SweepSpec("migration-dirty", GRID, settings=("bbm_levels=2",),
                                 quick=True))
    plots, _ = sweep_plots(result)
    assert plots[0].title == "resent_bytes against writes_per_round"
    assert SVG.read_text() == standalone_svg(svg_line_chart(plots[0]))
