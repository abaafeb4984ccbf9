"""A VFIO device and its files (drivers/vfio/vfio_main.c, the group side of group.c,
iommufd.c's physical ops, vfio_pci_core.c's ioctls and mmap).

:class:`VfioDevice` is ``struct vfio_device``: what VFIO keeps per device whichever
file opened it. A device fd from VFIO_GROUP_GET_DEVICE_FD (:class:`DeviceFile`) and a
device cdev (:class:`~.cdev.DeviceCdev`) are both ``struct vfio_device_file`` with the
same file operations: the cdev answers nothing but BIND_IOMMUFD until it is bound, then
both answer the device's ioctls and mmap. ``vfio_df_open`` counts the opens of a device
and does the first one's work (bind to the file's iommufd, or use the group's container);
``vfio_df_close`` undoes it at the last. Only a group's device fds may open a device
that is already open, so a second device fd from the group shares the first one's
iommufd binding and attachment, and closing one of them keeps both.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from ..errors import InvalidArgument, KernelError, NoEntry, NoSpace, NotATty
from . import uapi as u
from .files import VfioFile, _Arg, fput, get_file
from .pci_core import VfioPciCore

if TYPE_CHECKING:
    from ..iommufd.file import IommufdFile
    from ..iommufd.objects import Device as IommufdDevice
    from ..pcidev import PciDevice
    from ..syscall.host import Host
    from ..syscall.process import Process
    from .files import GroupFile

__all__ = ["VFIO_PCI_IOCTLS", "DeviceFile", "VfioDevice", "VfioDeviceFile", "vfio_device"]

#: the PASID of the device's own DMA, without a PASID (include/linux/iommu.h)
IOMMU_NO_PASID = 0
#: ``ida_alloc_range`` refuses an id that does not fit an int
_INT_MAX = (1 << 31) - 1

def vfio_device(machine: Host, dev: PciDevice) -> VfioDevice:
    """The ``struct vfio_device`` vfio-pci registered for ``dev``."""
    vdev = machine.vfio_devices.get(dev.bdf)
    if vdev is None:
        vdev = machine.vfio_devices[dev.bdf] = VfioDevice(dev)
    return vdev


class VfioDevice:
    """``struct vfio_device`` of a vfio-pci device: ``open_count`` over every file that
    opened it, the iommufd binding (``iommufd_device``, ``iommufd_attached``, the
    ``pasids`` attached through the PASID flag) and ``cdev_opened`` while a cdev of it is
    bound."""

    def __init__(self, dev: PciDevice) -> None:
        self.dev = dev
        self.open_count = 0
        self.iommufd: IommufdFile | None = None  # the context iommufd_device is bound to
        self.idev: IommufdDevice | None = None
        self.iommufd_attached = False
        self.pasids: set[int] = set()  # vdev->pasids, the ida of attached PASIDs
        self.cdev_opened = False
        self.pci: VfioPciCore | None = None  # vfio-pci's state while the device is open

    def _check(self) -> None:
        """Invariants (tests only): bound only while open, through one context file that
        is still open and owns the device's group DMA; the device object has a HWPT
        exactly when it is attached, through ``iommufd_attached`` or PASID 0, not both;
        a bound cdev is the device's only opener; vfio-pci's state exists while open."""
        assert self.open_count >= 0
        assert (self.iommufd is None) == (self.idev is None)
        assert self.pasids <= {IOMMU_NO_PASID}, "only PASID 0 can be attached in the model"
        if self.idev is not None:
            assert self.iommufd is not None and self.iommufd.refs > 0
            group = self.dev.group
            assert group is not None and group.owner is self.iommufd.ctx
            assert self.open_count >= 1
            assert self.iommufd.ctx.objects.get(self.idev.id) is self.idev
            assert not (self.iommufd_attached and self.pasids)
            assert (self.iommufd_attached or bool(self.pasids)) == (self.idev.hwpt is not None)
        else:
            assert not self.iommufd_attached and not self.pasids
        if self.cdev_opened:
            assert self.idev is not None and self.open_count == 1
        assert (self.pci is not None) == (self.open_count > 0), "vfio-pci state iff open"

    # -- vfio_df_open / vfio_df_close (vfio_main.c) ------------------------------------------
    def df_open(self, df: VfioDeviceFile) -> None:
        """``vfio_df_open``: EINVAL when a cdev opens a device that is already open (only
        the group path may open it again); the first open binds the device to the file's
        iommufd or uses the group's container, and is undone if it fails."""
        if self.open_count and df.group is None:
            raise InvalidArgument(f"{self.dev.bdf} is already open (open_count "
                                  f"{self.open_count}): a cdev cannot open it again")
        self.open_count += 1
        if self.open_count == 1:
            try:
                self._first_open(df)
            except KernelError:
                self.open_count -= 1
                raise

    def df_close(self, df: VfioDeviceFile) -> None:
        """``vfio_df_close``: the last close undoes the first open."""
        if self.open_count == 1:
            self._last_close(df)
        self.open_count -= 1

    def _first_open(self, df: VfioDeviceFile) -> None:
        """``vfio_df_device_first_open``: ``vfio_df_iommufd_bind`` or
        ``vfio_device_group_use_iommu``, as the opening file says, then the driver's
        ``open_device``; if that fails, the bind or use is undone (``err_unuse_iommu``)."""
        if df.iommufd is not None:
            df.devid = self.physical_bind(df.iommufd)
        else:
            assert df.group is not None
            _group_use_container(df.group)
        try:
            self.pci = VfioPciCore(self.dev)  # ops->open_device: vfio_pci_core_enable
        except KernelError:  # err_unuse_iommu
            if df.iommufd is not None:
                self.physical_unbind()
            else:
                assert df.group is not None
                _group_unuse_container(df.group)
            raise

    def _last_close(self, df: VfioDeviceFile) -> None:
        """``vfio_df_device_last_close``: vfio-pci's close first, then the unbind or
        unuse chosen by the closing file, as the kernel does."""
        assert self.pci is not None
        self.pci.close()  # ops->close_device
        self.pci = None
        if df.iommufd is not None:
            self.physical_unbind()
        else:
            assert df.group is not None
            _group_unuse_container(df.group)

    # -- vfio_iommufd_physical_* (drivers/vfio/iommufd.c) ------------------------------------
    def physical_bind(self, f: IommufdFile) -> int:
        """``vfio_iommufd_physical_bind``: ``iommufd_device_bind``, whose device holds a
        reference to the context's file until it is unbound; the device id."""
        idev = f.ctx.bind(self.dev)
        self.iommufd, self.idev = get_file(f), idev
        self.pasids = set()  # ida_init
        return idev.id

    def physical_unbind(self) -> None:
        """``vfio_iommufd_physical_unbind``: detach every PASID of ``vdev->pasids``, then
        the device if attached, then unbind."""
        f, idev = self.iommufd, self.idev
        assert f is not None and idev is not None
        for _ in sorted(self.pasids):  # only PASID 0, the device itself, in the model
            f.ctx.detach(idev)
        self.pasids.clear()
        if self.iommufd_attached:
            f.ctx.detach(idev)
            self.iommufd_attached = False
        f.ctx.unbind(idev)
        self.iommufd = self.idev = None
        fput(f)

    def physical_attach_ioas(self, pt_id: int) -> int:
        """``vfio_iommufd_physical_attach_ioas``: attach, or replace once attached; the
        HWPT the device ended on."""
        f, idev = self.iommufd, self.idev
        if f is None or idev is None:  # WARN_ON(!vdev->iommufd_device)
            raise InvalidArgument(f"{self.dev.bdf} is not bound to an iommufd")
        change = f.ctx.replace if self.iommufd_attached else f.ctx.attach
        hwpt = change(idev, pt_id)
        self.iommufd_attached = True
        return hwpt

    def physical_detach_ioas(self) -> None:
        """``vfio_iommufd_physical_detach_ioas``: nothing to do unless attached."""
        if self.iommufd is None or self.idev is None or not self.iommufd_attached:
            return
        self.iommufd.ctx.detach(self.idev)
        self.iommufd_attached = False

    def physical_pasid_attach_ioas(self, pasid: int, pt_id: int) -> int:
        """``vfio_iommufd_physical_pasid_attach_ioas`` (6.15+): a PASID already in
        ``vdev->pasids`` is replaced; else ``ida_alloc_range`` takes it (ENOSPC past
        INT_MAX) and ``iommufd_device_attach`` attaches it (the id given back if that
        fails); the HWPT id.

        PASID 0 is IOMMU_NO_PASID: iommufd attaches the device itself, as the ordinary
        ATTACH does, but vfio does not set ``iommufd_attached``. So the ordinary DETACH
        leaves it attached, the ordinary ATTACH is refused while it holds (EBUSY from
        iommufd, as a PASID 0 attach is while the ordinary one holds), a DETACH with the
        PASID flag and PASID 0 detaches it, and unbind does. Lab: other PASIDs are not
        modelled (no HWPT of the model is PASID compatible): after ENOENT for no object
        ``pt_id`` they are refused with EINVAL."""
        f, idev = self.iommufd, self.idev
        if f is None or idev is None:  # WARN_ON(!vdev->iommufd_device)
            raise InvalidArgument(f"{self.dev.bdf} is not bound to an iommufd")
        if pasid in self.pasids:
            return f.ctx.replace(idev, pt_id)
        if pasid > _INT_MAX:
            raise NoSpace(f"ATTACH_IOMMUFD_PT: PASID {pasid:#x} does not fit the PASID ida")
        if pasid != IOMMU_NO_PASID:
            if pt_id not in f.ctx.objects:
                raise NoEntry(f"ATTACH_IOMMUFD_PT: no object {pt_id}")
            raise InvalidArgument(f"ATTACH_IOMMUFD_PT: PASID {pasid} attach is not modelled")
        hwpt = f.ctx.attach(idev, pt_id)
        self.pasids.add(pasid)
        return hwpt

    def physical_pasid_detach_ioas(self, pasid: int) -> None:
        """``vfio_iommufd_physical_pasid_detach_ioas``: nothing unless ``pasid`` is in
        ``vdev->pasids``; then ``iommufd_device_detach`` of it."""
        if self.iommufd is None or self.idev is None or pasid not in self.pasids:
            return
        self.iommufd.ctx.detach(self.idev)
        self.pasids.discard(pasid)

    # -- vfio-pci's ops (vfio_pci_core.c) ----------------------------------------------------
    @property
    def bar_mmap_supported(self) -> bool:
        """``vdev->bar_mmap_supported[0]``: the device's own answer
        (:attr:`PciDevice.bar0_mmap`) unless the machine's switch
        (``Machine.vfio_bar_mmap``, lab: a host without CONFIG_VFIO_PCI_MMAP) is off."""
        return self.dev.machine.vfio_bar_mmap and self.dev.bar0_mmap

    def pci_ioctl(self, proc: Process, request: int, arg: int | bytes | bytearray) -> int:
        """``vfio_pci_core_ioctl``: GET_INFO, GET_REGION_INFO, GET_IRQ_INFO, SET_IRQS,
        RESET (which takes no argument) and the hot reset pair (ENODEV after their
        header checks: no slot or bus reset in the model); ENOTTY for a request the
        model's vfio-pci does not know (ioeventfd, device features)."""
        handler = _PCI_IOCTLS.get(request)
        if handler is None:
            raise NotATty(f"ioctl {request:#x}: unknown to a vfio-pci device")
        return handler(self, proc, arg)

    def _reset(self, proc: Process, arg: int | bytes | bytearray) -> int:
        assert self.pci is not None
        return self.pci.reset()

    def _irq_ioctl(self, proc: Process, arg: int | bytes | bytearray, request: int) -> int:
        assert self.pci is not None
        return self.pci.ioctl(proc, request, _Arg(arg))

    def _hot_reset_info(self, proc: Process, arg: int | bytes | bytearray) -> int:
        assert self.pci is not None
        return self.pci.hot_reset_info(_Arg(arg))

    def _hot_reset(self, proc: Process, arg: int | bytes | bytearray) -> int:
        assert self.pci is not None
        return self.pci.hot_reset(_Arg(arg), self.cdev_opened)

    def _get_info(self, a: _Arg) -> int:
        """``vfio_pci_ioctl_get_info``: writes back ``min(argsz, sizeof(info))`` bytes,
        VFIO_DEVICE_FLAGS_RESET when a reset method works, ``cap_offset`` 0 (no zPCI or
        AtomicOps capability)."""
        argsz = int.from_bytes(a.read(0, u.DEVICE_INFO_MINSZ)[:4], "little")
        if argsz < u.DEVICE_INFO_MINSZ:
            raise InvalidArgument(f"DEVICE_GET_INFO: argsz {argsz} < {u.DEVICE_INFO_MINSZ}")
        assert self.pci is not None
        flags = u.VFIO_DEVICE_FLAGS_PCI | (u.VFIO_DEVICE_FLAGS_RESET if self.pci.reset_works
                                           else 0)
        info = u.DEVICE_INFO.pack(argsz, flags, u.VFIO_PCI_NUM_REGIONS, u.VFIO_PCI_NUM_IRQS,
                                  0, 0)
        a.write(0, info[:min(argsz, u.DEVICE_INFO.size)])
        return 0

    def _get_region_info(self, a: _Arg) -> int:
        """``vfio_pci_ioctl_get_region_info``: BAR 0 (the only BAR), config space, an
        empty ROM; EINVAL for the VGA region (no VGA) and past the last region. The
        ``cap_offset`` the caller passed is copied back unchanged (no capability)."""
        argsz, _, index, cap_offset, _, _ = u.REGION_INFO.unpack(a.read(0, u.REGION_INFO.size))
        if argsz < u.REGION_INFO.size:
            raise InvalidArgument(f"DEVICE_GET_REGION_INFO: argsz {argsz} < "
                                  f"{u.REGION_INFO.size}")
        if index == u.VFIO_PCI_VGA_REGION_INDEX or index >= u.VFIO_PCI_NUM_REGIONS:
            raise InvalidArgument(f"DEVICE_GET_REGION_INFO: index {index}: no such region")
        size, flags = 0, 0
        if index == u.VFIO_PCI_BAR0_REGION_INDEX:
            size = self.dev.bar0_size
            flags = u.VFIO_REGION_INFO_FLAG_READ | u.VFIO_REGION_INFO_FLAG_WRITE
            if self.bar_mmap_supported:
                flags |= u.VFIO_REGION_INFO_FLAG_MMAP
        elif index == u.VFIO_PCI_CONFIG_REGION_INDEX:
            size = 256
            flags = u.VFIO_REGION_INFO_FLAG_READ | u.VFIO_REGION_INFO_FLAG_WRITE
        a.write(0, u.REGION_INFO.pack(argsz, flags, index, cap_offset, size,
                                      index << u.VFIO_PCI_OFFSET_SHIFT))
        return 0

    def pci_mmap(self, length: int, offset: int, shared: bool = True) -> int:
        """``vfio_pci_core_mmap``: EINVAL for a mapping that is not MAP_SHARED, then for
        anything but BAR 0 when ``bar_mmap_supported``, within its size; the BAR
        requested and iomapped once (:meth:`VfioPciCore.setup_barmap`); the BAR's
        physical address."""
        if not shared:
            raise InvalidArgument("mmap: a device region needs MAP_SHARED")
        index = offset >> u.VFIO_PCI_OFFSET_SHIFT
        start = offset & ((1 << u.VFIO_PCI_OFFSET_SHIFT) - 1)
        if index == u.VFIO_PCI_BAR0_REGION_INDEX and not self.bar_mmap_supported:
            raise InvalidArgument("mmap: BAR 0 is not mmap-able (no bar_mmap_supported)")
        if index != u.VFIO_PCI_BAR0_REGION_INDEX or start & 0xFFF or \
                start + length > self.dev.bar0_size:
            raise InvalidArgument(f"mmap: offset {offset:#x} length {length:#x} is not "
                                  "inside BAR 0")
        assert self.pci is not None
        self.pci.setup_barmap(index)
        return self.dev.bar0 + start


