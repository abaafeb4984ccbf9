"""bench_bridge.py and ``python3 -m iommulab.bridge`` run end to end (no timing asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src")}


@pytest.mark.usefixtures("build")
def test_bench_bridge_smoke() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_bridge.py"),
                           "--calls", "200", "--repeat", "1"], capture_output=True, text=True,
                          check=True, timeout=120, env=_env())
    figures = [ln for ln in done.stdout.splitlines()[1:] if ln.strip()]
    assert len(figures) == 5, done.stdout
    assert all(any(ch.isdigit() for ch in ln) for ln in figures)


@pytest.mark.usefixtures("build")
def test_module_entry_point() -> None:
    done = subprocess.run([sys.executable, "-m", "iommulab.bridge", "--stats", "--",
                           "/bin/sh", "-c", "exec 3<>/dev/iommulab-test; exit 7"],
                          capture_output=True, text=True, timeout=60, env=_env())
    assert done.returncode == 7, done.stderr
    # sh moves the fd it opened (dup2/F_DUPFD): one file, installed twice, released once
    assert "fds installed, 1 released" in done.stderr
