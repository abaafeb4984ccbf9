"""VFIO device cdevs and the group's device fds where they meet iommufd, as
drivers/vfio/device_cdev.c, vfio_main.c, iommufd.c and group.c answer, in 6.12 and 7.0.

Every test ends with the process gone and checks that nothing is left: no device object,
no open or bound VFIO device, no pin, no locked or pinned memory.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterator

import pytest

from iommulab import Machine, Process
from iommulab.iommufd import uapi as iu
from iommulab.iommufd.file import IommufdFile
from iommulab.iommufd.objects import Device
from iommulab.vfio import uapi as u

from ..helpers import Host, expect_errno

BDF = "0000:00:02.0"
SZ_2M = 2 << 20


class VfioHost(Host):
    """A process on a one-device machine with a /dev/iommu open; every VFIO device is
    checked after each ioctl."""

    def __init__(self, kernel: str = "6.12", platform: str = "x86-vtd") -> None:
        m = Machine(platform, ram="1G", kernel=kernel)
        self.dev = m.add_pci_device(BDF)
        p: Process = m.spawn_process(memlock_limit="64M")
        super().__init__(m, p, p.open("/dev/iommu"))
        f = self.p.files[self.iommufd]
        assert isinstance(f, IommufdFile)
        self.ctx = f.ctx
        self.group_path = f"/dev/vfio/{self.dev.iommu_group}"

    def ioctl(self, fd: int, request: int, buf: bytes) -> bytearray:
        arg = super().ioctl(fd, request, buf)
        self.check()
        return arg

    def check(self) -> None:
        for vdev in self.m.vfio_devices.values():
            vdev._check()

    def map_buffer(self, ioas: int, iova: int, length: int = SZ_2M) -> int:
        """``length`` bytes of THP memory mapped at ``iova``: their address."""
        buf = self.p.mmap(length, "thp", populate=True)
        self.ioctl(self.iommufd, iu.IOMMU_IOAS_MAP,
                   iu.IOAS_MAP.pack(40, 7, ioas, 0, buf, length, iova))  # FIXED|W|R
        return buf

    def mapped_through_cdev(self) -> tuple[int, int]:
        """A bound cdev attached to an IOAS with 2M mapped at IOVA 1G."""
        cdev = self.open_cdev()
        self.bind_cdev(cdev)
        ioas = self.ioas()
        self.attach(cdev, ioas)
        self.map_buffer(ioas, 1 << 30)
        return cdev, ioas

    def dma_works(self) -> bool:
        try:
            self.dev.dma_write(1 << 30, b"x")
        except OSError:
            return False
        return True

    def devices(self) -> int:
        return sum(isinstance(o, Device) for o in self.ctx.objects.values())

    def group_status(self, g: int) -> int:
        return int(u.GROUP_STATUS.unpack(self.ioctl(g, u.VFIO_GROUP_GET_STATUS,
                                                    u.GROUP_STATUS.pack(8, 0)))[1])

    def group_on_iommufd(self) -> int:
        g = self.p.open(self.group_path)
        self.p.ioctl(g, u.VFIO_GROUP_SET_CONTAINER, bytearray(struct.pack("<i", self.iommufd)))
        return g

    def device_fd(self, kind: str) -> int:
        """A bound cdev, or a device fd of the group set to the iommufd."""
        if kind == "cdev":
            return self.bind(0)[0]
        return self.p.ioctl(self.group_on_iommufd(), u.VFIO_GROUP_GET_DEVICE_FD,
                            bytearray(BDF.encode() + b"\0"))

    def close(self) -> None:
        self.check()
        self.p.exit()
        assert not self.ctx.objects  # the context went with its last reference
        for vdev in self.m.vfio_devices.values():
            assert (vdev.open_count, vdev.idev, vdev.cdev_opened) == (0, None, False)
        assert self.m.mem.pins.pins == 0
        assert self.p.mm.pinned_vm == 0 and self.p.mm.locked_vm == 0
        assert self.p.user.locked_vm == 0


@pytest.fixture(params=["6.12", "7.0"])
def h(request: pytest.FixtureRequest) -> Iterator[VfioHost]:
    host = VfioHost(request.param)
    yield host
    host.close()


@pytest.fixture
def h612() -> Iterator[VfioHost]:
    host = VfioHost("6.12")
    yield host
    host.close()


@pytest.fixture
def h70() -> Iterator[VfioHost]:
    host = VfioHost("7.0")
    yield host
    host.close()


# -- row 4: GET_STATUS of a group on an iommufd -------------------------------------------------
def test_group_status_with_an_iommufd_is_viable_and_container_set(h: VfioHost) -> None:
    """group.c vfio_group_ioctl_get_status: ``vfio_group_has_iommu()`` is a container or an
    iommufd, and then the flags are VIABLE | CONTAINER_SET."""
    g = h.p.open(h.group_path)
    assert h.group_status(g) == u.VFIO_GROUP_FLAGS_VIABLE
    h.p.ioctl(g, u.VFIO_GROUP_SET_CONTAINER, bytearray(struct.pack("<i", h.iommufd)))
    assert h.group_status(g) == u.VFIO_GROUP_FLAGS_VIABLE | u.VFIO_GROUP_FLAGS_CONTAINER_SET
    h.p.ioctl(g, u.VFIO_GROUP_UNSET_CONTAINER)
    assert h.group_status(g) == u.VFIO_GROUP_FLAGS_VIABLE


def test_group_status_not_viable_while_an_iommufd_owns_its_dma(h: VfioHost) -> None:
    """Without a container VIABLE needs ``!iommu_group_dma_owner_claimed()``: a device fd
    of the iommufd path outlives its group fd (it holds no reference to it), keeps the
    device bound, and the group opened again is not viable."""
    g = h.group_on_iommufd()
    dfd = h.p.ioctl(g, u.VFIO_GROUP_GET_DEVICE_FD, bytearray(BDF.encode() + b"\0"))
    h.p.close(g)
    g = h.p.open(h.group_path)
    assert h.group_status(g) == 0
    h.p.close(dfd)
    assert h.group_status(g) == u.VFIO_GROUP_FLAGS_VIABLE


# -- row 11: a bound cdev is a device fd ---------------------------------------------------------
def test_bound_cdev_answers_the_device_ioctls_and_mmap(h: VfioHost) -> None:
    """vfio_main.c vfio_device_fops_unl_ioctl / _mmap: once ``access_granted``, what is not
    a cdev ioctl goes to ``device->ops`` (vfio-pci) as for a group's device fd; before
    that every ioctl but BIND and mmap are EINVAL."""
    cdev = h.open_cdev()
    info = u.DEVICE_INFO.pack(24, 0, 0, 0, 0, 0)
    expect_errno(errno.EINVAL, h.p.ioctl, cdev, u.VFIO_DEVICE_GET_INFO, bytearray(info))
    expect_errno(errno.EINVAL, h.p.mmap, 4096, "anon", "rw", False, cdev, 0)
    h.bind_cdev(cdev)
    out = u.DEVICE_INFO.unpack(h.ioctl(cdev, u.VFIO_DEVICE_GET_INFO, info))
    assert out[1:4] == (u.VFIO_DEVICE_FLAGS_PCI | u.VFIO_DEVICE_FLAGS_RESET,
                        u.VFIO_PCI_NUM_REGIONS, u.VFIO_PCI_NUM_IRQS)
    region = u.REGION_INFO.unpack(h.ioctl(cdev, u.VFIO_DEVICE_GET_REGION_INFO,
                                          u.REGION_INFO.pack(32, 0, 0, 0, 0, 0)))
    assert region[4] == h.dev.bar0_size and region[1] & u.VFIO_REGION_INFO_FLAG_MMAP
    bar = h.p.mmap(4096, fd=cdev, offset=region[5])
    h.p.write(bar, b"\x01\x02")
    assert h.m.mem.read(h.dev.bar0, 2) == b"\x01\x02"  # the BAR itself
    # MAP_DMA's number is VFIO_DEVICE_PCI_HOT_RESET on a device fd: argsz 0 is EINVAL;
    # QUERY_GFX_PLANE (VFIO_BASE + 14) is no vfio-pci ioctl
    expect_errno(errno.EINVAL, h.p.ioctl, cdev, u.VFIO_IOMMU_MAP_DMA, bytearray(32))
    expect_errno(errno.ENOTTY, h.p.ioctl, cdev, u.VFIO_IOMMU_MAP_DMA + 1, bytearray(32))
    h.p.munmap(bar, 4096)


def test_group_device_fd_refuses_the_cdev_ioctls(h: VfioHost) -> None:
    """BIND_IOMMUFD on a group's device fd reads its struct then is EINVAL (``df->group``);
    ATTACH/DETACH are cdev-only, so vfio-pci gets them and answers ENOTTY."""
    g = h.group_on_iommufd()
    dfd = h.p.ioctl(g, u.VFIO_GROUP_GET_DEVICE_FD, bytearray(BDF.encode() + b"\0"))
    expect_errno(errno.EINVAL, h.p.ioctl, dfd, u.VFIO_DEVICE_BIND_IOMMUFD,
                 bytearray(u.BIND_IOMMUFD.pack(16, 0, h.iommufd, 0)))
    expect_errno(errno.EFAULT, h.p.ioctl, dfd, u.VFIO_DEVICE_BIND_IOMMUFD,
                 bytearray(u.BIND_IOMMUFD.pack(16, 0, h.iommufd, 0)[:8]))
    expect_errno(errno.ENOTTY, h.p.ioctl, dfd, u.VFIO_DEVICE_ATTACH_IOMMUFD_PT,
                 bytearray(u.ATTACH_IOMMUFD_PT.pack(16, 0, h.ioas(), 0)))
    expect_errno(errno.ENOTTY, h.p.ioctl, dfd, u.VFIO_DEVICE_DETACH_IOMMUFD_PT,
                 bytearray(u.DETACH_IOMMUFD_PT.pack(12, 0, 0)))
    h.p.close(dfd)


# -- row 12: DETACH_IOMMUFD_PT and the PASID flag ------------------------------------------------
def test_612_cdev_knows_no_pasid(h612: VfioHost) -> None:
    """6.12 device_cdev.c: ATTACH and DETACH want ``flags`` 0 (EINVAL otherwise), whatever
    ``argsz``; the refused DETACH leaves the device attached."""
    h = h612
    cdev, ioas = h.mapped_through_cdev()
    pasid = u.VFIO_DEVICE_DETACH_PASID
    for argsz in (8, 12):
        expect_errno(errno.EINVAL, h.p.ioctl, cdev, u.VFIO_DEVICE_DETACH_IOMMUFD_PT,
                     bytearray(u.DETACH_IOMMUFD_PT.pack(argsz, pasid, 5)))
    for argsz in (12, 16):
        expect_errno(errno.EINVAL, h.p.ioctl, cdev, u.VFIO_DEVICE_ATTACH_IOMMUFD_PT,
                     bytearray(u.ATTACH_IOMMUFD_PT.pack(argsz, pasid, ioas, 5)))
    assert h.dma_works()


def test_70_detach_of_an_unattached_pasid_keeps_the_device_attached(h70: VfioHost) -> None:
    """7.0 vfio_df_ioctl_detach_pt: with VFIO_DEVICE_DETACH_PASID ``argsz`` must cover
    ``pasid`` (EINVAL at 8), then ``vfio_iommufd_physical_pasid_detach_ioas`` returns for a
    PASID not in ``vdev->pasids``: 0, and the RID stays attached. Without the flag the
    device is detached."""
    h = h70
    cdev, _ = h.mapped_through_cdev()
    pasid = u.VFIO_DEVICE_DETACH_PASID
    expect_errno(errno.EINVAL, h.p.ioctl, cdev, u.VFIO_DEVICE_DETACH_IOMMUFD_PT,
                 bytearray(u.DETACH_IOMMUFD_PT.pack(8, pasid, 5)))
    expect_errno(errno.EFAULT, h.p.ioctl, cdev, u.VFIO_DEVICE_DETACH_IOMMUFD_PT,
                 bytearray(u.DETACH_IOMMUFD_PT.pack(12, pasid, 5)[:8]))
    expect_errno(errno.EINVAL, h.p.ioctl, cdev, u.VFIO_DEVICE_DETACH_IOMMUFD_PT,
                 bytearray(u.DETACH_IOMMUFD_PT.pack(12, 2, 5)))  # an unknown flag
    h.ioctl(cdev, u.VFIO_DEVICE_DETACH_IOMMUFD_PT, u.DETACH_IOMMUFD_PT.pack(12, pasid, 5))
    assert h.dma_works()
    h.ioctl(cdev, u.VFIO_DEVICE_DETACH_IOMMUFD_PT, u.DETACH_IOMMUFD_PT.pack(8, 0, 0))
    assert not h.dma_works()


def test_70_attach_with_the_pasid_flag(h70: VfioHost) -> None:
    """7.0 vfio_df_ioctl_attach_pt with VFIO_DEVICE_ATTACH_PASID: ``argsz`` must cover
    ``pasid`` (EINVAL at 12); ``ida_alloc_range`` cannot hold a PASID past INT_MAX
    (ENOSPC); ``iommufd_device_attach`` finds no object ``pt_id`` (ENOENT). The refused
    attach changes nothing."""
    h = h70
    cdev, ioas = h.mapped_through_cdev()
    flag = u.VFIO_DEVICE_ATTACH_PASID
    expect_errno(errno.EINVAL, h.p.ioctl, cdev, u.VFIO_DEVICE_ATTACH_IOMMUFD_PT,
                 bytearray(u.ATTACH_IOMMUFD_PT.pack(12, flag, ioas, 1)[:12]))
    expect_errno(errno.ENOSPC, h.p.ioctl, cdev, u.VFIO_DEVICE_ATTACH_IOMMUFD_PT,
                 bytearray(u.ATTACH_IOMMUFD_PT.pack(16, flag, ioas, 1 << 31)))
    expect_errno(errno.ENOENT, h.p.ioctl, cdev, u.VFIO_DEVICE_ATTACH_IOMMUFD_PT,
                 bytearray(u.ATTACH_IOMMUFD_PT.pack(16, flag, 999, 1)))
    assert h.dma_works()


def _pasid_attach(h: VfioHost, cdev: int, pt_id: int, pasid: int) -> int:
    out = h.ioctl(cdev, u.VFIO_DEVICE_ATTACH_IOMMUFD_PT,
                  u.ATTACH_IOMMUFD_PT.pack(16, u.VFIO_DEVICE_ATTACH_PASID, pt_id, pasid))
    return int(u.ATTACH_IOMMUFD_PT.unpack(out)[2])


def _detach(h: VfioHost, cdev: int, pasid: int | None = None) -> None:
    flags = 0 if pasid is None else u.VFIO_DEVICE_DETACH_PASID
    h.ioctl(cdev, u.VFIO_DEVICE_DETACH_IOMMUFD_PT,
            u.DETACH_IOMMUFD_PT.pack(12, flags, pasid or 0))


def test_70_pasid_0_attach_is_the_device_attach(h70: VfioHost) -> None:
    """7.0 vfio_iommufd_physical_pasid_attach_ioas with PASID 0 (IOMMU_NO_PASID): the
    ida takes 0 and ``iommufd_device_attach(idev, 0, pt_id)`` is the ordinary attach of
    the device: the HWPT id is written back and DMA goes through the IOAS. A second PASID
    0 attach replaces (``ida_exists``). vfio does not set ``iommufd_attached``, so the
    ordinary DETACH leaves it; DETACH with the PASID flag and PASID 0 detaches it."""
    h = h70
    cdev = h.open_cdev()
    h.bind_cdev(cdev)
    ioas = h.ioas()
    h.map_buffer(ioas, 1 << 30)
    hwpt = _pasid_attach(h, cdev, ioas, 0)
    assert hwpt in h.ctx.objects and hwpt != ioas and h.dma_works()
    other = h.ioas()
    assert _pasid_attach(h, cdev, other, 0) not in (hwpt, other)  # replaced
    assert not h.dma_works()  # nothing is mapped in the other IOAS
    assert _pasid_attach(h, cdev, ioas, 0) in h.ctx.objects and h.dma_works()
    _detach(h, cdev)  # vfio_iommufd_physical_detach_ioas: not iommufd_attached
    assert h.dma_works()
    _detach(h, cdev, 1)  # not in vdev->pasids: nothing
    assert h.dma_works()
    _detach(h, cdev, 0)
    assert not h.dma_works()
    _pasid_attach(h, cdev, ioas, 0)  # held at close: unbind detaches vdev->pasids


def test_70_pasid_0_and_the_ordinary_attach_exclude_each_other(h70: VfioHost) -> None:
    """iommufd_hw_pagetable_attach (7.0) finds the device in the attachment of
    IOMMU_NO_PASID already: EBUSY for an ordinary ATTACH while PASID 0 holds it and for a
    PASID 0 ATTACH while the ordinary one does. The refused PASID attach gives its ida
    entry back, so a PASID 0 DETACH then leaves the ordinary attachment alone."""
    h = h70
    cdev, ioas = h.mapped_through_cdev()
    expect_errno(errno.EBUSY, _pasid_attach, h, cdev, ioas, 0)
    _detach(h, cdev, 0)
    assert h.dma_works()
    _detach(h, cdev)
    assert not h.dma_works()
    _pasid_attach(h, cdev, ioas, 0)
    expect_errno(errno.EBUSY, h.attach, cdev, ioas)
    assert h.dma_works()


# -- row 13: the group is busy while a cdev is bound ---------------------------------------------
def test_group_open_is_busy_while_a_cdev_of_its_device_is_bound(h: VfioHost) -> None:
    """group.c vfio_group_fops_open: EBUSY while ``cdev_device_open_cnt`` (raised by
    ``vfio_device_block_group`` at BIND, dropped at unbind). An unbound cdev does not
    count; BIND is EBUSY the other way round."""
    cdev = h.open_cdev()
    g = h.p.open(h.group_path)  # an open cdev that is not bound blocks nothing
    expect_errno(errno.EBUSY, h.bind_cdev, cdev)
    h.p.close(g)
    h.bind_cdev(cdev)
    expect_errno(errno.EBUSY, h.p.open, h.group_path)
    h.p.close(cdev)
    h.p.close(h.p.open(h.group_path))


# -- row 14: a second cdev fd of an open device ---------------------------------------------------
def test_bind_of_a_second_cdev_fd_is_einval(h: VfioHost) -> None:
    """vfio_main.c vfio_df_open: ``open_count != 0 && !df->group`` is EINVAL, so a second
    cdev fd of a bound device cannot bind (no second device object), and neither can a
    cdev while a group's device fd keeps the device open."""
    first = h.open_cdev()
    h.bind_cdev(first)
    second = h.open_cdev()
    expect_errno(errno.EINVAL, h.bind_cdev, second)
    assert h.devices() == 1
    expect_errno(errno.EINVAL, h.p.ioctl, second, u.VFIO_DEVICE_GET_INFO,
                 bytearray(u.DEVICE_INFO.pack(16, 0, 0, 0, 0, 0)))  # still no access
    h.p.close(first)
    h.bind_cdev(second)  # the device is closed now
    h.p.close(second)
    g = h.group_on_iommufd()
    dfd = h.p.ioctl(g, u.VFIO_GROUP_GET_DEVICE_FD, bytearray(BDF.encode() + b"\0"))
    h.p.close(g)  # the iommufd path's device fd holds no reference to the group
    cdev = h.open_cdev()
    expect_errno(errno.EINVAL, h.bind_cdev, cdev)
    h.p.close(dfd)


