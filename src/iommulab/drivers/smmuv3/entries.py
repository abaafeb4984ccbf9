"""Stream table entries and context descriptors, and how the driver rewrites them live.

The ``make_*`` functions build the eight 64-bit words of an STE or CD
exactly as ``arm_smmu_make_abort_ste``, ``arm_smmu_make_bypass_ste``,
``arm_smmu_make_cdtable_ste``, ``arm_smmu_make_s2_domain_ste`` and
``arm_smmu_make_s1_cd`` do (Linux 7.0, no ATS, no stalls, NS-EL1 stream
world). :func:`write_entry` is ``arm_smmu_write_entry``: it compares the
bits the SMMU uses in the current and target entries and writes a live
entry hitlessly when only one word's used bits change, else breaks it
(V=0), writes the rest and makes it valid again, syncing after each step.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from ...pgtable import ArmLpaeS1Cfg, ArmLpaeS2Cfg, Layout
from .regs import CD0, CD1, STE0, STE1, STE2, STE3, SteConfig

__all__ = [
    "ENTRY_QWORDS",
    "Entry",
    "cd_used",
    "make_abort_ste",
    "make_bypass_ste",
    "make_cdtable_ste",
    "make_s1_cd",
    "make_s2_domain_ste",
    "ste_used",
    "write_entry",
]

ENTRY_QWORDS = 8  # an STE and a CD are both 64 bytes
Entry = tuple[int, ...]
_ALL = (1 << 64) - 1
_S1DSS_SSID0, _S1C_CACHE_WBRA, _SH_ISH, _STRW_NSEL1 = 2, 1, 3, 0
_S1FMT_LINEAR = 0


def _entry(*words: int) -> Entry:
    return tuple(words) + (0,) * (ENTRY_QWORDS - len(words))


def make_abort_ste() -> Entry:
    return _entry(STE0.encode(V=1, CONFIG=SteConfig.ABORT))


def make_bypass_ste() -> Entry:
    """Bypass; SHCFG is left 0 (no ARM_SMMU_FEAT_ATTR_TYPES_OVR in the model)."""
    return _entry(STE0.encode(V=1, CONFIG=SteConfig.BYPASS))


def make_cdtable_ste(cdtab_pa: int, s1cdmax: int = 0) -> Entry:
    """Stage 1 through a linear CD table; S1DSS=SSID0, VMID 0 (reserved for S1 STEs)."""
    return _entry(
        STE0.encode(V=1, CONFIG=SteConfig.S1_TRANS, S1FMT=_S1FMT_LINEAR, S1CTXPTR=cdtab_pa,
                    S1CDMAX=s1cdmax),
        STE1.encode(S1DSS=_S1DSS_SSID0, S1CIR=_S1C_CACHE_WBRA, S1COR=_S1C_CACHE_WBRA,
                    S1CSH=_SH_ISH, STRW=_STRW_NSEL1),
        STE2.encode(S2VMID=0))


def make_s2_domain_ste(s2: ArmLpaeS2Cfg, vmid: int, s2fwb: bool) -> Entry:
    """Stage 2 only: VTCR fields from io-pgtable, S2AA64, S2PTW and S2R set."""
    v = s2.vtcr
    return _entry(
        STE0.encode(V=1, CONFIG=SteConfig.S2_TRANS),
        STE1.encode(S2FWB=int(s2fwb)),
        STE2.encode(S2VMID=vmid, S2T0SZ=v.tsz, S2SL0=v.sl, S2IR0=v.irgn, S2OR0=v.orgn,
                    S2SH0=v.sh, S2TG=v.tg, S2PS=v.ps, S2AA64=1, S2PTW=1, S2R=1),
        STE3.encode(S2TTB=s2.vttbr))


def make_s1_cd(s1: ArmLpaeS1Cfg, asid: int, hd: bool) -> Entry:
    """``arm_smmu_make_s1_cd``; HA|HD when the table was built with IO_PGTABLE_QUIRK_ARM_HD."""
    t = s1.tcr
    w0 = CD0.encode(T0SZ=t.tsz, TG0=t.tg, IR0=t.irgn, OR0=t.orgn, SH0=t.sh, EPD1=1, V=1,
                    IPS=t.ips, AA64=1, R=1, A=1, ASET=1, ASID=asid)
    if hd:
        w0 |= CD0.encode(HA=1, HD=1)
    return _entry(w0, CD1.encode(TTB0=s1.ttbr), 0, s1.mair)


# -- used bits -------------------------------------------------------------------------------
def _mask(layout: Layout, *names: str) -> int:
    out = 0
    for name in names:
        out |= layout[name].mask
    return out


_STE0_S1 = _mask(STE0, "S1FMT", "S1CTXPTR", "S1CDMAX")
_STE1_S1 = _mask(STE1, "S1DSS", "S1CIR", "S1COR", "S1CSH", "S1STALLD", "STRW", "EATS", "MEV")
_STE1_S2 = _mask(STE1, "EATS", "SHCFG", "MEV", "S2FWB")
_STE2_S2 = _mask(STE2, *(f.name for f in STE2 if f.name not in ("S2HD", "S2HA", "S2AFFD")))
_CD_EPD0_IGNORED = _mask(CD0, "T0SZ", "TG0", "IR0", "OR0", "SH0")


def ste_used(ent: Entry) -> Entry:
    """``arm_smmu_get_ste_used``: the bits the SMMU reads in this STE's configuration."""
    used = [0] * ENTRY_QWORDS
    used[0] = STE0["V"].mask
    if not STE0["V"].get(ent[0]):
        return tuple(used)
    used[0] |= STE0["CONFIG"].mask
    cfg = STE0["CONFIG"].get(ent[0])
    if cfg & 1:  # stage 1 translates
        used[0] |= _STE0_S1
        used[1] |= _STE1_S1
        used[2] |= STE2["S2VMID"].mask
        if STE1["S1DSS"].get(ent[1]) == 1:  # bypass
            used[1] |= STE1["SHCFG"].mask
    if cfg & 2:  # stage 2 translates
        used[1] |= _STE1_S2
        used[2] |= _STE2_S2
        used[3] |= STE3["S2TTB"].mask
    if cfg == SteConfig.BYPASS:
        used[1] |= STE1["SHCFG"].mask
    return tuple(used)


