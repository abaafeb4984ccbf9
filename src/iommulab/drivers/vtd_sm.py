"""VT-d scalable mode as the remapping hardware walks it: root, context and PASID
entries in memory, the first-stage / second-stage / nested / pass-through walks,
an IOTLB and PASID cache, and the invalidation descriptors that empty them.

Sources: VT-d spec (rev. 4.1 / 5.0) 9.2 "Scalable-Mode Root Entry", 9.4
"Scalable-Mode Context-Entry", 9.5 "Scalable-Mode PASID Directory Entry", 9.6
"Scalable-Mode PASID Table Entry", 3.6-3.8 (first-stage, second-stage and nested
translation: every first-stage table access and the final output go through the
second stage, A/D flags set as writes through it), 3.9 / 9.8 (second-stage A/D with
SSADE), 6.5.2 (the invalidation descriptors) and Table 25 (what software invalidates
after which change); Linux 6.12 intel/pasid.h (``pasid_set_*``: the bit positions the
driver writes), intel/iommu.h (``QI_*`` descriptor encodings) and dmar.c
(``dma_remap_sm_fault_reasons``, the fault reason strings).

What each invalidation removes (the model keeps no paging-structure caches, so the
invalidation hint IH has no effect):

- IOTLB invalidation (type 2), global: everything; domain-selective: entries of the
  DID; page-selective: second-stage and pass-through entries of the DID in the range,
  and every nested entry of the DID (a change of the second stage can alter any
  nested translation, whatever its input address). First-stage-only entries stay.
- PASID-based IOTLB invalidation (type 6): first-stage, nested and pass-through
  entries of the DID and PASID; page-selective (granularity 3) only those in
  ``addr`` with ``2^am`` pages. Second-stage-only entries stay.
- PASID-cache invalidation (type 7): cached PASID entries of the DID (granularity 0)
  or of the DID and PASID (1).
- Context-cache invalidation (type 1): cached context entries, all or one source-id.
- Device-TLB invalidations (types 3 and 8): counted; no device in the model has ATS.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..pgtable.bits import Field, Layout
from ..pgtable.vtd_fs import FL_A, FL_D, FL_P, FL_PS, FL_RW, FL_US, fs_canonical

if TYPE_CHECKING:
    from ..mem import PhysMem

__all__ = [
    "ADDR_QW1",
    "CC_QW0",
    "CTX_SM_QW0",
    "CTX_SM_QW1",
    "IOTLB_QW0",
    "PASID_DIR_ENTRY",
    "PASID_QW0",
    "PASID_QW1",
    "PASID_QW2",
    "PC_QW0",
    "PGTT_FL_ONLY",
    "PGTT_NESTED",
    "PGTT_PT",
    "PGTT_SL_ONLY",
    "PIOTLB_QW0",
    "ROOT_SM_HALF",
    "SM_FAULT_REASONS",
    "ContextCacheInv",
    "DevTlbInv",
    "InvDesc",
    "IotlbInv",
    "PasidCacheInv",
    "PiotlbInv",
    "SmFault",
    "SmState",
]

PGTT_FL_ONLY, PGTT_SL_ONLY, PGTT_NESTED, PGTT_PT = 1, 2, 3, 4  # PASID_ENTRY_PGTT_*

_ADDR = Field("PTR", 63, 12, "4K-aligned physical address", address=True)
#: spec 9.2: each 64-bit half of a scalable-mode root entry (lower: devfn 0-127)
ROOT_SM_HALF = Layout("SM root entry half", (Field("P", 0, 0, "present"), _ADDR))
#: spec 9.4: the first two qwords of a 256-bit scalable-mode context entry
CTX_SM_QW0 = Layout("SM context entry qword 0", (
    Field("P", 0, 0, "present"), Field("FPD", 1, 1, "fault processing disable"),
    Field("DTE", 2, 2, "device-TLB enable"), Field("PASIDE", 3, 3, "PASID enable"),
    Field("PRE", 4, 4, "page request enable"),
    Field("PDTS", 11, 9, "PASID directory of 2^(PDTS+7) entries"), _ADDR))
CTX_SM_QW1 = Layout("SM context entry qword 1", (
    Field("RID_PASID", 19, 0, "PASID for requests without PASID"),
    Field("RID_PRIV", 20, 20, "requests without PASID are supervisor")))
#: spec 9.5
PASID_DIR_ENTRY = Layout("PASID directory entry", (
    Field("P", 0, 0, "present"), Field("FPD", 1, 1, "fault processing disable"), _ADDR))
#: spec 9.6, as pasid.h writes it
PASID_QW0 = Layout("PASID entry qword 0", (
    Field("P", 0, 0, "present"), Field("FPD", 1, 1, "fault processing disable"),
    Field("AW", 4, 2, "second-stage address width: levels - 2"),
    Field("SSEE", 5, 5, "second-stage execute enable"),
    Field("PGTT", 8, 6, "1 first-stage, 2 second-stage, 3 nested, 4 pass-through"),
    Field("SSADE", 9, 9, "second-stage accessed/dirty enable"),
    Field("SSPTPTR", 63, 12, "second-stage table", address=True)))
PASID_QW1 = Layout("PASID entry qword 1", (
    Field("DID", 15, 0, "domain id"), Field("PWSNP", 23, 23, "page-walk snoop"),
    Field("PGSNP", 24, 24, "page snoop"), Field("CD", 25, 25, "cache disable"),
    Field("EMTE", 26, 26, "extended memory type enable")))
PASID_QW2 = Layout("PASID entry qword 2", (
    Field("SRE", 0, 0, "supervisor requests enable"),
    Field("FSPM", 3, 2, "first-stage paging mode: 0 4-level, 1 5-level"),
    Field("WPE", 4, 4, "write protect enable"),
    Field("EAFE", 7, 7, "extended accessed flag enable"),
    Field("FSPTPTR", 63, 12, "first-stage table", address=True)))

_SS_R, _SS_W, _SS_PS, _SS_A, _SS_D = 1 << 0, 1 << 1, 1 << 7, 1 << 8, 1 << 9
_SS_ADDR = ((1 << 52) - 1) & ~0xFFF
_FL_ADDR = ((1 << 52) - 1) & ~0xFFF
_FL_EA = 1 << 10
_FL_PU = FL_P | FL_US
_unpack_q: Callable[[Any, int], tuple[int]] = struct.Struct("<Q").unpack_from

#: dmar.c ``dma_remap_sm_fault_reasons``: the scalable-mode reasons the walks report.
SM_FAULT_REASONS = {
    0x39: "SM: Present bit in Root Entry is clear",
    0x41: "SM: Present bit in Context Entry is clear",
    0x51: "SM: Present bit in Directory Entry is clear",
    0x59: "SM: Present bit in PASID Table Entry is clear",
    0x5B: "SM: Invalid Scalable-Mode PASID Table Entry",
    0x71: "SM: Present bit in first-level paging entry is clear",
    0x74: "SM: First-level entry address beyond MGAW in Nested translation",
    0x75: "SM: Read permission error in FL-PML4 entry in Nested translation",
    0x76: "SM: Read permission error in first-level paging entry in Nested translation",
    0x77: "SM: Write permission error in first-level paging entry in Nested translation",
    0x79: "SM: Read/Write permission error in second-level paging entry",
    0x80: "SM: Address in first-level translation is not canonical",
    0x81: "SM: U/S set 0 for first-level translation with user privilege",
    0x83: "SM: Address beyond the DMA hardware max",
    0x85: "SM: No write permission for Write/AtomicOp request",
    0x86: "SM: No read permission for Read/AtomicOp request",
}


class SmFault(Exception):
    """A walk stopped with a scalable-mode fault ``reason`` (model-internal)."""

    def __init__(self, reason: int) -> None:
        super().__init__(SM_FAULT_REASONS[reason])
        self.reason = reason


# -- invalidation descriptors (spec 6.5.2; Linux QI_* encodings) ----------------------------
_TYPE = Field("TYPE", 3, 0, "descriptor type")
#: qw0 of each descriptor kind (intel/iommu.h ``QI_CC_*``, ``QI_IOTLB_*``, ``QI_EIOTLB_*``,
#: ``QI_PC_*``); qw1 of the two IOTLB kinds (address, IH, AM)
CC_QW0 = Layout("context-cache invalidation qw0", (
    _TYPE, Field("G", 5, 4, "granularity: 1 global, 2 domain, 3 device"),
    Field("DID", 31, 16, "domain id"), Field("SID", 47, 32, "source id"),
    Field("FM", 49, 48, "function mask")))
IOTLB_QW0 = Layout("IOTLB invalidation qw0", (
    _TYPE, Field("G", 5, 4, "granularity: 1 global, 2 domain, 3 page"),
    Field("DW", 6, 6, "drain writes"), Field("DR", 7, 7, "drain reads"),
    Field("DID", 31, 16, "domain id")))
PIOTLB_QW0 = Layout("PASID-based IOTLB invalidation qw0", (
    _TYPE, Field("G", 5, 4, "granularity: 2 PASID, 3 page within PASID"),
    Field("DID", 31, 16, "domain id"), Field("PASID", 51, 32, "PASID")))
PC_QW0 = Layout("PASID-cache invalidation qw0", (
    _TYPE, Field("G", 5, 4, "granularity: 0 domain, 1 PASID, 3 global"),
    Field("DID", 31, 16, "domain id"), Field("PASID", 51, 32, "PASID")))
ADDR_QW1 = Layout("IOTLB invalidation qw1", (
    Field("AM", 5, 0, "address mask: 2^AM pages"), Field("IH", 6, 6, "invalidation hint"),
    Field("ADDR", 63, 12, "address", address=True)))


@dataclass(frozen=True)
class ContextCacheInv:
    """Context-cache invalidation (type 1): ``granularity`` 1 global, 2 domain, 3 device
    (``sid``)."""

    granularity: int
    did: int = 0
    sid: int = 0

    def qwords(self) -> tuple[int, int]:
        """(qw0, qw1) as the queue holds it (``qi_flush_context``)."""
        return CC_QW0.encode(TYPE=1, G=self.granularity, DID=self.did, SID=self.sid), 0


@dataclass(frozen=True)
class IotlbInv:
    """IOTLB invalidation (type 2): ``granularity`` 1 global, 2 domain (``did``), 3 page
    (``did``, ``addr`` with ``2^am`` pages, ``ih``); Linux ``qi_desc_iotlb``."""

    granularity: int
    did: int = 0
    addr: int = 0
    am: int = 0
    ih: bool = False
    dr: bool = False  # CAP.DRD
    dw: bool = False  # CAP.DWD

    def qwords(self) -> tuple[int, int]:
        """(qw0, qw1) as ``qi_desc_iotlb`` encodes them."""
        return (IOTLB_QW0.encode(TYPE=2, G=self.granularity, DW=int(self.dw),
                                 DR=int(self.dr), DID=self.did),
                ADDR_QW1.encode(AM=self.am, IH=int(self.ih), ADDR=self.addr))


@dataclass(frozen=True)
class PiotlbInv:
    """PASID-based IOTLB invalidation (type 6): ``granularity`` 2 all of ``pasid`` in
    ``did`` (``QI_GRAN_NONG_PASID``), 3 page-selective within it (``QI_GRAN_PSI_PASID``,
    ``addr`` with ``2^am`` pages, ``ih``); Linux ``qi_desc_piotlb``."""

    granularity: int
    did: int
    pasid: int
    addr: int = 0
    am: int = 0
    ih: bool = False

    def qwords(self) -> tuple[int, int]:
        """(qw0, qw1) as ``qi_desc_piotlb`` encodes them (qw1 0 for granularity 2)."""
        qw1 = ADDR_QW1.encode(AM=self.am, IH=int(self.ih), ADDR=self.addr) \
            if self.granularity == 3 else 0
        return PIOTLB_QW0.encode(TYPE=6, G=self.granularity, DID=self.did,
                                 PASID=self.pasid), qw1


@dataclass(frozen=True)
class PasidCacheInv:
    """PASID-cache invalidation (type 7): ``granularity`` 0 all PASIDs of ``did``
    (``QI_PC_ALL_PASIDS``), 1 one PASID of it (``QI_PC_PASID_SEL``)."""

    granularity: int
    did: int
    pasid: int = 0

    def qwords(self) -> tuple[int, int]:
        """(qw0, qw1) as ``pasid_cache_invalidation_with_pasid`` writes them."""
        return PC_QW0.encode(TYPE=7, G=self.granularity, DID=self.did, PASID=self.pasid), 0


@dataclass(frozen=True)
class DevTlbInv:
    """Device-TLB invalidation (type 3, or 8 with ``pasid``): no modelled device has a
    device TLB (ATS), so it only counts."""

    sid: int
    addr: int = 0
    size_order: int = 0
    pasid: int | None = None


InvDesc = ContextCacheInv | IotlbInv | PiotlbInv | PasidCacheInv | DevTlbInv


@dataclass(frozen=True, slots=True)
class _PasidEntry:
    """What the unit caches of one PASID entry (the PASID cache's value)."""

    did: int
    pgtt: int
    aw: int
    ssade: bool
    ssptptr: int
    fspm: int
    sre: bool
    wpe: bool
    eafe: bool
    fsptptr: int


@dataclass(slots=True)
class _IotlbEntry:
    """One cached translation: page base out, leaf size, writable, written (the walk
    that filled it set the dirty flags a write needs)."""

    pgtt: int
    out: int
    size: int
    writable: bool
    written: bool


@dataclass
class SmState:
    """The scalable-mode side of one unit: RTADDR (root table, TTM = scalable), the
    context cache, the PASID cache, the IOTLB and the counts of every descriptor and
    lookup (``descriptor_read``: the first- and second-stage entries the walks read).
    ``mgaw`` is the unit's MGAW. ``fast`` (lab) turns on the inlined IOTLB hit and
    :meth:`_walk_fast`; off, every access takes the reference path."""

    mem: PhysMem
    mgaw: int
    rtaddr: int = 0
    ctx_cache: dict[int, tuple[int, int]] = field(default_factory=dict)  # sid -> dir, pasid
    pasid_cache: dict[tuple[int, int], _PasidEntry] = field(default_factory=dict)
    iotlb: dict[tuple[int, int, int, int], _IotlbEntry] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    fast: bool = True
    _page_of: Callable[[int], Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._page_of = self.mem.contents.written_page_lookup()

    # -- the walk ------------------------------------------------------------------------
    def translate(self, sid: int, iova: int, write: bool) -> tuple[int, int]:
        """The host-physical address of ``iova`` for a request without PASID from ``sid``
        (a user-level request, spec 3.4.3) and the end of its page; SmFault otherwise.
        An IOTLB hit answers without a walk, unless a write finds an entry a read
        filled (the walk then sets the dirty flags).

        Lab: with ``fast``, the context and PASID caches are probed inline and a 4K hit
        answered here, with the counts the full lookup keeps. O(1) on a hit."""
        ctx = self.ctx_cache.get(sid)
        if ctx is not None and self.fast:
            pasid = ctx[1]
            pe = self.pasid_cache.get((sid, pasid))
            if pe is not None:
                hit = self.iotlb.get((pe.did, pasid, 4096, iova >> 12))
                if hit is not None and (not write or (hit.written and hit.writable)):
                    self.counts["iotlb_hit"] += 1
                    return hit.out | (iova & 0xFFF), (iova | 0xFFF) + 1
                return self._lookup(pasid, pe, iova, write)
        pasid, pe = self._pasid_entry(sid)
        return self._lookup(pasid, pe, iova, write)

    def _lookup(self, pasid: int, pe: _PasidEntry, iova: int, write: bool
                ) -> tuple[int, int]:
        """The IOTLB lookup at each page size, a walk on a miss; the entry it fills."""
        for size in (1 << 12, 1 << 21, 1 << 30):
            hit = self.iotlb.get((pe.did, pasid, size, iova // size))
            if hit is not None and (hit.written or not write):
                if write and not hit.writable:
                    raise SmFault(0x85)
                self.counts["iotlb_hit"] += 1
                return hit.out | (iova & (size - 1)), (iova | (size - 1)) + 1
        self.counts["iotlb_miss"] += 1
        out, size, writable = self._walk(pe, iova, write)
        self.iotlb[(pe.did, pasid, size, iova // size)] = _IotlbEntry(
            pe.pgtt, out & ~(size - 1), size, writable, write)
        return out, (iova | (size - 1)) + 1

    def _pasid_entry(self, sid: int) -> tuple[int, _PasidEntry]:
        """Context entry (context cache) then the RID_PASID's PASID entry (PASID cache)."""
        ctx = self.ctx_cache.get(sid)
        mem = self.mem
        if ctx is None:
            bus, devfn = sid >> 8, sid & 0xFF
            half = mem.read_u64(self.rtaddr + bus * 16 + (8 if devfn >= 128 else 0))
            if not half & 1:
                raise SmFault(0x39)
            ce = (half & _ADDR.mask) + (devfn & 0x7F) * 32
            qw0 = mem.read_u64(ce)
            if not qw0 & 1:
                raise SmFault(0x41)
            ctx = (qw0 & _ADDR.mask, CTX_SM_QW1["RID_PASID"].get(mem.read_u64(ce + 8)))
            self.ctx_cache[sid] = ctx
        dirptr, pasid = ctx
        pe = self.pasid_cache.get((sid, pasid))
        if pe is None:
            pde = mem.read_u64(dirptr + (pasid >> 6) * 8)
            if not pde & 1:
                raise SmFault(0x51)
            at = (pde & _ADDR.mask) + (pasid & 63) * 64
            q0, q1, q2 = mem.read_u64(at), mem.read_u64(at + 8), mem.read_u64(at + 16)
            if not q0 & 1:
                raise SmFault(0x59)
            pgtt = PASID_QW0["PGTT"].get(q0)
            if pgtt not in (PGTT_FL_ONLY, PGTT_SL_ONLY, PGTT_NESTED, PGTT_PT):
                raise SmFault(0x5B)
            pe = _PasidEntry(q1 & 0xFFFF, pgtt, PASID_QW0["AW"].get(q0), bool(q0 >> 9 & 1),
                             q0 & _ADDR.mask, PASID_QW2["FSPM"].get(q2), bool(q2 & 1),
                             bool(q2 >> 4 & 1), bool(q2 >> 7 & 1), q2 & _ADDR.mask)
            self.pasid_cache[(sid, pasid)] = pe
            self.counts["pasid_fetch"] += 1
        return pasid, pe

    def _walk(self, pe: _PasidEntry, iova: int, write: bool) -> tuple[int, int, bool]:
        """(output address, leaf size, writable) by the entry's translation type."""
        self.counts["walk"] += 1
        if pe.pgtt == PGTT_PT:
            if iova >> self.mgaw:
                raise SmFault(0x83)
            return iova, 1 << 12, True
        ext = self.mem.external
        if self.fast and (ext is None or not len(ext)):  # not with a real program's pages
            done = self._walk_fast(pe, iova, write)
            if done is not None:
                return done
        if pe.pgtt == PGTT_SL_ONLY:
            out, size, w = self._ss(pe, iova, write, final=True)
            return out, size, w
        return self._fs(pe, iova, write)

    def _ss(self, pe: _PasidEntry, gpa: int, write: bool, *, final: bool,
            nested_read: int = 0x79, nested_write: int = 0x79) -> tuple[int, int, bool]:
        """Second-stage walk of ``gpa`` (spec 3.7): (address, leaf size, writable). A
        table entry without R or W faults 0x79; at the leaf a ``final`` access checks R
        or W (0x86 / 0x85), a first-stage structure access through it ``nested_read`` /
        ``nested_write``. With SSADE the unit sets A in each entry it uses and D in the
        leaf of a write."""
        levels = pe.aw + 2
        if gpa >> min(self.mgaw, 12 + 9 * levels):
            raise SmFault(0x83 if final else 0x74)
        mem = self.mem
        table = pe.ssptptr
        for level in range(levels, 0, -1):
            shift = 12 + 9 * (level - 1)
            at = table + ((gpa >> shift) & 511) * 8
            pte = mem.read_u64(at)
            self.counts["descriptor_read"] += 1
            leaf = level == 1 or bool(pte & _SS_PS)
            if not pte & (_SS_R | _SS_W):
                raise SmFault((0x86 if not write else 0x85) if final and leaf else
                              nested_read if not final else 0x79)
            if leaf:
                if not pte & _SS_R and not write:
                    raise SmFault(0x86 if final else nested_read)
                if write and not pte & _SS_W:
                    raise SmFault(0x85 if final else nested_write)
                if pe.ssade:
                    new = pte | _SS_A | (_SS_D if write else 0)
                    if new != pte:
                        mem.write_u64(at, new)
                size = 1 << shift
                return (pte & _SS_ADDR & ~(size - 1)) | (gpa & (size - 1)), size, \
                    bool(pte & _SS_W)
            if pe.ssade and not pte & _SS_A:
                mem.write_u64(at, pte | _SS_A)
            table = pte & _SS_ADDR
        raise AssertionError("unreachable: level 1 ends the walk")

    def _fs(self, pe: _PasidEntry, iova: int, write: bool) -> tuple[int, int, bool]:
        """First-stage walk (spec 3.6), for nested translation with every table access
        and the output through the second stage (3.8). A and D are written with a
        second-stage write permission check (0x77). Requests without PASID are user
        requests: every entry needs US (0x81)."""
        levels = 5 if pe.fspm == 1 else 4
        if not fs_canonical(iova, levels):
            raise SmFault(0x80)
        nested = pe.pgtt == PGTT_NESTED
        mem = self.mem
        table = pe.fsptptr
        writable = True
        size = 1 << 12
        for level in range(levels, 0, -1):
            shift = 12 + 9 * (level - 1)
            at_gpa = table + ((iova >> shift) & 511) * 8
            at = at_gpa
            if nested:
                rd = 0x75 if level == levels else 0x76
                at, _, _ = self._ss(pe, at_gpa, False, final=False, nested_read=rd)
            pte = mem.read_u64(at)
            self.counts["descriptor_read"] += 1
            if not pte & FL_P:
                raise SmFault(0x71)
            if not pte & FL_US:
                raise SmFault(0x81)
            writable = writable and bool(pte & FL_RW)
            leaf = level == 1 or (bool(pte & FL_PS) and level in (2, 3))
            if leaf and write and not writable:
                raise SmFault(0x85)
            flags = FL_A | (FL_D if leaf and write else 0) | (_FL_EA if pe.eafe else 0)
            if pte & flags != flags:
                if nested:
                    at, _, _ = self._ss(pe, at_gpa, True, final=False, nested_read=0x76,
                                        nested_write=0x77)
                mem.write_u64(at, pte | flags)
            if leaf:
                size = 1 << shift
                out = (pte & _FL_ADDR & ~(size - 1)) | (iova & (size - 1))
                break
            table = pte & _FL_ADDR
        else:
            raise AssertionError("unreachable: level 1 ends the walk")
        if not nested:
            return out, size, writable
        if out >> self.mgaw:
            raise SmFault(0x74)
        hpa, ss_size, ss_w = self._ss(pe, out, write, final=True)
        size = min(size, ss_size)
        return hpa, size, writable and ss_w

    def _walk_fast(self, pe: _PasidEntry, iova: int, write: bool
                   ) -> tuple[int, int, bool] | None:
        """Lab: :meth:`_walk` for second-stage, first-stage and nested entries when
        nothing can go wrong and nothing needs writing: the same entries in the same
        order, read straight from the memory model's written pages, with the second-stage
        walks inlined (one loop: the address of each first-stage entry, then the output
        address, through the second stage). Every entry must be present with the
        permission the access needs and every A/D flag the walk would set already set;
        otherwise (a fault, an A/D update, a page never written) it returns None before
        any side effect and :meth:`_ss` / :meth:`_fs` walk again, so faults and updates
        stay in one place.

        Nothing is written during the walk, so a second-stage walk into the 2M region
        the previous one went through takes that walk's level-1 table: the entries above
        it are the ones just read and checked. ``descriptor_read`` still counts every
        entry the walk reads (24 for a 4-level nested walk). O(levels^2)."""
        page_of = self._page_of
        unpack = _unpack_q
        pgtt = pe.pgtt
        nested = pgtt != PGTT_FL_ONLY
        ssade = pe.ssade
        ss_levels = pe.aw + 2
        ss_width = min(self.mgaw, 12 + 9 * ss_levels)
        ss_top = 3 + 9 * ss_levels  # the shift at the top second-stage level
        ss_root = pe.ssptptr
        table_ad = _SS_A if ssade else 0  # what each second-stage entry must hold already
        memo_hi, memo_t = -1, 0  # a 2M region and its level-1 table, from this walk
        # the second-stage leaf of the output address: the access's permission, A and D
        out_perm, out_ad = (_SS_W, table_ad | (_SS_D if ssade else 0)) if write else \
            (_SS_R, table_ad)
        reads = size = shift = need = e = hpa = ss_size = 0
        writable = True
        if pgtt == PGTT_SL_ONLY:
            x = iova  # the address the second stage translates next
            final, perm, leaf_ad = True, out_perm, out_ad
        else:
            levels = 5 if pe.fspm == 1 else 4
            if not fs_canonical(iova, levels):
                return None
            final, perm, leaf_ad = False, _SS_R, table_ad  # a first-stage entry: a read
            need = FL_A | (_FL_EA if pe.eafe else 0)  # what the walk sets in every entry
            shift = 3 + 9 * levels
            x = pe.fsptptr + ((iova >> shift) & 511) * 8
        while True:
            if nested:
                if x >> ss_width:
                    return None
                if x >> 21 == memo_hi:
                    a = memo_t + ((x >> 12) & 511) * 8
                    page = page_of(a >> 12)
                    if page is None:
                        return None
                    e = unpack(page, a & 0xFFF)[0]
                    s = 12
                    reads += ss_levels
                else:
                    t, s = ss_root, ss_top
                    while True:
                        a = t + ((x >> s) & 511) * 8
                        page = page_of(a >> 12)
                        if page is None:
                            return None
                        e = unpack(page, a & 0xFFF)[0]
                        if s == 12 or e & _SS_PS:
                            break
                        if not e & (_SS_R | _SS_W) or e & table_ad != table_ad:
                            return None
                        t = e & _SS_ADDR
                        s -= 9
                        if s == 12:
                            memo_hi, memo_t = x >> 21, t
                    reads += (ss_top - s) // 9 + 1
                if not e & perm or e & leaf_ad != leaf_ad:
                    return None
                ss_size = 1 << s
                hpa = (e & _SS_ADDR & -ss_size) | (x & (ss_size - 1))
                if final:
                    break
            else:
                hpa = x
            page = page_of(hpa >> 12)
            if page is None:
                return None
            pte = unpack(page, hpa & 0xFFF)[0]
            reads += 1
            if pte & _FL_PU != _FL_PU:
                return None
            if not pte & FL_RW:
                writable = False
            if shift == 12 or (pte & FL_PS and shift in (21, 30)):
                if write:
                    need |= FL_D
                    if not writable:
                        return None
                if pte & need != need:
                    return None
                size = 1 << shift
                x = (pte & _FL_ADDR & -size) | (iova & (size - 1))
                if not nested:
                    self.counts["descriptor_read"] += reads
                    return x, size, writable
                final, perm, leaf_ad = True, out_perm, out_ad
                continue
            if pte & need != need:
                return None
            shift -= 9
            x = (pte & _FL_ADDR) + ((iova >> shift) & 511) * 8
        self.counts["descriptor_read"] += reads
        if pgtt == PGTT_SL_ONLY:
            return hpa, ss_size, bool(e & _SS_W)
        return hpa, min(size, ss_size), writable and bool(e & _SS_W)

    # -- invalidation ----------------------------------------------------------------------
    def submit(self, descs: list[InvDesc]) -> None:
        """``qi_submit_sync``: carry out each descriptor (with its wait descriptor)."""
        for d in descs:
            self.counts[type(d).__name__] += 1
            if isinstance(d, IotlbInv):
                self._inv_iotlb(d)
            elif isinstance(d, PiotlbInv):
                self._inv_piotlb(d)
            elif isinstance(d, PasidCacheInv):
                for key in [k for k, v in self.pasid_cache.items() if v.did == d.did and (
                        d.granularity == 0 or k[1] == d.pasid)]:
                    del self.pasid_cache[key]
            elif isinstance(d, ContextCacheInv):
                if d.granularity == 3:
                    self.ctx_cache.pop(d.sid, None)
                else:
                    self.ctx_cache.clear()

    def _inv_iotlb(self, d: IotlbInv) -> None:
        if d.granularity == 1:
            self.iotlb.clear()
            return
        lo, hi = d.addr, d.addr + (4096 << d.am)
        drop = []
        for key, e in self.iotlb.items():
            if key[0] != d.did or e.pgtt == PGTT_FL_ONLY:
                continue
            inside = key[3] * key[2] < hi and (key[3] + 1) * key[2] > lo
            if d.granularity == 2 or e.pgtt == PGTT_NESTED or inside:
                drop.append(key)
        for key in drop:
            del self.iotlb[key]

    def _inv_piotlb(self, d: PiotlbInv) -> None:
        lo, hi = d.addr, d.addr + (4096 << d.am)
        drop = [key for key, e in self.iotlb.items()
                if key[0] == d.did and key[1] == d.pasid and e.pgtt != PGTT_SL_ONLY and (
                    d.granularity != 3 or (key[3] * key[2] < hi and (key[3] + 1) * key[2] > lo))]
        for key in drop:
            del self.iotlb[key]

    def _check(self) -> None:
        """Tests only: every IOTLB entry is page-aligned for its size."""
        for (_, _, size, _), e in self.iotlb.items():
            assert e.size == size and not e.out & (size - 1)
