"""``/dev/vfio/devices/vfioN``: a vfio-pci device opened as a character device and bound
to iommufd (drivers/vfio/device_cdev.c).

Until VFIO_DEVICE_BIND_IOMMUFD the fd answers nothing else (EINVAL). BIND opens the
device (``vfio_df_open``), so it is EINVAL on a device that another cdev fd or a group's
device fd has open, and EBUSY while the device's group is open through /dev/vfio/<group>;
a bound cdev makes opening that group EBUSY in turn. ATTACH takes an IOAS or HWPT id and
writes back the HWPT it ended on; a second ATTACH replaces. Closing the fd detaches and
unbinds. Once bound, the cdev answers the device's ioctls and mmap as a group's device
fd does (:mod:`.device`).

Versions: 6.15 taught ATTACH and DETACH the PASID flag (``pasid`` past the 6.12 struct;
PASID 0 is the device itself, other PASIDs are not modelled, see
:meth:`~.device.VfioDevice.physical_pasid_attach_ioas`; detaching a PASID that is not
attached leaves the device as it is); 6.17 reads BIND with
``copy_struct_from_user`` (E2BIG for a non-zero byte past the struct) and added
VFIO_DEVICE_BIND_FLAG_TOKEN. 6.12 knows neither flag and ignores what lies past its
struct.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import (
    BadFileDescriptor,
    Busy,
    InvalidArgument,
    KernelError,
    TooBig,
    kernel_error,
)
from . import uapi as u
from .device import VfioDeviceFile, vfio_device
from .files import EBADFD, _Arg, fput, get_file

if TYPE_CHECKING:
    from ..iommufd.file import IommufdFile
    from ..pcidev import PciDevice
    from ..syscall.devtable import DeviceTable
    from ..syscall.host import Host
    from ..syscall.process import Process

__all__ = ["DEVICE_FILE_IOCTLS", "PT_IOCTLS", "DeviceCdev", "attach_pt", "bind_iommufd",
           "cdev_devices", "detach_pt", "open_cdev", "vfio_cdev_init"]

#: ATTACH/DETACH_IOMMUFD_PT take VFIO_DEVICE_[AT|DE]TACH_PASID from this release on.
PASID_RELEASE = (6, 15)
#: BIND_IOMMUFD is read with copy_struct_from_user and takes VFIO_DEVICE_BIND_FLAG_TOKEN
#: from this release on. (6.17 itself passed offsetofend(out_devid) as the kernel's size,
#: so any set byte of token_uuid_ptr was E2BIG; 6.18 passes sizeof, as 7.0 does and the
#: model follows.)
BIND_TOKEN_RELEASE = (6, 17)


#: the device cdevs' major (``vfio_cdev_init``'s ``alloc_chrdev_region``: dynamic, the
#: value a typical boot gives)
CDEV_MAJOR = 237


def cdev_devices(machine: Host) -> list[PciDevice]:
    """The devices with a cdev, in the order they were added (vfio0, vfio1, ...)."""
    return [d for d in machine.devices.values() if d.driver == "vfio-pci"]


def open_cdev(proc: Process, path: str) -> DeviceCdev:
    """``/dev/vfio/devices/vfio<N>``: ``vfio_device_fops_cdev_open``."""
    m = proc.machine
    return DeviceCdev(m, cdev_devices(m)[int(path.removeprefix("/dev/vfio/devices/vfio"))])


def vfio_cdev_init(table: DeviceTable) -> None:
    """``vfio_cdev_init``: the region of device nodes ``/dev/vfio/devices/vfio<N>``, one
    per device bound to vfio-pci."""
    table.cdev_add("/dev/vfio/devices/vfio", CDEV_MAJOR, open_cdev,
                   lambda m, n: n < len(cdev_devices(m)))


class DeviceCdev(VfioDeviceFile):
    """One open of a device cdev (``vfio_device_fops_cdev_open``): no access until bound."""

    def __init__(self, machine: Host, dev: PciDevice) -> None:
        super().__init__(machine, vfio_device(machine, dev), None)

    def release(self) -> None:
        unbind_iommufd(self)


# -- BIND_IOMMUFD ----------------------------------------------------------------------------
def bind_iommufd(df: VfioDeviceFile, proc: Process, a: _Arg) -> int:
    """``vfio_df_ioctl_bind_iommufd``: the struct's checks; EINVAL on a group's device fd;
    EBUSY while the group is open (``vfio_device_block_group``); EINVAL when this fd is
    bound already; (6.17+) the VF token; EBADF/EBADFD for the fd; then ``vfio_df_open``
    (EINVAL if the device is open) and ``out_devid``."""
    kernel = df.machine.kernel
    flags, fd, token_ptr = _read_bind(a, kernel >= BIND_TOKEN_RELEASE)
    if df.group is not None:
        raise InvalidArgument("BIND_IOMMUFD: only for a device cdev, not a group's device fd")
    vdev = df.vdev
    if vdev.dev.iommu_group in df.machine.open_groups:
        raise Busy(f"BIND_IOMMUFD: group {vdev.dev.iommu_group} is open through /dev/vfio")
    if df.access_granted:
        raise InvalidArgument("BIND_IOMMUFD: this fd is bound already")
    if kernel >= BIND_TOKEN_RELEASE:
        _check_token(proc, flags, token_ptr)
    f = get_file(_iommufd_from_fd(proc, fd))  # iommufd_ctx_from_fd
    df.iommufd = f
    try:
        vdev.df_open(df)
    except KernelError:
        df.iommufd = None
        fput(f)
        raise
    a.write(12, df.devid.to_bytes(4, "little"))
    vdev.cdev_opened = True
    df.access_granted = True
    return 0


def _read_bind(a: _Arg, copy_struct: bool) -> tuple[int, int, int]:
    """The BIND struct as the release reads it: ``(flags, iommufd, token_uuid_ptr)``.

    6.12 copies ``offsetofend(out_devid)`` bytes and wants ``flags`` 0; 6.17+ reads
    ``argsz`` first (EINVAL below that minimum), then ``copy_struct_from_user``
    (E2BIG for a non-zero byte past its 24-byte struct) and accepts the TOKEN flag.
    """
    minsz = u.BIND_IOMMUFD.size
    if not copy_struct:
        argsz, flags, fd, _ = u.BIND_IOMMUFD.unpack(a.read(0, minsz))
        if argsz < minsz or flags or fd < 0:
            raise InvalidArgument(f"BIND_IOMMUFD: argsz {argsz} flags {flags:#x} iommufd {fd}")
        return flags, fd, 0
    argsz = int.from_bytes(a.read(0, 4), "little")  # get_user(user_size, &arg->argsz)
    if argsz < minsz:
        raise InvalidArgument(f"BIND_IOMMUFD: argsz {argsz} < {minsz}")
    _, flags, fd, _, token_ptr = u.BIND_IOMMUFD_TOKEN.unpack(
        _copy_struct_from_user(a, u.BIND_IOMMUFD_TOKEN.size, argsz))
    if fd < 0 or flags & ~u.VFIO_DEVICE_BIND_FLAG_TOKEN:
        raise InvalidArgument(f"BIND_IOMMUFD: iommufd {fd} flags {flags:#x}")
    return flags, fd, token_ptr


def _copy_struct_from_user(a: _Arg, ksize: int, usize: int) -> bytes:
    """``copy_struct_from_user``: ``usize`` bytes are read (EFAULT past the buffer),
    those past the kernel's ``ksize`` must be zero (E2BIG), a shorter struct is
    zero-filled."""
    raw = a.read(0, usize)
    if any(raw[ksize:]):
        raise TooBig(f"bytes {ksize}..{usize - 1} past the kernel's {ksize}-byte struct "
                     "are not zero")
    return raw[:ksize].ljust(ksize, b"\0")


def _check_token(proc: Process, flags: int, token_ptr: int) -> None:
    """``vfio_df_check_token`` with ``vfio_pci_core_match_token_uuid``: the model's
    devices are neither SR-IOV VFs nor PFs, so no token is required and a token given is
    EINVAL (after it is read: EFAULT if ``token_uuid_ptr`` cannot be)."""
    if not flags & u.VFIO_DEVICE_BIND_FLAG_TOKEN:
        return
    proc.mm.read(token_ptr, 16)
    raise InvalidArgument("BIND_IOMMUFD: a VF token was given but the device is not a PF or "
                          "a VF")


def _iommufd_from_fd(proc: Process, fd: int) -> IommufdFile:
    """``iommufd_ctx_from_fd``: EBADF for no file, EBADFD for one that is not an iommufd
    (``/dev/vfio/vfio`` is one under CONFIG_IOMMUFD_VFIO_CONTAINER)."""
    from ..iommufd.file import IommufdFile
    f = proc.fget(fd)
    if f is None:
        raise BadFileDescriptor(f"BIND_IOMMUFD: fd {fd} is not open")
    if not isinstance(f, IommufdFile):
        raise kernel_error(EBADFD, f"BIND_IOMMUFD: fd {fd} is not an iommufd")
    return f


def unbind_iommufd(df: VfioDeviceFile) -> None:
    """``vfio_df_unbind_iommufd``: the cdev's close; nothing if it never bound."""
    if not df.access_granted:
        return
    assert df.iommufd is not None
    df.vdev.df_close(df)
    fput(df.iommufd)
    df.vdev.cdev_opened = False
    df.iommufd = None
    df.access_granted = False


