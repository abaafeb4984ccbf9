"""The iommufd selftest's mock IOMMU: a 2K-page domain whose "page table" is an xarray.

Follows drivers/iommu/iommufd/selftest.c as of Linux 6.12 (the kernel the
oracle recordings come from; 7.0 moved the mock onto generic_pt's AMDv1
format, :mod:`.mock_pt`, which :class:`MockIommu` uses under 7.0). Each 2K IO
page of a domain is one xarray slot at index ``iova / MOCK_IO_PAGE_SIZE`` holding
``(paddr / MOCK_IO_PAGE_SIZE) | flags``: the first and last slot of every
``map_pages`` call carry
``MOCK_PFN_START_IOVA`` (= ``MOCK_PFN_LAST_IOVA``), every slot of a map with a
page size above 2K carries ``MOCK_PFN_HUGE_IOVA``. ``unmap_pages`` WARNs
unless it starts on a START slot and ends on a LAST slot (unmaps must be a
strict superset of maps) when the domain has no huge page size. The mock
ignores ``prot`` and has no IOTLB.

The xarray is modelled by :class:`MockPfns`, numpy chunks of slots, so maps
and unmaps work on ranges. DMA through the mock (``MockHw``) reads the same
slots; a missing slot is a fault recorded in ``MockHw.faults`` (a lab record: the
mock's hardware reports no translation faults; page requests come only from the
selftest's TRIGGER_IOPF, through ``dev_enable_feat``'s IOPF queue and
``page_response``, :mod:`iommulab.iommu.iopf`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import DmaFault, InvalidArgument, KernelError, NoDevice, NoEntry, NotSupported
from ..iommu.dirty import IommuDirtyBitmap
from ..iommu.domain import DomainGeometry, DomainType, IommuDomain
from ..iommu.gather import IommuIotlbGather
from ..iommu.iopf import (
    IOMMU_DEV_FEAT_IOPF,
    IommuPageResponse,
    IopfFault,
    iopf_queue_add_device,
    iopf_queue_remove_device,
)
from ..iommu.resv import IommuCap, ResvRegion
from ..iommu.user_data import (
    IommuUserData,
    IommuUserDataArray,
    iommu_copy_struct_from_full_user_array,
    iommu_copy_struct_from_user,
    iommu_copy_struct_from_user_array,
)
from ..kernel import DEFAULT_KERNEL, LINUX_7_0, KernelVersion
from ..mem import FailNth, PhysMem
from ..pgtable import IOMMU_DIRTY_NO_CLEAR
from ..sizes import PAGE_SIZE
from .mock_pt import (
    IOMMU_HWPT_DATA_SELFTEST,
    MockPtDomainOps,
    check_user_data_type,
    mock_domain_alloc_pgtable,
)

__all__ = [
    "MOCK_APERTURE_LAST",
    "MOCK_APERTURE_START",
    "MOCK_FLAGS_DEVICE_HUGE_IOVA",
    "MOCK_FLAGS_DEVICE_NO_DIRTY",
    "MOCK_HUGE_PAGE_SIZE",
    "MOCK_IO_PAGE_SIZE",
    "MOCK_PFN_HUGE_IOVA",
    "MOCK_PFN_MASK",
    "MOCK_PFN_START_IOVA",
    "MockDirtyOps",
    "MockDomainOps",
    "MockFault",
    "MockHw",
    "MockIommu",
    "MockNestedDomain",
    "MockPfns",
    "MockViommu",
]

U64Array = npt.NDArray[np.uint64]

MOCK_APERTURE_START = 1 << 24
MOCK_APERTURE_LAST = (1 << 31) - 1
MOCK_IO_PAGE_SIZE = PAGE_SIZE // 2
MOCK_HUGE_PAGE_SIZE = 512 * MOCK_IO_PAGE_SIZE
MOCK_PFN_MASK = ((1 << 64) - 1) // MOCK_IO_PAGE_SIZE
MOCK_PFN_START_IOVA = MOCK_PFN_MASK + 1
MOCK_PFN_LAST_IOVA = MOCK_PFN_START_IOVA
MOCK_PFN_DIRTY_IOVA = MOCK_PFN_START_IOVA << 1
MOCK_PFN_HUGE_IOVA = MOCK_PFN_START_IOVA << 2

MOCK_FLAGS_DEVICE_NO_DIRTY = 1 << 0
MOCK_FLAGS_DEVICE_HUGE_IOVA = 1 << 1
HWPT_ALLOC_NEST_PARENT, HWPT_ALLOC_DIRTY_TRACKING, HWPT_ALLOC_PASID = 1 << 0, 1 << 1, 1 << 3
MOCK_NESTED_DOMAIN_IOTLB_ID_MAX, MOCK_NESTED_DOMAIN_IOTLB_NUM = 3, 4  # iommufd_test.h
IOMMU_HWPT_INVALIDATE_DATA_SELFTEST = 0xDEADBEEF  # iommufd_test.h
IOMMU_TEST_INVALIDATE_FLAG_ALL = 1 << 0
# Linux 7.0's mock vIOMMU (iommufd_test.h)
IOMMU_VIOMMU_TYPE_SELFTEST = 0xDEADBEEF
IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST = 0xDEADBEEF
IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST_INVALID = 0xDADBEEF
IOMMU_VEVENTQ_TYPE_SELFTEST = 0xBEEFBEEF
IOMMU_TEST_DEV_CACHE_DEFAULT = 0xBADDAD
MOCK_DEV_CACHE_ID_MAX, MOCK_DEV_CACHE_NUM = 3, 4

_SHIFT = MOCK_IO_PAGE_SIZE.bit_length() - 1
_U64 = (1 << 64) - 1
_EMPTY = np.uint64(_U64)  # no xarray value can be all ones (flags stop at bit 55)
_CHUNK_SHIFT = 12  # 4096 slots (8 MiB of IOVA) per chunk


def _xa_height(index: int) -> int:
    """Levels of 64 slots an xarray needs to hold ``index``."""
    height = 1
    while index >> (6 * height):
        height += 1
    return height


class MockPfns:
    """The domain's xarray of slot values, kept as numpy chunks of 4096 slots."""

    def __init__(self) -> None:
        self._chunks: dict[int, U64Array] = {}
        self.count = 0  # present slots

    def _spans(self, first: int, n: int) -> Iterator[tuple[int, int, int, int]]:
        """(chunk number, offset in chunk, offset in the range, length) over a range."""
        done = 0
        while done < n:
            index = first + done
            c, off = index >> _CHUNK_SHIFT, index & ((1 << _CHUNK_SHIFT) - 1)
            k = min(n - done, (1 << _CHUNK_SHIFT) - off)
            yield c, off, done, k
            done += k

    def store(self, first: int, values: U64Array) -> int:
        """``xa_store`` of ``values`` at ``first``…; returns how many slots were occupied."""
        occupied = 0
        for c, off, at, k in self._spans(first, len(values)):
            chunk = self._chunks.get(c)
            if chunk is None:
                chunk = self._chunks[c] = np.full(1 << _CHUNK_SHIFT, _EMPTY, dtype=np.uint64)
            occupied += int(np.count_nonzero(chunk[off:off + k] != _EMPTY))
            chunk[off:off + k] = values[at:at + k]
        self.count += len(values) - occupied
        return occupied

    def erase(self, first: int, n: int) -> U64Array:
        """``xa_erase`` of ``n`` slots; their old values (``_EMPTY`` where there was none)."""
        old = np.full(n, _EMPTY, dtype=np.uint64)
        for c, off, at, k in self._spans(first, n):
            chunk = self._chunks.get(c)
            if chunk is None:
                continue
            old[at:at + k] = chunk[off:off + k]
            chunk[off:off + k] = _EMPTY
            if not np.any(chunk != _EMPTY):
                del self._chunks[c]
        self.count -= int(np.count_nonzero(old != _EMPTY))
        return old

    def load(self, index: int) -> int | None:
        """``xa_load``: the slot's value, or None."""
        chunk = self._chunks.get(index >> _CHUNK_SHIFT)
        if chunk is None:
            return None
        value = int(chunk[index & ((1 << _CHUNK_SHIFT) - 1)])
        return None if value == int(_EMPTY) else value

    def present(self, first: int, n: int) -> tuple[npt.NDArray[np.int64], U64Array]:
        """Indices and values of the occupied slots in ``[first, first + n)``."""
        idx: list[npt.NDArray[np.int64]] = []
        vals: list[U64Array] = []
        for c, off, _at, k in self._spans(first, n):
            chunk = self._chunks.get(c)
            if chunk is None:
                continue
            part = chunk[off:off + k]
            hit = np.flatnonzero(part != _EMPTY)
            if len(hit):
                idx.append(hit.astype(np.int64) + ((c << _CHUNK_SHIFT) + off))
                vals.append(part[hit])
        if not idx:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint64)
        return np.concatenate(idx), np.concatenate(vals)

    def xa_nodes(self, first: int, n: int) -> int:
        """The xarray nodes ``xa_store`` allocates to fill ``[first, first + n)``: one per
        64-slot chunk at each level that holds no slot yet, and the new top levels when
        the tree grows (see :func:`~iommulab.mem.fault.xa_nodes_needed`). The level-1
        chunks are read from the touched arrays, the others from the array keys."""
        last = first + n - 1
        keys = np.array(sorted(self._chunks), dtype=np.int64)
        top = 0
        if len(keys):
            arr = self._chunks[int(keys[-1])]
            top = int(keys[-1] << _CHUNK_SHIFT) + int(np.flatnonzero(arr != _EMPTY)[-1])
        h_before = _xa_height(top) if self.count else 0
        h_after = _xa_height(max(top, last))
        nodes = 0
        for level in range(1, h_after + 1):
            shift = 6 * level
            lo, hi = first >> shift, last >> shift
            if level == 1:
                have = self._present_blocks(lo, hi)
            else:
                have = int(np.count_nonzero(np.unique(keys >> (shift - _CHUNK_SHIFT)) >= lo)
                           - np.count_nonzero(np.unique(keys >> (shift - _CHUNK_SHIFT)) > hi))
            nodes += hi - lo + 1 - (have if level <= h_before else 0)
            if h_before < level and self.count and lo:  # the old tree under a new root
                nodes += 1
        return nodes

    def _present_blocks(self, lo: int, hi: int) -> int:
        """How many 64-slot blocks ``lo..hi`` hold a slot."""
        out = 0
        per = 1 << (_CHUNK_SHIFT - 6)
        for c in range(lo // per, hi // per + 1):
            chunk = self._chunks.get(c)
            if chunk is None:
                continue
            used = (chunk != _EMPTY).reshape(per, 64).any(axis=1)
            a, b = max(lo, c * per) - c * per, min(hi, c * per + per - 1) - c * per
            out += int(np.count_nonzero(used[a:b + 1]))
        return out

    def update(self, idx: npt.NDArray[np.int64], values: U64Array) -> None:
        """Rewrite occupied slots ``idx`` (from :meth:`present`) with ``values``."""
        chunks = idx >> _CHUNK_SHIFT
        for c in np.unique(chunks).tolist():
            sel = chunks == c
            self._chunks[c][idx[sel] & ((1 << _CHUNK_SHIFT) - 1)] = values[sel]

    def values(self) -> U64Array:
        """Every occupied slot's value (for whole-domain views)."""
        parts = [chunk[chunk != _EMPTY] for chunk in self._chunks.values()]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)


