"""The arm-smmu-v3 driver, programming :class:`~.hw.SmmuV3Hw` through registers and memory.

Follows drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3.c of Linux 6.12 and 7.0 (``kernel``):
``arm_smmu_device_hw_probe`` (features from the ID registers),
``arm_smmu_init_structures`` and ``arm_smmu_device_reset`` (linear stream
table of abort STEs, command and event queues), ``arm_smmu_probe_device``,
``arm_smmu_domain_alloc_paging_flags`` / ``arm_smmu_domain_finalise``
(stage, ASID/VMID, io-pgtable with ``IO_PGTABLE_QUIRK_ARM_HD`` for dirty
tracking), attach (CD and STE written with ``arm_smmu_write_entry``), the
``iommu_flush_ops`` and ``iotlb_sync`` (TLBI commands built by
:mod:`.cmds`, in batches of 64 ending with CMD_SYNC), ``arm_smmu_capable``,
``arm_smmu_get_resv_regions`` and the event-queue thread.

Where the releases differ: 6.12 sizes stage-1 outputs and stage-2 inputs with
``smmu->ias`` (40 with the AArch32 table format, at least the OAS), allocates
user domains with ``arm_smmu_domain_alloc_user`` (dirty tracking only, always
stage 1 where there is one) and knows neither S2FWB nor BBML2; 7.0 uses the OAS
throughout and ``arm_smmu_domain_alloc_paging_flags`` (NEST_PARENT gives a
stage-2 nest parent, PASID a stage-1 domain). ASIDs come from the kernel's one
``arm_smmu_asid_xa``, which every SMMU of that kernel is given (``asid_xa``).
In 7.0 invalidations reach the hardware only for domains attached to a
stream (the per-domain invalidation arrays), a range of MAX_TLBI_OPS
granules or more without RIL becomes one whole-context command, and when
the last stream leaves a domain its ASID/VMID is flushed; 6.12 sends every
invalidation, attached or not, range by range however long, and flushes a
domain's tag when the domain is freed. Not modelled: ATS, PRI, stalls,
PASIDs other than 0, nesting, 2-level stream and CD tables, MSIs.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from ...errors import (
    Busy,
    InvalidArgument,
    KernelError,
    NoDevice,
    NoSpace,
    NoSuchDevice,
    NotPermitted,
    NotSupported,
    OutOfMemory,
    OutOfRange,
)
from ...iommu import (
    MSI_IOVA_BASE,
    MSI_IOVA_LENGTH,
    DomainGeometry,
    DomainType,
    IommuCap,
    IommuDomain,
    ResvRegion,
    ResvType,
)
from ...iommu.user_data import IommuUserData
from ...kernel import DEFAULT_KERNEL, LINUX_7_0, KernelVersion
from ...mem.fault import xa_nodes_needed
from ...pgtable import IoPgtableCfg, IoPgtableFmt, Quirk, alloc_io_pgtable_ops
from ...prot import Prot
from ...sizes import SZ_1G, SZ_2M, SZ_4K, SZ_16K, SZ_32M, SZ_64K, SZ_512M
from . import regs
from .cmds import (
    CMDQ_BATCH_ENTRIES,
    Command,
    cfgi_all,
    cfgi_cd,
    cfgi_ste,
    cmd_sync,
    inv_size_too_big,
    prefetch_cfg,
    tlbi_context,
    tlbi_range,
)
from .domain import (
    HWPT_ALLOC_DIRTY_TRACKING,
    HWPT_ALLOC_NEST_PARENT,
    HWPT_ALLOC_PASID,
    ArmSmmuDirtyOps,
    ArmSmmuDomain,
    ArmSmmuDomainOps,
    ArmSmmuFlushOps,
    ArmSmmuMaster,
)
from .entries import (
    ENTRY_QWORDS,
    Entry,
    cd_used,
    make_abort_ste,
    make_bypass_ste,
    make_cdtable_ste,
    make_s1_cd,
    make_s2_domain_ste,
    ste_used,
    write_entry,
)
from .events import SmmuEvent, decode_event
from .hw import OAS_BITS, SmmuV3Hw
from .regs import Cmd, Reg, SteConfig
from .vsmmu import (
    IOMMU_VIOMMU_TYPE_ARM_SMMUV3,
    VMASTER_EVENTS,
    ArmSmmuNestedDomain,
    ArmVmaster,
    arm_vsmmu_init,
    make_nested_domain_ste,
)

__all__ = ["ArmSmmuDevice", "Feature"]


def _paging_of(domain: IommuDomain | None) -> ArmSmmuDomain | None:
    """The paging domain whose invalidations reach a master on ``domain``: itself, or a
    nested domain's stage-2 parent (``to_smmu_domain_devices``)."""
    if isinstance(domain, ArmSmmuNestedDomain):
        return domain.vsmmu.s2_parent
    return domain if isinstance(domain, ArmSmmuDomain) else None

_PAGING_FLAGS = HWPT_ALLOC_DIRTY_TRACKING | HWPT_ALLOC_PASID | HWPT_ALLOC_NEST_PARENT
_USER_FLAGS_6_12 = HWPT_ALLOC_DIRTY_TRACKING  # arm_smmu_domain_alloc_user's PAGING_FLAGS
_CMDQ_MAX_SZ_SHIFT = 22 - 4  # Q_MAX_SZ_SHIFT (PAGE_SHIFT + MAX_PAGE_ORDER) - CMDQ_ENT_SZ_SHIFT
_EVTQ_MAX_SZ_SHIFT = 22 - 5
_Q_BASE_RWA = 1 << 62
_STRTAB_BASE_RA = 1 << 62
_STE_BYTES = 8 * ENTRY_QWORDS