# -- row 15: the group's iommufd path opens a device once ----------------------------------------
def test_group_iommufd_binds_on_first_open_and_keeps_it_until_the_last(h: VfioHost) -> None:
    """group.c vfio_df_group_open: the device is bound by its first open and attached to
    the compatibility IOAS only when ``open_count == 1``; a second device fd only counts,
    and closing one of the two keeps the binding and the attachment."""
    g = h.group_on_iommufd()
    d1 = h.p.ioctl(g, u.VFIO_GROUP_GET_DEVICE_FD, bytearray(BDF.encode() + b"\0"))
    d2 = h.p.ioctl(g, u.VFIO_GROUP_GET_DEVICE_FD, bytearray(BDF.encode() + b"\0"))
    assert h.devices() == 1
    buf = h.p.mmap(SZ_2M, "thp", populate=True)
    h.p.ioctl(h.iommufd, u.VFIO_SET_IOMMU, u.VFIO_TYPE1v2_IOMMU)
    h.p.ioctl(h.iommufd, u.VFIO_IOMMU_MAP_DMA,
              bytearray(u.DMA_MAP.pack(32, 3, buf, 1 << 30, SZ_2M)))
    h.p.close(d1)
    assert h.devices() == 1 and h.dma_works()
    h.p.close(d2)
    assert h.devices() == 0 and not h.dma_works()