class MockDomainOps:
    """``mock_ops.default_domain_ops``: map/unmap/iova_to_phys over :class:`MockPfns`."""

    iotlb_sync_map = None  # the mock has none

    def __init__(self, fail_nth: FailNth) -> None:
        self.pfns = MockPfns()
        self.fail_nth = fail_nth

    def map_pages(self, domain: IommuDomain, iova: int, paddr: int, pgsize: int, pgcount: int,
                  prot: int, gfp: int) -> int:
        """``mock_domain_map_pages``: one slot per 2K; START on the first, LAST on the last,
        HUGE on all when ``pgsize`` is not 2K. ``iommufd_should_fail`` gives ENOENT."""
        if self.fail_nth.iommufd_should_fail("mock_domain_map_pages"):
            raise NoEntry("mock_domain_map_pages: injected failure")
        if iova % MOCK_IO_PAGE_SIZE:
            domain.warnings["mock_domain_map_pages: iova not 2K aligned"] += 1
        if pgsize % MOCK_IO_PAGE_SIZE:
            domain.warnings["mock_domain_map_pages: pgsize not a multiple of 2K"] += 1
        n = pgsize * pgcount >> _SHIFT
        self.fail_nth.xa_nodes("mock->pfns", self.pfns.xa_nodes(iova >> _SHIFT, n))
        values = np.arange(paddr >> _SHIFT, (paddr >> _SHIFT) + n, dtype=np.uint64)
        values[0] |= np.uint64(MOCK_PFN_START_IOVA)
        values[-1] |= np.uint64(MOCK_PFN_LAST_IOVA)
        if pgsize != MOCK_IO_PAGE_SIZE:
            values |= np.uint64(MOCK_PFN_HUGE_IOVA)
        occupied = self.pfns.store(iova >> _SHIFT, values)
        if occupied:  # WARN_ON(old) for each slot that held a value
            domain.warnings["mock_domain_map_pages: slot already in use"] += occupied
        return n << _SHIFT

    def unmap_pages(self, domain: IommuDomain, iova: int, pgsize: int, pgcount: int,
                    gather: IommuIotlbGather) -> int:
        """``mock_domain_unmap_pages``: erase every slot; the whole size is returned even for
        empty slots. Without a huge page size the range must start at a START slot and end
        at a LAST slot."""
        if iova % MOCK_IO_PAGE_SIZE:
            domain.warnings["mock_domain_unmap_pages: iova not 2K aligned"] += 1
        if pgsize % MOCK_IO_PAGE_SIZE:
            domain.warnings["mock_domain_unmap_pages: pgsize not a multiple of 2K"] += 1
        n = pgsize * pgcount >> _SHIFT
        old = self.pfns.erase(iova >> _SHIFT, n)
        if not domain.pgsize_bitmap & MOCK_HUGE_PAGE_SIZE and n:
            start = np.uint64(MOCK_PFN_START_IOVA)
            if old[0] != _EMPTY and not old[0] & start:
                domain.warnings["mock_domain_unmap_pages: unmap does not start a map"] += 1
            if old[-1] != _EMPTY and not old[-1] & start:
                domain.warnings["mock_domain_unmap_pages: unmap does not end a map"] += 1
        return n << _SHIFT

    def iova_to_phys(self, domain: IommuDomain, iova: int) -> int:
        """``mock_domain_iova_to_phys``: the slot's 2K-aligned address (no offset added)."""
        if iova % MOCK_IO_PAGE_SIZE:
            domain.warnings["mock_domain_iova_to_phys: iova not 2K aligned"] += 1
        value = self.pfns.load(iova >> _SHIFT)
        if value is None:
            domain.warnings["mock_domain_iova_to_phys: no entry"] += 1
            return 0
        return (value & MOCK_PFN_MASK) << _SHIFT

    def iotlb_sync(self, domain: IommuDomain, gather: IommuIotlbGather) -> None:
        """The mock has no ``iotlb_sync``; the lab still counts the calls."""
        domain.tlb_stats.iotlb_sync += 1

    def flush_iotlb_all(self, domain: IommuDomain) -> None:
        domain.tlb_stats.flush_all += 1

    def free(self, domain: IommuDomain) -> None:
        """``mock_domain_free``: WARN_ON(!xa_empty())."""
        if self.pfns.count:
            domain.warnings["mock_domain_free: slots still mapped"] += 1

    # -- lab views -------------------------------------------------------------------------------
    def leaf_runs(self, domain: IommuDomain, iova: int, size: int) -> list[tuple[int, int, int]]:
        """``(iova, pa, length)`` runs where both addresses continue slot to slot."""
        first = iova >> _SHIFT
        last = (iova + size + MOCK_IO_PAGE_SIZE - 1) >> _SHIFT
        idx, vals = self.pfns.present(first, last - first)
        if not len(idx):
            return []
        pfn = (vals & np.uint64(MOCK_PFN_MASK)).astype(np.int64)
        cut = np.flatnonzero((np.diff(idx) != 1) | (np.diff(pfn) != 1)) + 1
        starts = np.concatenate(([0], cut))
        ends = np.concatenate((cut, [len(idx)]))
        return [(int(idx[s]) << _SHIFT, int(pfn[s]) << _SHIFT, int(e - s) << _SHIFT)
                for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]

    def leaf_histogram(self, domain: IommuDomain) -> dict[int, int]:
        """Entries by size: 512 HUGE slots are one 1M entry, any other slot one 2K entry."""
        vals = self.pfns.values()
        huge = int(np.count_nonzero(vals & np.uint64(MOCK_PFN_HUGE_IOVA)))
        counts: Counter[int] = Counter()
        if len(vals) - huge:
            counts[MOCK_IO_PAGE_SIZE] = len(vals) - huge
        if huge:
            counts[MOCK_HUGE_PAGE_SIZE] = huge // 512
        return dict(sorted(counts.items()))


