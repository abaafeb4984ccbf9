"""The long fuzz run of issue 19: seeded sequences of every call the model takes from users
(processes' memory calls, VFIO and iommufd ioctls, the selftest commands, device DMA) on
the four platforms, fail-nth injected on a share of the ops. Prints operations/s, the
operations per platform and every finding (crash site, invariant, leak, hang, slow op,
host memory) with how often it was seen and a minimal reproducer. Exit status 1 when
something was found.

    python3 benchmarks/fuzz_long.py --ops 1000000 --seed 1 --failnth-share 0.05
"""

from __future__ import annotations

import argparse
import sys
import time

from iommulab.machine import PLATFORMS
from iommulab.testing.fuzz import Fuzzer, FuzzReport, Guard, address_space_limit


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", type=int, default=100_000, help="operations in all")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--failnth-share", type=float, default=0.05,
                    help="share of operations run with fail-nth armed (0..1)")
    ap.add_argument("--platform", action="append", choices=sorted(PLATFORMS),
                    help="a platform to fuzz (repeatable; default: all four)")
    ap.add_argument("--kernel", action="append", choices=["6.12", "7.0"],
                    help="a kernel release (repeatable; default: both)")
    ap.add_argument("--wild", type=float, default=1.0,
                    help="scale of mmap/memfd lengths that must be refused (0: none)")
    ap.add_argument("--hang-seconds", type=float, default=20.0,
                    help="an operation running this long is a hang")
    ap.add_argument("--slow-seconds", type=float, default=1.0,
                    help="an operation running this long is reported slow")
    ap.add_argument("--mem-headroom", type=int, default=2048,
                    help="MiB of address space the run may grow by (RLIMIT_AS)")
    ap.add_argument("--minimize", type=int, default=300,
                    help="replays spent shortening each finding's first reproducer")
    ap.add_argument("--progress", action="store_true", help="a line on stderr per 10 s")
    args = ap.parse_args(argv)
    platforms = args.platform or ["x86-vtd", "arm64-smmuv3", "ppc64-pseries", "mock"]
    last = [time.monotonic()]

    def progress(rep: FuzzReport) -> None:
        if args.progress and time.monotonic() - last[0] > 10:
            last[0] = time.monotonic()
            print(f"  {rep.ops} ops, {rep.ops_per_second:.0f}/s, {len(rep.findings)} findings",
                  file=sys.stderr, flush=True)

    fuzzer = Fuzzer(args.seed, platforms, kernels=args.kernel or (),
                    failnth_share=args.failnth_share, wild=args.wild,
                    guard=Guard(args.hang_seconds, args.slow_seconds),
                    minimize_budget=args.minimize, on_sequence=progress)
    with address_space_limit(args.mem_headroom << 20):
        rep = fuzzer.run(args.ops)
    print(f"fuzz_long: seed {args.seed}, fail-nth on {args.failnth_share:.0%} of the ops, "
          f"{rep.sequences} sequences, {rep.seconds:.1f} s (+{rep.minimize_seconds:.1f} s "
          "shortening reproducers)")
    rows = [("operations", f"{rep.ops}"), ("operations/s", f"{rep.ops_per_second:.0f}")]
    rows += [(f"operations on {p}", f"{rep.ops_by_platform[p]}") for p in platforms]
    rows.append(("findings (crash sites, invariants, leaks, hangs)", f"{len(rep.findings)}"))
    for name, value in rows:
        print(f"  {name:<52} {value:>10}")
    for i, f in enumerate(sorted(rep.findings.values(), key=lambda f: (f.kind, f.key)), 1):
        print(f"\nfinding {i}: {f.key}\n  seen {f.count} times (sequences {', '.join(f.seeds)})")
        print("  " + f.message.replace("\n", "\n  "))
        print(f"  reproducer ({len(f.ops)} ops{', minimized' if f.minimized else ''}):")
        print("    " + f.reproducer().rstrip("\n").replace("\n", "\n    "))
    return 1 if rep.findings else 0


if __name__ == "__main__":
    sys.exit(main())