# -- ATTACH / DETACH_IOMMUFD_PT --------------------------------------------------------------
def attach_pt(df: VfioDeviceFile, a: _Arg) -> int:
    """``vfio_df_ioctl_attach_pt``: ``pt_id`` in, the HWPT id out. 6.12 wants ``flags``
    0; 6.15+ accepts the PASID flag, then wants ``argsz`` to cover ``pasid``."""
    minsz = u.ATTACH_IOMMUFD_PT_MINSZ
    argsz, flags, pt_id = struct.unpack("<III", a.read(0, minsz))
    pasid_flag = u.VFIO_DEVICE_ATTACH_PASID if df.machine.kernel >= PASID_RELEASE else 0
    if argsz < minsz or flags & ~pasid_flag:
        raise InvalidArgument(f"ATTACH_IOMMUFD_PT: argsz {argsz} flags {flags:#x}")
    if flags:
        hwpt = df.vdev.physical_pasid_attach_ioas(_read_pasid(a, argsz, minsz, "ATTACH"),
                                                  pt_id)
    else:
        hwpt = df.vdev.physical_attach_ioas(pt_id)
    a.write(8, hwpt.to_bytes(4, "little"))
    return 0


def detach_pt(df: VfioDeviceFile, a: _Arg) -> int:
    """``vfio_df_ioctl_detach_pt``: 6.12 wants ``flags`` 0; 6.15+ accepts the PASID flag
    (``argsz`` must cover ``pasid``) and detaches only that PASID, which leaves the
    device's own attachment alone."""
    minsz = u.DETACH_IOMMUFD_PT_MINSZ
    argsz, flags = struct.unpack("<II", a.read(0, minsz))
    pasid_flag = u.VFIO_DEVICE_DETACH_PASID if df.machine.kernel >= PASID_RELEASE else 0
    if argsz < minsz or flags & ~pasid_flag:
        raise InvalidArgument(f"DETACH_IOMMUFD_PT: argsz {argsz} flags {flags:#x}")
    if flags:
        df.vdev.physical_pasid_detach_ioas(_read_pasid(a, argsz, minsz, "DETACH"))
    else:
        df.vdev.physical_detach_ioas()
    return 0


def _read_pasid(a: _Arg, argsz: int, minsz: int, what: str) -> int:
    """The ``pasid`` past the 6.12 struct: EINVAL unless ``argsz`` covers it, EFAULT if
    it cannot be read."""
    if argsz < minsz + 4:
        raise InvalidArgument(f"{what}_IOMMUFD_PT: argsz {argsz} does not cover pasid")
    return int.from_bytes(a.read(minsz, 4), "little")


#: the requests a bound device cdev answers before vfio-pci's (a group's device fd passes
#: them on to vfio-pci, which does not know them)
PT_IOCTLS: dict[int, Callable[[VfioDeviceFile, _Arg], int]] = {
    u.VFIO_DEVICE_ATTACH_IOMMUFD_PT: attach_pt,
    u.VFIO_DEVICE_DETACH_IOMMUFD_PT: detach_pt,
}
#: ``vfio_device_fops_unl_ioctl``'s own requests (vfio-pci's follow them:
#: :data:`~.device.VFIO_PCI_IOCTLS`)
DEVICE_FILE_IOCTLS: tuple[int, ...] = (u.VFIO_DEVICE_BIND_IOMMUFD, *PT_IOCTLS)
