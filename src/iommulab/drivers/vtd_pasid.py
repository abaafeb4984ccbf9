"""The intel-iommu driver's scalable-mode tables: root and context entries, the PASID
directory and table of each device, and the PASID entries it writes
(drivers/iommu/intel/pasid.c and iommu.c, Linux 6.12; 7.0 keeps these paths).

Every entry goes into the machine's physical memory, where the unit's walk
(:mod:`.vtd_sm`) reads it; the invalidations go through the unit's queue
(``qi_submit_sync``: :meth:`.vtd_sm.SmState.submit`). Requests without PASID use
``IOMMU_NO_PASID`` (0) as RID_PASID, so only PASID 0's entry is written here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import Busy, InvalidArgument, NoDevice, NotSupported
from .vtd_sm import (
    PASID_QW0,
    PASID_QW1,
    PASID_QW2,
    PGTT_FL_ONLY,
    PGTT_NESTED,
    PGTT_SL_ONLY,
    ContextCacheInv,
    IotlbInv,
    PasidCacheInv,
    PiotlbInv,
    SmState,
)

if TYPE_CHECKING:
    from ..mem import PhysMem

__all__ = [
    "ADDR_WIDTH_4LEVEL",
    "ADDR_WIDTH_5LEVEL",
    "IOMMU_VTD_S1_EAFE",
    "IOMMU_VTD_S1_SRE",
    "IOMMU_VTD_S1_WPE",
    "DevPasid",
    "VtdS1Cfg",
    "pasid_entry_present",
    "pasid_setup_dirty_tracking",
    "pasid_setup_first_level",
    "pasid_setup_nested",
    "pasid_setup_second_level",
    "pasid_tear_down_entry",
    "sm_context_setup",
    "sm_context_teardown",
]

IOMMU_NO_PASID = 0
ADDR_WIDTH_4LEVEL, ADDR_WIDTH_5LEVEL = 48, 57
IOMMU_VTD_S1_SRE, IOMMU_VTD_S1_EAFE, IOMMU_VTD_S1_WPE = 1 << 0, 1 << 1, 1 << 2
_QW_P, _QW_FPD = 1 << 0, 1 << 1


@dataclass(frozen=True)
class VtdS1Cfg:
    """``struct iommu_hwpt_vtd_s1`` (uapi/linux/iommufd.h): flags (u64), pgtbl_addr
    (u64), addr_width (u32), __reserved (u32); 24 bytes."""

    flags: int
    pgtbl_addr: int
    addr_width: int
    reserved: int

    @classmethod
    def from_bytes(cls, raw: bytes) -> VtdS1Cfg:
        return cls(int.from_bytes(raw[0:8], "little"), int.from_bytes(raw[8:16], "little"),
                   int.from_bytes(raw[16:20], "little"), int.from_bytes(raw[20:24], "little"))


@dataclass
class DevPasid:
    """``info->pasid_table`` of one device: its PASID directory (one page,
    ``intel_pasid_alloc_table`` without PASID support) and the PASID table page
    under directory entry 0 once ``intel_pasid_get_entry`` made it."""

    sid: int
    dir_pa: int
    table_pa: int = 0


def _entry_pa(mem: PhysMem, dp: DevPasid) -> int:
    """``intel_pasid_get_entry(dev, IOMMU_NO_PASID)``: the 64-byte entry, its table
    allocated (and put in the directory) on first use."""
    if not dp.table_pa:
        dp.table_pa, _ = mem.alloc_iommu_pages(4096)
        mem.write_u64(dp.dir_pa, dp.table_pa | _QW_P)
    return dp.table_pa + IOMMU_NO_PASID * 64


def pasid_entry_present(mem: PhysMem, dp: DevPasid) -> bool:
    return bool(mem.read_u64(_entry_pa(mem, dp)) & _QW_P)


def sm_context_setup(mem: PhysMem, sm: SmState, sid: int) -> DevPasid:
    """``intel_pasid_alloc_table`` then ``intel_pasid_setup_sm_context``
    (``context_entry_set_pasid_table``): the directory page, then the device's
    scalable-mode context entry (root table and context table allocated as
    ``iommu_context_addr`` does): PASID directory pointer, PDTS for a one-page
    directory, RID_PASID 0, fault processing enabled, present."""
    dir_pa, _ = mem.alloc_iommu_pages(4096)
    if not sm.rtaddr:  # iommu_alloc_root_entry at init; RTADDR_REG with TTM = scalable
        sm.rtaddr, _ = mem.alloc_iommu_pages(4096)
    bus, devfn = sid >> 8, sid & 0xFF
    half_pa = sm.rtaddr + bus * 16 + (8 if devfn >= 128 else 0)
    half = mem.read_u64(half_pa)
    if not half & _QW_P:
        ctp, _ = mem.alloc_iommu_pages(4096)
        mem.write_u64(half_pa, ctp | _QW_P)
        half = ctp | _QW_P
    ce = (half & ~0xFFF) + (devfn & 0x7F) * 32
    # max_pasid = 1 << (order + PAGE_SHIFT + 3): 2^15 PASIDs, 2^9 directory entries
    pds = 9 - 7  # context_get_sm_pds
    mem.write_u64(ce + 8, IOMMU_NO_PASID)  # context_set_sm_rid2pasid
    mem.write_u64(ce, dir_pa | pds << 9 | _QW_P)
    return DevPasid(sid, dir_pa)


def sm_context_teardown(mem: PhysMem, sm: SmState, dp: DevPasid) -> None:
    """``intel_pasid_teardown_sm_context`` and ``intel_pasid_free_table``: the context
    entry cleared (with the context-cache flush of ``intel_context_flush_no_pasid``),
    the PASID table and directory pages freed."""
    bus, devfn = dp.sid >> 8, dp.sid & 0xFF
    half = mem.read_u64(sm.rtaddr + bus * 16 + (8 if devfn >= 128 else 0))
    ce = (half & ~0xFFF) + (devfn & 0x7F) * 32
    mem.write_u64(ce, 0)
    mem.write_u64(ce + 8, 0)
    sm.submit([ContextCacheInv(3, sid=dp.sid), PasidCacheInv(0, 0), IotlbInv(1)])
    if dp.table_pa:
        mem.free_iommu_pages(dp.table_pa)
    mem.free_iommu_pages(dp.dir_pa)


def _write_entry(mem: PhysMem, at: int, q0: int, q1: int, q2: int) -> None:
    """``pasid_clear_entry`` then the fields, ``pasid_set_present`` last."""
    for i in range(8):
        mem.write_u64(at + 8 * i, 0)
    mem.write_u64(at + 8, q1)
    mem.write_u64(at + 16, q2)
    mem.write_u64(at, q0)


def _flush_new_entry(sm: SmState, caching_mode: bool, did: int) -> None:
    """``pasid_flush_caches``: in caching mode a PASID-cache and a PASID-selective
    P_IOTLB invalidation; otherwise only a write-buffer flush (nothing cached)."""
    if caching_mode:
        sm.submit([PasidCacheInv(1, did, IOMMU_NO_PASID),
                   PiotlbInv(2, did, IOMMU_NO_PASID)])


def pasid_setup_second_level(mem: PhysMem, sm: SmState, dp: DevPasid, *, did: int,
                             pgd: int, agaw: int, ssads: bool, smpwc: bool,
                             caching_mode: bool) -> None:
    """``intel_pasid_setup_second_level``: EBUSY over a present entry; PGTT second
    stage, DID, SLPTR, AW, PWSNP from ECAP.SMPWC, SSADE when the domain tracks dirty."""
    at = _entry_pa(mem, dp)
    if mem.read_u64(at) & _QW_P:
        raise Busy(f"PASID entry of {dp.sid:#x} is present")
    q0 = PASID_QW0.encode(P=1, AW=agaw, PGTT=PGTT_SL_ONLY, SSADE=int(ssads), SSPTPTR=pgd)
    _write_entry(mem, at, q0, PASID_QW1.encode(DID=did, PWSNP=int(smpwc)), 0)
    _flush_new_entry(sm, caching_mode, did)


def pasid_setup_first_level(mem: PhysMem, sm: SmState, dp: DevPasid, *, did: int,
                            pgd: int, levels: int, unit_agaw: int, flts: bool, fl5lp: bool,
                            snoop: bool, smpwc: bool, caching_mode: bool) -> None:
    """6.12 ``domain_setup_first_level`` and ``intel_pasid_setup_first_level``: EINVAL for
    a table of other than 4 or 5 levels, without ECAP.FLTS, or of 5 levels without
    CAP.FL5LP; EBUSY over a present entry; FLPTR, FLPM for 5 levels, PGSNP when the
    domain forces snooping, DID, AW of the unit, PWSNP, PGTT first-stage, present."""
    if levels not in (4, 5):
        raise InvalidArgument(f"domain_setup_first_level: a {levels}-level table")
    if not flts:
        raise InvalidArgument("intel_pasid_setup_first_level: No first level translation")
    if levels == 5 and not fl5lp:
        raise InvalidArgument("intel_pasid_setup_first_level: No 5-level paging support")
    at = _entry_pa(mem, dp)
    if mem.read_u64(at) & _QW_P:
        raise Busy(f"PASID entry of {dp.sid:#x} is present")
    q2 = pgd | PASID_QW2.encode(FSPM=int(levels == 5))
    q1 = PASID_QW1.encode(DID=did, PWSNP=int(smpwc), PGSNP=int(snoop))
    q0 = PASID_QW0.encode(P=1, AW=unit_agaw, PGTT=PGTT_FL_ONLY)
    _write_entry(mem, at, q0, q1, q2)
    _flush_new_entry(sm, caching_mode, did)


def pasid_setup_nested(mem: PhysMem, sm: SmState, dp: DevPasid, cfg: VtdS1Cfg, *,
                       did: int, s2_pgd: int, s2_agaw: int, s2_dirty: bool,
                       s2_snoop: bool, fl5lp: bool, srs: bool, eafs: bool, smpwc: bool,
                       caching_mode: bool) -> None:
    """``intel_pasid_setup_nested``: EINVAL for an ``addr_width`` other than 48 or 57, for
    57 without CAP.FL5LP, for SRE without ECAP.SRS and EAFE without ECAP.EAFS (in that
    order); EBUSY over a present entry. Then FLPTR (a guest address), FLPM for 5
    levels, SRE (and WPE only with SRE), EAFE, PGSNP when the parent forces snooping,
    SLPTR of the parent, DID of the nested domain, AW of the parent, PWSNP, SSADE when
    the parent tracks dirty, PGTT nested, present; ``pasid_flush_caches``. Other flag
    bits and ``__reserved`` are not looked at (nor were they at allocation)."""
    if cfg.addr_width == ADDR_WIDTH_5LEVEL:
        if not fl5lp:
            raise InvalidArgument("intel_pasid_setup_nested: 5-level paging not supported")
    elif cfg.addr_width != ADDR_WIDTH_4LEVEL:
        raise InvalidArgument(f"intel_pasid_setup_nested: Invalid stage-1 address width "
                              f"{cfg.addr_width}")
    if cfg.flags & IOMMU_VTD_S1_SRE and not srs:
        raise InvalidArgument("intel_pasid_setup_nested: No supervisor request support")
    if cfg.flags & IOMMU_VTD_S1_EAFE and not eafs:
        raise InvalidArgument("intel_pasid_setup_nested: No extended access flag support")
    at = _entry_pa(mem, dp)
    if mem.read_u64(at) & _QW_P:
        raise Busy(f"PASID entry of {dp.sid:#x} is present")
    sre = bool(cfg.flags & IOMMU_VTD_S1_SRE)
    q2 = PASID_QW2.encode(
        FSPM=int(cfg.addr_width == ADDR_WIDTH_5LEVEL), SRE=int(sre),
        WPE=int(sre and bool(cfg.flags & IOMMU_VTD_S1_WPE)),
        EAFE=int(bool(cfg.flags & IOMMU_VTD_S1_EAFE)))
    # pasid_set_flptr ORs the whole value in (pasid_set_bits does not mask it): the low
    # bits of an unaligned pgtbl_addr land on SRE, FLPM, WPE and EAFE (a kernel wart kept)
    q2 |= cfg.pgtbl_addr
    q1 = PASID_QW1.encode(DID=did, PWSNP=int(smpwc), PGSNP=int(s2_snoop))
    q0 = PASID_QW0.encode(P=1, AW=s2_agaw, PGTT=PGTT_NESTED, SSADE=int(s2_dirty),
                          SSPTPTR=s2_pgd)
    _write_entry(mem, at, q0, q1, q2)
    _flush_new_entry(sm, caching_mode, did)


def pasid_tear_down_entry(mem: PhysMem, sm: SmState, dp: DevPasid) -> None:
    """``intel_pasid_tear_down_entry`` (fault_ignore false): a present entry loses P,
    then the PASID-cache invalidation, the IOTLB of its DID (domain-selective for
    second-stage and nested, a PASID-selective P_IOTLB for first-stage and
    pass-through), the device TLB (none here), and the entry is cleared."""
    if not dp.table_pa:
        return
    at = dp.table_pa + IOMMU_NO_PASID * 64
    q0 = mem.read_u64(at)
    if not q0 & _QW_P:
        if q0 & _QW_FPD:
            _write_entry(mem, at, 0, 0, 0)
        return
    did = mem.read_u64(at + 8) & 0xFFFF
    pgtt = PASID_QW0["PGTT"].get(q0)
    mem.write_u64(at, q0 & ~_QW_P)
    flush: list[IotlbInv | PiotlbInv | PasidCacheInv] = [PasidCacheInv(1, did, IOMMU_NO_PASID)]
    if pgtt in (PGTT_SL_ONLY, PGTT_NESTED):
        flush.append(IotlbInv(2, did))
    else:
        flush.append(PiotlbInv(2, did, IOMMU_NO_PASID))
    sm.submit(list(flush))
    _write_entry(mem, at, 0, 0, 0)


def pasid_setup_dirty_tracking(mem: PhysMem, sm: SmState, dp: DevPasid,
                               enabled: bool) -> None:
    """``intel_pasid_setup_dirty_tracking``: ENODEV without an entry, EOPNOTSUPP unless
    it is second-stage or nested; SSADE set or cleared, then (Table 25) a PASID-cache
    invalidation and a domain-selective IOTLB invalidation of its DID."""
    if not dp.table_pa:
        raise NoDevice(f"no PASID entry for {dp.sid:#x}")
    at = dp.table_pa + IOMMU_NO_PASID * 64
    q0 = mem.read_u64(at)
    pgtt = PASID_QW0["PGTT"].get(q0)
    if pgtt not in (PGTT_SL_ONLY, PGTT_NESTED):
        raise NotSupported(f"Dirty tracking not supported on translation type {pgtt}")
    if bool(q0 >> 9 & 1) == enabled:
        return
    mem.write_u64(at, q0 | 1 << 9 if enabled else q0 & ~(1 << 9))
    did = mem.read_u64(at + 8) & 0xFFFF
    sm.submit([PasidCacheInv(1, did, IOMMU_NO_PASID), IotlbInv(2, did)])
