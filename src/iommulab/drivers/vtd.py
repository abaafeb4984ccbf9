"""Intel VT-d as QEMU's ``intel-iommu`` emulates it in legacy mode, and the intel-iommu driver.

What a q35 guest with ``-device intel-iommu,caching-mode=on`` sees (and what
the oracle recordings were made on): second-stage tables of 3 levels (39-bit
address width), 4K pages with 2M and 1G superpages, no snoop control (so
``enforce_cache_coherency`` fails and VFIO_DMA_CC_IOMMU is 0), no dirty
tracking, the interrupt range 0xfee00000-0xfeefffff as the only reserved
region (``intel_iommu_get_resv_regions``: IOMMU_RESV_MSI), and caching mode,
which makes the driver invalidate after every map (``iotlb_sync_map``).

A machine may have more DMAR units (``Machine.add_iommu_unit``), each with its
own address width (MGAW), table depths (SAGAW) and snoop control; a domain only
attaches where it fits (``prepare_domain_attach_device`` in 6.12,
``paging_domain_compatible`` in 7.0), which is what makes VFIO replay mappings
into a second domain.

The driver follows the machine's kernel. Linux 6.12 keeps its own table code
(:mod:`iommulab.pgtable.vtd_legacy`): a domain from ``domain_alloc`` is 57 bits
wide with 4K pages until its first attach sizes it to the unit, ``map_pages`` /
``unmap_pages`` under the core's ``iommu_pgsize`` loop, EFAULT past ``gaw``,
unmaps rounded up to the entry they start in, and the gather filled with
``iommu_iotlb_gather_add_page``. Linux 7.0 runs the tables on generic_pt
(:mod:`iommulab.pgtable.iommu_pt`): sized to the unit at allocation
(``compute_vasz_lg2_ss``), ``map_range``/``unmap_range`` called by the core for
whole ranges, EADDRINUSE over a present entry, ERANGE past the IOVA width or a
52-bit output address, one widened gather range per unmap.

The hardware side walks the context's tables from physical memory for each
DMA (the model keeps no IOTLB for VT-d) and records faults with the legacy
fault reasons of the VT-d spec (rev. 4, Appendix A), as dmar.c prints them.
Sources: drivers/iommu/intel/iommu.c, iommu.h, dmar.c (Linux 6.12 and 7.0),
drivers/iommu/generic_pt/fmt/vtdss.h (7.0).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import (
    BadAddress,
    DmaFault,
    InvalidArgument,
    KernelError,
    NoDevice,
    NotSupported,
    OutOfMemory,
)
from ..iommu.dirty import IommuDirtyBitmap
from ..iommu.domain import DomainGeometry, DomainType, IommuDomain
from ..iommu.gather import IommuIotlbGather, iommu_iotlb_gather_add_page
from ..iommu.pgtbl_domain import PgtblDomainOps
from ..iommu.pt_domain import PtDomainOps
from ..iommu.resv import IommuCap, ResvRegion, ResvType
from ..iommu.user_data import IommuUserData, iommu_copy_struct_from_user
from ..kernel import DEFAULT_KERNEL, LINUX_7_0, KernelVersion
from ..mem import PhysMem
from ..pgtable import IoPgtable, IoPgtableCfg, IoPgtableFmt
from ..pgtable import vtd_legacy as legacy
from ..pgtable.flush import IommuFlushOps
from ..pgtable.iommu_pt import PtIommu
from ..pgtable.vtd_ss import (
    ADDR_MASK,
    DMA_PTE_LARGE_PAGE,
    DMA_PTE_READ,
    DMA_PTE_SNP,
    DMA_PTE_WRITE,
    VtdSsFormat,
    vtd_levels_for,
    vtd_ss_alloc,
)
from ..prot import Prot
from ..sizes import SZ_1G, SZ_2M, SZ_4K
from . import vtd_pasid as pasid
from .vtd_nested import IOMMU_HWPT_DATA_VTD_S1, IntelNestedDomain, cache_tag_flush_range
from .vtd_sm import SM_FAULT_REASONS, SmFault, SmState

__all__ = ["IOAPIC_RANGE_END", "IOAPIC_RANGE_START", "IntelIommu", "VtdFault", "VtdHw",
           "nesting_unit"]

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
    **SM_FAULT_REASONS,
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
CAP_SLLPS_2M_1G = (1 << 34) | (1 << 35)
CAP_PSI = 1 << 39
CAP_MAMV = 18 << 48
CAP_DRAIN = (1 << 54) | (1 << 55)
ECAP_QI, ECAP_DT, ECAP_IR, ECAP_EIM = 1 << 1, 1 << 2, 1 << 3, 1 << 4
ECAP_PT, ECAP_SC = 1 << 6, 1 << 7
ECAP_MHMV = 15 << 20
#: Scalable-mode ECAP bits (VT-d spec 11.4.3; intel/iommu.h ``ecap_*``).
ECAP_C, ECAP_NEST, ECAP_SRS, ECAP_EAFS = 1 << 0, 1 << 26, 1 << 31, 1 << 34
ECAP_SMTS, ECAP_SLADS, ECAP_SLTS, ECAP_FLTS, ECAP_SMPWC = (
    1 << 43, 1 << 45, 1 << 46, 1 << 47, 1 << 48)
#: CAP.FL1GP (first-stage 1G pages) and CAP.FL5LP (5-level first stage).
CAP_FL1GP, CAP_FL5LP = 1 << 56, 1 << 60
#: CAP.SAGAW bits: 1 = 3-level (39-bit) tables, 2 = 4-level (48), 3 = 5-level (57).
SAGAW_3LEVEL, SAGAW_4LEVEL, SAGAW_5LEVEL = 1 << 1, 1 << 2, 1 << 3
#: CAP.SLLPS as cap_super_page_val() reads it: 2M (bit 0) and 1G (bit 1).
SSLPS_2M, SSLPS_1G = 1 << 0, 1 << 1
#: ``DEFAULT_DOMAIN_ADDRESS_WIDTH`` (6.12 ``md_domain_init`` and the agaw search).
DEFAULT_DOMAIN_ADDRESS_WIDTH = 57
#: vtdss ``PT_MAX_OUTPUT_ADDRESS_LG2``: what 7.0 checks output addresses against.
VTDSS_MAX_OA_LG2 = 52
HWPT_ALLOC_NEST_PARENT, HWPT_ALLOC_DIRTY_TRACKING, HWPT_ALLOC_PASID = 1 << 0, 1 << 1, 1 << 3
_PGSIZES = SZ_4K | SZ_2M | SZ_1G


def _default_sagaw(aw: int) -> int:
    """Every table depth from 3 levels up to the one that holds ``aw`` bits: QEMU's
    39 (3 levels) and 48 (3 or 4); for other widths what real parts report alike."""
    sagaw = SAGAW_3LEVEL
    if aw > 39:
        sagaw |= SAGAW_4LEVEL
    if aw > 48:
        sagaw |= SAGAW_5LEVEL
    return sagaw


@dataclass
class VtdHw:
    """The remapping unit: context entries by source id, fault records, a walk per access.

    ``aw`` is MGAW and ``sagaw`` the CAP.SAGAW bits (0: :func:`_default_sagaw`). The
    other flags are QEMU's ``intel-iommu`` properties of the same names; they only
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
    sagaw: int = 0  # CAP.SAGAW (0: from aw)
    # scalable mode (x-scalable-mode=on): ECAP.SMTS, RTADDR.TTM = scalable; then the
    # translation types and nesting features below, which legacy mode ignores
    scalable: bool = False
    flts: bool = False  # ECAP.FLTS (QEMU x-flts=on)
    slts: bool = False  # ECAP.SLTS
    nest: bool = False  # ECAP.NEST (QEMU never offers it)
    ssads: bool = False  # ECAP.SLADS (second-stage A/D)
    smpwc: bool = False  # ECAP.SMPWC (page-walk coherency)
    srs: bool = False  # ECAP.SRS (supervisor requests)
    eafs: bool = False  # ECAP.EAFS (extended accessed flag)
    fl1gp: bool = False  # CAP.FL1GP
    fl5lp: bool = False  # CAP.FL5LP
    sm: SmState | None = field(default=None, repr=False)
    used_dids: set[int] = field(default_factory=set, repr=False)  # domain ids in use
    contexts: dict[int, tuple[int, int]] = field(default_factory=dict)  # sid -> (root, levels)
    faults: list[VtdFault] = field(default_factory=list)
    walks: int = 0
    last_snoop: bool = False  # the last leaf forced a snooped access (SNP)

    def __post_init__(self) -> None:
        if not 13 <= self.aw <= 64:
            raise ValueError(f"aw {self.aw}: MGAW is between 13 and 64 bits")
        if not self.sagaw:
            self.sagaw = _default_sagaw(self.aw)
        if not self.sagaw & (SAGAW_3LEVEL | SAGAW_4LEVEL | SAGAW_5LEVEL) or self.sagaw & ~0xF:
            raise ValueError(f"sagaw {self.sagaw:#x}: the unit must offer 3-, 4- or 5-level "
                             "tables (SAGAW bits 1-3); the kernel ignores one that does not")
        if self.scalable and self.sm is None:
            self.sm = SmState(self.mem, self.aw)

    @property
    def nested_supported(self) -> bool:
        """``nested_supported``: scalable mode and ECAP.NEST."""
        return self.sm is not None and self.nest

    @property
    def ssads_supported(self) -> bool:
        """``ssads_supported``: scalable mode, ECAP.SLADS and ECAP.SMPWC."""
        return self.sm is not None and self.ssads and self.smpwc

    @property
    def agaw(self) -> int:
        """6.12 ``iommu_calculate_agaw``: the deepest SAGAW table up to 57 bits (levels - 2)."""
        return (self.sagaw & 0xF).bit_length() - 1

    @property
    def addr_width(self) -> int:
        """6.12's ``agaw_to_width(iommu->agaw)`` capped at MGAW: how wide a domain on this
        unit is (``paging_domain_alloc``) and may be (``prepare_domain_attach_device``)."""
        return min(12 + 9 * (self.agaw + 2), self.aw)

    @property
    def sslps(self) -> int:
        """``cap_super_page_val``: QEMU offers 2M and 1G superpages."""
        return SSLPS_2M | SSLPS_1G

    @property
    def cap_reg(self) -> int:
        """CAP_REG as QEMU's ``vtd_init`` builds it (legacy mode)."""
        cap = ((DMAR_FRCD_REG_OFFSET >> 4) << 24 | (DMAR_FRCD_REG_NR - 1) << 40 | CAP_ND_16BIT
               | CAP_MAMV | CAP_PSI | CAP_SLLPS_2M_1G | ((self.aw - 1) & 0x3F) << 16
               | self.sagaw << 8)
        cap |= CAP_DRAIN if self.dma_drain else 0
        cap |= (CAP_FL1GP if self.fl1gp else 0) | (CAP_FL5LP if self.fl5lp else 0)
        return cap | (CAP_CM if self.caching_mode else 0)

    @property
    def ecap_reg(self) -> int:
        """ECAP_REG as QEMU's ``vtd_init`` builds it (legacy mode)."""
        ecap = ECAP_QI | (DMAR_IOTLB_REG_OFFSET >> 4) << 8
        if self.intremap:
            ecap |= ECAP_IR | ECAP_MHMV | (ECAP_EIM if self.eim else 0)
        ecap |= ECAP_DT if self.device_iotlb else 0
        ecap |= ECAP_PT if self.pt else 0
        if self.scalable:
            for on, bit in ((True, ECAP_SMTS), (self.flts, ECAP_FLTS), (self.slts, ECAP_SLTS),
                            (self.nest, ECAP_NEST), (self.ssads, ECAP_SLADS),
                            (self.smpwc, ECAP_SMPWC), (self.srs, ECAP_SRS),
                            (self.eafs, ECAP_EAFS)):
                ecap |= bit if on else 0
        return ecap | (ECAP_SC if self.snoop_control else 0)

    def translate_run(self, sid: int, iova: int, write: bool, privileged: bool = False
                      ) -> tuple[int, int]:
        """The physical address of ``iova`` and the end of its leaf, or DmaFault (recorded).

        An IOVA beyond MGAW or the context's table width faults "Access beyond MGAW"
        (QEMU's ``vtd_iova_range_check``). In scalable mode the walk is
        :meth:`.vtd_sm.SmState.translate`'s (IOTLB, PASID entry, both stages)."""
        if self.sm is not None:
            try:
                return self.sm.translate(sid, iova, write)
            except SmFault as f:
                raise self._fault(sid, iova, write, f.reason) from None
        ctx = self.contexts.get(sid)
        if ctx is None:
            raise self._fault(sid, iova, write, FAULT_NO_CONTEXT)
        table, levels = ctx
        if iova >> min(self.aw, 12 + 9 * levels):
            raise self._fault(sid, iova, write, FAULT_MGAW)
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


