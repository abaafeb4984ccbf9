"""The grid of a sweep: points in table order, stable ids, bounds checked before any run
(exit 2 naming the bound, as ``iommulab run``), grid files in TOML and YAML."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from iommulab.cli import main
from iommulab.scenarios import UsageError
from iommulab.scenarios.base import FileError
from iommulab.sweep import SweepSpec, expand
from iommulab.sweep.gridfile import load_grid_file


def test_points_cross_platforms_grid_and_seeds_in_order() -> None:
    spec = SweepSpec("vfio-hugepages", {"guest_ram": ["16M", "64M"], "backings": [
        "thp+hugetlb-2M", "fragmented"]}, seeds=(3, 4),
        platforms=("x86-vtd", "arm64-smmuv3"))
    points = expand(spec)
    assert len(points) == 2 * 2 * 2 * 2
    assert [p.index for p in points] == list(range(16))
    first = points[0]
    assert (first.platform, first.seed) == ("x86-vtd", 3)
    assert first.settings == ("guest_ram=16M", "backings=thp,hugetlb-2M")
    assert first.grid == (("guest_ram", 16 << 20), ("backings", "thp+hugetlb-2M"))
    assert [p.seed for p in points[:4]] == [3, 4, 3, 4]
    assert [dict(p.grid)["backings"] for p in points[:4]] == [
        "thp+hugetlb-2M", "thp+hugetlb-2M", "fragmented", "fragmented"]
    assert points[8].platform == "arm64-smmuv3"
    assert len({p.id for p in points}) == 16


def test_a_list_parameter_of_one_item_is_that_item_in_the_table() -> None:
    points = expand(SweepSpec("migration-dirty", {"bbm_levels": ["0", "1+2"]}))
    assert [dict(p.grid)["bbm_levels"] for p in points] == [0, "1+2"]
    assert [p.settings for p in points] == [("bbm_levels=0",), ("bbm_levels=1,2",)]


def test_id_depends_only_on_what_runs() -> None:
    a = expand(SweepSpec("streaming-dma", {"packets": ["100", "200"]}))
    b = expand(SweepSpec("streaming-dma", {"packets": ["0x64"], "hz": ["250"]}))
    c = expand(SweepSpec("streaming-dma", {"packets": ["100"]}, seeds=(1,)))
    assert a[0].id != b[0].id  # hz=250 set explicitly is another settings list
    assert a[0].id != c[0].id
    d = expand(SweepSpec("migration-dirty", {"guest_ram": ["64M", str(64 << 20)]}))
    assert len(d) == 1  # the same value written twice is one point
    assert expand(SweepSpec("streaming-dma", {"packets": ["100"]}))[0].id == a[0].id


BAD = [
    (["--grid", "devices=1,31"], "msi-doorbell: --grid devices=31: 31 is above the "
     "maximum 30 (bounds: iommulab run msi-doorbell --help)"),
    (["--grid", "messages=0,4"], "0 is below the minimum 1"),
    (["--grid", "cases=identity+nope"], "nope is not one of"),
    (["--grid", "nope=1,2"], "--grid nope: no such parameter"),
    (["--grid", "devices"], "expected key=value1,value2"),
    (["--grid", "devices=1,,2"], "give values separated by commas"),
    (["--grid", "devices=1,2", "--set", "devices=3"], "given both by --set and by --grid"),
    (["--grid", "devices=1", "--set", "messages=5000"], "5000 is above the maximum 2048"),
    (["--grid", "devices=1", "--platform", "x86-vtd"],
     "msi-doorbell runs on arm64-smmuv3, not x86-vtd"),
    ([], "give a grid"),
    (["--grid", "devices=1", "--seeds", "0"], "at least 1"),
    (["--grid", "devices=1", "--html", "/nonexistent-dir/p.html"],
     "--html /nonexistent-dir/p.html: no directory /nonexistent-dir"),
    (["--grid", "devices=1,2", "--x", "devices"], "--x and --lines choose the plots of "
     "--html: give --html too"),
    (["--grid", "devices=1,2", "--html", "--x", "messages"], "--x messages: not a "
     "dimension of this sweep (its dimensions: devices)"),
    (["--grid", "devices=1,2", "--grid", "messages=1,2", "--html", "--lines", "devices",
      "--x", "devices"], "--x and --lines both name devices"),
]


@pytest.mark.parametrize(("argv", "message"), BAD)
def test_bad_grid_exits_2_before_any_run(argv: list[str], message: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    try:
        status = main(["sweep", "msi-doorbell", "--workers", "1", "--out", str(out), *argv])
    except SystemExit as e:  # argparse's own checks
        status = int(str(e.code))
    assert status == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()  # nothing ran, nothing written


def test_platform_dependent_bound_is_checked_on_every_platform() -> None:
    spec = SweepSpec("vfio-hugepages", {"guest_ram": ["1G", "600G"]},
                     platforms=("arm64-smmuv3", "x86-vtd"))
    with pytest.raises(UsageError, match="600G is above the maximum 510G on x86-vtd"):
        expand(spec)
    expand(SweepSpec("vfio-hugepages", {"guest_ram": ["600G"]},
                     platforms=("arm64-smmuv3",)))


def test_grid_file_toml(tmp_path: Path) -> None:
    f = tmp_path / "grid.toml"
    f.write_text('seeds = 2\nplatforms = ["arm64-smmuv3"]\n[grid]\npackets = [100, "200"]\n'
                 'modes = [["strict", "lazy"], "strict"]\n[set]\nhz = 1000\n')
    g = load_grid_file(str(f))
    assert g.grid == {"packets": ["100", "200"], "modes": ["strict+lazy", "strict"]}
    assert (g.settings, g.seeds, g.platforms) == (("hz=1000",), 2, ("arm64-smmuv3",))
    points = expand(SweepSpec("streaming-dma", g.grid, g.settings, (0, 1), g.platforms))
    assert len(points) == 8
    assert points[0].settings == ("packets=100", "modes=strict,lazy", "hz=1000")


def test_grid_file_yaml(tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    f = tmp_path / "grid.yaml"
    f.write_text("grid:\n  packets: [100, 200]\n  modes: [[strict, lazy], strict]\n")
    assert load_grid_file(str(f)).grid == {"packets": ["100", "200"],
                                           "modes": ["strict+lazy", "strict"]}


def test_grid_file_yaml_without_pyyaml_says_so(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "grid.yml"
    f.write_text("grid:\n  packets: [1]\n")
    monkeypatch.setitem(sys.modules, "yaml", None)  # as if PyYAML were not installed
    with pytest.raises(FileError, match=r"needs PyYAML \(pip install pyyaml\); a TOML"):
        load_grid_file(str(f))


@pytest.mark.parametrize(("text", "message"), [
    ("[grid]\npackets = 1\n", "grid.packets: want a non-empty list"),
    ("[grid]\npackets = [{a = 1}]\n", "a value is a string, number, boolean"),
    ("seeds = 0\n[grid]\npackets = [1]\n", "seeds: want a positive integer"),
    ("color = 1\n", "unknown key 'color'"),
    ("[grid\n", "not TOML"),
])
def test_bad_grid_file_exits_3(text: str, message: str, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "g.toml"
    f.write_text(text)
    assert main(["sweep", "streaming-dma", "--workers", "1", "--grid-file", str(f),
                 "--out", str(tmp_path / "o")]) == 3
    assert message in capsys.readouterr().err
