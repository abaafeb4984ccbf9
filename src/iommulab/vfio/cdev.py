"""``/dev/vfio/devices/vfioN``: a vfio-pci device opened as a character device and bound to
iommufd (drivers/vfio/device_cdev.c, iommufd.c, 7.0).

Until VFIO_DEVICE_BIND_IOMMUFD the fd answers nothing else (EINVAL); a
device whose group is open through the legacy /dev/vfio/<group> cannot be
bound (EBUSY, ``vfio_device_block_group``). ATTACH takes an IOAS or HWPT id
and writes back the HWPT it ended on; a second ATTACH replaces. Closing the
fd detaches and unbinds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import Busy, InvalidArgument, NotATty, kernel_error
from . import uapi as u
from .files import EBADFD, VfioFile, _Arg

if TYPE_CHECKING:
    from ..iommufd.objects import Device, IommufdCtx
    from ..machine import Machine, PciDevice, Process

__all__ = ["DeviceCdev", "cdev_devices"]


def cdev_devices(machine: Machine) -> list[PciDevice]:
    """The devices with a cdev, in the order they were added (vfio0, vfio1, ...)."""
    return [d for d in machine.devices.values() if d.driver == "vfio-pci"]


class DeviceCdev(VfioFile):
    """One open of a device cdev."""

    def __init__(self, machine: Machine, dev: PciDevice) -> None:
        self.machine = machine
        self.dev = dev
        self.ctx: IommufdCtx | None = None
        self.idev: Device | None = None

    def ioctl(self, proc: Process, request: int, arg: int | bytes | bytearray) -> int:
        buf = _Arg(arg)
        if request == u.VFIO_DEVICE_BIND_IOMMUFD:
            return self._bind(proc, buf)
        if self.idev is None:
            raise InvalidArgument(f"ioctl {request:#x}: the device is not bound to iommufd")
        if request == u.VFIO_DEVICE_ATTACH_IOMMUFD_PT:
            argsz, flags, pt_id, _ = u.ATTACH_IOMMUFD_PT.unpack(_read(buf, 12, 16))
            if argsz < 12 or flags & ~u.VFIO_DEVICE_ATTACH_PASID:
                raise InvalidArgument(f"ATTACH_IOMMUFD_PT: argsz {argsz} flags {flags:#x}")
            if flags:
                raise InvalidArgument("ATTACH_IOMMUFD_PT: the model's devices have no PASID")
            assert self.ctx is not None
            if self.idev.hwpt is None:
                hwpt = self.ctx.attach(self.idev, pt_id)
            else:
                hwpt = self.ctx.replace(self.idev, pt_id)
            buf.write(8, hwpt.to_bytes(4, "little"))
            return 0
        if request == u.VFIO_DEVICE_DETACH_IOMMUFD_PT:
            argsz, flags, _ = u.DETACH_IOMMUFD_PT.unpack(_read(buf, 8, 12))
            if argsz < 8 or flags & ~u.VFIO_DEVICE_ATTACH_PASID:
                raise InvalidArgument(f"DETACH_IOMMUFD_PT: argsz {argsz} flags {flags:#x}")
            assert self.ctx is not None
            self.ctx.detach(self.idev)
            return 0
        raise NotATty(f"ioctl {request:#x}: unknown to a vfio device cdev")

    def _bind(self, proc: Process, buf: _Arg) -> int:
        """``vfio_df_ioctl_bind_iommufd``."""
        from ..iommufd.file import IommufdFile
        argsz, flags, fd, _ = u.BIND_IOMMUFD.unpack(_read(buf, 16, 16))
        if argsz < 16 or flags or fd < 0:
            raise InvalidArgument(f"BIND_IOMMUFD: argsz {argsz} flags {flags:#x} fd {fd}")
        if self.dev.iommu_group in self.machine.open_groups:
            raise Busy(f"BIND_IOMMUFD: group {self.dev.iommu_group} is open through "
                       "/dev/vfio")
        if self.idev is not None:
            raise InvalidArgument("BIND_IOMMUFD: already bound")
        f = proc.files.get(fd)
        if f is None:
            raise kernel_error(9, f"BIND_IOMMUFD: fd {fd} is not open")
        if not isinstance(f, IommufdFile):
            raise kernel_error(EBADFD, f"BIND_IOMMUFD: fd {fd} is not /dev/iommu")
        self.ctx = f.ctx
        self.idev = f.ctx.bind(self.dev)
        buf.write(12, self.idev.id.to_bytes(4, "little"))
        return 0

    def release(self) -> None:
        """``vfio_df_unbind_iommufd``."""
        if self.ctx is not None and self.idev is not None:
            self.ctx.unbind(self.idev)
        self.idev = None


def _read(buf: _Arg, minsz: int, size: int) -> bytes:
    """``copy_from_user`` of ``minsz`` bytes (EFAULT past the buffer), zero-extended to
    the struct's ``size``."""
    buf.read(0, minsz)
    return bytes(buf.buf[:size]).ljust(size, b"\0")
