"""The iommulab command and the text report helpers."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from iommulab.cli import main
from iommulab.report import format_size, format_table
from iommulab.scenarios import SCENARIOS, RunContext, Scenario, ScenarioResult
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


FIXTURES = Path(__file__).parent / "trace" / "fixtures"


def test_run_writes_json_html_and_a_state_inspect_reads(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = {k: tmp_path / f"r.{k}" for k in ("json", "html", "state")}
    assert main(["run", "vfio-hugepages", "--quick", "--set", "backings=hugetlb-1G",
                 "--json", str(out["json"]), "--html", str(out["html"]),
                 "--save-state", str(out["state"])]) == 0
    text = capsys.readouterr().out
    assert "1G IOPTEs" in text and "backings=hugetlb-1G" in text
    doc = json.loads(out["json"].read_text())
    assert doc["schema"] == "iommulab.report" and doc["version"] == 2
    assert doc["headline"]["hugetlb-1G.iopte_1G"] == 2
    assert out["html"].read_text().startswith("<!DOCTYPE html>")
    assert main(["inspect", str(out["state"]), "--map-only"]) == 0
    shown = capsys.readouterr().out
    assert shown.count("1 x 1G -> pa") == 2 and "reserved: MSI" in shown
    assert main(["inspect", str(out["state"]), "--iova", "0x1000", "--tree-only"]) == 0
    assert "page" in capsys.readouterr().out
    assert main(["inspect", str(out["state"]), "--domain", "nope"]) == 2


def test_replay_reports_disagreements_and_check_sets_the_status(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    trace = str(FIXTURES / "ath12k_use_after_unmap.txt")
    assert main(["replay", trace, "--check"]) == 0
    assert main(["replay", trace, "--lazy", "--check", "--json",
                 str(tmp_path / "r.json")]) == 1
    out = capsys.readouterr().out
    assert "fault the model misses" in out and "not an ftrace record" in out
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["kind"] == "replay" and doc["details"]["unparsed"][0]["line"] == 23
    assert doc["params"]["kernel"] == "6.12"


def test_replay_kernel_option(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--kernel picks the release the trace is checked against (VT-d differs)."""
    trace = str(FIXTURES / "i915_high_iova.txt")
    assert main(["replay", trace, "--kernel", "7.0", "--address-width", "39", "--check"]) == 1
    out = capsys.readouterr().out
    assert "Linux 7.0" in out and "ERANGE" in out
    with pytest.raises(SystemExit):
        main(["replay", trace, "--kernel", "5.4"])


@pytest.mark.parametrize(("argv", "status", "message"), [
    (["run", "nope"], 2, "iommulab run: no scenario 'nope'"),
    (["run"], 2, "iommulab run: name a scenario"),
    (["run", "ddw", "--set", "offers=x"], 2, "x is not one of"),
    (["replay", "missing.txt"], 3, "iommulab replay: missing.txt: cannot read"),
    (["replay", str(FIXTURES / "malformed.txt"), "--strict"], 3, "malformed.txt:3: map:"),
    (["replay", str(FIXTURES / "ath12k_use_after_unmap.txt"), "--address-width", "58"], 2,
     "--address-width 58"),
    (["inspect", str(FIXTURES / "malformed.txt")], 3, "malformed.txt:1: not JSON"),
])
def test_exit_statuses_and_one_line_messages(argv: list[str], status: int, message: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == status
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_argparse_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as e:
        main(["run", "ddw", "--seed", "x"])
    assert e.value.code == 2


def test_an_internal_error_is_one_line_and_status_4(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def broken(ctx: RunContext) -> ScenarioResult:
        raise RuntimeError("model bug")

    bad = Scenario("broken", "broken: always fails", (), ("x86-vtd",), broken)
    monkeypatch.setitem(SCENARIOS, "broken", bad)
    assert main(["run", "broken"]) == 4
    assert capsys.readouterr().err == ("iommulab run: internal error: RuntimeError: model bug "
                                       "(IOMMULAB_DEBUG=1 shows the traceback)\n")


def test_run_list_shows_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--list"]) == 0
    out = capsys.readouterr().out
    for name in SCENARIOS:
        assert f"{name}: " in out
    assert "guest_ram=8G; --quick: 3G" in out
