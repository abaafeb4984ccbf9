"""Each benchmark script runs end to end at a tiny size (no timing is asserted)."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize(("script", "args", "lines"), [
    ("bench_pgtable.py", ["--size", "64M", "--lookups", "2000", "--repeat", "1"], 12),
    ("bench_domain_single.py", ["--calls", "200", "--repeat", "1"], 1),
    ("bench_split_merge.py", ["--size", "32M", "--repeat", "1"], 5),
    ("bench_translate.py", ["--calls", "200", "--repeat", "1"], 3),
    ("bench_nested.py", ["--calls", "200", "--repeat", "1"], 3),
    ("bench_nested_vtd.py", ["--calls", "200", "--repeat", "1"], 3),
    ("bench_dma.py", ["--calls", "200", "--repeat", "1"], 4),
    ("bench_iova.py", ["--calls", "600", "--pairs", "2000", "--live", "100", "--repeat", "1"],
     3),
    ("bench_vfio.py", ["--sizes", "1,2", "--frag-gib", "1", "--repeat", "1"], 25),
    ("bench_fork.py", ["--gib", "1", "--pinned-gib", "1"], 8),
    ("bench_iommufd.py", ["--gib", "1"], 4),
    ("bench_pseries.py", ["--pairs", "300", "--ram", "4G"], 2),
    ("bench_replay.py", ["--packets", "500"], 2),
    ("bench_sweep.py", ["--points", "4", "--noop", "16"], 8),
    ("fuzz_long.py", ["--ops", "400", "--platform", "ppc64-pseries", "--wild", "0",
                      "--failnth-share", "0.2"], 4),
])
def test_benchmark_smoke(script: str, args: list[str], lines: int) -> None:
    done = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                          text=True, check=True, timeout=120)
    figures = [ln for ln in done.stdout.splitlines()[1:] if ln.strip()]
    assert len(figures) == lines, done.stdout
    assert all(any(ch.isdigit() for ch in ln) for ln in figures)


def test_bench_1tib_smoke() -> None:
    """bench_1tib at 1 GiB: every step of both paths, the peak RSS and the state table."""
    done = subprocess.run([sys.executable, str(BENCH / "bench_1tib.py"), "--gib", "1",
                           "--state"], capture_output=True, text=True, check=True, timeout=120)
    lines = [ln for ln in done.stdout.splitlines() if ln.strip()]
    steps = [ln for ln in lines if ln.strip().startswith(("VFIO type1:", "iommufd:"))]
    assert len(steps) == 14, done.stdout
    assert any(ln.strip().startswith("peak RSS") for ln in lines), done.stdout
    assert any("whole state / real table bytes" in ln for ln in lines), done.stdout