#: ``vfio_pci_core_ioctl``'s switch as modelled (VFIO_PCI_IOCTLS: its requests)
_PCI_IOCTLS: dict[int, Callable[[VfioDevice, Process, int | bytes | bytearray], int]] = {
    u.VFIO_DEVICE_GET_INFO: lambda vdev, proc, arg: vdev._get_info(_Arg(arg)),
    u.VFIO_DEVICE_GET_REGION_INFO: lambda vdev, proc, arg: vdev._get_region_info(_Arg(arg)),
    u.VFIO_DEVICE_GET_IRQ_INFO: partial(VfioDevice._irq_ioctl,
                                        request=u.VFIO_DEVICE_GET_IRQ_INFO),
    u.VFIO_DEVICE_SET_IRQS: partial(VfioDevice._irq_ioctl, request=u.VFIO_DEVICE_SET_IRQS),
    u.VFIO_DEVICE_RESET: VfioDevice._reset,
    u.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: VfioDevice._hot_reset_info,
    u.VFIO_DEVICE_PCI_HOT_RESET: VfioDevice._hot_reset,
}
VFIO_PCI_IOCTLS: tuple[int, ...] = tuple(_PCI_IOCTLS)


def _group_use_container(group: GroupFile) -> None:
    """``vfio_device_group_use_iommu``: EINVAL before VFIO_SET_IOMMU; the device holds
    the group file open (so closing the group fd leaves the container in place) and
    counts as a container user (UNSET_CONTAINER is EBUSY)."""
    assert group.container is not None
    if group.container.iommu is None:
        raise InvalidArgument(f"group {group.id}: no IOMMU driver set on the container")
    get_file(group)
    group.devices_open += 1


