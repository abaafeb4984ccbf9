"""Physical memory: RAM and MMIO regions, frames, contents and pin counts.

Page tables, user memory and DMA all live here: a page-table page is a block
of frames whose bytes are the table, so a hardware model can walk it by
physical address.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from ..errors import BadAddress, OutOfMemory
from ..sizes import parse_size
from .anon import AnonPages
from .contents import PAGE_BYTES, SparseContents
from .cpu_cache import CpuCache
from .external import ExternalFrames
from .fault import FailNth
from .frames import MAX_ORDER, FrameAllocator
from .pins import FrameCounts, PinCounts, pfn_runs

__all__ = ["MemRegion", "PhysMem", "get_order", "pfn_runs"]

PAGE_SHIFT = 12


def get_order(size: int) -> int:
    """Smallest order whose block holds ``size`` bytes (include/asm-generic/getorder.h)."""
    if size <= PAGE_BYTES:
        return 0
    return ((size - 1) >> PAGE_SHIFT).bit_length()


@dataclass(frozen=True)
class MemRegion:
    """A range of physical address space: RAM or a device's MMIO."""

    start: int
    size: int
    kind: Literal["ram", "mmio"]
    name: str

    @property
    def end(self) -> int:
        return self.start + self.size

    def __repr__(self) -> str:
        return f"MemRegion({self.kind} {self.name!r} [{self.start:#x}, {self.end:#x}))"


MmioWrite = Callable[[int, bytes, int | None], None]
MmioRead = Callable[[int, int], bytes]


