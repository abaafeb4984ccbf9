"""The SMMUv3 as hardware: registers, queues, configuration and translation.

Everything the driver tells it goes through memory and registers, as on a
real SMMU: the stream table and context descriptors are read from physical
memory on a configuration-cache miss, commands are read from the command
queue when CMDQ_PROD is written, and faults are written to the event queue.
Translation looks the IOTLB up and otherwise walks the tables from physical
memory, with its own decoding of the VMSAv8-64 descriptors (it shares no
code with ``iommulab.pgtable``), including HTTU: setting AF, and clearing
AP[2] on a write to a writable-clean DBM entry.

Nesting (STE.Config 0b111, IHI 0070's STE and two-stage translation rules): the
CD table pointer, every level-1 CD descriptor, the CD and every stage-1 table
descriptor are IPAs, fetched through stage 2 (the S2 translations are cached
in the IOTLB as stage-2-only entries, tagged by VMID); the stage-1 output IPA
is translated by stage 2, and the IOTLB caches the composed translation as one
stage-1 entry tagged by (VMID, ASID), of the smaller of the two leaf sizes. A
stage-2 fault is reported with S2 = 1, the IPA, and CLASS CD (a CD or L1CD
fetch), TT (a stage-1 descriptor fetch, or an HTTU write of one: TTRnW = 0) or
IN (the output IPA); it is recorded per STE.S2R and stalls per STE.S2S.
Stage-1 faults have S2 = 0 and follow CD.R and CD.S. HTTU at stage 2
(STE.S2HA, STE.S2HD with DBM in the S2 descriptor: S2AP[1] set on the first
write), also for the stage-1 descriptor updates, which are writes through
stage 2. Substreams: S1CDMax, S1Fmt (linear, 2-level with 4K or 64K leaf
tables) and S1DSS select the CD; ``translate_run(..., ssid=)``.

Sources: IHI 0070 (SMMUv3 architecture) for STE/CD/command/event semantics;
DDI0487 D8 for the table walk; the field layouts in :mod:`.regs`.
Simplifications: a linear stream table, no separate walk cache (the stage-2
entries for table fetches are the IOTLB's), no ATS/ATC/PRI; a stalled fault
is recorded with Stall = 1 and a STAG but the transaction ends as terminated
(no CMD_RESUME); EPD0 and TBI are not honoured; commands complete when
CMDQ_PROD is written.
"""

from __future__ import annotations

import struct
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ...errors import DmaFault
from ...mem import PhysMem
from ...prot import Prot
from ...sizes import SZ_4K, SZ_16K, SZ_64K
from . import regs
from .iotlb import _VPN_BITS, IotlbConfig, IotlbEntry, make_iotlb, tlb_tag
from .regs import Cmd, Evt, Reg, SteConfig

__all__ = ["HwStats", "SmmuV3Config", "SmmuV3Hw"]

OAS_BITS = (32, 36, 40, 42, 44, 48, 52)  # IDR5.OAS / CD.IPS / STE.S2PS encodings
_GRANULE_OF_TG = {0: 12, 1: 16, 2: 14}  # TG0 / S2TG: 4K, 64K, 16K
_DESC_ADDR = ((1 << 48) - 1) & ~0xFFF  # descriptor OA bits 47:12
_AF, _AP_UNPRIV, _AP_RDONLY, _DBM = 1 << 10, 1 << 6, 1 << 7, 1 << 51
_S2AP_R, _S2AP_W = 1 << 6, 1 << 7
_VMID_MASK = tlb_tag(0xFFFF, 0, False)
_TAG_MASK = tlb_tag(0xFFFF, 0xFFFF, True)
_READ, _WRITE, _PRIV = int(Prot.READ), int(Prot.WRITE), int(Prot.PRIV)
# a numpy page is a buffer at run time; numpy's stubs do not say so
_NEEDS_S1 = frozenset((Cmd.CFGI_CD, Cmd.CFGI_CD_ALL, Cmd.TLBI_NH_ALL, Cmd.TLBI_NH_ASID,
                       Cmd.TLBI_NH_VA, Cmd.TLBI_NH_VAA))
_NEEDS_S2 = frozenset((Cmd.TLBI_S2_IPA, Cmd.TLBI_S12_VMALL))
_NEEDS_HYP = frozenset((Cmd.TLBI_EL2_ALL, Cmd.TLBI_EL2_ASID, Cmd.TLBI_EL2_VA))
_unpack_q: Callable[[Any, int], tuple[int]] = struct.Struct("<Q").unpack_from


@dataclass(frozen=True)
class SmmuV3Config:
    """What the hardware implements; the ID registers are computed from it."""

    stages: Literal["s1", "s2", "s1+s2", "none"] = "s1+s2"
    oas: int = 48
    vax52: bool = False
    granules: tuple[int, ...] = (SZ_4K, SZ_16K, SZ_64K)
    httu: Literal["none", "access", "access+dirty"] = "access+dirty"
    coherent: bool = True
    ril: bool = True
    bbml: int = 2
    fwb: bool = False
    ttf: int = 2  # IDR0.TTF: 2 AArch64 only
    sid_bits: int = 8
    asid_bits: int = 16  # 8 or 16 (IDR0.ASID16)
    vmid_bits: int = 16  # 8 or 16 (IDR0.VMID16)
    cmdq_shift: int = 8
    evtq_shift: int = 7
    ssid_bits: int = 0  # IDR1.SSIDSIZE: SubstreamID bits (0: no substreams)
    cd2l: bool = False  # IDR0.CD2L: two-level CD tables
    stall_model: int = 1  # IDR0.STALL_MODEL: 0 stall and terminate, 1 terminate only, 2 stall
    iotlb: IotlbConfig = field(default_factory=IotlbConfig.qemu)
    # An IOTLB entry may hold the dirty state of a DBM entry: after the first
    # write, later writes through it do not touch the descriptor (allowed by
    # the architecture; software must invalidate after cleaning).
    iotlb_caches_dirty: bool = True

    def __post_init__(self) -> None:
        if self.oas not in OAS_BITS:
            raise ValueError(f"oas must be one of {OAS_BITS}, not {self.oas}")
        if self.bbml not in (0, 1, 2):
            raise ValueError(f"bbml must be 0, 1 or 2, not {self.bbml}")
        if self.asid_bits not in (8, 16) or self.vmid_bits not in (8, 16):
            raise ValueError(f"asid_bits and vmid_bits must be 8 or 16, not "
                             f"{self.asid_bits} and {self.vmid_bits}")
        if not 0 <= self.ssid_bits <= 20 or self.stall_model not in (0, 1, 2):
            raise ValueError(f"ssid_bits must be 0..20 and stall_model 0, 1 or 2, not "
                             f"{self.ssid_bits} and {self.stall_model}")
        if not 0 < self.sid_bits <= 16:
            raise ValueError(f"sid_bits must be 1..16 for a linear stream table, "
                             f"not {self.sid_bits}")


