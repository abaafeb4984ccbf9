"""The CLI never says "internal error" for what a user typed: parameter bounds, platforms,
output paths, standard output, closed pipes and progress."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from iommulab.cli import main
from iommulab.scenarios import SCENARIOS, Progress, UsageError, run_scenario
from iommulab.scenarios import base as scenario_base
from iommulab.workload.guest_ram import VIRT_RAM_BASE, guest_sections, iova_ranges

#: (argv, what the one-line message must say)
BAD_INPUTS = [
    (["run", "vfio-hugepages", "--platform", "nope"], "invalid choice: 'nope'"),
    (["run", "ddw", "--platform", "x86-vtd"], "ddw runs on ppc64-pseries, not x86-vtd"),
    (["run", "nope"], "no scenario 'nope'"),
    (["run", "nope", "--help"], "no scenario 'nope'"),
    (["run", "ddw", "--set", "ram=8G"], "--set ram: no such parameter"),
    (["run", "ddw", "--set", "rams"], "expected key=value"),
    (["run", "ddw", "--set", "offers=x"], "x is not one of"),
    (["run", "streaming-dma", "--set", "modes="], "give a value"),
    (["run", "streaming-dma", "--set", "hz=7"], "7 is not one of 100, 250, 300, 1000"),
    (["run", "vfio-hugepages", "--set", "guest_ram=12Q"], "cannot parse size '12Q'"),
    (["run", "vfio-hugepages", "--set", "guest_ram=-1G"], "cannot parse size '-1G'"),
    (["run", "msi-doorbell", "--set", "devices=1e3"], "not an integer: '1e3'"),
    (["run", "msi-doorbell", "--set", "devices=-1"], "-1 is below the minimum 1"),
    (["run", "msi-doorbell", "--set", "devices=0"], "0 is below the minimum 1"),
    (["run", "streaming-dma", "--set", "packets=0"], "0 is below the minimum 1"),
    (["run", "msi-doorbell", "--set", "devices=31"], "31 is above the maximum 30"),
    (["run", "msi-doorbell", "--set", "messages=2049"], "2049 is above the maximum 2048"),
    (["run", "migration-dirty", "--set", "guest_ram=1G"], "1G is above the maximum 512M"),
    (["run", "migration-dirty", "--set", "guest_ram=3M"], "3M is not a multiple of 2M"),
    (["run", "migration-dirty", "--set", "bbm_levels=1,3"], "3 is not one of 0, 1, 2"),
    (["run", "vfio-hugepages", "--set", "guest_ram=100T"],
     "100T is above the maximum 510G on x86-vtd"),
    (["run", "vfio-hugepages", "--set", "guest_ram=600G"],
     "600G is above the maximum 510G on x86-vtd"),
    (["run", "vfio-hugepages", "--set", "guest_ram=1E"], "1E is above the maximum 510G"),
    (["run", "vfio-hugepages", "--platform", "arm64-smmuv3", "--set", "guest_ram=1E"],
     "above the maximum 256T on arm64-smmuv3"),
    (["run", "vfio-hugepages", "--set", "guest_ram=12K"], "12K is below the minimum 1M"),
    (["run", "vfio-hugepages", "--set", "guest_ram=1048577"], "not a multiple of 4K"),
    (["run", "ddw", "--set", "rams=1E"], "1E is above the maximum"),
    (["run", "ddw", "--set", "rams=1100M"], "1100M is not a multiple of 256M"),
    (["run", "noncoherent-flush", "--set", "ram=2G"], "2G is above the maximum 1020M"),
    (["run", "noncoherent-flush", "--set", "ram=1000M", "--set", "buffer_pages=10000"],
     "ram + buffer_pages"),
    (["run", "streaming-dma", "--set", "buffer_size=8192"], "above the maximum 4096"),
    (["run", "migration-dirty", "--seed", "-1"], "a seed is a non-negative integer"),
    (["run", "ddw", "--seed", "x"], "not an integer: 'x'"),
    (["run", "ddw", "--quick", "--save-state", "s.json"], "ddw builds no IOMMU domain"),
    (["run", "msi-doorbell", "--json", "/nonexistent-dir/r.json"],
     "--json /nonexistent-dir/r.json: no directory /nonexistent-dir"),
    (["run", "msi-doorbell", "--html", "/"], "--html /: is a directory"),
    (["demo", "--html", "/nonexistent-dir/d.html"], "--html /nonexistent-dir/d.html"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["exec", "--set", "ram=1E", "--", "true"], "1E: above the maximum 508G on x86-vtd"),
    (["exec", "--platform", "ppc64-pseries", "--set", "ram=33T", "--", "true"],
     "above the maximum 32T on ppc64-pseries"),
    (["exec", "--set", "ram=-1", "--", "true"], "cannot parse size '-1'"),
    (["exec", "--set", "ram=0", "--", "true"], "too little RAM for the machine's own"),
    (["exec", "--platform", "arm64-smmuv3", "--set", "ram=16K", "--", "true"],
     "dma_alloc_coherent"),
    (["exec", "--set", "vfio_iommu_type1.dma_entry_limit=x", "--", "true"], "not an integer"),
    (["exec", "--report", "/nonexistent-dir/r.json", "--", "true"], "--report /nonexistent"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_exits_2_with_one_line(argv: list[str], message: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    try:
        status = main(argv)
    except SystemExit as e:  # argparse's own errors
        status = e.code  # type: ignore[assignment]
    captured = capsys.readouterr()
    assert status == 2, captured.err
    assert message in captured.err and captured.err.count("\n") == 1, captured.err
    assert "internal error" not in captured.err and captured.out == ""


def test_unwritable_directory_is_refused_before_the_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    tmp_path.chmod(0o500)
    try:
        assert main(["run", "msi-doorbell", "--quick", "--json", str(tmp_path / "r.json")]) == 2
    finally:
        tmp_path.chmod(0o700)
    err = capsys.readouterr().err
    assert f"directory {tmp_path} is not writable" in err and err.count("\n") == 1


def test_host_memory_is_checked_before_the_run(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A host with 1G available cannot hold the model of 64G of fragmented guest RAM."""
    monkeypatch.setattr(scenario_base, "host_memory_available", lambda: 1 << 30)
    assert main(["run", "vfio-hugepages", "--set", "guest_ram=64G"]) == 2
    err = capsys.readouterr().err
    assert "guest_ram=64G needs about" in err and "1G is available" in err
    # 8T under 64K TCEs (QEMU before 7.1) is 128M TCEs; with 16M TCEs only, 512K
    assert main(["run", "ddw", "--set", "rams=8T"]) == 2
    assert "rams=8T needs about" in capsys.readouterr().err
    assert main(["run", "ddw", "--set", "rams=8T", "--set", "offers=qemu", "-q"]) == 0