def _group_unuse_container(group: GroupFile) -> None:
    """``vfio_device_group_unuse_iommu``."""
    group.devices_open -= 1
    fput(group)


class VfioDeviceFile(VfioFile):
    """``struct vfio_device_file`` and ``vfio_device_fops``: the file of a group's device
    fd (``group`` set) or of a device cdev (``group`` None)."""

    def __init__(self, machine: Host, vdev: VfioDevice, group: GroupFile | None) -> None:
        machine.mem.fail_nth.check("kzalloc(vfio_device_file)")  # vfio_allocate_device_file
        self.machine = machine
        self.vdev = vdev
        self.group = group
        self.iommufd: IommufdFile | None = None  # df->iommufd
        self.access_granted = False
        self.devid = 0

    @property
    def dev(self) -> PciDevice:
        return self.vdev.dev

    def ioctl(self, proc: Process, request: int, arg: int | bytes | bytearray) -> int:
        """``vfio_device_fops_unl_ioctl``: BIND_IOMMUFD first; EINVAL for anything else
        until access is granted; ATTACH and DETACH_IOMMUFD_PT on a cdev only (a group's
        device fd passes them to vfio-pci, which does not know them); then the device's
        own ioctls."""
        from . import cdev
        if request == u.VFIO_DEVICE_BIND_IOMMUFD:
            return cdev.bind_iommufd(self, proc, _Arg(arg))
        if not self.access_granted:
            raise InvalidArgument(f"ioctl {request:#x}: the device cdev is not bound to an "
                                  "iommufd")
        handler = cdev.PT_IOCTLS.get(request) if self.group is None else None
        if handler is not None:
            return handler(self, _Arg(arg))
        return self.vdev.pci_ioctl(proc, request, arg)

    def holds(self) -> list[VfioFile]:
        """The files this one holds references to (lab: for ``collect_cycles``): a bound
        cdev its iommufd (BIND's ``iommufd_ctx_from_fd``); the device's only opener also
        what the first open's iommufd binding took (``vfio_iommufd_physical_bind``'s
        reference and ``iommufd_device_bind``'s ``iommufd_ctx_get``)."""
        if not self.access_granted:
            return []
        held: list[VfioFile] = []
        if self.group is None and self.iommufd is not None:
            held.append(self.iommufd)
        vdev = self.vdev
        if vdev.open_count == 1 and vdev.iommufd is not None and vdev.idev is not None:
            held += [vdev.iommufd] * (2 if vdev.idev.holds_ctx else 1)
        return held

    def mmap_region(self, length: int, offset: int, shared: bool = True) -> int:
        """``vfio_device_fops_mmap``: EINVAL until access is granted, then vfio-pci's."""
        if not self.access_granted:
            raise InvalidArgument("mmap: the device cdev is not bound to an iommufd")
        return self.vdev.pci_mmap(length, offset, shared)

    f_pos = 0  # the file position read(2) and write(2) use

    def pread(self, n: int, pos: int) -> bytes:
        """``vfio_device_fops_read``: EINVAL until access is granted; then
        ``vfio_pci_core_read`` (nothing for 0 bytes)."""
        if not self.access_granted:
            raise InvalidArgument("read: the device cdev is not bound to an iommufd")
        if not n:
            return b""
        assert self.vdev.pci is not None
        out = self.vdev.pci.rw(pos, n, None)
        assert isinstance(out, bytes)
        return out

    def pwrite(self, data: bytes, pos: int) -> int:
        """``vfio_device_fops_write``: as :meth:`pread`, for ``vfio_pci_core_write``."""
        if not self.access_granted:
            raise InvalidArgument("write: the device cdev is not bound to an iommufd")
        if not data:
            return 0
        assert self.vdev.pci is not None
        done = self.vdev.pci.rw(pos, len(data), data)
        assert isinstance(done, int)
        return done

    def read_fd(self, n: int) -> bytes:
        """``read(2)``: :meth:`pread` at the file position, which moves on."""
        out = self.pread(n, self.f_pos)
        self.f_pos += len(out)
        return out

    def write_fd(self, data: bytes) -> int:
        """``write(2)``: :meth:`pwrite` at the file position, which moves on."""
        done = self.pwrite(data, self.f_pos)
        self.f_pos += done
        return done