# -- row 17: BIND reads its struct with copy_struct_from_user in 7.0 ------------------------------
def test_bind_bytes_past_the_struct(h: VfioHost) -> None:
    """7.0 vfio_df_ioctl_bind_iommufd: ``copy_struct_from_user`` of ``argsz`` bytes, E2BIG
    for a non-zero byte past its 24-byte struct (and EFAULT if ``argsz`` runs past the
    buffer); 6.12 copies 16 bytes and ignores the rest."""
    cdev = h.open_cdev()
    arg = bytearray(40)
    u.BIND_IOMMUFD.pack_into(arg, 0, 40, 0, h.iommufd, 0)
    arg[32] = 1
    if h.m.kernel >= (6, 17):
        expect_errno(errno.E2BIG, h.p.ioctl, cdev, u.VFIO_DEVICE_BIND_IOMMUFD, arg)
        expect_errno(errno.EFAULT, h.p.ioctl, cdev, u.VFIO_DEVICE_BIND_IOMMUFD, arg[:24])
        assert h.devices() == 0
        arg[32] = 0
    h.p.ioctl(cdev, u.VFIO_DEVICE_BIND_IOMMUFD, arg)
    assert u.BIND_IOMMUFD.unpack(arg[:16])[3] > 0 and h.devices() == 1


