"""``struct iopt_pages``: a linear stretch of user memory or of a memfd, pinned once however
many areas, IOASes and domains use it (drivers/iommu/iommufd/pages.c, 7.0).

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

Model notes: a fill reads every PFN of the range first and then maps the
runs batch by batch (the kernel alternates reading and mapping a batch at a
time; the end state, and the state after an error, are the same), and an
unfill unmaps a whole area from a domain in one ``iommu_unmap`` (the kernel
unmaps batch by batch, cut where PFNs are not contiguous). Batches still
hold at most ``temp_memory_limit / 12`` runs and GUP calls at most
``temp_memory_limit / 8`` pages, and are counted in :class:`PagesStats`.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from ..errors import KernelError, OutOfMemory
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
    "PfnSource",
    "UserStruct",
    "domain_pfns",
]

I64Array = npt.NDArray[np.int64]

ACCOUNT_NONE, ACCOUNT_USER, ACCOUNT_MM = 0, 1, 2  # IOPT_PAGES_ACCOUNT_*
TEMP_MEMORY_LIMIT = 65536  # bytes of temporary arrays per operation (selftest-tunable)
_BATCH_ELEMENT = 8 + 4  # sizeof(*batch->pfns) + sizeof(*batch->npfns)
_UPAGE = 8  # sizeof(struct page *)


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

    def unpin(self, pfns: I64Array) -> None: ...

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
        self._xarray: I64Array | None = None  # pinned_pfns, for access-held indexes
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

    def _pin(self, lo: int, hi: int) -> I64Array:
        """``pfn_reader_user_pin`` repeated: GUP calls of at most the temporary limit."""
        chunk = max(1, self._limit[0] // _UPAGE)
        parts: list[I64Array] = []
        index = lo
        try:
            while index <= hi:
                self.stats.gup_calls += 1
                got = self.source.pin(index, min(chunk, hi - index + 1), self.writable)
                parts.append(got)
                self.npinned += len(got)
                index += len(got)
        except KernelError:
            for p in parts:
                self.source.unpin(p)
                self.npinned -= len(p)
            raise
        self.stats.pinned_from_origin += hi - lo + 1
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def read(self, first: int, last: int) -> tuple[I64Array, npt.NDArray[np.bool_], list[int]]:
        """``pfn_reader`` over ``[first, last]``: the PFNs, which of them this read pinned
        from the origin, and the offsets where a span of another source starts."""
        n = last - first + 1
        pfns = np.empty(n, dtype=np.int64)
        fresh = np.zeros(n, dtype=np.bool_)
        cuts: list[int] = []
        try:
            for kind, lo, hi in self._spans(first, last):
                a, b = lo - first, hi - first + 1
                cuts.append(a)
                if kind == 1:
                    assert self._xarray is not None
                    pfns[a:b] = self._xarray[lo:hi + 1]
                elif kind == 2:
                    pfns[a:b] = self._from_domain(lo, hi)
                else:
                    pfns[a:b] = self._pin(lo, hi)
                    fresh[a:b] = True
        except KernelError:
            self.release(pfns, fresh)
            raise
        return pfns, fresh, cuts[1:]

    def _unpin(self, pfns: I64Array) -> None:
        if len(pfns):
            if self.flusher is not None and self.flusher.at_unpin(self):
                self.flusher.flush(pfns, "unpin")
            self.source.unpin(pfns)
            self.npinned -= len(pfns)

    # -- accounting ----------------------------------------------------------------------
    def update_pinned(self) -> None:
        """``pfn_reader_user_update_pinned``: charge or release the change since the last
        update; ``iommufd_should_fail`` and the memlock limit give ENOMEM."""
        if self.npinned == self.last_npinned:
            return
        if self.npinned < self.last_npinned:
            self.account.uncharge(self.last_npinned - self.npinned)
        else:
            self.fail_nth.check("iommufd_should_fail(update_pinned)")
            self.account.charge(self.npinned - self.last_npinned)
        self.last_npinned = self.npinned

    # -- domains -----------------------------------------------------------------------
    def _runs(self, area: IoptArea, first: int, pfns: I64Array, cuts: list[int],
              small: bool) -> list[tuple[int, int, int]]:
        """``batch_to_domain``: ``(iova, paddr, size)`` per run of contiguous PFNs (per page
        with large pages disabled); the area's first and last page may be partial."""
        brk = np.flatnonzero(np.diff(pfns) != 1) + 1 if not small else np.arange(1, len(pfns))
        bounds = sorted({0, len(pfns), *brk.tolist(), *cuts})
        end_byte = area.start_byte + area.length
        out = []
        for a, b in itertools.pairwise(bounds):
            lo = max((first + a) * PAGE_SIZE, area.start_byte)
            hi = min((first + b) * PAGE_SIZE, end_byte)
            pa = (int(pfns[a]) << PAGE_SHIFT) + lo - (first + a) * PAGE_SIZE
            out.append((area.iova + lo - area.start_byte, pa, hi - lo))
        self.stats.batches += -(-len(out) // max(1, self._limit[0] // _BATCH_ELEMENT))
        return out

    def fill(self, area: IoptArea, domains: list[IommuDomain], small: bool, *,
             flush: bool = False) -> None:
        """``iopt_area_fill_domains`` (a new area, every domain) and ``iopt_area_fill_domain``
        (a new domain): map the area's PFNs, flushed first if the policy says so; on error
        nothing stays mapped or pinned."""
        pfns, fresh, cuts = self.read(area.index, area.last_index)
        done: list[tuple[IommuDomain, int, int]] = []
        try:
            if flush and self.flusher is not None:
                self.flusher.flush(pfns, "map")
            runs = self._runs(area, area.index, pfns, cuts, small)
            for domain in domains:
                for iova, pa, size in runs:
                    domain.map(iova, pa, size, area.prot)
                    self.stats.map_calls += 1
                    done.append((domain, iova, size))
            self.update_pinned()
        except KernelError:
            for domain, iova, size in reversed(done):
                domain.unmap(iova, size)
            self.release(pfns, fresh)
            self.update_pinned()
            raise

    def unmap_domain(self, area: IoptArea, domain: IommuDomain, *, flush: str = "") -> None:
        """``iopt_area_unmap_domain``: unmap without unpinning (another domain holds them);
        then the flush the policy asked for at point ``flush``, if any."""
        pfns = _area_pfns(area, domain, area.index, area.last_index) if flush else None
        domain.unmap(area.iova, area.length)
        self.stats.unmap_calls += 1
        if pfns is not None and self.flusher is not None:
            self.flusher.flush(pfns, flush)

    def unfill(self, area: IoptArea, domain: IommuDomain, *, flush: str = "") -> None:
        """``iopt_area_unfill_domain`` (``area`` already out of domains_itree): read the PFNs
        nobody else holds from ``domain``, unmap (and flush), then unpin them."""
        holes = [(lo, hi) for kind, lo, hi in self._spans(area.index, area.last_index)
                 if kind == 0]
        drop = [_area_pfns(area, domain, lo, hi) for lo, hi in holes]
        self.unmap_domain(area, domain, flush=flush)
        for pfns in drop:
            self._unpin(pfns)
        self.update_pinned()

    # -- accesses ------------------------------------------------------------------------
    def add_access(self, first: int, last: int) -> I64Array:
        """``iopt_pages_add_access``: hold ``[first, last]`` in the xarray (shared with an
        access of exactly the same range); the PFNs."""
        key = (first, last)
        if key in self.accesses:
            self.accesses[key] += 1
            assert self._xarray is not None
            return self._xarray[first:last + 1].copy()
        pfns, fresh, _ = self.read(first, last)
        try:
            self.update_pinned()
        except KernelError:
            self.release(pfns, fresh)
            self.update_pinned()
            raise
        if self._xarray is None:
            self._xarray = np.full(self.npages, -1, dtype=np.int64)
        self._xarray[first:last + 1] = pfns
        self.accesses[key] = 1
        return pfns

    def remove_access(self, first: int, last: int) -> None:
        """``iopt_pages_remove_access``: the last user of the range unpins what nothing
        else holds (``iopt_pages_unfill_xarray``)."""
        key = (first, last)
        self.accesses[key] -= 1
        if self.accesses[key]:
            return
        del self.accesses[key]
        assert self._xarray is not None
        for kind, lo, hi in self._spans(first, last):
            if kind == 1:
                continue
            if kind == 0:
                self._unpin(self._xarray[lo:hi + 1].copy())
            self._xarray[lo:hi + 1] = -1
        if not self.accesses:
            self._xarray = None
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
        if not self.domain_areas and not self.accesses:
            assert self.npinned == 0, f"{self.npinned} pages pinned with no holder"

