"""Intel VT-d as QEMU's ``intel-iommu`` emulates it in legacy mode, and the intel-iommu driver.

What a q35 guest with ``-device intel-iommu,caching-mode=on`` sees (and what
the oracle recordings were made on): second-stage tables of 3 levels (39-bit
address width), 4K pages with 2M and 1G superpages, no snoop control (so
``enforce_cache_coherency`` fails and VFIO_DMA_CC_IOMMU is 0), no dirty
tracking, the interrupt range 0xfee00000-0xfeefffff as the only reserved
region (``intel_iommu_get_resv_regions``: IOMMU_RESV_MSI), and caching mode,
which makes the driver invalidate after every map (``iotlb_sync_map``).

A machine may have more DMAR units (``Machine.add_iommu_unit``), each with
its own width and snoop control; a domain only attaches where its tables
fit and its snooping is honoured (``paging_domain_compatible``), which is
what makes VFIO replay mappings into a second domain.

The hardware side walks the context's tables from physical memory for
each DMA (the model keeps no IOTLB for VT-d) and records faults with the
legacy fault reasons of the VT-d spec (rev. 4, Appendix A), as dmar.c
prints them. Sources: drivers/iommu/intel/iommu.c, dmar.c (Linux 6.12).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import DmaFault, InvalidArgument
from ..iommu.domain import DomainGeometry, DomainType, IommuDomain
from ..iommu.pgtbl_domain import PgtblDomainOps, PgtblFlushOps
from ..iommu.resv import IommuCap, ResvRegion, ResvType
from ..kernel import DEFAULT_KERNEL, KernelVersion
from ..mem import PhysMem
from ..pgtable import IoPgtable, IoPgtableCfg, IoPgtableFmt, alloc_io_pgtable_ops
from ..pgtable.vtd_ss import (
    ADDR_MASK,
    DMA_PTE_LARGE_PAGE,
    DMA_PTE_READ,
    DMA_PTE_SNP,
    DMA_PTE_WRITE,
    VtdSsFormat,
)
from ..prot import Prot
from ..sizes import SZ_1G, SZ_2M, SZ_4K

__all__ = ["IOAPIC_RANGE_END", "IOAPIC_RANGE_START", "IntelIommu", "VtdFault", "VtdHw"]

IOAPIC_RANGE_START = 0xFEE0_0000
IOAPIC_RANGE_END = 0xFEEF_FFFF

#: dmar.c ``dma_remap_fault_reasons`` (legacy translation faults used here).
FAULT_READ = 6  # "PTE Read access is not set"
FAULT_WRITE = 5  # "PTE Write access is not set"
FAULT_MGAW = 4  # "Access beyond MGAW"
FAULT_NO_CONTEXT = 2  # "Present bit in context entry is clear"
FAULT_REASONS = {
    FAULT_NO_CONTEXT: "Present bit in context entry is clear",
    FAULT_MGAW: "Access beyond MGAW",
    FAULT_WRITE: "PTE Write access is not set",
    FAULT_READ: "PTE Read access is not set",
}


@dataclass(frozen=True)
class VtdFault:
    """One fault record, as ``dmar_fault_do_one`` logs it."""

    source_id: int
    addr: int
    write: bool
    reason: int

    def __str__(self) -> str:
        kind = "Write" if self.write else "Read"
        bus, devfn = self.source_id >> 8, self.source_id & 0xFF
        return (f"DMAR: [DMA {kind} NO_PASID] Request device [{bus:02x}:{devfn >> 3:02x}."
                f"{devfn & 7}] fault addr {self.addr:#x} [fault reason {self.reason:#04x}] "
                f"{FAULT_REASONS[self.reason]}")


#: Register offsets and capability fields QEMU's ``vtd_init`` reports (hw/i386/intel_iommu.c,
#: intel_iommu_internal.h): fault recording at 0x220 (one record), IOTLB registers at 0xf0,
#: 16-bit domain ids, page-selective invalidation of up to 2^18 pages, 2M and 1G superpages.
DMAR_FRCD_REG_OFFSET = 0x220
DMAR_FRCD_REG_NR = 1
DMAR_IOTLB_REG_OFFSET = 0xF0
CAP_ND_16BIT = (16 - 4) // 2
CAP_CM = 1 << 7
CAP_SAGAW_39BIT, CAP_SAGAW_48BIT = 0x2 << 8, 0x4 << 8
CAP_SLLPS_2M_1G = (1 << 34) | (1 << 35)
CAP_PSI = 1 << 39
CAP_MAMV = 18 << 48
CAP_DRAIN = (1 << 54) | (1 << 55)
ECAP_QI, ECAP_DT, ECAP_IR, ECAP_EIM = 1 << 1, 1 << 2, 1 << 3, 1 << 4
ECAP_PT, ECAP_SC = 1 << 6, 1 << 7
ECAP_MHMV = 15 << 20


@dataclass
class VtdHw:
    """The remapping unit: context entries by source id, fault records, a walk per access.

    The flags below are QEMU's ``intel-iommu`` properties of the same names; they only
    shape the CAP and ECAP registers (the model's walks do not depend on them)."""

    mem: PhysMem
    aw: int = 39  # MGAW
    snoop_control: bool = False  # ECAP.SC
    caching_mode: bool = True  # CAP.CM (caching-mode=on)
    dma_drain: bool = True  # CAP.DRD/DWD
    intremap: bool = False  # ECAP.IR and MHMV
    eim: bool = False  # ECAP.EIM (32-bit x2APIC ids; only with intremap)
    pt: bool = True  # ECAP.PT (pass-through)
    device_iotlb: bool = False  # ECAP.DT (ATS)
    contexts: dict[int, tuple[int, int]] = field(default_factory=dict)  # sid -> (root, levels)
    faults: list[VtdFault] = field(default_factory=list)
    walks: int = 0
    last_snoop: bool = False  # the last leaf forced a snooped access (SNP)

    @property
    def cap_reg(self) -> int:
        """CAP_REG as QEMU's ``vtd_init`` builds it (legacy mode)."""
        cap = ((DMAR_FRCD_REG_OFFSET >> 4) << 24 | (DMAR_FRCD_REG_NR - 1) << 40 | CAP_ND_16BIT
               | CAP_MAMV | CAP_PSI | CAP_SLLPS_2M_1G | ((self.aw - 1) & 0x3F) << 16)
        cap |= CAP_DRAIN if self.dma_drain else 0
        cap |= CAP_SAGAW_39BIT if self.aw >= 39 else 0
        cap |= CAP_SAGAW_48BIT if self.aw >= 48 else 0
        return cap | (CAP_CM if self.caching_mode else 0)

    @property
    def ecap_reg(self) -> int:
        """ECAP_REG as QEMU's ``vtd_init`` builds it (legacy mode)."""
        ecap = ECAP_QI | (DMAR_IOTLB_REG_OFFSET >> 4) << 8
        if self.intremap:
            ecap |= ECAP_IR | ECAP_MHMV | (ECAP_EIM if self.eim else 0)
        ecap |= ECAP_DT if self.device_iotlb else 0
        ecap |= ECAP_PT if self.pt else 0
        return ecap | (ECAP_SC if self.snoop_control else 0)

    def translate_run(self, sid: int, iova: int, write: bool, privileged: bool = False
                      ) -> tuple[int, int]:
        """The physical address of ``iova`` and the end of its leaf, or DmaFault (recorded)."""
        ctx = self.contexts.get(sid)
        if ctx is None:
            raise self._fault(sid, iova, write, FAULT_NO_CONTEXT)
        if iova >> self.aw:
            raise self._fault(sid, iova, write, FAULT_MGAW)
        table, levels = ctx
        self.walks += 1
        need = DMA_PTE_WRITE if write else DMA_PTE_READ
        for level in range(levels, 0, -1):
            shift = 12 + 9 * (level - 1)
            pte = self.mem.read_u64(table + ((iova >> shift) & 511) * 8)
            if not pte & need:  # not present reads as "access not set"
                raise self._fault(sid, iova, write, FAULT_WRITE if write else FAULT_READ)
            if level == 1 or pte & DMA_PTE_LARGE_PAGE:
                # SNP forces a snooped access; reserved (ignored) without snoop control
                self.last_snoop = bool(pte & DMA_PTE_SNP) and self.snoop_control
                size = 1 << shift
                return (pte & ADDR_MASK) | (iova & (size - 1)), (iova | (size - 1)) + 1
            table = pte & ADDR_MASK
        raise AssertionError("unreachable: level 1 always ends the walk")

    def _fault(self, sid: int, iova: int, write: bool, reason: int) -> DmaFault:
        record = VtdFault(sid, iova & ~0xFFF, write, reason)
        self.faults.append(record)
        return DmaFault(str(record), sid=sid, iova=iova, write=write,
                        reason=FAULT_REASONS[reason])


class _VtdDomainOps(PgtblDomainOps):
    """``intel_iommu_ops.default_domain_ops``; caching mode flushes after each map.

    Also holds what ``struct dmar_domain`` keeps: the address width the
    tables were built for, ``force_snooping`` and the devices attached.
    """

    def __init__(self, pgtbl: IoPgtable, gaw: int) -> None:
        super().__init__(pgtbl)
        self.gaw = gaw
        self.force_snooping = False
        self.devices: list[_Master] = []

    def iotlb_sync_map(self, domain: IommuDomain, iova: int, size: int) -> None:
        """``intel_iommu_iotlb_sync_map``: in caching mode, invalidate the new range."""
        domain.tlb_stats.sync_map += 1


@dataclass
class _Master:
    sid: int
    unit: VtdHw
    domain: IommuDomain | None = None


class IntelIommu:
    """The intel-iommu driver over the DMAR units of a machine (the subset the core and
    VFIO use). Devices are behind the first unit unless ``unit_of`` says otherwise."""

    pgsize_bitmap = SZ_4K | SZ_2M | SZ_1G

    def __init__(self, hw: VtdHw, *, kernel: KernelVersion = DEFAULT_KERNEL) -> None:
        self.hw = hw
        self.kernel = kernel
        self.units = [hw]
        self.unit_of: dict[int, VtdHw] = {}  # sid -> its DMAR unit
        self.blocked_domain = IommuDomain(DomainType.BLOCKED)
        self.identity_domain = IommuDomain(DomainType.IDENTITY)
        self.default_domain: IommuDomain | None = None  # DMA domains are allocated

    def probe_device(self, sid: int) -> _Master:
        return _Master(sid, self.unit_of.get(sid, self.hw))

    def release_device(self, master: _Master) -> None:
        self._detach(master)
        master.unit.contexts.pop(master.sid, None)

    def get_resv_regions(self, master: _Master) -> list[ResvRegion]:
        """``intel_iommu_get_resv_regions`` with no RMRRs: the IOAPIC/MSI range."""
        return [ResvRegion(IOAPIC_RANGE_START, IOAPIC_RANGE_END - IOAPIC_RANGE_START + 1,
                           Prot(0), ResvType.MSI)]

    def domain_alloc_paging(self, master: _Master | None = None,
                            type: DomainType = DomainType.UNMANAGED) -> IommuDomain:
        """``intel_iommu_domain_alloc_paging_flags``: second-stage tables as wide as the
        device's unit (the first unit's without a device)."""
        aw = (self.hw if master is None else master.unit).aw
        domain = IommuDomain(type, kernel=self.kernel)
        cfg = IoPgtableCfg(self.pgsize_bitmap, aw, aw, tlb=PgtblFlushOps(), kernel=self.kernel)
        pgtbl = alloc_io_pgtable_ops(IoPgtableFmt.INTEL_VTD_SS, cfg, domain, mem=self.hw.mem)
        domain.ops = _VtdDomainOps(pgtbl, aw)
        domain.pgtbl = pgtbl
        domain.pgsize_bitmap = pgtbl.cfg.pgsize_bitmap
        domain.geometry = DomainGeometry(0, (1 << aw) - 1, True)
        return domain

    def attach_dev(self, domain: IommuDomain, master: _Master) -> None:
        """``intel_iommu_attach_device``: block the device (``device_block_translation``),
        then ``paging_domain_compatible`` (a snooping domain needs ECAP.SC, the tables
        must fit the unit's width; EINVAL, the device left blocked), then point the
        context entry at the tables (blocked: no context entry)."""
        if domain.type == DomainType.IDENTITY:
            raise InvalidArgument("the model's VT-d has no pass-through context")
        unit = master.unit
        ops = domain.ops
        self._detach(master)
        unit.contexts.pop(master.sid, None)
        if isinstance(ops, _VtdDomainOps):
            if ops.force_snooping and not unit.snoop_control:
                raise InvalidArgument(f"attach {master.sid:#x}: the domain forces snooping "
                                      "and the unit has no snoop control")
            if ops.gaw > unit.aw:
                raise InvalidArgument(f"attach {master.sid:#x}: {ops.gaw}-bit tables on a "
                                      f"{unit.aw}-bit unit")
        if domain.type != DomainType.BLOCKED and domain.pgtbl is not None:
            levels = len(domain.pgtbl.format.levels)
            unit.contexts[master.sid] = (domain.pgtbl.pgd_pa, levels)
        if isinstance(ops, _VtdDomainOps):
            ops.devices.append(master)
        master.domain = domain

    @staticmethod
    def _detach(master: _Master) -> None:
        old = master.domain
        if old is not None and isinstance(old.ops, _VtdDomainOps) and master in old.ops.devices:
            old.ops.devices.remove(master)
        master.domain = None

    def capable(self, master: _Master, cap: IommuCap) -> bool:
        """``intel_iommu_capable``: coherent DMA and deferred flush always; enforced
        coherency with the unit's snoop control (ECAP.SC); no dirty tracking (SSADS),
        which QEMU's legacy mode lacks."""
        if cap == IommuCap.ENFORCE_CACHE_COHERENCY:
            return master.unit.snoop_control
        return cap in (IommuCap.CACHE_COHERENCY, IommuCap.DEFERRED_FLUSH)

    def enforce_cache_coherency(self, domain: IommuDomain) -> bool:
        """``intel_iommu_enforce_cache_coherency``: when every attached device's unit has
        snoop control (QEMU's has not), force snooping: later maps set DMA_PTE_SNP."""
        ops = domain.ops
        if not isinstance(ops, _VtdDomainOps):
            return False
        if ops.force_snooping:
            return True
        if not all(m.unit.snoop_control for m in ops.devices):
            return False
        ops.force_snooping = True
        assert domain.pgtbl is not None
        fmt = domain.pgtbl.format
        assert isinstance(fmt, VtdSsFormat)
        fmt.set_pte_snp = True
        return True
