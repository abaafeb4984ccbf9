"""The software MSI window on an iommufd attach (drivers/iommu/iommufd/device.c).

Linux 6.12's ``iommufd_group_setup_msi`` calls ``iommu_get_msi_cookie`` on a HWPT's
domain, once per HWPT, when the group's device reports an IOMMU_RESV_SW_MSI region (the
SMMUv3's MSI_IOVA_BASE window): an allocation point between the device's reserved
regions and the attach handle, and a cookie the HWPT keeps even when the attach then
fails. Linux 7.0 (``iommufd_sw_msi``) allocates no cookie at attach.
"""

from __future__ import annotations

import errno

import pytest

from iommulab.dma.cookie import MsiCookie
from iommulab.iommu.resv import MSI_IOVA_BASE
from iommulab.iommufd.objects import HwptPaging, IommufdCtx

from ..failnth.scenarios import _attach_pt, _bind_fd, _detach, _iommufd, _t
from ..failnth.sweep import World, sites, sweep

COOKIE_6_12 = "kzalloc(iommu_dma_cookie)"


def _bound(platform: str, kernel: str) -> World:
    """/dev/iommu with an IOAS (``h["ioas"]``) and device 0's cdev bound (``h["cdev"]``,
    ``h["devid"]``), not attached."""
    w = _iommufd(platform, kernel)
    w.h["ioas"] = _t(w).ioas_alloc()
    w.h["cdev"] = w.p.open("/dev/vfio/devices/vfio0")
    w.h["devid"] = _bind_fd(w, w.h["cdev"])
    return w


def _with_hwpt(platform: str, kernel: str) -> World:
    """:func:`_bound` and a HWPT of the IOAS made for the device (``h["hwpt"]``)."""
    w = _bound(platform, kernel)
    w.h["hwpt"] = _t(w).hwpt_alloc(w.h["devid"], w.h["ioas"])
    return w


def _ctx(w: World) -> IommufdCtx:
    ctx = w.p.files[_t(w).fd].ctx  # type: ignore[attr-defined]
    assert isinstance(ctx, IommufdCtx)
    return ctx


def _hwpt(w: World, id: int) -> HwptPaging:
    hwpt = _ctx(w).objects[id]
    assert isinstance(hwpt, HwptPaging)
    return hwpt


def _group_blocked(w: World) -> bool:
    group = w.m.devices["0000:00:01.0"].group
    assert group is not None
    return group.domain is group.blocking_domain


def _attach(w: World, pt: str = "ioas") -> int:
    return _attach_pt(w, w.h["cdev"], w.h[pt])


@pytest.mark.parametrize(("platform", "kernel", "cookie"), [
    ("arm64-smmuv3", "6.12", True),  # IOMMU_RESV_SW_MSI: iommufd asks for the cookie
    ("arm64-smmuv3", "7.0", False),  # iommufd_sw_msi: no cookie
    ("x86-vtd", "6.12", False),  # a hardware MSI window
])
def test_attach_sets_up_the_msi_window(platform: str, kernel: str, cookie: bool) -> None:
    w = _bound(platform, kernel)
    hwpt = _hwpt(w, _attach(w))
    if cookie:
        assert isinstance(hwpt.domain.cookie, MsiCookie)
        assert hwpt.domain.cookie.msi_iova == MSI_IOVA_BASE and hwpt.msi_cookie
    else:
        assert hwpt.domain.cookie is None and not hwpt.msi_cookie
    w.close()


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_cookie_point_sits_between_the_reservations_and_the_handle(kernel: str) -> None:
    """iommufd_device_attach_reserved_iova: the device's regions reserved, then the
    cookie; only then iommufd_hwpt_attach_device's handle."""
    log = sites(lambda: _bound("arm64-smmuv3", kernel), _attach)
    handle = log.index("kzalloc(iommufd_attach_handle)")
    if kernel == "6.12":
        assert log[handle - 2:handle + 1] == [
            "kzalloc(iopt_reserved)", COOKIE_6_12, "kzalloc(iommufd_attach_handle)"]
    else:
        assert not [s for s in log if "cookie" in s]