def nesting_unit(mem: PhysMem, *, aw: int = 48, sagaw: int = 0, **kw: bool) -> VtdHw:
    """A scalable-mode unit that can nest, the kind a Sapphire Rapids host reports
    (the CAP/ECAP bits intel-iommu reads for nesting and dirty tracking, spec 11.4.2 and
    11.4.3): SMTS, FLTS, SLTS, NEST, SLADS, SMPWC, SRS, snoop control, FL1GP and FL5LP,
    MGAW ``aw`` with 3- and 4-level second stages, no caching mode. EAFS is off. QEMU's
    intel-iommu cannot stand in: ``x-scalable-mode=on`` gives SMTS|SRS|SLTS, and with
    ``x-flts=on`` SMTS|FLTS and FS1GP, never NEST (hw/i386/intel_iommu.c
    ``vtd_cap_init``). ``kw`` overrides any of the flags."""
    cfg: dict[str, bool] = dict(scalable=True, flts=True, slts=True, nest=True, ssads=True,
                                smpwc=True, srs=True, eafs=False, fl1gp=True, fl5lp=True,
                                snoop_control=True, caching_mode=False)
    cfg.update(kw)
    return VtdHw(mem, aw, sagaw=sagaw, **cfg)  # type: ignore[arg-type]


class _ReshapeFlush(IommuFlushOps):
    """Lab: the invalidation after the lab's split or merge of a second-stage table
    (:mod:`..pgtable.reshape`, the only caller of these ops on a VT-d table: both
    releases map and unmap with their own code): ``cache_tag_flush_range`` over the span
    whose present entries changed, which for a nest parent reaches the nested domains'
    DIDs too. Not in Linux, which never reshapes a VT-d table. Freeing a table stays
    without a flush (``intel_iommu_domain_free``)."""

    def tlb_flush_walk(self, iova: int, size: int, granule: int, cookie: Any) -> None:
        stats = cookie.tlb_stats
        stats.flush_walk += 1
        stats.flush_walk_bytes += size
        if isinstance(cookie.ops, _DmarDomain):
            cache_tag_flush_range(cookie.ops, iova, iova + size - 1, ih=False)


