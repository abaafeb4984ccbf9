"""The IOVA side of ``struct io_pagetable`` (drivers/iommu/iommufd/io_pagetable.c, 7.0).

Three sets of byte ranges, all inclusive ``[start, last]`` as the kernel's
interval trees hold them: areas (what is mapped, never overlapping),
reservations (IOVA nothing may be mapped at: outside a domain's aperture,
device reserved regions, the selftest's ADD_RESERVED; reservations of
different owners may overlap) and allowed ranges (where automatic IOVA
allocation may look; an allowed range may never become reserved). The
alignment every mapping must respect is ``iova_alignment``.

The trees become sorted lists searched with ``bisect``; the spans the
kernel walks with ``interval_tree_for_each_span`` / ``_double_span`` come
from merging those lists.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import AddressInUse, AlreadyExists, InvalidArgument, NoSpace, Overflow

if TYPE_CHECKING:
    from ..mem import FailNth

__all__ = ["PAGE_SIZE", "ULONG_MAX", "IovaSpace", "Reservation"]

ULONG_MAX = (1 << 64) - 1
PAGE_SIZE = 4096
HPAGE_SIZE = 2 << 20  # CONFIG_TRANSPARENT_HUGEPAGE: the cap on automatic IOVA alignment


@dataclass(frozen=True)
class Reservation:
    """``struct iopt_reserved``: ``owner`` is a domain, a device, or None (selftest)."""

    start: int
    last: int
    owner: Any = None


@dataclass
class _Span:
    start: int
    last: int


@dataclass
class IovaSpace:
    """Areas as ``(start, last) -> area``, reservations and allowed ranges of one IOAS."""

    iova_alignment: int = 1  # iopt_init_table: the whole size_t space, no alignment
    _area_starts: list[int] = field(default_factory=list)
    _area_lasts: list[int] = field(default_factory=list)
    _areas: list[Any] = field(default_factory=list)
    reserved: list[Reservation] = field(default_factory=list)  # sorted by start
    allowed: list[tuple[int, int]] = field(default_factory=list)  # sorted, disjoint
    fail_nth: FailNth | None = field(default=None, repr=False)  # the machine's

    # -- areas -------------------------------------------------------------------------------
    def areas(self, start: int = 0, last: int = ULONG_MAX) -> Iterator[tuple[int, int, Any]]:
        """``iopt_area_iter_first/next``: areas intersecting ``[start, last]``, in order."""
        i = bisect.bisect_right(self._area_starts, start) - 1
        if i < 0 or self._area_lasts[i] < start:
            i += 1
        while i < len(self._areas) and self._area_starts[i] <= last:
            yield self._area_starts[i], self._area_lasts[i], self._areas[i]
            i += 1

    def first_area(self, start: int, last: int) -> tuple[int, int, Any] | None:
        return next(self.areas(start, last), None)

    def insert_area(self, start: int, last: int, area: Any) -> None:
        """``interval_tree_insert``: the caller has checked the range is free."""
        i = bisect.bisect_left(self._area_starts, start)
        self._area_starts.insert(i, start)
        self._area_lasts.insert(i, last)
        self._areas.insert(i, area)

    def remove_area(self, start: int) -> None:
        i = bisect.bisect_left(self._area_starts, start)
        if i == len(self._area_starts) or self._area_starts[i] != start:
            raise KeyError(f"no area starts at {start:#x}")
        del self._area_starts[i], self._area_lasts[i], self._areas[i]

    # -- reservations and allowed ranges -------------------------------------------------------
    def reserved_first(self, start: int, last: int) -> Reservation | None:
        """``iopt_reserved_iter_first``: a reservation intersecting ``[start, last]``."""
        return next((r for r in self.reserved if r.start <= last and start <= r.last), None)

    def _allowed_intersects(self, start: int, last: int) -> bool:
        return any(lo <= last and start <= hi for lo, hi in self.allowed)

    def reserve(self, start: int, last: int, owner: Any = None) -> None:
        """``iopt_reserve_iova``: EADDRINUSE over an area or an allowed range, then the
        node (``kzalloc``)."""
        if self.first_area(start, last) is not None or self._allowed_intersects(start, last):
            raise AddressInUse(f"reserve [{start:#x}, {last:#x}]: an area or an allowed range "
                               "is there")
        if self.fail_nth is not None:
            self.fail_nth.check("kzalloc(iopt_reserved)")
        r = Reservation(start, last, owner)
        self.reserved.insert(bisect.bisect(self.reserved, start, key=lambda x: x.start), r)

    def remove_reservations(self, owner: Any) -> None:
        """``iopt_remove_reserved_iova``: drop every reservation of ``owner``."""
        self.reserved = [r for r in self.reserved if r.owner is not owner]

    def set_allowed(self, ranges: Iterable[tuple[int, int]]) -> None:
        """``iommufd_ioas_load_iovas`` and ``iopt_set_allow_iova``: replace the allowed set
        at once (no ranges clear it).

        Each range is taken from ``ranges`` and checked before the next is taken (the
        ioctl reads them lazily from user memory, so a fault there comes after the
        earlier ranges' checks): EINVAL for ``start >= last`` or an overlap with an
        earlier range. Then EADDRINUSE when one meets a reservation. The old set stays
        on any error.
        """
        new: list[tuple[int, int]] = []
        for i, (lo, hi) in enumerate(ranges):
            if lo >= hi:
                raise InvalidArgument(f"allowed range {i} [{lo:#x}, {hi:#x}]: start >= last")
            at = bisect.bisect(new, (lo, hi))
            if (at and new[at - 1][1] >= lo) or (at < len(new) and new[at][0] <= hi):
                raise InvalidArgument(f"allowed range {i} [{lo:#x}, {hi:#x}] overlaps an "
                                      "earlier one")
            new.insert(at, (lo, hi))
        for lo, hi in new:
            if self.reserved_first(lo, hi) is not None:
                raise AddressInUse(f"allowed range [{lo:#x}, {hi:#x}] meets a reservation")
        self.allowed = new

    def holes_of_reserved(self) -> list[tuple[int, int]]:
        """What IOMMU_IOAS_IOVA_RANGES reports: the gaps between reservations over the
        whole ``[0, ULONG_MAX]`` (areas and allowed ranges do not count)."""
        return _holes([(r.start, r.last) for r in self.reserved], 0, ULONG_MAX)

    # -- checks and allocation -----------------------------------------------------------------
    def check_iova(self, iova: int, length: int) -> None:
        """``iopt_check_iova`` for a FIXED_IOVA map: alignment (EINVAL), overflow
        (EOVERFLOW), a reservation (EINVAL), an area (EEXIST)."""
        if iova & (self.iova_alignment - 1):
            raise InvalidArgument(f"iova {iova:#x} is not aligned to {self.iova_alignment:#x}")
        last = iova + length - 1
        if last > ULONG_MAX:
            raise Overflow(f"[{iova:#x}, +{length:#x}) wraps")
        if self.reserved_first(iova, last) is not None:
            raise InvalidArgument(f"[{iova:#x}, {last:#x}] meets a reserved range")
        if self.first_area(iova, last) is not None:
            raise AlreadyExists(f"[{iova:#x}, {last:#x}] meets a mapped area")

    def alloc_iova(self, addr: int, length: int) -> int:
        """``iopt_alloc_iova``: the lowest free IOVA (never 0) keeping the alignment ``addr``
        has, up to the length's power of two and at most HPAGE_SIZE, with ``addr``'s offset
        in its page; only inside allowed ranges when there are some. EOVERFLOW for a length
        of 0 or of ULONG_MAX/2 and more, EINVAL when that alignment is below the table's,
        ENOSPC when nothing fits."""
        if length == 0 or length >= ULONG_MAX // 2:
            raise Overflow(f"alloc_iova: length {length:#x}")
        align = 1 << (length - 1).bit_length()  # roundup_pow_of_two
        if addr:
            align = min(align, addr & -addr)
        align = min(align, HPAGE_SIZE)
        if align < self.iova_alignment:
            raise InvalidArgument(f"alloc_iova: alignment {align:#x} is below the table's "
                                  f"{self.iova_alignment:#x}")
        offset = addr % PAGE_SIZE
        lo, hi = PAGE_SIZE, ULONG_MAX - PAGE_SIZE
        allowed = [(max(a, lo), min(b, hi)) for a, b in self.allowed] if self.allowed \
            else [(lo, hi)]
        used = sorted([(r.start, r.last) for r in self.reserved] +
                      list(zip(self._area_starts, self._area_lasts, strict=True)))
        for a_lo, a_hi in allowed:
            span = _Span(a_lo, a_hi)
            if a_lo > a_hi or not _fit(span, length, align, offset):
                continue
            for h_lo, h_hi in _holes(used, span.start, span.last):
                hole = _Span(h_lo, h_hi)
                if _fit(hole, length, align, offset):
                    return hole.start
        raise NoSpace(f"alloc_iova: no free {length:#x} bytes at alignment {align:#x}")

    def _check(self) -> None:
        """O(n): areas sorted and disjoint, allowed ranges disjoint from reservations."""
        for i in range(1, len(self._areas)):
            assert self._area_lasts[i - 1] < self._area_starts[i], \
                f"areas overlap at {self._area_starts[i]:#x}"
        for lo, hi in self.allowed:
            assert self.reserved_first(lo, hi) is None, f"allowed [{lo:#x}, {hi:#x}] reserved"


def _fit(span: _Span, length: int, align: int, offset: int) -> bool:
    """``__alloc_iova_check_range``: move ``span.start`` up to the alignment (with the page
    offset); whether ``length`` bytes still fit before ``span.last``."""
    start = span.start + align - 1
    if start > ULONG_MAX:  # check_add_overflow
        return False
    start = (start & ~(align - 1)) | offset
    if start >= span.last or span.last - start < length - 1:
        return False
    span.start = start
    return True


def _holes(used: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    """The gaps of the union of ``used`` (sorted by start) inside ``[lo, hi]``."""
    out: list[tuple[int, int]] = []
    cur = lo
    for s, e in used:
        if e < cur:
            continue
        if s > hi:
            break
        if s > cur:
            out.append((cur, s - 1))
        cur = max(cur, e + 1)
        if cur > hi:
            return out
    if cur <= hi:
        out.append((cur, hi))
    return out
