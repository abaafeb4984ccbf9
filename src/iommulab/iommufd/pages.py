"""``struct iopt_pages``: a linear stretch of user memory or of a memfd, pinned once however
many areas, IOASes and domains use it (drivers/iommu/iommufd/pages.c; 6.12 and 7.0
fill and unfill alike).

A PFN lives in one of three places, read in this order by the kernel's
``pfn_reader``: the pages' xarray (only for page indexes some in-kernel
access holds), an IOMMU domain an area of these pages was mapped into (the
area's ``storage_domain``, read back with ``iommu_iova_to_phys``), or the
origin (GUP on the source mm, or ``memfd_pin_folios``). A page is pinned
from the origin only when neither an access nor a domain holds it, and
unpinned only when the last of them lets go ("unmap before unpin").

Pinned pages are charged after the work is done (``pfn_reader_update_pinned``):
account mode NONE (CAP_IPC_LOCK) charges nothing, USER charges the user's
``locked_vm`` against RLIMIT_MEMLOCK (ENOMEM), MM charges the mm's
``locked_vm`` as VFIO does; every mode adds to the mm's ``pinned_vm``. A
failed charge unwinds everything that was just pinned.

Fill and unfill go a batch at a time as the kernel's do: a batch holds at most
``temp_memory_limit / 12`` runs of contiguous PFNs (a run goes on across the
sources), each run is one ``iommu_map`` into each domain in turn, and an
unfill unmaps batch by batch (:func:`unfill_batches`); GUP calls pin at most
as many pages as the reader's first hole had, up to ``temp_memory_limit / 8``.
The model reads the PFNs of a whole area at once, as runs of contiguous PFNs
(GUP's runs, a domain's leaf runs: :class:`PfnRuns`, so time and memory go with
the runs, not the pages), and then replays the batches (one loop turn per
batch); where a read fails it replays only the batches the kernel would have
completed before the error, so the map and unmap calls, and the IOTLB syncs
they cause, are the kernel's. The per-page reads (``fill_per_page``,
``unfill_per_page``) stay as the reference the tests compare with.
Calls are counted in :class:`PagesStats`.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from ..errors import BadAddress, InvalidArgument, KernelError, OutOfMemory
from ..mem.fault import XA_CHUNK_SHIFT, xa_nodes_needed
from ..mem.pins import pfn_runs
from ..sizes import PAGE_SHIFT, PAGE_SIZE

if TYPE_CHECKING:
    from ..iommu.domain import IommuDomain
    from ..mem import FailNth
    from ..mem.mm import MmStruct
    from .area import IoptArea
    from .cache_flush import CacheFlush

__all__ = [
    "ACCOUNT_MM",
    "ACCOUNT_NONE",
    "ACCOUNT_USER",
    "TEMP_MEMORY_LIMIT",
    "Account",
    "IoptPages",
    "PagesStats",
    "PfnRuns",
    "PfnSource",
    "UserStruct",
    "area_pfn_runs",
    "domain_pfns",
    "fill_batches",
    "unfill_batches",
    "unfill_batches_runs",
]

I64Array = npt.NDArray[np.int64]

ACCOUNT_NONE, ACCOUNT_USER, ACCOUNT_MM = 0, 1, 2  # IOPT_PAGES_ACCOUNT_*
TEMP_MEMORY_LIMIT = 65536  # bytes of temporary arrays per operation (selftest-tunable)
_BATCH_ELEMENT = 8 + 4  # sizeof(*batch->pfns) + sizeof(*batch->npfns)
_UPAGE = 8  # sizeof(struct page *)
_BATCH_BACKUP_BYTES = 32 * 8  # u64 backup[BATCH_BACKUP_SIZE] of the unfill paths
_NO_PFNS = np.zeros(0, dtype=np.int64)
#: IOVA bytes whose leaves area_pfn_runs asks for at once: leaf_runs builds arrays per
#: leaf before merging them into runs, 24 bytes per 4K leaf of a split domain, so a
#: window bounds that to 6 MiB whatever the area's size
_LEAF_WINDOW = 1 << 30


@dataclass
class UserStruct:
    """``struct user_struct``: what USER accounting charges (``locked_vm`` in pages)."""

    uid: int
    locked_vm: int = 0


@dataclass
class Account:
    """Who pays for the pins of one ``iopt_pages``: the mode and the source task's mm,
    user and RLIMIT_MEMLOCK (None: unlimited)."""

    mode: int
    mm: MmStruct
    user: UserStruct
    memlock_limit: int | None

    def charge(self, npages: int) -> None:
        """``do_update_pinned(inc=true)``: ENOMEM over the limit, nothing changed then."""
        limit = None if self.memlock_limit is None else self.memlock_limit >> PAGE_SHIFT
        if self.mode == ACCOUNT_USER:
            if limit is not None and self.user.locked_vm + npages > limit:
                raise OutOfMemory(f"RLIMIT_MEMLOCK: user {self.user.uid} would lock "
                                  f"{self.user.locked_vm + npages} pages, limit {limit}")
            self.user.locked_vm += npages
        elif self.mode == ACCOUNT_MM:
            if limit is not None and self.mm.locked_vm + npages > limit:
                raise OutOfMemory(f"RLIMIT_MEMLOCK: mm would lock {self.mm.locked_vm + npages}"
                                  f" pages, limit {limit}")
            self.mm.locked_vm += npages
        self.mm.pinned_vm += npages

    def uncharge(self, npages: int) -> None:
        """``do_update_pinned(inc=false)``."""
        if self.mode == ACCOUNT_USER:
            self.user.locked_vm -= npages
        elif self.mode == ACCOUNT_MM:
            self.mm.locked_vm -= npages
        self.mm.pinned_vm -= npages


@dataclass
class PagesStats:
    """Lab counters of one context's page work."""

    gup_calls: int = 0
    batches: int = 0
    map_calls: int = 0
    unmap_calls: int = 0
    pinned_from_origin: int = 0
    read_from_domain: int = 0