_RESHAPE_FLUSH = _ReshapeFlush()


@dataclass
class _Master:
    sid: int
    unit: VtdHw
    domain: IommuDomain | None = None
    pasid: pasid.DevPasid | None = None  # scalable mode: info->pasid_table


class _DmarDomain(PgtblDomainOps):
    """``struct dmar_domain``: what both releases keep around the table.

    ``gaw`` is the IOVA width the domain answers for, ``sync_on_map`` the driver's
    ``iotlb_sync_map`` flag (caching mode), ``devices`` the attached masters. The
    units it is attached through (``iommu_array``, with a reference per device that
    ``domain_attach_iommu`` took) are the units of ``devices``.
    ``iotlb_sync`` (``intel_iommu_tlb_sync``: ``cache_tag_flush_range`` over the
    gathered range) and ``free`` (``intel_iommu_domain_free``: the tables go without
    an IOTLB flush, the table has no flush ops) are the io-pgtable domain's.
    """

    def __init__(self, pgtbl: IoPgtable, domain: IommuDomain, gaw: int) -> None:
        super().__init__(pgtbl)
        self.domain = domain
        self.gaw = gaw
        self.sync_on_map = False
        self.devices: list[_Master] = []
        self.nested_parent = False  # IOMMU_HWPT_ALLOC_NEST_PARENT
        self.dirty_tracking = False  # set_dirty_tracking's state
        self.s1_domains: list[IntelNestedDomain] = []  # nested domains over this one
        self.dids: dict[int, int] = {}  # id(unit) -> domain id (domain_attach_iommu)

    def iotlb_sync(self, domain: IommuDomain, gather: IommuIotlbGather) -> None:
        """``intel_iommu_tlb_sync``: counted, and on scalable units
        ``cache_tag_flush_range`` over the gathered range."""
        super().iotlb_sync(domain, gather)
        if not gather.empty:
            cache_tag_flush_range(self, gather.start, gather.end, ih=False)

    def flush_iotlb_all(self, domain: IommuDomain) -> None:
        """``intel_flush_iotlb_all``: ``cache_tag_flush_all``."""
        super().flush_iotlb_all(domain)
        cache_tag_flush_range(self, 0, (1 << 64) - 1, ih=False, all=True)

    @property
    def format(self) -> VtdSsFormat:
        fmt = self.pgtbl.format
        assert isinstance(fmt, VtdSsFormat)
        return fmt

    @property
    def levels(self) -> int:
        return len(self.format.levels)

    @property
    def force_snooping(self) -> bool:
        """``enforce_cache_coherency`` succeeded: the table puts SNP in new leaves (6.12
        ``force_snooping`` with ``set_pte_snp``, 7.0 ``force_snooping`` with
        PT_FEAT_VTDSS_FORCE_COHERENCE); the table's flag is the one record of it."""
        return self.format.set_pte_snp

    def iotlb_sync_map(self, domain: IommuDomain, iova: int, size: int) -> None:
        """``intel_iommu_iotlb_sync_map``: in caching mode, invalidate the new range."""
        if self.sync_on_map:
            domain.tlb_stats.sync_map += 1

    def attached_through(self, unit: VtdHw) -> bool:
        """Whether ``iommu_array`` holds ``unit``: a device behind it is attached."""
        return any(m.unit is unit for m in self.devices)


class _LegacyDomain(_DmarDomain):
    """Linux 6.12's ``dmar_domain``: ``agaw`` is the table depth (levels - 2), ``gaw``
    the width ``intel_iommu_map`` allows, ``max_addr`` the end of the highest map (or,
    higher, the top of the width ``paging_domain_alloc`` gave it)."""

    def __init__(self, pgtbl: IoPgtable, domain: IommuDomain, gaw: int, superpage: int,
                 max_addr: int) -> None:
        super().__init__(pgtbl, domain, gaw)
        self.max_addr = max_addr
        self.iommu_superpage = superpage
        self.has_mappings = False

    @property
    def agaw(self) -> int:
        return self.levels - 2

    def map_pages(self, domain: IommuDomain, iova: int, paddr: int, pgsize: int, pgcount: int,
                  prot: int, gfp: int) -> int:
        """``intel_iommu_map_pages``: EINVAL for another size or a misaligned address,
        then ``intel_iommu_map`` of all ``pgcount`` pages at once. On failure nothing
        counts as mapped (``*mapped`` is only set on success), so what the call
        wrote before failing stays mapped after the core's rollback."""
        if pgsize not in (SZ_4K, SZ_2M, SZ_1G):
            raise InvalidArgument(f"intel_iommu_map_pages: pgsize {pgsize:#x} is not 4K, 2M "
                                  "or 1G")
        if (iova | paddr) & (pgsize - 1):
            raise InvalidArgument(f"intel_iommu_map_pages: iova {iova:#x} / paddr {paddr:#x} "
                                  f"not aligned to {pgsize:#x}")
        size = pgsize * pgcount
        self._map(iova, paddr, size, prot)
        return size

    def _map(self, iova: int, paddr: int, size: int, prot: int) -> None:
        """``intel_iommu_map``: EFAULT when ``iova + size`` passes ``2^gaw``."""
        attr = self.format.prot_to_attrs(int(prot))  # READ, WRITE, SNP if set_pte_snp
        end = iova + size
        if self.max_addr < end:
            if (1 << self.gaw) < end:
                self.domain.warnings["intel_iommu_map: iommu width is not sufficient"] += 1
                raise BadAddress(f"intel_iommu_map: iommu width ({self.gaw}) is not sufficient "
                                 f"for the mapped address ({end:#x})")
            self.max_addr = end
        nr_pages = ((paddr & 0xFFF) + size + 0xFFF) >> 12  # aligned_nrpages
        legacy.domain_mapping_checks(self.pgtbl, iova >> 12, nr_pages, attr)
        if not attr & DMA_PTE_WRITE and self.nested_parent:
            raise InvalidArgument("Read-only mapping is disallowed on the domain which serves "
                                  "as the parent in a nested configuration, due to HW errata "
                                  "(ERRATA_772415_SPR17)")
        self.has_mappings = True  # before the first entry is written, even if none is
        legacy.domain_mapping(self.pgtbl, iova >> 12, paddr >> 12, nr_pages, attr,
                              self.iommu_superpage, self._flush_range)

    def _flush_range(self, start_pfn: int, end_pfn: int) -> None:
        """``switch_to_super_page``'s ``cache_tag_flush_range(domain, start_pfn << 12,
        end_pfn << 12, 0)`` for a slot a superpage replaced (the end is the last page's
        start, as the kernel passes it); counted as a walk flush."""
        stats = self.domain.tlb_stats
        stats.flush_walk += 1
        stats.flush_walk_bytes += (end_pfn - start_pfn + 1) << 12
        cache_tag_flush_range(self, start_pfn << 12, end_pfn << 12, ih=False)

    def unmap_pages(self, domain: IommuDomain, iova: int, pgsize: int, pgcount: int,
                    gather: IommuIotlbGather) -> int:
        """``intel_iommu_unmap_pages``: the size rounded up to the entry the walk stops at,
        ``max_addr`` lowered when the top mapping goes, and the range added to the
        gather with ``iommu_iotlb_gather_add_page`` unless queued."""
        size = legacy.intel_iommu_unmap(self.pgtbl, iova, pgsize * pgcount)
        if not size:
            return 0
        if self.max_addr == iova + size:
            self.max_addr = iova
        if not gather.queued:
            domain.tlb_stats.add_page += 1
            iommu_iotlb_gather_add_page(domain, gather, iova, size)
        return size

    def iova_to_phys(self, domain: IommuDomain, iova: int) -> int:
        return legacy.intel_iommu_iova_to_phys(self.pgtbl, iova)