PAIRS = [(name, platform) for name, s in SCENARIOS.items() for platform in s.platforms]


@pytest.mark.parametrize(("name", "platform"), PAIRS)
def test_every_scenario_runs_on_every_platform_it_lists(name: str, platform: str) -> None:
    r = run_scenario(name, platform=platform, quick=True)
    assert r.platform == platform and r.headline and r.tables


def test_vfio_hugepages_on_arm64_maps_guest_ram_from_1g_above_the_msi_window() -> None:
    assert guest_sections(3 << 30, "arm64-smmuv3") == ((VIRT_RAM_BASE, 0, 3 << 30),)
    msi = (0x800_0000, 0x80F_FFFF)  # the SMMUv3 driver's SW_MSI window
    assert msi[0] - 1 in {hi for _, hi in iova_ranges("arm64-smmuv3")}
    h = run_scenario("vfio-hugepages", platform="arm64-smmuv3", quick=True).headline
    assert (h["thp.iopte_2M"], h["thp.iopte_4K"], h["thp.iommu_map_calls"]) == (1536, 0, 1)
    assert h["hugetlb-1G.iopte_1G"] == 3  # [1G, 4G): 1G-aligned in IOVA and PA
    assert h["fragmented.pinned_bytes"] == 3 << 30 and h["fragmented.pins_left"] == 0


def test_list_and_scenario_help_show_bounds_platforms_and_why(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--list"]) == 0
    out = capsys.readouterr().out
    assert out.count("bounds: ") == sum(len(s.params) for s in SCENARIOS.values())
    assert "1M.. (max 510G on x86-vtd, 256T on arm64-smmuv3), a multiple of 4K" in out
    assert main(["run", "msi-doorbell", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: iommulab run msi-doorbell")
    assert "platforms: arm64-smmuv3" in out and "1..30 (StreamIDs" in out
    assert main(["run", "--help"]) == 0
    assert "--list" in capsys.readouterr().out


def test_json_to_stdout_and_quiet(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["run", "msi-doorbell", "--quick", "--json", "-"]) == 0
    doc = json.loads(capsys.readouterr().out)  # nothing but the JSON on stdout
    assert doc["schema"] == "iommulab.report" and doc["headline"]["two-its.pages_mapped"] == 2
    assert main(["run", "msi-doorbell", "--quick", "--quiet", "--json",
                 str(tmp_path / "r.json")]) == 0
    assert capsys.readouterr().out == ""
    assert json.loads((tmp_path / "r.json").read_text())["kind"] == "scenario"


@pytest.mark.parametrize("name", [n for n, s in SCENARIOS.items() if s.saves_state])
def test_save_state_works_for_every_scenario_that_builds_domains(
        name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "s.json"
    settings = ["--set", "backings=thp"] if name == "vfio-hugepages" else []
    assert main(["run", name, "--quick", "-q", "--save-state", str(state), *settings]) == 0
    assert json.loads(state.read_text())["states"]
    assert main(["inspect", str(state), "--map-only"]) == 0
    assert "address space" in capsys.readouterr().out


def test_a_closed_pipe_ends_quietly_with_status_0() -> None:
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written, as after `head -1`
    try:
        done = subprocess.run([sys.executable, "-m", "iommulab.cli", "run", "--list"],
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (0, "")


def test_progress_shows_an_eta() -> None:
    class Sink:
        text = ""

        def write(self, s: str) -> None:
            self.text += s

        def flush(self) -> None:
            pass

    p = Progress(Sink())
    assert p.eta(0, 4, now=100.0) == "--:--"
    assert p.eta(1, 4, now=130.0) == "01:30"  # 30 s a step, 3 steps left
    assert p.eta(2, 4, now=4000.0) == "1:05:00"
    assert p.eta(4, 4, now=4001.0) == "00:00"
    p(1, 2, "thp")
    assert "ETA " in p.stream.text and "1/2" in p.stream.text


def test_usage_errors_name_the_scenario() -> None:
    with pytest.raises(UsageError, match=r"^migration-dirty: --set guest_ram=1G: 1G is above"):
        run_scenario("migration-dirty", settings=("guest_ram=1G",))