class MockDirtyOps:
    """``dirty_ops`` of the mock (selftest.c, 6.12): a domain-wide MOCK_DIRTY_TRACK flag and
    a MOCK_PFN_DIRTY_IOVA bit per slot, set by IOMMU_TEST_OP_DIRTY; a dirty huge entry
    is cleared whole and reported as 1M from where the walk stepped on it."""

    def __init__(self) -> None:
        self.tracking = False  # MOCK_DIRTY_TRACK

    def set_dirty_tracking(self, domain: IommuDomain, enabled: bool) -> None:
        self.tracking = enabled

    def read_and_clear_dirty(self, domain: IommuDomain, iova: int, size: int, flags: int,
                             dirty: IommuDirtyBitmap) -> None:
        """``mock_domain_read_and_clear_dirty``: EINVAL with a bitmap while not tracking.

        The walk starts at ``iova`` and steps 2K past an empty or ordinary slot and 1M
        past a HUGE one. At a HUGE slot every slot of the 1M region around it
        (``head = iova & ~(1M - 1)``) is tested and cleared, but the dirty range is
        recorded from the walked IOVA, not the head, so a walk that starts inside a
        huge entry records 1M from there (into the next entry's bits) and goes on at
        the same offset into each following 1M (a kernel wart kept). A vector step per
        stretch of 2K or of 1M steps."""
        if not self.tracking and dirty.bitmap is not None:
            raise InvalidArgument("mock: read_and_clear_dirty while not tracking")
        assert isinstance(domain.ops, MockDomainOps)
        pfns = domain.ops.pfns
        end = iova + size
        # every slot a 1M head may test lies in the 1M regions the walk touches
        lo = (iova & ~(MOCK_HUGE_PAGE_SIZE - 1)) >> _SHIFT
        hi = -(-end // MOCK_HUGE_PAGE_SIZE) * (MOCK_HUGE_PAGE_SIZE >> _SHIFT)
        idx, vals = pfns.present(lo, hi - lo)
        walk = _DirtyWalk(idx, vals, vals.copy(), end, flags, dirty)
        pos = iova
        while pos < end:  # the kernel's do-while: size is never 0 here
            pos = walk.huge_steps(pos) if walk.is_huge(pos) else walk.small_steps(pos)
        changed = walk.vals != walk.orig
        if changed.any():
            pfns.update(idx[changed], walk.vals[changed])

    def set_dirty(self, domain: IommuDomain, iovas: npt.NDArray[np.int64]) -> int:
        """IOMMU_TEST_OP_DIRTY: mark the slots at ``iovas`` dirty; how many exist."""
        assert isinstance(domain.ops, MockDomainOps)
        if not len(iovas):
            return 0
        idx, vals = _slots(domain.ops.pfns, iovas >> _SHIFT)
        domain.ops.pfns.update(idx, vals | np.uint64(MOCK_PFN_DIRTY_IOVA))
        return len(idx)


def _slots(pfns: MockPfns, want: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], U64Array]:
    """The occupied slots among the indexes ``want`` (sorted)."""
    idx, vals = pfns.present(int(want[0]), int(want[-1] - want[0]) + 1)
    keep = np.isin(idx, want)
    return idx[keep], vals[keep]


