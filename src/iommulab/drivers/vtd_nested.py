"""intel-iommu nested domains and the cache tags that flush them (drivers/iommu/intel/
nested.c and cache.c, Linux 6.12 and 7.0).

A nested domain is a first stage the user (a guest) owns: ``struct iommu_hwpt_vtd_s1``
names its table by guest-physical address, the parent second stage translates it.
Attaching writes a PASID entry of type nested; ``cache_invalidate_user`` carries the
guest's IOTLB invalidations (``struct iommu_hwpt_vtd_s1_invalidate``) to the unit as
PASID-based IOTLB invalidations of the nested domain's DID. The parent holds a
``CACHE_TAG_NESTING_IOTLB`` tag for each device of each nested domain over it, so a
change of the second stage flushes their DIDs with IOTLB invalidations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import InvalidArgument, KernelError, NotSupported
from ..iommu.domain import DomainType, IommuDomain
from ..iommu.user_data import IommuUserDataArray, iommu_copy_struct_from_user_array
from ..kernel import KernelVersion
from .vtd_pasid import VtdS1Cfg
from .vtd_sm import IotlbInv, PiotlbInv

if TYPE_CHECKING:
    from .vtd import VtdHw

__all__ = [
    "IOMMU_HWPT_DATA_VTD_S1",
    "IOMMU_HWPT_INVALIDATE_DATA_VTD_S1",
    "IOMMU_VTD_INV_FLAGS_LEAF",
    "IntelNestedDomain",
    "cache_tag_flush_range",
    "calculate_psi_aligned_address",
]

IOMMU_HWPT_DATA_VTD_S1 = 1
IOMMU_HWPT_INVALIDATE_DATA_VTD_S1 = 0
IOMMU_VTD_INV_FLAGS_LEAF = 1 << 0
_U64 = (1 << 64) - 1
_MAX_AGAW_PFN_WIDTH = 64 - 12
#: CAP.MAMV the model's units report (``cap_max_amask_val``)
_MAMV = 18


def _roundup_pow_of_two(n: int) -> int:
    """``__roundup_pow_of_two`` on a 64-bit long, the shift count masked as x86 does
    (so 0 gives 1)."""
    return 1 << (((n - 1) & _U64).bit_length() & 63)


def calculate_psi_aligned_address(start: int, end: int) -> tuple[int, int, int]:
    """cache.c ``calculate_psi_aligned_address``: (address, pages, mask) of the smallest
    naturally aligned power-of-two run of pages that holds ``[start, end]``, in 64-bit
    arithmetic. O(1)."""
    size = (end - start + 1) & _U64
    pages = ((((start & 0xFFF) + size + 0xFFF) & _U64) & ~0xFFF) >> 12  # aligned_nrpages
    aligned = _roundup_pow_of_two(pages)
    bitmask = aligned - 1
    mask = aligned.bit_length() - 1
    pfn = start >> 12
    if bitmask & pfn:
        end_pfn = (pfn + pages - 1) & _U64
        shared = ~(pfn ^ end_pfn) & ~bitmask & _U64
        mask = (shared & -shared).bit_length() - 1 if shared else _MAX_AGAW_PFN_WIDTH
        aligned = 1 << mask
    return start & ~((4096 << mask) - 1) & _U64, aligned, mask


def _tags(domain: Any) -> list[tuple[VtdHw, int, bool]]:
    """The domain's IOTLB cache tags as (unit, DID, first-stage): one per unit it is
    attached through, and for a nest parent the NESTING tags of the nested domains'
    devices (their DIDs)."""
    out: list[tuple[VtdHw, int, bool]] = []
    seen: set[tuple[int, int]] = set()
    nested = isinstance(domain, IntelNestedDomain) or domain.format.first_level
    for m in domain.devices:
        if m.unit.sm is None:  # legacy units: no IOTLB in the model, no DIDs kept
            continue
        key = (id(m.unit), domain.dids[id(m.unit)])
        if key not in seen:
            seen.add(key)
            out.append((m.unit, key[1], nested))
    for s1 in getattr(domain, "s1_domains", ()):
        for m in s1.devices:
            if m.unit.sm is None:
                continue
            key = (id(m.unit), s1.dids[id(m.unit)])
            if key not in seen:
                seen.add(key)
                out.append((m.unit, key[1], False))  # NESTING_IOTLB: the parent's kind
    return out


def cache_tag_flush_range(domain: Any, start: int, end: int, *, ih: bool,
                          all: bool = False) -> None:
    """``cache_tag_flush_range`` (``all``: ``cache_tag_flush_all``) on scalable units: a
    first-stage (nested) domain's tags get PASID-based IOTLB invalidations, a second-stage
    domain's (and its NESTING tags) IOTLB page-selective invalidations, domain-selective
    past CAP.MAMV or for everything. Legacy units keep no IOTLB in the model."""
    addr, pages, mask = calculate_psi_aligned_address(start, end)
    for unit, did, first_stage in _tags(domain):
        sm = unit.sm
        if sm is None:
            continue
        if first_stage:
            desc: IotlbInv | PiotlbInv
            if all:
                desc = PiotlbInv(2, did, 0)
            else:
                desc = PiotlbInv(3, did, 0, addr, _roundup_pow_of_two(pages).bit_length() - 1,
                                 ih)
        elif all or mask > _MAMV:
            desc = IotlbInv(2, did)
        else:
            desc = IotlbInv(3, did, addr, mask, ih)
        sm.submit([desc])


class IntelNestedDomain(IommuDomain):
    """``struct dmar_domain`` of type NESTED: ``s2_domain`` (the parent's driver object),
    ``s1_cfg`` as the user gave it, its devices and its DID on each unit."""

    def __init__(self, s2: Any, cfg: VtdS1Cfg, kernel: KernelVersion) -> None:
        super().__init__(DomainType.NESTED, kernel=kernel)
        self.s2_domain = s2
        self.s1_cfg = cfg
        self.devices: list[Any] = []
        self.dids: dict[int, int] = {}
        s2.s1_domains.append(self)

    def free(self) -> None:
        """``intel_nested_domain_free``: off the parent's list of nested domains."""
        super().free()
        if self in self.s2_domain.s1_domains:
            self.s2_domain.s1_domains.remove(self)

    def cache_invalidate_user(self, array: IommuUserDataArray
                              ) -> tuple[int, KernelError | None]:
        """``intel_nested_cache_invalidate_user``: EINVAL for another data type (0 done);
        then per ``struct iommu_hwpt_vtd_s1_invalidate`` (addr, npages, flags,
        __reserved; at least 24 bytes), stopping at the first bad one: the copy's
        EINVAL/EFAULT, EOPNOTSUPP for a flag beyond LEAF or a non-zero ``__reserved``,
        EINVAL for an ``addr`` not 4K-aligned or ``npages`` U64_MAX with a non-zero
        ``addr``; each good one flushes ``[addr, addr + npages * 4K - 1]`` (64-bit
        arithmetic) with IH = LEAF. The entries done and the error. O(entries)."""
        if array.type != IOMMU_HWPT_INVALIDATE_DATA_VTD_S1:
            return 0, InvalidArgument(f"intel: invalidation data type {array.type:#x}")
        done = 0
        for i in range(array.entry_num):
            try:
                raw = iommu_copy_struct_from_user_array(
                    array, IOMMU_HWPT_INVALIDATE_DATA_VTD_S1, i, 24, 24)
            except KernelError as e:
                return done, e
            addr = int.from_bytes(raw[0:8], "little")
            npages = int.from_bytes(raw[8:16], "little")
            flags = int.from_bytes(raw[16:20], "little")
            rsvd = int.from_bytes(raw[20:24], "little")
            if flags & ~IOMMU_VTD_INV_FLAGS_LEAF or rsvd:
                return done, NotSupported(f"intel: invalidation flags {flags:#x} / "
                                          f"__reserved {rsvd:#x}")
            if addr & 0xFFF or (npages == _U64 and addr):
                return done, InvalidArgument(f"intel: invalidation of {npages:#x} pages at "
                                             f"{addr:#x}")
            end = (addr + ((npages << 12) & _U64) - 1) & _U64
            cache_tag_flush_range(self, addr, end, ih=bool(flags & IOMMU_VTD_INV_FLAGS_LEAF))
            done += 1
        return done, None
