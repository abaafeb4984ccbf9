"""DMA ownership through the files a program opens: who claims a device's IOMMU group, when,
and that every way of letting go (close, UNSET_CONTAINER, exit, a fork's last exit, a
failed open) gives the group back on its default domain with nobody owning it.

Linux 6.12 and 7.0 agree on all of it (drivers/vfio/container.c, group.c,
device_cdev.c, drivers/iommu/iommufd/device.c, drivers/iommu/iommu.c); the tests run on
both. The container path claims the group for the VFIO group at SET_CONTAINER
(``vfio_container_attach_group``: ``iommu_group_claim_dma_owner(iommu_group, group)``);
the iommufd paths (a cdev's BIND_IOMMUFD, a group's first device fd on an iommufd) claim
the device for the iommufd context (``iommufd_device_bind``:
``iommu_device_claim_dma_owner(dev, ictx)``) and release it when the device object is
destroyed (``iommufd_device_destroy``).
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterator

import pytest

from iommulab import Machine, Process
from iommulab.devices import DmaDevice
from iommulab.iommu import IommuGroup
from iommulab.iommufd import uapi as iu
from iommulab.iommufd.file import IommufdFile
from iommulab.iommufd.selftest import OP_MOCK_DOMAIN
from iommulab.machine import PciDevice
from iommulab.vfio import uapi as u
from iommulab.vfio.files import GroupFile

from ..helpers import Host, expect_errno, make_host
from ..iommufd.selftest_lib import Selftest

BDF = "0000:00:02.0"
KERNELS = ["6.12", "7.0"]
PLATFORMS = ["x86-vtd", "arm64-smmuv3", "mock"]


@pytest.fixture(params=[(p, k) for p in PLATFORMS for k in KERNELS],
                ids=lambda pk: f"{pk[0]}-{pk[1]}")
def host(request: pytest.FixtureRequest) -> Iterator[tuple[Host, PciDevice]]:
    platform, kernel = request.param
    h, (dev,) = make_host(platform, 1, kernel)
    assert isinstance(dev, PciDevice)
    yield h, dev
    h.p.exit()
    _back_to_default(_group(dev))
    assert h.m.mem.pins.pins == 0


def _group(dev: DmaDevice) -> IommuGroup:
    assert dev.group is not None
    return dev.group


def _back_to_default(group: IommuGroup) -> None:
    """What a fresh machine has: nobody owns the group, it is on its default domain."""
    group._check()
    group.core._check()
    assert group.owner is None and group.owner_cnt == 0
    assert group.domain is group.default_domain


def _ctx(h: Host) -> object:
    f = h.p.files[h.iommufd]
    assert isinstance(f, IommufdFile)
    return f.ctx


def _set_container(p: Process, group_fd: int, fd: int) -> None:
    p.ioctl(group_fd, u.VFIO_GROUP_SET_CONTAINER, bytearray(struct.pack("<i", fd)))


def _device_fd(p: Process, group_fd: int) -> int:
    return p.ioctl(group_fd, u.VFIO_GROUP_GET_DEVICE_FD, bytearray(BDF.encode() + b"\0"))


# -- the cdev path ---------------------------------------------------------------------------
def test_a_cdev_bind_blocks_the_group_and_its_close_restores_the_default_domain(
        host: tuple[Host, PciDevice]) -> None:
    """BIND_IOMMUFD claims the group for the iommufd context: the blocking domain until
    an ATTACH; DETACH goes back to blocking (the context still owns it); closing the
    cdev unbinds, which releases the claim: the default domain, owner_cnt 0."""
    h, dev = host
    group = _group(dev)
    cdev, _ = h.bind(0)
    group._check()
    assert group.owner is _ctx(h) and group.owner_cnt == 1
    assert group.domain is group.blocking_domain is not None
    ioas = h.ioas()
    h.attach(cdev, ioas)
    assert group.domain is not group.blocking_domain
    assert group.domain is not group.default_domain or h.m.platform == "mock"
    h.ioctl(cdev, u.VFIO_DEVICE_DETACH_IOMMUFD_PT, u.DETACH_IOMMUFD_PT.pack(12, 0, 0))
    assert group.domain is group.blocking_domain and group.owner is _ctx(h)
    h.attach(cdev, ioas)
    h.p.close(h.iommufd)  # the bound device keeps the context
    assert group.owner_cnt == 1
    h.p.close(cdev)
    _back_to_default(group)


def test_exit_with_a_bound_and_attached_cdev_restores_the_default_domain(
        host: tuple[Host, PciDevice]) -> None:
    """Process exit closes the cdev and the iommufd in fd order (the iommufd first): the
    device's unbind at the cdev's close still releases the group."""
    h, dev = host
    cdev, _ = h.bind(0)
    h.attach(cdev, h.ioas())
    h.p.exit()
    _back_to_default(_group(dev))


def test_a_forked_child_keeps_the_claim_until_its_exit(host: tuple[Host, PciDevice]) -> None:
    """fork shares the cdev file: the parent's exit is not its last close, so the group
    stays owned (and attached) until the child exits too."""
    h, dev = host
    group = _group(dev)
    cdev, _ = h.bind(0)
    h.attach(cdev, h.ioas())
    attached = group.domain
    child = h.p.fork()
    h.p.exit()
    assert group.owner is not None and group.owner_cnt == 1 and group.domain is attached
    child.exit()
    _back_to_default(group)


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_failed_replace_onto_an_ioas_leaves_the_device_on_its_hwpt(kernel: str) -> None:
    """iommufd_device_auto_get_domain for a replace: the new automatic HWPT is allocated
    without immediate_attach and the device moves only once it is complete, so when
    iopt_table_add_domain refuses it (an area beyond the 39-bit VT-d aperture:
    EADDRINUSE) the group stays on the old HWPT's domain and DMA still goes through it
    (the model used to move the group to the blocking domain)."""
    h, (dev,) = make_host("x86-vtd", 1, kernel)
    cdev, _ = h.bind(0)
    first, far = h.ioas(), h.ioas()
    h.attach(cdev, first)
    group = _group(dev)
    attached = group.domain
    buf = h.p.mmap(1 << 20)
    iova = h.map(first, buf, 4096)
    h.ioctl(h.iommufd, iu.IOMMU_IOAS_MAP,
            iu.IOAS_MAP.pack(40, iu.IOMMU_IOAS_MAP_FIXED_IOVA | 6, far, 0, buf, 4096, 1 << 45))
    expect_errno(errno.EADDRINUSE, h.attach, cdev, far)
    assert group.domain is attached and group.owner is _ctx(h)
    dev.dma_write(iova, b"still attached")
    assert h.p.read(buf, 14) == b"still attached"
    h.p.exit()
    _back_to_default(group)


# -- the group path with a VFIO container ----------------------------------------------------
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("platform", ["x86-vtd", "arm64-smmuv3"])
def test_set_container_claims_the_group_and_every_way_out_releases_it(
        platform: str, kernel: str) -> None:
    """vfio_container_attach_group claims the IOMMU group for the VFIO group (the
    blocking domain even before SET_IOMMU); a cdev of its device then answers EBUSY
    (vfio_device_block_group: the group is open); type1 attaches over the blocking
    domain; closing the group fd keeps the claim while a device fd holds the group;
    the device fd's close detaches it (vfio_group_detach_container: type1's
    iommu_detach_group to blocking, then iommu_group_release_dma_owner)."""
    m = Machine(platform, ram="256M", kernel=kernel)
    dev = m.add_pci_device(BDF)
    group = _group(dev)
    p = m.spawn_process()
    c, g = p.open("/dev/vfio/vfio"), p.open(f"/dev/vfio/{dev.iommu_group}")
    _set_container(p, g, c)
    gf = p.files[g]
    assert isinstance(gf, GroupFile)
    assert group.owner is gf and group.owner_cnt == 1
    assert group.domain is group.blocking_domain is not None
    iommufd, cdev = p.open("/dev/iommu"), p.open("/dev/vfio/devices/vfio0")
    expect_errno(errno.EBUSY, p.ioctl, cdev, u.VFIO_DEVICE_BIND_IOMMUFD,
                 bytearray(u.BIND_IOMMUFD.pack(16, 0, iommufd, 0)))
    p.ioctl(c, u.VFIO_SET_IOMMU, u.VFIO_TYPE1v2_IOMMU)
    type1_domain = group.domain
    assert type1_domain is not group.blocking_domain
    assert type1_domain is not group.default_domain
    device = _device_fd(p, g)
    p.close(c)
    p.close(g)
    assert group.owner is gf and group.domain is type1_domain
    p.close(device)
    _back_to_default(group)
    p.exit()


@pytest.mark.parametrize("kernel", KERNELS)
def test_unset_container_releases_the_claim(kernel: str) -> None:
    """VFIO_GROUP_UNSET_CONTAINER: type1 detaches, the claim is released; the group can
    be claimed again by another container."""
    m = Machine("x86-vtd", ram="256M", kernel=kernel)
    dev = m.add_pci_device(BDF)
    p = m.spawn_process()
    c, g = p.open("/dev/vfio/vfio"), p.open(f"/dev/vfio/{dev.iommu_group}")
    _set_container(p, g, c)
    p.ioctl(c, u.VFIO_SET_IOMMU, u.VFIO_TYPE1v2_IOMMU)
    p.ioctl(g, u.VFIO_GROUP_UNSET_CONTAINER)
    _back_to_default(_group(dev))
    other = p.open("/dev/vfio/vfio")
    _set_container(p, g, other)
    assert _group(dev).owner is p.files[g]
    p.exit()
    _back_to_default(_group(dev))


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_forked_child_keeps_the_container_claim_until_its_exit(kernel: str) -> None:
    """The group and container files are shared with a forked child: the claim holds
    until the last of them is closed."""
    m = Machine("arm64-smmuv3", ram="256M", kernel=kernel)
    dev = m.add_pci_device(BDF)
    p = m.spawn_process()
    c, g = p.open("/dev/vfio/vfio"), p.open(f"/dev/vfio/{dev.iommu_group}")
    _set_container(p, g, c)
    p.ioctl(c, u.VFIO_SET_IOMMU, u.VFIO_TYPE1v2_IOMMU)
    _device_fd(p, g)
    child = p.fork()
    p.exit()
    assert _group(dev).owner is child.files[g]
    child.exit()
    _back_to_default(_group(dev))


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_failed_set_container_releases_the_claim(kernel: str) -> None:
    """vfio_container_attach_group: when type1 refuses the group (a mapping outside the
    new domain's aperture: EINVAL) the claim is released again, the group is back on
    its default domain and another container may take it."""
    m = Machine("x86-vtd", ram="512M", kernel=kernel)
    wide = m.add_iommu_unit(aw=48)
    big = m.add_pci_device("0000:00:03.0", iommu_unit=wide)
    narrow = m.add_pci_device(BDF)
    p = m.spawn_process()
    c = p.open("/dev/vfio/vfio")
    g_big, g_narrow = (p.open(f"/dev/vfio/{d.iommu_group}") for d in (big, narrow))
    _set_container(p, g_big, c)
    p.ioctl(c, u.VFIO_SET_IOMMU, u.VFIO_TYPE1v2_IOMMU)
    buf = p.mmap(1 << 20)
    p.ioctl(c, u.VFIO_IOMMU_MAP_DMA, bytearray(u.DMA_MAP.pack(32, 3, buf, 1 << 40, 1 << 20)))
    expect_errno(errno.EINVAL, _set_container, p, g_narrow, c)
    _back_to_default(_group(narrow))
    _set_container(p, g_narrow, p.open("/dev/vfio/vfio"))
    assert _group(narrow).owner is p.files[g_narrow]
    p.exit()
    _back_to_default(_group(narrow))
    _back_to_default(_group(big))


# -- the group path with an iommufd ----------------------------------------------------------
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("compat_container", [False, True])
def test_a_group_on_an_iommufd_is_claimed_by_its_first_device_fd(
        kernel: str, compat_container: bool) -> None:
    """A group set to an iommufd (/dev/iommu, or /dev/vfio/vfio under
    CONFIG_IOMMUFD_VFIO_CONTAINER) is not claimed by SET_CONTAINER; the first device fd
    binds the device (the context claims the group) and attaches it to the compat IOAS;
    a second device fd only counts; the last close unbinds and releases."""
    m = Machine("x86-vtd", ram="256M", kernel=kernel)
    m.kconfig["CONFIG_IOMMUFD_VFIO_CONTAINER"] = compat_container
    dev = m.add_pci_device(BDF)
    group = _group(dev)
    p = m.spawn_process()
    ictx = p.open("/dev/vfio/vfio" if compat_container else "/dev/iommu")
    g = p.open(f"/dev/vfio/{dev.iommu_group}")
    _set_container(p, g, ictx)
    _back_to_default(group)
    first, second = _device_fd(p, g), _device_fd(p, g)
    f = p.files[ictx]
    assert isinstance(f, IommufdFile)
    assert group.owner is f.ctx and group.owner_cnt == 1
    assert group.domain is not group.default_domain
    assert group.domain is not group.blocking_domain
    p.close(first)
    assert group.owner is f.ctx
    p.close(second)
    _back_to_default(group)
    p.exit()
    _back_to_default(group)


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_device_fd_that_fails_to_attach_releases_the_claim(kernel: str) -> None:
    """vfio_df_group_open: the bind claims the group, the compat attach fails (the compat
    IOAS was destroyed: ENODEV), vfio_df_close unbinds: nobody owns the group."""
    h, (dev,) = make_host("arm64-smmuv3", 1, kernel)
    assert isinstance(dev, PciDevice)
    g = h.p.open(f"/dev/vfio/{dev.iommu_group}")
    _set_container(h.p, g, h.iommufd)
    out = h.ioctl(h.iommufd, iu.IOMMU_VFIO_IOAS, iu.VFIO_IOAS.pack(12, 0,
                                                                 iu.IOMMU_VFIO_IOAS_GET, 0))
    h.p.ioctl(h.iommufd, iu.IOMMU_DESTROY, bytearray(iu.DESTROY.pack(8, iu.VFIO_IOAS.unpack(
        out)[1])))
    expect_errno(errno.ENODEV, _device_fd, h.p, g)
    _back_to_default(_group(dev))
    h.p.exit()


# -- other owners ----------------------------------------------------------------------------
@pytest.mark.parametrize("kernel", KERNELS)
def test_a_device_on_a_kernel_driver_owns_its_default_domain(kernel: str) -> None:
    """A device bound to a driver other than vfio-pci uses the DMA API
    (iommu_device_use_default_domain at probe): its group counts one owner without a
    cookie, so a user claim is EPERM; the unplug gives it back."""
    m = Machine("x86-vtd", ram="256M", kernel=kernel)
    nic = m.add_pci_device("0000:00:03.0", driver="e1000e")
    group = _group(nic)
    assert group.owner is None and group.owner_cnt == 1
    assert m.core.group_dma_owner_claimed(group)
    expect_errno(errno.EPERM, m.core.group_claim_dma_owner, group, object())
    expect_errno(errno.EPERM, m.core.device_claim_dma_owner, nic, object())
    m.remove_device(nic)
    assert group.owner_cnt == 0 and not any("WARNING" in line for line in m.core.log)


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_selftest_mock_device_is_owned_by_its_context_until_destroyed(kernel: str) -> None:
    """IOMMU_TEST_OP_MOCK_DOMAIN binds its mock device with iommufd_device_bind: the
    context owns the new group; destroying the selftest object unbinds it (the mock's
    default domain is its blocking domain, so only the ownership changes)."""
    st = Selftest(kernel=kernel)
    f = st.p.files[st.fd]
    assert isinstance(f, IommufdFile)
    ioas = st.ioas_alloc()
    mock = st.mock_domain(ioas)
    (group,) = st.m.core.groups.values()
    assert group.owner is f.ctx and group.owner_cnt == 1
    st.destroy(mock.stdev_id)
    assert group.owner is None and group.owner_cnt == 0 and not group.devices
    st.test_cmd(OP_MOCK_DOMAIN, ioas, b"")
    (group,) = st.m.core.groups.values()
    st.p.exit()
    assert group.owner is None and group.owner_cnt == 0
    assert not st.m.core.groups
