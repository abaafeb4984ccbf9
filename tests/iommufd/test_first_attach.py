"""A cdev's first VFIO_DEVICE_ATTACH_IOMMUFD_PT that fails (drivers/iommu/iommufd/device.c
``iommufd_device_attach`` → ``iommufd_hw_pagetable_attach``, 6.12 and 7.0).

Binding claimed the device's DMA for the iommufd, which put the group on its blocking
domain. Whichever point of the first attach fails, the group is left there: an
automatic HWPT is destroyed again, the reservations go, and ``__iommu_attach_group``'s
revert (6.12: every device tried, the failed one too; 7.0: all but the failed one,
which the driver left where it was) puts the group back on ``group->domain``, the
blocking domain. The device's DMA faults, before and after.
"""

from __future__ import annotations

import errno

import pytest

from iommulab.errors import DmaFault

from ..failnth.scenarios import IOVA, _attach_pt, _bind_fd, _ioas, _t
from ..failnth.sweep import World, site_errno, sites, sweep


def _setup(platform: str, kernel: str, pt: str) -> World:
    """An IOAS with the buffer mapped at IOVA, device 0's cdev bound but never attached
    and, for ``pt == "hwpt"``, a HWPT of the IOAS made for it."""
    w = _ioas(0, True)(platform, kernel)
    w.h["cdev"] = w.p.open("/dev/vfio/devices/vfio0")
    devid = _bind_fd(w, w.h["cdev"])
    if pt == "hwpt":
        w.h["hwpt"] = _t(w).hwpt_alloc(devid, w.h["ioas"])
    return w


def _attach(w: World, pt: str) -> int:
    return _attach_pt(w, w.h["cdev"], w.h[pt])


def _blocked(w: World) -> bool:
    """The group is on its blocking domain and the device's DMA at IOVA faults."""
    dev = w.m.devices["0000:00:01.0"]
    group = dev.group
    assert group is not None
    try:
        dev.dma_read(IOVA, 8)
    except DmaFault:
        return group.domain is group.blocking_domain
    return False


CASES = [(p, k, pt) for p in ("x86-vtd", "arm64-smmuv3") for k in ("6.12", "7.0")
         for pt in ("ioas", "hwpt")]


@pytest.mark.parametrize(("platform", "kernel", "pt"), CASES)
def test_a_failed_first_attach_leaves_the_group_blocked(platform: str, kernel: str,
                                                        pt: str) -> None:
    """Each allocation point of the first attach failed in turn (those the kernel
    absorbs let it succeed): the group is on its blocking domain after every refusal."""
    log = sites(lambda: _setup(platform, kernel, pt), lambda w: _attach(w, pt))
    refused = 0
    for n in range(1, len(log) + 1):
        w = _setup(platform, kernel, pt)
        assert _blocked(w)
        fail = w.m.mem.fail_nth
        fail.arm(n)
        try:
            _attach(w, pt)
        except OSError as e:
            assert fail.fired is not None and e.errno == site_errno(fail.fired)
            assert _blocked(w), f"n={n} at {fail.fired}: the group left its blocking domain"
            refused += 1
        else:
            assert not _blocked(w)  # attached: DMA through the IOAS
        fail.disarm()
        w.close()
    assert refused >= 3


@pytest.mark.parametrize(("platform", "kernel", "pt"), CASES)
def test_a_failed_first_attach_leaves_no_trace(platform: str, kernel: str, pt: str) -> None:
    points = sweep(lambda: _setup(platform, kernel, pt), lambda w: _attach(w, pt))
    assert {p.errno for p in points} <= {errno.ENOMEM, None}