class _SsDomain(PtDomainOps, _DmarDomain):
    """Linux 7.0's second-stage ``dmar_domain`` on generic_pt (``sspt``): the core calls
    :meth:`map_range` and :meth:`unmap_range` (``domain.iommupt`` is this object)."""

    def __init__(self, pgtbl: IoPgtable, domain: IommuDomain, vasz: int) -> None:
        super().__init__(pgtbl, domain, vasz)
        self.pt = PtIommu(pgtbl, max_vasz_lg2=vasz, max_oasz_lg2=VTDSS_MAX_OA_LG2,
                          new_gather=IommuIotlbGather, iotlb_sync=domain.iotlb_sync)


def compute_vasz_lg2_ss(mgaw: int, sagaw: int) -> tuple[int, int]:
    """7.0 ``compute_vasz_lg2_ss``: (IOVA width, top level) from MGAW and SAGAW, the
    largest table both support; (0, 0) when none (domain allocation then fails)."""
    if mgaw > 48 and sagaw >= SAGAW_5LEVEL:
        return min(57, mgaw), 4
    if mgaw > 39 and sagaw >= SAGAW_4LEVEL:
        return min(48, mgaw), 3 + _ffs(sagaw >> 3)
    if mgaw > 30 and sagaw >= SAGAW_3LEVEL:
        return min(39, mgaw), 2 + _ffs(sagaw >> 2)
    return 0, 0


