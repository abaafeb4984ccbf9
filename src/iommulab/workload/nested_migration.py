"""Live migration of a guest that has its own vIOMMU: dirty tracking on the nest parent.

The VMM maps the guest's RAM into an IOAS (THP-backed: 2M second-stage blocks) under
a nest-parent HWPT allocated with IOMMU_HWPT_ALLOC_NEST_PARENT | DIRTY_TRACKING. The
guest's driver keeps a first-stage table in its own RAM (the first 2M of guest RAM is
its table pool), maps a ring of receive buffers (guest IOVA -> a guest page), and the
device is attached to the nested HWPT (``IOMMU_HWPT_DATA_VTD_S1``) that names that
table. Each round the guest recycles part of the ring (unmap, HWPT_INVALIDATE of the
pages, map a fresh page at a fresh IOVA, as a NIC driver refills its ring), the device
writes packets through the guest IOVAs, and the VMM reads and clears the parent's dirty
bitmap (IOMMU_HWPT_GET_DIRTY_BITMAP over guest RAM) and would resend what it reports.

Ground truth, per round, in guest-physical 4K pages: the pages the device wrote (the
guest driver's own IOVA -> GPA map of each packet), and the guest's table pages the
unit wrote an A/D update into (a first-stage leaf the device used for the first time
since it was mapped, when the guest leaves A and D clear: ``guest_ad="hw"``; Linux's
first-stage code presets them, ``"preset"``, so the unit writes nothing). Both are
dirty in the parent and must be resent. Modes: ``upstream`` (2M blocks reported whole)
and ``split`` (the lab's 4K split of the parent when tracking starts, merge when it
stops: :attr:`Machine.dirty_granule`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..api import Iommufd, VfioDevice
from ..iommufd import uapi as u
from ..machine import Machine
from ..pgtable.vtd_fs import FL_A, FL_D, FirstStageBuilder
from ..sizes import SZ_2M, SZ_4K

__all__ = ["GUEST_AD", "MODES", "NestedMigrationResult", "NestedRound", "run_nested_migration"]

MODES = ("upstream", "split")
GUEST_AD = ("hw", "preset")
GPA_BASE = 0  # q35: guest RAM from guest-physical 0
_TABLE_POOL = SZ_2M  # the guest's first-stage tables: the first 2M block of its RAM
_IOVA_TOP = 0x1_0000_0000  # the guest's IOVAs are handed out top-down below 4G
_DATA_VTD_S1, _INV_VTD_S1 = 1, 0
_INV_DESCS = ("IotlbInv", "PiotlbInv", "PasidCacheInv", "ContextCacheInv", "DevTlbInv")
#: a hook around each round's DMA: ``(phase, read_guest)``, phase "before" / "after",
#: ``read_guest(gpa, n)`` the guest's RAM as the VMM's mapping reads it
DmaHook = Callable[[str, Callable[[int, int], bytes]], None]


@dataclass(frozen=True)
class NestedRound:
    """One round: guest-physical page numbers (``gpa >> 12``) and counts."""

    written: frozenset[int]  # ground truth: pages the device wrote
    tables: frozenset[int]  # ground truth: guest table pages the unit's A/D updates wrote
    reported: frozenset[int]  # pages the parent's dirty bitmap reported
    written_bytes: int
    guest_maps: int  # first-stage leaves the guest mapped before the DMA
    guest_unmaps: int
    guest_inv_entries: int  # struct iommu_hwpt_vtd_s1_invalidate entries it sent
    guest_invalidations: int  # invalidation descriptors they became on the unit
    read_invalidations: int  # descriptors GET_DIRTY_BITMAP's IOTLB sync queued

    @property
    def missed(self) -> frozenset[int]:
        """Dirty in truth, not reported: pages a migration would lose."""
        return (self.written | self.tables) - self.reported


@dataclass
class NestedMigrationResult:
    mode: str
    guest_ad: str
    platform: str
    kernel: str
    guest_ram: int
    seed: int
    rounds: list[NestedRound] = field(default_factory=list)
    blocks_split: int = 0  # 2M stage-2 blocks the tracking start turned into 4K pages
    blocks_merged: int = 0  # and back when it stopped
    start_invalidations: int = 0  # descriptors SET_DIRTY_TRACKING (enable) queued
    stop_invalidations: int = 0  # and disable
    pins_left: int = -1  # pinned pages after the VMM exited (0: nothing leaked)
    iommu_pages_left: int = -1  # IOMMU table pages it left (0: nothing leaked)

    @property
    def reported_pages(self) -> int:
        return sum(len(r.reported) for r in self.rounds)

    @property
    def written_pages(self) -> int:
        return sum(len(r.written) for r in self.rounds)

    @property
    def table_pages(self) -> int:
        return sum(len(r.tables) for r in self.rounds)

    @property
    def missed_pages(self) -> int:
        return sum(len(r.missed) for r in self.rounds)


class _Guest:
    """The guest's vIOMMU driver: a first-stage table in guest RAM and a ring of 4K
    receive buffers, each a guest IOVA mapped to a guest page."""

    def __init__(self, vmm: _VtdHost, ring: int, preset_ad: bool,
                 rng: np.random.Generator) -> None:
        self.vmm = vmm
        self.preset_ad = preset_ad
        self.rng = rng
        pool = iter(range(GPA_BASE, GPA_BASE + _TABLE_POOL, SZ_4K))
        self.fs = FirstStageBuilder(lambda: next(pool), vmm.write_guest_u64)
        npages = vmm.guest_ram // SZ_4K
        first = _TABLE_POOL // SZ_4K
        order = rng.permutation(np.arange(first, npages, dtype=np.int64))
        self.free_gpas: list[int] = [int(x) for x in order]  # guest pages, popped at the end
        self.free_iovas: list[int] = []  # freed IOVAs, reused last-in first-out (rcache)
        self.next_iova = _IOVA_TOP
        self.slots: list[tuple[int, int]] = []  # (iova, guest page)
        self.fresh: set[int] = set()  # IOVAs whose leaf has A/D clear and is unused
        for _ in range(ring):
            self.slots.append(self._map_one())

    def _map_one(self) -> tuple[int, int]:
        if self.free_iovas:
            iova = self.free_iovas.pop()
        else:
            self.next_iova -= SZ_4K
            iova = self.next_iova
        gpage = self.free_gpas.pop()
        self.fs.map(iova, GPA_BASE + gpage * SZ_4K,
                    extra=FL_A | FL_D if self.preset_ad else 0)
        if not self.preset_ad:
            self.fresh.add(iova)
        return iova, gpage

    def recycle(self, used: list[int], share: int) -> tuple[int, int, int]:
        """Unmap ``share`` percent of the ``used`` slots, invalidate them in one
        HWPT_INVALIDATE (one entry a page), map fresh buffers there: (maps, unmaps,
        entries)."""
        k = len(used) * share // 100
        if not k:
            return 0, 0, 0
        chosen = sorted(int(i) for i in self.rng.choice(used, size=k, replace=False))
        entries = []
        for i in chosen:
            iova, gpage = self.slots[i]
            self.fs.unmap(iova)
            self.fresh.discard(iova)
            entries.append((iova, 1))
            self.free_iovas.append(iova)
            self.free_gpas.insert(0, gpage)  # back at the far end of the free list
        self.vmm.invalidate(entries)
        for i in chosen:
            self.slots[i] = self._map_one()
        return k, k, len(entries)

    def leaf_table(self, iova: int) -> int:
        """The guest page of the leaf table holding ``iova``'s entry, walked in guest
        memory as the guest's own code would find it."""
        table = self.fs.root
        for level in range(self.fs.levels, 1, -1):
            pte = self.vmm.read_guest_u64(table + ((iova >> (12 + 9 * (level - 1))) & 511) * 8)
            table = pte & 0x000F_FFFF_FFFF_F000
        return (table - GPA_BASE) // SZ_4K


