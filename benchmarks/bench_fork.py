"""fork of a process with 64 GiB of THP memory, copy-on-write.

The child shares the parent's private memory (32768 PMDs), so the fork takes no
frame; its first write copies one 4K page; its exit drops the shared mappings.
A second run pins 1 GiB of the parent first (as VFIO would): fork copies those
pages for the child at once, 4K at a time (the parent's PMDs split), and shares
the rest. Each figure is one wall-clock run on a machine with 4 GiB to spare,
where a fork that copied everything could not run.
"""

from __future__ import annotations

import argparse
import time

from _common import Figure, print_figures
from iommulab import Machine


def run(gib: int, pinned_gib: int) -> list[Figure]:
    m = Machine("x86-vtd", ram=f"{gib + 4}G")
    frames = m.mem.frames
    p = m.spawn_process()
    va = p.mmap(gib << 30, "thp", populate=True)
    pins = p.mm.pin_user_pages(va, pinned_gib << 18, write=True) if pinned_gib else None
    used = frames.total_frames - frames.free_frames
    t0 = time.perf_counter()
    c = p.fork()
    t_fork = time.perf_counter() - t0
    copied = frames.total_frames - frames.free_frames - used
    t0 = time.perf_counter()
    c.write(va + (gib << 29), b"child")
    t_write = time.perf_counter() - t0
    t0 = time.perf_counter()
    c.exit()
    t_exit = time.perf_counter() - t0
    if pins is not None:
        p.mm.unpin_user_pages(pins)
    p.exit()
    assert m.mem.pins.pins == 0 and frames.free_frames == frames.total_frames
    what = f"{gib} GiB THP" + (f", {pinned_gib} GiB pinned" if pinned_gib else "")
    return [Figure(f"fork of {what} ({copied} pages copied)", t_fork, "s"),
            Figure(f"first write by the child ({what})", t_write * 1e3, "ms"),
            Figure(f"exit of the child ({what})", t_exit, "s")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=int, default=64)
    ap.add_argument("--pinned-gib", type=int, default=1)
    args = ap.parse_args()
    figs = run(args.gib, 0) + run(args.gib, args.pinned_gib)
    print_figures(f"bench_fork: x86-vtd, {args.gib} GiB", figs)


if __name__ == "__main__":
    main()