@dataclass
class HwStats:
    """Counters of the hardware (reports read these)."""

    translations: int = 0
    walks: int = 0
    descriptor_reads: int = 0
    af_updates: int = 0  # HTTU access-flag writes
    dirty_updates: int = 0  # HTTU dirty-state writes (AP[2] cleared)
    s2_af_updates: int = 0  # the same at stage 2 (STE.S2HA)
    s2_dirty_updates: int = 0  # S2AP[1] set on a write (STE.S2HD, DBM)
    s2_translations: int = 0  # IPAs translated for a nested stream (fetches and outputs)
    stalls: int = 0  # faults recorded as stalled
    config_hits: int = 0
    config_misses: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    commands: Counter[str] = field(default_factory=Counter)
    events_recorded: int = 0
    events_lost: int = 0  # event queue full


@dataclass(slots=True)
class _StreamCfg:
    """A decoded configuration (STE, and CD for stage 1): one stage's walk parameters,
    and for a nested stream (Config 0b111) the stage-2 ones in ``s2``."""

    mode: SteConfig
    tag: int = 0
    shifts: tuple[int, ...] = ()  # leaf sizes the IOTLB may hold for it, smallest first
    stage1: bool = True
    ias: int = 0
    ips: int = 0
    ttb: int = 0
    gshift: int = 12
    start_level: int = 0
    ha: bool = False
    hd: bool = False
    record: bool = True  # CD.R / STE.S2R
    stall: bool = False  # faults stall (CD.S / STE.S2S, or STALL_MODEL 2)
    s2: _StreamCfg | None = None  # stage 2 under a nested stage 1
    translates: bool = field(init=False)
    # lab: the IOTLB key of the smallest leaf size without its page number (the first
    # probe of Iotlb.lookup), -1 when the stream does not translate
    key0: int = field(init=False)
    shift0: int = field(init=False)

    def __post_init__(self) -> None:
        self.translates = self.mode in (SteConfig.S1_TRANS, SteConfig.S2_TRANS,
                                        SteConfig.NESTED)
        self.shift0 = self.shifts[0] if self.shifts else 0
        self.key0 = (((self.tag << 7) | self.shift0) << _VPN_BITS
                     if self.translates and self.shifts else -1)


class _Fault(Exception):
    """A fault on its way to an event record (IHI 0070 chapter 7): the fields it takes."""

    def __init__(self, evt: Evt, klass: int = regs.EVT_CLASS_IN, *, s2: bool = False,
                 ipa: int = 0, record: bool = True, stall: bool = False,
                 tt_write: bool = False) -> None:
        super().__init__(evt.name)
        self.evt, self.klass, self.s2, self.ipa = evt, klass, s2, ipa
        self.record, self.stall, self.tt_write = record, stall, tt_write


