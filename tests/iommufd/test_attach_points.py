"""The allocation points of an iommufd attach in the kernel's order
(drivers/iommu/iommufd/device.c ``iommufd_hw_pagetable_attach``,
``iommufd_hwpt_attach_device``; drivers/iommu/iommu.c ``iommu_attach_group_handle``).

Linux 7.0 keeps each group's attachment per PASID: before the reserved regions it takes
the group's PASID 0 slot in ``igroup->pasid_attach`` (an XA_ZERO_ENTRY, so a node),
allocates the ``struct iommufd_attach`` and takes the device's slot in its
``device_array``; after the attach handle, ``iommu_attach_group_handle`` reserves PASID
0 in ``group->pasid_array`` (an XA_ZERO_ENTRY again). Linux 6.12 has none of these: its
``pasid_array`` takes the handle itself at index 0, in the xarray's head.
"""

from __future__ import annotations

import errno

import pytest

from ..failnth.scenarios import _attach_pt, _bind_fd, _detach, _ioas
from ..failnth.sweep import World, sites, sweep

PLATFORMS = ("x86-vtd", "arm64-smmuv3")
ATTACH_7_0 = ["xas_alloc(igroup->pasid_attach)", "kzalloc(iommufd_attach)",
              "xas_alloc(attach->device_array)"]
HANDLE_7_0 = "xas_alloc(group->pasid_array)"


def _bound(platform: str, kernel: str) -> World:
    w = _ioas(0, True)(platform, kernel)
    w.h["cdev"] = w.p.open("/dev/vfio/devices/vfio0")
    _bind_fd(w, w.h["cdev"])
    return w


def _attach(w: World) -> int:
    return _attach_pt(w, w.h["cdev"], w.h["ioas"])


@pytest.mark.parametrize("platform", PLATFORMS)
def test_7_0_points_around_the_reservations_and_the_handle(platform: str) -> None:
    log = sites(lambda: _bound(platform, "7.0"), _attach)
    first = log.index(ATTACH_7_0[0])
    assert log[first:first + 3] == ATTACH_7_0
    assert log[first + 3].startswith("iommu_alloc_resv_region(")  # the device's regions
    handle = log.index("kzalloc(iommufd_attach_handle)")
    assert log[handle + 1] == HANDLE_7_0


@pytest.mark.parametrize("platform", PLATFORMS)
def test_6_12_has_none_of_them(platform: str) -> None:
    log = sites(lambda: _bound(platform, "6.12"), _attach)
    assert not set(log) & {*ATTACH_7_0, HANDLE_7_0}


@pytest.mark.parametrize("platform", PLATFORMS)
def test_each_attach_takes_them_again(platform: str) -> None:
    """A detach gives the attachment and its slots back; the next attach takes them."""
    def again(w: World) -> int:
        _attach(w)
        _detach(w, w.h["cdev"])
        return _attach(w)

    log = sites(lambda: _bound(platform, "7.0"), again)
    assert log.count("kzalloc(iommufd_attach)") == 2 and log.count(HANDLE_7_0) == 2


@pytest.mark.parametrize("platform", PLATFORMS)
def test_7_0_attach_sweep(platform: str) -> None:
    """The attachment's allocation failed: ENOMEM, nothing left; its slots' nodes are
    retried."""
    points = {p.site: p.errno for p in sweep(lambda: _bound(platform, "7.0"), _attach)}
    assert points["kzalloc(iommufd_attach)"] == errno.ENOMEM
    assert points[ATTACH_7_0[0]] is None and points[HANDLE_7_0] is None
