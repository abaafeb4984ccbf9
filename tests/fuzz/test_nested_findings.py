"""Findings of the long fuzz run on the nested paths (nest parents, nested HWPTs,
vIOMMU objects), each the fuzzer's minimal reproducer turned into a test."""

from __future__ import annotations

from iommulab.iommufd import uapi as iu
from iommulab.testing import check_invariants
from iommulab.uapi import iommufd as h

from ..helpers import make_host


def test_a_closed_veventq_file_outliving_its_vIOMMU_passes_the_check_walk() -> None:
    """A vEVENTQ's fd kept after the process exited still reaches the vIOMMU, its nest
    parent and the parent's freed page table: ``_check()`` of a freed table asserts it
    holds nothing instead of walking tables that are gone (was a KeyError)."""
    host, _ = make_host("arm64-smmuv3", 1, kernel="7.0")
    _, devid = host.bind(0)
    parent = host.hwpt(devid, host.ioas(), iu.IOMMU_HWPT_ALLOC_NEST_PARENT)
    out = host.ioctl(host.iommufd, iu.IOMMU_VIOMMU_ALLOC, iu.VIOMMU_ALLOC.pack(
        40, 0, h.IOMMU_VIOMMU_TYPE_ARM_SMMUV3, devid, parent, 0, 0, 0, 0))
    viommu = iu.VIOMMU_ALLOC.unpack(out)[5]
    out = host.ioctl(host.iommufd, iu.IOMMU_VEVENTQ_ALLOC, iu.VEVENTQ_ALLOC.pack(
        32, 0, viommu, h.IOMMU_VEVENTQ_TYPE_ARM_SMMUV3, 16, 0, 0, 0))
    eventq = host.p.files[iu.VEVENTQ_ALLOC.unpack(out)[6]]
    host.p.exit()
    assert check_invariants([host.m, host.p, eventq]) > 0


def test_a_vdevice_beside_one_at_a_virtual_id_past_2_to_the_63() -> None:
    """The second vDEVICE of a vIOMMU whose first has a virtual id above INT64_MAX: the
    xarray-node count (fail-nth's) took the taken ids as int64 and crashed with an
    OverflowError; it now counts over the whole unsigned long range (uint64)."""
    host, _ = make_host("arm64-smmuv3", 2, kernel="7.0")
    _, dev0 = host.bind(0)
    _, dev1 = host.bind(1)
    parent = host.hwpt(dev0, host.ioas(), iu.IOMMU_HWPT_ALLOC_NEST_PARENT)
    out = host.ioctl(host.iommufd, iu.IOMMU_VIOMMU_ALLOC, iu.VIOMMU_ALLOC.pack(
        40, 0, h.IOMMU_VIOMMU_TYPE_ARM_SMMUV3, dev0, parent, 0, 0, 0, 0))
    viommu = iu.VIOMMU_ALLOC.unpack(out)[5]
    ids = []
    for dev, virt_id in ((dev0, 0xA7EB_879C_4D5C_078B), (dev1, 0x10)):
        out = host.ioctl(host.iommufd, iu.IOMMU_VDEVICE_ALLOC,
                         iu.VDEVICE_ALLOC.pack(24, viommu, dev, 0, virt_id))
        ids.append(iu.VDEVICE_ALLOC.unpack(out)[3])
    ctx = host.p.files[host.iommufd].ctx  # type: ignore[attr-defined]
    assert sorted(ctx.objects[viommu].vdevs) == [0x10, 0xA7EB_879C_4D5C_078B]
    host.p.exit()
    assert check_invariants([host.m, host.p]) > 0
