"""The physical STE for a nested domain: a guest's vSTE merged onto its stage-2 parent.

Follows Linux 7.0 drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3-iommufd.c:
``arm_smmu_validate_vste`` (what ``arm_vsmmu_alloc_domain_nested`` accepts
from ``struct iommu_hwpt_arm_smmuv3``), ``arm_smmu_make_nested_domain_ste``
and ``arm_smmu_make_nested_cd_table_ste``, with the masks
``STRTAB_STE_0_NESTING_ALLOWED`` / ``STRTAB_STE_1_NESTING_ALLOWED`` of
arm-smmu-v3.h. Pure functions over STE words (ints, CPU order); the iommufd
vIOMMU side (HWPT_ALLOC data, vDEVICE) calls them.
"""

from __future__ import annotations

from ...errors import IoError
from ...pgtable import ArmLpaeS2Cfg
from .entries import Entry, make_abort_ste, make_s2_domain_ste
from .regs import STE0, STE1, SteConfig

__all__ = [
    "STE0_NESTING_ALLOWED",
    "STE1_NESTING_ALLOWED",
    "make_nested_domain_ste",
    "validate_vste",
]

STE0_NESTING_ALLOWED = (STE0["V"].mask | STE0["CONFIG"].mask | STE0["S1FMT"].mask
                        | STE0["S1CTXPTR"].mask | STE0["S1CDMAX"].mask)
STE1_NESTING_ALLOWED = (STE1["S1DSS"].mask | STE1["S1CIR"].mask | STE1["S1COR"].mask
                        | STE1["S1CSH"].mask | STE1["S1STALLD"].mask | STE1["EATS"].mask)
_EATS_ABT, _EATS_TRANS = 0, 1


def validate_vste(ste: tuple[int, int]) -> tuple[tuple[int, int], bool]:
    """``arm_smmu_validate_vste``: the two vSTE words as the nested domain keeps them
    (``nested_domain->ste``: EATS cleared; all zero for a non-valid vSTE) and
    ``enable_ats`` (EATS = TRANS on an S1-translate vSTE).

    Raises IoError (EIO, "reserved for invalid STE data") for a bit outside the
    NESTING_ALLOWED masks, a Config other than abort/bypass/S1-translate, or an
    EATS other than ABT/TRANS, in that order. O(1).
    """
    w0, w1 = ste
    if not STE0["V"].get(w0):
        return (0, 0), False
    if w0 & ~STE0_NESTING_ALLOWED or w1 & ~STE1_NESTING_ALLOWED:
        bad = (w0 & ~STE0_NESTING_ALLOWED, w1 & ~STE1_NESTING_ALLOWED)
        raise IoError(f"vSTE sets bits a guest may not control: word 0 {bad[0]:#x}, "
                      f"word 1 {bad[1]:#x}")
    cfg = STE0["CONFIG"].get(w0)
    if cfg not in (SteConfig.ABORT, SteConfig.BYPASS, SteConfig.S1_TRANS):
        raise IoError(f"vSTE Config must be abort, bypass or S1 translate, not {cfg:#b}")
    eats = STE1["EATS"].get(w1)
    if eats not in (_EATS_ABT, _EATS_TRANS):
        raise IoError(f"vSTE EATS must be 0 (abort) or 1 (translate), not {eats}")
    return (w0, w1 & ~STE1["EATS"].mask), cfg == SteConfig.S1_TRANS and eats == _EATS_TRANS


def make_nested_domain_ste(vste: tuple[int, int], s2: ArmLpaeS2Cfg, vmid: int, *,
                           s2fwb: bool = False, ats_enabled: bool = False) -> Entry:
    """``arm_smmu_make_nested_domain_ste``: the 8 STE words to install for a device
    attached to a nested domain.

    ``vste`` is ``nested_domain->ste`` (as :func:`validate_vste` returns it);
    ``s2``, ``vmid`` and ``s2fwb`` describe the vIOMMU's stage-2 parent (the
    arguments of :func:`~.entries.make_s2_domain_ste`, which is
    ``arm_smmu_make_s2_domain_ste``); ``ats_enabled`` sets EATS = TRANS as that
    function does. By the vSTE's Config (a non-valid vSTE counts as abort):

    - S1 translate: the parent's S2 STE with word 0 replaced by V, Config =
      0b111 (nested) and the vSTE's word 0 without its Config (S1ContextPtr,
      S1Fmt, S1CDMax), and word 1 or-ed with the vSTE's word 1 (S1DSS, S1CIR,
      S1COR, S1CSH, S1STALLD) and MEV (events merged, the kernel's DoS guard);
    - bypass: the parent's S2 STE unchanged (stage 1 bypassed, stage 2 applies);
    - abort, anything else: an abort STE.

    O(1).
    """
    w0, w1 = vste
    cfg = STE0["CONFIG"].get(w0) if STE0["V"].get(w0) else SteConfig.ABORT
    if cfg == SteConfig.S1_TRANS:
        ste = list(_s2_ste(s2, vmid, s2fwb, ats_enabled))
        ste[0] = STE0.encode(V=1, CONFIG=SteConfig.NESTED) | (w0 & ~STE0["CONFIG"].mask)
        ste[1] |= w1 | STE1["MEV"].mask
        return tuple(ste)
    if cfg == SteConfig.BYPASS:
        return _s2_ste(s2, vmid, s2fwb, ats_enabled)
    return make_abort_ste()


def _s2_ste(s2: ArmLpaeS2Cfg, vmid: int, s2fwb: bool, ats_enabled: bool) -> Entry:
    ste = make_s2_domain_ste(s2, vmid, s2fwb)
    if ats_enabled:
        ste = (ste[0], ste[1] | STE1.encode(EATS=_EATS_TRANS), *ste[2:])
    return ste