class PhysMem:
    """The machine's physical address space.

    ``ram`` bytes of RAM start at ``ram_base`` (QEMU's arm ``virt`` puts RAM at
    1 GiB; the platform presets choose their own layout with :meth:`add_ram`).
    """

    def __init__(self, ram: int | str = "4G", *, ram_base: int = 0x4000_0000) -> None:
        self._regions: list[MemRegion] = []
        self._starts: list[int] = []
        self._last_region: MemRegion | None = None  # cache for _check_range
        self.frames = FrameAllocator()
        self.contents = SparseContents()
        self.pins = PinCounts()
        #: frames of pages (and large folios) their owner let go while pinned: freed with
        #: their last unpin, whichever pin that is (lab: the last ``put_page``)
        self.orphans = FrameCounts()
        self.orphan_folios: dict[int, int] = {}  # first pfn -> order of each such folio
        self._orphan_heads: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None = None
        self.anon = AnonPages(self)  # the anonymous pages processes map
        self.fail_nth = FailNth()
        self.iommu_pages = 0  # NR_IOMMU_PAGES: frames holding IOMMU page tables
        self.cpu_cache: CpuCache | None = None  # lab: set when a device does not snoop
        #: lab: frames whose bytes are a real program's (``iommulab exec``), None if none
        self.external: ExternalFrames | None = None
        self._fragment_frames: list[int] = []
        self._mmio_writes: dict[int, MmioWrite] = {}
        self._mmio_reads: dict[int, MmioRead] = {}
        size = parse_size(ram)
        if size:
            self.add_ram(ram_base, size)

    # -- layout -----------------------------------------------------------------
    @property
    def regions(self) -> tuple[MemRegion, ...]:
        return tuple(self._regions)

    def add_ram(self, start: int, size: int | str, name: str = "System RAM") -> MemRegion:
        nbytes = parse_size(size)
        if start % PAGE_BYTES or nbytes % PAGE_BYTES or not nbytes:
            raise ValueError(f"RAM must be whole 4K pages: start {start:#x} size {nbytes:#x}")
        region = self._add(MemRegion(start, nbytes, "ram", name))
        self.frames.add_range(start >> PAGE_SHIFT, nbytes >> PAGE_SHIFT)
        return region

    def add_mmio(self, start: int, size: int | str, name: str,
                 on_write: MmioWrite | None = None) -> MemRegion:
        """A device's registers; writes go to ``on_write(pa, data, source)`` if given
        (``source`` is the writing device's requester ID, None for the CPU)."""
        region = self._add(MemRegion(start, parse_size(size), "mmio", name))
        if on_write is not None:
            self._mmio_writes[region.start] = on_write
        return region

    def set_mmio_ops(self, start: int, on_read: MmioRead, on_write: MmioWrite) -> None:
        """Registers behind the MMIO region at ``start``: each read of ``n`` bytes at
        ``pa`` is one access ``on_read(pa, n)``, each write one ``on_write``."""
        region = self.region_at(start)
        if region is None or region.kind != "mmio" or region.start != start:
            raise ValueError(f"no MMIO region starts at {start:#x}")
        self._mmio_reads[start] = on_read
        self._mmio_writes[start] = on_write

    def has_mmio_ops(self, pa: int) -> bool:
        """Whether reads at ``pa`` reach a device's registers rather than plain bytes."""
        region = self.region_at(pa)
        return region is not None and region.start in self._mmio_reads

    def _add(self, region: MemRegion) -> MemRegion:
        i = bisect.bisect(self._starts, region.start)
        if (i and self._regions[i - 1].end > region.start) or (
                i < len(self._regions) and region.end > self._regions[i].start):
            raise ValueError(f"{region!r} overlaps an existing region")
        self._regions.insert(i, region)
        self._starts.insert(i, region.start)
        return region

    def region_at(self, pa: int) -> MemRegion | None:
        i = bisect.bisect(self._starts, pa) - 1
        if i >= 0 and pa < self._regions[i].end:
            return self._regions[i]
        return None

    def is_ram(self, pa: int) -> bool:
        region = self.region_at(pa)
        return region is not None and region.kind == "ram"

    @property
    def ram_bytes(self) -> int:
        return sum(r.size for r in self._regions if r.kind == "ram")

    # -- frames -------------------------------------------------------------------
    def alloc_pages(self, order: int, *, site: str = "alloc_pages") -> int:
        """Allocate ``1 << order`` contiguous frames; returns the first pfn (ENOMEM if none)."""
        self.fail_nth.check(site)
        pfn = self.frames.alloc(order)
        if pfn is None:
            raise OutOfMemory(f"{site}: no free block of order {order} "
                              f"({self.frames.free_frames} frames free)")
        return pfn

    def free_pages(self, pfn: int, order: int) -> None:
        """Free a block; its contents are forgotten (freed memory reads as zeros)."""
        self.frames.free(pfn, order)
        self.contents.drop(pfn, 1 << order)

    def alloc_page_runs(self, n: int, *, site: str = "alloc_pages") -> list[tuple[int, int]]:
        """``n`` single-page allocations at once, as ``(first pfn, count)`` runs (ENOMEM,
        nothing taken, if fewer are free). One fault-injection point for the lot."""
        self.fail_nth.check(site)
        runs = self.frames.alloc_bulk(n)
        if runs is None:
            raise OutOfMemory(f"{site}: {n} pages wanted, {self.frames.free_frames} free")
        return runs

    def free_page_runs(self, runs: list[tuple[int, int]]) -> None:
        """Free single-page allocations given as runs; their contents are forgotten."""
        self.frames.free_bulk(runs)
        for pfn, count in runs:
            self.contents.drop(pfn, count)

    def free_unpinned_folios(self, folios: list[tuple[int, int]]) -> None:
        """The ``(pfn, order)`` folios their owner (the page cache, the last mapping) lets
        go: freed now, or kept for their last unpin when a page of one is pinned."""
        for pfn, order in folios:
            if self.pins.counts(pfn, 1 << order).any():
                self.orphan_folios[pfn] = order
                self._orphan_heads = None
                self.orphans.add_range(pfn, 1 << order, 1)
            else:
                self.free_pages(pfn, order)

    def pin_pages(self, pfns: npt.NDArray[np.int64]) -> None:
        """Take a pin on each page (GUP and memfd_pin_folios), a run at a time."""
        self.pin_runs(pfn_runs(pfns))

    def pin_runs(self, runs: list[tuple[int, int]]) -> None:
        """:meth:`pin_pages` of the ``(first pfn, pages)`` runs."""
        self.pins.add_runs(runs, 1, zeros=False)

    def unpin_pages(self, pfns: npt.NDArray[np.int64]) -> None:
        """Drop a pin on each page; the CPU cache model counts unpins of pages a
        non-snooping device wrote and nobody flushed."""
        self._unpin(pfn_runs(pfns), pfns)

    def unpin_runs(self, runs: list[tuple[int, int]]) -> None:
        """:meth:`unpin_pages` of the ``(first pfn, pages)`` runs (no array per page
        unless the CPU cache model needs one)."""
        self._unpin(runs, None)

    def _unpin(self, runs: list[tuple[int, int]],
               pfns: npt.NDArray[np.int64] | None) -> None:
        """Every count is checked before any changes (ValueError naming the runs); the
        pages their owners let go that this leaves without a pin are freed."""
        try:
            self.pins.add_runs(runs, -1, zeros=False)
        except ValueError as err:
            raise ValueError(f"unpin of {sum(n for _, n in runs)} frames: some frame is not "
                             f"pinned ({err})") from None
        if self.cpu_cache is not None:
            if pfns is None:
                pfns = np.concatenate([np.arange(pfn, pfn + n, dtype=np.int64)
                                       for pfn, n in runs] or [np.zeros(0, np.int64)])
            self.cpu_cache.unpinned(pfns)
        if self.orphans.total:
            self._free_orphans(runs)

    def free_unpinned(self, runs: list[tuple[int, int]]) -> None:
        """The 4K pages of ``runs`` their owner lets go (the last mapping, the page
        cache): freed now, or kept for their last unpin when pinned, whoever pinned
        them (``unpin_user_page`` puts the last reference)."""
        free: list[tuple[int, int]] = []
        kept: list[tuple[int, int]] = []
        for pfn, count in runs:
            pinned = self.pins.counts(pfn, count) > 0
            if not pinned.any():
                free.append((pfn, count))
                continue
            pfns = np.arange(pfn, pfn + count, dtype=np.int64)
            free += pfn_runs(pfns[~pinned])
            kept += pfn_runs(pfns[pinned])
        if free:
            self.free_page_runs(free)
        if kept:
            self.orphans.add_runs(kept, 1, zeros=False)

    def free_unpinned_pages(self, pfns: npt.NDArray[np.int64]) -> None:
        """:meth:`free_unpinned` of a set of 4K pages in any order."""
        self.free_unpinned(pfn_runs(np.sort(pfns)))

    def _free_orphans(self, runs: list[tuple[int, int]]) -> None:
        """Free the kept pages of ``runs`` that no pin holds any more: a 4K page at once,
        a large folio when none of its pages is pinned. O(kept pages there) numpy work,
        a Python step per folio freed."""
        found = [self.orphans.nonzero_in(pfn, count) for pfn, count in runs]
        kept = np.concatenate(found) if len(found) > 1 else found[0]
        gone = np.unique(kept[self.pins.get(kept) == 0])  # runs may name a page twice
        if not len(gone):
            return
        heads = self._orphan_folio_of(gone)
        small = gone[heads < 0]
        if len(small):
            self.orphans.add(small, -1)
            self.free_page_runs(pfn_runs(small))
        for head in np.unique(heads[heads >= 0]).tolist():
            order = self.orphan_folios[head]
            if not self.pins.counts(head, 1 << order).any():
                del self.orphan_folios[head]
                self._orphan_heads = None
                self.orphans.add_range(head, 1 << order, -1)
                self.free_pages(head, order)

    def _orphan_folio_of(self, pfns: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """The first pfn of the kept large folio each of ``pfns`` is in, -1 for none."""
        if not self.orphan_folios:
            return np.full(len(pfns), -1, dtype=np.int64)
        if self._orphan_heads is None:
            heads = np.array(sorted(self.orphan_folios), dtype=np.int64)
            ends = heads + np.array([1 << self.orphan_folios[h] for h in heads.tolist()],
                                    dtype=np.int64)
            self._orphan_heads = heads, ends
        heads, ends = self._orphan_heads
        i = np.maximum(np.searchsorted(heads, pfns, side="right") - 1, 0)
        return np.where((pfns >= heads[i]) & (pfns < ends[i]), heads[i], -1)

    def in_orphan_folio(self, pfns: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """Whether each of ``pfns`` is a page of a large folio kept only for its pins
        (``PageCompound`` of a page nobody maps any more)."""
        out: npt.NDArray[np.bool_] = self._orphan_folio_of(pfns) >= 0
        return out

    def alloc_zeroed(self, size: int, site: str = "alloc_pages") -> tuple[
            int, npt.NDArray[np.uint64]]:
        """Zeroed, naturally aligned memory as little-endian 64-bit words.

        Rounded up to a power-of-two number of pages; the array shares memory
        with the contents, so what the CPU writes there a device reads.
        """
        order = get_order(size)
        pfn = self.alloc_pages(order, site=site)
        buf = np.zeros(PAGE_BYTES << order, dtype=np.uint8)
        self.contents.attach(pfn, buf)
        return pfn << PAGE_SHIFT, buf.view("<u8")

    def alloc_dma_coherent(self, size: int) -> tuple[int, npt.NDArray[np.uint64]]:
        """``dma_alloc_coherent`` for driver structures (queues, stream tables)."""
        return self.alloc_zeroed(size, site="dma_alloc_coherent")

    def free_zeroed(self, pa: int) -> None:
        pfn = pa >> PAGE_SHIFT
        order = self.frames.order_of(pfn)
        if order is None:
            raise ValueError(f"free of {pa:#x}: not an allocated block")
        self.free_pages(pfn, order)

    def alloc_iommu_pages(self, size: int) -> tuple[int, npt.NDArray[np.uint64]]:
        """``iommu_alloc_pages_node_sz``: zeroed table memory, counted in NR_IOMMU_PAGES.

        Rounded up to a power-of-two number of pages ("sub page allocations
        result in a full page") and naturally aligned.
        """
        pa, table = self.alloc_zeroed(size, site="iommu_alloc_pages")
        self.iommu_pages += table.nbytes >> PAGE_SHIFT
        return pa, table

    def alloc_iommu_pages_bulk(self, size: int, count: int) -> tuple[
            list[int], npt.NDArray[np.uint64]]:
        """``count`` calls of :meth:`alloc_iommu_pages` at once.

        Each block is a separate allocation (and fault-injection point) and
        is freed on its own; their words come back as the rows of one array.
        On ENOMEM the blocks already taken are given back.
        """
        return self.attach_iommu_pages(size, self.alloc_iommu_frames(size, count))

    def alloc_iommu_frames(self, size: int, count: int) -> list[int]:
        """The frames ``count`` calls of :meth:`alloc_iommu_pages` take, in that order,
        with their fault-injection points, before any memory backs them (model-only:
        :meth:`attach_iommu_pages` gives them their words, a part at a time if the
        caller likes). On ENOMEM the frames already taken are given back.

        Single pages while no failure is armed come from
        :meth:`~.frames.FrameAllocator.alloc_bulk` (the same frames as the calls,
        whole free blocks at a time); otherwise one ``alloc_pages`` per block.
        """
        order = get_order(size)
        frames = self.frames
        if order == 0 and 0 < count <= frames.free_frames and not self.fail_nth.armed:
            self.fail_nth.passes("iommu_alloc_pages", count)
            pfns = frames.alloc_bulk_pfns(count)
            assert pfns is not None  # count <= free_frames
            return pfns
        taken: list[int] = []
        try:
            for _ in range(count):
                taken.append(self.alloc_pages(order, site="iommu_alloc_pages"))
        except OutOfMemory:
            for pfn in taken:
                frames.free(pfn, order)
            raise
        return taken

    def attach_iommu_pages(self, size: int, pfns: list[int]) -> tuple[
            list[int], npt.NDArray[np.uint64]]:
        """Zeroed memory for blocks of ``size`` at ``pfns`` (from :meth:`alloc_iommu_frames`),
        counted in NR_IOMMU_PAGES: their addresses, and their words as the rows of one
        array."""
        order = get_order(size)
        buf = np.zeros((len(pfns), PAGE_BYTES << order), dtype=np.uint8)
        attach = self.contents.attach
        for row, pfn in enumerate(pfns):
            attach(pfn, buf[row])
        self.iommu_pages += len(pfns) << order
        return [pfn << PAGE_SHIFT for pfn in pfns], buf.view("<u8")

    def free_iommu_pages(self, pa: int) -> None:
        """``iommu_free_pages``: give a table block back."""
        self.free_iommu_pages_bulk([pa])

    def free_iommu_pages_bulk(self, pas: list[int]) -> None:
        """:meth:`free_iommu_pages` for each of ``pas``.

        Single pages go back as runs through
        :meth:`~.frames.FrameAllocator.free_bulk` (the buddy state the frees one by
        one leave; it refuses, changing nothing, unless each is an allocated single
        page), else one ``free`` per block, raising at the first that is not a block.
        """
        frames, drop = self.frames, self.contents.drop
        if len(pas) > 1:
            pfns = np.sort(np.array(pas, dtype=np.int64) >> PAGE_SHIFT)
            steps = np.diff(pfns)
            brk = np.flatnonzero(steps != 1) + 1
            starts = np.concatenate(([0], brk))
            counts = np.diff(np.concatenate((starts, [len(pfns)])))
            runs = list(zip(pfns[starts].tolist(), counts.tolist(), strict=True))
            try:
                if not steps.all():
                    raise ValueError("a block twice")  # the loop raises at the second
                frames.free_bulk(runs)
            except ValueError:
                pass  # not all single pages: one by one below
            else:
                for pfn, count in runs:
                    drop(pfn, count)
                self.iommu_pages -= len(pas)
                return
        for pa in pas:
            pfn = pa >> PAGE_SHIFT
            order = frames.order_of(pfn)
            if order is None:
                raise ValueError(f"free of {pa:#x}: not an allocated block")
            frames.free(pfn, order)
            drop(pfn, 1 << order)
            self.iommu_pages -= 1 << order

    # -- fragmentation (lab) ------------------------------------------------------
    def fragment(self, order: int = 9, fraction: float = 1.0, seed: int = 0) -> int:
        """Lab: punch a held 4K hole in ``fraction`` of the free ``order``-sized regions.

        Afterwards no free block of ``order`` or more remains in the chosen
        regions, so huge-page allocations fall back to smaller frames. Returns
        the number of frames now held; :meth:`release_fragmentation` frees them.
        """
        if not 1 <= order <= MAX_ORDER or not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fragment(order={order}, fraction={fraction}): "
                             f"need 1 <= order <= {MAX_ORDER} and 0 <= fraction <= 1")
        rng = random.Random(seed)
        regions = sorted(
            base + (i << order)
            for cur in range(order, MAX_ORDER + 1)
            for base in self.frames.free_blocks(cur)
            for i in range(1 << (cur - order)))
        chosen = rng.sample(regions, round(len(regions) * fraction))
        for base in sorted(chosen):
            pfn = base + rng.randrange(1 << order)
            taken = self.frames.alloc_at(pfn)
            assert taken, f"frame {pfn:#x} of a free region was not free"
            self._fragment_frames.append(pfn)
        return len(self._fragment_frames)

    def release_fragmentation(self) -> None:
        for pfn in self._fragment_frames:
            self.frames.free(pfn, 0)
        self._fragment_frames.clear()

    # -- contents -------------------------------------------------------------------
    def _check_range(self, pa: int, n: int) -> MemRegion:
        region = self._last_region  # accesses cluster: try the region of the last one
        if region is not None and region.start <= pa and pa + n <= region.end:
            return region
        region = self.region_at(pa)
        if region is None or pa + n > region.end:
            raise BadAddress(f"physical range [{pa:#x}, {pa + n:#x}) is not backed by one region")
        self._last_region = region
        return region

    def read(self, pa: int, n: int) -> bytes:
        region = self._check_range(pa, n)
        if region.kind == "mmio" and region.start in self._mmio_reads:
            return self._mmio_reads[region.start](pa, n)
        ext = self.external
        if ext is not None and len(ext):
            return ext.read(pa, n, self.contents.read)
        return self.contents.read(pa, n)

    def write(self, pa: int, data: bytes | bytearray | memoryview, *,
              source: int | None = None) -> None:
        region = self._check_range(pa, len(data))
        if region.kind == "mmio" and region.start in self._mmio_writes:
            self._mmio_writes[region.start](pa, bytes(data), source)
            return
        ext = self.external
        if ext is not None and len(ext):
            ext.write(pa, data, self.contents.write)
            return
        self.contents.write(pa, data)

    def read_u64(self, pa: int) -> int:
        """One little-endian 64-bit load (a descriptor fetch by a table walker). A page
        that is a real program's (``external``, under ``iommulab exec``: a guest's CD or
        stage-1 table in its VMM's RAM) is read from the program."""
        ext = self.external
        if ext is not None and len(ext):
            return int.from_bytes(ext.read(pa, 8, self.contents.read), "little")
        page = self.contents.page(pa >> PAGE_SHIFT)
        return int(page.view("<u8")[(pa & (PAGE_BYTES - 1)) >> 3])

    def write_u64(self, pa: int, value: int) -> None:
        """One little-endian 64-bit store (an HTTU descriptor update, a queue entry); to
        the program for an ``external`` page, as ``read_u64``."""
        ext = self.external
        if ext is not None and len(ext):
            ext.write(pa, value.to_bytes(8, "little"), self.contents.write)
            return
        page = self.contents.page_for_write(pa >> PAGE_SHIFT)
        page.view("<u8")[(pa & (PAGE_BYTES - 1)) >> 3] = value

    # -- checks -----------------------------------------------------------------------
    def _check(self) -> None:
        """O(frames counted): the allocator, the counts, the anonymous pages; every page
        kept for its pins is pinned (a kept folio: some page of it)."""
        self.frames._check()
        self.pins._check()
        self.orphans._check()
        self.anon._check()
        kept = self.orphans.nonzero()
        small = kept[self._orphan_folio_of(kept) < 0]
        assert (self.pins.get(small) > 0).all(), "a kept 4K page has no pin"
        for head, order in self.orphan_folios.items():
            assert self.frames.order_of(head) == order, f"kept folio {head:#x} not allocated"
            assert self.pins.counts(head, 1 << order).any(), f"kept folio {head:#x} unpinned"
            assert (self.orphans.range(head, 1 << order) == 1).all()
        assert 0 <= self.iommu_pages <= self.frames.total_frames
