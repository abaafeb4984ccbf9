"""Fill and unfill by PFN runs (:func:`area_pfn_runs`, :func:`unfill_batches_runs`,
``_read_prefix_runs``) against the per-page reference (:meth:`IoptPages.fill_per_page`,
:meth:`IoptPages.unfill_per_page`, :func:`unfill_batches`): the same maps, unmaps,
unpins, counts, errors and domain contents, on random inputs and on whole scenarios
(areas shared by two domains, accesses, split domains, fail-nth)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from iommulab import Machine
from iommulab.api import Iommufd, VfioDevice
from iommulab.iommufd import pages as pages_mod
from iommulab.iommufd import uapi as u
from iommulab.iommufd.pages import (
    IoptPages,
    PfnRuns,
    _area_pfns,
    area_pfn_runs,
    unfill_batches,
    unfill_batches_runs,
)
from iommulab.mem.pins import pfn_runs

from .selftest_lib import MOCK_APERTURE_START, PAGE_SIZE, Selftest
from .test_batches import _kernel_unfill, _random_unfill


def _runs_of(pfns: list[int], first: int) -> PfnRuns:
    arr = np.array(pfns, dtype=np.int64)
    heads = np.concatenate(([0], np.flatnonzero(np.diff(arr) != 1) + 1)).astype(np.int64)
    counts = np.diff(np.append(heads, len(arr)))
    return PfnRuns(heads + first, arr[heads], counts)


@pytest.mark.parametrize("seed", range(400))
def test_unfill_batches_by_runs_match_per_page(seed: int) -> None:
    pfns, first, spans, cap = _random_unfill(seed)
    runs = _runs_of(pfns, first)
    want = unfill_batches(np.array(pfns, dtype=np.int64), first, spans, cap)
    assert unfill_batches_runs(runs, spans, cap) == want == _kernel_unfill(pfns, first,
                                                                            spans, cap)
    for kind, lo, hi in spans:  # what a hole unpins: the runs of its PFNs
        if not kind:
            assert runs.clip(lo, hi) == pfn_runs(np.array(pfns[lo - first:hi - first + 1],
                                                          dtype=np.int64))
    assert runs.expand().tolist() == pfns


def _state(t: Selftest, domains: list[Any]) -> tuple[Any, ...]:
    pins = t.m.mem.pins
    nz = pins.nonzero()
    present = tuple(tuple(d.ops.pfns.present(0, 1 << 22)[1].tolist()) for d in domains)
    stats = t.p.files[t.fd].ctx.stats  # type: ignore[attr-defined]
    return (pins.pins, pins.pinned_frames, tuple(nz.tolist()),
            tuple(pins.get(nz).tolist()), t.p.mm.pinned_vm, present,
            stats.map_calls, stats.unmap_calls, stats.batches)


def _scenario(seed: int, nth: int) -> list[Any]:
    """Random maps (4K pages scattered or in runs, THP, offsets in the page), accesses,
    two mock domains sharing the areas, unmaps whole and partial, a domain destroyed
    (its areas unfilled from it); fail-nth ``nth`` armed over the unmaps. The trace of
    results and states."""
    rng = random.Random(seed)
    t = Selftest(ram="256M")
    trace: list[Any] = []
    ioas = t.ioas_alloc()
    md = t.mock_domain(ioas, (1 << 1) if rng.random() < 0.3 else 0)
    ctx = t.p.files[t.fd].ctx  # type: ignore[attr-defined]
    hwpts = [md.hwpt_id]
    if rng.random() < 0.7:
        out = t.ioctl(u.IOMMU_HWPT_ALLOC, u.HWPT_ALLOC.pack(48, 0, md.idev_id, ioas, 0, 0, 0,
                                                            0, 0, 0, 0))
        hwpts.append(int(u.HWPT_ALLOC.unpack(out)[4]))
    domains = [ctx.objects[h].domain for h in hwpts]
    t.set_temp_memory_limit(rng.choice((48, 96, 400, 4096, 65536)))
    areas: list[tuple[int, int]] = []
    vas: list[int] = []
    iova = MOCK_APERTURE_START
    for _ in range(rng.randrange(1, 4)):
        npages = rng.randrange(1, 40)
        kind = rng.choice(("scattered", "anon", "thp"))
        va = t.p.mmap((npages + 1) * PAGE_SIZE, "thp" if kind == "thp" else "anon")
        if kind == "scattered":
            other = t.p.mmap((npages + 1) * PAGE_SIZE)
            for i in range(npages + 1):
                t.p.write(va + i * PAGE_SIZE, b"a")
                if rng.random() < 0.5:
                    t.p.write(other + i * PAGE_SIZE, b"b")
        off = rng.choice((0, 0, 2048)) if kind != "thp" else 0
        length = npages * PAGE_SIZE - off if off else npages * PAGE_SIZE
        try:
            t.map_fixed(ioas, va + off, length, iova + off)
            areas.append((iova + off, length))
            vas.append(va + off)
            trace.append(("map", 0))
        except OSError as e:
            trace.append(("map", e.errno))
        iova += (npages + 2) * PAGE_SIZE
    items = []
    try:
        access = t.create_access(ioas, 1)
    except OSError as e:  # an area in the middle of a page: no access may attach
        trace.append(("create_access", e.errno))
        access = -1
    for (a_iova, a_len), va in zip(areas, vas, strict=True):
        if access >= 0 and rng.random() < 0.5:
            lo = rng.randrange(0, a_len, PAGE_SIZE)
            n = min(rng.randrange(1, 4) * PAGE_SIZE, a_len - lo)
            try:
                items.append(t.access_pages(access, a_iova + lo, n, va + lo))
                trace.append(("access", 0))
            except OSError as e:
                trace.append(("access", e.errno))
    trace.append(_state(t, domains))
    if len(hwpts) > 1 and rng.random() < 0.5:  # the second domain goes: unfilled from it
        t.destroy(hwpts.pop())
        domains.pop()
        trace.append(_state(t, domains))
    if nth:
        t.m.mem.fail_nth.arm(nth)
    try:
        for a_iova, a_len in rng.sample(areas, len(areas)):
            try:
                trace.append(("unmap", t.unmap(ioas, a_iova, a_len)))
            except OSError as e:
                trace.append(("unmap", e.errno))
            trace.append(_state(t, domains))
    finally:
        trace.append(("triggered", t.m.mem.fail_nth.triggered))
        t.m.mem.fail_nth.disarm()
    for item in items:  # an unmap took back the items over it (the access's unmap op)
        try:
            t.destroy_access_pages(access, item)
            trace.append(("destroy item", 0))
        except OSError as e:
            trace.append(("destroy item", e.errno))
    if access >= 0:
        t.p.close(access)
    trace.append(_state(t, domains))
    t.close()
    return trace


@pytest.mark.parametrize("seed", range(40))
def test_unfill_by_runs_is_the_per_page_unfill(seed: int, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    for nth in (0, 1, 2, 3):
        by_runs = _scenario(seed, nth)
        with monkeypatch.context() as mp:
            mp.setattr(IoptPages, "unfill_by_runs", False)
            mp.setattr(IoptPages, "fill_by_runs", False)
            per_page = _scenario(seed, nth)
        assert by_runs == per_page


def test_area_pfn_runs_match_the_pfns_per_page() -> None:
    """Offsets in the first page, 2K mock IO pages, partial ranges, an unmapped hole."""
    t = Selftest()
    ioas = t.ioas_alloc()
    t.mock_domain(ioas, 1 << 1)
    ctx = t.p.files[t.fd].ctx  # type: ignore[attr-defined]
    rng = random.Random(7)
    for off in (0, 2048, 1024, 4095):
        va = t.p.mmap(24 * PAGE_SIZE)
        for i in rng.sample(range(24), 24):
            t.p.write(va + i * PAGE_SIZE, b"x")
        iova = MOCK_APERTURE_START + (4 << 20)
        try:
            t.map_fixed(ioas, va + off, 20 * PAGE_SIZE, iova + off)
        except OSError:
            continue
        area = next(iter(ctx.objects[ioas].iopt.areas()))
        domain = area.storage_domain
        for lo in range(area.index, area.last_index + 1, 3):
            for hi in (lo, area.last_index):
                runs = area_pfn_runs(area, domain, lo, hi)
                assert runs is not None
                assert runs.expand().tolist() == _area_pfns(area, domain, lo, hi).tolist()
        t.unmap(ioas, iova + off, 20 * PAGE_SIZE)
    t.close()


def _split_scenario(seed: int) -> list[Any]:
    """An SMMUv3 dirty-tracking domain split to 4K (``dirty_granule``), THP and 4K
    memory, partial unmaps refused, whole ones done, a dirty bitmap between."""
    rng = random.Random(seed)
    m = Machine("arm64-smmuv3", ram="512M")
    m.add_pci_device("0000:00:02.0")
    m.dirty_granule = 4096
    p = m.spawn_process(cap_ipc_lock=True)
    iommufd = Iommufd.open(p)
    fd, ioas = iommufd.fd, iommufd.ioas_alloc()
    dev = VfioDevice.open_cdev("/dev/vfio/devices/vfio0", p)
    hwpt = dev.attach_pt(iommufd.hwpt_alloc(dev.bind_iommufd(iommufd), ioas,
                                            u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING))
    trace: list[Any] = []
    iova = 1 << 32
    maps = []
    for _ in range(3):
        size = rng.choice((2 << 20, 4 << 20, 12 * PAGE_SIZE))
        va = p.mmap(size, rng.choice(("thp", "anon")))
        p.ioctl(fd, u.IOMMU_IOAS_MAP, bytearray(u.IOAS_MAP.pack(40, 7, ioas, 0, va, size,
                                                                iova)))
        maps.append((iova, size))
        iova += size + (2 << 20)
    p.ioctl(fd, u.IOMMU_HWPT_SET_DIRTY_TRACKING,
            bytearray(u.HWPT_SET_DIRTY_TRACKING.pack(16, 1, hwpt, 0)))
    for a_iova, size in rng.sample(maps, len(maps)):
        try:
            p.ioctl(fd, u.IOMMU_IOAS_UNMAP, bytearray(u.IOAS_UNMAP.pack(24, ioas, a_iova,
                                                                        size // 2)))
            trace.append("partial unmapped")
        except OSError as e:
            trace.append(e.errno)
        p.ioctl(fd, u.IOMMU_IOAS_UNMAP, bytearray(u.IOAS_UNMAP.pack(24, ioas, a_iova, size)))
        nz = m.mem.pins.nonzero()
        trace.append((m.mem.pins.pins, tuple(nz.tolist()), p.mm.pinned_vm))
    p.exit()
    assert m.mem.pins.pins == 0
    return trace


@pytest.mark.parametrize("seed", range(4))
def test_split_domain_unfill_by_runs_is_per_page(seed: int, monkeypatch: pytest.MonkeyPatch
                                                 ) -> None:
    by_runs = _split_scenario(seed)
    monkeypatch.setattr(IoptPages, "unfill_by_runs", False)
    monkeypatch.setattr(IoptPages, "fill_by_runs", False)
    assert _split_scenario(seed) == by_runs


def test_fail_nth_over_unmap_two_domains(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every fail-nth point of an unmap of areas two domains share, the areas half held
    by an access: the same errors and states by runs and per page."""
    def run(nth: int) -> list[Any]:
        t = Selftest()
        ioas = t.ioas_alloc()
        md = t.mock_domain(ioas)
        out = t.ioctl(u.IOMMU_HWPT_ALLOC, u.HWPT_ALLOC.pack(48, 0, md.idev_id, ioas, 0, 0,
                                                            0, 0, 0, 0, 0))
        ctx = t.p.files[t.fd].ctx  # type: ignore[attr-defined]
        domains = [ctx.objects[md.hwpt_id].domain,
                   ctx.objects[int(u.HWPT_ALLOC.unpack(out)[4])].domain]
        t.set_temp_memory_limit(48)
        va = t.p.mmap(10 * PAGE_SIZE)
        for i in (3, 1, 0, 7, 2, 9, 8, 4, 5, 6):
            t.p.write(va + i * PAGE_SIZE, b"a")
        t.map_fixed(ioas, va, 10 * PAGE_SIZE, MOCK_APERTURE_START)
        access = t.create_access(ioas, 1)
        item = t.access_pages(access, MOCK_APERTURE_START + 2 * PAGE_SIZE, 3 * PAGE_SIZE,
                              va + 2 * PAGE_SIZE)
        trace: list[Any] = [_state(t, domains)]
        t.m.mem.fail_nth.arm(nth)
        try:
            trace.append(t.unmap(ioas, MOCK_APERTURE_START, 10 * PAGE_SIZE))
        except OSError as e:
            trace.append(e.errno)
        finally:
            trace.append(t.m.mem.fail_nth.triggered)
            t.m.mem.fail_nth.disarm()
        trace.append(_state(t, domains))
        try:
            t.destroy_access_pages(access, item)
        except OSError as e:
            trace.append(e.errno)
        t.p.close(access)
        trace.append(_state(t, domains))
        t.close()
        return trace

    for nth in range(1, 12):
        by_runs = run(nth)
        with monkeypatch.context() as mp:
            mp.setattr(IoptPages, "unfill_by_runs", False)
            mp.setattr(IoptPages, "fill_by_runs", False)
            assert run(nth) == by_runs


