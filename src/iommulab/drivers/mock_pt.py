"""Linux 7.0's iommufd selftest mock domain: a generic_pt AMDv1 table with 2K pages.

Follows drivers/iommu/iommufd/selftest.c (``mock_domain_alloc_pgtable``,
``amdv1_mock_ops``, ``amdv1_mock_dirty_ops``, ``mock_iotlb_sync``) and
drivers/iommu/generic_pt/fmt/iommu_mock.c: ``pt_iommu_amdv1_mock_init`` with a
2K granule, a 56-bit hardware VA, a 51-bit OA and starting level 2, so the table
has three levels and a 38-bit IOVA space. The core maps and unmaps it through
generic_pt (:mod:`iommulab.pgtable.iommu_pt`), so a present entry in the way is
EADDRINUSE (no WARN, no overwrite) and there is no fault injection in the map
path (only table allocations fail, ENOMEM).

Two page-table types come from ``struct iommu_hwpt_selftest`` (HWPT_ALLOC with
IOMMU_HWPT_DATA_SELFTEST; every other domain is the default):

- ``MOCK_IOMMUPT_DEFAULT``: every power of two from 2K to 128G
  (``pt_possible_sizes`` of levels 0-2), the aperture narrowed to the mock's
  ``[1 << 24, (1 << 31) - 1]``;
- ``MOCK_IOMMUPT_HUGE``: the bitmap cut to 1M | PAGE_SIZE ("userspace should
  only provide huge pages"), the table's whole aperture ``[0, 2^38 - 1]``.

Dirty tracking (HWPT_ALLOC_DIRTY_TRACKING) reads and clears the D bit of each
table item; IOMMU_TEST_OP_DIRTY sets it with generic_pt's ``set_dirty`` in the
one item that holds the IOVA.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..errors import NotSupported
from ..iommu.dirty import IommuDirtyBitmap
from ..iommu.domain import DomainGeometry, DomainType, IommuDomain
from ..iommu.gather import IommuIotlbGather
from ..iommu.pgtbl_domain import PgtblDomainOps
from ..iommu.pt_domain import PtDomainOps
from ..iommu.user_data import IommuUserData, iommu_copy_struct_from_user
from ..kernel import KernelVersion
from ..mem import PhysMem
from ..pgtable import IoPgtable, IoPgtableCfg, IoPgtableFmt
from ..pgtable.amdv1 import AMDV1_MOCK, Amdv1Format
from ..pgtable.iommu_pt import PtIommu
from ..sizes import PAGE_SIZE

__all__ = [
    "IOMMU_HWPT_DATA_SELFTEST",
    "MOCK_IOMMUPT_DEFAULT",
    "MOCK_IOMMUPT_HUGE",
    "HwptSelftest",
    "MockPtDirtyOps",
    "MockPtDomainOps",
    "check_user_data_type",
    "mock_domain_alloc_pgtable",
    "read_hwpt_selftest",
]

I64Array = npt.NDArray[np.int64]

IOMMU_HWPT_DATA_NONE, IOMMU_HWPT_DATA_SELFTEST = 0, 0xDEAD  # iommufd.h, iommufd_test.h
MOCK_IOMMUPT_DEFAULT, MOCK_IOMMUPT_HUGE = 0, 1
MOCK_APERTURE_START, MOCK_APERTURE_LAST = 1 << 24, (1 << 31) - 1
MOCK_HUGE_PAGE_SIZE = 512 * 2048
_HW_MAX_VASZ_LG2, _HW_MAX_OASZ_LG2, _STARTING_LEVEL = 56, 51, 2
_ITEMS_LG2 = 9  # 512 entries per 4K table


@dataclass(frozen=True)
class HwptSelftest:
    """``struct iommu_hwpt_selftest``."""

    iotlb: int = 0
    pagetable_type: int = MOCK_IOMMUPT_DEFAULT


def read_hwpt_selftest(user_data: IommuUserData) -> HwptSelftest:
    """``iommu_copy_struct_from_user(&user_cfg, user_data, IOMMU_HWPT_DATA_SELFTEST,
    iotlb)``: EINVAL for another type or a length outside [4, 8], EFAULT."""
    raw = iommu_copy_struct_from_user(user_data, IOMMU_HWPT_DATA_SELFTEST, 8, 4)
    return HwptSelftest(*struct.unpack("<II", raw))


def _mock_vasz_lg2() -> int:
    """``amdv1pt_iommu_fmt_init`` without PT_FEAT_DYNAMIC_TOP below the top level: the
    starting level's reach, within the hardware's VA."""
    return min(AMDV1_MOCK.granule_lg2 + _ITEMS_LG2 * (_STARTING_LEVEL + 1), _HW_MAX_VASZ_LG2)


class MockPtDomainOps(PtDomainOps, PgtblDomainOps):
    """``amdv1_mock_ops`` (and the identical ``amdv1_mock_huge_ops``): ``map_range`` /
    ``unmap_range`` for the core (``domain.iommupt`` is this object), generic_pt's
    ``iova_to_phys``, ``mock_iotlb_sync`` (it only frees the gathered tables, which the
    model frees when they leave the table; the lab counts the calls) and
    ``mock_domain_free`` (``pt_iommu_deinit`` frees every table, mapped or not)."""

    def __init__(self, domain: IommuDomain, mem: PhysMem, kernel: KernelVersion) -> None:
        vasz = _mock_vasz_lg2()
        oasz = min(AMDV1_MOCK.max_oa_lg2, _HW_MAX_OASZ_LG2)
        self.format = Amdv1Format(AMDV1_MOCK, _STARTING_LEVEL, vasz)
        cfg = IoPgtableCfg(pgsize_bitmap=self.format.pgsize_bitmap(oasz), ias=vasz, oas=oasz,
                           kernel=kernel)
        super().__init__(IoPgtable(IoPgtableFmt.AMD_IOMMU_V1, cfg, self.format, mem, None))
        self.pt = PtIommu(self.pgtbl, max_vasz_lg2=vasz, max_oasz_lg2=oasz,
                          new_gather=IommuIotlbGather, iotlb_sync=domain.iotlb_sync)
        self.domain = domain

    def translate(self, iova: int) -> tuple[int, int] | None:
        """What the mock's DMA finds at ``iova``: ``(pa, end of the leaf)`` or None."""
        if iova >> self.pt.max_vasz_lg2:
            return None
        return self.pt.lookup(iova)