def test_bind_token_flag(h: VfioHost) -> None:
    """VFIO_DEVICE_BIND_FLAG_TOKEN: EINVAL in 6.12 (``flags`` must be 0); in 7.0
    ``vfio_df_check_token`` reads the UUID (EFAULT from a bad pointer) and vfio-pci refuses
    a token for a device that is neither a PF nor a VF (EINVAL). Without the flag the
    pointer is ignored."""
    cdev = h.open_cdev()
    uuid = h.p.mmap(4096)
    flag = u.VFIO_DEVICE_BIND_FLAG_TOKEN
    if h.m.kernel >= (6, 17):
        expect_errno(errno.EFAULT, h.p.ioctl, cdev, u.VFIO_DEVICE_BIND_IOMMUFD,
                     bytearray(u.BIND_IOMMUFD_TOKEN.pack(24, flag, h.iommufd, 0, 8)))
    expect_errno(errno.EINVAL, h.p.ioctl, cdev, u.VFIO_DEVICE_BIND_IOMMUFD,
                 bytearray(u.BIND_IOMMUFD_TOKEN.pack(24, flag, h.iommufd, 0, uuid)))
    assert h.devices() == 0
    h.p.ioctl(cdev, u.VFIO_DEVICE_BIND_IOMMUFD,
              bytearray(u.BIND_IOMMUFD_TOKEN.pack(24, 0, h.iommufd, 0, 8)))
    assert h.devices() == 1


