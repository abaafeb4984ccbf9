"""Fault-injection points per ioctl, and the steps of iommufd_fail_nth.c's sequences.

For each scenario of tests/failnth/scenarios.py (one ioctl in a state where it does its
full work) on each platform and kernel it runs on: the allocation and
``iommufd_should_fail()`` points the call reaches, and how many of those failures the
kernel path absorbs (the call still succeeds), from a full fail-nth sweep. Then the
seven TEST_FAIL_NTH sequences of iommufd_fail_nth.c (tests/failnth/kernel_sequences.py)
on the mock: the steps their harness loop takes before a run ends without the failure
(one per point), the runs that completed with the failure injected (absorbed by the
kernel, or in a call whose result the C test ignores), and, on 6.12, how many points
the kernel has on those paths (tests/failnth/kernel_sites.py). Counts, not timings.
Run from the repository root with PYTHONPATH=src.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests package

from tests.failnth.kernel_sequences import SEQUENCES, run_fail_nth
from tests.failnth.kernel_sites import SEQUENCE_SITES
from tests.failnth.scenarios import SCENARIOS
from tests.failnth.sweep import sweep

HEADER = f"{'call':<44} {'platform':<13} {'kernel':<6} {'points':>6} {'absorbed':>8} " \
    f"{'steps':>5} {'6.12 kernel points':>18}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--platform", action="append", help="only these platforms")
    ap.add_argument("--kernel", action="append", help="only these kernels")
    args = ap.parse_args()
    print(HEADER)
    for s in SCENARIOS:
        for platform in s.platforms:
            for kernel in s.kernels:
                if (args.platform and platform not in args.platform) or \
                        (args.kernel and kernel not in args.kernel):
                    continue
                points = sweep(partial(s.setup, platform, kernel), s.op, absorbs=s.absorbs,
                               expect=s.expect, relax=s.relax)
                absorbed = sum(pt.errno is None for pt in points)
                print(f"{s.name:<44} {platform:<13} {kernel:<6} {len(points):>6} "
                      f"{absorbed:>8} {'':>5} {'':>18}")
    if args.platform and "mock" not in args.platform:
        return
    for seq in SEQUENCES:
        for kernel in ("6.12", "7.0"):
            if args.kernel and kernel not in args.kernel:
                continue
            run = run_fail_nth(seq, kernel)
            absorbed = sum(err is None for _, err in run.points)
            golden = str(len(SEQUENCE_SITES[seq.name])) if kernel == "6.12" else ""
            print(f"{'fail_nth ' + seq.name:<44} {'mock':<13} {kernel:<6} {run.steps:>6} "
                  f"{absorbed:>8} {run.steps:>5} {golden:>18}")


if __name__ == "__main__":
    main()