def cd_used(ent: Entry) -> Entry:
    """``arm_smmu_get_cd_used``: everything once valid, except what EPD0 makes ignored."""
    if not CD0["V"].get(ent[0]):
        return (CD0["V"].mask,) + (0,) * (ENTRY_QWORDS - 1)
    used = [_ALL] * ENTRY_QWORDS
    if CD0["EPD0"].get(ent[0]):
        used[0] &= ~_CD_EPD0_IGNORED
        used[1] &= ~CD1["TTB0"].mask
    return tuple(used)


# -- hitless update -----------------------------------------------------------------------------
def write_entry(live: npt.NDArray[np.uint64], target: Entry, used: Callable[[Entry], Entry],
                sync: Callable[[], None]) -> int:
    """``arm_smmu_write_entry``: rewrite ``live`` (8 words in memory) into ``target``.

    Returns the number of syncs (configuration invalidations) it made.
    """
    cur = tuple(int(w) for w in live)
    cur_used, target_used = used(cur), used(target)
    unused_update = [(c & cu) | (t & ~cu) for c, cu, t in zip(cur, cur_used, target, strict=True)]
    diff = [i for i in range(ENTRY_QWORDS)
            if unused_update[i] & target_used[i] != target[i]]
    syncs = 0

    def entry_set(values: list[int] | Entry, start: int, count: int) -> None:
        nonlocal syncs
        changed = False
        for i in range(start, start + count):
            if int(live[i]) != values[i]:
                live[i] = values[i]
                changed = True
        if changed:
            sync()
            syncs += 1

    if len(diff) == 1:  # hitless: everything else first, then the critical word
        critical = diff[0]
        unused_update[critical] = cur[critical]
        entry_set(unused_update, 0, ENTRY_QWORDS)
        entry_set(target, critical, 1)
        entry_set(target, 0, ENTRY_QWORDS)
    elif diff:  # breaking: V=0, the other words, then word 0
        unused_update[0] = 0
        entry_set(unused_update, 0, 1)
        entry_set(target, 1, ENTRY_QWORDS - 1)
        entry_set(target, 0, 1)
    else:
        entry_set(target, 0, ENTRY_QWORDS)
    return syncs