# -- references the kernel holds on files --------------------------------------------------------
def test_a_bound_cdev_keeps_its_iommufd_open(h: VfioHost) -> None:
    """``iommufd_ctx_from_fd`` (BIND) and ``iommufd_device_bind`` take references on the
    iommufd's file: closing the /dev/iommu fd first leaves the context, the device object
    and the DMA mapping in place until the cdev is closed."""
    cdev, _ = h.mapped_through_cdev()
    h.p.close(h.iommufd)
    assert h.devices() == 1 and h.dma_works()
    h.p.close(cdev)
    assert not h.ctx.objects and h.m.mem.pins.pins == 0


def test_a_group_keeps_its_iommufd_open(h: VfioHost) -> None:
    """SET_CONTAINER with an iommufd holds it (``iommufd_ctx_from_file``) until UNSET or
    the group's release: the compatibility IOAS survives the /dev/iommu fd's close and a
    device fd can still be had."""
    g = h.group_on_iommufd()
    h.p.close(h.iommufd)
    dfd = h.p.ioctl(g, u.VFIO_GROUP_GET_DEVICE_FD, bytearray(BDF.encode() + b"\0"))
    assert h.devices() == 1
    h.p.close(dfd)
    h.p.close(g)


def test_a_container_device_fd_keeps_its_group_open() -> None:
    """``vfio_group_use_container``: the device's first open takes a reference on the
    group file, so closing the group fd keeps the group in its container and the DMA
    mapped, and the group stays busy, until the device fd is closed."""
    m = Machine("x86-vtd", ram="1G")
    dev = m.add_pci_device(BDF)
    p = m.spawn_process(memlock_limit="64M")
    c, g = p.open("/dev/vfio/vfio"), p.open(f"/dev/vfio/{dev.iommu_group}")
    p.ioctl(g, u.VFIO_GROUP_SET_CONTAINER, bytearray(struct.pack("<i", c)))
    p.ioctl(c, u.VFIO_SET_IOMMU, u.VFIO_TYPE1v2_IOMMU)
    dfd = p.ioctl(g, u.VFIO_GROUP_GET_DEVICE_FD, bytearray(BDF.encode() + b"\0"))
    expect_errno(errno.EBUSY, p.ioctl, g, u.VFIO_GROUP_UNSET_CONTAINER)
    buf = p.mmap(SZ_2M, "thp", populate=True)
    p.ioctl(c, u.VFIO_IOMMU_MAP_DMA, bytearray(u.DMA_MAP.pack(32, 3, buf, 1 << 30, SZ_2M)))
    p.close(g)
    dev.dma_write(1 << 30, b"still mapped")
    expect_errno(errno.EBUSY, p.open, f"/dev/vfio/{dev.iommu_group}")
    p.close(dfd)
    p.close(p.open(f"/dev/vfio/{dev.iommu_group}"))  # released with the device fd
    p.exit()
    assert m.mem.pins.pins == 0 and p.mm.locked_vm == 0