def test_a_failed_attach_keeps_the_cookie() -> None:
    """The kernel's wart: iommufd_hw_pagetable_attach's err_unresv takes the reservations
    back but not the cookie, so the HWPT keeps it, marked, and the next attach makes
    none. The group stays on its blocking domain meanwhile."""
    log = sites(lambda: _with_hwpt("arm64-smmuv3", "6.12"), lambda w: _attach(w, "hwpt"))
    w = _with_hwpt("arm64-smmuv3", "6.12")
    hwpt = _hwpt(w, w.h["hwpt"])
    w.m.mem.fail_nth.arm(log.index("kzalloc(iommufd_attach_handle)") + 1)
    with pytest.raises(OSError) as e:
        _attach(w, "hwpt")
    w.m.mem.fail_nth.disarm()
    assert e.value.errno == errno.ENOMEM and _group_blocked(w)
    cookie = hwpt.domain.cookie
    assert isinstance(cookie, MsiCookie) and hwpt.msi_cookie and not hwpt.devices
    w.m.mem.fail_nth.log = []
    assert _attach(w, "hwpt") == w.h["hwpt"]
    assert COOKIE_6_12 not in w.m.mem.fail_nth.log and hwpt.domain.cookie is cookie
    w.m.mem.fail_nth.log = None
    w.close()


def test_one_cookie_per_hwpt_and_one_for_a_replace() -> None:
    """A HWPT attached again keeps its cookie; a replace onto another HWPT sets up that
    one's (iommufd_group_do_replace_reserved_iova)."""
    w = _with_hwpt("arm64-smmuv3", "6.12")
    t = _t(w)
    first = _hwpt(w, w.h["hwpt"])
    _attach(w, "hwpt")
    cookie = first.domain.cookie
    _detach(w, w.h["cdev"])
    fail = w.m.mem.fail_nth
    fail.log = []
    _attach(w, "hwpt")
    assert COOKIE_6_12 not in fail.log and first.domain.cookie is cookie
    w.h["hwpt2"] = t.hwpt_alloc(w.h["devid"], w.h["ioas"])
    second = _hwpt(w, w.h["hwpt2"])
    assert second.domain.cookie is None
    fail.log = []
    assert _attach(w, "hwpt2") == w.h["hwpt2"]  # a replace, within the IOAS
    assert fail.log.count(COOKIE_6_12) == 1
    assert isinstance(second.domain.cookie, MsiCookie) and second.msi_cookie
    fail.log = None
    w.close()


def test_the_group_keeps_its_sw_msi_start() -> None:
    """igroup->sw_msi_start outlives an attach: with the SW_MSI region's copy failing (a
    failure the driver absorbs) a new automatic HWPT still gets its cookie while the
    group is bound, and none once the group was let go and bound again."""
    w = _bound("arm64-smmuv3", "6.12")
    _attach(w)
    _detach(w, w.h["cdev"])  # the automatic HWPT goes
    log = sites(lambda: _bound("arm64-smmuv3", "6.12"), _attach)
    region = log.index("iommu_alloc_resv_region(SW_MSI)") + 1
    w.m.mem.fail_nth.arm(region)
    hwpt = _hwpt(w, _attach(w))
    assert w.m.mem.fail_nth.fired == "iommu_alloc_resv_region(SW_MSI)"
    assert isinstance(hwpt.domain.cookie, MsiCookie)
    _detach(w, w.h["cdev"])
    w.p.close(w.h["cdev"])  # unbind: the iommufd_group goes
    w.h["cdev"] = w.p.open("/dev/vfio/devices/vfio0")
    _bind_fd(w, w.h["cdev"])
    w.m.mem.fail_nth.arm(region)
    hwpt = _hwpt(w, _attach(w))
    assert w.m.mem.fail_nth.fired == "iommu_alloc_resv_region(SW_MSI)"
    assert hwpt.domain.cookie is None and not hwpt.msi_cookie
    w.close()


@pytest.mark.parametrize("pt", ["ioas", "hwpt"])
def test_sweep_of_the_first_attach(pt: str) -> None:
    """Every point of the first attach failed in turn on the SMMUv3 under 6.12, the
    cookie's among them: ENOMEM and no trace (the cookie a user HWPT keeps is not one)."""
    points = sweep(lambda: _with_hwpt("arm64-smmuv3", "6.12"), lambda w: _attach(w, pt))
    assert [p.errno for p in points if p.site == COOKIE_6_12] == [errno.ENOMEM]


def test_type1_cookie_point_per_kernel() -> None:
    """VFIO type1's iommu_get_msi_cookie: 6.12 allocates a whole iommu_dma_cookie, 7.0
    the smaller iommu_dma_msi_cookie."""
    from ..failnth.scenarios import SCENARIOS
    sc = next(s for s in SCENARIOS if s.name == "VFIO_SET_IOMMU(TYPE1v2)")
    for kernel, site in (("6.12", COOKIE_6_12), ("7.0", "kzalloc(iommu_dma_msi_cookie)")):
        log = sites(lambda k=kernel: sc.setup("arm64-smmuv3", k), sc.op)  # type: ignore[misc]
        assert [s for s in log if "cookie" in s] == [site]
