"""The IOVA allocator: rcache-served alloc+free pairs, and random pairs of mixed sizes.

The first figure allocates and frees one 1..32-granule range at a time from
a warm per-CPU cache. The second keeps up to ``--live`` ranges allocated and,
``--pairs`` times, frees a random one and allocates a random size (1 to 64
granules, so a third go to the tree), 32-bit and 64-bit limits mixed.
"""

from __future__ import annotations

import argparse
import random
import time

from _common import Figure, median_wall_cpu, print_figures
from iommulab.iova import IovaDomain

LIMIT32 = 0xFFFFF
LIMIT48 = (1 << 36) - 1


def rcache_pair_us(calls: int, repeat: int) -> tuple[float, float]:
    d = IovaDomain(4096, 1)
    sizes = [1, 2, 4, 8, 16, 32] * (calls // 6 + 1)
    for s in sizes[:600]:
        d.free_iova_fast(d.alloc_iova_fast(s, LIMIT32), s)
    work = sizes[:calls]
    alloc, free = d.alloc_iova_fast, d.free_iova_fast

    def run() -> None:
        for s in work:
            free(alloc(s, LIMIT32), s)

    wall, cpu = median_wall_cpu(run, None, repeat)
    assert d.stats.rcache_misses < 700
    return wall * 1e6 / calls, cpu * 1e6 / calls


def random_pairs_us(pairs: int, live: int, seed: int) -> tuple[float, float, float]:
    rng = random.Random(seed)
    d = IovaDomain(4096, 1)
    held: list[tuple[int, int]] = []
    sizes = [rng.randint(1, 64) for _ in range(pairs + live)]
    limits = [LIMIT32 if rng.random() < 0.5 else LIMIT48 for _ in range(pairs + live)]
    picks = [rng.random() for _ in range(pairs)]
    for i in range(live):
        held.append((d.alloc_iova_fast(sizes[i], limits[i]), sizes[i]))
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(pairs):
        k = int(picks[i] * len(held))
        pfn, size = held[k]
        held[k] = held[-1]
        held.pop()
        d.free_iova_fast(pfn, size)
        s = sizes[live + i]
        held.append((d.alloc_iova_fast(s, limits[live + i]), s))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    d._check()
    hit_rate = d.stats.rcache_hits / (d.stats.rcache_hits + d.stats.rcache_misses)
    return elapsed * 1e6 / pairs, cpu * 1e6 / pairs, hit_rate * 100


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--pairs", type=int, default=1_000_000)
    ap.add_argument("--live", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    mixed, mixed_cpu, hits = random_pairs_us(args.pairs, args.live, args.seed)
    pair, pair_cpu = rcache_pair_us(args.calls, args.repeat)
    print_figures(f"bench_iova: median of {args.repeat} x {args.calls}; {args.pairs} random pairs",
                  [Figure("rcache-served alloc_iova_fast + free_iova_fast", pair, "us/pair", 2,
                          cpu=pair_cpu),
                   Figure(f"random mixed-size pairs, {args.live} live", mixed, "us/pair",
                          cpu=mixed_cpu),
                   Figure("  of which served by the rcache", hits, "%")])


if __name__ == "__main__":
    main()