class PfnSource(Protocol):
    """Where pages come from when nothing holds them: user VA or a memfd."""

    is_file: bool

    def pin(self, index: int, n: int, write: bool) -> I64Array:
        """Pin up to ``n`` pages from page ``index`` of the source; at least one."""
        ...

    def pin_runs(self, index: int, n: int, write: bool) -> list[tuple[int, int]]:
        """:meth:`pin` answering with ``(first pfn, pages)`` runs."""
        ...

    def prefault(self, index: int, n: int) -> None:
        """Lab: fault in now what pinning ``n`` pages from ``index`` would, where that
        changes nothing the pins would see (or do nothing)."""
        ...

    def unpin(self, pfns: I64Array) -> None: ...

    def unpin_runs(self, runs: list[tuple[int, int]]) -> None:
        """:meth:`unpin` of ``(first pfn, pages)`` runs, with no array per page."""
        ...

    def close(self) -> None:
        """The pages are freed: drop what the source holds (a file reference)."""


def domain_pfns(domain: IommuDomain, iovas: I64Array) -> I64Array:
    """``iommu_iova_to_phys(iova) >> PAGE_SHIFT`` for sorted ``iovas``, by leaf runs (0
    where nothing is mapped, as ``iova_to_phys`` returns): each run's offset is spread
    over the IOVAs it covers, so the cost is one pass over the array."""
    lo, hi = int(iovas[0]), int(iovas[-1])
    runs = domain.leaf_runs(lo, hi - lo + 1)
    out = np.zeros(len(iovas), dtype=np.int64)
    if not runs:
        return out
    r = np.array(runs, dtype=np.int64)  # (iova, pa, length)
    starts = np.searchsorted(iovas, r[:, 0])
    counts = np.diff(np.append(starts, len(iovas)))
    head = int(starts[0])
    seg = iovas[head:]
    delta = np.repeat(r[:, 1] - r[:, 0], counts)
    ok = seg < np.repeat(r[:, 0] + r[:, 2], counts)
    out[head:][ok] = (seg[ok] + delta[ok]) >> PAGE_SHIFT
    return out


def _area_pfns(area: IoptArea, domain: IommuDomain, lo: int, hi: int) -> I64Array:
    """The PFNs of pages ``[lo, hi]`` of ``area`` as ``domain`` maps them (at
    ``iopt_area_index_to_iova`` of each page)."""
    idx = np.arange(lo, hi + 1, dtype=np.int64)
    iovas = area.iova - area.page_offset + (idx - area.index) * PAGE_SIZE
    iovas[idx == area.index] = area.iova
    return domain_pfns(domain, iovas)


