"""A failed replace of a cdev's attachment (drivers/iommu/iommufd/device.c
``iommufd_device_do_replace``, 6.12 and 7.0).

Its error path (``err_unresv``) takes every reservation the group's devices hold out of
the new HWPT's IOAS (``iommufd_group_remove_reserved_iova``). Between two IOASes those
are the ones the replace just made. Within one IOAS none was made (the group's
reservations there are those of its current attachment), yet they go too: the device
stays attached, and its reserved ranges (the MSI window) can then be mapped. The model
keeps this kernel wart.
"""

from __future__ import annotations

import errno

import pytest

from iommulab.iommu.resv import ResvType

from ..failnth.scenarios import PAGE, _attach_pt, _bind_fd, _ioas, _t
from ..failnth.sweep import World, sites

KERNELS = ("6.12", "7.0")
PLATFORMS = ("x86-vtd", "arm64-smmuv3")


def _setup(platform: str, kernel: str, *, same_ioas: bool) -> World:
    """Device 0's cdev bound and attached to an IOAS; a HWPT (``h["hwpt"]``) made for it
    in that IOAS, or in a second one; ``h["resv"]``: the start of a region the device
    has reserved."""
    w = _ioas(0, True)(platform, kernel)
    t = _t(w)
    w.h["cdev"] = w.p.open("/dev/vfio/devices/vfio0")
    devid = _bind_fd(w, w.h["cdev"])
    _attach_pt(w, w.h["cdev"], w.h["ioas"])
    w.h["ioas2"] = w.h["ioas"] if same_ioas else t.ioas_alloc()
    w.h["hwpt"] = t.hwpt_alloc(devid, w.h["ioas2"])
    dev = w.m.devices["0000:00:01.0"]
    w.h["resv"] = next(r.start for r in w.m.core.get_resv_regions(dev)
                       if r.type != ResvType.DIRECT_RELAXABLE)
    return w


def _replace(w: World) -> int:
    return _attach_pt(w, w.h["cdev"], w.h["hwpt"])


def _fail_replace(w: World, platform: str, kernel: str, same_ioas: bool) -> None:
    """The replace with its attach handle's allocation failed: ENOMEM."""
    log = sites(lambda: _setup(platform, kernel, same_ioas=same_ioas), _replace)
    w.m.mem.fail_nth.arm(log.index("kzalloc(iommufd_attach_handle)") + 1)
    with pytest.raises(OSError) as e:
        _replace(w)
    w.m.mem.fail_nth.disarm()
    assert e.value.errno == errno.ENOMEM


def _map_at(w: World, ioas: str, iova: int) -> int:
    """IOAS_MAP of one page at ``iova``: 0, or the errno."""
    try:
        _t(w).map_fixed(w.h[ioas], w.h["buf"], PAGE, iova)
    except OSError as e:
        return e.errno or 0
    return 0


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("platform", PLATFORMS)
def test_a_failed_replace_within_an_ioas_frees_the_reserved_ranges(platform: str,
                                                                    kernel: str) -> None:
    w = _setup(platform, kernel, same_ioas=True)
    group = w.m.devices["0000:00:01.0"].group
    assert group is not None
    domain = group.domain
    assert _map_at(w, "ioas", w.h["resv"]) == errno.EINVAL  # iopt_check_iova: a reserved range
    _fail_replace(w, platform, kernel, same_ioas=True)
    assert group.domain is domain  # still attached as before
    assert _map_at(w, "ioas", w.h["resv"]) == 0
    w.close()


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("platform", PLATFORMS)
def test_a_failed_replace_into_another_ioas_keeps_the_reservations(platform: str,
                                                                   kernel: str) -> None:
    """Between two IOASes only the new reservations go: the old IOAS keeps the device's,
    the new one has none."""
    w = _setup(platform, kernel, same_ioas=False)
    _fail_replace(w, platform, kernel, same_ioas=False)
    assert _map_at(w, "ioas", w.h["resv"]) == errno.EINVAL  # iopt_check_iova: a reserved range
    assert _map_at(w, "ioas2", w.h["resv"]) == 0
    w.close()