def test_get_device_fd_looks_the_name_up_first(h: VfioHost) -> None:
    """group.c vfio_group_ioctl_get_device_fd: ``vfio_device_get_from_name`` (ENODEV) runs
    before ``vfio_df_group_open`` checks for a container or an iommufd (EINVAL)."""
    g = h.p.open(h.group_path)
    expect_errno(errno.ENODEV, h.p.ioctl, g, u.VFIO_GROUP_GET_DEVICE_FD, b"0000:00:09.0\0")
    expect_errno(errno.EINVAL, h.p.ioctl, g, u.VFIO_GROUP_GET_DEVICE_FD, BDF.encode() + b"\0")


# -- vfio-pci's GET_INFO and GET_REGION_INFO, on either kind of device fd ------------------------
@pytest.mark.parametrize("kind", ["cdev", "group"])
def test_device_get_info_writes_back_up_to_argsz(h: VfioHost, kind: str) -> None:
    """vfio_pci_ioctl_get_info copies back ``min(argsz, sizeof(info))`` bytes: with
    ``argsz`` 24 ``cap_offset`` and the pad are zeroed, and a 16-byte buffer is EFAULT."""
    cdev = h.device_fd(kind)
    out = h.ioctl(cdev, u.VFIO_DEVICE_GET_INFO, u.DEVICE_INFO.pack(24, 0, 0, 0, 7, 7))
    assert u.DEVICE_INFO.unpack(out)[4:] == (0, 0)
    out = h.ioctl(cdev, u.VFIO_DEVICE_GET_INFO, u.DEVICE_INFO.pack(16, 0, 0, 0, 7, 7))
    assert u.DEVICE_INFO.unpack(out)[4:] == (7, 7)  # beyond argsz: untouched
    expect_errno(errno.EFAULT, h.p.ioctl, cdev, u.VFIO_DEVICE_GET_INFO,
                 bytearray(u.DEVICE_INFO.pack(24, 0, 0, 0, 0, 0)[:16]))


@pytest.mark.parametrize("kind", ["cdev", "group"])
def test_device_region_info_vga_and_cap_offset(h: VfioHost, kind: str) -> None:
    """vfio_pci_ioctl_get_region_info: EINVAL for the VGA region of a device without VGA
    and past the last region; with no capability ``cap_offset`` is copied back as the
    caller passed it; an absent BAR and the ROM read as size 0, flags 0."""
    cdev = h.device_fd(kind)
    for index in (u.VFIO_PCI_VGA_REGION_INDEX, u.VFIO_PCI_NUM_REGIONS):
        expect_errno(errno.EINVAL, h.p.ioctl, cdev, u.VFIO_DEVICE_GET_REGION_INFO,
                     bytearray(u.REGION_INFO.pack(32, 0, index, 0, 0, 0)))
    for index in (1, 6):
        out = h.ioctl(cdev, u.VFIO_DEVICE_GET_REGION_INFO,
                      u.REGION_INFO.pack(32, 0, index, 0x55, 0, 0))
        assert u.REGION_INFO.unpack(out) == (32, 0, index, 0x55, 0,
                                             index << u.VFIO_PCI_OFFSET_SHIFT)