class _VtdHost:
    """The VMM on an x86-vtd host with a scalable-mode unit, through iommufd."""

    def __init__(self, guest_ram: int, kernel: str, mode: str, seed: int) -> None:
        self.guest_ram = guest_ram
        m = self.m = Machine("x86-vtd", ram=2 * guest_ram + (256 << 20), seed=seed,
                             kernel=kernel, vtd_scalable=True)
        m.dirty_granule = SZ_4K if mode == "split" else None
        self.dev = m.add_pci_device("0000:00:04.0")
        self.baseline = m.mem.iommu_pages  # the unit's root/context/PASID tables
        p = self.p = m.spawn_process(cap_ipc_lock=True)
        self.fd = Iommufd.open(p)
        self.vdev = VfioDevice.open_cdev("/dev/vfio/devices/vfio0", p)
        self.dev_id = self.vdev.bind_iommufd(self.fd)
        self.ioas = self.fd.ioas_alloc()
        self.parent = self.fd.hwpt_alloc(self.dev_id, self.ioas,
                                         u.IOMMU_HWPT_ALLOC_NEST_PARENT |
                                         u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
        self.ram = p.mmap(guest_ram, "thp")
        self.fd.ioas_map(self.ioas, self.ram, guest_ram, GPA_BASE)
        self.scratch = p.mmap(max(SZ_4K, -(-guest_ram // SZ_4K // 8) + SZ_4K))
        self.nested = 0

    # -- the guest's memory, as the VMM maps it --------------------------------------------
    def read_guest(self, gpa: int, n: int) -> bytes:
        return self.p.read(self.ram + gpa - GPA_BASE, n)

    def read_guest_u64(self, gpa: int) -> int:
        return int(struct.unpack("<Q", self.read_guest(gpa, 8))[0])

    def write_guest_u64(self, gpa: int, value: int) -> None:
        self.p.write(self.ram + gpa - GPA_BASE, struct.pack("<Q", value))

    # -- iommufd -----------------------------------------------------------------------------
    def attach_nested(self, root: int) -> None:
        """HWPT_ALLOC of a nested HWPT (``struct iommu_hwpt_vtd_s1``: the guest's table at
        ``root``, 4 levels) on the parent, and the device attached to it."""
        p = self.p
        p.write(self.scratch, struct.pack("<QQII", 0, root, 48, 0))
        cmd = bytearray(u.HWPT_ALLOC.pack(u.HWPT_ALLOC.size, 0, self.dev_id, self.parent, 0,
                                          0, _DATA_VTD_S1, 24, self.scratch, 0, 0))
        p.ioctl(self.fd.fd, u.IOMMU_HWPT_ALLOC, cmd)
        self.nested = int(u.HWPT_ALLOC.unpack(cmd)[4])
        self.vdev.attach_pt(self.nested)

    def invalidate(self, entries: list[tuple[int, int]]) -> None:
        """HWPT_INVALIDATE of the nested HWPT: ``(addr, npages)`` entries, no flags."""
        p = self.p
        raw = b"".join(struct.pack("<QQII", addr, n, 0, 0) for addr, n in entries)
        at = self.scratch
        p.write(at, raw)
        cmd = bytearray(u.HWPT_INVALIDATE.pack(u.HWPT_INVALIDATE.size, self.nested, at,
                                               _INV_VTD_S1, 24, len(entries), 0))
        p.ioctl(self.fd.fd, u.IOMMU_HWPT_INVALIDATE, cmd)

    def set_tracking(self, enable: bool) -> None:
        self.fd.hwpt_set_dirty_tracking(self.parent, enable)

    def dirty_pages(self) -> frozenset[int]:
        """IOMMU_HWPT_GET_DIRTY_BITMAP of the parent over guest RAM (4K bits, cleared):
        the guest pages it reports."""
        nbytes = -(-self.guest_ram // SZ_4K // 64) * 8
        buf = bytearray(u.HWPT_GET_DIRTY_BITMAP.pack(
            u.HWPT_GET_DIRTY_BITMAP.size, self.parent, 0, 0, GPA_BASE, self.guest_ram, SZ_4K,
            self.scratch))
        self.p.write(self.scratch, bytes(nbytes))
        self.p.ioctl(self.fd.fd, u.IOMMU_HWPT_GET_DIRTY_BITMAP, buf)
        bits = np.unpackbits(np.frombuffer(self.p.read(self.scratch, nbytes), np.uint8),
                             bitorder="little")
        return frozenset(np.flatnonzero(bits).tolist())

    # -- counters ----------------------------------------------------------------------------
    def invalidations(self) -> int:
        """Invalidation descriptors the unit has carried out so far."""
        counts = self.m.translator.sm.counts
        return sum(counts[k] for k in _INV_DESCS)

    def guest_invalidations(self) -> int:
        return int(self.m.translator.sm.counts["PiotlbInv"])

    def blocks(self) -> int:
        """2M leaves of the parent's second stage (lab view of the table)."""
        file: Any = self.p.fget(self.fd.fd)
        return int(file.ctx.objects[self.parent].domain.leaf_histogram().get(SZ_2M, 0))

    def dma_write(self, iova: int, data: bytes) -> None:
        self.dev.dma_write(iova, data)

    def close(self) -> tuple[int, int]:
        """The VMM exits: (pins, IOMMU table pages) left."""
        self.p.exit()
        return self.m.mem.pins.pins, self.m.mem.iommu_pages - self.baseline


def run_nested_migration(mode: str = "split", *, guest_ad: str = "hw", kernel: str = "6.12",
                         platform: str = "x86-vtd", guest_ram: int = 256 << 20,
                         rounds: int = 4, writes_per_round: int = 300, ring: int = 256,
                         churn: int = 50, seed: int = 0, on_dma: DmaHook | None = None
                         ) -> NestedMigrationResult:
    """Run ``rounds`` rounds of a nested guest's device DMA under dirty tracking of the
    nest parent (see the module docstring); ``churn`` is the percentage of the ring
    slots the device used that the guest remaps before the next round."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if guest_ad not in GUEST_AD:
        raise ValueError(f"guest_ad must be one of {', '.join(GUEST_AD)}, not {guest_ad!r}")
    if platform != "x86-vtd":
        raise ValueError(f"platform {platform!r}: nested migration runs on x86-vtd")
    if guest_ram % SZ_2M or guest_ram < 2 * SZ_2M:
        raise ValueError(f"guest RAM must be a multiple of 2M of at least 4M, not "
                         f"{guest_ram:#x}")
    if not 0 < ring <= (guest_ram - _TABLE_POOL) // SZ_4K // 2:
        raise ValueError(f"ring of {ring} buffers: 1 to half the guest's data pages")
    rng = np.random.default_rng(seed)
    host = _VtdHost(guest_ram, kernel, mode, seed)
    guest = _Guest(host, ring, guest_ad == "preset", rng)
    host.attach_nested(guest.fs.root)
    res = NestedMigrationResult(mode, guest_ad, platform, str(host.m.kernel), guest_ram, seed)

    before = host.invalidations()
    blocks = host.blocks()
    host.set_tracking(True)  # iommufd clears the dirty bits first: a clean snapshot
    res.blocks_split = blocks - host.blocks()
    res.start_invalidations = host.invalidations() - before
    head = 0
    used: list[int] = []
    for n in range(rounds):
        inv0 = host.guest_invalidations()
        maps, unmaps, entries = guest.recycle(used, churn) if n else (0, 0, 0)
        guest_invs = host.guest_invalidations() - inv0
        if on_dma is not None:
            on_dma("before", host.read_guest)
        written: set[int] = set()
        tables: set[int] = set()
        nbytes = 0
        slots_used: set[int] = set()
        for _ in range(writes_per_round):
            slot = head % ring
            head += 1
            slots_used.add(slot)
            iova, gpage = guest.slots[slot]
            length = int(rng.integers(64, 1519))
            offset = int(rng.integers(0, SZ_4K - length + 1))
            host.dma_write(iova + offset, rng.bytes(length))
            written.add(gpage)
            nbytes += length
            if iova in guest.fresh:  # the unit set A and D in the leaf: a table write
                guest.fresh.discard(iova)
                tables.add(guest.leaf_table(iova))
        if on_dma is not None:
            on_dma("after", host.read_guest)
        inv0 = host.invalidations()
        reported = host.dirty_pages()
        res.rounds.append(NestedRound(frozenset(written), frozenset(tables), reported, nbytes,
                                      maps, unmaps, entries, guest_invs,
                                      host.invalidations() - inv0))
        used = sorted(slots_used)

    before = host.invalidations()
    blocks = host.blocks()
    host.set_tracking(False)
    res.blocks_merged = host.blocks() - blocks
    res.stop_invalidations = host.invalidations() - before
    res.pins_left, res.iommu_pages_left = host.close()
    return res
