"""Model bugs the fail-nth sweeps found by following the kernel's order, each as a rule."""

from __future__ import annotations

import errno

import pytest

from iommulab.iommufd import uapi as u
from iommulab.iommufd.objects import Device

from ..helpers import expect_errno, make_host

MSI_IOVA_BASE = 0x8000000  # arm-smmu-v3's software MSI window
RW = u.IOMMU_IOAS_MAP_READABLE | u.IOMMU_IOAS_MAP_WRITEABLE


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_replace_within_an_ioas_keeps_the_devices_reserved_regions(kernel: str) -> None:
    """``iommufd_group_do_replace_reserved_iova`` enforces the device's reserved regions
    only in a new IOAS, and ``iommufd_device_do_replace`` removes them from the old one
    only when it is another: moving an SMMUv3 device between two HWPTs of one IOAS keeps
    its MSI window reserved there, so a map over it is still refused (EINVAL from
    ``iopt_check_iova``)."""
    h, _ = make_host("arm64-smmuv3", 1, kernel)
    ioas = h.ioas()
    cdev, devid = h.bind(0)
    h.attach(cdev, ioas)
    second = h.hwpt(devid, ioas)
    assert h.attach(cdev, second) == second
    space = h.p.files[h.iommufd].ctx.objects[ioas].iopt.space  # type: ignore[attr-defined]
    assert [r.start for r in space.reserved if isinstance(r.owner, Device)] == [MSI_IOVA_BASE]
    va = h.p.mmap(4096, populate=True)
    expect_errno(errno.EINVAL, h.ioctl, h.iommufd, u.IOMMU_IOAS_MAP, u.IOAS_MAP.pack(
        40, u.IOMMU_IOAS_MAP_FIXED_IOVA | RW, ioas, 0, va, 4096, MSI_IOVA_BASE))
    h.p.exit()
