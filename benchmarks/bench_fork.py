"""fork of a process with 64 GiB of THP memory, copy-on-write.

The child shares the parent's private memory (32768 PMDs), so the fork takes no
frame; its first write copies one 4K page; its exit drops the shared mappings.
A second run pins 1 GiB of the parent first (as VFIO would): fork copies those
pages for the child at once, 4K at a time (the parent's PMDs split), and shares
the rest. Each figure is one wall-clock run on a machine with 4 GiB to spare,
where a fork that copied everything could not run.

A third run pins all of it again after two forks (MAP_DMA after the child of a fork
has gone): pin, fork, unpin, fork, pin. The parent's THPs are mapped by 4K pages by
then and none of its pages is its own exclusively any more, so the pin makes each page
its own: 6.12 copies every page of a large folio, 7.0 reuses them
(``__wp_can_reuse_large_anon_folio``), deciding once per folio.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _common import Figure, print_figures
from iommulab import Machine


class _Clock:
    """Wall and process CPU seconds since it was made."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def run(gib: int, pinned_gib: int) -> list[Figure]:
    m = Machine("x86-vtd", ram=f"{gib + 4}G")
    frames = m.mem.frames
    p = m.spawn_process()
    va = p.mmap(gib << 30, "thp", populate=True)
    pins = p.mm.pin_user_pages(va, pinned_gib << 18, write=True) if pinned_gib else None
    used = frames.total_frames - frames.free_frames
    clock = _Clock()
    c = p.fork()
    t_fork = clock.read()
    copied = frames.total_frames - frames.free_frames - used
    clock = _Clock()
    c.write(va + (gib << 29), b"child")
    t_write = clock.read()
    clock = _Clock()
    c.exit()
    t_exit = clock.read()
    if pins is not None:
        p.mm.unpin_user_pages(pins)
    p.exit()
    assert m.mem.pins.pins == 0 and frames.free_frames == frames.total_frames
    what = f"{gib} GiB THP" + (f", {pinned_gib} GiB pinned" if pinned_gib else "")
    return [Figure(f"fork of {what} ({copied} pages copied)", t_fork[0], "s", cpu=t_fork[1]),
            Figure(f"first write by the child ({what})", t_write[0] * 1e3, "ms",
                   cpu=t_write[1] * 1e3),
            Figure(f"exit of the child ({what})", t_exit[0], "s", cpu=t_exit[1])]


def run_pin_after_fork(gib: int, kernel: str) -> Figure:
    m = Machine("x86-vtd", ram=f"{2 * gib + 4}G", kernel=kernel)
    frames = m.mem.frames
    p = m.spawn_process()
    va = p.mmap(gib << 30, "thp", populate=True)
    pins = p.mm.pin_user_pages(va, gib << 18, write=True)
    p.fork().exit()  # the pinned THPs were copied for the child: the parent's PMDs split
    p.mm.unpin_user_pages(pins)
    p.fork().exit()  # every page shared by its PTE, then the parent is alone again
    vma = p.mm.find_vma(va)
    assert vma is not None
    before = vma.pfns()
    clock = _Clock()
    runs = p.mm.pin_user_page_runs(va, gib << 18, write=True)
    t_pin, cpu_pin = clock.read()
    copied = int(np.count_nonzero(vma.pfns() != before))
    p.mm.unpin_user_page_runs(runs)
    p.exit()
    assert m.mem.pins.pins == 0 and frames.free_frames == frames.total_frames
    return Figure(f"pin of {gib} GiB THP after fork, {kernel}: {copied} copied", t_pin, "s",
                  cpu=cpu_pin)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=int, default=64)
    ap.add_argument("--pinned-gib", type=int, default=1)
    args = ap.parse_args()
    figs = run(args.gib, 0) + run(args.gib, args.pinned_gib)
    figs += [run_pin_after_fork(args.gib, kernel) for kernel in ("6.12", "7.0")]
    print_figures(f"bench_fork: x86-vtd, {args.gib} GiB", figs)


if __name__ == "__main__":
    main()
