"""IOMMU_DESTROY's allocation points (drivers/iommu/iommufd/main.c ``iommufd_destroy``,
selftest.c ``iommufd_selftest_destroy``; 6.12 and 7.0).

``iommufd_object_remove`` takes the object out of ``ictx->objects`` with
``xas_store(NULL)``, which never allocates, and the destroy ops of an IOAS and of a
HWPT free without allocating (an unfilled area's batch falls back to the stack). A
selftest mock device's destroy ends in ``device_unregister``, whose KOBJ_REMOVE uevent
allocates its buffers after the IOMMU let the device go; ``device_del`` ignores their
failure. A mock device leaves nothing behind, its MOCK_DOMAIN_FLAGS included.
"""

from __future__ import annotations

import pytest

from iommulab.iommufd.selftest import MOCK_FLAGS_DEVICE_HUGE_IOVA, MOCK_FLAGS_DEVICE_NO_DIRTY

from .scenarios import _ioas, _t
from .state import diff, snapshot
from .sweep import World, sites, sweep

KERNELS = ("6.12", "7.0")
UEVENT = ["device_del: kzalloc(kobj_uevent_env)", "device_del: kzalloc(kobject_get_path)"]
#: the unfill's batch that falls back to the stack when its buffer cannot be had
UNFILL = "kmalloc(temp_kmalloc)"


def _stdev(kernel: str, flags: int = MOCK_FLAGS_DEVICE_NO_DIRTY) -> World:
    """A mock device made with MOCK_DOMAIN_FLAGS on an IOAS holding a mapping."""
    w = _ioas(0, True)("mock", kernel)
    w.h["md"] = _t(w).mock_domain(w.h["ioas"], flags)
    return w


def _destroy_stdev(w: World) -> None:
    _t(w).destroy(w.h["md"].stdev_id)


@pytest.mark.parametrize("kernel", KERNELS)
def test_mock_device_destroy_points_in_kernel_order(kernel: str) -> None:
    """Detach (its automatic HWPT goes, the mapping's pages unpinned from the last
    domain), unbind, and only then device_del's uevent buffers: the environment, and the
    path only once that was had."""
    assert sites(lambda: _stdev(kernel), _destroy_stdev) == [UNFILL, *UEVENT]


@pytest.mark.parametrize("kernel", KERNELS)
def test_mock_device_destroy_absorbs_every_point(kernel: str) -> None:
    """Each point failed in turn: the destroy still succeeds and releases everything."""
    points = sweep(lambda: _stdev(kernel), _destroy_stdev)
    assert [(p.site, p.errno) for p in points] == [(UNFILL, None), (UEVENT[0], None),
                                                    (UEVENT[1], None)]


@pytest.mark.parametrize(("kernel", "flags"), [
    ("6.12", MOCK_FLAGS_DEVICE_NO_DIRTY), ("6.12", MOCK_FLAGS_DEVICE_HUGE_IOVA),
    ("7.0", MOCK_FLAGS_DEVICE_NO_DIRTY)])
def test_a_destroyed_mock_device_leaves_nothing(kernel: str, flags: int) -> None:
    """MOCK_DOMAIN_FLAGS then IOMMU_DESTROY of the device: the world is as before the
    MOCK_DOMAIN, with no device, group or device flag left in the driver."""
    w = _ioas(0, True)("mock", kernel)
    before = snapshot(w.m, w.procs)
    w.h["md"] = _t(w).mock_domain(w.h["ioas"], flags)
    assert w.m.driver.device_flags
    _destroy_stdev(w)
    assert diff(before, snapshot(w.m, w.procs)) == []
    assert w.m.driver.device_flags == {}
    assert not w.m.core.groups and not w.m.devices
    w.close()


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("platform", ["mock", "x86-vtd", "arm64-smmuv3"])
def test_destroy_of_a_hwpt_and_an_ioas_allocates_nothing(platform: str, kernel: str) -> None:
    """A HWPT with the IOAS's mapping in its domain (another domain keeps the pages), and
    an IOAS holding a mapping: removed without an allocation point."""
    def hwpt() -> World:
        w = _ioas(1, True)(platform, kernel)
        w.h["hwpt"] = _t(w).hwpt_alloc(w.h["devs"][0][0], w.h["ioas"])
        return w

    assert sites(hwpt, lambda w: _t(w).destroy(w.h["hwpt"])) == []
    assert sites(lambda: _ioas(0, True)(platform, kernel),
                 lambda w: _t(w).destroy(w.h["ioas"])) == []
