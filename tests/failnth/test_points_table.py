"""benchmarks/failnth_points.py runs and prints the sequences' steps (mock, 6.12 only)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .kernel_sequences import SEQUENCES
from .kernel_sites import SEQUENCE_SITES

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "failnth_points.py"


def test_points_table() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--platform", "mock", "--kernel",
                           "6.12"], capture_output=True, text=True, check=True, timeout=300)
    rows = {ln.split()[1]: ln.split()[2:] for ln in done.stdout.splitlines()
            if ln.startswith("fail_nth ")}
    assert sorted(rows) == sorted(s.name for s in SEQUENCES)
    for name, cols in rows.items():  # mock 6.12 points absorbed steps kernel-points
        assert cols[:2] == ["mock", "6.12"]
        assert int(cols[2]) == int(cols[4]) == int(cols[5]) == len(SEQUENCE_SITES[name])
    assert done.stdout.count("\n") > len(SEQUENCES) + 20  # the per-ioctl rows too
