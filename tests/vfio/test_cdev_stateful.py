"""Random sequences over one device's cdevs, its group and the group's device fds on one
iommufd, against a plain model of what vfio_main.c, device_cdev.c and group.c promise.

The plain model keeps the device's ``open_count``, which cdev fd is bound, whether the
device is attached (ordinarily, or in 7.0 as PASID 0, each excluding the other) and the
group's state. A cdev binds only a device nobody has open
(EINVAL) and only while the group is closed (EBUSY); the group opens only while no cdev is
bound and it is not open (EBUSY); a group's device fd needs the group on the iommufd
(EINVAL) and binds and attaches the device on its first open only; the last close unbinds.
After every step the device does DMA exactly when the model says it is attached, the
iommufd has one device object exactly while the device is open, the iommufd owns the
group's DMA exactly then (on the blocking domain unless attached, on the default one
once nobody has the device open), GET_STATUS agrees, and the device's invariants hold.
"""

from __future__ import annotations

import errno
import struct

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from iommulab import Machine
from iommulab.iommufd import uapi as iu
from iommulab.iommufd.file import IommufdFile
from iommulab.iommufd.objects import Device
from iommulab.vfio import uapi as u

BDF = "0000:00:02.0"
IOVA = 1 << 30


class CdevGroupMachine(RuleBasedStateMachine):
    kernel = "6.12"
    cdevs = Bundle("cdevs")
    device_fds = Bundle("device_fds")

    def __init__(self) -> None:
        super().__init__()
        self.m = Machine("x86-vtd", ram="256M", kernel=self.kernel)
        self.dev = self.m.add_pci_device(BDF)
        self.p = self.m.spawn_process(memlock_limit="16M")
        self.iommufd = self.p.open("/dev/iommu")
        f = self.p.files[self.iommufd]
        assert isinstance(f, IommufdFile)
        self.ctx = f.ctx
        self.ioas = self._ioas_mapped_at(IOVA)
        # the group's compatibility IOAS is this one, so both paths reach IOVA
        self.p.ioctl(self.iommufd, iu.IOMMU_VFIO_IOAS,
                     bytearray(iu.VFIO_IOAS.pack(12, self.ioas, iu.IOMMU_VFIO_IOAS_SET, 0)))
        # the plain model
        self.open_count = 0
        self.bound: int | None = None  # the bound cdev fd
        self.attached = False  # vdev->iommufd_attached
        self.pasid0 = False  # attached as PASID 0 (7.0's PASID flag)
        self.group: int | None = None  # the group fd
        self.group_on_iommufd = False

    def _ioas_mapped_at(self, iova: int) -> int:
        out = bytearray(iu.IOAS_ALLOC.pack(12, 0, 0))
        self.p.ioctl(self.iommufd, iu.IOMMU_IOAS_ALLOC, out)
        ioas = int(iu.IOAS_ALLOC.unpack(out)[2])
        buf = self.p.mmap(1 << 16, populate=True)
        self.p.ioctl(self.iommufd, iu.IOMMU_IOAS_MAP,
                     bytearray(iu.IOAS_MAP.pack(40, 7, ioas, 0, buf, 1 << 16, iova)))
        return ioas

    def _errno(self, fn: object, *args: object) -> int:
        try:
            fn(*args)  # type: ignore[operator]
        except OSError as err:
            return err.errno or 0
        return 0

    # -- cdevs -----------------------------------------------------------------------------
    @rule(target=cdevs)
    def open_cdev(self) -> int:
        return self.p.open("/dev/vfio/devices/vfio0")

    @rule(cdev=cdevs)
    def bind(self, cdev: int) -> None:
        arg = bytearray(u.BIND_IOMMUFD.pack(16, 0, self.iommufd, 0))
        got = self._errno(self.p.ioctl, cdev, u.VFIO_DEVICE_BIND_IOMMUFD, arg)
        if cdev == self.bound:
            want = errno.EINVAL
        elif self.group is not None:
            want = errno.EBUSY
        elif self.open_count:
            want = errno.EINVAL
        else:
            want = 0
        assert got == want
        if not got:
            self.bound, self.open_count = cdev, 1
            assert u.BIND_IOMMUFD.unpack(arg)[3] in self.ctx.objects

    @rule(cdev=cdevs, pasid0=st.booleans())
    def attach(self, cdev: int, pasid0: bool) -> None:
        """Ordinarily, or with the PASID flag and PASID 0: each is EBUSY while the other
        holds the device; a PASID 0 attach again replaces."""
        arg = u.ATTACH_IOMMUFD_PT.pack(16, int(pasid0), self.ioas, 0)
        got = self._errno(self.p.ioctl, cdev, u.VFIO_DEVICE_ATTACH_IOMMUFD_PT, bytearray(arg))
        if cdev != self.bound or (pasid0 and self.kernel == "6.12"):
            assert got == errno.EINVAL
        elif self.attached if pasid0 else self.pasid0:  # the other one holds the device
            assert got == errno.EBUSY
        else:
            assert got == 0
            self.pasid0 |= pasid0
            self.attached |= not pasid0

    @rule(cdev=cdevs, pasid=st.sampled_from([None, 0, 3]))
    def detach(self, cdev: int, pasid: int | None) -> None:
        flags = 0 if pasid is None else u.VFIO_DEVICE_DETACH_PASID
        arg = u.DETACH_IOMMUFD_PT.pack(12, flags, pasid or 0)
        got = self._errno(self.p.ioctl, cdev, u.VFIO_DEVICE_DETACH_IOMMUFD_PT, bytearray(arg))
        if cdev != self.bound or (flags and self.kernel == "6.12"):
            assert got == errno.EINVAL
        else:
            assert got == 0
            if pasid is None:  # the RID only, not PASID 0
                self.attached = False
            elif pasid == 0:
                self.pasid0 = False

    @rule(cdev=consumes(cdevs))
    def close_cdev(self, cdev: int) -> None:
        self.p.close(cdev)
        if cdev == self.bound:
            self.bound, self.open_count, self.attached, self.pasid0 = None, 0, False, False

    # -- the group and its device fds -----------------------------------------------------
    @rule()
    def open_group(self) -> None:
        want = errno.EBUSY if self.group is not None or self.bound is not None else 0
        assert self._errno(self._open_group) == want

    def _open_group(self) -> None:
        self.group = self.p.open(f"/dev/vfio/{self.dev.iommu_group}")
        self.group_on_iommufd = False

    @rule()
    def set_container(self) -> None:
        if self.group is None:
            return
        got = self._errno(self.p.ioctl, self.group, u.VFIO_GROUP_SET_CONTAINER,
                          bytearray(struct.pack("<i", self.iommufd)))
        assert got == (errno.EINVAL if self.group_on_iommufd else 0)
        self.group_on_iommufd = True

    @rule()
    def unset_container(self) -> None:
        if self.group is None:
            return
        got = self._errno(self.p.ioctl, self.group, u.VFIO_GROUP_UNSET_CONTAINER)
        assert got == (0 if self.group_on_iommufd else errno.EINVAL)
        self.group_on_iommufd = False

    @rule(target=device_fds)
    def get_device_fd(self) -> int:
        if self.group is None:
            return -1
        try:
            fd = self.p.ioctl(self.group, u.VFIO_GROUP_GET_DEVICE_FD,
                              bytearray(BDF.encode() + b"\0"))
        except OSError as err:
            assert err.errno == errno.EINVAL and not self.group_on_iommufd
            return -1
        assert self.group_on_iommufd
        self.open_count += 1
        self.attached |= self.open_count == 1  # the first open attaches
        return fd

    @rule(fd=consumes(device_fds))
    def close_device_fd(self, fd: int) -> None:
        if fd < 0:
            return
        self.p.close(fd)
        self.open_count -= 1
        if not self.open_count:
            self.attached = False

    @rule()
    def close_group(self) -> None:
        if self.group is not None:
            self.p.close(self.group)
            self.group, self.group_on_iommufd = None, False

    # -- what must hold after every step --------------------------------------------------
    @invariant()
    def device_state_matches_the_model(self) -> None:
        vdev = self.m.vfio_devices.get(BDF)
        if vdev is None:
            assert self.open_count == 0
            return
        vdev._check()
        self.ctx._check()
        assert vdev.open_count == self.open_count
        assert vdev.cdev_opened == (self.bound is not None)
        devices = sum(isinstance(o, Device) for o in self.ctx.objects.values())
        assert devices == (1 if self.open_count else 0)

    @invariant()
    def group_domain_follows_dma_ownership(self) -> None:
        """iommufd_device_bind claims the group for the context
        (iommu_device_claim_dma_owner: the blocking domain), attach and detach move it
        between a HWPT's domain and the blocking one, and the unbind of the last close
        gives it back (iommu_device_release_dma_owner: the default domain)."""
        group = self.dev.group
        assert group is not None
        group._check()
        if self.open_count:
            assert group.owner is self.ctx and group.owner_cnt == 1
            if not (self.attached or self.pasid0):
                assert group.domain is group.blocking_domain
        else:
            assert group.owner is None and group.owner_cnt == 0
            assert group.domain is group.default_domain

    @invariant()
    def dma_only_while_attached(self) -> None:
        try:
            self.dev.dma_write(IOVA, b"x")
            works = True
        except OSError:
            works = False
        assert works == (self.attached or self.pasid0)

    @invariant()
    def group_status(self) -> None:
        if self.group is None:
            return
        buf = bytearray(u.GROUP_STATUS.pack(8, 0))
        self.p.ioctl(self.group, u.VFIO_GROUP_GET_STATUS, buf)
        want = u.VFIO_GROUP_FLAGS_VIABLE | u.VFIO_GROUP_FLAGS_CONTAINER_SET
        if not self.group_on_iommufd:  # not viable while an iommufd owns the group's DMA
            want = 0 if self.open_count else u.VFIO_GROUP_FLAGS_VIABLE
        assert u.GROUP_STATUS.unpack(buf)[1] == want

    def teardown(self) -> None:
        self.p.exit()
        assert not self.ctx.objects
        group = self.dev.group
        assert group is not None and group.domain is group.default_domain
        assert group.owner is None and group.owner_cnt == 0
        assert self.m.mem.pins.pins == 0 and self.p.mm.pinned_vm == 0
        assert self.p.user.locked_vm == 0


class CdevGroupMachine70(CdevGroupMachine):
    kernel = "7.0"


_settings = settings(max_examples=30, stateful_step_count=30, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])
CdevGroupMachine.TestCase.settings = _settings
CdevGroupMachine70.TestCase.settings = _settings
test_cdev_and_group_612_against_the_plain_model = CdevGroupMachine.TestCase
test_cdev_and_group_70_against_the_plain_model = CdevGroupMachine70.TestCase

