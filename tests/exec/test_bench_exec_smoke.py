"""bench_exec.py runs end to end (no timing asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.usefixtures("build")
def test_bench_exec_smoke() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_exec.py"),
                           "--calls", "50", "--repeat", "1"], capture_output=True, text=True,
                          check=True, timeout=120, env=env)
    figures = [ln for ln in done.stdout.splitlines()[1:] if ln.strip()]
    assert len(figures) == 8, done.stdout
    assert all(any(ch.isdigit() for ch in ln) for ln in figures)
