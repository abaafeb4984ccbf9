"""The kernel's iommufd selftest (linux-source-6.12, unmodified) under ``iommulab exec``.

Builds ``tools/testing/selftests/iommu/iommufd.c`` as its Makefile does
(:mod:`iommulab.testing.kselftest`) and runs it against a mock-platform machine:
prints the test counts, wall time, CPU time of the supervisor (bridge and model) and of
the program tree, and the number of model ioctls. Harness options after ``--`` (e.g.
``-- -f iommufd_dirty_tracking``) run part of it. MAP_HUGETLB tests need free 2M pages
(``sysctl vm.nr_hugepages=64``); the free count is printed. On a loaded machine the
times grow: run it on an idle one.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

from _common import Figure, print_figures
from iommulab.machine import Machine
from iommulab.testing.kselftest import build_selftest, run_selftest


def _free_hugepages() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("HugePages_Free:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernel", default="6.12", help="the version the machine answers as")
    ap.add_argument("--failures", action="store_true", help="list the failing tests")
    ap.add_argument("harness", nargs="*", help="options for the selftest's harness")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            exe = build_selftest(Path(tmp))
        except FileNotFoundError as e:
            sys.exit(f"bench_selftest: {e}")
        free = _free_hugepages()
        run = run_selftest(Machine("mock", kernel=args.kernel), exe, args.harness)
    if run.handler_errors:
        sys.exit(f"bench_selftest: the model raised: {run.handler_errors}")
    counts = collections.Counter(r.outcome for r in run.results)
    print_figures(
        f"bench_selftest: iommufd selftest under exec, mock platform, kernel "
        f"{args.kernel}, {free} free 2M hugetlb pages",
        [Figure("tests run", len(run.results), "tests"),
         *(Figure(f"  {k}", counts[k], "tests") for k in ("pass", "fail", "skip", "xfail")
           if counts[k] or k in ("pass", "fail")),
         Figure("wall time", run.wall, "s"),
         Figure("CPU time, supervisor (bridge + model)", run.cpu_model, "s"),
         Figure("CPU time, the program tree", run.cpu_program, "s"),
         Figure("model ioctls", run.ioctls, "calls"),
         Figure("mean wall time per model ioctl", 1e6 * run.wall / max(run.ioctls, 1),
                "us")])
    if args.failures:
        for r in run.results:
            if r.outcome == "fail":
                print(f"  FAIL {r.name}")


if __name__ == "__main__":
    main()