def _map_trace(nth: int, seed: int) -> list[Any]:
    """IOAS_MAP into two mock domains of pages part held by an access, with a memlock
    limit, fail-nth ``nth`` armed over the map; then a third domain filled from the
    storage domain. The trace of results and states."""
    rng = random.Random(seed)
    t = Selftest(cap_ipc_lock=False, memlock=rng.choice((None, 24 * PAGE_SIZE)))
    ioas = t.ioas_alloc()
    md = t.mock_domain(ioas)
    out = t.ioctl(u.IOMMU_HWPT_ALLOC, u.HWPT_ALLOC.pack(48, 0, md.idev_id, ioas, 0, 0, 0, 0,
                                                        0, 0, 0))
    ctx = t.p.files[t.fd].ctx  # type: ignore[attr-defined]
    hwpts = [md.hwpt_id, int(u.HWPT_ALLOC.unpack(out)[4])]
    domains = [ctx.objects[h].domain for h in hwpts]
    t.set_temp_memory_limit(rng.choice((48, 96, 4096)))
    npages = rng.randrange(4, 30)
    va = t.p.mmap(npages * PAGE_SIZE, rng.choice(("anon", "thp")))
    order = rng.sample(range(npages), npages)
    for i in order:
        t.p.write(va + i * PAGE_SIZE, b"a")
    # an access holds some pages through an area over the same memory first
    t.map_fixed(ioas, va, npages * PAGE_SIZE, MOCK_APERTURE_START + (8 << 20))
    access = t.create_access(ioas, 1)
    lo = rng.randrange(npages - 1)
    n = rng.randrange(1, npages - lo)
    item = t.access_pages(access, MOCK_APERTURE_START + (8 << 20) + lo * PAGE_SIZE,
                          n * PAGE_SIZE, va + lo * PAGE_SIZE)
    trace: list[Any] = [_state(t, domains)]
    t.m.mem.fail_nth.arm(nth)
    try:
        trace.append(t.map_fixed(ioas, va, npages * PAGE_SIZE, MOCK_APERTURE_START))
    except OSError as e:
        trace.append(e.errno)
    finally:
        trace.append(t.m.mem.fail_nth.triggered)
        t.m.mem.fail_nth.disarm()
    trace.append(_state(t, domains))
    md2 = t.mock_domain(ioas)  # filled from the storage domain and the access
    domains.append(ctx.objects[md2.hwpt_id].domain)
    trace.append(_state(t, domains))
    t.destroy_access_pages(access, item)
    t.p.close(access)
    trace.append(_state(t, domains))
    t.close()
    return trace


@pytest.mark.parametrize("seed", range(6))
def test_fail_nth_over_map_by_runs_is_per_page(seed: int, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    for nth in range(1, 60):
        by_runs = _map_trace(nth, seed)
        with monkeypatch.context() as mp:
            mp.setattr(IoptPages, "unfill_by_runs", False)
            mp.setattr(IoptPages, "fill_by_runs", False)
            assert _map_trace(nth, seed) == by_runs
        if not by_runs[2]:
            break


@pytest.mark.parametrize("seed", range(0, 40, 5))
def test_leaf_windows_change_nothing(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """area_pfn_runs asks for leaves a window at a time; 8K windows (every boundary inside
    the areas) give the same traces as one window."""
    want = _scenario(seed, 2)
    monkeypatch.setattr(pages_mod, "_LEAF_WINDOW", 1 << 13)
    assert _scenario(seed, 2) == want
    test_area_pfn_runs_match_the_pfns_per_page()
