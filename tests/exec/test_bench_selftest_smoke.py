"""bench_selftest.py runs end to end on a part of the selftest (no timing asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from iommulab.testing.kselftest import find_source

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.usefixtures("bridge_ok")
def test_bench_selftest_smoke() -> None:
    try:
        find_source()
    except FileNotFoundError as e:
        pytest.skip(f"no 6.12 source: {e}")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_selftest.py"),
                           "--", "-f", "iommufd"], capture_output=True, text=True,
                          check=True, timeout=300, env=env)
    lines = done.stdout.splitlines()
    assert lines[0].startswith("bench_selftest:"), done.stdout
    figures = {ln.split("  ")[1].strip(): ln for ln in lines[1:] if ln.strip()}
    assert "tests run" in figures and "model ioctls" in figures, done.stdout
    assert float(figures["tests run"].split()[2]) > 5
