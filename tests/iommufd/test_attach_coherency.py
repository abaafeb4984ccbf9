"""An attach does not change a HWPT's cache coherency (drivers/iommu/iommufd/
hw_pagetable.c ``iommufd_hwpt_paging_alloc``, device.c ``iommufd_hw_pagetable_attach``;
6.12 and 7.0).

Coherency is enforced once, when a HWPT is allocated for a device whose IOMMU can
enforce it, and "must be configured here and unchanged later": a HWPT made for a device
without snoop control is attached to by a device with it as it is (and, in an IOAS, an
automatic HWPT is shared so), while a coherent HWPT refuses a device without snoop
control (the VT-d driver's EINVAL, so an IOAS gets that device its own HWPT).
"""

from __future__ import annotations

import errno

import pytest

from iommulab import Machine
from iommulab.iommufd.objects import HwptPaging, IommufdCtx

from ..failnth.scenarios import Fd, _attach_pt, _bind_fd, _t
from ..failnth.sweep import World

SNOOP = "0000:00:02.0"  # behind the unit with snoop control
PLAIN = "0000:00:01.0"  # behind QEMU's unit, without


def _world(kernel: str) -> World:
    """x86-vtd with a second DMAR unit that has snoop control; a vfio-pci device behind
    each; /dev/iommu (``h["t"]``) with an IOAS; both cdevs bound (``h[bdf]``: (cdev,
    devid))."""
    m = Machine("x86-vtd", ram="256M", kernel=kernel)
    m.add_iommu_unit(snoop_control=True)
    m.add_pci_device(PLAIN)
    m.add_pci_device(SNOOP, iommu_unit=1)
    w = World(m, [])
    w.fresh_frames = m.mem.frames.total_frames - m.mem.frames.free_frames - m.mem.iommu_pages
    w.fresh_tables = m.mem.iommu_pages
    w.procs.append(m.spawn_process())
    w.h["t"] = Fd(w, w.p.open("/dev/iommu"))
    w.h["ioas"] = _t(w).ioas_alloc()
    for n, bdf in enumerate((PLAIN, SNOOP)):
        cdev = w.p.open(f"/dev/vfio/devices/vfio{n}")
        w.h[bdf] = (cdev, _bind_fd(w, cdev))
    return w


def _hwpt(w: World, id: int) -> HwptPaging:
    ctx = w.p.files[_t(w).fd].ctx  # type: ignore[attr-defined]
    assert isinstance(ctx, IommufdCtx)
    hwpt = ctx.objects[id]
    assert isinstance(hwpt, HwptPaging)
    return hwpt


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_a_coherent_device_shares_the_automatic_hwpt_as_it_is(kernel: str) -> None:
    w = _world(kernel)
    first = _attach_pt(w, w.h[PLAIN][0], w.h["ioas"])
    assert not _hwpt(w, first).enforce_cache_coherency
    assert _attach_pt(w, w.h[SNOOP][0], w.h["ioas"]) == first
    assert not _hwpt(w, first).enforce_cache_coherency
    w.close()


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_a_hwpt_keeps_the_coherency_it_was_made_with(kernel: str) -> None:
    """A non-coherent HWPT takes the coherent device and then the other one too; a
    coherent one (made for the device with snoop control) refuses the device without."""
    w = _world(kernel)
    t = _t(w)
    plain = t.hwpt_alloc(w.h[PLAIN][1], w.h["ioas"])
    assert _attach_pt(w, w.h[SNOOP][0], plain) == plain
    assert _attach_pt(w, w.h[PLAIN][0], plain) == plain
    assert not _hwpt(w, plain).enforce_cache_coherency
    coherent = t.hwpt_alloc(w.h[SNOOP][1], w.h["ioas"])
    assert _hwpt(w, coherent).enforce_cache_coherency
    with pytest.raises(OSError) as e:
        _attach_pt(w, w.h[PLAIN][0], coherent)  # a replace onto it
    assert e.value.errno == errno.EINVAL
    w.close()
