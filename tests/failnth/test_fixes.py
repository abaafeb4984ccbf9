"""Model bugs the fail-nth sweeps found by following the kernel's order, each as a rule."""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest

from iommulab.eventfd import EventFdFile
from iommulab.iommufd import uapi as u
from iommulab.iommufd.objects import Device
from iommulab.vfio import uapi as vu

from ..helpers import expect_errno, make_host
from .scenarios import _bind_fd, _cdev, _edu, _irqs
from .sweep import World, sites

TRIGGER, EVENTFD = vu.VFIO_IRQ_SET_ACTION_TRIGGER, vu.VFIO_IRQ_SET_DATA_EVENTFD
INTX = vu.VFIO_PCI_INTX_IRQ_INDEX

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


# -- vfio-pci ----------------------------------------------------------------------------------
def _fail_at(build: Callable[[], World], site: str, op: Callable[[World], object],
             code: int = errno.ENOMEM) -> World:
    """A world from ``build`` on which ``op`` ran with its first point named ``site``
    failed (the point's index read from a run on another world built the same way) and
    failed with ``code``."""
    n = sites(build, op).index(site) + 1
    w = build()
    w.m.mem.fail_nth.arm(n)
    try:
        expect_errno(code, op, w)
    finally:
        w.m.mem.fail_nth.disarm()
    assert w.m.mem.fail_nth.fired == site
    return w


@pytest.mark.parametrize("platform", ["x86-vtd", "arm64-smmuv3"])
def test_failed_intx_enable_puts_its_trigger(platform: str) -> None:
    """``vfio_pci_set_intx_trigger`` puts the eventfd it took whenever
    ``vfio_intx_enable`` fails, ENOMEM included: the eventfd keeps only its file's
    reference, and a retry enables INTx."""
    op = _irqs(TRIGGER | EVENTFD, INTX, 0, 1, "efd")
    w = _fail_at(lambda: _edu()(platform, "6.12"), "kasprintf(vfio-intx name)", op)
    efd = w.p.files[w.h["efd"]]
    assert isinstance(efd, EventFdFile) and efd.ctx.kref == 1
    op(w)
    assert efd.ctx.kref == 2
    w.close()


@pytest.mark.parametrize("cdev", [False, True], ids=["group", "cdev"])
def test_failed_device_open_undoes_the_bind_or_the_container_use(cdev: bool) -> None:
    """``vfio_df_device_first_open`` undoes ``vfio_device_group_use_iommu`` or
    ``vfio_df_iommufd_bind`` when the driver's ``open_device`` fails (here
    ``vfio_config_init``'s ENOMEM): the group is no longer used (UNSET_CONTAINER
    works) or the device no longer bound (a second BIND succeeds)."""
    def op(w: World) -> object:
        if cdev:
            return _bind_fd(w, w.h["cdev"])
        return w.p.ioctl(w.h["g"], vu.VFIO_GROUP_GET_DEVICE_FD, bytearray(b"0000:00:01.0\0"))
    build = _cdev(bound=False) if cdev else _edu(device=False)
    w = _fail_at(lambda: build("x86-vtd", "6.12"), "kmalloc(pci_config_map)", op)
    vdev = w.m.vfio_devices["0000:00:01.0"]
    assert vdev.open_count == 0 and vdev.idev is None and vdev.pci is None
    if cdev:
        op(w)
        assert vdev.idev is not None
    else:
        w.p.ioctl(w.h["g"], vu.VFIO_GROUP_UNSET_CONTAINER)
    w.close()