class PfnRuns(NamedTuple):
    """Pages ``starts[i] .. starts[i] + counts[i] - 1`` map PFNs ``pfn0[i] ..``, one run
    of contiguous PFNs each, a break between any two: what one PFN per page would show
    (``np.diff(pfns) != 1``), in O(runs) memory."""

    starts: I64Array
    pfn0: I64Array
    counts: I64Array

    @property
    def last(self) -> int:
        return int(self.starts[-1] + self.counts[-1] - 1)

    def clip(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """``(first pfn, pages)`` of the runs over pages ``[lo, hi]``, as :func:`pfn_runs`
        of their PFNs gives them. O(log runs + runs inside)."""
        a = int(np.searchsorted(self.starts, lo, side="right")) - 1
        b = int(np.searchsorted(self.starts, hi, side="right"))
        st, p0, n = self.starts[a:b], self.pfn0[a:b], self.counts[a:b]
        head = np.maximum(st, lo)
        tail = np.minimum(st + n - 1, hi)
        return list(zip((p0 + head - st).tolist(), (tail - head + 1).tolist(), strict=True))

    def head(self, n: int) -> PfnRuns:
        """The runs of the first ``n`` pages (``n`` > 0)."""
        end = int(self.starts[0]) + n
        k = int(np.searchsorted(self.starts, end, side="left"))
        counts = self.counts[:k].copy()
        counts[-1] = end - int(self.starts[k - 1])
        return PfnRuns(self.starts[:k], self.pfn0[:k], counts)

    @staticmethod
    def join(pieces: list[tuple[int, list[tuple[int, int]]]]) -> PfnRuns | None:
        """The runs of consecutive pieces, each ``(first page, [(first pfn, pages)])``,
        merged where a PFN continues the one before (as ``batch_add_pfn`` does whatever
        span it came from); None for no pages."""
        flat = [run for _, runs in pieces for run in runs]
        if not flat:
            return None
        arr = np.array(flat, dtype=np.int64).reshape(-1, 2)
        pfn0, counts = arr[:, 0], arr[:, 1]
        base = pieces[0][0]
        starts = base + np.concatenate(([0], np.cumsum(counts[:-1])))
        cut = np.flatnonzero(pfn0[1:] != pfn0[:-1] + counts[:-1]) + 1
        heads = np.concatenate(([0], cut)).astype(np.int64)
        ends = np.append(cut, len(pfn0))
        return PfnRuns(starts[heads], pfn0[heads],
                       starts[ends - 1] + counts[ends - 1] - starts[heads])

    def expand(self) -> I64Array:
        """One PFN per page (the lab's flush policies want them); O(pages)."""
        return _expand(list(zip(self.pfn0.tolist(), self.counts.tolist(), strict=True)))


def _expand(runs: list[tuple[int, int]]) -> I64Array:
    if not runs:
        return _NO_PFNS
    return np.concatenate([np.arange(pfn, pfn + n, dtype=np.int64) for pfn, n in runs])


def area_pfn_runs(area: IoptArea, domain: IommuDomain, lo: int, hi: int
                  ) -> PfnRuns | None:
    """:func:`_area_pfns` of pages ``[lo, hi]`` as runs, from the domain's leaf runs
    (``iommu_iova_to_phys`` of each page's ``iopt_area_index_to_iova``), or None when
    some page is not mapped (where one PFN per page reads 0). O(leaf runs)."""
    start, end = area.index_to_iova(lo), area.index_to_iova(hi)
    leaves: list[tuple[int, int, int]] = []
    at = start
    while at <= end:  # windows between aligned boundaries: see _LEAF_WINDOW
        stop = min((at | (_LEAF_WINDOW - 1)) + 1, end + 1)
        leaves += domain.leaf_runs(at, stop - at)
        at = stop
    if not leaves:
        return None
    r = np.array(leaves, dtype=np.int64).reshape(-1, 3)
    base = area.iova - area.page_offset  # page index i is probed at base + (i - index) * 4K
    idx = area.index
    r_lo, r_hi = r[:, 0], r[:, 0] + r[:, 2] - 1
    # the first and last page probed inside each leaf run (the area's first page is
    # probed at area.iova, the others at their page's start)
    i0 = np.where(r_lo <= area.iova, idx, idx + ((r_lo - base + PAGE_SIZE - 1) >> PAGE_SHIFT))
    i1 = np.where(r_hi < area.iova, idx - 1, idx + ((r_hi - base) >> PAGE_SHIFT))
    i0, i1 = np.maximum(i0, lo), np.minimum(i1, hi)
    keep = i0 <= i1
    i0, i1, delta = i0[keep], i1[keep], (r[:, 1] - r[:, 0])[keep]
    if int((i1 - i0 + 1).sum()) != hi - lo + 1:
        return None
    probe = np.where(i0 == idx, area.iova, base + (i0 - idx) * PAGE_SIZE)
    pfn0 = (probe + delta) >> PAGE_SHIFT
    if area.page_offset and i0[0] == idx and i1[0] > idx:
        # the first page is probed mid-page: its PFN need not precede the next page's
        nxt = (base + PAGE_SIZE + int(delta[0])) >> PAGE_SHIFT
        i0 = np.concatenate(([idx, idx + 1], i0[1:]))
        i1 = np.concatenate(([idx], i1))
        pfn0 = np.concatenate((pfn0[:1], [nxt], pfn0[1:]))
    counts = i1 - i0 + 1
    cut = np.flatnonzero(pfn0[1:] != pfn0[:-1] + counts[:-1]) + 1  # runs that break
    heads = np.concatenate(([0], cut))
    ends = np.append(cut, len(i0))
    return PfnRuns(i0[heads], pfn0[heads], i1[ends - 1] - i0[heads] + 1)


def _run_starts(pfns: I64Array) -> I64Array:
    """Where a run of contiguous PFNs starts (0 and every break)."""
    if not len(pfns):
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(([0], np.flatnonzero(np.diff(pfns) != 1) + 1)).astype(np.int64)


def _run_entries(area: IoptArea, starts: I64Array, pfn0: I64Array, stop: int
                 ) -> list[tuple[int, int, int]]:
    """``(iova, paddr, size)`` of each run of contiguous PFNs over the first ``stop``
    pages of ``area``: run ``i`` starts at page ``starts[i]`` (from the area's first)
    with PFN ``pfn0[i]``; the area's first and last page may be partial."""
    first = area.index
    lo = np.maximum((first + starts) * PAGE_SIZE, area.start_byte)
    hi = np.minimum((first + np.append(starts[1:], stop)) * PAGE_SIZE,
                    area.start_byte + area.length)
    pa = (pfn0 << PAGE_SHIFT) + lo - (first + starts) * PAGE_SIZE
    iova = area.iova + lo - area.start_byte
    return list(zip(iova.tolist(), pa.tolist(), (hi - lo).tolist(), strict=True))


def fill_batches(nruns: int, complete: bool, cap: int) -> int:
    """How many batches of at most ``cap`` PFN runs ``pfn_reader_next`` hands over for
    ``nruns`` runs read. Unless the read was ``complete`` (it stopped at an error), a
    batch counts only when the first PFN of the next run was read: the reader learns
    that a full batch is full only from the PFN that does not fit."""
    if complete:
        return -(-nruns // cap)
    return max(nruns - 1, 0) // cap


def unfill_batches(pfns: I64Array, first: int, spans: list[tuple[int, int, int]],
                   cap: int) -> list[tuple[int, int]]:
    """The page ranges ``__iopt_area_unfill_domain`` unmaps, one per ``iommu_unmap``.

    ``pfns`` are what the domain maps at pages ``first..`` and ``spans`` the double
    span over them (kind 0: a hole nothing else holds). Each hole is read a batch at a
    time (``iopt_area_unpin_domain``): at most ``cap`` entries, each a run of contiguous
    PFNs; a batch that reaches the hole's end reads on to the end of its run
    (``batch_from_domain_continue``) and unmaps that too, the pages past the hole being
    the "carry" that stays in entry 0 for the next hole. A used span skips the carry
    (``batch_skip_carry``) but leaves entry 0 in place even when it swallows all of
    it: the next batch then has ``cap - 1`` free entries, and the first PFN it reads
    joins entry 0 if it is the one after the carry's last; with ``cap`` 1 and no join
    that batch reads nothing and unmaps only the used pages before the hole. Whatever
    is left after the last hole is unmapped in one call. One loop turn per batch."""
    last = first + len(pfns) - 1
    brk = np.flatnonzero(np.diff(pfns) != 1) + 1 + first  # where a PFN run starts
    return _unfill_batches(brk, lambda i: int(pfns[i - first]), first, last, spans, cap)


def unfill_batches_runs(runs: PfnRuns, spans: list[tuple[int, int, int]], cap: int
                        ) -> list[tuple[int, int]]:
    """:func:`unfill_batches` of the pages ``runs`` cover, read by runs of contiguous
    PFNs (:func:`area_pfn_runs`) instead of one PFN per page: the same unmaps, in
    O(runs + batches) whatever the number of pages."""
    starts, pfn0, _ = runs
    first, last = int(starts[0]), runs.last

    def pfn_at(i: int) -> int:
        r = int(np.searchsorted(starts, i, side="right")) - 1
        return int(pfn0[r]) + i - int(starts[r])

    return _unfill_batches(starts[1:], pfn_at, first, last, spans, cap)


def _unfill_batches(brk: I64Array, pfn_at: Callable[[int], int], first: int, last: int,
                    spans: list[tuple[int, int, int]], cap: int) -> list[tuple[int, int]]:
    """:func:`unfill_batches` over pages ``[first, last]`` whose PFN runs start at
    ``brk`` (page indexes, the first page left out) and whose page ``i`` has PFN
    ``pfn_at(i)``."""
    out: list[tuple[int, int]] = []
    unmapped_end, carry, entry0 = first, 0, False  # entry0: batch->end is 1, not 0
    for kind, lo, hi in spans:
        if kind:
            carry = max(0, carry - (hi - lo + 1))
            continue
        start = lo
        while start <= hi:
            total, batch_last = carry, hi
            if unmapped_end <= hi:  # a batch: the carry's entry and new runs up to cap
                read_from = max(start, unmapped_end)
                # entry 0 ends at the PFN after page unmapped_end - 1's (a break when
                # read_from is unmapped_end, so only a swallowed carry's entry can join)
                joins = entry0 and pfn_at(read_from) == pfn_at(unmapped_end - 1) + 1
                runs = cap - entry0 + joins
                i = int(np.searchsorted(brk, read_from, side="right"))
                stop = read_from if not runs else \
                    int(brk[i + runs - 1]) if i + runs - 1 < len(brk) else last + 1
                total += min(stop, hi + 1) - read_from
                batch_last = start + total - 1
                if batch_last == hi and hi != last:  # read on to the end of the run
                    j = int(np.searchsorted(brk, hi, side="right"))
                    total += (int(brk[j]) if j < len(brk) else last + 1) - hi - 1
            if unmapped_end <= batch_last:
                out.append((unmapped_end, start + total - 1))
                unmapped_end = start + total
            start = batch_last + 1
            carry = unmapped_end - batch_last - 1
            entry0 = carry > 0  # batch_clear_carry
    if unmapped_end != last + 1:
        out.append((unmapped_end, last))
    return out


def temp_kmalloc(fail_nth: FailNth, size: int, limit: int, backup_len: int = 0) -> int:
    """``temp_kmalloc``: the bytes of temporary array an operation gets for ``size``
    asked, 0 for none (ENOMEM). Below ``backup_len`` the caller's stack buffer serves.
    Without a backup ``iommufd_should_fail()`` may refuse first; then a ``kmalloc`` of at
    most the temporary memory limit, and if that fails one of a page (with a backup,
    that failing too leaves the backup). A failed first ``kmalloc`` is no error, only a
    smaller array, so more batches or GUP calls."""
    if size < backup_len:
        return size
    if not backup_len and fail_nth.iommufd_should_fail("temp_kmalloc"):
        return 0
    if not fail_nth.fails("kmalloc(temp_kmalloc)"):
        return min(size, limit)
    if backup_len:
        return backup_len if fail_nth.fails("kmalloc(PAGE_SIZE, temp_kmalloc)") else PAGE_SIZE
    return 0 if fail_nth.fails("kmalloc(PAGE_SIZE, temp_kmalloc)") else PAGE_SIZE


def _merge(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _inside(merged: list[tuple[int, int]], x: int) -> bool:
    i = bisect.bisect_right(merged, (x, 1 << 64)) - 1
    return i >= 0 and merged[i][1] >= x


class IoptPages:
    """One ``iopt_pages``: ``npages`` pages of ``source``, shared by the areas using it."""

    def __init__(self, source: PfnSource, npages: int, writable: bool, account: Account,
                 *, fail_nth: FailNth, stats: PagesStats, limit: list[int],
                 flusher: CacheFlush | None = None) -> None:
        self.source = source
        self.npages = npages
        self.writable = writable
        self.account = account
        self.fail_nth = fail_nth
        self.stats = stats
        self._limit = limit  # [temp_memory_limit], shared by the context
        self.npinned = 0
        self.last_npinned = 0
        self.users = 0  # kref held by areas
        self.domain_areas: list[IoptArea] = []  # domains_itree
        self.accesses: dict[tuple[int, int], int] = {}  # access_itree: range -> users
        # pinned_pfns, the xarray of access-held indexes: each access range's PFNs, so
        # what is stored grows with what is pinned, never with npages
        self._xarray: dict[tuple[int, int], I64Array] = {}
        self.flusher = flusher  # lab: the machine's cache flush policy
        self.cache_flush_required = False  # lab: the "sticky" policy's bit

    # -- the double span over access_itree and domains_itree ------------------------------
    def _spans(self, first: int, last: int) -> list[tuple[int, int, int]]:
        """``interval_tree_for_each_double_span(access_itree, domains_itree)``: ``(kind,
        lo, hi)`` with kind 1 held by an access, 2 by a domain only, 0 a hole."""
        acc = _merge([(lo, hi) for lo, hi in self.accesses if lo <= last and hi >= first])
        dom = _merge([(a.index, a.last_index) for a in self.domain_areas
                      if a.index <= last and a.last_index >= first])
        points = {first, last + 1}
        for lo, hi in acc + dom:
            points.update((max(lo, first), min(hi, last) + 1))
        bounds = sorted(points)
        out: list[tuple[int, int, int]] = []
        for lo, nxt in itertools.pairwise(bounds):
            kind = 1 if _inside(acc, lo) else 2 if _inside(dom, lo) else 0
            if out and out[-1][0] == kind and out[-1][2] == lo - 1:
                out[-1] = (kind, out[-1][1], nxt - 1)
            else:
                out.append((kind, lo, nxt - 1))
        return out

    # -- reading PFNs ------------------------------------------------------------------
    def _from_domain(self, lo: int, hi: int) -> I64Array:
        """``batch_from_domain`` from the areas in domains_itree covering ``[lo, hi]``."""
        parts: list[I64Array] = []
        index = lo
        while index <= hi:
            area = next(a for a in self.domain_areas if a.index <= index <= a.last_index)
            end = min(area.last_index, hi)
            assert area.storage_domain is not None
            parts.append(_area_pfns(area, area.storage_domain, index, end))
            index = end + 1
        self.stats.read_from_domain += hi - lo + 1
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _pin(self, lo: int, hi: int, chunk: int) -> tuple[I64Array, KernelError | None]:
        """``pfn_reader_user_pin`` repeated over the hole ``[lo, hi]`` in GUP calls of at
        most ``chunk`` pages: the pages pinned, all of the hole's unless the origin
        refused one, and that error (the pages before it stay pinned)."""
        parts: list[I64Array] = []
        index = lo
        err: KernelError | None = None
        if not self.fail_nth.armed and self.fail_nth.log is None:
            # lab: the model reads the whole hole before it maps a batch, so nothing
            # allocates between these GUP calls but their faults: those can come at once
            self.source.prefault(lo, hi - lo + 1)
        try:
            while index <= hi:
                if self.fail_nth.iommufd_should_fail("pfn_reader_user_pin"):
                    raise BadAddress("pfn_reader_user_pin: injected failure")
                self.stats.gup_calls += 1
                got = self.source.pin(index, min(chunk, hi - index + 1), self.writable)
                parts.append(got)
                self.npinned += len(got)
                index += len(got)
        except KernelError as e:
            err = e
        else:
            self.stats.pinned_from_origin += hi - lo + 1
        if len(parts) == 1:
            return parts[0], err
        return (np.concatenate(parts) if parts else _NO_PFNS), err

    def read(self, first: int, last: int) -> tuple[I64Array, npt.NDArray[np.bool_]]:
        """``pfn_reader`` over ``[first, last]`` (its batch first, ``pfn_reader_init``):
        the PFNs, and which of them this read pinned from the origin; on an error nothing
        stays pinned."""
        self._batch_init(last - first + 1)
        pfns, fresh, stop, err = self._read_prefix(first, last)
        if err is not None:
            self.release(pfns[:stop], fresh[:stop])
            raise err
        return pfns, fresh

    def _read_prefix(self, first: int, last: int) -> tuple[
            I64Array, npt.NDArray[np.bool_], int, KernelError | None]:
        """:meth:`read` that stops at the first page the origin refuses: the PFNs, the
        pages this read pinned, how many pages were read (``last - first + 1`` unless
        there was an error) and the error. Nothing is released. The arrays grow span by
        span with what was read, so a range reaching past what the origin has sizes
        nothing: the read ends at its first refused page."""
        parts: list[I64Array] = []
        fresh: list[npt.NDArray[np.bool_]] = []
        err: KernelError | None = None
        chunk = 0  # the page array temp_kmalloc'ed for the first hole, then reused
        for kind, lo, hi in self._spans(first, last):
            if kind == 1:
                got = self._xarray_load(lo, hi)
            elif kind == 2:
                got = self._from_domain(lo, hi)
            else:
                if not chunk:  # pfn_reader_user_pin's first call: user->upages
                    size = temp_kmalloc(self.fail_nth, (hi - lo + 1) * _UPAGE,
                                        self._limit[0])
                    if not size:
                        err = OutOfMemory("pfn_reader_user_pin: no page array "
                                          "(temp_kmalloc)")
                        break
                    chunk = max(1, size // _UPAGE)
                got, err = self._pin(lo, hi, chunk)
            parts.append(got)
            fresh.append(np.full(len(got), kind == 0))
            if err is not None:
                break
        if not parts:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.bool_), 0, err
        pfns = np.concatenate(parts) if len(parts) != 1 else parts[0]
        read = np.concatenate(fresh) if len(fresh) != 1 else fresh[0]
        return pfns, read, len(pfns), err

    def _xarray_load(self, lo: int, hi: int) -> I64Array:
        """The PFNs the xarray holds for ``[lo, hi]``, which access ranges cover (ranges
        that overlap hold the same PFN for an index, pinned once). O(accesses + hi - lo)."""
        out = np.empty(hi - lo + 1, dtype=np.int64)
        for (a_lo, a_hi), pfns in self._xarray.items():
            start, end = max(lo, a_lo), min(hi, a_hi)
            if start <= end:
                out[start - lo:end - lo + 1] = pfns[start - a_lo:end - a_lo + 1]
        return out

    def _unpin(self, pfns: I64Array) -> None:
        if len(pfns):
            if self.flusher is not None and self.flusher.at_unpin(self):
                self.flusher.flush(pfns, "unpin")
            self.source.unpin(pfns)
            self.npinned -= len(pfns)

    def _unpin_runs(self, runs: list[tuple[int, int]]) -> None:
        """:meth:`_unpin` of ``(first pfn, pages)`` runs."""
        if runs:
            if self.flusher is not None and self.flusher.at_unpin(self):
                self.flusher.flush(_expand(runs), "unpin")
            self.source.unpin_runs(runs)
            self.npinned -= sum(n for _, n in runs)

    # -- accounting ----------------------------------------------------------------------
    def update_pinned(self) -> None:
        """``pfn_reader_user_update_pinned``: charge or release the change since the last
        update; ``iommufd_should_fail`` and the memlock limit give ENOMEM."""
        if self.npinned == self.last_npinned:
            return
        if self.npinned < self.last_npinned:
            self.account.uncharge(self.last_npinned - self.npinned)
        else:
            if self.fail_nth.iommufd_should_fail("pfn_reader_user_update_pinned"):
                raise OutOfMemory("pfn_reader_user_update_pinned: injected failure")
            self.account.charge(self.npinned - self.last_npinned)
        self.last_npinned = self.npinned

    # -- domains -----------------------------------------------------------------------
    def _batch_init(self, max_pages: int, backup: bool = False) -> int:
        """``__batch_init``: the PFN runs a batch holds, ``max_pages`` elements of
        ``sizeof(ulong) + sizeof(u32)`` from :func:`temp_kmalloc` (cut to the temporary
        memory limit); ENOMEM without one. ``backup``: ``batch_init_backup`` with the
        unfill paths' 32-word stack buffer, which cannot fail."""
        size = temp_kmalloc(self.fail_nth, max_pages * _BATCH_ELEMENT, self._limit[0],
                            _BATCH_BACKUP_BYTES if backup else 0)
        if not size:
            raise OutOfMemory("batch_init: no batch array (temp_kmalloc)")
        return max(1, size // _BATCH_ELEMENT)

    def _entries(self, area: IoptArea, pfns: I64Array, starts: I64Array
                 ) -> list[tuple[int, int, int]]:
        """``batch_to_domain``'s ``(iova, paddr, size)`` per run of contiguous PFNs of the
        area's pages (``batch_add_pfn`` merges whatever their source), the runs starting
        at ``starts``; the area's first and last page may be partial."""
        return _run_entries(area, starts, pfns[starts], len(pfns))

    def fill(self, area: IoptArea, domains: list[IommuDomain], small: bool, *,
             flush: bool = False) -> None:
        """``iopt_area_fill_domains`` (a new area, every domain) and ``iopt_area_fill_domain``
        (a new domain), a batch at a time: the PFN runs of a batch mapped into each
        domain in turn (page by page with large pages disabled,
        ``batch_iommu_map_small``), then the next batch is read. A batch ends when it holds
        :meth:`_batch_init` runs and the next PFN does not continue the last one.

        On an error (a map, a page the origin refuses, the memlock charge) the kernel's
        unwinding runs: the failing batch's own maps go in one unmap; every domain but
        the last is unmapped in one call up to where it was filled, and the last is
        unfilled batch by batch as :meth:`unfill` does; then nothing stays mapped or
        pinned. The lab's flush policy runs on the PFNs read, before mapping.

        The PFNs are read and batched as runs (:meth:`_read_prefix_runs`), so time and
        memory go with the number of runs; :meth:`fill_per_page` is the reference that
        reads one PFN per page."""
        if not self.fill_by_runs:
            self.fill_per_page(area, domains, small, flush=flush)
            return
        first, last = area.index, area.last_index
        cap = self._batch_init(last - first + 1)
        runs, fresh, stop, err = self._read_prefix_runs(first, last)
        starts = _NO_PFNS if runs is None else runs.starts - first
        nbatch = fill_batches(len(starts), err is None, cap)
        end = starts[nbatch * cap] if nbatch * cap < len(starts) else stop
        bounds = np.append(starts[::cap][:nbatch], end)
        entries = self._entries_runs(area, runs, stop) if nbatch and runs is not None else []
        b = k = 0  # the batch being mapped and the domain it is going into
        try:
            if flush and self.flusher is not None:
                self.flusher.flush(_NO_PFNS if runs is None else runs.expand(), "map")
            for b in range(nbatch):
                batch = entries[b * cap:(b + 1) * cap]
                for k in range(len(domains)):
                    self._batch_to_domain(domains[k], batch, area.prot, small)
                self.stats.batches += 1
            b, k = nbatch, 0
            if err is not None:
                raise err
            self.update_pinned()
        except KernelError:
            for i, domain in enumerate(domains):  # domains before k hold batch b too
                end = int(bounds[b + (i < k)])
                if not end:
                    continue
                assert runs is not None
                if i < len(domains) - 1:
                    self._unmap_range(area, domain, first, first + end - 1)
                else:
                    spans = self._spans(first, first + end - 1)
                    cap_u = self._batch_init(first + end, backup=True)
                    for lo, hi in unfill_batches_runs(runs.head(end), spans, cap_u):
                        self._unmap_range(area, domain, lo, hi)
            if runs is not None:
                self._unpin_runs([r for lo, n in fresh for r in runs.clip(lo, lo + n - 1)])
            self.update_pinned()
            raise

    #: read and batch PFNs by runs on fill (False: one per page, the reference)
    fill_by_runs = True

    def _entries_runs(self, area: IoptArea, runs: PfnRuns, stop: int
                      ) -> list[tuple[int, int, int]]:
        """:meth:`_entries` of the runs over the first ``stop`` pages read."""
        return _run_entries(area, runs.starts - area.index, runs.pfn0, stop)

    def _read_prefix_runs(self, first: int, last: int) -> tuple[
            PfnRuns | None, list[tuple[int, int]], int, KernelError | None]:
        """:meth:`_read_prefix` as runs: the runs read (None for nothing), the ``(first
        page, pages)`` this read pinned from the origin, how many pages were read and
        the error. The same GUP calls, batch allocations and failure points."""
        pieces: list[tuple[int, list[tuple[int, int]]]] = []
        fresh: list[tuple[int, int]] = []
        err: KernelError | None = None
        chunk = 0  # the page array temp_kmalloc'ed for the first hole, then reused
        stop = 0
        for kind, lo, hi in self._spans(first, last):
            if kind == 1:
                got = pfn_runs(self._xarray_load(lo, hi))
            elif kind == 2:
                got = self._from_domain_runs(lo, hi)
            else:
                if not chunk:  # pfn_reader_user_pin's first call: user->upages
                    size = temp_kmalloc(self.fail_nth, (hi - lo + 1) * _UPAGE,
                                        self._limit[0])
                    if not size:
                        err = OutOfMemory("pfn_reader_user_pin: no page array "
                                          "(temp_kmalloc)")
                        break
                    chunk = max(1, size // _UPAGE)
                got, err = self._pin_runs(lo, hi, chunk)
            n = sum(c for _, c in got)
            pieces.append((lo, got))
            if kind == 0 and n:
                fresh.append((lo, n))
            stop += n
            if err is not None:
                break
        return PfnRuns.join(pieces), fresh, stop, err

    def _from_domain_runs(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """:meth:`_from_domain` as ``(first pfn, pages)`` runs."""
        out: list[tuple[int, int]] = []
        index = lo
        while index <= hi:
            area = next(a for a in self.domain_areas if a.index <= index <= a.last_index)
            end = min(area.last_index, hi)
            assert area.storage_domain is not None
            runs = area_pfn_runs(area, area.storage_domain, index, end)
            out += pfn_runs(_area_pfns(area, area.storage_domain, index, end)) \
                if runs is None else runs.clip(index, end)
            index = end + 1
        self.stats.read_from_domain += hi - lo + 1
        return out

    def _pin_runs(self, lo: int, hi: int, chunk: int
                  ) -> tuple[list[tuple[int, int]], KernelError | None]:
        """:meth:`_pin` answering with ``(first pfn, pages)`` runs."""
        runs: list[tuple[int, int]] = []
        index = lo
        err: KernelError | None = None
        if not self.fail_nth.armed and self.fail_nth.log is None:
            self.source.prefault(lo, hi - lo + 1)  # see _pin
        try:
            while index <= hi:
                if self.fail_nth.iommufd_should_fail("pfn_reader_user_pin"):
                    raise BadAddress("pfn_reader_user_pin: injected failure")
                self.stats.gup_calls += 1
                got = self.source.pin_runs(index, min(chunk, hi - index + 1), self.writable)
                n = sum(c for _, c in got)
                if runs and got and runs[-1][0] + runs[-1][1] == got[0][0]:
                    pfn, count = runs.pop()
                    got = [(pfn, count + got[0][1]), *got[1:]]
                runs += got
                self.npinned += n
                index += n
        except KernelError as e:
            err = e
        else:
            self.stats.pinned_from_origin += hi - lo + 1
        return runs, err

    def fill_per_page(self, area: IoptArea, domains: list[IommuDomain], small: bool, *,
                      flush: bool = False) -> None:
        """:meth:`fill` reading one PFN per page (O(pages) memory): the reference."""
        first, last = area.index, area.last_index
        cap = self._batch_init(last - first + 1)
        pfns, fresh, stop, err = self._read_prefix(first, last)
        starts = _run_starts(pfns[:stop])
        nbatch = fill_batches(len(starts), err is None, cap)
        end = starts[nbatch * cap] if nbatch * cap < len(starts) else stop
        bounds = np.append(starts[::cap][:nbatch], end)
        entries = self._entries(area, pfns[:stop], starts) if nbatch else []
        b = k = 0  # the batch being mapped and the domain it is going into
        try:
            if flush and self.flusher is not None:
                self.flusher.flush(pfns[:stop], "map")
            for b in range(nbatch):
                batch = entries[b * cap:(b + 1) * cap]
                for k in range(len(domains)):
                    self._batch_to_domain(domains[k], batch, area.prot, small)
                self.stats.batches += 1
            b, k = nbatch, 0
            if err is not None:
                raise err
            self.update_pinned()
        except KernelError:
            for i, domain in enumerate(domains):  # domains before k hold batch b too
                end = int(bounds[b + (i < k)])
                if not end:
                    continue
                if i < len(domains) - 1:
                    self._unmap_range(area, domain, first, first + end - 1)
                else:
                    self._unfill_unmaps(area, domain, first + end - 1, pfns[:end])
            self.release(pfns[:stop], fresh[:stop])
            self.update_pinned()
            raise

    def _batch_to_domain(self, domain: IommuDomain, batch: list[tuple[int, int, int]],
                         prot: int, small: bool) -> None:
        """``batch_to_domain``: one ``iommu_map`` per run (per page when ``small``); on an
        error what this batch mapped goes in one unmap (the failing run's pages first,
        in one of their own)."""
        done = 0
        for iova, pa, size in batch:
            try:
                if small:
                    self._map_small(domain, iova, pa, size, prot)
                else:
                    domain.map(iova, pa, size, prot)
                    self.stats.map_calls += 1
            except KernelError:
                if done:
                    domain.unmap(batch[0][0], done)
                    self.stats.unmap_calls += 1
                raise
            done += size

    def _map_small(self, domain: IommuDomain, iova: int, pa: int, size: int,
                   prot: int) -> None:
        """``batch_iommu_map_small``: PAGE_SIZE at a time (a Python loop per page, as the
        kernel's), what it mapped unmapped in one call on an error."""
        done = 0
        try:
            while done < size:
                domain.map(iova + done, pa + done, PAGE_SIZE, prot)
                self.stats.map_calls += 1
                done += PAGE_SIZE
        except KernelError:
            if done:
                domain.unmap(iova, done)
                self.stats.unmap_calls += 1
            raise

    def _unmap_range(self, area: IoptArea, domain: IommuDomain, lo: int, hi: int) -> None:
        """``iopt_area_unmap_domain_range``: pages ``[lo, hi]`` of the area, one unmap."""
        start = area.index_to_iova(lo)
        end = area.last if hi == area.last_index else area.index_to_iova(hi + 1) - 1
        domain.unmap(start, end - start + 1)
        self.stats.unmap_calls += 1

    def _unfill_unmaps(self, area: IoptArea, domain: IommuDomain, last: int,
                       pfns: I64Array) -> None:
        """The unmaps of ``__iopt_area_unfill_domain`` over pages ``[area.index, last]``
        (:func:`unfill_batches`); ``pfns``: what ``domain`` maps there."""
        first = area.index
        spans = self._spans(first, last)
        for lo, hi in unfill_batches(pfns, first, spans, self._batch_init(last + 1, backup=True)):
            self._unmap_range(area, domain, lo, hi)

    def unmap_domain(self, area: IoptArea, domain: IommuDomain, *, flush: str = "") -> None:
        """``iopt_area_unmap_domain``: unmap without unpinning (another domain holds them),
        in one call; then the flush the policy asked for at point ``flush``, if any."""
        pfns = _area_pfns(area, domain, area.index, area.last_index) if flush else None
        self._unmap_range(area, domain, area.index, area.last_index)
        if pfns is not None and self.flusher is not None:
            self.flusher.flush(pfns, flush)

    #: read the domain's PFNs by leaf runs on unfill (False: one per page, the reference)
    unfill_by_runs = True

    def unfill(self, area: IoptArea, domain: IommuDomain, *, flush: str = "") -> None:
        """``iopt_area_unfill_domain`` (``area`` already out of domains_itree): unmap a
        batch at a time (:meth:`_unfill_unmaps`), the lab's flush, then unpin the pages
        nobody else holds.

        The domain's PFNs are read as runs (:func:`area_pfn_runs`) and the batches and
        unpins computed over runs, so the work and memory go with the number of PFN
        runs, not pages; :meth:`unfill_per_page` is the same with one PFN per page (the
        reference, and the path where some page is not mapped)."""
        first, last = area.index, area.last_index
        runs = area_pfn_runs(area, domain, first, last) if self.unfill_by_runs else None
        if runs is None:
            self.unfill_per_page(area, domain, flush=flush)
            return
        spans = self._spans(first, last)
        drop = [runs.clip(lo, hi) for kind, lo, hi in spans if kind == 0]
        cap = self._batch_init(last + 1, backup=True)
        for lo, hi in unfill_batches_runs(runs, spans, cap):
            self._unmap_range(area, domain, lo, hi)
        if flush and self.flusher is not None:
            self.flusher.flush(runs.expand(), flush)
        for unpin in drop:
            self._unpin_runs(unpin)
        self.update_pinned()

    def unfill_per_page(self, area: IoptArea, domain: IommuDomain, *,
                        flush: str = "") -> None:
        """:meth:`unfill` reading one PFN per page (O(pages) memory)."""
        first, last = area.index, area.last_index
        pfns = _area_pfns(area, domain, first, last)
        drop = [pfns[lo - first:hi - first + 1] for kind, lo, hi in self._spans(first, last)
                if kind == 0]
        self._unfill_unmaps(area, domain, last, pfns)
        if flush and self.flusher is not None:
            self.flusher.flush(pfns, flush)
        for unpin in drop:
            self._unpin(unpin)
        self.update_pinned()

    # -- accesses ------------------------------------------------------------------------
    def add_access(self, first: int, last: int) -> I64Array:
        """``iopt_area_add_access``: hold ``[first, last]`` in the xarray (shared with an
        access of exactly the same range, which allocates nothing); else the access's
        node (``kzalloc``), then :meth:`_fill_xarray`. The PFNs."""
        key = (first, last)
        if key in self.accesses:
            self.accesses[key] += 1
            return self._xarray[key].copy()
        self.fail_nth.check("kzalloc(iopt_pages_access)")
        pfns = self._fill_xarray(first, last)
        self._xarray[key] = pfns
        self.accesses[key] = 1
        return pfns

    def _fill_xarray(self, first: int, last: int) -> I64Array:
        """``iopt_pages_fill_xarray``: no pfn_reader and no batch. Span by span over the
        accesses and domains: what an access holds is read from the xarray; what a domain
        holds is read from it, what nothing holds is pinned from the origin in GUP calls
        into the caller's page array (the whole hole at once); each of those two is then
        stored (``pages_to_xarray``). Then the charge. On an error what this call pinned
        is unpinned and the xarray is as before. The PFNs."""
        out = np.empty(last - first + 1, dtype=np.int64)
        fresh = np.zeros(last - first + 1, dtype=np.bool_)
        stored: list[tuple[int, int]] = []  # ranges this call stored, for the node count
        try:
            for kind, lo, hi in self._spans(first, last):
                if kind == 1:
                    out[lo - first:hi - first + 1] = self._xarray_load(lo, hi)
                    continue
                if kind == 2:
                    out[lo - first:hi - first + 1] = self._from_domain(lo, hi)
                else:
                    got, err = self._pin(lo, hi, hi - lo + 1)
                    out[lo - first:lo - first + len(got)] = got
                    fresh[lo - first:lo - first + len(got)] = True
                    if err is not None:
                        raise err
                self._pages_to_xarray(lo, hi, stored)
                stored.append((lo, hi))
            self.update_pinned()
        except KernelError:
            self.release(out, fresh)
            raise
        return out

    def _pages_to_xarray(self, lo: int, hi: int, stored: list[tuple[int, int]]) -> None:
        """``pages_to_xarray``: store ``[lo, hi]``; the xarray's node allocations of the
        first half, ``iommufd_should_fail()`` when half the entries are in (EINVAL, the
        half cleared again), then the second half's. ``stored``: ranges this fill already
        put in. O(ranges held x levels)."""
        mid = lo + (hi - lo + 1) // 2
        held = self._xarray_reps(stored)
        self.fail_nth.xa_nodes("pages->pinned_pfns", xa_nodes_needed(held, lo, mid - 1))
        if self.fail_nth.iommufd_should_fail("pages_to_xarray"):
            raise InvalidArgument("pages_to_xarray: injected failure")
        held = self._xarray_reps([*stored, (lo, mid - 1)])
        self.fail_nth.xa_nodes("pages->pinned_pfns", xa_nodes_needed(held, mid, hi))

    def _xarray_reps(self, extra: list[tuple[int, int]]) -> I64Array:
        """Indexes standing for what the xarray holds (the accesses' ranges and
        ``extra``) as far as its nodes go: each range's first index of every 64-slot
        chunk it touches, and its last index; sorted, unique. O(pages held / 64)."""
        ranges = [r for r in [*self._xarray, *extra] if r[0] <= r[1]]
        if not ranges:
            return np.zeros(0, dtype=np.int64)
        parts = [np.arange(lo >> XA_CHUNK_SHIFT, (hi >> XA_CHUNK_SHIFT) + 1,
                           dtype=np.int64) << XA_CHUNK_SHIFT for lo, hi in ranges]
        parts.append(np.array([lo for lo, _ in ranges] + [hi for _, hi in ranges],
                              dtype=np.int64))
        return np.unique(np.concatenate(parts))

    def remove_access(self, first: int, last: int) -> None:
        """``iopt_area_remove_access``: the last user of the range unpins what nothing
        else holds (``iopt_pages_unfill_xarray``: a batch with its stack backup for the
        first such hole, which cannot fail)."""
        key = (first, last)
        self.accesses[key] -= 1
        if self.accesses[key]:
            return
        del self.accesses[key]
        pfns = self._xarray.pop(key)
        batch_inited = False
        for kind, lo, hi in self._spans(first, last):
            if kind == 0:
                if not batch_inited:
                    self._batch_init(last - first + 1, backup=True)
                    batch_inited = True
                self._unpin(pfns[lo - first:hi - first + 1].copy())
        self.update_pinned()

    def release(self, pfns: I64Array, fresh: npt.NDArray[np.bool_]) -> None:
        """Unpin what a :meth:`read` pinned from the origin (its ``fresh`` pages), as
        ``pfn_reader_release_pins`` does after an error or a copy."""
        self._unpin(pfns[fresh])

    def destroy(self) -> None:
        """``iopt_release_pages``: the last area is gone."""
        assert self.npinned == 0 and not self.domain_areas and not self.accesses
        self.source.close()

    def _check(self) -> None:
        """Nothing pinned without a holder, and the charge matches (between operations)."""
        assert self.npinned == self.last_npinned, (self.npinned, self.last_npinned)
        assert self._xarray.keys() == self.accesses.keys()
        if not self.domain_areas and not self.accesses:
            assert self.npinned == 0, f"{self.npinned} pages pinned with no holder"