class MockPtDirtyOps:
    """``amdv1_mock_dirty_ops``: generic_pt's ``read_and_clear_dirty`` (no check of the
    tracking flag, unlike 6.12's) and ``mock_domain_set_dirty_tracking``, which flips
    MOCK_DIRTY_TRACK, the flag IOMMU_TEST_OP_DIRTY requires."""

    def __init__(self) -> None:
        self.tracking = False  # MOCK_DIRTY_TRACK

    def set_dirty_tracking(self, domain: IommuDomain, enabled: bool) -> None:
        self.tracking = enabled

    def read_and_clear_dirty(self, domain: IommuDomain, iova: int, size: int, flags: int,
                             dirty: IommuDirtyBitmap) -> None:
        """``pt_iommu_amdv1_mock_read_and_clear_dirty``: a range ``make_range`` refuses
        returns its errno with no warning (``PT_WARN_ON`` only follows the walk, which
        does not fail, and is compiled out without CONFIG_DEBUG_GENERIC_PT)."""
        _pt_ops(domain).pt.read_and_clear_dirty(iova, size, flags, dirty)

    def set_dirty(self, domain: IommuDomain, iovas: I64Array) -> None:
        """``mock->iommu.ops->set_dirty`` at each IOVA (IOMMU_TEST_OP_DIRTY)."""
        _pt_ops(domain).pt.set_dirty(iovas)


def _pt_ops(domain: IommuDomain) -> MockPtDomainOps:
    ops = domain.ops
    assert isinstance(ops, MockPtDomainOps)
    return ops


def mock_domain_alloc_pgtable(mem: PhysMem, cfg: HwptSelftest, dirty: bool,
                              kernel: KernelVersion) -> IommuDomain:
    """``mock_domain_alloc_pgtable``: the domain (``kzalloc``), then EOPNOTSUPP for a
    page-table type other than DEFAULT and HUGE; ENOMEM when the top table cannot be
    had. See the module docstring for the two types' page sizes and apertures."""
    mem.fail_nth.check("kzalloc(mock_iommu_domain)")
    if cfg.pagetable_type not in (MOCK_IOMMUPT_DEFAULT, MOCK_IOMMUPT_HUGE):
        raise NotSupported(f"mock: pagetable_type {cfg.pagetable_type}")
    domain = IommuDomain(DomainType.UNMANAGED, kernel=kernel)
    ops = MockPtDomainOps(domain, mem, kernel)  # pt_iommu_amdv1_mock_init
    domain.ops = ops
    domain.iommupt = ops
    domain.pgsize_bitmap = ops.pgtbl.cfg.pgsize_bitmap  # pt_iommu_init_domain
    domain.geometry = DomainGeometry(0, (1 << ops.pt.max_vasz_lg2) - 1, True)
    if cfg.pagetable_type == MOCK_IOMMUPT_HUGE:
        domain.pgsize_bitmap = MOCK_HUGE_PAGE_SIZE | PAGE_SIZE
    else:  # "Override the real aperture to the MOCK aperture for test purposes"
        domain.geometry.aperture_start = MOCK_APERTURE_START
        domain.geometry.aperture_end = MOCK_APERTURE_LAST
    if dirty:
        domain.dirty_ops = MockPtDirtyOps()
    return domain


def check_user_data_type(user_data: IommuUserData | None) -> HwptSelftest:
    """``mock_domain_alloc_paging_flags``' reading of driver data: EOPNOTSUPP for a type
    other than SELFTEST or NONE, then the copy's errors (EINVAL for NONE, which iommufd
    never passes with data)."""
    if user_data is None:
        return HwptSelftest()
    if user_data.type not in (IOMMU_HWPT_DATA_SELFTEST, IOMMU_HWPT_DATA_NONE):
        raise NotSupported(f"mock: HWPT data type {user_data.type:#x}")
    return read_hwpt_selftest(user_data)

