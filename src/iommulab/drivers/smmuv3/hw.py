"""The SMMUv3 as hardware: registers, queues, configuration and translation.

Everything the driver tells it goes through memory and registers, as on a
real SMMU: the stream table and context descriptors are read from physical
memory on a configuration-cache miss, commands are read from the command
queue when CMDQ_PROD is written, and faults are written to the event queue.
Translation looks the IOTLB up and otherwise walks the tables from physical
memory, with its own decoding of the VMSAv8-64 descriptors (it shares no
code with ``iommulab.pgtable``), including HTTU: setting AF, and clearing
AP[2] on a write to a writable-clean DBM entry.

Sources: IHI 0070 (SMMUv3 architecture) for STE/CD/command/event semantics;
DDI0487 D8 for the table walk; the field layouts in :mod:`.regs`.
Simplifications: a linear stream table, SubstreamID 0 only, no walk cache,
no ATS/PRI/stalls, no stage-2 dirty state (S2HD; Linux does not use it);
commands complete when CMDQ_PROD is written.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Literal

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
    config_hits: int = 0
    config_misses: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    commands: Counter[str] = field(default_factory=Counter)
    events_recorded: int = 0
    events_lost: int = 0  # event queue full


@dataclass(slots=True)
class _StreamCfg:
    mode: SteConfig
    tag: int = 0
    shifts: tuple[int, ...] = ()  # leaf sizes of the granule, smallest first
    stage1: bool = True
    ias: int = 0
    ips: int = 0
    ttb: int = 0
    gshift: int = 12
    start_level: int = 0
    ha: bool = False
    hd: bool = False
    record: bool = True
    translates: bool = field(init=False)
    # lab: the IOTLB key of the smallest leaf size without its page number (the first
    # probe of Iotlb.lookup), -1 when the stream does not translate
    key0: int = field(init=False)
    shift0: int = field(init=False)

    def __post_init__(self) -> None:
        self.translates = self.mode in (SteConfig.S1_TRANS, SteConfig.S2_TRANS)
        self.shift0 = self.shifts[0] if self.shifts else 0
        self.key0 = (((self.tag << 7) | self.shift0) << _VPN_BITS
                     if self.translates and self.shifts else -1)


class _Fault(Exception):
    def __init__(self, evt: Evt, klass: int = regs.EVT_CLASS_IN) -> None:
        super().__init__(evt.name)
        self.evt, self.klass = evt, klass


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
        self._configs: dict[int, _StreamCfg] = {}
        self._smmuen = False
        shifts: set[int] = set()  # every leaf size a TLBI may have to find
        for g in c.granules:
            shifts.update(_leaf_shifts(g.bit_length() - 1, c.oas))
        self._shifts = tuple(sorted(shifts))
        self._regs: dict[int, int] = {int(r): 0 for r in Reg}
        httu = {"none": 0, "access": 1, "access+dirty": 2}[c.httu]
        self._regs[Reg.IDR0] = regs.IDR0.encode(
            S2P=int("s2" in c.stages), S1P=int("s1" in c.stages), TTF=c.ttf,
            COHACC=int(c.coherent), HTTU=httu, ASID16=int(c.asid_bits == 16),
            VMID16=int(c.vmid_bits == 16), TTENDIAN=2, STALL_MODEL=1)
        self._regs[Reg.IDR1] = regs.IDR1.encode(SIDSIZE=c.sid_bits, CMDQS=c.cmdq_shift,
                                                EVTQS=c.evtq_shift)
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
        elif offset in (Reg.CMDQ_PROD, Reg.GERRORN):  # a new command, or an error acknowledged
            self._consume_commands()

    @property
    def enabled(self) -> bool:
        return self._smmuen

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
        op = w0 & 0xFF
        try:
            cmd = Cmd(op)
        except ValueError:
            self.stats.commands["ILLEGAL"] += 1
            return False
        self.stats.commands[cmd.name] += 1
        self.recent_commands.append((cmd, w0, w1))
        tlb = self.iotlb
        if cmd in (Cmd.CFGI_STE, Cmd.CFGI_CD, Cmd.CFGI_CD_ALL):
            self._configs.pop(w0 >> 32, None)
        elif cmd == Cmd.CFGI_ALL:
            self._configs.clear()
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
        return True  # CMD_SYNC, PREFETCH_CFG, ATC_INV, PRI_RESP, RESUME: nothing to model

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
    def _record(self, evt: Evt, sid: int, iova: int, write: bool, privileged: bool, s2: bool,
                klass: int, ipa: int) -> None:
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
        self.mem.write_u64(slot, regs.EVT0.encode(ID=evt, SID=sid))
        self.mem.write_u64(slot + 8, regs.EVT1.encode(RnW=int(not write), PnU=int(privileged),
                                                      S2=int(s2), CLASS=klass))
        self.mem.write_u64(slot + 16, iova)
        self.mem.write_u64(slot + 24, ipa & regs.EVT3["IPA"].mask)
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

    def translate_run(self, sid: int, iova: int, write: bool, privileged: bool = False
                      ) -> tuple[int, int]:
        """Translate ``iova``; also return where its leaf ends (an input address).

        Devices move data up to that end with this one translation, as one
        IOTLB entry covers the whole leaf.
        """
        stats = self.stats
        stats.translations += 1
        cfg = self._configs.get(sid)
        if cfg is not None and cfg.translates and self._smmuen:  # the common case
            stats.config_hits += 1
            entry = self.iotlb.lookup(cfg.tag, iova, cfg.shifts)
            if entry is not None and (entry.writable if write else entry.readable) and \
                    (privileged or entry.user):
                shift = entry.shift
                return entry.pa | (iova & ((1 << shift) - 1)), entry.va + (1 << shift)
            return self._translate_slow(cfg, sid, iova, write, privileged, entry)
        if not self._smmuen:
            return iova, (iova | 0xFFF) + 1
        if cfg is None:
            cfg = self._load_config(sid, iova, write, privileged)
        else:
            stats.config_hits += 1
        if not cfg.translates:
            if cfg.mode == SteConfig.BYPASS:
                return iova, (iova | 0xFFF) + 1
            stats.faults["ABORT"] += 1
            raise DmaFault(f"SID {sid:#x}: stream aborted by its STE", sid=sid, iova=iova,
                           write=write, reason="ABORT")
        entry = self.iotlb.lookup(cfg.tag, iova, cfg.shifts)
        return self._translate_slow(cfg, sid, iova, write, privileged, entry)

    def _translate_slow(self, cfg: _StreamCfg, sid: int, iova: int, write: bool,
                        privileged: bool, entry: IotlbEntry | None) -> tuple[int, int]:
        if entry is None or (write and not entry.writable) or \
                (not write and not entry.readable) or (not privileged and not entry.user):
            entry = self._walk(cfg, sid, iova, write, privileged)
        shift = entry.shift
        return entry.pa | (iova & ((1 << shift) - 1)), entry.va + (1 << shift)

    def _fault(self, cfg: _StreamCfg | None, sid: int, iova: int, write: bool,
               privileged: bool, f: _Fault) -> DmaFault:
        self.stats.faults[f.evt.name] += 1
        stage2 = cfg is not None and not cfg.stage1
        if cfg is None or cfg.record:
            self._record(f.evt, sid, iova, write, privileged, stage2, f.klass,
                         iova if stage2 else 0)
        return DmaFault(f"SID {sid:#x} {'write' if write else 'read'} of iova {iova:#x}: "
                        f"{f.evt.name}", sid=sid, iova=iova, write=write, reason=f.evt.name)

    def _load_config(self, sid: int, iova: int, write: bool, privileged: bool) -> _StreamCfg:
        """Fetch and decode the STE (and CD) for ``sid`` into the configuration cache."""
        self.stats.config_misses += 1
        try:
            cfg = self._decode_config(sid)
        except _Fault as f:
            raise self._fault(None, sid, iova, write, privileged, f) from None
        self._configs[sid] = cfg
        return cfg

    def _decode_config(self, sid: int) -> _StreamCfg:
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
        if mode in (SteConfig.ABORT, SteConfig.BYPASS):
            return _StreamCfg(mode)
        if mode == SteConfig.NESTED:
            raise _Fault(Evt.C_BAD_STE)  # nesting is not modelled
        if mode == SteConfig.S2_TRANS:
            if not regs.STE2["S2AA64"].get(w[2]):
                raise _Fault(Evt.C_BAD_STE)
            tg = regs.STE2["S2TG"].get(w[2])
            if tg not in _GRANULE_OF_TG:
                raise _Fault(Evt.C_BAD_STE)
            gshift = _GRANULE_OF_TG[tg]
            ias = 64 - regs.STE2["S2T0SZ"].get(w[2])
            ips = OAS_BITS[min(regs.STE2["S2PS"].get(w[2]), 6)]
            start = _s2_start_level(gshift, regs.STE2["S2SL0"].get(w[2]))
            vmid = regs.STE2["S2VMID"].get(w[2])
            return _StreamCfg(mode, tlb_tag(vmid, 0, False), _leaf_shifts(gshift, ips), False,
                              ias, ips, regs.STE3["S2TTB"].get(w[3]), gshift, start,
                              bool(regs.STE2["S2HA"].get(w[2])),
                              bool(regs.STE2["S2HD"].get(w[2])),
                              bool(regs.STE2["S2R"].get(w[2])))
        cd_pa = regs.STE0["S1CTXPTR"].get(w[0])  # SSID 0 of a linear CD table
        cd = [self.mem.read_u64(cd_pa + 8 * i) for i in range(2)]
        if not regs.CD0["V"].get(cd[0]) or not regs.CD0["AA64"].get(cd[0]):
            raise _Fault(Evt.C_BAD_CD, regs.EVT_CLASS_CD)
        tg = regs.CD0["TG0"].get(cd[0])
        if tg not in _GRANULE_OF_TG:
            raise _Fault(Evt.C_BAD_CD, regs.EVT_CLASS_CD)
        gshift = _GRANULE_OF_TG[tg]
        ias = 64 - regs.CD0["T0SZ"].get(cd[0])
        ips = OAS_BITS[min(regs.CD0["IPS"].get(cd[0]), 6)]
        bpl = gshift - 3
        start = 4 - -(-(ias - gshift) // bpl)
        vmid = regs.STE2["S2VMID"].get(w[2])
        httu = regs.IDR0["HTTU"].get(self._regs[Reg.IDR0])
        return _StreamCfg(mode, tlb_tag(vmid, regs.CD0["ASID"].get(cd[0]), True),
                          _leaf_shifts(gshift, ips), True, ias, ips,
                          regs.CD1["TTB0"].get(cd[1]), gshift, start,
                          bool(regs.CD0["HA"].get(cd[0])) and httu >= 1,
                          bool(regs.CD0["HD"].get(cd[0])) and httu >= 2,
                          bool(regs.CD0["R"].get(cd[0])))

    def _walk(self, cfg: _StreamCfg, sid: int, iova: int, write: bool, privileged: bool
              ) -> IotlbEntry:
        """Walk for a miss or an entry without the permission; cache what it finds.

        A faulting walk leaves whatever the IOTLB holds: only a TLBI removes it.
        """
        try:
            entry = self._walk_tables(cfg, iova, write, privileged)
        except _Fault as f:
            raise self._fault(cfg, sid, iova, write, privileged, f) from None
        self.iotlb.insert(entry)
        return entry

    def _walk_tables(self, cfg: _StreamCfg, iova: int, write: bool,
                     privileged: bool) -> IotlbEntry:
        """Walk from the TTB, reading descriptors from memory (DDI0487 D8.2)."""
        self.stats.walks += 1
        if iova >> cfg.ias:
            raise _Fault(Evt.F_TRANSLATION)
        g = cfg.gshift
        bpl = g - 3
        table = cfg.ttb
        mem = self.mem
        for level in range(cfg.start_level, 4):
            shift = g + (3 - level) * bpl
            idx = iova >> shift if level == cfg.start_level else (iova >> shift) & (
                (1 << bpl) - 1)
            desc_pa = table + idx * 8
            desc = mem.read_u64(desc_pa)
            self.stats.descriptor_reads += 1
            if not desc & 1:
                raise _Fault(Evt.F_TRANSLATION)
            if desc & 2 and level < 3:  # table
                table = _desc_addr(desc, g, cfg.ips)
                if table >> cfg.ips:
                    raise _Fault(Evt.F_ADDR_SIZE)
                continue
            if not desc & 2 and (level == 3 or shift not in cfg.shifts):
                raise _Fault(Evt.F_TRANSLATION)  # reserved encoding / no block here
            return self._leaf(cfg, iova, write, privileged, desc, desc_pa, shift)
        raise _Fault(Evt.F_TRANSLATION)  # pragma: no cover - level 3 always returns

    def _leaf(self, cfg: _StreamCfg, iova: int, write: bool, privileged: bool, desc: int,
              desc_pa: int, shift: int) -> IotlbEntry:
        oa = _desc_addr(desc, cfg.gshift, cfg.ips) & ~((1 << shift) - 1)
        if oa >> cfg.ips:
            raise _Fault(Evt.F_ADDR_SIZE)
        if not desc & _AF:
            if not cfg.ha:
                raise _Fault(Evt.F_ACCESS)
            desc |= _AF
            self.mem.write_u64(desc_pa, desc)
            self.stats.af_updates += 1
        dbm = bool(desc & _DBM) and cfg.hd
        user = True
        if cfg.stage1:
            user = bool(desc & _AP_UNPRIV)
            if not privileged and not user:
                raise _Fault(Evt.F_PERMISSION)
            readable, clean = True, bool(desc & _AP_RDONLY)
            if write and clean:
                if not dbm:
                    raise _Fault(Evt.F_PERMISSION)
                desc &= ~_AP_RDONLY  # HTTU: writable-clean -> writable-dirty
                self.mem.write_u64(desc_pa, desc)
                self.stats.dirty_updates += 1
                clean = False
            writable = not clean and (not dbm or self.config.iotlb_caches_dirty)
        else:
            readable, writable = bool(desc & _S2AP_R), bool(desc & _S2AP_W)
            if (write and not writable) or (not write and not readable):
                raise _Fault(Evt.F_PERMISSION)
            dbm = False
        return IotlbEntry(cfg.tag, iova & ~((1 << shift) - 1), shift, oa, readable, writable,
                          user, dbm, desc_pa)


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