class SmmuV3Hw:
    """One SMMUv3 attached to ``mem``."""

    def __init__(self, mem: PhysMem, config: SmmuV3Config | None = None) -> None:
        self.mem = mem
        self.config = c = config or SmmuV3Config()
        self.stats = HwStats()
        self.iotlb = make_iotlb(c.iotlb)
        # lab: translate's hit path reads the IOTLB's dict directly when a hit changes
        # no replacement state (qemu's organisation, set-associative round-robin)
        self._tlb_map = self.iotlb._map if not self.iotlb._touches else None
        self._tlb_stats = self.iotlb.stats
        self.recent_commands: deque[tuple[Cmd, int, int]] = deque(maxlen=4096)
        self._configs: dict[int, _StreamCfg] = {}  # by StreamID, transactions without SSID
        self._ss_configs: dict[tuple[int, int], _StreamCfg] = {}  # by (StreamID, SSID)
        self._stag = 0
        self._smmuen = False
        self._page_of = mem.contents.written_page_lookup()
        self._caches_dirty = c.iotlb_caches_dirty
        shifts: set[int] = set()  # every leaf size a TLBI may have to find
        for g in c.granules:
            shifts.update(_leaf_shifts(g.bit_length() - 1, c.oas))
        self._shifts = tuple(sorted(shifts))
        self._regs: dict[int, int] = {int(r): 0 for r in Reg}
        httu = {"none": 0, "access": 1, "access+dirty": 2}[c.httu]
        self._regs[Reg.IDR0] = regs.IDR0.encode(
            S2P=int("s2" in c.stages), S1P=int("s1" in c.stages), TTF=c.ttf,
            COHACC=int(c.coherent), HTTU=httu, ASID16=int(c.asid_bits == 16),
            VMID16=int(c.vmid_bits == 16), TTENDIAN=2, STALL_MODEL=c.stall_model,
            CD2L=int(c.cd2l))
        self._regs[Reg.IDR1] = regs.IDR1.encode(SIDSIZE=c.sid_bits, CMDQS=c.cmdq_shift,
                                                EVTQS=c.evtq_shift, SSIDSIZE=c.ssid_bits)
        self._regs[Reg.IDR3] = regs.IDR3.encode(RIL=int(c.ril), BBML=c.bbml, FWB=int(c.fwb))
        self._regs[Reg.IDR5] = regs.IDR5.encode(
            OAS=OAS_BITS.index(c.oas), GRAN4K=int(SZ_4K in c.granules),
            GRAN16K=int(SZ_16K in c.granules), GRAN64K=int(SZ_64K in c.granules),
            VAX=int(c.vax52))

    # -- registers ------------------------------------------------------------------------
    def read_reg(self, offset: int) -> int:
        if offset not in self._regs:
            raise ValueError(f"SMMU register offset {offset:#x} is not modelled")
        return self._regs[offset]

    def write_reg(self, offset: int, value: int) -> None:
        if offset in (Reg.IDR0, Reg.IDR1, Reg.IDR3, Reg.IDR5, Reg.IIDR, Reg.AIDR,
                      Reg.CR0ACK, Reg.CMDQ_CONS, Reg.EVTQ_PROD, Reg.GERROR):
            raise ValueError(f"SMMU register {Reg(offset).name} is read-only")
        if offset not in self._regs:
            raise ValueError(f"SMMU register offset {offset:#x} is not modelled")
        self._regs[offset] = value
        if offset == Reg.CR0:
            self._regs[Reg.CR0ACK] = value
            self._smmuen = bool(value & regs.CR0_SMMUEN)
            if not self._smmuen:
                self._configs.clear()
                self._ss_configs.clear()
        elif offset in (Reg.CMDQ_PROD, Reg.GERRORN):  # a new command, or an error acknowledged
            self._consume_commands()

    @property
    def enabled(self) -> bool:
        return self._smmuen

    def _check(self) -> None:
        """O(cached): the IOTLB's own check; every cached configuration decodes to one
        stage (a nested one to stage 1 over a stage-2 configuration of the same VMID),
        and nothing is cached while the SMMU is disabled."""
        self.iotlb._check()
        if not self._smmuen:
            assert not self._configs and not self._ss_configs
        for cfg in [*self._configs.values(), *self._ss_configs.values()]:
            if cfg.s2 is not None:
                assert cfg.mode == SteConfig.NESTED and cfg.stage1
                assert cfg.s2.mode == SteConfig.S2_TRANS and cfg.s2.s2 is None
                assert cfg.tag & _VMID_MASK == cfg.s2.tag & _VMID_MASK
                assert set(cfg.s2.shifts) <= set(cfg.shifts)
            assert cfg.key0 < 0 or cfg.shift0 == min(cfg.shifts)

    # -- command queue ------------------------------------------------------------------------
    @property
    def cmdq_error(self) -> bool:
        """GERROR.CMDQ_ERR active (not yet acknowledged in GERRORN): the queue is stopped."""
        return bool((self._regs[Reg.GERROR] ^ self._regs[Reg.GERRORN]) & regs.GERROR_CMDQ_ERR)

    def _consume_commands(self) -> None:
        if not self._regs[Reg.CR0] & regs.CR0_CMDQEN or self.cmdq_error:
            return
        base = self._regs[Reg.CMDQ_BASE]
        shift = base & regs.Q_BASE_LOG2SIZE_MASK
        addr = base & regs.Q_BASE_ADDR_MASK
        wrap_mask = (2 << shift) - 1
        cons = self._regs[Reg.CMDQ_CONS] & wrap_mask
        prod = self._regs[Reg.CMDQ_PROD] & wrap_mask
        while cons != prod:
            slot = addr + ((cons & ((1 << shift) - 1)) << 4)
            w0, w1 = self.mem.read_u64(slot), self.mem.read_u64(slot + 8)
            if not self._execute(w0, w1):
                self._regs[Reg.CMDQ_CONS] = cons | regs.CMDQ_ERR_CERROR_ILL << \
                    regs.CMDQ_CONS_ERR_SHIFT
                self._regs[Reg.GERROR] ^= regs.GERROR_CMDQ_ERR
                return
            cons = (cons + 1) & wrap_mask
        self._regs[Reg.CMDQ_CONS] = cons

    def _execute(self, w0: int, w1: int) -> bool:
        """One command (IHI 0070 4.3 configuration and 4.4 TLB invalidation). What
        each removes:

        - CFGI_STE (4.3.1): the STE of one StreamID and every CD and L1CD cached
          through it; CFGI_STE_RANGE / CFGI_ALL (4.3.2, 4.3.6): the same for
          2^(Range+1) StreamIDs. CFGI_CD (4.3.3): the CD at index SSID of the
          StreamID's table; CFGI_CD_ALL (4.3.4): every CD of the StreamID. The
          model caches an STE with the CD it led to, so a CD invalidation also
          drops that STE (4.3 permits over-invalidation). No TLBI touches
          configuration (4.3.1), also not a CD fetched through stage 2.
        - TLBI_NH_VA / NH_VAA (4.4.2.4, 4.4.2.3): stage-1 and combined entries of
          the VMID for the address, of one ASID / of every ASID. NH_ASID (4.4.2.2):
          the ASID's entries of the VMID; NH_ALL (4.4.2.1): every stage-1 and
          combined entry of the VMID. S2_IPA (4.4.3.1): stage-2-only entries of the
          VMID for the IPA range; it "is not required to invalidate" combined S1+S2
          entries, so after a stage-2 change under nesting software must follow it
          with NH_ALL (or NH_VAA of the affected addresses) for the VMID, or use
          S12_VMALL (4.4.3.2: every entry of the VMID at all stages); Linux 7.0 sends
          NH_ALL after a nest parent's S2_IPA. NSNH_ALL (4.4.4.1): everything.
          CFGI_CD/CD_ALL without stage 1, NH_* without stage 1, S2_IPA/S12_VMALL
          without stage 2 and EL2_* without Hyp are CERROR_ILL.
        - ATC_INV, PRI_RESP, RESUME, CMD_SYNC, PREFETCH_CFG: nothing to model (no ATC).
        """
        op = w0 & 0xFF
        try:
            cmd = Cmd(op)
        except ValueError:
            self.stats.commands["ILLEGAL"] += 1
            return False
        idr0 = self._regs[Reg.IDR0]
        if (cmd in _NEEDS_S1 and not idr0 & 2) or (cmd in _NEEDS_S2 and not idr0 & 1) or \
                (cmd in _NEEDS_HYP and not regs.IDR0["HYP"].get(idr0)):
            self.stats.commands["ILLEGAL"] += 1  # CERROR_ILL (4.3.3, 4.4.2, 4.4.3)
            return False
        self.stats.commands[cmd.name] += 1
        self.recent_commands.append((cmd, w0, w1))
        tlb = self.iotlb
        sid = w0 >> 32
        if cmd == Cmd.CFGI_STE:
            self._drop_configs(sid, sid + 1)
        elif cmd == Cmd.CFGI_ALL:  # CFGI_STE_RANGE
            span = 2 << regs.CMD_CFGI_ALL1["RANGE"].get(w1)
            lo = sid & ~(span - 1)
            self._drop_configs(lo, lo + span)
        elif cmd == Cmd.CFGI_CD:
            ssid = regs.CMD_CFGI0["SSID"].get(w0)
            self._ss_configs.pop((sid, ssid), None)
            if ssid == 0:  # transactions without a SubstreamID may use CD 0
                self._configs.pop(sid, None)
        elif cmd == Cmd.CFGI_CD_ALL:
            self._configs.pop(sid, None)
            for key in [k for k in self._ss_configs if k[0] == sid]:
                del self._ss_configs[key]
        vmid, asid = (w0 >> 32) & 0xFFFF, w0 >> 48
        if cmd == Cmd.TLBI_EL2_ALL:
            tlb.invalidate_where(cmd.name, 1, 1)  # every stage-1 entry (no EL2 tags modelled)
        elif cmd == Cmd.TLBI_NH_ALL:
            tlb.invalidate_where(cmd.name, tlb_tag(vmid, 0, True), _VMID_MASK | 1)
        elif cmd == Cmd.TLBI_NSNH_ALL:
            tlb.invalidate_all(cmd.name)
        elif cmd in (Cmd.TLBI_NH_ASID, Cmd.TLBI_EL2_ASID):
            tlb.invalidate_where(cmd.name, tlb_tag(vmid, asid, True), _TAG_MASK)
        elif cmd == Cmd.TLBI_S12_VMALL:
            tlb.invalidate_where(cmd.name, tlb_tag(vmid, 0, False), _VMID_MASK)
        elif cmd in (Cmd.TLBI_NH_VA, Cmd.TLBI_EL2_VA, Cmd.TLBI_S2_IPA):
            stage1 = cmd != Cmd.TLBI_S2_IPA
            tag = tlb_tag(vmid, asid, True) if stage1 else tlb_tag(vmid, 0, False)
            lo, hi = self._tlbi_range(w0, w1)
            tlb.invalidate_range(cmd.name, tag, lo, hi, self._shifts)
        elif cmd == Cmd.TLBI_NH_VAA:
            lo, hi = self._tlbi_range(w0, w1)
            tlb.invalidate_range_where(cmd.name, tlb_tag(vmid, 0, True), _VMID_MASK | 1,
                                       lo, hi)
        return True

    def _drop_configs(self, lo: int, hi: int) -> None:
        """Forget the cached configuration of StreamIDs ``[lo, hi)``. O(cached)."""
        for key in [k for k in self._configs if lo <= k < hi]:
            del self._configs[key]
        for skey in [k for k in self._ss_configs if lo <= k[0] < hi]:
            del self._ss_configs[skey]

    @staticmethod
    def _tlbi_range(w0: int, w1: int) -> tuple[int, int]:
        """The input range of a TLBI_*_VA/IPA (TG 0: the one address; else NUM/SCALE)."""
        addr = w1 & ~0xFFF
        tg = regs.CMD_TLBI1["TG"].get(w1)
        if not tg:
            return addr, addr + 1
        granule = 1 << (tg * 2 + 10)
        num = regs.CMD_TLBI0["NUM"].get(w0) + 1
        return addr, addr + (num << regs.CMD_TLBI0["SCALE"].get(w0)) * granule

    # -- event queue ---------------------------------------------------------------------------
    def _record(self, f: _Fault, sid: int, ssid: int, iova: int, write: bool,
                privileged: bool) -> None:
        """Write one event record (IHI 0070 chapter 7: F_TRANSLATION, F_ADDR_SIZE, F_ACCESS
        and F_PERMISSION share the layout: StreamID, SSV/SubstreamID, Stall/STAG, PnU,
        RnW, S2, CLASS, TTRnW, the input address, and the IPA for a stage-2 fault)."""
        if not self._regs[Reg.CR0] & regs.CR0_EVTQEN:
            return
        base = self._regs[Reg.EVTQ_BASE]
        shift = base & regs.Q_BASE_LOG2SIZE_MASK
        mask = (1 << shift) - 1
        prod, cons = self._regs[Reg.EVTQ_PROD], self._regs[Reg.EVTQ_CONS]
        full = (prod & mask) == (cons & mask) and (prod >> shift) & 1 != (cons >> shift) & 1
        if full:
            self.stats.events_lost += 1
            ovf = cons & regs.Q_OVERFLOW_FLAG
            self._regs[Reg.EVTQ_PROD] = (prod & ~regs.Q_OVERFLOW_FLAG) | \
                (ovf ^ regs.Q_OVERFLOW_FLAG)
            return
        slot = (base & regs.Q_BASE_ADDR_MASK) + ((prod & mask) << 5)
        stag = 0
        if f.stall:
            self._stag = stag = (self._stag + 1) & 0xFFFF
            self.stats.stalls += 1
        # C_BAD_SUBSTREAMID has no SSV: its SubstreamID is always valid (0 without one)
        ssv = int(ssid >= 0 and f.evt != Evt.C_BAD_SUBSTREAMID)
        self.mem.write_u64(slot, regs.EVT0.encode(ID=f.evt, SID=sid, SSV=ssv,
                                                  SSID=max(ssid, 0)))
        self.mem.write_u64(slot + 8, regs.EVT1.encode(
            RnW=int(not write), PnU=int(privileged), S2=int(f.s2), CLASS=f.klass,
            STALL=int(f.stall), STAG=stag,
            TTRnW=int(f.klass == regs.EVT_CLASS_TT and not f.tt_write)))
        self.mem.write_u64(slot + 16, iova)
        self.mem.write_u64(slot + 24, f.ipa & regs.EVT3["IPA"].mask if f.s2 else 0)
        self._regs[Reg.EVTQ_PROD] = (prod & regs.Q_OVERFLOW_FLAG) | \
            ((prod + 1) & ((2 << shift) - 1))
        self.stats.events_recorded += 1

    # -- translation ------------------------------------------------------------------------------
    def translate(self, sid: int, iova: int, access: int = _READ) -> int:
        """The physical address for one device access, or DmaFault with an event queued.

        ``access`` holds Prot bits: WRITE for a write (else a read), PRIV for
        a privileged transaction. A hit costs one IOTLB lookup; a miss walks
        the tables in memory and fills the IOTLB. With the SMMU disabled,
        everything passes through (GBPA). O(levels) on a miss, O(leaf sizes) on a hit.

        Lab: a hit on the smallest leaf size of a cached stream configuration
        is answered here (:meth:`fast_translate`'s lookup, inlined) with the
        counters :meth:`translate_run` keeps; anything else goes there.
        """
        cfg = self._configs.get(sid)
        tlb_map = self._tlb_map
        if cfg is not None and tlb_map is not None and self._smmuen and cfg.key0 >= 0:
            entry = tlb_map.get(cfg.key0 | (iova >> cfg.shift0))
            if entry is not None and (entry.writable if access & _WRITE else entry.readable) \
                    and (access & _PRIV or entry.user):
                stats = self.stats
                stats.translations += 1
                stats.config_hits += 1
                tstats = self._tlb_stats
                tstats.lookups += 1
                tstats.hits += 1
                return entry.pa | (iova & ((1 << entry.shift) - 1))
        access = int(access)
        pa, _ = self.translate_run(sid, iova, bool(access & _WRITE), bool(access & _PRIV))
        return pa

    def fast_translate(self, sid: int, iova: int, write: bool = False,
                       privileged: bool = False) -> IotlbEntry | None:
        """Lab (model-only): the IOTLB entry a hit would use, keyed by its IOTLB key
        (tag, smallest leaf size, page number), or None where :meth:`translate_run`
        must decide (no cached configuration, a larger leaf, an LRU IOTLB, a
        permission to check by walking). Counts nothing; O(1)."""
        cfg = self._configs.get(sid)
        tlb_map = self._tlb_map
        if cfg is None or tlb_map is None or not self._smmuen or cfg.key0 < 0:
            return None
        entry = tlb_map.get(cfg.key0 | (iova >> cfg.shift0))
        if entry is None or not (entry.writable if write else entry.readable) \
                or not (privileged or entry.user):
            return None
        return entry

    def translate_run(self, sid: int, iova: int, write: bool, privileged: bool = False,
                      ssid: int = -1) -> tuple[int, int]:
        """Translate ``iova``; also return where its leaf ends (an input address).

        Devices move data up to that end with this one translation, as one
        IOTLB entry covers the whole leaf. ``ssid`` is the transaction's
        SubstreamID (PASID), -1 for a transaction without one.
        """
        stats = self.stats
        stats.translations += 1
        cfg = self._configs.get(sid) if ssid < 0 else self._ss_configs.get((sid, ssid))
        if cfg is not None and cfg.translates and self._smmuen:  # the common case
            stats.config_hits += 1
            entry = self.iotlb.lookup(cfg.tag, iova, cfg.shifts)
            if entry is not None and (entry.writable if write else entry.readable) and \
                    (privileged or entry.user):
                shift = entry.shift
                return entry.pa | (iova & ((1 << shift) - 1)), entry.va + (1 << shift)
            return self._translate_slow(cfg, sid, ssid, iova, write, privileged, entry)
        if not self._smmuen:
            return iova, (iova | 0xFFF) + 1
        if cfg is None:
            cfg = self._load_config(sid, ssid, iova, write, privileged)
        else:
            stats.config_hits += 1
        if not cfg.translates:
            if cfg.mode == SteConfig.BYPASS:
                return iova, (iova | 0xFFF) + 1
            stats.faults["ABORT"] += 1
            raise DmaFault(f"SID {sid:#x}: stream aborted by its STE", sid=sid, iova=iova,
                           write=write, reason="ABORT")
        entry = self.iotlb.lookup(cfg.tag, iova, cfg.shifts)
        return self._translate_slow(cfg, sid, ssid, iova, write, privileged, entry)

    def _translate_slow(self, cfg: _StreamCfg, sid: int, ssid: int, iova: int, write: bool,
                        privileged: bool, entry: IotlbEntry | None) -> tuple[int, int]:
        if entry is None or (write and not entry.writable) or \
                (not write and not entry.readable) or (not privileged and not entry.user):
            entry = self._walk(cfg, sid, ssid, iova, write, privileged)
        shift = entry.shift
        return entry.pa | (iova & ((1 << shift) - 1)), entry.va + (1 << shift)

    def _fault(self, sid: int, ssid: int, iova: int, write: bool, privileged: bool,
               f: _Fault) -> DmaFault:
        """Count, record (per R / S2R, always when stalled) and turn into a DmaFault."""
        self.stats.faults[f.evt.name] += 1
        if f.record or f.stall:
            self._record(f, sid, ssid, iova, write, privileged)
        return DmaFault(f"SID {sid:#x} {'write' if write else 'read'} of iova {iova:#x}: "
                        f"{f.evt.name}", sid=sid, iova=iova, write=write, reason=f.evt.name)

    def _load_config(self, sid: int, ssid: int, iova: int, write: bool,
                     privileged: bool) -> _StreamCfg:
        """Fetch and decode the STE (and CD) for ``sid`` into the configuration cache."""
        self.stats.config_misses += 1
        try:
            cfg = self._decode_config(sid, ssid)
        except _Fault as f:
            raise self._fault(sid, ssid, iova, write, privileged, f) from None
        if ssid < 0:
            self._configs[sid] = cfg
        else:
            self._ss_configs[sid, ssid] = cfg
        return cfg

    def _decode_config(self, sid: int, ssid: int) -> _StreamCfg:
        """The STE checks of IHI 0070 (an ILLEGAL STE is C_BAD_STE), then the stage-1
        context: S1CDMax/S1DSS select the CD, fetched through stage 2 when nested."""
        base_cfg = self._regs[Reg.STRTAB_BASE_CFG]
        if sid >> (base_cfg & 0x3F):
            raise _Fault(Evt.C_BAD_STREAMID)
        ste_pa = (self._regs[Reg.STRTAB_BASE] & regs.STRTAB_BASE_ADDR_MASK) + sid * 64
        w = [self.mem.read_u64(ste_pa + 8 * i) for i in range(4)]
        if not regs.STE0["V"].get(w[0]):
            raise _Fault(Evt.C_BAD_STE)
        try:
            mode = SteConfig(regs.STE0["CONFIG"].get(w[0]))
        except ValueError:
            raise _Fault(Evt.C_BAD_STE) from None
        if mode == SteConfig.ABORT:
            return _StreamCfg(mode)
        idr0 = self._regs[Reg.IDR0]
        if (mode & 1 and not regs.IDR0["S1P"].get(idr0)) or \
                (mode & 2 and not regs.IDR0["S2P"].get(idr0)):
            raise _Fault(Evt.C_BAD_STE)  # a stage the SMMU does not implement
        s2 = self._decode_s2(w) if mode & 2 else None
        if not mode & 1:
            if ssid >= 0:  # a SubstreamID needs stage 1
                raise _Fault(Evt.C_BAD_SUBSTREAMID)
            return s2 if s2 is not None else _StreamCfg(mode)
        cfg_c = self.config
        # S1CDMax, S1Fmt and S1DSS are IGNORED without substreams (SSIDSIZE 0, S1CDMax 0);
        # S1Fmt 0b11 and S1DSS 0b11 behave as 0b00 (IHI 0070 5.2)
        cdmax = regs.STE0["S1CDMAX"].get(w[0]) if cfg_c.ssid_bits else 0
        fmt = regs.STE0["S1FMT"].get(w[0]) & (3 if cdmax else 0)
        if cdmax > cfg_c.ssid_bits or (fmt in (1, 2) and not cfg_c.cd2l) or \
                (regs.STE1["S1STALLD"].get(w[1]) and cfg_c.stall_model != 0):
            raise _Fault(Evt.C_BAD_STE)
        fmt = regs.S1FMT_LINEAR if fmt == 3 else fmt
        dss = regs.STE1["S1DSS"].get(w[1]) & (3 if cdmax else 0)
        if ssid < 0:
            if cdmax:  # substreams enabled: S1DSS decides for a transaction without one
                if dss in (0, 3):
                    raise _Fault(Evt.F_STREAM_DISABLED)
                if dss == 1:  # stage 1 bypassed
                    return s2 if s2 is not None else _StreamCfg(SteConfig.BYPASS)
            index = 0
        else:
            if not cdmax or ssid >> cdmax:
                raise _Fault(Evt.C_BAD_SUBSTREAMID)
            if ssid == 0 and dss == 2:  # CD 0 is the non-substream traffic's
                raise _Fault(Evt.F_STREAM_DISABLED)
            index = ssid
        cd = self._fetch_cd(regs.STE0["S1CTXPTR"].get(w[0]), fmt, index, s2)
        if not regs.CD0["V"].get(cd[0]) or not regs.CD0["AA64"].get(cd[0]):
            raise _Fault(Evt.C_BAD_CD, regs.EVT_CLASS_CD)
        tg = regs.CD0["TG0"].get(cd[0])
        stall_model = self.config.stall_model
        cd_stall = bool(regs.CD0["S"].get(cd[0]))
        if tg not in _GRANULE_OF_TG or (cd_stall and (  # CdIllegal's stall checks
                stall_model == 1 or regs.STE1["S1STALLD"].get(w[1]))) or \
                (not cd_stall and stall_model == 2):
            raise _Fault(Evt.C_BAD_CD, regs.EVT_CLASS_CD)
        gshift = _GRANULE_OF_TG[tg]
        ias = 64 - regs.CD0["T0SZ"].get(cd[0])
        ips = OAS_BITS[min(regs.CD0["IPS"].get(cd[0]), 6)]
        bpl = gshift - 3
        start = 4 - -(-(ias - gshift) // bpl)
        vmid = regs.STE2["S2VMID"].get(w[2])
        httu = regs.IDR0["HTTU"].get(idr0)
        shifts = _leaf_shifts(gshift, ips)
        if s2 is not None:  # a combined entry has the smaller leaf of the two stages
            shifts = tuple(sorted(set(shifts) | set(s2.shifts)))
        return _StreamCfg(mode, tlb_tag(vmid, regs.CD0["ASID"].get(cd[0]), True),
                          shifts, True, ias, ips,
                          regs.CD1["TTB0"].get(cd[1]), gshift, start,
                          bool(regs.CD0["HA"].get(cd[0])) and httu >= 1,
                          bool(regs.CD0["HD"].get(cd[0])) and httu >= 2,
                          bool(regs.CD0["R"].get(cd[0])), cd_stall, s2)

    def _decode_s2(self, w: list[int]) -> _StreamCfg:
        """The stage-2 half of an STE (VTCR fields, S2TTB, S2HA/S2HD, S2R, S2S)."""
        w2 = w[2]
        tg = regs.STE2["S2TG"].get(w2)
        stall = bool(regs.STE2["S2S"].get(w2))
        stall_model = self.config.stall_model
        if not regs.STE2["S2AA64"].get(w2) or tg not in _GRANULE_OF_TG or \
                (stall and stall_model == 1) or (not stall and stall_model == 2):
            raise _Fault(Evt.C_BAD_STE)
        gshift = _GRANULE_OF_TG[tg]
        ias = 64 - regs.STE2["S2T0SZ"].get(w2)
        ips = OAS_BITS[min(regs.STE2["S2PS"].get(w2), 6)]
        start = _s2_start_level(gshift, regs.STE2["S2SL0"].get(w2))
        vmid = regs.STE2["S2VMID"].get(w2)
        httu = regs.IDR0["HTTU"].get(self._regs[Reg.IDR0])
        return _StreamCfg(SteConfig.S2_TRANS, tlb_tag(vmid, 0, False),
                          _leaf_shifts(gshift, ips), False, ias, ips,
                          regs.STE3["S2TTB"].get(w[3]), gshift, start,
                          bool(regs.STE2["S2HA"].get(w2)) and httu >= 1,
                          bool(regs.STE2["S2HD"].get(w2)) and httu >= 2,
                          bool(regs.STE2["S2R"].get(w2)), stall)

    def _fetch_cd(self, ctxptr: int, fmt: int, index: int, s2: _StreamCfg | None
                  ) -> tuple[int, int]:
        """Words 0 and 1 of CD ``index``: linear, or through a level-1 descriptor
        (SSID[n:6] / SSID[n:10] index it); addresses are IPAs under nesting."""
        if fmt != regs.S1FMT_LINEAR:
            split = 6 if fmt == regs.S1FMT_4K_L2 else 10
            l1 = self._read_ipa(s2, ctxptr + (index >> split) * 8, regs.EVT_CLASS_CD)
            if not regs.L1CD["V"].get(l1):
                raise _Fault(Evt.C_BAD_SUBSTREAMID)
            ctxptr = regs.L1CD["L2PTR"].get(l1)
            index &= (1 << split) - 1
        cd_addr = ctxptr + index * 64
        return (self._read_ipa(s2, cd_addr, regs.EVT_CLASS_CD),
                self._read_ipa(s2, cd_addr + 8, regs.EVT_CLASS_CD))

    def _read_ipa(self, s2: _StreamCfg | None, addr: int, klass: int) -> int:
        """One 64-bit configuration read at a PA, or at an IPA through stage 2."""
        if s2 is not None:
            e = self._s2_entry(s2, addr, False, klass)
            addr = e.pa | (addr & ((1 << e.shift) - 1))
        return self.mem.read_u64(addr)

    def _s2_entry(self, s2: _StreamCfg, ipa: int, write: bool, klass: int,
                  tt_write: bool = False) -> IotlbEntry:
        """The stage-2 IOTLB entry for ``ipa`` allowing the access, walking on a miss.

        A stage-2 fault leaves as a _Fault with S2 = 1, the IPA, ``klass`` and the
        recording and stall behaviour of the STE (S2R, S2S). O(levels) on a miss.
        Lab: with an IOTLB whose hits change nothing, the probe is inlined (the
        counters as ``Iotlb.lookup`` keeps them).
        """
        self.stats.s2_translations += 1
        tlb_map = self._tlb_map
        if tlb_map is None:
            entry = self.iotlb.lookup(s2.tag, ipa, s2.shifts)
        else:
            tstats = self._tlb_stats
            tstats.lookups += 1
            base = s2.tag << 7
            for shift in s2.shifts:
                entry = tlb_map.get(((base | shift) << _VPN_BITS) | (ipa >> shift))
                if entry is not None:
                    tstats.hits += 1
                    break
            else:
                tstats.misses += 1
                entry = None
        if entry is None or not (entry.writable if write else entry.readable):
            try:
                entry = self._walk_tables(s2, ipa, write, True)
            except _Fault as f:
                raise _Fault(f.evt, klass, s2=True, ipa=ipa, record=s2.record, stall=s2.stall,
                             tt_write=tt_write) from None
            self.iotlb.insert(entry)
        return entry

    def _walk(self, cfg: _StreamCfg, sid: int, ssid: int, iova: int, write: bool,
              privileged: bool) -> IotlbEntry:
        """Walk for a miss or an entry without the permission; cache what it finds.

        A faulting walk leaves whatever the IOTLB holds: only a TLBI removes it.
        """
        try:
            entry = self._walk_tables(cfg, iova, write, privileged)
        except _Fault as f:
            if not f.s2:
                if cfg.stage1:
                    f.record, f.stall = cfg.record, cfg.stall
                else:  # a stage-2-only stream: the input address is the IPA
                    f.s2, f.ipa, f.record, f.stall = True, iova, cfg.record, cfg.stall
            raise self._fault(sid, ssid, iova, write, privileged, f) from None
        self.iotlb.insert(entry)
        return entry

    def _walk_tables(self, cfg: _StreamCfg, iova: int, write: bool,
                     privileged: bool) -> IotlbEntry:
        """Walk from the TTB, reading descriptors from memory (DDI0487 D8.2); under
        nesting each descriptor address is an IPA translated by stage 2 first.

        Lab: descriptors are read straight from the memory model's written pages
        (a page never written reads as zeros, as ``PhysMem.read_u64``), or through
        ``PhysMem.read_u64`` while a real program's pages are frames of the machine
        (``iommulab exec``: a guest's stage-1 table in its VMM's RAM). O(levels).
        """
        stats = self.stats
        stats.walks += 1
        if iova >> cfg.ias:
            raise _Fault(Evt.F_TRANSLATION)
        g = cfg.gshift
        bpl = g - 3
        imask = (1 << bpl) - 1
        ips = cfg.ips
        wide = g == 16 and ips > 48  # 52-bit output with 64K: bits 15:12 are PA[51:48]
        table = cfg.ttb
        s2 = cfg.s2
        page_of = self._page_of
        ext = self.mem.external
        in_program = ext is not None and len(ext) > 0  # a table in a real program's memory
        level = cfg.start_level
        shift = g + (3 - level) * bpl
        idx = iova >> shift
        while True:
            desc_pa = desc_addr = table + idx * 8
            if s2 is not None:
                try:
                    e = self._s2_entry(s2, desc_addr, False, regs.EVT_CLASS_TT)
                except _Fault:
                    stats.descriptor_reads += level - cfg.start_level
                    raise
                desc_pa = e.pa | (desc_addr & ((1 << e.shift) - 1))
            if in_program:
                desc = self.mem.read_u64(desc_pa)
            else:
                page = page_of(desc_pa >> 12)
                desc = 0 if page is None else _unpack_q(page, desc_pa & 0xFFF)[0]
            if desc & 3 == 3 and level < 3:  # table
                table = _desc_addr(desc, g, ips) if wide else desc & _DESC_ADDR
                if table >> ips:
                    stats.descriptor_reads += level - cfg.start_level + 1
                    raise _Fault(Evt.F_ADDR_SIZE)
                level += 1
                shift -= bpl
                idx = (iova >> shift) & imask
                continue
            stats.descriptor_reads += level - cfg.start_level + 1
            if not desc & 1:
                raise _Fault(Evt.F_TRANSLATION)
            if not desc & 2 and (level == 3 or shift not in cfg.shifts):
                raise _Fault(Evt.F_TRANSLATION)  # reserved encoding / no block here
            if not cfg.stage1:
                return self._leaf_s2(cfg, iova, write, desc, desc_pa, shift)
            return self._leaf(cfg, iova, write, privileged, desc, desc_pa, desc_addr, shift)

    def _leaf(self, cfg: _StreamCfg, iova: int, write: bool, privileged: bool, desc: int,
              desc_pa: int, desc_addr: int, shift: int) -> IotlbEntry:
        """Check a stage-1 leaf, make the HTTU updates, and build the IOTLB entry.

        The checks come first (AF without HA: F_ACCESS; AP/S2AP: F_PERMISSION, unless
        a DBM entry may be made dirty); then, under nesting, the output IPA goes
        through stage 2; only a translation that completes updates descriptors. A
        nested stage-1 update is a write through stage 2 to the descriptor's IPA."""
        size = 1 << shift
        ips = cfg.ips
        oa = (_desc_addr(desc, 16, ips) if cfg.gshift == 16 and ips > 48
              else desc & _DESC_ADDR) & -size
        if oa >> ips:
            raise _Fault(Evt.F_ADDR_SIZE)
        new = desc
        if not desc & _AF:
            if not cfg.ha:
                raise _Fault(Evt.F_ACCESS)
            new |= _AF
        dbm = cfg.hd and bool(desc & _DBM)
        user = bool(desc & _AP_UNPRIV)
        if not privileged and not user:
            raise _Fault(Evt.F_PERMISSION)
        readable, clean = True, bool(desc & _AP_RDONLY)
        if write and clean:
            if not dbm:
                raise _Fault(Evt.F_PERMISSION)
            new &= ~_AP_RDONLY  # HTTU: writable-clean -> writable-dirty
            clean = False
        writable = not clean and (not dbm or self._caches_dirty)
        s2 = cfg.s2
        va, pa = iova & -size, oa
        if s2 is not None:  # the output IPA through stage 2, then a combined entry
            ipa = oa | (iova & (size - 1))
            e = self._s2_entry(s2, ipa, write, regs.EVT_CLASS_IN)
            if e.shift < shift:
                shift = e.shift
                size = 1 << shift
                va = iova & -size
            pa = (e.pa | (ipa & ((1 << e.shift) - 1))) & -size
            readable = e.readable
            writable = writable and e.writable
        if new != desc:
            self._update_desc(cfg, desc, new, desc_pa, desc_addr)
        return IotlbEntry(cfg.tag, va, shift, pa, readable, writable, user, dbm, desc_pa)

    def _leaf_s2(self, cfg: _StreamCfg, ipa: int, write: bool, desc: int, desc_pa: int,
                 shift: int) -> IotlbEntry:
        """A stage-2 leaf: S2AP permissions, S2HA/S2HD updates (DBM: S2AP[1] set)."""
        size = 1 << shift
        ips = cfg.ips
        oa = (_desc_addr(desc, 16, ips) if cfg.gshift == 16 and ips > 48
              else desc & _DESC_ADDR) & -size
        if oa >> ips:
            raise _Fault(Evt.F_ADDR_SIZE)
        new = desc
        if not desc & _AF:
            if not cfg.ha:
                raise _Fault(Evt.F_ACCESS)
            new |= _AF
        dbm = cfg.hd and bool(desc & _DBM)
        readable, s2w = bool(desc & _S2AP_R), bool(desc & _S2AP_W)
        if write and not s2w and dbm:  # S2HD: writable-clean -> writable-dirty
            new |= _S2AP_W
            s2w = True
        if (write and not s2w) or (not write and not readable):
            raise _Fault(Evt.F_PERMISSION)
        if new != desc:
            self._update_desc(cfg, desc, new, desc_pa, desc_pa)
        return IotlbEntry(cfg.tag, ipa & -size, shift, oa, readable,
                          s2w and (not dbm or self._caches_dirty), True, dbm, desc_pa)

    def _update_desc(self, cfg: _StreamCfg, desc: int, new: int, desc_pa: int,
                     desc_addr: int) -> None:
        """An HTTU write of a descriptor (through stage 2 for a nested stage 1)."""
        s2 = cfg.s2
        if s2 is not None:
            e = self._s2_entry(s2, desc_addr, True, regs.EVT_CLASS_TT, tt_write=True)
            desc_pa = e.pa | (desc_addr & ((1 << e.shift) - 1))
        self.mem.write_u64(desc_pa, new)
        stats = self.stats
        if cfg.stage1:
            stats.af_updates += (new ^ desc) & _AF != 0
            stats.dirty_updates += (new ^ desc) & _AP_RDONLY != 0
        else:
            stats.s2_af_updates += (new ^ desc) & _AF != 0
            stats.s2_dirty_updates += (new ^ desc) & _S2AP_W != 0

def _leaf_shifts(gshift: int, oas: int) -> tuple[int, ...]:
    """Leaf sizes a granule allows (page, then blocks), smallest first."""
    bpl = gshift - 3
    blocks = {12: (21, 30), 14: (25,), 16: (29, 42) if oas > 48 else (29,)}[gshift]
    assert all((b - gshift) % bpl == 0 for b in blocks)
    return (gshift, *blocks)


def _s2_start_level(gshift: int, sl0: int) -> int:
    """VTCR.SL0 to the starting level (4K: 0 L2, 1 L1, 2 L0; 16K/64K: 0 L3 ... 3 L0)."""
    return 2 - sl0 if gshift == 12 else 3 - sl0


def _desc_addr(desc: int, gshift: int, ips: int) -> int:
    """Output/next-table address of a descriptor (64K granule, 52-bit: bits 15:12 are PA[51:48])."""
    if gshift == 16 and ips > 48:
        return (desc & _DESC_ADDR & ~0xFFFF) | ((desc >> 12) & 0xF) << 48
    return desc & _DESC_ADDR
