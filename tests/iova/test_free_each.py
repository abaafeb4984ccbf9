"""free_iova_fast's inlined magazine push gives what iova_rcache_insert gives.

Two IOVA domains run the same random allocations and frees (sizes 1 to 40
granules, two CPUs, one going offline and back, fail-nth on magazine
allocations); one frees with ``free_iova_fast``, the other with the layered
``Rcaches.insert`` then ``free_iova``. Trees, magazines, depots and counters
must stay the same.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from iommulab.clock import Clock
from iommulab.iova import IovaDomain
from iommulab.mem.fault import FailNth


def _layered_free(iovad: IovaDomain, pfn: int, size: int, cpu: int) -> None:
    """free_iova_fast as written before the inlined push: Rcaches.insert, else the tree."""
    if iovad.rcaches.insert(pfn, size, cpu):
        iovad.stats.rcache_inserts += 1
        return
    iovad.stats.rcache_insert_fails += 1
    iovad.free_iova(pfn)


def _state(iovad: IovaDomain) -> Any:
    iovad._check()
    mags = [[(list(c.loaded), list(c.prev)) for c in rc.cpu] + [list(map(list, rc.depot))]
            for rc in iovad.rcaches.classes]
    return (iovad._los, dict(iovad._his), dataclasses.asdict(iovad.stats), mags,
            sorted(iovad.rcaches.online), iovad.rcaches.magazines)


def _step(iovad: IovaDomain, fast: bool, live: list[tuple[int, int]], op: Any) -> Any:
    kind, size, cpu, pick, nth = op
    fail = iovad.fail_nth
    assert fail is not None
    if nth:
        fail.arm(nth)
    try:
        if kind == "alloc":
            pfn = iovad.alloc_iova_fast(size, 0xFFFFF, True, cpu)
            if pfn:
                live.append((pfn, size))
            return pfn
        if kind == "free" and live:
            pfn, n = live.pop(pick % len(live))
            if fast:
                iovad.free_iova_fast(pfn, n, cpu)
            else:
                _layered_free(iovad, pfn, n, cpu)
            return pfn
        if kind == "offline" and cpu in iovad.rcaches.online and len(iovad.rcaches.online) > 1:
            iovad.rcaches.cpu_dead(cpu)
        elif kind == "online":
            iovad.rcaches.cpu_online(cpu)
        return None
    except ValueError as err:  # an offline CPU
        return str(err)
    finally:
        fail.disarm()


OPS = st.tuples(st.sampled_from(["alloc"] * 4 + ["free"] * 4 + ["offline", "online"]),
                st.sampled_from([1, 1, 1, 1, 2, 3, 8, 40]), st.sampled_from([0, 0, 1]),
                st.integers(0, 1000), st.sampled_from([0] * 12 + [1]))


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(OPS, max_size=400))
def test_free_iova_fast_matches_insert(ops: list[Any]) -> None:
    a = IovaDomain(0x1000, 1, ncpus=2, clock=Clock(), fail_nth=FailNth())
    b = IovaDomain(0x1000, 1, ncpus=2, clock=Clock(), fail_nth=FailNth())
    la: list[tuple[int, int]] = []
    lb: list[tuple[int, int]] = []
    for op in ops:
        assert _step(a, True, la, op) == _step(b, False, lb, op), op
    assert _state(a) == _state(b)


def test_full_magazine_goes_the_layered_way() -> None:
    """Past 127 pfns the loaded magazine swaps with prev, as iova_rcache_insert does."""
    iovad = IovaDomain(0x1000, 1, ncpus=1, clock=Clock())
    pfns = [iovad.alloc_iova_fast(1, 0xFFFFF) for _ in range(300)]
    for pfn in pfns:
        iovad.free_iova_fast(pfn, 1)
    c = iovad.rcaches.classes[0].cpu[0]
    assert len(c.prev) == 127 and len(c.loaded) == 300 - 254
    assert len(iovad.rcaches.classes[0].depot) == 1
    assert iovad.stats.rcache_inserts == 300
    iovad._check()
