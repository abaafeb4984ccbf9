"""dma_map_page/dma_unmap_page's flattened single-granule path gives what the layered
dma-iommu path gives.

Two identical SMMUv3 machines run the same random sequence: one through
``dma_map_page``/``dma_unmap_page`` (the fast paths on), the other through
``iommu_dma.map_phys``/``unmap_phys`` with its domain's single-page path off.
Handles or errors, page tables, IOVA trees and magazines, flush-queue rings,
counters, warnings and the commands the SMMU consumed must stay the same,
with fail-nth armed at random, the flush timer firing, two CPUs, strict and lazy.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iommulab.devices import DmaDevice
from iommulab.dma import DMA_MAPPING_ERROR, DmaDirection, dma_map_page, dma_unmap_page, iommu_dma
from iommulab.dma.cookie import DmaCookie
from iommulab.errors import KernelError

from .platform import DmaPlatform, make_dma_platform

DIRS = [DmaDirection.TO_DEVICE, DmaDirection.FROM_DEVICE, DmaDirection.BIDIRECTIONAL,
        DmaDirection.NONE]


def _machine(strict: bool, fast: bool) -> tuple[DmaPlatform, DmaDevice, int]:
    p = make_dma_platform(strict=strict, ncpus=2, ram="256M")
    dev = p.device()
    pa = p.page()
    domain = dev.group.default_domain if dev.group is not None else None
    assert domain is not None
    if not fast:
        domain.disable_single_fast()
    return p, dev, pa


def _cookie(dev: DmaDevice) -> DmaCookie:
    assert dev.group is not None and dev.group.default_domain is not None
    cookie = dev.group.default_domain.cookie
    assert isinstance(cookie, DmaCookie)
    return cookie


def _state(p: DmaPlatform, dev: DmaDevice) -> Any:
    assert dev.group is not None
    domain = dev.group.default_domain
    assert domain is not None and domain.pgtbl is not None
    cookie = _cookie(dev)
    iovad = cookie.iovad
    assert iovad is not None
    iovad._check()
    domain.pgtbl._check()
    rings = [(r.head, r.tail, list(r.entries)) for r in cookie.rings]
    mags = [[(list(c.loaded), list(c.prev)) for c in rc.cpu] + [list(map(list, rc.depot))]
            for rc in iovad.rcaches.classes]
    return (domain.pgtbl.iter_entries(), dataclasses.asdict(domain.pgtbl.stats),
            dataclasses.asdict(domain.tlb_stats), dict(domain.warnings),
            iovad._los, dict(iovad._his), dataclasses.asdict(iovad.stats), mags, rings,
            dataclasses.asdict(cookie.fq_stats), cookie.fq_flush_start_cnt,
            cookie.fq_flush_finish_cnt, cookie.fq_timer_on,
            dict(p.hw.stats.commands), dataclasses.asdict(p.hw.iotlb.stats),
            p.mem.fail_nth.calls)


def _pages(h: int, size: int) -> set[int]:
    return set(range(h >> 12, ((h + size - 1) >> 12) + 1))


def _run(p: DmaPlatform, dev: DmaDevice, pa: int, fast: bool, live: list[tuple[int, int]],
         gone: list[tuple[int, int]], op: tuple[Any, ...]) -> Any:
    """One step. Unmaps use the size the handle was mapped with (the DMA API's rule: a
    wrong size frees IOVA pages another mapping holds, in the kernel as here); a double
    unmap repeats the last unmap while no live mapping has reused its IOVA."""
    kind, off, size, d, cpu, pick, nth, ms = op
    fail = p.mem.fail_nth
    if nth:
        fail.arm(nth)
    try:
        if kind == "map":
            if fast:
                h = dma_map_page(dev, pa + off, size, d, cpu=cpu)
            else:
                h = iommu_dma.map_phys(dev, pa + off, size, d, 0, cpu)
            if h != DMA_MAPPING_ERROR:
                live.append((h, size))
            return h
        if kind == "tick":
            p.clock.advance(ms * 1_000_000)
            return None
        if kind == "unmap" and live:
            h, size = live.pop(pick % len(live))
            gone[:] = [(h, size)]
        elif kind == "double" and gone:
            h, size = gone[0]
            if any(_pages(h, size) & _pages(lh, ls) for lh, ls in live):
                return "reused"
        else:
            return None
        if fast:
            dma_unmap_page(dev, h, size, d, cpu=cpu)
        else:
            iommu_dma.unmap_phys(dev, h, size, d, 0, cpu)
        return None
    except (KernelError, ValueError, IndexError) as err:
        return (type(err).__name__, str(err))
    finally:
        fail.disarm()


OPS = st.tuples(
    st.sampled_from(["map", "map", "unmap", "unmap", "double", "tick"]),
    st.sampled_from([0, 0, 0x10, 0x800, 0xF00, 0xFFF]),
    st.sampled_from([1500, 1500, 1, 0x100, 0x1000, 0x1001, 0x2000]),
    st.sampled_from(DIRS[:3] * 3 + DIRS[3:]),
    st.sampled_from([0, 0, 0, 1]),
    st.integers(0, 50),
    st.sampled_from([0] * 8 + [1, 2]),
    st.sampled_from([1, 5, 11]))


@pytest.mark.parametrize("strict", [False, True])
@settings(max_examples=40, deadline=None)
@given(ops=st.lists(OPS, max_size=60), warm=st.integers(0, 300))
def test_fast_matches_layered(strict: bool, ops: list[tuple[Any, ...]], warm: int) -> None:
    a, deva, pa = _machine(strict, True)
    b, devb, pb = _machine(strict, False)
    assert pa == pb
    try:
        for dev in (deva, devb):  # a warm rcache, a full ring
            for _ in range(warm):
                h = iommu_dma.map_phys(dev, pa, 1500, DmaDirection.TO_DEVICE, 0, 0)
                iommu_dma.unmap_phys(dev, h, 1500, DmaDirection.TO_DEVICE, 0, 0)
        la: list[tuple[int, int]] = []
        lb: list[tuple[int, int]] = []
        ga: list[tuple[int, int]] = []
        gb: list[tuple[int, int]] = []
        for op in ops:
            assert _run(a, deva, pa, True, la, ga, op) == _run(b, devb, pb, False, lb, gb, op), op
            assert _state(a, deva) == _state(b, devb), op
    finally:
        a.close()
        b.close()


def test_fast_path_takes_no_layered_call() -> None:
    """A warm lazy pair calls neither map_phys nor unmap_phys."""
    p, dev, pa = _machine(False, True)
    try:
        to_dev = DmaDirection.TO_DEVICE
        for _ in range(300):
            dma_unmap_page(dev, dma_map_page(dev, pa, 1500, to_dev), 1500, to_dev)
        calls: list[str] = []
        orig_map, orig_unmap = iommu_dma.map_phys, iommu_dma.unmap_phys
        try:
            iommu_dma.map_phys = lambda *a: calls.append("map") or orig_map(*a)  # type: ignore
            iommu_dma.unmap_phys = lambda *a: calls.append("unmap") or orig_unmap(*a)  # type: ignore
            h = dma_map_page(dev, pa + 0x10, 1500, to_dev)
            dma_unmap_page(dev, h, 1500, to_dev)
            assert calls == []
            dma_unmap_page(dev, h, 1500, to_dev)  # double unmap: the layered path warns
            assert calls == ["unmap"]
        finally:
            iommu_dma.map_phys, iommu_dma.unmap_phys = orig_map, orig_unmap
        domain = dev.group.default_domain if dev.group is not None else None
        assert domain is not None
        assert domain.warnings["iommu_dma_unmap_phys: no mapping (double unmap?)"] == 1
    finally:
        p.close()
