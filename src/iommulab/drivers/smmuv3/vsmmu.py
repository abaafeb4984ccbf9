"""The SMMUv3 driver's vIOMMU (Linux 7.0 arm-smmu-v3-iommufd.c): ``arm_vsmmu``, its nested
domains made from a guest STE, the guest's raw invalidation commands run on the host's
command queue with the VMID and StreamIDs substituted, and guest events reported to the
vIOMMU's vEVENTQ with the virtual StreamID. 6.12 has none of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...errors import InvalidArgument, IoError, KernelError, NotSupported
from ...iommu.domain import DomainType, IommuDomain
from ...iommu.user_data import (
    IommuUserData,
    IommuUserDataArray,
    iommu_copy_struct_from_full_user_array,
    iommu_copy_struct_from_user,
)
from ...uapi import iommufd as h
from .cmds import CMDQ_BATCH_ENTRIES
from .domain import ArmSmmuDomain
from .entries import Entry, make_abort_ste
from .regs import EVT0, STE0, STE1, Cmd, Evt, SteConfig

if TYPE_CHECKING:
    from .domain import ArmSmmuMaster
    from .driver import ArmSmmuDevice

__all__ = ["IOMMU_VIOMMU_TYPE_ARM_SMMUV3", "ArmSmmuNestedDomain", "ArmVmaster", "ArmVsmmu",
           "arm_vsmmu_init", "make_nested_domain_ste", "validate_vste"]

IOMMU_VIOMMU_TYPE_ARM_SMMUV3 = h.IOMMU_VIOMMU_TYPE_ARM_SMMUV3

_GUEST_STE_BYTES = 16  # sizeof(struct iommu_hwpt_arm_smmuv3)
_CMD_BYTES = 16  # sizeof(struct iommu_viommu_arm_smmuv3_invalidate)


def _mask(layout: Any, *names: str) -> int:
    out = 0
    for name in names:
        out |= layout[name].mask
    return out


#: STRTAB_STE_0_NESTING_ALLOWED / STRTAB_STE_1_NESTING_ALLOWED (arm-smmu-v3.h): the
#: guest STE's fields a nested domain takes
STE0_NESTING_ALLOWED = _mask(STE0, "V", "CONFIG", "S1FMT", "S1CTXPTR", "S1CDMAX")
STE1_NESTING_ALLOWED = _mask(STE1, "S1DSS", "S1CIR", "S1COR", "S1CSH", "S1STALLD", "EATS")
_EATS_ABT, _EATS_TRANS = 0, 1
_CMD_OP = 0xFF
_TLBI_VMID = 0xFFFF << 32  # CMDQ_TLBI_0_VMID
_CFGI_SID = 0xFFFF_FFFF << 32  # CMDQ_CFGI_0_SID
_EVT_SID = EVT0["SID"].mask


def validate_vste(ste: list[int]) -> bool:
    """``arm_smmu_validate_vste``: a guest STE without V reads as all zeroes (abort);
    EIO for a bit outside the nesting-allowed fields, a Config other than abort, bypass
    or S1, or EATS other than abort or translate. EATS is taken out of word 1 (the
    driver sets it); whether an S1 STE enables ATS. ``ste`` is changed in place."""
    if not STE0["V"].get(ste[0]):
        ste[0] = ste[1] = 0
        return False
    if ste[0] & ~STE0_NESTING_ALLOWED or ste[1] & ~STE1_NESTING_ALLOWED:
        raise IoError(f"guest STE {ste[0]:#018x} {ste[1]:#018x}: a field nesting does not "
                      "allow")
    cfg = STE0["CONFIG"].get(ste[0])
    if cfg not in (SteConfig.ABORT, SteConfig.BYPASS, SteConfig.S1_TRANS):
        raise IoError(f"guest STE: Config {cfg} (abort, bypass or S1 only)")
    eats = STE1["EATS"].get(ste[1])
    ste[1] &= ~STE1["EATS"].mask
    if eats not in (_EATS_ABT, _EATS_TRANS):
        raise IoError(f"guest STE: EATS {eats}")
    return cfg == SteConfig.S1_TRANS and eats == _EATS_TRANS


class ArmSmmuNestedDomain(IommuDomain):
    """``struct arm_smmu_nested_domain``: the guest STE's two words (EATS cleared), on
    ``vsmmu``'s stage-2 parent. It has no ``cache_invalidate_user``: its invalidations
    go through the vIOMMU."""

    def __init__(self, vsmmu: ArmVsmmu, ste: tuple[int, int], enable_ats: bool) -> None:
        super().__init__(DomainType.NESTED, kernel=vsmmu.smmu.kernel)
        self.vsmmu = vsmmu
        self.ste = ste
        self.enable_ats = enable_ats

    @property
    def config(self) -> int:
        """The Config the physical STE takes (``arm_smmu_make_nested_domain_ste``: a
        guest STE without V is abort)."""
        if not STE0["V"].get(self.ste[0]):
            return int(SteConfig.ABORT)
        return STE0["CONFIG"].get(self.ste[0])


@dataclass(frozen=True)
class ArmVmaster:
    """``struct arm_smmu_vmaster``: a master on a nested domain of ``vsmmu``, known to the
    guest as ``vsid``."""

    vsmmu: ArmVsmmu
    vsid: int


#: EVT_ID_* the driver hands to a vmaster (the record types the uAPI lists)
VMASTER_EVENTS = frozenset({Evt.C_BAD_STE, Evt.F_STREAM_DISABLED, Evt.C_BAD_SUBSTREAMID,
                            Evt.C_BAD_CD, Evt.F_TRANSLATION, Evt.F_ADDR_SIZE, Evt.F_ACCESS,
                            Evt.F_PERMISSION})


def make_nested_domain_ste(nested: ArmSmmuNestedDomain, s2_ste: Entry) -> Entry:
    """``arm_smmu_make_nested_domain_ste`` from the parent's S2 STE (``s2_ste``, as
    ``arm_smmu_make_s2_domain_ste`` makes it): an S1 guest STE gives V, Config nested,
    the guest's word 0 (its Config out) and word 1 or-ed in with MEV; bypass the S2 STE
    itself; abort (or a guest STE without V) an abort STE. Model-only minimal builder,
    to give way to the smmuhw branch's ``nested.make_nested_domain_ste``. O(1)."""
    cfg = nested.config
    if cfg == SteConfig.S1_TRANS:
        ste = list(s2_ste)
        ste[0] = STE0.encode(V=1, CONFIG=SteConfig.NESTED) | \
            (nested.ste[0] & ~STE0["CONFIG"].mask)
        ste[1] |= nested.ste[1] | STE1["MEV"].mask
        return tuple(ste)
    if cfg == SteConfig.BYPASS:
        return s2_ste
    return make_abort_ste()


