"""iopt_pages fill and unfill a batch at a time, as drivers/iommu/iommufd/pages.c does.

:func:`fill_batches` and :func:`unfill_batches` are checked against a transcription of
the kernel's loops that moves one PFN at a time (``batch_add_pfn``, ``pfn_reader_next``,
``iopt_area_unpin_domain``, ``__iopt_area_unfill_domain``) on random inputs; then the
map and unmap calls (and IOTLB syncs) a real fill and unfill make are counted."""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest

from iommulab.drivers.mock import MOCK_PFN_HUGE_IOVA
from iommulab.iommufd import uapi as u
from iommulab.iommufd.pages import fill_batches, unfill_batches
from iommulab.iommufd.selftest import OP_SET_TEMP_MEMORY_LIMIT

from .selftest_lib import MOCK_APERTURE_START, PAGE_SIZE, Selftest


class _Batch:
    """``struct pfn_batch``, one PFN at a time: ``array_size`` entries of which ``end``
    are used, each a first PFN and a count (a count may drop to 0: ``batch_skip_carry``
    leaves the entry in place)."""

    def __init__(self, array_size: int) -> None:
        self.array_size = array_size
        self.pfns = [0] * array_size
        self.npfns = [0] * array_size
        self.clear()

    def clear(self) -> None:
        """``batch_clear``."""
        self.total = self.end = 0
        self.pfns[0] = self.npfns[0] = 0

    def add(self, pfn: int) -> bool:
        """``batch_add_pfn`` (runs never reach the u32 limit here)."""
        end = self.end
        if end and pfn == self.pfns[end - 1] + self.npfns[end - 1]:
            self.npfns[end - 1] += 1
        elif end < self.array_size:
            self.pfns[end], self.npfns[end] = pfn, 1
            self.end += 1
        else:
            return False
        self.total += 1
        return True

    def clear_carry(self, keep: int) -> None:
        """``batch_clear_carry``: the last ``keep`` PFNs of the last entry become entry 0."""
        if not keep:
            self.clear()
            return
        assert self.end and self.npfns[self.end - 1] >= keep  # the kernel's WARN_ON
        self.total = keep
        self.pfns[0] = self.pfns[self.end - 1] + self.npfns[self.end - 1] - keep
        self.npfns[0] = keep
        self.end = 1

    def skip_carry(self, skip: int) -> None:
        """``batch_skip_carry``: entry 0 stays, even when nothing is left of it."""
        if not self.total:
            return
        assert self.total == self.npfns[0]  # the kernel's WARN_ON
        skip = min(self.total, skip)
        self.pfns[0] += skip
        self.npfns[0] -= skip
        self.total -= skip


def _kernel_unfill(pfns: list[int], first: int, spans: list[tuple[int, int, int]],
                   cap: int) -> list[tuple[int, int]]:
    """``__iopt_area_unfill_domain`` and ``iopt_area_unpin_domain``, statement by
    statement: the ``(first, last)`` page ranges ``iopt_area_unmap_domain_range`` gets."""
    last = first + len(pfns) - 1
    out: list[tuple[int, int]] = []
    batch = _Batch(cap)
    unmapped_end = first

    def from_domain(start: int, stop: int) -> None:  # batch_from_domain
        while start <= stop and batch.add(pfns[start - first]):
            start += 1

    def from_domain_continue(start: int, stop: int) -> None:  # batch_from_domain_continue
        array_size, batch.array_size = batch.array_size, batch.end
        from_domain(start, stop)
        batch.array_size = array_size

    def unpin_domain(start: int, hi: int) -> None:  # iopt_area_unpin_domain
        nonlocal unmapped_end
        while start <= hi:
            if unmapped_end <= hi:
                if batch.total:
                    assert unmapped_end - batch.total == start  # the kernel's WARN_ON
                from_domain(max(start, unmapped_end), hi)
                batch_last = start + batch.total - 1
            else:
                batch_last = hi
            assert batch_last <= last  # the kernel's WARN_ON
            if batch_last == hi and hi != last:
                from_domain_continue(hi + 1, last)
            if unmapped_end <= batch_last:
                out.append((unmapped_end, start + batch.total - 1))
                unmapped_end = start + batch.total
            start = batch_last + 1
            batch.clear_carry(unmapped_end - batch_last - 1)

    for kind, lo, hi in spans:
        if kind:
            batch.skip_carry(hi - lo + 1)
        else:
            unpin_domain(lo, hi)
    if unmapped_end != last + 1:
        out.append((unmapped_end, last))
    assert not batch.total  # the kernel's WARN_ON
    return out


def _kernel_fill_batches(pfns: list[int], readable: int, cap: int) -> int:
    """Batches ``pfn_reader_next`` completes when only the first ``readable`` PFNs can be
    read (the next one is a GUP error)."""
    done, index = 0, 0
    while index < len(pfns):
        batch = _Batch(cap)
        while index < len(pfns):
            if index >= readable:
                return done
            if not batch.add(pfns[index]):
                break
            index += 1
        done += 1
    return done