@dataclass
class _DirtyWalk:
    """The state of one 6.12 ``mock_domain_read_and_clear_dirty`` walk over the present
    slots ``idx`` (sorted) and their values ``vals`` (cleared as the walk goes).

    Each stretch of 2K or of 1M steps looks only at the slots it walks (found by
    binary search), so a walk costs O(stretches x log slots + slots walked)."""

    idx: npt.NDArray[np.int64]
    vals: U64Array
    orig: U64Array
    end: int
    flags: int
    dirty: IommuDirtyBitmap
    huge: npt.NDArray[np.int64] = field(init=False)  # the HUGE slots (the walk keeps them)

    def __post_init__(self) -> None:
        self.huge = self.idx[(self.vals & np.uint64(MOCK_PFN_HUGE_IOVA)) != 0]

    def _are_huge(self, slots: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """Whether each slot is present and HUGE."""
        if not len(self.huge):
            return np.zeros(len(slots), dtype=np.bool_)
        k = np.minimum(np.searchsorted(self.huge, slots), len(self.huge) - 1)
        found: npt.NDArray[np.bool_] = self.huge[k] == slots
        return found

    def is_huge(self, pos: int) -> bool:
        return bool(self._are_huge(np.array([pos >> _SHIFT]))[0])

    def _clear(self, k0: int, k1: int, hit: npt.NDArray[np.bool_]) -> None:
        """Clear the dirty bit of the slots ``k0 + hit`` unless IOMMU_DIRTY_NO_CLEAR."""
        if not self.flags & IOMMU_DIRTY_NO_CLEAR:
            self.vals[k0:k1][hit] &= np.uint64(~MOCK_PFN_DIRTY_IOVA & _U64)

    def small_steps(self, pos: int) -> int:
        """2K steps from ``pos`` up to the first HUGE slot (or the end): each dirty slot is
        recorded as ``(step iova, 2K)`` and cleared; returns where the walk goes on."""
        n = -(-(self.end - pos) // MOCK_IO_PAGE_SIZE)
        s0 = pos >> _SHIFT
        h = int(np.searchsorted(self.huge, s0))
        steps = min(int(self.huge[h]) - s0, n) if h < len(self.huge) else n
        k0, k1 = (int(k) for k in np.searchsorted(self.idx, [s0, s0 + steps]))
        hit = (self.vals[k0:k1] & np.uint64(MOCK_PFN_DIRTY_IOVA)) != 0
        if hit.any():
            mask = np.zeros(steps, dtype=np.bool_)
            mask[self.idx[k0:k1][hit] - s0] = True
            self.dirty.record_run(pos, MOCK_IO_PAGE_SIZE, mask)
            self._clear(k0, k1, hit)
        return pos + steps * MOCK_IO_PAGE_SIZE

    def _huge_run(self, pos: int) -> int:
        """How many 1M steps from ``pos`` land on HUGE slots, in windows that double, so
        the search costs what the run is long."""
        m = -(-(self.end - pos) // MOCK_HUGE_PAGE_SIZE)
        done, window = 0, 64
        while done < m:
            n = min(window, m - done)
            slots = (pos >> _SHIFT) + (done + np.arange(n, dtype=np.int64)) * (
                MOCK_HUGE_PAGE_SIZE >> _SHIFT)
            huge = self._are_huge(slots)
            if not huge.all():
                return done + int(np.argmin(huge))
            done += n
            window *= 2
        return m

    def huge_steps(self, pos: int) -> int:
        """1M steps from ``pos`` while the slot stepped on is HUGE: each tests and clears
        the 1M region around it (``mock_test_and_clear_dirty(head, 1M)``) and records
        ``(step iova, 1M)`` if any slot there was dirty; returns where the walk goes on.
        The steps' regions follow one another, so their slots are one slice."""
        stop = self._huge_run(pos)
        per = MOCK_HUGE_PAGE_SIZE >> _SHIFT
        first = pos // MOCK_HUGE_PAGE_SIZE
        k0, k1 = (int(k) for k in np.searchsorted(self.idx, [first * per, (first + stop) * per]))
        dirty = (self.vals[k0:k1] & np.uint64(MOCK_PFN_DIRTY_IOVA)) != 0
        if dirty.any():
            hit = np.zeros(stop, dtype=np.bool_)
            hit[self.idx[k0:k1][dirty] // per - first] = True
            self.dirty.record_run(pos, MOCK_HUGE_PAGE_SIZE, hit)
            self._clear(k0, k1, dirty)
        return pos + stop * MOCK_HUGE_PAGE_SIZE


@dataclass(frozen=True)
class MockFault:
    """Lab record of a DMA the mock could not translate."""

    sid: int
    iova: int
    write: bool

    def __str__(self) -> str:
        kind = "write" if self.write else "read"
        return f"mock: {kind} of {self.iova:#x} by {self.sid:#x}: no mapping"


@dataclass
class MockHw:
    """What devices behind the mock translate through: the attached domain's slots (6.12)
    or table (7.0)."""

    fail_nth: FailNth
    domains: dict[int, IommuDomain] = field(default_factory=dict)  # sid -> paging domain
    faults: list[MockFault] = field(default_factory=list)

    def translate_run(self, sid: int, iova: int, write: bool, privileged: bool = False
                      ) -> tuple[int, int]:
        """The physical address of ``iova`` and the end of its slot (or 1M huge entry)."""
        domain = self.domains.get(sid)
        found = None
        if domain is not None and isinstance(domain.ops, MockPtDomainOps):
            found = domain.ops.translate(iova)  # 7.0: the AMDv1 table
        elif domain is not None and isinstance(domain.ops, MockDomainOps):
            value = domain.ops.pfns.load(iova >> _SHIFT)
            if value is not None:
                size = MOCK_HUGE_PAGE_SIZE if value & MOCK_PFN_HUGE_IOVA else MOCK_IO_PAGE_SIZE
                pa = ((value & MOCK_PFN_MASK) << _SHIFT) | (iova & (MOCK_IO_PAGE_SIZE - 1))
                found = pa, (iova | (size - 1)) + 1
        if found is None:
            self.faults.append(MockFault(sid, iova, write))
            raise DmaFault(str(self.faults[-1]), sid=sid, iova=iova, write=write,
                           reason="no mapping")
        return found


@dataclass
class _MockDev:
    """``struct mock_dev``: ``cache`` is 7.0's per-device stand-in for a device cache
    (``MOCK_DEV_CACHE_NUM`` u32 values) a vIOMMU invalidation zeroes."""

    sid: int
    flags: int = 0
    viommu: Any = None  # 7.0: the vIOMMU of the nested domain it is attached to
    vdev_id: int = 0  # and its virtual id there
    cache: npt.NDArray[np.uint32] = field(default_factory=lambda: np.full(
        MOCK_DEV_CACHE_NUM, IOMMU_TEST_DEV_CACHE_DEFAULT, dtype=np.uint32))


class MockViommu:
    """``struct mock_viommu`` (Linux 7.0 selftest.c): the vIOMMU's driver part over the
    mock paging ``s2_parent``. ``viommu`` is the core's object (its vDEVICEs)."""

    def __init__(self, iommu: MockIommu, viommu: Any, s2_parent: IommuDomain) -> None:
        self.iommu = iommu
        self.viommu = viommu
        self.s2_parent = s2_parent

    def alloc_domain_nested(self, flags: int, user_data: IommuUserData) -> MockNestedDomain:
        """``mock_viommu_alloc_domain_nested``: EOPNOTSUPP for a flag beyond PASID (the
        core has taken FAULT_ID_VALID out), then ``__mock_domain_alloc_nested`` over
        ``s2_parent``."""
        if flags & ~HWPT_ALLOC_PASID:
            raise NotSupported(f"mock vIOMMU: nested flags {flags:#x}")
        domain = self.iommu.mock_domain_alloc_nested(self.s2_parent, user_data)
        domain.mock_viommu = self
        return domain

    def cache_invalidate(self, array: IommuUserDataArray) -> tuple[int, KernelError | None]:
        """``mock_viommu_cache_invalidate``: an empty array of the selftest type is a
        probe (0 done); else the array (``kcalloc``; the whole array copied: EINVAL for
        another type or an empty one, E2BIG, EFAULT, a short entry zero-filled), then
        per ``struct iommu_viommu_invalidate_selftest`` (flags, vdev_id, cache_id),
        stopping at the first bad one: EOPNOTSUPP for a flag beyond FLAG_ALL, EINVAL for
        a cache id past 3 or a virtual id without a vDEVICE; FLAG_ALL zeroes the
        device's whole cache, else entry ``cache_id``. O(entries)."""
        if array.entry_num == 0 and array.type == IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST:
            return 0, None
        try:
            self.iommu.hw.fail_nth.check("kcalloc(iommu_viommu_invalidate_selftest)")
            cmds = iommu_copy_struct_from_full_user_array(
                array, IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST, 12)
        except KernelError as e:
            return 0, e
        for done, raw in enumerate(cmds):
            flags, vdev_id, cache_id = (int.from_bytes(raw[i:i + 4], "little")
                                        for i in (0, 4, 8))
            if flags & ~IOMMU_TEST_INVALIDATE_FLAG_ALL:
                return done, NotSupported(f"mock vIOMMU: invalidation flags {flags:#x}")
            if cache_id > MOCK_DEV_CACHE_ID_MAX:
                return done, InvalidArgument(f"mock vIOMMU: cache_id {cache_id}")
            dev = self.viommu.find_dev(vdev_id)
            if dev is None:
                return done, InvalidArgument(f"mock vIOMMU: no vDEVICE {vdev_id}")
            mdev: _MockDev = dev.dev_iommu.priv
            if flags & IOMMU_TEST_INVALIDATE_FLAG_ALL:
                mdev.cache[:] = 0
            else:
                mdev.cache[cache_id] = 0
        return len(cmds), None


class MockNestedDomain(IommuDomain):
    """``struct mock_iommu_domain_nested`` (6.12 selftest.c): a NESTED domain over a
    mock paging ``parent``, and ``iotlb``, four u32 values standing in for a stage-1 TLB
    (``MOCK_NESTED_DOMAIN_IOTLB_NUM``) that invalidations zero. DMA of a device attached
    to it goes through the parent: the mock has no stage 1."""

    def __init__(self, parent: IommuDomain, iotlb: int, kernel: KernelVersion) -> None:
        super().__init__(DomainType.NESTED, kernel=kernel)
        self.parent = parent
        self.mock_viommu: MockViommu | None = None  # 7.0: made on a vIOMMU
        self.iotlb = np.full(MOCK_NESTED_DOMAIN_IOTLB_NUM, iotlb, dtype=np.uint32)

    def cache_invalidate_user(self, array: IommuUserDataArray) -> tuple[int, KernelError | None]:
        """``mock_domain_cache_invalidate_user``: EINVAL for another data type; then per
        ``struct iommu_hwpt_invalidate_selftest`` (flags, iotlb_id), stopping at the first
        bad one: the copy's EINVAL/EFAULT, EOPNOTSUPP for a flag beyond FLAG_ALL, EINVAL
        for an id past 3; FLAG_ALL zeroes every entry (the id ignored), else entry
        ``iotlb_id``. The entries done and the error, if any. O(entries)."""
        if array.type != IOMMU_HWPT_INVALIDATE_DATA_SELFTEST:
            return 0, InvalidArgument(f"mock: invalidation data type {array.type:#x}")
        done = 0
        for i in range(array.entry_num):
            try:
                raw = iommu_copy_struct_from_user_array(
                    array, IOMMU_HWPT_INVALIDATE_DATA_SELFTEST, i, 8, 8)
            except KernelError as e:
                return done, e
            flags, iotlb_id = int.from_bytes(raw[:4], "little"), int.from_bytes(raw[4:8], "little")
            if flags & ~IOMMU_TEST_INVALIDATE_FLAG_ALL:
                return done, NotSupported(f"mock: invalidation flags {flags:#x}")
            if iotlb_id > MOCK_NESTED_DOMAIN_IOTLB_ID_MAX:
                return done, InvalidArgument(f"mock: iotlb_id {iotlb_id} (at most "
                                             f"{MOCK_NESTED_DOMAIN_IOTLB_ID_MAX})")
            if flags & IOMMU_TEST_INVALIDATE_FLAG_ALL:
                self.iotlb[:] = 0
            else:
                self.iotlb[iotlb_id] = 0
            done += 1
        return done, None


class MockIommu:
    """``mock_ops``: a blocking default domain, no reserved regions, and paging domains
    as ``kernel`` makes them: 6.12's xarray of 2K slots (1M pages too with
    MOCK_FLAGS_DEVICE_HUGE_IOVA) in the mock aperture, or 7.0's generic_pt AMDv1 table
    (:mod:`.mock_pt`), whose tables come from ``mem``, the machine's memory (so they
    share its accounting and fault injection); 7.0 needs it (ValueError without)."""

    pgsize_bitmap = MOCK_IO_PAGE_SIZE
    #: ``mock_ops`` has the op a nested HWPT is allocated with (6.12
    #: ``domain_alloc_user`` given a parent, 7.0 ``domain_alloc_nested``).
    has_domain_alloc_nested = True
    #: ``mock_ops.user_pasid_table``: faults with a PASID go to a NESTED domain attached
    #: without one (``find_fault_handler``)
    user_pasid_table = True

    def __init__(self, hw: MockHw, *, kernel: KernelVersion = DEFAULT_KERNEL,
                 mem: PhysMem | None = None) -> None:
        if mem is None and kernel >= LINUX_7_0:
            raise ValueError(f"MockIommu: Linux {kernel}'s mock keeps generic_pt tables in "
                             "the machine's memory: pass mem=")
        self.hw = hw
        self.kernel = kernel
        self._mem = mem
        self.blocked_domain = IommuDomain(DomainType.BLOCKED)
        self.identity_domain = IommuDomain(DomainType.IDENTITY)
        self.default_domain = self.blocked_domain  # mock_ops.default_domain
        self.device_flags: dict[int, int] = {}  # sid -> MOCK_FLAGS_DEVICE_*
        #: lab: every page response the core sent (``mock_domain_page_response`` does
        #: nothing with them), as (sid, response)
        self.page_responses: list[tuple[int, IommuPageResponse]] = []

    def probe_device(self, sid: int) -> _MockDev:
        return _MockDev(sid, self.device_flags.get(sid, 0))

    def release_device(self, dev: _MockDev) -> None:
        self.hw.domains.pop(dev.sid, None)
        self.device_flags.pop(dev.sid, None)  # the mock_dev is gone with its flags

    def get_resv_regions(self, dev: _MockDev) -> list[ResvRegion]:
        return []

    @property
    def mem(self) -> PhysMem:
        """Where 7.0's tables live."""
        assert self._mem is not None, "6.12's mock keeps no tables in memory"
        return self._mem

    def domain_alloc_paging(self, dev: _MockDev | None = None,
                            type: DomainType = DomainType.UNMANAGED) -> IommuDomain:
        """6.12 ``mock_domain_alloc_paging``: the domain (``kzalloc``), the aperture, 2K
        pages, 1M with HUGE_IOVA.
        7.0 has no such op: ``iommu_paging_domain_alloc`` calls
        :meth:`domain_alloc_paging_flags` without flags or data."""
        if self.kernel >= LINUX_7_0:
            domain = self.domain_alloc_paging_flags(dev, 0)
            domain.type = type
            return domain
        self.hw.fail_nth.check("kzalloc(mock_iommu_domain)")
        domain = IommuDomain(type, MockDomainOps(self.hw.fail_nth), MOCK_IO_PAGE_SIZE,
                             DomainGeometry(MOCK_APERTURE_START, MOCK_APERTURE_LAST, True),
                             kernel=self.kernel)
        if dev is not None and dev.flags & MOCK_FLAGS_DEVICE_HUGE_IOVA:
            domain.pgsize_bitmap |= MOCK_HUGE_PAGE_SIZE
        return domain

    def domain_alloc_paging_flags(self, dev: _MockDev | None, flags: int = 0,
                                  user_data: IommuUserData | None = None) -> IommuDomain:
        """``mock_domain_alloc_user`` (6.12: NEST_PARENT and DIRTY_TRACKING) or
        ``mock_domain_alloc_paging_flags`` (7.0: PASID too): EOPNOTSUPP for another flag
        or dirty tracking on a NO_DIRTY device; dirty ops only when asked for.

        6.12 refuses driver data for a paging domain (EOPNOTSUPP). 7.0 reads a
        ``struct iommu_hwpt_selftest`` from it (:func:`.mock_pt.check_user_data_type`)
        and makes the AMDv1 table of its ``pagetable_type``."""
        new = self.kernel >= LINUX_7_0
        valid = HWPT_ALLOC_NEST_PARENT | HWPT_ALLOC_DIRTY_TRACKING
        if new:
            valid |= HWPT_ALLOC_PASID
        if flags & ~valid:
            raise NotSupported(f"mock: HWPT flags {flags:#x} (valid: {valid:#x})")
        dirty = bool(flags & HWPT_ALLOC_DIRTY_TRACKING)
        if user_data is not None and not new:
            raise NotSupported("mock: driver data for a paging domain")
        if dirty and dev is not None and dev.flags & MOCK_FLAGS_DEVICE_NO_DIRTY:
            raise NotSupported("mock: dirty tracking on a NO_DIRTY device")
        if new:
            cfg = check_user_data_type(user_data)
            return mock_domain_alloc_pgtable(self.mem, cfg, dirty, self.kernel)
        domain = self.domain_alloc_paging(dev)
        if dirty:
            domain.dirty_ops = MockDirtyOps()
        return domain

    def domain_alloc_nested(self, dev: _MockDev | None, flags: int, parent: IommuDomain,
                            user_data: IommuUserData) -> MockNestedDomain:
        """6.12 ``mock_domain_alloc_user`` given a parent: EOPNOTSUPP for data that is not
        IOMMU_HWPT_DATA_SELFTEST or any flag; EINVAL for a parent that is not a mock
        paging domain; the ``struct iommu_hwpt_selftest`` copied (EINVAL for a length
        other than 4, EFAULT); ``__mock_domain_alloc_nested`` (``kzalloc``) with every
        IOTLB entry set to its ``iotlb``.

        7.0 ``mock_domain_alloc_nested``: EOPNOTSUPP for a flag beyond PASID first, then
        EINVAL for a parent that is not a mock paging domain, then
        ``__mock_domain_alloc_nested`` (the data type's EOPNOTSUPP, the copy, the
        ``kzalloc``)."""
        if self.kernel >= LINUX_7_0:
            if flags & ~HWPT_ALLOC_PASID:
                raise NotSupported(f"mock: nested flags {flags:#x}")
            if parent.type != DomainType.UNMANAGED or not self._is_mock_paging(parent):
                raise InvalidArgument(f"mock: {parent!r} cannot be a nested domain's parent")
            return self.mock_domain_alloc_nested(parent, user_data)
        if user_data.type != IOMMU_HWPT_DATA_SELFTEST or flags:
            raise NotSupported(f"mock: nested data type {user_data.type:#x} with flags "
                               f"{flags:#x}")
        if not isinstance(parent.ops, MockDomainOps) or parent.type != DomainType.UNMANAGED:
            raise InvalidArgument(f"mock: {parent!r} cannot be a nested domain's parent")
        raw = iommu_copy_struct_from_user(user_data, IOMMU_HWPT_DATA_SELFTEST, 4, 4)
        self.hw.fail_nth.check("kzalloc(mock_iommu_domain_nested)")
        return MockNestedDomain(parent, int.from_bytes(raw, "little"), self.kernel)

    @staticmethod
    def _is_mock_paging(domain: IommuDomain) -> bool:
        """7.0's ``to_mock_domain``: a paging domain the mock made."""
        return bool(domain.type & DomainType.UNMANAGED) and \
            not isinstance(domain, MockNestedDomain)

    def mock_domain_alloc_nested(self, parent: IommuDomain, user_data: IommuUserData
                                 ) -> MockNestedDomain:
        """7.0 ``__mock_domain_alloc_nested``: EOPNOTSUPP for data that is not
        IOMMU_HWPT_DATA_SELFTEST, the ``struct iommu_hwpt_selftest`` (EINVAL, EFAULT),
        the domain (``kzalloc``)."""
        if user_data.type != IOMMU_HWPT_DATA_SELFTEST:
            raise NotSupported(f"mock: nested data type {user_data.type:#x}")
        raw = iommu_copy_struct_from_user(user_data, IOMMU_HWPT_DATA_SELFTEST, 4, 4)
        self.hw.fail_nth.check("kzalloc(mock_iommu_domain_nested)")
        return MockNestedDomain(parent, int.from_bytes(raw, "little"), self.kernel)

    # -- Linux 7.0's vIOMMU (mock_get_viommu_size, mock_viommu_init) ----------------------
    def get_viommu_size(self, dev: _MockDev, viommu_type: int) -> int:
        """``mock_get_viommu_size``: only IOMMU_VIOMMU_TYPE_SELFTEST (0: unsupported)."""
        return 1 if viommu_type == IOMMU_VIOMMU_TYPE_SELFTEST else 0

    def viommu_init(self, viommu: Any, parent: IommuDomain,
                    user_data: IommuUserData | None) -> MockViommu:
        """``mock_viommu_init`` without driver data. With a ``struct
        iommu_viommu_selftest`` the kernel's mock also makes an mmap-able page (its
        loopback test); the model does not have that page: EOPNOTSUPP (model-only)."""
        if user_data is not None:
            raise NotSupported("mock vIOMMU: driver data (the mmap loopback page) is not "
                               "modelled")
        return MockViommu(self, viommu, parent)

    def attach_dev(self, domain: IommuDomain, dev: _MockDev) -> None:
        """``mock_domain_nop_attach``: EINVAL for a NO_DIRTY device on a dirty-tracking
        domain; the model routes the device's DMA to ``domain``."""
        if domain.dirty_ops is not None and dev.flags & MOCK_FLAGS_DEVICE_NO_DIRTY:
            raise InvalidArgument("mock: a NO_DIRTY device cannot join a dirty-tracking domain")
        new_viommu, vdev_id = None, 0
        if isinstance(domain, MockNestedDomain) and domain.mock_viommu is not None:
            new_viommu = domain.mock_viommu.viommu
            vdev_id = new_viommu.get_vdev_id(dev)
        if new_viommu is not dev.viommu:
            dev.viommu, dev.vdev_id = new_viommu, vdev_id
        if isinstance(domain, MockNestedDomain):  # no stage 1: DMA through the parent
            self.hw.domains[dev.sid] = domain.parent
        elif domain.type & DomainType.UNMANAGED:  # any paging domain
            self.hw.domains[dev.sid] = domain
        else:
            self.hw.domains.pop(dev.sid, None)

    def dev_enable_feat(self, dev: Any, feat: int = IOMMU_DEV_FEAT_IOPF) -> None:
        """``mock_dev_enable_feat``: ENODEV for a feature other than IOPF; the device
        joins the mock's IOPF queue (``iopf_queue_add_device``)."""
        if feat != IOMMU_DEV_FEAT_IOPF:
            raise NoDevice(f"mock: device feature {feat}")
        iopf_queue_add_device(dev.dev_iommu, dev, self, self.hw.fail_nth)

    def dev_disable_feat(self, dev: Any, feat: int = IOMMU_DEV_FEAT_IOPF) -> None:
        """``mock_dev_disable_feat``: the device leaves the queue
        (``iopf_queue_remove_device``)."""
        if feat != IOMMU_DEV_FEAT_IOPF:
            raise NoDevice(f"mock: device feature {feat}")
        iopf_queue_remove_device(dev.dev_iommu)

    def page_response(self, dev: _MockDev, fault: IopfFault, resp: IommuPageResponse) -> None:
        """``mock_domain_page_response``: nothing (lab: recorded)."""
        self.page_responses.append((dev.sid, resp))

    def capable(self, dev: _MockDev, cap: IommuCap) -> bool:
        """``mock_domain_capable``: coherent, and dirty tracking unless NO_DIRTY."""
        if cap == IommuCap.CACHE_COHERENCY:
            return True
        if cap == IommuCap.DIRTY_TRACKING:
            return not dev.flags & MOCK_FLAGS_DEVICE_NO_DIRTY
        return False