class DeviceFile(VfioDeviceFile):
    """A device fd from VFIO_GROUP_GET_DEVICE_FD (group.c)."""

    @classmethod
    def open(cls, group: GroupFile, dev: PciDevice) -> DeviceFile:
        """``vfio_device_open_file``: the device file, the open, then its ``struct file``
        (``anon_inode_getfile``: a dentry and a file; ENOMEM closes the device again)."""
        df = cls(group.machine, vfio_device(group.machine, dev), group)
        df._group_open()
        fail = group.machine.mem.fail_nth
        try:
            fail.check("d_alloc_pseudo(anon_inode_getfile)")
            fail.check("alloc_empty_file(anon_inode_getfile)")
        except KernelError:
            df.release()  # vfio_df_group_close
            raise
        return df

    def _group_open(self) -> None:
        """``vfio_df_group_open``: EINVAL while the group has neither a container nor an
        iommufd; the device's first open through an iommufd binds it and attaches it to
        the compatibility IOAS (ENODEV when there is none), a later one only counts."""
        from ..iommufd.vfio_compat import compat_ioas
        group = self.group
        assert group is not None
        if not group.has_iommu():
            raise InvalidArgument(f"GROUP_GET_DEVICE_FD: group {group.id} has no container "
                                  "or iommufd")
        self.iommufd = group.iommufd
        self.vdev.df_open(self)
        if self.iommufd is not None and self.vdev.open_count == 1:
            try:  # vfio_iommufd_compat_attach_ioas
                self.vdev.physical_attach_ioas(compat_ioas(self.iommufd).id)
            except KernelError:
                self.vdev.df_close(self)
                raise
        self.access_granted = True

    def release(self) -> None:
        """``vfio_df_group_close``."""
        self.vdev.df_close(self)
        self.iommufd = None