def _random_pfns(rng: random.Random, n: int, spread: int) -> list[int]:
    """Runs of contiguous PFNs; a break jumps to any PFN below ``spread`` (a small spread
    makes a PFN continue a run that ended pages before, as a page mapped twice can)."""
    out, pfn = [], rng.randrange(spread)
    for _ in range(n):
        out.append(pfn)
        pfn = pfn + 1 if rng.random() < 0.6 else rng.randrange(spread)
    return out


def _random_spans(rng: random.Random, first: int, n: int) -> list[tuple[int, int, int]]:
    """Holes (kind 0) and spans an access (1) or another domain (2) holds, in any order."""
    spans: list[tuple[int, int, int]] = []
    lo = first
    while lo < first + n:
        hi = min(first + n - 1, lo + rng.randrange(6))
        kind = rng.choice((0, 0, 1, 2))
        if spans and spans[-1][0] == kind:
            spans[-1] = (kind, spans[-1][1], hi)
        else:
            spans.append((kind, lo, hi))
        lo = hi + 1
    return spans


def _random_unfill(seed: int) -> tuple[list[int], int, list[tuple[int, int, int]], int]:
    """A random unfill: the area's PFNs, its first page, its spans, the batch size."""
    rng = random.Random(seed)
    n = rng.randrange(1, 40)
    first = rng.randrange(5)
    pfns = _random_pfns(rng, n, 10_000 if seed % 2 else 60)
    return pfns, first, _random_spans(rng, first, n), rng.randrange(1, 6)


@pytest.mark.parametrize("seed", range(600))
def test_unfill_batches_match_the_kernel_loop(seed: int) -> None:
    pfns, first, spans, cap = _random_unfill(seed)
    assert unfill_batches(np.array(pfns, dtype=np.int64), first, spans, cap) == \
        _kernel_unfill(pfns, first, spans, cap)


@pytest.mark.parametrize(("pfns", "spans", "cap", "unmaps"), [
    # cap 1: the next hole's first batch has no free entry, reads nothing and unmaps the
    # used pages before the hole alone
    ([100, 200, 300, 400, 500, 600, 601, 700, 800, 900], [(0, 3, 8), (1, 9, 11), (0, 12, 12)],
     1, [(3, 3), (4, 4), (5, 5), (6, 6), (7, 7), (8, 9), (10, 11), (12, 12)]),
    # cap 2: the next hole's first batch holds one new run
    ([100, 200, 201, 500, 700, 300, 400], [(0, 3, 4), (2, 5, 6), (0, 7, 9)],
     2, [(3, 5), (6, 7), (8, 9)]),
    # cap 2: page 7's PFN is the one after the carry's last, so it joins entry 0 and the
    # batch still holds two runs
    ([100, 200, 201, 500, 202, 300, 400], [(0, 3, 4), (2, 5, 6), (0, 7, 9)],
     2, [(3, 5), (6, 8), (9, 9)]),
], ids=["cap-1", "cap-2", "join"])
def test_a_carry_a_used_span_swallows_keeps_its_batch_entry(
        pfns: list[int], spans: list[tuple[int, int, int]], cap: int,
        unmaps: list[tuple[int, int]]) -> None:
    """``batch_skip_carry`` lowers entry 0's count to 0 but leaves ``batch->end`` at 1, so
    the next hole's first batch has ``cap - 1`` free entries, and ``batch_add_pfn``
    extends entry 0 with a PFN that follows the carry's last."""
    assert _kernel_unfill(pfns, 3, spans, cap) == unmaps
    assert unfill_batches(np.array(pfns, dtype=np.int64), 3, spans, cap) == unmaps


@pytest.mark.parametrize("seed", range(200))
def test_fill_batches_match_the_kernel_reader(seed: int) -> None:
    rng = random.Random(seed)
    pfns = _random_pfns(rng, rng.randrange(1, 40), 10_000)
    readable = rng.randrange(len(pfns) + 1)
    cap = rng.randrange(1, 6)
    prefix = np.array(pfns[:readable], dtype=np.int64)
    nruns = int(np.count_nonzero(np.diff(prefix) != 1)) + 1 if readable else 0
    complete = readable == len(pfns)
    assert fill_batches(nruns, complete, cap) == _kernel_fill_batches(pfns, readable, cap)