def _refuse_user_data(user_data: IommuUserData | None) -> None:
    """A paging domain takes no driver data (``if (user_data) return -EOPNOTSUPP``)."""
    if user_data is not None:
        raise NotSupported(f"domain_alloc_paging_flags: driver data of type "
                           f"{user_data.type:#x} for a paging domain")


class Feature(enum.IntFlag):
    """``ARM_SMMU_FEAT_*`` (the ones the model derives from the ID registers)."""

    TT_LE = 1 << 2
    TT_BE = 1 << 3
    SEV = 1 << 6
    COHERENCY = 1 << 8
    TRANS_S1 = 1 << 9
    TRANS_S2 = 1 << 10
    STALLS = 1 << 11
    STALL_FORCE = 1 << 13
    VAX = 1 << 14
    RANGE_INV = 1 << 15
    NESTING = 1 << 19
    HA = 1 << 21
    HD = 1 << 22
    S2FWB = 1 << 23
    BBML2 = 1 << 24


class ArmSmmuDevice:
    """``struct arm_smmu_device``: probe the hardware, then serve domains and devices.

    ``va_bits`` and ``cpu_page_size`` are the kernel's VA_BITS (a stage-1
    domain's ias is at most that) and PAGE_SIZE (which picks the granule of
    every domain's page table). ``asid_xa`` is the kernel's ``arm_smmu_asid_xa``
    (ASID -> stage-1 domain), a file-global xarray: one ASID space for every SMMU
    the kernel drives, so the SMMUs of one machine are given the same dict; without
    it the SMMU has one of its own, as the only SMMU of its kernel. Lab option
    ``sync_dirty_clear``: make ``iotlb_sync`` invalidate a gathered range even when
    no page size was gathered, which the kernel does not do (see the README on
    dirty tracking).
    """

    def __init__(self, hw: SmmuV3Hw, *, va_bits: int = 48, cpu_page_size: int = SZ_4K,
                 sync_dirty_clear: bool = False, kernel: KernelVersion = DEFAULT_KERNEL,
                 asid_xa: dict[int, ArmSmmuDomain] | None = None) -> None:
        self.hw = hw
        self.kernel = kernel
        self.mem = hw.mem
        self.va_bits = va_bits
        self.cpu_page_size = cpu_page_size
        self.sync_dirty_clear = sync_dirty_clear
        self.features = Feature(0)
        self.ias = self.oas = 0
        self.asid_bits = self.vmid_bits = self.sid_bits = self.ssid_bits = 0
        self.pgsize_bitmap = 0
        self.bbml = 0
        self.log: list[str] = []  # what the kernel would print (dev_err/dev_warn/dev_info)
        self.events: list[SmmuEvent] = []
        self.masters: dict[int, ArmSmmuMaster] = {}  # by StreamID (the kernel's rb-tree)
        self.asid_xa: dict[int, ArmSmmuDomain] = {} if asid_xa is None else asid_xa
        self.vmids: set[int] = set()  # smmu->vmid_map
        self.blocked_domain = IommuDomain(DomainType.BLOCKED)
        self.identity_domain = IommuDomain(DomainType.IDENTITY)
        self.default_domain: IommuDomain | None = None  # DMA domains are allocated
        self._allocated: list[int] = []  # devm-managed DMA memory, by PA
        self._hw_probe()
        try:
            self._init_structures()
        except KernelError:  # devres frees what the failed probe allocated
            self._free_allocated()
            raise
        self._device_reset()

    @property
    def asids(self) -> dict[int, ArmSmmuDomain]:
        """This SMMU's entries of ``asid_xa``."""
        return {asid: d for asid, d in self.asid_xa.items() if d.smmu is self}

    # -- probe -----------------------------------------------------------------------------
    def _hw_probe(self) -> None:
        """``arm_smmu_device_hw_probe``: features, sizes and page sizes from the IDRs."""
        hw, f = self.hw, Feature(0)
        idr0 = hw.read_reg(Reg.IDR0)
        endian = regs.IDR0["TTENDIAN"].get(idr0)
        f |= {0: Feature.TT_LE | Feature.TT_BE, 2: Feature.TT_LE, 3: Feature.TT_BE}.get(
            endian, Feature(0))
        if not f & Feature.TT_LE:
            raise self._probe_error("does not implement little-endian table walks")
        if regs.IDR0["SEV"].get(idr0):
            f |= Feature.SEV
        stall = regs.IDR0["STALL_MODEL"].get(idr0)
        if stall in (0, 2):
            f |= Feature.STALLS | (Feature.STALL_FORCE if stall == 2 else Feature(0))
        if regs.IDR0["S1P"].get(idr0):
            f |= Feature.TRANS_S1
        if regs.IDR0["S2P"].get(idr0):
            f |= Feature.TRANS_S2
        if not f & (Feature.TRANS_S1 | Feature.TRANS_S2):
            raise self._probe_error("no translation support!")
        ttf = regs.IDR0["TTF"].get(idr0)
        if ttf == 3:
            self.ias = 40
        elif ttf != 2:
            raise self._probe_error("AArch64 table format not supported!")
        self.asid_bits = 16 if regs.IDR0["ASID16"].get(idr0) else 8
        self.vmid_bits = 16 if regs.IDR0["VMID16"].get(idr0) else 8
        httu = regs.IDR0["HTTU"].get(idr0)  # arm_smmu_get_httu, firmware from DT
        if httu in (1, 2):
            f |= Feature.HA | (Feature.HD if httu == 2 else Feature(0))
        if hw.config.coherent:  # "dma-coherent" in the firmware description
            f |= Feature.COHERENCY
        if bool(regs.IDR0["COHACC"].get(idr0)) != hw.config.coherent:
            self.log.append("IDR0.COHACC overridden by FW configuration")

        idr1 = hw.read_reg(Reg.IDR1)
        self.cmdq_shift = min(_CMDQ_MAX_SZ_SHIFT, regs.IDR1["CMDQS"].get(idr1))
        if self.cmdq_shift <= CMDQ_BATCH_ENTRIES.bit_length() - 1:
            raise self._probe_error(f"command queue size <= {CMDQ_BATCH_ENTRIES} entries "
                                    "not supported")
        self.evtq_shift = min(_EVTQ_MAX_SZ_SHIFT, regs.IDR1["EVTQS"].get(idr1))
        self.ssid_bits = regs.IDR1["SSIDSIZE"].get(idr1)
        self.sid_bits = regs.IDR1["SIDSIZE"].get(idr1)

        idr3 = hw.read_reg(Reg.IDR3)
        if regs.IDR3["RIL"].get(idr3):
            f |= Feature.RANGE_INV
        self.bbml = regs.IDR3["BBML"].get(idr3)  # lab: the split/merge BBM level
        if self.kernel >= LINUX_7_0:  # 6.12 reads neither IDR3.FWB nor IDR3.BBM
            if regs.IDR3["FWB"].get(idr3):
                f |= Feature.S2FWB
            if self.bbml == 2:
                f |= Feature.BBML2

        idr5 = hw.read_reg(Reg.IDR5)
        if regs.IDR5["GRAN64K"].get(idr5):
            self.pgsize_bitmap |= SZ_64K | SZ_512M
        if regs.IDR5["GRAN16K"].get(idr5):
            self.pgsize_bitmap |= SZ_16K | SZ_32M
        if regs.IDR5["GRAN4K"].get(idr5):
            self.pgsize_bitmap |= SZ_4K | SZ_2M | SZ_1G
        if regs.IDR5["VAX"].get(idr5) == 1:
            f |= Feature.VAX
        oas = regs.IDR5["OAS"].get(idr5)
        if oas >= len(OAS_BITS):
            self.log.append("unknown output address size. Truncating to 48-bit")
            oas = OAS_BITS.index(48)
        self.oas = OAS_BITS[oas]
        if self.oas == 52:
            self.pgsize_bitmap |= 1 << 42  # 4TB
        # smmu->ias (6.12 only; 7.0 has no ias and sizes everything by the OAS).
        self.ias = max(self.ias, self.oas)
        if f & Feature.TRANS_S1 and f & Feature.TRANS_S2:
            f |= Feature.NESTING
        self.features = f

    def _probe_error(self, message: str) -> NoSuchDevice:
        self.log.append(message)
        return NoSuchDevice(f"arm-smmu-v3 probe: {message}")

    def _dma_alloc(self, size: int, what: str) -> tuple[int, npt.NDArray[np.uint64]]:
        try:
            pa, words = self.mem.alloc_dma_coherent(size)
        except OutOfMemory:
            self.log.append(f"failed to allocate {what} ({size:#x} bytes)")
            raise
        self._allocated.append(pa)
        return pa, words

    def _init_queue(self, shift: int, entry_dwords: int, what: str) -> tuple[int, int]:
        """``arm_smmu_init_one_queue``: halve the queue until it fits, down to a page."""
        while True:
            size = ((1 << shift) * entry_dwords) << 3
            try:
                pa, _ = self.mem.alloc_dma_coherent(size)
            except OutOfMemory:
                if size < SZ_4K:
                    self.log.append(f"failed to allocate queue ({size:#x} bytes) for {what}")
                    raise
                shift -= 1
                continue
            self._allocated.append(pa)
            return pa, shift

    def _init_structures(self) -> None:
        """Queues and the linear stream table of abort STEs (``arm_smmu_init_structures``)."""
        self.cmdq_pa, self.cmdq_shift = self._init_queue(self.cmdq_shift, 2, "cmdq")
        self.evtq_pa, self.evtq_shift = self._init_queue(self.evtq_shift, 4, "evtq")
        self.cmdq_prod = 0
        nents = 1 << self.sid_bits
        self.strtab_pa, self.strtab = self._dma_alloc(nents * _STE_BYTES,
                                                      "linear stream table")
        abort = np.array(make_abort_ste(), dtype=np.uint64)
        self.strtab[:nents * ENTRY_QWORDS] = np.tile(abort, nents)  # not live yet: no syncs

    def _device_reset(self) -> None:
        """``arm_smmu_device_reset``: program the tables and queues, invalidate, enable."""
        hw = self.hw
        if hw.read_reg(Reg.CR0) & regs.CR0_SMMUEN:
            self.log.append("SMMU currently enabled! Resetting...")
        hw.write_reg(Reg.CR0, 0)
        hw.write_reg(Reg.STRTAB_BASE, _STRTAB_BASE_RA | self.strtab_pa)
        hw.write_reg(Reg.STRTAB_BASE_CFG, self.sid_bits)  # FMT linear, LOG2SIZE
        hw.write_reg(Reg.CMDQ_BASE, _Q_BASE_RWA | self.cmdq_pa | self.cmdq_shift)
        hw.write_reg(Reg.CMDQ_PROD, 0)  # CONS belongs to the SMMU (0 after reset)
        enables = regs.CR0_CMDQEN
        hw.write_reg(Reg.CR0, enables)
        self.issue([cfgi_all()], sync=True)
        self.issue([tlbi_context(Cmd.TLBI_NSNH_ALL)], sync=True)
        hw.write_reg(Reg.EVTQ_BASE, _Q_BASE_RWA | self.evtq_pa | self.evtq_shift)
        hw.write_reg(Reg.EVTQ_CONS, 0)  # PROD belongs to the SMMU
        enables |= regs.CR0_EVTQEN | regs.CR0_SMMUEN
        hw.write_reg(Reg.CR0, enables)

    # -- command queue ---------------------------------------------------------------------
    def issue(self, cmds: Iterable[Command], sync: bool = True) -> None:
        """``arm_smmu_cmdq_issue_cmdlist``: write commands at PROD, then publish PROD.

        The model's SMMU consumes them when PROD is written, so the queue is
        empty again on return (a CMD_SYNC completes at once).
        """
        words = list(cmds)
        if sync:
            words.append(cmd_sync())
        shift, prod = self.cmdq_shift, self.cmdq_prod
        for w0, w1 in words:
            slot = self.cmdq_pa + ((prod & ((1 << shift) - 1)) << 4)
            self.mem.write_u64(slot, w0)
            self.mem.write_u64(slot + 8, w1)
            prod = (prod + 1) & ((2 << shift) - 1)
        self.cmdq_prod = prod
        self.hw.write_reg(Reg.CMDQ_PROD, prod)
        if self.hw.cmdq_error:
            self._gerror_handler()

    def submit(self, cmds: list[Command]) -> None:
        """A command batch: full batches of 64 go out unsynced, the last with CMD_SYNC."""
        for start in range(0, len(cmds) - CMDQ_BATCH_ENTRIES, CMDQ_BATCH_ENTRIES):
            self.issue(cmds[start:start + CMDQ_BATCH_ENTRIES], sync=False)
        tail = len(cmds) % CMDQ_BATCH_ENTRIES or min(len(cmds), CMDQ_BATCH_ENTRIES)
        self.issue(cmds[len(cmds) - tail:], sync=True)

    def _gerror_handler(self) -> None:
        """``arm_smmu_gerror_handler`` with ``__arm_smmu_cmdq_skip_err`` for CERROR_ILL."""
        cons = self.hw.read_reg(Reg.CMDQ_CONS)
        err = (cons >> regs.CMDQ_CONS_ERR_SHIFT) & 0x7F
        self.log.append(f"CMDQ error (cons {cons:#010x}): "
                        f"{'Illegal command' if err == regs.CMDQ_ERR_CERROR_ILL else err}")
        slot = self.cmdq_pa + ((cons & ((1 << self.cmdq_shift) - 1)) << 4)
        bad = self.mem.read_u64(slot), self.mem.read_u64(slot + 8)
        self.log.append(f"skipping command in error state: {bad[0]:#018x} {bad[1]:#018x}")
        w0, w1 = cmd_sync()  # convert the erroneous command into a CMD_SYNC
        self.mem.write_u64(slot, w0)
        self.mem.write_u64(slot + 8, w1)
        self.hw.write_reg(Reg.GERRORN, self.hw.read_reg(Reg.GERROR))  # acknowledge: resumes

    # -- invalidation -------------------------------------------------------------------------
    def domain_inv_range(self, domain: ArmSmmuDomain, iova: int, size: int, granule: int,
                         leaf: bool) -> None:
        """Invalidate ``size`` bytes at ``iova`` of ``domain``'s ASID or VMID.

        7.0, ``arm_smmu_domain_inv_range``: only while a stream is attached (else the
        invalidation array is empty), by range, or one whole-context command when the
        range is too big (``arm_smmu_inv_size_too_big``), followed for a nest parent
        by TLBI_NH_ALL of its VMID (its nested stage-1 entries; S12_VMALL covers
        them when the range is too big). 6.12,
        ``arm_smmu_tlb_inv_range_domain``: whether or not anything is attached, always
        by range however long (``__arm_smmu_tlb_inv_range``; nothing for size 0).
        """
        if self.kernel < LINUX_7_0:
            if size:
                self.submit(self._range_commands(domain, iova, size, granule, leaf))
        elif domain.masters:
            self.submit(self._inv_commands(domain, iova, size, granule, leaf))
            if domain.nest_parent and not inv_size_too_big(
                    size, granule, bool(self.features & Feature.RANGE_INV)):
                # INV_TYPE_S2_VMID_S1_CLEAR, in a batch of its own after the S2 one
                # (arm_smmu_invs_end_batch): the nested stage-1 entries of the VMID
                self.submit([tlbi_context(Cmd.TLBI_NH_ALL, vmid=domain.vmid)])

    def _inv_commands(self, domain: ArmSmmuDomain, iova: int, size: int, granule: int,
                      leaf: bool) -> list[Command]:
        """``arm_smmu_inv_to_cmdq_batch`` for the domain's ASID or VMID (7.0)."""
        if inv_size_too_big(size, granule, bool(self.features & Feature.RANGE_INV)):
            return [self._context_command(domain)]
        return self._range_commands(domain, iova, size, granule, leaf)

    def _range_commands(self, domain: ArmSmmuDomain, iova: int, size: int, granule: int,
                        leaf: bool) -> list[Command]:
        """TLBI_NH_VA (stage 1) or TLBI_S2_IPA (stage 2) commands covering the range."""
        pgshift = (domain.pgsize_bitmap & -domain.pgsize_bitmap).bit_length() - 1
        ril = bool(self.features & Feature.RANGE_INV)
        if domain.stage == 1:
            return tlbi_range(Cmd.TLBI_NH_VA, iova, size, granule, pgshift, leaf, ril=ril,
                              asid=domain.asid)
        return tlbi_range(Cmd.TLBI_S2_IPA, iova, size, granule, pgshift, leaf, ril=ril,
                          vmid=domain.vmid)

    @staticmethod
    def _context_command(domain: ArmSmmuDomain) -> Command:
        """TLBI_NH_ASID (stage 1) or TLBI_S12_VMALL (stage 2) of the domain's tag."""
        if domain.stage == 1:
            return tlbi_context(Cmd.TLBI_NH_ASID, asid=domain.asid)
        return tlbi_context(Cmd.TLBI_S12_VMALL, vmid=domain.vmid)

    def tlb_inv_context(self, domain: ArmSmmuDomain) -> None:
        """``arm_smmu_tlb_inv_context``: NH_ASID (stage 1) or S12_VMALL (stage 2), synced;
        in 6.12 (``arm_smmu_tlb_inv_asid``) whether or not a stream is attached."""
        if self.kernel < LINUX_7_0:
            self.issue([self._context_command(domain)], sync=True)
        else:
            self.domain_inv_range(domain, 0, 0, 0, leaf=False)

    # -- devices ------------------------------------------------------------------------------
    def probe_device(self, sids: int | Iterable[int]) -> ArmSmmuMaster:
        """``arm_smmu_probe_device`` / ``arm_smmu_insert_master`` for a device's StreamIDs.

        ERANGE for a StreamID beyond the stream table; for one another device
        already has, ENODEV ("Aliasing StreamID ... unsupported", 7.0) or EINVAL
        ("stream ... already in tree", 6.12). The device's STEs stay abort until it
        is attached.
        """
        ids = tuple(sorted({sids} if isinstance(sids, int) else set(sids)))
        if not ids:
            raise InvalidArgument("probe_device: no StreamIDs")
        for sid in ids:
            if not 0 <= sid < 1 << self.sid_bits:
                raise OutOfRange(f"probe_device: StreamID {sid:#x} is beyond the stream "
                                 f"table ({1 << self.sid_bits} entries)")
            if sid in self.masters:
                if self.kernel < LINUX_7_0:  # arm_smmu_insert_master, 6.12
                    self.log.append(f"stream {sid} already in tree")
                    raise InvalidArgument(f"probe_device: StreamID {sid:#x} belongs to "
                                          "another device")
                self.log.append(f"Aliasing StreamID {sid:#x} unsupported, expect DMA to be "
                                "broken")
                raise NoDevice(f"probe_device: StreamID {sid:#x} belongs to another device")
        master = ArmSmmuMaster(self, ids)
        for sid in ids:
            self.masters[sid] = master
        return master

    def release_device(self, master: ArmSmmuMaster) -> None:
        """``arm_smmu_release_device``: block the streams, forget them, free the CD table."""
        self.attach_dev(self.blocked_domain, master)
        for sid in master.sids:
            del self.masters[sid]
        if master.cd_table_pa is not None:
            self._allocated.remove(master.cd_table_pa)
            self.mem.free_zeroed(master.cd_table_pa)
            master.cd_table_pa = master.cd_table = None

    def capable(self, master: ArmSmmuMaster, cap: IommuCap) -> bool:
        """``arm_smmu_capable``."""
        if cap == IommuCap.CACHE_COHERENCY:
            return bool(self.features & Feature.COHERENCY)
        if cap in (IommuCap.NOEXEC, IommuCap.DEFERRED_FLUSH):
            return True
        if cap == IommuCap.DIRTY_TRACKING:  # arm_smmu_dbm_capable
            need = Feature.HD | Feature.COHERENCY
            return self.features & need == need
        return False

    def get_resv_regions(self, master: ArmSmmuMaster) -> list[ResvRegion]:
        """``arm_smmu_get_resv_regions``: the software MSI window (no firmware regions),
        left out when its ``iommu_alloc_resv_region`` fails (no error is reported)."""
        if self.mem.fail_nth.fails("iommu_alloc_resv_region(SW_MSI)"):
            return []
        return [ResvRegion(MSI_IOVA_BASE, MSI_IOVA_LENGTH,
                           Prot.WRITE | Prot.NOEXEC | Prot.MMIO, ResvType.SW_MSI)]

    # -- domains ------------------------------------------------------------------------------
    @property
    def has_domain_alloc_nested(self) -> bool:
        """Whether ``arm_smmu_ops`` has the op a nested HWPT is allocated with: 6.12's
        ``domain_alloc_user`` takes a parent (and refuses it); 7.0 has no
        ``domain_alloc_nested``, its nesting goes through a vIOMMU."""
        return self.kernel < LINUX_7_0

    # -- Linux 7.0's vIOMMU (arm-smmu-v3-iommufd.c, :mod:`.vsmmu`) --------------------------
    def get_viommu_size(self, master: ArmSmmuMaster, viommu_type: int) -> int:
        """``arm_smmu_get_viommu_size``: 0 (no vIOMMU) without ARM_SMMU_FEAT_NESTING, or
        when the VM could bypass the cache (neither a coherent device, ``canwbs``, nor
        S2FWB), or for a type other than ARM_SMMUV3 (no impl ops in the model)."""
        f = self.features
        if not f & Feature.NESTING or not f & (Feature.COHERENCY | Feature.S2FWB):
            return 0
        return 1 if viommu_type == IOMMU_VIOMMU_TYPE_ARM_SMMUV3 else 0

    def viommu_init(self, viommu: Any, parent: IommuDomain,
                    user_data: IommuUserData | None) -> Any:
        """``arm_vsmmu_init``: the vIOMMU's ops (an :class:`.vsmmu.ArmVsmmu`)."""
        return arm_vsmmu_init(viommu, self, parent)

    def domain_alloc_paging_flags(self, master: ArmSmmuMaster, flags: int = 0,
                                  user_data: IommuUserData | None = None, *,
                                  type: DomainType = DomainType.UNMANAGED) -> ArmSmmuDomain:
        """A paging domain for iommufd's HWPT_ALLOC ``flags`` (``IOMMU_HWPT_ALLOC_*``, passed
        as the user gave them, FAULT_ID_VALID taken out), then ``arm_smmu_domain_finalise``.

        7.0, ``arm_smmu_domain_alloc_paging_flags``: 0 is stage 1 where there is one;
        NEST_PARENT alone a stage-2 nest parent (EOPNOTSUPP without nesting);
        DIRTY_TRACKING and/or PASID stage 1 (EOPNOTSUPP without it); any other
        combination, NEST_PARENT|DIRTY_TRACKING among them, EOPNOTSUPP. 6.12,
        ``arm_smmu_domain_alloc_user``: any flag but DIRTY_TRACKING is EOPNOTSUPP
        (NEST_PARENT and PASID included); the domain is stage 1 unless the SMMU has
        only stage 2, where dirty tracking is EOPNOTSUPP. Both refuse driver data
        (EOPNOTSUPP) right after the unknown flags. Both: ENOMEM when the page table
        cannot be allocated, EBUSY when ASIDs or ENOSPC when VMIDs run out.
        """
        if self.kernel < LINUX_7_0:
            return self._domain_alloc_user(flags, user_data, type)
        if flags & ~_PAGING_FLAGS:
            raise NotSupported(f"domain_alloc_paging_flags: unknown flags {flags:#x}")
        _refuse_user_data(user_data)
        f = self.features
        if flags == 0:
            stage = 1 if f & Feature.TRANS_S1 else 2
        elif flags == HWPT_ALLOC_NEST_PARENT:
            if not f & Feature.NESTING:
                raise NotSupported("domain_alloc_paging_flags: no nesting support")
            stage = 2
        elif flags in (HWPT_ALLOC_DIRTY_TRACKING, HWPT_ALLOC_DIRTY_TRACKING | HWPT_ALLOC_PASID,
                       HWPT_ALLOC_PASID):
            if not f & Feature.TRANS_S1:
                raise NotSupported(f"domain_alloc_paging_flags: flags {flags:#x} need "
                                   "stage 1")
            stage = 1
        else:
            raise NotSupported(f"domain_alloc_paging_flags: flags {flags:#x} not supported "
                               "together")
        self.mem.fail_nth.check("kzalloc(arm_smmu_domain)")
        domain = ArmSmmuDomain(type, stage, kernel=self.kernel)
        domain.nest_parent = flags == HWPT_ALLOC_NEST_PARENT
        self._finalise(domain, flags)
        return domain

    def _domain_alloc_user(self, flags: int, user_data: IommuUserData | None,
                           type: DomainType) -> ArmSmmuDomain:
        """``arm_smmu_domain_alloc_user`` (6.12) without a parent."""
        if flags & ~_USER_FLAGS_6_12:
            raise NotSupported(f"domain_alloc_user: flags {flags:#x} not supported (only "
                               f"IOMMU_HWPT_ALLOC_DIRTY_TRACKING {_USER_FLAGS_6_12:#x})")
        _refuse_user_data(user_data)
        # stage 0 from kzalloc is S1; arm_smmu_domain_finalise falls back to what exists
        stage = 1 if self.features & Feature.TRANS_S1 else 2
        self.mem.fail_nth.check("kzalloc(arm_smmu_domain)")
        domain = ArmSmmuDomain(type, stage, kernel=self.kernel)
        self._finalise(domain, flags)
        return domain

    def domain_alloc_paging(self, master: ArmSmmuMaster,
                            type: DomainType = DomainType.DMA) -> ArmSmmuDomain:
        """``domain_alloc_paging``: a default (DMA) domain, stage 1 if there is one."""
        return self.domain_alloc_paging_flags(master, 0, type=type)

    def enable_nesting(self, domain: ArmSmmuDomain) -> None:
        """``arm_smmu_enable_nesting`` (Linux 6.12, for VFIO_TYPE1_NESTING_IOMMU; gone in
        6.13): EPERM once the domain is bound to an SMMU, which ``domain_alloc_paging``
        with a device (VFIO's case) already did; else the domain becomes stage 2."""
        if domain.smmu is not None:
            raise NotPermitted("enable_nesting: the domain is already finalised")
        domain.stage = 2

    def _finalise(self, domain: ArmSmmuDomain, flags: int) -> None:
        """``arm_smmu_domain_finalise``: the io-pgtable sizes are, in 6.12, stage 1 ias
        (48, or 52 with VAX, at most VA_BITS) and oas ``smmu->ias``, stage 2 ias
        ``smmu->ias`` and oas the OAS; in 7.0 the OAS wherever 6.12 has ``smmu->ias``."""
        dirty = bool(flags & HWPT_ALLOC_DIRTY_TRACKING)
        quirks = Quirk(0)
        ias_6_12 = self.kernel < LINUX_7_0
        oas = self.oas
        if domain.stage == 1:
            ias = min(52 if self.features & Feature.VAX else 48, self.va_bits)
            oas = self.ias if ias_6_12 else self.oas
            fmt = IoPgtableFmt.ARM_64_LPAE_S1
            if dirty:
                quirks |= Quirk.ARM_HD
        else:
            if dirty:
                raise NotSupported("dirty tracking is not supported on stage 2")
            ias = self.ias if ias_6_12 else self.oas
            fmt = IoPgtableFmt.ARM_64_LPAE_S2
            if self.features & Feature.S2FWB and flags & HWPT_ALLOC_NEST_PARENT:
                quirks |= Quirk.ARM_S2FWB
        cfg = IoPgtableCfg(self.pgsize_bitmap, ias, oas, quirks=quirks,
                           coherent_walk=bool(self.features & Feature.COHERENCY),
                           tlb=ArmSmmuFlushOps(), kernel=self.kernel)
        try:
            pgtbl = alloc_io_pgtable_ops(fmt, cfg, domain, mem=self.mem,
                                         cpu_page_size=self.cpu_page_size)
        except KernelError as err:  # alloc_io_pgtable_ops returned NULL
            raise OutOfMemory(f"domain_finalise: no page table ({err})") from err
        domain.ops = ArmSmmuDomainOps(pgtbl)
        domain.pgtbl = pgtbl
        domain.pgsize_bitmap = pgtbl.cfg.pgsize_bitmap
        domain.geometry = DomainGeometry(0, (1 << pgtbl.cfg.ias) - 1, True)
        domain.max_bbm_level = self.bbml
        if dirty:
            domain.dirty_ops = ArmSmmuDirtyOps()
        domain.enable_single_fast()  # lab: one-page map/unmap without the layered calls
        try:
            self._alloc_tag(domain)
        except KernelError:
            pgtbl.free()
            raise
        domain.smmu = self

    def _alloc_tag(self, domain: ArmSmmuDomain) -> None:
        """``arm_smmu_domain_finalise_s1/_s2``: the lowest free ASID / VMID from 1."""
        if domain.stage == 1:  # xa_alloc(&arm_smmu_asid_xa, ..., XA_LIMIT(1, max))
            limit, xa = 1 << self.asid_bits, self.asid_xa
            asid = next((a for a in range(1, limit) if a not in xa), None)
            if asid is None:
                raise Busy(f"domain_finalise: all {limit - 1} ASIDs are in use "
                           f"({len(self.asids)} by this SMMU)")
            self.mem.fail_nth.xa_nodes("arm_smmu_asid_xa", xa_nodes_needed(
                np.array(sorted(xa), dtype=np.int64), asid, asid))
            xa[asid] = domain
            domain.asid = asid
        else:
            limit = 1 << self.vmid_bits
            vmid = next((v for v in range(1, limit) if v not in self.vmids), None)
            if vmid is None:  # ida_alloc_range
                raise NoSpace(f"domain_finalise: all {limit - 1} VMIDs are in use")
            self.vmids.add(vmid)
            domain.vmid = vmid

    def release_tag(self, domain: ArmSmmuDomain) -> None:
        """Give a freed domain's ASID (``arm_smmu_asid_xa``) or VMID back."""
        if domain.stage == 1:
            if self.asid_xa.get(domain.asid) is domain:
                del self.asid_xa[domain.asid]
        else:
            self.vmids.discard(domain.vmid)

    # -- attach -------------------------------------------------------------------------------
    def attach_dev(self, domain: IommuDomain, master: ArmSmmuMaster) -> None:
        """Attach ``master`` to a paging, blocked or identity domain.

        ``arm_smmu_attach_dev`` (CD for SSID 0 then a CD-table STE, or an S2
        STE), ``arm_smmu_attach_dev_blocked`` (abort STE) and
        ``arm_smmu_attach_dev_identity`` (bypass STE); every attach but stage 1
        then clears CD 0 if the device has a CD table (``arm_smmu_clear_cd``: an
        S2 attach right after its STE, blocked and identity after the commit).
        EINVAL for a domain of another SMMU, ENOMEM when the CD table cannot be
        allocated.
        """
        if master.smmu is not self:
            raise InvalidArgument(f"attach_dev: {master!r} is not behind this SMMU")
        vmaster = None
        if domain.type == DomainType.BLOCKED:
            target = make_abort_ste()
        elif domain.type == DomainType.IDENTITY:
            target = make_bypass_ste()
        elif isinstance(domain, ArmSmmuDomain) and domain.pgtbl is not None:
            if domain.smmu is not self:
                raise InvalidArgument(f"attach_dev: {domain!r} belongs to another SMMU")
            target = self._paging_ste(domain, master)
            # arm_smmu_attach_prepare (6.12 and 7.0): the master on the domain's list
            self.mem.fail_nth.check("kzalloc(arm_smmu_master_domain)")
        elif isinstance(domain, ArmSmmuNestedDomain):
            target, vmaster = self._nested_ste(domain, master)
        else:
            raise InvalidArgument(f"attach_dev: cannot attach {domain!r}")
        for sid in master.sids:
            self._write_ste(sid, target)
        master.vmaster = vmaster  # arm_smmu_attach_commit_vmaster (None off a nested domain)
        stage2 = isinstance(domain, ArmSmmuDomain) and domain.stage == 2
        if stage2 or isinstance(domain, ArmSmmuNestedDomain):
            self._clear_cd(master)
        old = _paging_of(master.domain)
        master.domain = domain
        new = _paging_of(domain)
        if new is not None and master not in new.masters:
            new.masters.append(master)
        if old is not None and old is not new:
            old.masters.remove(master)
            if not old.masters and self.kernel >= LINUX_7_0:
                # arm_smmu_install_old_domain_invs: the tag left the last invalidation
                # array, so it is flushed now (6.12 flushes nothing on detach)
                self.submit([self._context_command(old)])
        if not isinstance(domain, ArmSmmuDomain):  # blocked, identity
            self._clear_cd(master)

    def _nested_ste(self, domain: ArmSmmuNestedDomain, master: ArmSmmuMaster
                    ) -> tuple[Entry, ArmVmaster | None]:
        """``arm_smmu_attach_dev_nested`` (7.0) up to the STE: EINVAL for a vIOMMU of
        another SMMU; ``arm_smmu_attach_prepare_vmaster``: the device's vSID on the
        vIOMMU, which an S1 nested domain requires (ENOENT without a vDEVICE; abort and
        bypass attach without one), the vmaster (``kzalloc``); the master on the
        parent's list (``kzalloc``); the nested STE over the parent's S2 STE."""
        vsmmu = domain.vsmmu
        if vsmmu.smmu is not self:
            raise InvalidArgument("attach_dev: the nested domain's vIOMMU is another SMMU's")
        vmaster = None
        try:
            vsid = vsmmu.viommu.get_vdev_id(master)
        except KernelError:
            if domain.config not in (SteConfig.ABORT, SteConfig.BYPASS):
                raise
        else:
            self.mem.fail_nth.check("kzalloc(arm_smmu_vmaster)")
            vmaster = ArmVmaster(vsmmu, vsid)
        self.mem.fail_nth.check("kzalloc(arm_smmu_master_domain)")
        return make_nested_domain_ste(domain, self._paging_ste(vsmmu.s2_parent, master)), \
            vmaster

    def _clear_cd(self, master: ArmSmmuMaster) -> None:
        """``arm_smmu_clear_cd(master, IOMMU_NO_PASID)``: a zero CD 0, if there is a table."""
        if master.cd_table is not None:
            write_entry(master.cd_table[:ENTRY_QWORDS], (0,) * ENTRY_QWORDS, cd_used,
                        lambda: self.submit([cfgi_cd(sid) for sid in master.sids]))

    def _paging_ste(self, domain: ArmSmmuDomain, master: ArmSmmuMaster) -> Entry:
        pgtbl = domain.pgtbl
        assert pgtbl is not None
        if domain.stage == 2:
            s2 = pgtbl.cfg.arm_lpae_s2_cfg
            assert s2 is not None
            return make_s2_domain_ste(s2, domain.vmid,
                                      bool(pgtbl.cfg.quirks & Quirk.ARM_S2FWB))
        s1 = pgtbl.cfg.arm_lpae_s1_cfg
        assert s1 is not None
        if master.cd_table_pa is None:  # arm_smmu_alloc_cd_tables: one CD (SSID 0 only)
            master.cd_table_pa, master.cd_table = self._dma_alloc(_STE_BYTES, "CD table")
        assert master.cd_table is not None
        cd = make_s1_cd(s1, domain.asid, bool(pgtbl.cfg.quirks & Quirk.ARM_HD))
        write_entry(master.cd_table[:ENTRY_QWORDS], cd, cd_used,
                    lambda: self.submit([cfgi_cd(sid) for sid in master.sids]))
        return make_cdtable_ste(master.cd_table_pa)

    def _write_ste(self, sid: int, target: Entry) -> None:
        """``arm_smmu_write_ste``: hitless where possible, then PREFETCH_CFG."""
        live = self.strtab[sid * ENTRY_QWORDS:(sid + 1) * ENTRY_QWORDS]
        write_entry(live, target, ste_used, lambda: self.issue([cfgi_ste(sid)], sync=True))
        self.issue([prefetch_cfg(sid)], sync=False)

    # -- events -------------------------------------------------------------------------------
    def handle_events(self) -> list[SmmuEvent]:
        """``arm_smmu_evtq_thread``: decode every queued event, advance EVTQ_CONS.

        Returns the new events (also appended to :attr:`events`); an overflow
        the SMMU flagged is logged as the kernel does.
        """
        hw, shift = self.hw, self.evtq_shift
        wrap = (2 << shift) - 1
        new: list[SmmuEvent] = []
        raws: list[tuple[int, int, int, int]] = []
        prod = hw.read_reg(Reg.EVTQ_PROD)
        cons = hw.read_reg(Reg.EVTQ_CONS)
        while (cons & wrap) != (prod & wrap):
            slot = self.evtq_pa + ((cons & ((1 << shift) - 1)) << 5)
            raw = tuple(self.mem.read_u64(slot + 8 * i) for i in range(4))
            new.append(decode_event(raw))  # type: ignore[arg-type]
            raws.append(raw)  # type: ignore[arg-type]
            cons = (cons & ~wrap) | ((cons + 1) & wrap)
        if (prod ^ cons) & regs.Q_OVERFLOW_FLAG:
            self.log.append("EVTQ overflow detected -- events lost")
            cons ^= regs.Q_OVERFLOW_FLAG
        hw.write_reg(Reg.EVTQ_CONS, cons)
        for event, raw in zip(new, raws, strict=True):
            if self._to_vmaster(event, raw):
                continue
            self.log.append(f"event {event.id:#04x} received: {event!r}")
        self.events.extend(new)
        return new

    def _to_vmaster(self, event: SmmuEvent, raw: tuple[int, int, int, int]) -> bool:
        """``arm_smmu_handle_event`` (7.0): an event of the reported kinds for a stream
        whose master is on a nested domain with a vSID, not a stage-2 fault, goes to the
        vIOMMU (``arm_vmaster_report_event``); whether it went. O(1)."""
        master = self.masters.get(event.sid)
        vmaster = master.vmaster if master is not None else None
        if vmaster is None or event.id not in VMASTER_EVENTS or \
                regs.EVT1["S2"].get(raw[1]):
            return False
        try:
            vmaster.vsmmu.report_event(vmaster.vsid, raw)
        except KernelError:
            return False  # no vEVENTQ (EOPNOTSUPP), or lost: logged as unhandled
        return True

    # -- teardown ----------------------------------------------------------------------------
    def remove(self) -> None:
        """``arm_smmu_device_remove``: disable the SMMU and free its memory.

        Every device must have been released and every domain freed first
        (EBUSY otherwise, naming what is left).
        """
        if self.masters:
            raise Busy(f"remove: StreamIDs {', '.join(hex(s) for s in sorted(self.masters))} "
                       "still probed")
        if self.asids or self.vmids:
            raise Busy(f"remove: domains still allocated (ASIDs {sorted(self.asids)}, "
                       f"VMIDs {sorted(self.vmids)})")
        self.hw.write_reg(Reg.CR0, 0)
        self._free_allocated()

    def _free_allocated(self) -> None:
        for pa in self._allocated:
            self.mem.free_zeroed(pa)
        self._allocated.clear()
