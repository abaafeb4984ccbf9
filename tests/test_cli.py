"""The iommulab command and the text report helpers."""

import subprocess
import sys

import pytest

from iommulab.cli import main
from iommulab.report import format_size, format_table
from iommulab.workload.guest_ram import run_guest_ram
from iommulab.workload.pgtable_tour import run_pgtable_tour


def test_demo_prints_iopte_sizes_and_table_memory(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "(seed 3)" in out
    for needle in ("IOPTE size", "1G", "2M", "4K", "table memory:", "level 3: page",
                   "VFIO type1 on x86-vtd", "hugetlb-1G", "iommu_map calls",
                   "live migration", "split BBM0", "transient faults", "stale pages",
                   "exposed B/map", "MSI writes by domain set-up", "cache flush policy",
                   "unflushed unpins", "Fewest pages flushed", "window chosen by RAM size"):
        assert needle in out


def test_tour_lands_where_iommu_pgsize_says() -> None:
    r = run_pgtable_tour(seed=0)
    by_name = {reg.name: reg.leaves for reg in r.regions}
    assert by_name["guest RAM on 1G pages"] == {1 << 30: 2}
    assert by_name["buffer on 2M blocks"] == {2 << 20: 256}
    assert by_name["window, IOVA and PA co-aligned"] == {2 << 20: 5, 1 << 30: 1}
    assert by_name["window, IOVA 4K off the PA"] == {4096: 65536}
    assert r.unmapped == sum(reg.size for reg in r.regions)
    # Runs of the fragmented buffer are shorter than the 16 frames between holes.
    frag = next(reg for reg in r.regions if reg.name.startswith("16M"))
    assert frag.runs > 4096 // 16


@pytest.mark.parametrize(("backing", "expected"), [
    # Sections not 2M-aligned at their ends ([0, 0xa0000) and [0xc0000, 0x200000)) are 4K;
    # with 1G pages, [1G, 2G) and [4G, 5G) are 1G entries and [2M, 1G) 2M ones.
    ("thp", {4096: 0x1E_0000, 2 << 20: (3 << 30) - (2 << 20)}),
    ("hugetlb-1G", {4096: 0x1E_0000, 2 << 20: (1 << 30) - (2 << 20), 1 << 30: 2 << 30}),
    ("fragmented", {4096: (3 << 30) - 0x2_0000}),
])
def test_guest_ram_lands_at_the_iopte_sizes_the_backing_allows(backing: str,
                                                               expected: dict[int, int]) -> None:
    r = run_guest_ram(backing)
    assert r.report.iopte_bytes == (expected,)
    assert r.report.locked_vm == r.report.pinned_pages == ((3 << 30) - 0x2_0000) >> 12
    assert r.unmapped == (3 << 30) - 0x2_0000 and r.pins_left == 0


def test_the_console_entry_point_runs() -> None:
    done = subprocess.run([sys.executable, "-m", "iommulab.cli", "--version"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "iommulab 0.1.0"


def test_unknown_command_is_an_error() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2


@pytest.mark.parametrize(("n", "text"), [(0, "0"), (4096, "4K"), (1536, "1.5K"),
                                         (3 << 30, "3G"), ((1 << 30) + (10 << 20), "1.01G")])
def test_format_size(n: int, text: str) -> None:
    assert format_size(n) == text


def test_format_table() -> None:
    text = format_table(["size", "n"], [["4K", 12], ["1G", 3]])
    assert text.splitlines() == ["size   n", "----  --", "4K    12", "1G     3"]
