"""``struct io_pagetable``: an IOAS's areas, domains and accesses
(drivers/iommu/iommufd/io_pagetable.c, 7.0).

Mapping inserts an area over an ``iopt_pages`` (checks in the kernel's
order, see :meth:`IoPagetable.map_pages`) and fills every domain; without a
domain nothing is pinned until one is added or an access pins. Unmapping
takes whole areas only. Adding a domain reserves what lies outside its
aperture, raises the IOVA alignment to its smallest page and maps every
area into it; the first domain becomes each area's storage domain.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..errors import (
    AddressInUse,
    AlreadyExists,
    Busy,
    InvalidArgument,
    KernelError,
    NoEntry,
    NotPermitted,
    Overflow,
    kernel_error,
)
from ..iommu.domain import IommuDomain
from ..mem.fault import xa_nodes_needed
from ..prot import Prot
from ..sizes import PAGE_SIZE
from .area import IoptArea
from .iova_space import ULONG_MAX, IovaSpace

if TYPE_CHECKING:
    from ..mem import FailNth
    from .cache_flush import CacheFlush
    from .pages import IoptPages

__all__ = ["AccessHook", "IoPagetable", "PagesSlice"]

_MAX_UNMAP_TRIES = 100  # iopt_unmap_iova_range's loop guard


@dataclass(frozen=True)
class PagesSlice:
    """``struct iopt_pages_list``: ``length`` bytes of ``pages`` from ``start_byte``."""

    pages: IoptPages
    start_byte: int
    length: int


class AccessHook(Protocol):
    """What the io_pagetable needs of an ``iommufd_access``."""

    iova_alignment: int

    def notify_unmap(self, iova: int, length: int) -> None:
        """``access->ops->unmap``: the driver must unpin what it holds in the range."""
        ...


class IoPagetable:
    """One IOAS's table: :class:`IovaSpace` plus domains and accesses."""

    def __init__(self, fail_nth: FailNth, cache_flush: CacheFlush | None = None) -> None:
        self.space = IovaSpace(fail_nth=fail_nth)
        self.domains: list[IommuDomain] = []  # dense, as the xarray is kept
        self.noncoherent: list[IommuDomain] = []  # lab: domains not enforcing coherency
        self.cache_flush = cache_flush
        self.accesses: list[AccessHook] = []
        self.disable_large_pages = False
        self.fail_nth = fail_nth

    @property
    def iova_alignment(self) -> int:
        return self.space.iova_alignment

    def areas(self, start: int = 0, last: int = ULONG_MAX) -> list[IoptArea]:
        return [a for _, _, a in self.space.areas(start, last)]

    # -- map -----------------------------------------------------------------------------
    def map_pages(self, slices: list[PagesSlice], iova: int, prot: int, *, fixed: bool,
                  addr: int) -> int:
        """``iopt_map_pages``: one area per slice (new pages, or another area's for COPY),
        all allocated first, back to back from ``iova`` (or from an automatic IOVA
        aligned like ``addr``), then every domain filled; the IOVA used. On error nothing
        is left."""
        length = sum(s.length for s in slices)
        space = self.space
        for _ in slices:  # iopt_alloc_area_pages: every area before any check
            self.fail_nth.check("kzalloc(iopt_area)")
        if length & (space.iova_alignment - 1) or not length:
            raise InvalidArgument(f"map: length {length:#x} is not a multiple of the IOAS "
                                  f"alignment {space.iova_alignment:#x}")
        if fixed:
            space.check_iova(iova, length)
        else:
            iova = space.alloc_iova(addr, length)
        areas: list[IoptArea] = []
        try:
            at = iova
            for s in slices:
                areas.append(self._insert_area(s, at, prot))
                at += s.length
            self._fill_new(list(zip(areas, (s.pages for s in slices), strict=True)))
        except KernelError:
            for area in areas:
                space.remove_area(area.iova)
            raise
        for area, s in zip(areas, slices, strict=True):
            area.pages = s.pages
            s.pages.users += 1
        return iova

    def _insert_area(self, s: PagesSlice, iova: int, prot: int) -> IoptArea:
        """``iopt_insert_area``: EPERM for a writable map of read-only pages, EINVAL for a
        page offset off the alignment; the area goes in with ``pages`` unset."""
        if prot & Prot.WRITE and not s.pages.writable:
            raise NotPermitted("map: a writable mapping of pages that are not writable")
        if (s.start_byte % PAGE_SIZE) & (self.space.iova_alignment - 1):
            raise InvalidArgument(f"map: page offset {s.start_byte % PAGE_SIZE:#x} is not "
                                  f"aligned to {self.space.iova_alignment:#x}")
        area = IoptArea(iova, iova + s.length - 1, None, s.start_byte, prot)
        self.space.insert_area(area.iova, area.last, area)
        return area

    def _fill_new(self, new: list[tuple[IoptArea, IoptPages]]) -> None:
        """``iopt_fill_domains_pages``: on error the areas already filled are unfilled."""
        if not self.domains:
            return
        done: list[tuple[IoptArea, IoptPages]] = []
        nc = bool(self.noncoherent)
        try:
            for area, pages in new:
                pages.fill(area, self.domains, self.disable_large_pages,
                           flush=self._flush_at_map(pages, nc, nc))
                area.storage_domain = self.domains[0]
                pages.domain_areas.append(area)
                done.append((area, pages))
        except KernelError:
            for area, pages in done:
                self._unfill_area(area, pages)
            raise

    # -- unmap ---------------------------------------------------------------------------
    def unmap(self, iova: int, length: int) -> int:
        """``iopt_unmap_iova``: EOVERFLOW/EINVAL for a bad range, then the range."""
        if not length:
            raise InvalidArgument("unmap: length 0")
        last = iova + length - 1
        if last > ULONG_MAX:
            raise Overflow(f"unmap: [{iova:#x}, +{length:#x}) wraps")
        return self.unmap_range(iova, last)

    def unmap_all(self) -> int:
        """``iopt_unmap_all``: an empty IOAS unmaps 0 bytes."""
        return self.unmap_range(0, ULONG_MAX)

    def unmap_range(self, start: int, last: int) -> int:
        """``iopt_unmap_iova_range``: every area inside ``[start, last]``, the bytes
        unmapped (0, and success, when nothing is there); ENOENT if an area sticks out,
        EBUSY for a locked area. Not atomic: areas before the offending one are already
        gone, and the error carries how many bytes that was in ``unmapped`` (the kernel's
        out parameter, which the VFIO compat layer reports)."""
        unmapped = 0
        tries: dict[int, int] = {}
        try:
            while True:
                hit = self.space.first_area(start, last)
                if hit is None:
                    break
                area_first, area_last, area = hit
                if area.pages is None or area.num_locks:
                    raise Busy(f"unmap: area [{area_first:#x}, {area_last:#x}] is busy")
                if area_first < start or area_last > last:
                    raise NoEntry(f"unmap: [{start:#x}, {last:#x}] cuts area "
                                  f"[{area_first:#x}, {area_last:#x}]")
                if area.num_accesses:
                    tries[area_first] = tries.get(area_first, 0) + 1
                    if tries[area_first] > _MAX_UNMAP_TRIES:
                        raise kernel_deadlock(area_first)
                    area.prevent_access = True
                    for access in list(self.accesses):
                        access.notify_unmap(area_first, area.length)
                    area.prevent_access = False
                    continue
                self._remove_area(area)
                unmapped += area.length
        except KernelError as e:
            e.unmapped = unmapped  # type: ignore[attr-defined]
            raise
        return unmapped

    def _remove_area(self, area: IoptArea) -> None:
        pages = area.pages
        assert pages is not None
        area.pages = None
        self._unfill_area(area, pages)
        self.space.remove_area(area.iova)
        pages.users -= 1
        if not pages.users:
            pages.destroy()

    def _unfill_area(self, area: IoptArea, pages: IoptPages) -> None:
        """``iopt_area_unfill_domains``: other domains are just unmapped, the storage
        domain is unmapped and the pages nobody else holds unpinned."""
        storage = area.storage_domain
        if storage is None:
            return
        for domain in self.domains:
            if domain is not storage:
                pages.unmap_domain(area, domain,
                                   flush=self._flush_at_unmap(domain, "area-other"))
        pages.domain_areas.remove(area)
        pages.unfill(area, storage, flush=self._flush_at_unmap(storage, "area"))
        area.storage_domain = None

    # -- lab: the cache flush policy's questions -------------------------------------------
    def _flush_at_map(self, pages: IoptPages, into_nc: bool, ioas_nc: bool) -> bool:
        cf = self.cache_flush
        return cf is not None and cf.at_map(pages, into_nc, ioas_nc)

    def _flush_at_unmap(self, domain: IommuDomain, why: str) -> str:
        """The point name (``unmap`` or ``detach``) if the policy wants a flush after
        unmapping from ``domain``; see :meth:`CacheFlush.at_unmap` for ``why``."""
        cf = self.cache_flush
        if cf is None or not cf.at_unmap(domain in self.noncoherent, bool(self.noncoherent),
                                         why):
            return ""
        return "detach" if why == "domain" else "unmap"

    def set_coherent(self, domain: IommuDomain) -> None:
        """The domain's HWPT now enforces cache coherency."""
        if domain in self.noncoherent:
            self.noncoherent.remove(domain)

    # -- VFIO type1 v1 ------------------------------------------------------------------
    def cut_iova(self, iovas: list[int]) -> None:
        """``iopt_cut_iova``: split the area holding each IOVA so that it ends there."""
        for iova in iovas:
            hit = self.space.first_area(iova, iova)
            if hit is not None:
                self._split_area(hit[2], iova)

    def _split_area(self, area: IoptArea, iova: int) -> None:
        """``iopt_area_split``: ``iova`` becomes the last byte of the left part; both parts
        keep the pages, the storage domain and the domains' mappings. EBUSY while the area
        is being set up or torn down, EINVAL for a cut off the alignment, an area with
        accesses or one a domain may hold in large pages."""
        if iova in (area.iova, area.last):
            return
        pages = area.pages
        if pages is None or area.prevent_access:
            raise Busy(f"split: area [{area.iova:#x}, {area.last:#x}] is busy")
        new_start = iova + 1
        align = self.space.iova_alignment
        if new_start & (align - 1) or area.start_byte_of(new_start) & (align - 1):
            raise InvalidArgument(f"split at {iova:#x}: {new_start:#x} is not aligned to "
                                  f"{align:#x}")
        self.fail_nth.check("kzalloc(iopt_area)")
        self.fail_nth.check("kzalloc(iopt_area)")
        if area.num_accesses:
            raise InvalidArgument(f"split at {iova:#x}: the area has accesses")
        if area.storage_domain is not None and not self.disable_large_pages:
            raise InvalidArgument(f"split at {iova:#x}: a domain may map the area with "
                                  "large pages")
        lhs = IoptArea(area.iova, iova, pages, area.start_byte, area.prot, area.storage_domain)
        rhs = IoptArea(new_start, area.last, pages, area.start_byte_of(new_start), area.prot,
                       area.storage_domain)
        self.space.remove_area(area.iova)
        self.space.insert_area(lhs.iova, lhs.last, lhs)
        self.space.insert_area(rhs.iova, rhs.last, rhs)
        if area.storage_domain is not None:
            i = pages.domain_areas.index(area)
            pages.domain_areas[i:i + 1] = [lhs, rhs]
        pages.users += 1

    # -- COPY ----------------------------------------------------------------------------
    def get_pages(self, iova: int, length: int) -> list[PagesSlice]:
        """``iopt_get_pages``: the slices behind ``[iova, +length)``, one list element
        (``kzalloc``) per contiguous area as the walk meets it; ENOENT after them if they do
        not cover the range."""
        if not length:
            raise InvalidArgument("copy: length 0")
        last = iova + length - 1
        if last > ULONG_MAX:
            raise Overflow(f"copy: [{iova:#x}, +{length:#x}) wraps")
        out: list[PagesSlice] = []
        areas, done = self.contig_run(iova, last)
        for area in areas:
            self.fail_nth.check("kzalloc(iopt_pages_list)")
            lo, hi = max(iova, area.iova), min(last, area.last)
            assert area.pages is not None
            out.append(PagesSlice(area.pages, area.start_byte_of(lo), hi - lo + 1))
        if not done:
            raise NoEntry(f"[{iova:#x}, {last:#x}] is not covered by contiguous areas")
        return out

    # -- domains -------------------------------------------------------------------------
    def add_domain(self, domain: IommuDomain, *, coherent: bool = False) -> None:
        """``iopt_table_add_domain``; ``coherent`` is its HWPT's enforce_cache_coherency."""
        space = self.space
        if domain in self.domains:
            raise AlreadyExists(f"{domain!r} is already in this IOAS")
        align = max(domain.pgsize_bitmap & -domain.pgsize_bitmap, space.iova_alignment)
        if align > PAGE_SIZE:
            raise InvalidArgument(f"{domain!r}: smallest page {align:#x} is above PAGE_SIZE")
        if align != space.iova_alignment:
            self._check_alignment(align)
        geo = domain.geometry
        try:
            if geo.aperture_start:
                space.reserve(0, geo.aperture_start - 1, domain)
            if geo.aperture_end != ULONG_MAX:
                space.reserve(geo.aperture_end + 1, ULONG_MAX, domain)
            n = len(self.domains)  # xa_reserve(&iopt->domains, next_domain_id)
            self.fail_nth.xa_nodes("iopt->domains", xa_nodes_needed(
                np.arange(n, dtype=np.int64), n, n, root_ok=False))
            self._fill_domain(domain, not coherent)
        except KernelError:
            space.remove_reservations(domain)
            raise
        space.iova_alignment = align
        self.domains.append(domain)
        if not coherent:
            self.noncoherent.append(domain)

    def _fill_domain(self, domain: IommuDomain, nc: bool) -> None:
        """``iopt_fill_domain``: map every area into the new domain."""
        first = not self.domains
        done: list[IoptArea] = []
        ioas_nc = nc or bool(self.noncoherent)
        try:
            for area in self.areas():
                pages = area.pages
                if pages is None:
                    continue
                pages.fill(area, [domain], self.disable_large_pages,
                           flush=self._flush_at_map(pages, nc, ioas_nc))
                if area.storage_domain is None:
                    area.storage_domain = domain
                    pages.domain_areas.append(area)
                done.append(area)
        except KernelError:
            for area in done:
                pages = area.pages
                assert pages is not None
                if first:
                    pages.domain_areas.remove(area)
                    area.storage_domain = None
                    pages.unfill(area, domain)
                else:
                    pages.unmap_domain(area, domain)
            raise

    def remove_domain(self, domain: IommuDomain) -> None:
        """``iopt_table_remove_domain``: swap with the tail; unmap (another domain takes
        over the storage) or unmap and unpin (the last domain)."""
        i = self.domains.index(domain)
        tail = self.domains.pop()
        if tail is not domain:
            self.domains[i] = tail
        flush = self._flush_at_unmap(domain, "domain")
        for area in self.areas():
            pages = area.pages
            if pages is None:
                continue
            if self.domains:
                if area.storage_domain is domain:
                    area.storage_domain = self.domains[0]
                pages.unmap_domain(area, domain, flush=flush)
            else:
                pages.domain_areas.remove(area)
                area.storage_domain = None
                pages.unfill(area, domain, flush=flush)
        if domain in self.noncoherent:
            self.noncoherent.remove(domain)
        self.space.remove_reservations(domain)
        self.calculate_alignment()

    def _check_alignment(self, align: int) -> None:
        """``iopt_check_iova_alignment``: EADDRINUSE if an area breaks ``align``."""
        mask = align - 1
        for area in self.areas():
            if area.iova & mask or area.length & mask or area.page_offset & mask:
                raise AddressInUse(f"area [{area.iova:#x}, {area.last:#x}] is not aligned "
                                   f"to {align:#x}")
        if any(a.iova_alignment > align for a in self.accesses):
            raise AddressInUse(f"an access needs more than {align:#x}")

    def calculate_alignment(self) -> None:
        """``iopt_calculate_iova_alignment``."""
        align = PAGE_SIZE if self.disable_large_pages else 1
        for d in self.domains:
            align = max(align, d.pgsize_bitmap & -d.pgsize_bitmap)
        for a in self.accesses:
            align = max(align, a.iova_alignment)
        if align > self.space.iova_alignment:
            self._check_alignment(align)
        self.space.iova_alignment = align

    def set_large_pages(self, enable: bool) -> None:
        """``iopt_enable_large_pages`` / ``iopt_disable_large_pages`` (EINVAL with domains
        and areas, EADDRINUSE for an area off the page alignment)."""
        if enable:
            self.disable_large_pages = False
            self.calculate_alignment()
            return
        if self.disable_large_pages:
            return
        if self.domains and self.areas():
            raise InvalidArgument("HUGE_PAGES: domains already have pages mapped")
        self.disable_large_pages = True
        try:
            self.calculate_alignment()
        except KernelError:
            self.disable_large_pages = False
            raise

    # -- accesses ------------------------------------------------------------------------
    def add_access(self, access: AccessHook) -> None:
        """``iopt_add_access``: an id in ``iopt->access_list`` (``xa_alloc``, the lowest
        free one: the accesses' ids are taken as dense), then the alignment."""
        n = len(self.accesses)
        self.fail_nth.xa_nodes("iopt->access_list", xa_nodes_needed(
            np.arange(n, dtype=np.int64), n, n))
        self.accesses.append(access)
        try:
            self.calculate_alignment()
        except KernelError:
            self.accesses.remove(access)
            raise

    def remove_access(self, access: AccessHook) -> None:
        self.accesses.remove(access)
        self.calculate_alignment()

    def contig_run(self, iova: int, last: int) -> tuple[list[IoptArea], bool]:
        """``iopt_for_each_contig_area``: the areas covering ``[iova, last]`` from its
        start without a gap (stopping at a gap or an area being torn down), and whether
        they reach ``last`` (``iopt_area_contig_done``)."""
        out: list[IoptArea] = []
        cur = iova
        for area_first, area_last, area in self.space.areas(iova, last):
            if area_first > cur or area.pages is None:
                break
            out.append(area)
            cur = area_last + 1
            if area_last >= last:
                return out, True
        return out, False

    def contig_areas(self, iova: int, last: int) -> list[IoptArea]:
        """:meth:`contig_run`, ENOENT unless the areas cover the whole range."""
        out, done = self.contig_run(iova, last)
        if not done:
            raise NoEntry(f"[{iova:#x}, {last:#x}] is not covered by contiguous areas")
        return out

    def _check(self) -> None:
        self.space._check()
        for area in self.areas():
            if area.pages is not None:
                assert (area.storage_domain is not None) == bool(self.domains)
                area.pages._check()


def kernel_deadlock(iova: int) -> KernelError:
    """EDEADLOCK after too many tries to get accesses off an area."""
    return kernel_error(errno.EDEADLOCK, f"unmap: accesses keep area {iova:#x} pinned")