class ArmVsmmu:
    """``struct arm_vsmmu``: the vIOMMU's driver part on ``smmu`` with its stage-2
    ``s2_parent`` and that domain's ``vmid`` (``viommu``: the core's object, for the
    vDEVICE lookups and events)."""

    def __init__(self, viommu: Any, smmu: ArmSmmuDevice, s2_parent: ArmSmmuDomain) -> None:
        self.viommu = viommu
        self.smmu = smmu
        self.s2_parent = s2_parent
        self.vmid = s2_parent.vmid
        self.issued: list[tuple[int, int]] = []  # lab: the converted commands it ran

    def alloc_domain_nested(self, flags: int, user_data: IommuUserData) -> ArmSmmuNestedDomain:
        """``arm_vsmmu_alloc_domain_nested``: EOPNOTSUPP for any flag; the
        ``struct iommu_hwpt_arm_smmuv3`` (EINVAL for another type or length, EFAULT);
        :func:`validate_vste` (EIO); the domain (``kzalloc``)."""
        if flags:
            raise NotSupported(f"arm_vsmmu: nested domain flags {flags:#x}")
        raw = iommu_copy_struct_from_user(user_data, h.IOMMU_HWPT_DATA_ARM_SMMUV3,
                                          _GUEST_STE_BYTES, _GUEST_STE_BYTES)
        ste = [int.from_bytes(raw[0:8], "little"), int.from_bytes(raw[8:16], "little")]
        enable_ats = validate_vste(ste)
        self.smmu.mem.fail_nth.check("kzalloc(arm_smmu_nested_domain)")
        return ArmSmmuNestedDomain(self, (ste[0], ste[1]), enable_ats)

    def vsid_to_sid(self, vsid: int) -> int:
        """``arm_vsmmu_vsid_to_sid``: the first StreamID of the device at ``vsid`` (EIO
        for none)."""
        dev = self.viommu.find_dev(vsid)
        if dev is None:
            raise IoError(f"arm_vsmmu: no vDEVICE at vSID {vsid:#x}")
        master: ArmSmmuMaster = dev.dev_iommu.priv
        return master.sids[0]

    def convert_user_cmd(self, w0: int, w1: int) -> tuple[int, int]:
        """``arm_vsmmu_convert_user_cmd``: TLBI_NSNH_ALL becomes TLBI_NH_ALL of the VMID;
        TLBI_NH_VA/VAA/ALL/ASID get the VMID; ATC_INV, CFGI_CD and CFGI_CD_ALL get the
        physical StreamID of their vSID (EIO for an unknown one); every other opcode
        (TLBI_S2_IPA, CFGI_STE, CMD_SYNC, ...) is EIO."""
        op = w0 & _CMD_OP
        if op == Cmd.TLBI_NSNH_ALL:
            return Cmd.TLBI_NH_ALL | (self.vmid << 32), 0
        if op in (Cmd.TLBI_NH_VA, Cmd.TLBI_NH_VAA, Cmd.TLBI_NH_ALL, Cmd.TLBI_NH_ASID):
            return (w0 & ~_TLBI_VMID) | (self.vmid << 32), w1
        if op in (Cmd.ATC_INV, Cmd.CFGI_CD, Cmd.CFGI_CD_ALL):
            sid = self.vsid_to_sid(w0 >> 32)
            return (w0 & ~_CFGI_SID) | (sid << 32), w1
        raise IoError(f"arm_vsmmu: command opcode {op:#04x} is not allowed")

    def cache_invalidate(self, array: IommuUserDataArray) -> tuple[int, KernelError | None]:
        """``arm_vsmmu_cache_invalidate``: the array (``kcalloc``, ENOMEM; the whole array
        copied, EINVAL for another type or none, E2BIG, EFAULT), then each command
        converted; every CMDQ_BATCH_ENTRIES - 1 converted commands, and at the end, go
        to the command queue with a CMD_SYNC. The entries counted as done are those
        converted before an error, including the ones of a batch not yet issued (a
        kernel quirk kept). O(entries)."""
        self.smmu.mem.fail_nth.check("kcalloc(arm_vsmmu_invalidation_cmd)")
        try:
            raw = iommu_copy_struct_from_full_user_array(
                array, h.IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, _CMD_BYTES)
        except KernelError as e:
            return 0, e
        last = 0
        batch: list[tuple[int, int]] = []
        for cur, one in enumerate(raw):
            try:
                batch.append(self.convert_user_cmd(int.from_bytes(one[:8], "little"),
                                                   int.from_bytes(one[8:], "little")))
            except KernelError as e:
                return cur, e
            if cur + 1 != len(raw) and cur + 1 - last != CMDQ_BATCH_ENTRIES - 1:
                continue
            self.smmu.issue(batch, sync=True)
            self.issued.extend(batch)
            batch, last = [], cur + 1
        return len(raw), None

    def report_event(self, vsid: int, evt: tuple[int, int, int, int]) -> None:
        """``arm_vmaster_report_event``: the 32-byte event record with its StreamID
        replaced by the vSID, as IOMMU_VEVENTQ_TYPE_ARM_SMMUV3 (EOPNOTSUPP without such
        a vEVENTQ)."""
        w0 = (evt[0] & ~_EVT_SID) | EVT0["SID"].put(vsid)
        data = b"".join(w.to_bytes(8, "little") for w in (w0, *evt[1:]))
        self.viommu.report_event(h.IOMMU_VEVENTQ_TYPE_ARM_SMMUV3, data,
                                 self.smmu.mem.fail_nth)


def arm_vsmmu_init(viommu: Any, smmu: ArmSmmuDevice, parent: IommuDomain) -> ArmVsmmu:
    """``arm_vsmmu_init``: EINVAL for a parent of another SMMU; the vIOMMU takes the
    parent's VMID."""
    if not isinstance(parent, ArmSmmuDomain) or parent.smmu is not smmu:
        raise InvalidArgument("arm_vsmmu_init: the parent is not this SMMU's domain")
    return ArmVsmmu(viommu, smmu, parent)