class IntelIommu:
    """The intel-iommu driver over the DMAR units of a machine (the subset the core and
    VFIO use), as ``kernel`` has it. Devices are behind the first unit unless
    ``unit_of`` says otherwise."""

    #: ``intel_iommu_ops`` has the op a nested HWPT is allocated with (6.12
    #: ``domain_alloc_user`` given a parent, 7.0 ``domain_alloc_nested``).
    has_domain_alloc_nested = True

    def __init__(self, hw: VtdHw, *, kernel: KernelVersion = DEFAULT_KERNEL) -> None:
        self.hw = hw
        self.kernel = kernel
        #: 7.0 runs second-stage tables on generic_pt; 6.12 has its own table code.
        self.generic_pt = kernel >= LINUX_7_0
        self.units = [hw]
        self.unit_of: dict[int, VtdHw] = {}  # sid -> its DMAR unit
        self.blocked_domain = IommuDomain(DomainType.BLOCKED)
        self.identity_domain = IommuDomain(DomainType.IDENTITY)
        self.default_domain: IommuDomain | None = None  # DMA domains are allocated

    def probe_device(self, sid: int) -> _Master:
        """``intel_iommu_probe_device``; on a scalable unit the device's PASID table and
        scalable-mode context entry (``intel_pasid_alloc_table``,
        ``intel_pasid_setup_sm_context``)."""
        master = _Master(sid, self.unit_of.get(sid, self.hw))
        sm = master.unit.sm
        if sm is not None:
            master.pasid = pasid.sm_context_setup(self.hw.mem, sm, sid)
        return master

    def release_device(self, master: _Master) -> None:
        self._detach(master)
        master.unit.contexts.pop(master.sid, None)
        sm = master.unit.sm
        if sm is not None and master.pasid is not None:
            pasid.sm_context_teardown(self.hw.mem, sm, master.pasid)
            master.pasid = None

    def get_resv_regions(self, master: _Master) -> list[ResvRegion]:
        """``intel_iommu_get_resv_regions`` with no RMRRs: the IOAPIC/MSI range, left out
        when its ``iommu_alloc_resv_region`` fails (no error is reported)."""
        if self.hw.mem.fail_nth.fails("iommu_alloc_resv_region(IOAPIC)"):
            return []
        return [ResvRegion(IOAPIC_RANGE_START, IOAPIC_RANGE_END - IOAPIC_RANGE_START + 1,
                           Prot(0), ResvType.MSI)]

    # -- domain allocation ---------------------------------------------------------------------
    def domain_alloc_paging(self, master: _Master | None = None,
                            type: DomainType = DomainType.UNMANAGED) -> IommuDomain:
        """The core's paging domain (DMA, or UNMANAGED for VFIO type1).

        6.12 ``intel_iommu_domain_alloc`` (``md_domain_init`` at 57 bits): a 5-level
        table, 4K pages only and a 57-bit aperture until the first attach sizes it to
        the unit. 7.0: :meth:`domain_alloc_paging_flags` for the device's unit (the
        first unit's without a device)."""
        if self.generic_pt:
            return self.domain_alloc_paging_flags(master, 0, type=type)
        self.hw.mem.fail_nth.check("kzalloc(dmar_domain)")  # alloc_domain
        domain = IommuDomain(type, kernel=self.kernel)
        width = DEFAULT_DOMAIN_ADDRESS_WIDTH
        self._legacy_domain(domain, width, vtd_levels_for(width), SZ_4K, 0, max_addr=0)
        ops = domain.ops
        assert isinstance(ops, _LegacyDomain)
        ops.format.first_level = self._first_level_by_default(type)
        return domain

    def _first_level_by_default(self, type: DomainType) -> bool:
        """6.12 ``first_level_by_default``: legacy mode (any unit without scalable mode)
        has only the second stage; with one stage offered by every unit, that one; with
        both, the first stage for every domain but UNMANAGED (VFIO type1's)."""
        if not all(u.sm is not None for u in self.units):
            return False
        flts, slts = all(u.flts for u in self.units), all(u.slts for u in self.units)
        if flts != slts:
            return flts
        return type != DomainType.UNMANAGED

    def domain_alloc_paging_flags(self, master: _Master | None, flags: int = 0,
                                  user_data: IommuUserData | None = None, *,
                                  type: DomainType = DomainType.UNMANAGED) -> IommuDomain:
        """iommufd's domains. 6.12 ``intel_iommu_domain_alloc_user``
        (``paging_domain_alloc``: as wide as the unit's agaw and MGAW allow, its
        superpages); 7.0 ``intel_iommu_domain_alloc_paging_flags`` (a second-stage
        domain; legacy mode has no first stage). EOPNOTSUPP for driver data (7.0
        before anything else, 6.12 after the flags nesting needs) and for flags the unit
        cannot honour (no nesting or dirty tracking in legacy mode; PASID is 7.0's)."""
        if user_data is not None and self.generic_pt:
            raise NotSupported(f"domain_alloc_paging_flags: driver data of type "
                               f"{user_data.type:#x} for a paging domain")
        unit = self.hw if master is None else master.unit
        if self.generic_pt and not flags & ~HWPT_ALLOC_PASID and unit.sm is not None and \
                unit.flts:
            # 7.0 intel_iommu_domain_alloc_first_stage, preferred by default
            self.hw.mem.fail_nth.check("kzalloc(dmar_domain)")  # paging_domain_alloc
            domain = IommuDomain(type, kernel=self.kernel)
            self._first_stage_domain(domain, unit)
            return domain
        known = HWPT_ALLOC_NEST_PARENT | HWPT_ALLOC_DIRTY_TRACKING
        if self.generic_pt:
            known |= HWPT_ALLOC_PASID
        if flags & ~known:
            raise NotSupported(f"domain_alloc_paging_flags: flags {flags:#x} are not "
                               f"supported (only {known:#x})")
        if flags & HWPT_ALLOC_NEST_PARENT and not unit.nested_supported:
            raise NotSupported(f"domain_alloc_paging_flags: flags {flags:#x} need nesting "
                               "(scalable mode and ECAP.NEST)")
        if user_data is not None:
            raise NotSupported(f"domain_alloc_paging_flags: driver data of type "
                               f"{user_data.type:#x} for a paging domain")
        if flags & HWPT_ALLOC_DIRTY_TRACKING and not unit.ssads_supported:
            raise NotSupported(f"domain_alloc_paging_flags: flags {flags:#x} need "
                               "second-stage dirty tracking (ECAP.SLADS and SMPWC)")
        self.hw.mem.fail_nth.check("kzalloc(dmar_domain)")  # paging_domain_alloc
        domain = IommuDomain(type, kernel=self.kernel)
        if self.generic_pt:
            self._second_stage_domain(domain, unit)
        else:
            width = unit.addr_width
            super_bits = unit.sslps.bit_length()  # iommu_superpage_capability
            self._legacy_domain(domain, width, unit.agaw + 2,
                                SZ_4K | _super_pgsize_bitmap(super_bits), super_bits,
                                max_addr=(1 << width) - 1)  # __DOMAIN_MAX_ADDR(addr_width)
        ops = domain.ops
        assert isinstance(ops, _DmarDomain)
        ops.nested_parent = bool(flags & HWPT_ALLOC_NEST_PARENT)
        if ops.nested_parent and self.generic_pt:
            ops.format.force_writeable = True  # PT_FEAT_VTDSS_FORCE_WRITEABLE
        if flags & HWPT_ALLOC_DIRTY_TRACKING:
            domain.dirty_ops = _VtdDirtyOps(self)
        return domain

    def domain_alloc_nested(self, master: _Master, flags: int, parent: IommuDomain,
                            user_data: IommuUserData) -> IntelNestedDomain:
        """6.12 ``intel_iommu_domain_alloc_user`` given a parent: EOPNOTSUPP without
        nesting or with any flag, then ``intel_nested_domain_alloc``. 7.0
        ``intel_iommu_domain_alloc_nested``: EOPNOTSUPP without nesting or with a flag
        other than PASID. Both then: EOPNOTSUPP for data other than
        IOMMU_HWPT_DATA_VTD_S1, EINVAL for a parent that is not an intel second-stage
        paging domain allocated as nest parent, the ``struct iommu_hwpt_vtd_s1`` copied
        (EINVAL unless 24 bytes: its size and ``offsetofend(__reserved)``; EFAULT), the
        domain (``kzalloc``), put on the parent's list. Nothing in the struct is checked
        here: addr_width and the flags are the attach's."""
        valid = HWPT_ALLOC_PASID if self.generic_pt else 0
        if not master.unit.nested_supported or flags & ~valid:
            raise NotSupported(f"domain_alloc_nested: flags {flags:#x}, nesting "
                               f"{'supported' if master.unit.nested_supported else 'absent'}")
        if user_data.type != IOMMU_HWPT_DATA_VTD_S1:
            raise NotSupported(f"domain_alloc_nested: data type {user_data.type:#x}")
        s2 = parent.ops
        if not isinstance(s2, _DmarDomain) or parent.type != DomainType.UNMANAGED or \
                not s2.nested_parent:
            raise InvalidArgument(f"domain_alloc_nested: {parent!r} is not a nest parent")
        raw = iommu_copy_struct_from_user(user_data, IOMMU_HWPT_DATA_VTD_S1, 24, 24)
        self.hw.mem.fail_nth.check("kzalloc(dmar_domain nested)")
        return IntelNestedDomain(s2, pasid.VtdS1Cfg.from_bytes(raw), self.kernel)

    def _new_table(self, domain: IommuDomain, width: int, levels: int) -> IoPgtable:
        cfg = IoPgtableCfg(_PGSIZES, width, VTDSS_MAX_OA_LG2, kernel=self.kernel,
                           tlb=_RESHAPE_FLUSH)
        fmt, cfg = vtd_ss_alloc(cfg, levels=levels)
        return IoPgtable(IoPgtableFmt.INTEL_VTD_SS, cfg, fmt, self.hw.mem, domain)

    def _legacy_domain(self, domain: IommuDomain, gaw: int, levels: int, pgsizes: int,
                       superpage: int, *, max_addr: int) -> None:
        """6.12: a ``dmar_domain`` of ``gaw`` bits over a ``levels``-deep table;
        ``max_addr`` is 0 from ``md_domain_init``, the top of ``gaw`` from
        ``paging_domain_alloc`` (so ``prepare_domain_attach_device`` refuses an iommufd
        domain on a narrower unit)."""
        pgtbl = self._new_table(domain, 12 + 9 * levels, levels)
        domain.ops = _LegacyDomain(pgtbl, domain, gaw, superpage, max_addr)
        domain.pgtbl = pgtbl
        domain.pgsize_bitmap = pgsizes
        domain.geometry = DomainGeometry(0, (1 << gaw) - 1, True)

    def _second_stage_domain(self, domain: IommuDomain, unit: VtdHw) -> None:
        """7.0 ``intel_iommu_domain_alloc_second_stage`` with ``pt_iommu_vtdss_init``:
        the IOVA width and depth from MGAW and SAGAW, page sizes from the unit's
        superpages, ``iotlb_sync_map`` in caching mode; EINVAL when no depth fits."""
        vasz, top_level = compute_vasz_lg2_ss(unit.aw, unit.sagaw)
        if not vasz:
            raise InvalidArgument(f"pt_iommu_vtdss_init: MGAW {unit.aw} with SAGAW "
                                  f"{unit.sagaw:#x} leaves no IOVA width")
        pgtbl = self._new_table(domain, vasz, top_level + 1)
        ops = _SsDomain(pgtbl, domain, vasz)
        ops.sync_on_map = unit.caching_mode
        domain.ops = ops
        domain.iommupt = ops
        domain.pgtbl = pgtbl
        domain.pgsize_bitmap = _sslps_pgsizes(unit.sslps)
        domain.geometry = DomainGeometry(0, (1 << vasz) - 1, True)

    def _first_stage_domain(self, domain: IommuDomain, unit: VtdHw) -> None:
        """7.0 ``intel_iommu_domain_alloc_first_stage`` over generic_pt's x86_64 format: 4
        levels (48 bits), 5 with CAP.FL5LP on a unit of more than 48 bits; 4K and 2M
        pages, 1G with CAP.FL1GP; leaves U|A, RW|D when writable, tables P|RW|U|A
        (``x86_64_pt_iommu_set_prot``, ``x86_64_pt_install_table``). The aperture stops
        below the canonical hole (the top input bit clear). Lab: the table is the shared
        VT-d table storage with first-stage bits (:attr:`VtdSsFormat.first_level`)."""
        levels = 5 if unit.fl5lp and unit.aw > 48 else 4
        vasz = 12 + 9 * levels
        pgtbl = self._new_table(domain, vasz, levels)
        fmt = pgtbl.format
        assert isinstance(fmt, VtdSsFormat)
        fmt.first_level = True
        ops = _SsDomain(pgtbl, domain, vasz)
        domain.ops = ops
        domain.iommupt = ops
        domain.pgtbl = pgtbl
        domain.pgsize_bitmap = SZ_4K | SZ_2M | (SZ_1G if unit.fl1gp else 0)
        domain.geometry = DomainGeometry(0, (1 << (vasz - 1)) - 1, True)

    # -- attach ------------------------------------------------------------------------------------
    def attach_dev(self, domain: IommuDomain, master: _Master) -> None:
        """``intel_iommu_attach_device``: block the device (``device_block_translation``),
        check the domain fits the unit (EINVAL, the device left blocked), then
        ``dmar_domain_attach_device``: the domain's reference on the unit (its first takes
        an ``iommu_domain_info``), the context entry at the tables (blocked: no context
        entry), the cache tag (``kzalloc``; ENOMEM blocks the device again)."""
        if domain.type == DomainType.IDENTITY:
            raise InvalidArgument("the model's VT-d has no pass-through context")
        if isinstance(domain, IntelNestedDomain):
            self._nested_attach(domain, master)
            return
        unit = master.unit
        ops = domain.ops
        self._detach(master)
        unit.contexts.pop(master.sid, None)
        if isinstance(ops, _LegacyDomain):
            self._prepare_domain_attach_device(ops, master)
        elif isinstance(ops, _SsDomain) and ops.format.first_level:
            self._paging_domain_compatible_first_stage(ops, master)
        elif isinstance(ops, _SsDomain):
            self._paging_domain_compatible(ops, master)
        fail = self.hw.mem.fail_nth
        if isinstance(ops, _DmarDomain):
            new_unit = not ops.attached_through(unit)  # domain_attach_iommu's first reference
            if new_unit:
                fail.check("kzalloc(iommu_domain_info)")
            ops.devices.append(master)
            if new_unit and isinstance(ops, _LegacyDomain):
                self._domain_update_iommu_cap(ops)
            if isinstance(ops, _LegacyDomain) and unit.caching_mode and \
                    not ops.format.first_level:
                ops.sync_on_map = True  # domain_need_iotlb_sync_map
        if isinstance(ops, _DmarDomain) and unit.sm is not None and master.pasid is not None:
            self._domain_attach_did(ops, unit)
            try:
                if ops.format.first_level:  # domain_setup_first_level
                    pasid.pasid_setup_first_level(
                        self.hw.mem, unit.sm, master.pasid, did=ops.dids[id(unit)],
                        pgd=ops.pgtbl.pgd_pa, levels=ops.levels, unit_agaw=unit.agaw,
                        flts=unit.flts, fl5lp=unit.fl5lp, snoop=ops.force_snooping,
                        smpwc=unit.smpwc, caching_mode=unit.caching_mode)
                else:  # intel_pasid_setup_second_level (6.12 and 7.0's sspt domains)
                    pasid.pasid_setup_second_level(
                        self.hw.mem, unit.sm, master.pasid, did=ops.dids[id(unit)],
                        pgd=ops.pgtbl.pgd_pa, agaw=ops.levels - 2, ssads=ops.dirty_tracking,
                        smpwc=unit.smpwc, caching_mode=unit.caching_mode)
            except KernelError:
                ops.devices.remove(master)
                self._domain_detach_did(ops, unit)
                raise
        elif domain.type != DomainType.BLOCKED and domain.pgtbl is not None:
            unit.contexts[master.sid] = (domain.pgtbl.pgd_pa, len(domain.pgtbl.format.levels))
        master.domain = domain
        if isinstance(ops, _DmarDomain) and fail.fails("kzalloc(cache_tag)"):
            # cache_tag_assign_domain failed: device_block_translation
            self._detach(master)
            unit.contexts.pop(master.sid, None)
            raise OutOfMemory("cache_tag_assign_domain: injected failure")

    def _prepare_domain_attach_device(self, ops: _LegacyDomain, master: _Master) -> None:
        """6.12 ``prepare_domain_attach_device``: EINVAL when the domain forces snooping
        and the unit has no snoop control, when it tracks dirty pages and the unit has no
        SSADS, or its ``max_addr`` (the end of the highest
        map; for an iommufd domain at least the top of the width it was allocated
        with) is above what the unit can address; then the domain takes the unit's
        width (``gaw``, which may grow) and drops table levels the unit cannot walk
        ("Knock out extra levels")."""
        unit = master.unit
        if ops.force_snooping and not unit.snoop_control:
            raise InvalidArgument(f"attach {master.sid:#x}: the domain forces snooping and "
                                  "the unit has no snoop control")
        if ops.domain.dirty_ops is not None and not unit.ssads_supported:
            raise InvalidArgument(f"attach {master.sid:#x}: a dirty-tracking domain on a "
                                  "unit without SSADS")
        addr_width = unit.addr_width
        if ops.max_addr > 1 << addr_width:
            raise InvalidArgument(f"attach {master.sid:#x}: max_addr {ops.max_addr:#x} is "
                                  f"beyond the unit's {addr_width}-bit width")
        ops.gaw = addr_width
        while unit.agaw < ops.agaw:
            self._knock_out_top_level(ops)

    @staticmethod
    def _knock_out_top_level(ops: _LegacyDomain) -> None:
        """One round of the knock-out: the table under entry 0 becomes the root and the
        old root page is freed. The kernel leaks whatever the other root entries
        hold (the lab frees it and counts a warning); when entry 0 is empty the same
        page stays the root, one level lower."""
        pt = ops.pgtbl
        levels = ops.levels - 1
        fmt = VtdSsFormat(replace(pt.cfg, ias=12 + 9 * levels), ops.force_snooping, levels)
        fmt.first_level = ops.format.first_level
        pt.cfg = replace(pt.cfg, ias=12 + 9 * levels)
        first = pt._pgd.item(0)
        if not first & (DMA_PTE_READ | DMA_PTE_WRITE):
            pt.replace_root(fmt, pt.pgd_pa)
            return
        old_pa = pt.pgd_pa
        for pte in pt._pgd[1:][pt.format.table_mask(pt._pgd[1:], 0)].tolist():
            ops.domain.warnings["lab: 6.12 leaks the tables under the knocked-out root"] += 1
            pt._free_pgtable(pte, 1)
        pt.replace_root(fmt, first & ADDR_MASK)
        pt._free_table_pages(old_pa)

    def _domain_update_iommu_cap(self, ops: _LegacyDomain) -> None:
        """6.12 ``domain_update_iommu_cap``: superpages every active unit offers, the
        aperture from ``gaw``; page sizes are only ever added."""
        mask = SSLPS_2M | SSLPS_1G
        first = ops.format.first_level
        for unit in self.units:
            if first:  # first stage: 2M always, 1G with CAP.FL1GP
                mask = mask if unit.fl1gp else mask & SSLPS_2M
            else:
                mask &= unit.sslps
        ops.iommu_superpage = mask.bit_length()
        domain = ops.domain
        # a first-level input address is canonical: the top bit of gaw is left out
        domain.geometry = DomainGeometry(0, (1 << (ops.gaw - first)) - 1, True)
        domain.pgsize_bitmap |= _super_pgsize_bitmap(ops.iommu_superpage)

    @staticmethod
    def _paging_domain_compatible_first_stage(ops: _SsDomain, master: _Master) -> None:
        """7.0 ``paging_domain_compatible_first_stage``: EINVAL on a unit without scalable
        mode or a first stage, or without CAP.FL1GP for a domain with 1G pages; then
        (``paging_domain_compatible``) a table wider than the unit's MGAW."""
        unit, sid = master.unit, master.sid
        if unit.sm is None or not unit.flts:
            raise InvalidArgument(f"attach {sid:#x}: a first-stage domain on a unit without "
                                  "one")
        if not unit.fl1gp and ops.domain.pgsize_bitmap & SZ_1G:
            raise InvalidArgument(f"attach {sid:#x}: 1G first-stage pages without FL1GP")
        if unit.aw < ops.gaw - 1:
            raise InvalidArgument(f"attach {sid:#x}: {ops.gaw}-bit first stage on a unit "
                                  f"with MGAW {unit.aw}")

    @staticmethod
    def _paging_domain_compatible(ops: _SsDomain, master: _Master) -> None:
        """7.0 ``paging_domain_compatible_second_stage``: EINVAL for a dirty-tracking domain
        on a unit without SSADS, a nest parent on one without nesting, a scalable unit
        without a second stage; then (with ``paging_domain_compatible``) when the unit's MGAW is
        below the domain's IOVA width, its SAGAW lacks the table depth, it lacks a
        page size the domain uses, it is in caching mode and the domain does not sync
        on map, or the domain forces snooping and the unit has no snoop control."""
        unit, sid = master.unit, master.sid
        if ops.domain.dirty_ops is not None and not unit.ssads_supported:
            raise InvalidArgument(f"attach {sid:#x}: a dirty-tracking domain on a unit "
                                  "without SSADS")
        if ops.nested_parent and not unit.nested_supported:
            raise InvalidArgument(f"attach {sid:#x}: a nest parent on a unit without nesting")
        if unit.sm is not None and not unit.slts:
            raise InvalidArgument(f"attach {sid:#x}: the unit has no second stage (SLTS)")
        if unit.aw < ops.gaw:
            raise InvalidArgument(f"attach {sid:#x}: {ops.gaw}-bit IOVAs on a unit with "
                                  f"MGAW {unit.aw}")
        if not unit.sagaw & 1 << (ops.levels - 2):
            raise InvalidArgument(f"attach {sid:#x}: a {ops.levels}-level table on a unit "
                                  f"with SAGAW {unit.sagaw:#x}")
        bitmap = ops.domain.pgsize_bitmap
        if (bitmap & SZ_2M and not unit.sslps & SSLPS_2M) or \
                (bitmap & SZ_1G and not unit.sslps & SSLPS_1G):
            raise InvalidArgument(f"attach {sid:#x}: page sizes {bitmap:#x} the unit lacks")
        if unit.caching_mode and not ops.sync_on_map:
            raise InvalidArgument(f"attach {sid:#x}: the unit is in caching mode and the "
                                  "domain does not sync on map")
        if ops.force_snooping and not unit.snoop_control:
            raise InvalidArgument(f"attach {sid:#x}: the domain forces snooping and the unit "
                                  "has no snoop control")

    def _nested_attach(self, domain: IntelNestedDomain, master: _Master) -> None:
        """``intel_nested_attach_dev``: block the device; ENODEV when the unit's AGAW is
        below the parent's; the parent must fit the unit (6.12
        ``prepare_domain_attach_device``, 7.0 ``paging_domain_compatible``: EINVAL);
        ``domain_attach_iommu`` (the nested domain's DID), the cache tags (``kzalloc``:
        ENOMEM), ``intel_pasid_setup_nested`` (its EINVAL / EBUSY); an error undoes the
        tags and the DID and leaves the device blocked."""
        unit = master.unit
        self._detach(master)
        unit.contexts.pop(master.sid, None)
        s2 = domain.s2_domain
        if unit.agaw < s2.levels - 2:
            raise NoDevice(f"attach {master.sid:#x}: Adjusted guest address width not "
                               "compatible")
        if isinstance(s2, _LegacyDomain):
            self._prepare_domain_attach_device(s2, master)
        elif isinstance(s2, _SsDomain):
            self._paging_domain_compatible(s2, master)
        assert unit.sm is not None and master.pasid is not None
        self._domain_attach_did(domain, unit)
        fail = self.hw.mem.fail_nth
        try:
            fail.check("kzalloc(cache_tag)")  # cache_tag_assign_domain
            domain.devices.append(master)
            try:
                pasid.pasid_setup_nested(
                    self.hw.mem, unit.sm, master.pasid, domain.s1_cfg,
                    did=domain.dids[id(unit)], s2_pgd=s2.pgtbl.pgd_pa, s2_agaw=s2.levels - 2,
                    s2_dirty=s2.dirty_tracking, s2_snoop=s2.force_snooping, fl5lp=unit.fl5lp,
                    srs=unit.srs, eafs=unit.eafs, smpwc=unit.smpwc,
                    caching_mode=unit.caching_mode)
            except KernelError:
                domain.devices.remove(master)
                raise
        except KernelError:
            self._domain_detach_did(domain, unit)
            raise
        master.domain = domain

    @staticmethod
    def _domain_attach_did(obj: _DmarDomain | IntelNestedDomain, unit: VtdHw) -> None:
        """``domain_attach_iommu``: the domain's id on ``unit``, the lowest free one from
        2 (0 is reserved, 1 is FLPT_DEFAULT_DID), for its first device there."""
        if id(unit) not in obj.dids:
            did = next(i for i in range(2, 1 << 16) if i not in unit.used_dids)
            unit.used_dids.add(did)
            obj.dids[id(unit)] = did

    @staticmethod
    def _domain_detach_did(obj: _DmarDomain | IntelNestedDomain, unit: VtdHw) -> None:
        """``domain_detach_iommu``: the id goes with the domain's last device on ``unit``."""
        if id(unit) in obj.dids and not any(m.unit is unit for m in obj.devices):
            unit.used_dids.discard(obj.dids.pop(id(unit)))

    def _detach(self, master: _Master) -> None:
        """``device_block_translation``: on a scalable unit the PASID entry torn down
        (``intel_pasid_tear_down_entry``); leave the domain and drop its unit reference
        (``domain_detach_iommu``); in 6.12 the unit's last reference going runs
        ``domain_update_iommu_cap``."""
        old = master.domain
        master.domain = None
        sm = master.unit.sm
        if sm is not None and master.pasid is not None:
            pasid.pasid_tear_down_entry(self.hw.mem, sm, master.pasid)
        if isinstance(old, IntelNestedDomain) and master in old.devices:
            old.devices.remove(master)
            self._domain_detach_did(old, master.unit)
            return
        if old is None or not isinstance(old.ops, _DmarDomain) or master not in old.ops.devices:
            return
        ops = old.ops
        ops.devices.remove(master)
        self._domain_detach_did(ops, master.unit)
        if isinstance(ops, _LegacyDomain) and not ops.attached_through(master.unit):
            self._domain_update_iommu_cap(ops)

    # -- capabilities ------------------------------------------------------------------------------
    def capable(self, master: _Master, cap: IommuCap) -> bool:
        """``intel_iommu_capable``: coherent DMA always; enforced coherency with the unit's
        snoop control (ECAP.SC); no dirty tracking (SSADS), which QEMU's legacy mode
        lacks, and no ATS (no device has it). DEFERRED_FLUSH is 6.12's; 7.0 dropped it
        (dma-iommu lets every generic_pt domain use the flush queue)."""
        if cap == IommuCap.ENFORCE_CACHE_COHERENCY:
            return master.unit.snoop_control
        if cap == IommuCap.DEFERRED_FLUSH:
            return not self.generic_pt
        if cap == IommuCap.DIRTY_TRACKING:  # ssads_supported
            return master.unit.ssads_supported
        return cap == IommuCap.CACHE_COHERENCY

    def enforce_cache_coherency(self, domain: IommuDomain) -> bool:
        """Force snooping (later maps set DMA_PTE_SNP) when every attached device's unit
        has snoop control (QEMU's has not). 6.12 ``intel_iommu_enforce_cache_coherency``
        answers True again once forced, and refuses a domain that has ever mapped
        something; 7.0 ``intel_iommu_enforce_cache_coherency_ss`` checks the units
        every time and does not look at what is mapped (earlier leaves keep no SNP)."""
        ops = domain.ops
        if not isinstance(ops, _DmarDomain):
            return False
        if isinstance(ops, _LegacyDomain) and ops.force_snooping:
            return True
        if not all(m.unit.snoop_control for m in ops.devices):
            return False
        if isinstance(ops, _LegacyDomain) and ops.has_mappings:
            return False
        ops.format.set_pte_snp = True  # and so force_snooping
        return True


