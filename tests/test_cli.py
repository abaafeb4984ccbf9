"""The iommulab command and the text report helpers."""

import subprocess
import sys

import pytest

from iommulab.cli import main
from iommulab.report import format_size, format_table
from iommulab.workload.pgtable_tour import run_pgtable_tour


def test_demo_prints_iopte_sizes_and_table_memory(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "(seed 3)" in out
    for needle in ("IOPTE size", "1G", "2M", "4K", "table memory:", "level 3: page",
                   "live migration", "split 4K: resent", "blocks split when tracking started",
                   "BBM level 0", "transient faults", "stale pages", "exposed B/map"):
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
