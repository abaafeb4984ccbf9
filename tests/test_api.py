"""The high-level API (:mod:`iommulab.api`): end to end on the model, and on the real
kernel as far as this machine allows: each call made with :class:`RealKernel` on a
regular file reaches ``fcntl.ioctl`` (which the kernel answers ENOTTY) with the same
argument bytes the model was given for the same call."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import runpy
import struct
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from iommulab import Machine
from iommulab.api import (
    Iommufd,
    Kernel,
    ModelKernel,
    RealKernel,
    VfioContainer,
    VfioDevice,
    VfioGroup,
)
from iommulab.uapi import iommufd as iu
from iommulab.uapi import vfio as vu
from tests.helpers import assert_groups_released, expect_errno

IOVA = 1 << 32
BDF = "0000:00:02.0"


def _type1(k: ModelKernel, m: Machine) -> tuple[VfioContainer, VfioGroup]:
    c = VfioContainer.open(k)
    group = m.add_pci_device(BDF).iommu_group
    assert group is not None
    g = VfioGroup.open(group, k)
    g.set_container(c)
    c.set_iommu(vu.VFIO_TYPE1v2_IOMMU)
    return c, g


def test_type1_container_group_and_device_on_the_model() -> None:
    m = Machine("x86-vtd", ram="1G")
    k = ModelKernel(m.spawn_process(memlock_limit="64M"))
    c = VfioContainer.open(k)
    dev = m.add_pci_device(BDF, model="edu")  # QEMU's edu: INTx and MSI, no reset
    assert dev.iommu_group is not None
    g = VfioGroup.open(dev.iommu_group, k)
    assert g.status() == vu.VFIO_GROUP_FLAGS_VIABLE
    expect_errno(errno.EINVAL, c.set_iommu)  # no group yet
    g.set_container(c)
    assert g.status() == vu.VFIO_GROUP_FLAGS_VIABLE | vu.VFIO_GROUP_FLAGS_CONTAINER_SET
    assert c.check_extension(vu.VFIO_TYPE1v2_IOMMU) == 1
    c.set_iommu()
    info = c.get_info()
    assert info.flags == vu.VFIO_IOMMU_INFO_PGSIZES | vu.VFIO_IOMMU_INFO_CAPS
    assert info.iova_pgsizes & 0x1000 and info.iova_ranges and info.migration is not None
    assert info.dma_avail is not None and info.dma_avail > 0
    buf = k.alloc(4 << 20)
    c.vfio_dma_map(IOVA, 4 << 20, buf)
    expect_errno(errno.EEXIST, c.vfio_dma_map, IOVA, 4096, buf)
    dev.dma_write(IOVA + 5000, b"hello")
    assert k.read(buf + 5000, 5) == b"hello"
    c.start_dirty_pages()
    dev.dma_write(IOVA + 8192, b"x")
    bitmap = c.get_dirty_bitmap(IOVA, 4 << 20)
    # no device pinned pages itself (pinned_page_dirty_scope unset): every page of the
    # mapping is reported dirty (vfio_dma_populate_bitmap), on each call
    assert bitmap == b"\xff" * 128
    unmapped, bits = c.vfio_dma_unmap_dirty(IOVA, 4 << 20)
    assert unmapped == 4 << 20 and bits == b"\xff" * 128
    c.stop_dirty_pages()
    expect_errno(errno.EINVAL, c.vfio_dma_unmap, IOVA + 1, 4096)
    d = g.get_device_fd(BDF)
    info_d = d.get_info()
    assert info_d.flags == vu.VFIO_DEVICE_FLAGS_PCI and info_d.num_regions == 9
    cfg = d.region_info(vu.VFIO_PCI_CONFIG_REGION_INDEX)
    assert cfg.size == 256
    assert d.read_region(vu.VFIO_PCI_CONFIG_REGION_INDEX, 0, 2) == \
        k.pread(d.fd, 2, int(cfg.offset))
    assert d.irq_info(vu.VFIO_PCI_MSIX_IRQ_INDEX).count == 0
    assert d.irq_info(vu.VFIO_PCI_INTX_IRQ_INDEX).count == 1
    efd = k.proc.eventfd()
    d.set_irqs(vu.VFIO_PCI_INTX_IRQ_INDEX,
               vu.VFIO_IRQ_SET_DATA_EVENTFD | vu.VFIO_IRQ_SET_ACTION_TRIGGER, 0, 1,
               struct.pack("<i", efd))
    expect_errno(errno.EINVAL, d.set_irqs, vu.VFIO_PCI_MSI_IRQ_INDEX,
                 vu.VFIO_IRQ_SET_DATA_EVENTFD | vu.VFIO_IRQ_SET_ACTION_TRIGGER, 0, 1,
                 struct.pack("<i", efd))  # INTx is on: MSI cannot be too
    d.set_irqs(vu.VFIO_PCI_INTX_IRQ_INDEX,
               vu.VFIO_IRQ_SET_DATA_NONE | vu.VFIO_IRQ_SET_ACTION_TRIGGER)  # count 0: off
    k.close(efd)
    expect_errno(errno.EINVAL, d.reset)  # vfio_pci_ioctl_reset: no reset method
    expect_errno(errno.ENODEV, g.get_device_fd, "0000:00:09.0")
    d.close()
    g.unset_container()
    g.close()
    c.close()
    k.proc.exit()
    assert_groups_released(m)


def test_iommufd_selftest_helpers_on_the_model() -> None:
    m = Machine("x86-vtd", ram="1G")
    dev = m.add_pci_device(BDF)
    k = ModelKernel(m.spawn_process(memlock_limit="64M"))
    fd = Iommufd.open(k)
    ioas = fd.ioas_alloc()
    cdev = VfioDevice.open_cdev("/dev/vfio/devices/vfio0", k)
    dev_id = cdev.bind_iommufd(fd)
    hwpt = fd.hwpt_alloc(dev_id, ioas)
    assert cdev.attach_pt(hwpt) == hwpt
    ranges, align = fd.ioas_iova_ranges(ioas)
    assert align == 4096 and all(start <= last for start, last in ranges)
    buf = k.alloc(2 << 20)
    iova = fd.ioas_map(ioas, buf, 2 << 20)
    assert fd.ioas_map(ioas, buf, 4096, iova=IOVA) == IOVA
    expect_errno(errno.EEXIST, fd.ioas_map, ioas, buf, 4096, iova=IOVA)
    dev.dma_write(iova + 100, b"dma")
    assert k.read(buf + 100, 3) == b"dma"
    ioas2 = fd.ioas_alloc()
    fd.ioas_allow_iovas(ioas2, [(1 << 30, (1 << 31) - 1)])
    copied = fd.ioas_copy(ioas2, ioas, iova, 2 << 20)
    assert 1 << 30 <= copied < 1 << 31
    assert fd.option(iu.IOMMU_OPTION_HUGE_PAGES, op=iu.IOMMU_OPTION_OP_GET,
                     object_id=ioas) == 1
    assert fd.ioas_unmap(ioas, IOVA, 4096) == 4096
    expect_errno(errno.ENOENT, fd.ioas_unmap, ioas, IOVA, 4096)
    expect_errno(errno.EBUSY, fd.destroy, hwpt)  # the device is attached
    cdev.detach_pt()
    fd.destroy(hwpt)
    expect_errno(errno.ENOENT, fd.destroy, hwpt)
    assert fd.ioas_unmap(ioas2, 0, (1 << 64) - 1) == 2 << 20
    cdev.close()
    fd.close()
    k.proc.exit()
    assert_groups_released(m)


def test_objects_built_from_one_process_share_its_kernel() -> None:
    m = Machine("mock", ram="256M")
    p = m.spawn_process(memlock_limit="16M")
    a, b = Iommufd.open(p), Iommufd.open(p)
    assert a.kernel is b.kernel and isinstance(a.kernel, ModelKernel)
    a.ioas_alloc()
    b.ioas_alloc()
    assert [req for req, _ in a.kernel.calls] == [iu.IOMMU_IOAS_ALLOC] * 2
    assert isinstance(Iommufd(a.fd).kernel, RealKernel)  # an fd alone: the running kernel
    p.exit()


def test_dirty_tracking_on_the_model() -> None:
    """SMMUv3 tracks dirty pages (4K granule: the lab's split); QEMU's VT-d unit does not
    and refuses a dirty-tracking HWPT."""
    m = Machine("arm64-smmuv3", ram="1G")
    m.dirty_granule = 4096
    dev = m.add_pci_device(BDF)
    k = ModelKernel(m.spawn_process(memlock_limit="64M"))
    fd = Iommufd.open(k)
    cdev = VfioDevice.open_cdev("/dev/vfio/devices/vfio0", k)
    dev_id = cdev.bind_iommufd(fd)
    ioas = fd.ioas_alloc()
    hwpt = fd.hwpt_alloc(dev_id, ioas, iu.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    cdev.attach_pt(hwpt)
    buf = k.alloc(1 << 20)
    iova = fd.ioas_map(ioas, buf, 1 << 20, iova=IOVA)
    fd.hwpt_set_dirty_tracking(hwpt, True)
    assert fd.hwpt_get_dirty_bitmap(hwpt, iova, 1 << 20) == bytes(32)
    dev.dma_write(iova + 3 * 4096, b"d")
    bitmap = fd.hwpt_get_dirty_bitmap(hwpt, iova, 1 << 20,
                                      flags=iu.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR)
    assert bitmap == b"\x08" + bytes(31)
    assert fd.hwpt_get_dirty_bitmap(hwpt, iova, 1 << 20) == bitmap  # read, then cleared
    assert fd.hwpt_get_dirty_bitmap(hwpt, iova, 1 << 20) == bytes(32)
    fd.hwpt_set_dirty_tracking(hwpt, False)
    cdev.detach_pt()
    fd.destroy(hwpt)
    cdev.close()
    fd.close()
    k.proc.exit()
    assert_groups_released(m)

    m = Machine("x86-vtd", ram="1G")
    m.add_pci_device(BDF)
    k = ModelKernel(m.spawn_process(memlock_limit="64M"))
    fd = Iommufd.open(k)
    cdev = VfioDevice.open_cdev("/dev/vfio/devices/vfio0", k)
    dev_id = cdev.bind_iommufd(fd)
    expect_errno(errno.EOPNOTSUPP, fd.hwpt_alloc, dev_id, fd.ioas_alloc(),
                 iu.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    k.proc.exit()


# -- the real-kernel path --------------------------------------------------------------------------

@pytest.fixture
def plain_fd(tmp_path: Path) -> Iterator[int]:
    """A regular file: every VFIO or iommufd ioctl on it is the kernel's ENOTTY."""
    fd = os.open(tmp_path / "not-a-device", os.O_RDWR | os.O_CREAT)
    yield fd
    os.close(fd)


#: pointer fields the two kernels fill with their own addresses
_POINTERS = {(iu.IOMMU_IOAS_IOVA_RANGES, 16), (iu.IOMMU_IOAS_ALLOW_IOVAS, 16),
             (iu.IOMMU_HWPT_GET_DIRTY_BITMAP, 40), (iu.IOMMU_IOAS_MAP, 16),
             (vu.VFIO_IOMMU_MAP_DMA, 8), (vu.VFIO_IOMMU_DIRTY_PAGES, 40)}


def _masked(request: int, data: bytes) -> bytes:
    for req, off in _POINTERS:
        if req == request and len(data) >= off + 8:
            data = data[:off] + bytes(8) + data[off + 8:]
    return data


#: (class, method, arguments): one call each, with the arguments the model accepts
_CALLS: list[tuple[str, str, tuple[int, ...]]] = [
    ("iommufd", "ioas_alloc", ()),
    ("iommufd", "ioas_map", (1, 0, 1 << 20)),
    ("iommufd", "ioas_unmap", (1, 0, 4096)),
    ("iommufd", "ioas_copy", (2, 1, 0, 4096)),
    ("iommufd", "ioas_iova_ranges", (1,)),
    ("iommufd", "option", (iu.IOMMU_OPTION_HUGE_PAGES, 0)),
    ("iommufd", "destroy", (7,)),
    ("iommufd", "hwpt_alloc", (1, 2, iu.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)),
    ("iommufd", "hwpt_set_dirty_tracking", (3, 1)),
    ("iommufd", "hwpt_get_dirty_bitmap", (3, 0, 1 << 20)),
    ("container", "check_extension", (vu.VFIO_TYPE1v2_IOMMU,)),
    ("container", "set_iommu", ()),
    ("container", "get_info", ()),
    ("container", "vfio_dma_map", (IOVA, 4096, 0)),
    ("container", "vfio_dma_unmap", (IOVA, 4096)),
    ("container", "start_dirty_pages", ()),
    ("container", "get_dirty_bitmap", (IOVA, 1 << 20)),
    ("group", "status", ()),
    ("group", "unset_container", ()),
    ("device", "get_info", ()),
    ("device", "region_info", (vu.VFIO_PCI_CONFIG_REGION_INDEX,)),
    ("device", "irq_info", (vu.VFIO_PCI_MSI_IRQ_INDEX,)),
    ("device", "set_irqs", (vu.VFIO_PCI_MSI_IRQ_INDEX,
                            vu.VFIO_IRQ_SET_DATA_NONE | vu.VFIO_IRQ_SET_ACTION_TRIGGER)),
    ("device", "reset", ()),
]


def _objects(k: Kernel, fds: dict[str, int]) -> dict[str, object]:
    return {"iommufd": Iommufd(fds["iommufd"], k), "container": VfioContainer(fds["container"], k),
            "group": VfioGroup(fds["group"], k), "device": VfioDevice(fds["device"], k)}


@pytest.mark.parametrize("kind, method, args", _CALLS, ids=[f"{c}.{m}" for c, m, _ in _CALLS])
def test_the_real_kernel_path_hands_fcntl_the_bytes_the_model_gets(
        kind: str, method: str, args: tuple[int, ...], plain_fd: int) -> None:
    m = Machine("x86-vtd", ram="1G")
    dev = m.add_pci_device(BDF)
    model = ModelKernel(m.spawn_process(memlock_limit="64M"))
    assert dev.iommu_group is not None
    c, g = VfioContainer.open(model), VfioGroup.open(dev.iommu_group, model)
    fds = {"iommufd": model.open("/dev/iommu"), "container": c.fd, "group": g.fd}
    if kind in ("container", "device"):
        g.set_container(c)
    if kind == "device":
        c.set_iommu()
        fds["device"] = g.get_device_fd(BDF).fd
    else:
        fds["device"] = model.open("/dev/vfio/devices/vfio0")
    model.calls.clear()
    call: Callable[..., object] = getattr(_objects(model, fds)[kind], method)
    with contextlib.suppress(OSError):  # the model's answer; its bytes are what is compared
        call(*args)
    assert model.calls
    real = RealKernel()
    real_call: Callable[..., object] = getattr(
        _objects(real, dict.fromkeys(fds, plain_fd))[kind], method)
    expect_errno(errno.ENOTTY, real_call, *args)
    assert len(real.calls) == 1  # the first ioctl failed: nothing after it
    (req, data), (mreq, mdata) = real.calls[0], model.calls[0]
    assert req == mreq and _masked(req, data) == _masked(mreq, mdata)
    model.proc.exit()


def test_the_real_kernel_path_writes_back_in_place() -> None:
    """RealKernel's ioctl passes the struct itself with mutate_flag: a real ioctl's
    answer lands in it (FIONREAD on a pipe writes the count into the first int)."""
    import termios
    r, w = os.pipe()
    try:
        os.write(w, b"four")
        arg = ctypes.c_int32(-1)
        assert RealKernel().ioctl(r, termios.FIONREAD, arg) == 0
        assert arg.value == 4
    finally:
        os.close(r)
        os.close(w)


def test_the_example_runs_on_the_model_and_skips_without_dev_iommu(
        capsys: pytest.CaptureFixture[str]) -> None:
    path = Path(__file__).parents[1] / "examples" / "both_kernels.py"
    ns = runpy.run_path(str(path))
    assert ns["main"]([]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("device 1: 2 MiB buffer mapped at IOVA 0x")
    assert out[2] == "unmapped 0x200000 bytes"
    if not os.path.exists("/dev/iommu"):
        assert ns["main"](["--real"]) == 0
        assert "skipped" in capsys.readouterr().out
    assert sys.modules  # the script did not exit the interpreter


def test_fault_queue_alloc_on_the_model() -> None:
    """``Iommufd.fault_queue_alloc``: an id and an fd; the object is busy while the fd
    is open (the fd holds it) and goes once the fd is closed."""
    m = Machine("mock", ram="256M")
    k = ModelKernel(m.spawn_process(memlock_limit="64M"))
    fd = Iommufd.open(k)
    fault_id, fault_fd = fd.fault_queue_alloc()
    assert fault_id == 1 and fault_fd > fd.fd
    expect_errno(errno.EBUSY, fd.destroy, fault_id)
    k.close(fault_fd)
    fd.destroy(fault_id)
    expect_errno(errno.ENOENT, fd.destroy, fault_id)
    fd.close()
