"""The single-page fast path of iommu_map/iommu_unmap gives what the layered path gives.

Two domains built alike, one with the fast path and one without, run the same
random sequence of map, unmap and unmap_fast calls (good and bad input, 4K and
larger sizes, fail-nth armed at random); after every step both must have the
same entries (raw descriptor bits), return values, errnos and messages,
gathers, IOTLB syncs and counters.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iommulab import Prot
from iommulab.errors import KernelError
from iommulab.iommu import IommuDomain, IommuIotlbGather, alloc_paging_domain
from iommulab.mem import PhysMem
from iommulab.pgtable import IoPgtableCfg, IoPgtableFmt
from iommulab.sizes import SZ_1G, SZ_2M, SZ_4K, SZ_64K

RW = Prot.READ | Prot.WRITE
BASE = 0x4000_0000

FMTS = [
    (IoPgtableFmt.ARM_64_LPAE_S1, SZ_4K | SZ_2M | SZ_1G),
    (IoPgtableFmt.ARM_64_LPAE_S2, SZ_4K | SZ_2M | SZ_1G),
    (IoPgtableFmt.ARM_64_LPAE_S1, SZ_64K | (512 << 20)),
]


def _pair(fmt: IoPgtableFmt, pgsizes: int) -> tuple[IommuDomain, IommuDomain]:
    fast = alloc_paging_domain(fmt, IoPgtableCfg(pgsizes, 48, 48), mem=PhysMem("64M"))
    slow = alloc_paging_domain(fmt, IoPgtableCfg(pgsizes, 48, 48), mem=PhysMem("64M"))
    assert fast.enable_single_fast()
    slow.disable_single_fast()
    return fast, slow


def _state(d: IommuDomain) -> tuple[Any, ...]:
    pg = d.pgtbl
    assert pg is not None
    pg._check()
    return (pg.iter_entries(), dataclasses.asdict(pg.stats), dataclasses.asdict(d.tlb_stats),
            dict(d.warnings), pg.mem.fail_nth.calls)


def _call(d: IommuDomain, op: tuple[Any, ...]) -> Any:
    kind, iova, pa, size, prot, queued, nth = op
    fail = d.pgtbl.mem.fail_nth if d.pgtbl is not None else None
    assert fail is not None
    if nth:
        fail.arm(nth)
    try:
        if kind == "map":
            d.map(iova, pa, size, prot)
            return None
        if kind == "unmap":
            return d.unmap(iova, size)
        gather = IommuIotlbGather()
        gather.queued = queued
        if kind == "unmap_fast2":  # a gather that already holds a page
            gather.add_range(BASE + 0x100 * SZ_4K, SZ_4K)
            gather.pgsize = SZ_4K
        done = d.unmap_fast(iova, size, gather)
        got = (done, dataclasses.astuple(gather))
        d.iotlb_sync(gather)
        return got
    except KernelError as err:
        return (type(err).__name__, err.errno, str(err))
    finally:
        fail.disarm()


def _ops(page: int) -> st.SearchStrategy[tuple[Any, ...]]:
    iovas = st.one_of(
        st.integers(0, 40).map(lambda i: BASE + i * page),
        st.sampled_from([BASE + 0x800, 1 << 48, (1 << 48) - page, 0]))
    pas = st.one_of(st.integers(0, 40).map(lambda i: 0x1000_0000 + i * page),
                    st.sampled_from([0x800, 1 << 48, 0x1000_0000 + SZ_2M]))
    sizes = st.sampled_from([page, page, page, 2 * page, SZ_2M, 0x800])
    prots = st.sampled_from([RW, Prot.READ, Prot.WRITE, Prot(0), int(RW), RW | Prot.CACHE])
    kinds = st.sampled_from(["map", "map", "unmap", "unmap_fast", "unmap_fast2"])
    return st.tuples(kinds, iovas, pas, sizes, prots, st.booleans(),
                     st.sampled_from([0, 0, 0, 1, 2]))


@pytest.mark.parametrize(("fmt", "pgsizes"), FMTS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_fast_matches_layered(fmt: IoPgtableFmt, pgsizes: int, data: st.DataObject) -> None:
    fast, slow = _pair(fmt, pgsizes)
    page = pgsizes & -pgsizes
    for op in data.draw(st.lists(_ops(page), max_size=40)):
        assert _call(fast, op) == _call(slow, op), op
        assert _state(fast) == _state(slow), op


def test_fast_path_is_taken() -> None:
    """The map and unmap of a page whose table exists go through the fast path only."""
    fast, _ = _pair(IoPgtableFmt.ARM_64_LPAE_S1, SZ_4K | SZ_2M | SZ_1G)
    fast.map(BASE, 0x1000_0000, SZ_4K, RW)  # allocates the tables: layered
    assert fast.unmap(BASE, SZ_4K) == SZ_4K
    pg = fast.pgtbl
    assert pg is not None
    calls: list[str] = []
    orig_map, orig_unmap = pg.map_pages, pg.unmap_pages
    pg.map_pages = lambda *a, **k: calls.append("map") or orig_map(*a, **k)  # type: ignore
    pg.unmap_pages = lambda *a, **k: calls.append("unmap") or orig_unmap(*a, **k)  # type: ignore
    fast.map(BASE, 0x1000_0000, SZ_4K, RW)
    assert fast.unmap(BASE, SZ_4K) == SZ_4K
    assert calls == []
    assert fast.unmap(BASE, SZ_4K) == 0  # an empty entry: the layered path warns
    assert calls == ["unmap"]
    assert pg.stats.warnings["unmap_pages: unmapping an empty entry"] == 1


def test_wrapped_ops_turn_the_fast_path_off() -> None:
    """A test's wrapper in domain.ops sees every call, as with the layered path."""
    fast, _ = _pair(IoPgtableFmt.ARM_64_LPAE_S1, SZ_4K | SZ_2M | SZ_1G)
    fast.map(BASE, 0x1000_0000, SZ_4K, RW)
    inner = fast.ops
    seen: list[str] = []

    class Wrap:
        def __getattr__(self, name: str) -> Any:
            seen.append(name)
            return getattr(inner, name)

    fast.ops = Wrap()
    assert fast.unmap(BASE, SZ_4K) == SZ_4K
    assert "unmap_pages" in seen