def _scattered(t: Selftest, npages: int) -> int:
    """A buffer of ``npages`` pages none of which is physically next to another: two
    buffers faulted in page by page, in turns."""
    va, other = t.p.mmap(npages * PAGE_SIZE), t.p.mmap(npages * PAGE_SIZE)
    for i in range(npages):
        t.p.write(va + i * PAGE_SIZE, b"a")
        t.p.write(other + i * PAGE_SIZE, b"b")
    return va


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_fill_and_unfill_a_batch_at_a_time(kernel: str) -> None:
    """SET_TEMP_MEMORY_LIMIT 48: batches of 4 PFN runs. A 10-run area is mapped with 10
    ``iommu_map`` calls in 3 batches. Unmapped with nothing else holding its pages, it
    goes in one ``iommu_unmap`` (``__iopt_area_unfill_domain``): the unfill batch of
    ``last_index + 1`` = 10 entries (120 bytes) fits the 256-byte stack backup, which
    ``temp_kmalloc`` returns before looking at the limit; a second domain is unmapped in
    one call (``iopt_area_unmap_domain``)."""
    t = Selftest(kernel=kernel)
    ioas = t.ioas_alloc()
    t.mock_domain(ioas)
    stats = t.p.files[t.fd].ctx.stats  # type: ignore[attr-defined]
    t.test_cmd(OP_SET_TEMP_MEMORY_LIMIT, 0, struct.pack("<I", 48))
    va = _scattered(t, 10)
    t.map_fixed(ioas, va, 10 * PAGE_SIZE, MOCK_APERTURE_START)
    assert (stats.map_calls, stats.batches) == (10, 3)
    md = t.mock_domain(ioas)
    out = t.ioctl(u.IOMMU_HWPT_ALLOC, u.HWPT_ALLOC.pack(48, 0, md.idev_id, ioas, 0, 0, 0, 0,
                                                        0, 0, 0))
    second = int(u.HWPT_ALLOC.unpack(out)[4])  # filled from the first: batches again
    assert (stats.map_calls, stats.batches) == (20, 6)
    assert t.unmap(ioas, MOCK_APERTURE_START, 10 * PAGE_SIZE) == 10 * PAGE_SIZE
    assert stats.unmap_calls == 1 + 1
    t.destroy(second)
    t.close()


def test_a_run_held_partly_by_an_access_is_mapped_whole() -> None:
    """``batch_add_pfn`` extends the last run with the next contiguous PFN whatever span it
    came from (an access's xarray, a domain, a fresh pin): a hugetlb page an access pinned
    one 4K page of is still mapped by the mock as huge IO pages."""
    t = Selftest()
    ioas = t.ioas_alloc()
    buf = t.p.mmap(2 << 20, "hugetlb-2M", populate=True)
    t.map_fixed(ioas, buf, 2 << 20, MOCK_APERTURE_START)
    access = t.create_access(ioas, 1)
    item = t.access_pages(access, MOCK_APERTURE_START + 5 * PAGE_SIZE, PAGE_SIZE,
                          buf + 5 * PAGE_SIZE)
    md = t.mock_domain(ioas, 1 << 1)  # MOCK_FLAGS_DEVICE_HUGE_IOVA: 2K and 1M pages
    hwpt = t.p.files[t.fd].ctx.objects[md.hwpt_id]  # type: ignore[attr-defined]
    idx, vals = hwpt.domain.ops.pfns.present(MOCK_APERTURE_START // 2048, 1024)
    assert len(idx) == 1024 and (vals & np.uint64(MOCK_PFN_HUGE_IOVA)).all()
    t.destroy_access_pages(access, item)
    t.p.close(access)
    t.close()


def test_a_failed_fill_unwinds_as_the_kernel_does() -> None:
    """Every allocation point of an IOAS_MAP into two mock domains failed in turn
    (fail_nth; one the kernel absorbs maps all the same and is unmapped again): the
    kernel's unwinding (the failing batch's own maps, every domain but the
    last up to where it got, the last one batch by batch) leaves nothing mapped or pinned
    and never unmaps part of a map (the mock WARNs on that)."""
    t = Selftest()
    ioas = t.ioas_alloc()
    md = t.mock_domain(ioas)
    out = t.ioctl(u.IOMMU_HWPT_ALLOC, u.HWPT_ALLOC.pack(48, 0, md.idev_id, ioas, 0, 0, 0, 0,
                                                        0, 0, 0))
    ctx = t.p.files[t.fd].ctx  # type: ignore[attr-defined]
    domains = [ctx.objects[md.hwpt_id].domain,
               ctx.objects[int(u.HWPT_ALLOC.unpack(out)[4])].domain]
    t.test_cmd(OP_SET_TEMP_MEMORY_LIMIT, 0, struct.pack("<I", 48))
    va = _scattered(t, 10)
    fail_nth = t.m.mem.fail_nth
    failures = 0
    for nth in range(1, 200):
        fail_nth.arm(nth)
        try:
            t.map_fixed(ioas, va, 10 * PAGE_SIZE, MOCK_APERTURE_START)
        except OSError:
            failures += 1
            assert t.m.mem.pins.pins == 0
            for d in domains:
                assert not len(d.ops.pfns.present(0, 1 << 20)[0]) and not d.warnings
            continue
        finally:
            fail_nth.disarm()
        if not fail_nth.triggered:
            break
        # a failure the kernel absorbs (a smaller temporary array): mapped all the same
        assert t.unmap(ioas, MOCK_APERTURE_START, 10 * PAGE_SIZE) == 10 * PAGE_SIZE
    assert failures >= 20  # the 20 map calls at least
    assert t.unmap(ioas, MOCK_APERTURE_START, 10 * PAGE_SIZE) == 10 * PAGE_SIZE
    assert not any(d.warnings for d in domains)
    t.close()