def _super_pgsize_bitmap(superpage: int) -> int:
    """6.12 ``domain_super_pgsize_bitmap``: 1 superpage level is 2M, 2 are 2M and 1G."""
    return {0: 0, 1: SZ_2M}.get(superpage, SZ_2M | SZ_1G)


def _sslps_pgsizes(sslps: int) -> int:
    """7.0: the table's 4K/2M/1G less the superpages the unit lacks."""
    return SZ_4K | (SZ_2M if sslps & SSLPS_2M else 0) | (SZ_1G if sslps & SSLPS_1G else 0)


def _ffs(x: int) -> int:
    """``ffs``: the 1-based index of the lowest set bit, 0 for 0."""
    return (x & -x).bit_length()


class _VtdDirtyOps:
    """``intel_dirty_ops`` (6.12) / ``intel_second_stage_dirty_ops`` (7.0)."""

    def __init__(self, driver: IntelIommu) -> None:
        self.driver = driver

    def set_dirty_tracking(self, domain: IommuDomain, enabled: bool) -> None:
        """``intel_iommu_set_dirty_tracking``: nothing when unchanged; SSADE in the PASID
        entry of each device (``device_set_dirty_tracking``) and, for a nest parent, of
        each device of each nested domain (``parent_domain_set_dirty_tracking``); an
        error puts back the old setting."""
        ops = domain.ops
        assert isinstance(ops, _DmarDomain)
        if ops.dirty_tracking == enabled:
            return
        masters = list(ops.devices)
        if ops.nested_parent:
            masters += [m for s1 in ops.s1_domains for m in s1.devices]
        done: list[_Master] = []
        try:
            for m in masters:
                if m.unit.sm is not None and m.pasid is not None:
                    pasid.pasid_setup_dirty_tracking(self.driver.hw.mem, m.unit.sm, m.pasid,
                                                     enabled)
                done.append(m)
        except KernelError:
            for m in done:
                if m.unit.sm is not None and m.pasid is not None:
                    pasid.pasid_setup_dirty_tracking(self.driver.hw.mem, m.unit.sm, m.pasid,
                                                     ops.dirty_tracking)
            raise
        ops.dirty_tracking = enabled

    def read_and_clear_dirty(self, domain: IommuDomain, iova: int, size: int, flags: int,
                             dirty: IommuDirtyBitmap) -> None:
        """6.12 ``intel_iommu_read_and_clear_dirty``: EINVAL with a bitmap while tracking is
        off; each present leaf from ``iova`` with D (bit 9) recorded at its size and
        cleared unless NO_CLEAR (:func:`.vtd_legacy.read_and_clear_dirty`). 7.0: generic_pt's
        walk over vtdss (:meth:`.PtIommu.read_and_clear_dirty`)."""
        ops = domain.ops
        assert isinstance(ops, _DmarDomain)
        if isinstance(ops, _SsDomain):
            ops.pt.read_and_clear_dirty(iova, size, flags, dirty)
            return
        if not ops.dirty_tracking and dirty.bitmap is not None:
            raise InvalidArgument("read_and_clear_dirty: dirty tracking is off")
        legacy.read_and_clear_dirty(ops.pgtbl, iova, size, flags, dirty)