def test_free_turns_the_fast_path_off() -> None:
    fast, _ = _pair(IoPgtableFmt.ARM_64_LPAE_S1, SZ_4K | SZ_2M | SZ_1G)
    fast.map(BASE, 0x1000_0000, SZ_4K, RW)
    fast.free()
    assert not fast.enable_single_fast()
    with pytest.raises(KernelError):
        fast.map(BASE, 0x1000_0000, SZ_4K, RW)


def test_non_coherent_walk_has_no_fast_path() -> None:
    d = alloc_paging_domain(IoPgtableFmt.ARM_64_LPAE_S1,
                            IoPgtableCfg(SZ_4K | SZ_2M, 48, 48, coherent_walk=False))
    assert not d.enable_single_fast()


def test_fail_nth_sweep_same_with_and_without() -> None:
    """fail-nth 1, 2, … on a map that needs tables: same errno, state and leaks."""
    nth = 1
    while True:
        fast, slow = _pair(IoPgtableFmt.ARM_64_LPAE_S1, SZ_4K | SZ_2M | SZ_1G)
        op = ("map", BASE + 0x7000, 0x2000_0000, SZ_4K, RW, False, nth)
        a, b = _call(fast, op), _call(slow, op)
        assert a == b
        assert _state(fast) == _state(slow)
        if a is None:
            break
        assert a[1] == 12  # ENOMEM
        nth += 1
    assert nth > 1


def test_changed_page_sizes_turn_the_fast_path_off() -> None:
    """A domain whose pgsize_bitmap no longer has 4K refuses a 4K map as iommu_map does."""
    fast, slow = _pair(IoPgtableFmt.ARM_64_LPAE_S1, SZ_4K | SZ_2M | SZ_1G)
    for d in (fast, slow):
        d.map(BASE, 0x1000_0000, SZ_4K, RW)
        d.unmap(BASE, SZ_4K)
        d.pgsize_bitmap = SZ_2M | SZ_1G
    op = ("map", BASE + 0x1000, 0x1000_1000, SZ_4K, RW, False, 0)
    a, b = _call(fast, op), _call(slow, op)
    assert a == b and a[1] == 22  # EINVAL: unaligned to the smallest page
    assert _state(fast) == _state(slow)
