"""Errors carrying the kernel's errno (``e.errno == errno.EEXIST``).

Every exception the model raises for bad input or a refused operation is a
:class:`KernelError`, an ``OSError`` whose ``errno`` is the value the kernel
returns in the same situation and whose message names the offending value.
"""

from __future__ import annotations

import errno as _errno
from typing import ClassVar

__all__ = [
    "AddressInUse",
    "AlreadyExists",
    "BadAddress",
    "BadFileDescriptor",
    "Busy",
    "CorruptPageTable",
    "DmaFault",
    "InvalidArgument",
    "IoError",
    "KernelError",
    "NoDevice",
    "NoEntry",
    "NoSpace",
    "NoSuchDevice",
    "NotATty",
    "NotPermitted",
    "NotSupported",
    "OutOfMemory",
    "OutOfRange",
    "Overflow",
    "PermissionDenied",
    "TooBig",
    "kernel_error",
]


class KernelError(OSError):
    """Base class: an ``OSError`` with the errno the kernel would return."""

    errno_value: ClassVar[int] = _errno.EINVAL
    #: Bytes already mapped when an io-pgtable ``map_pages`` failed (its ``*mapped``).
    mapped: int = 0

    def __init__(self, message: str) -> None:
        super().__init__(self.errno_value, message)

    def __str__(self) -> str:
        return f"[{_errno.errorcode.get(self.errno_value, '?')}] {self.strerror}"


class InvalidArgument(KernelError):
    errno_value = _errno.EINVAL


class AlreadyExists(KernelError):
    errno_value = _errno.EEXIST


class OutOfRange(KernelError):
    errno_value = _errno.ERANGE


class OutOfMemory(KernelError):
    errno_value = _errno.ENOMEM


class NotSupported(KernelError):
    errno_value = _errno.EOPNOTSUPP


class NoDevice(KernelError):
    errno_value = _errno.ENODEV


class NoEntry(KernelError):
    errno_value = _errno.ENOENT


class Busy(KernelError):
    errno_value = _errno.EBUSY


class BadAddress(KernelError):
    errno_value = _errno.EFAULT


class NotPermitted(KernelError):
    errno_value = _errno.EPERM


class AddressInUse(KernelError):
    errno_value = _errno.EADDRINUSE


class Overflow(KernelError):
    errno_value = _errno.EOVERFLOW


class NoSpace(KernelError):
    errno_value = _errno.ENOSPC


class TooBig(KernelError):
    """E2BIG: e.g. a longer-than-known iommufd struct whose extra bytes are not zero."""

    errno_value = _errno.E2BIG


class BadFileDescriptor(KernelError):
    errno_value = _errno.EBADF


class PermissionDenied(KernelError):
    errno_value = _errno.EACCES


class NotATty(KernelError):
    """ENOTTY: the file has no such ioctl."""

    errno_value = _errno.ENOTTY


class NoSuchDevice(KernelError):
    """ENXIO: "No such device or address" (a probe that finds no usable hardware)."""

    errno_value = _errno.ENXIO


class IoError(KernelError):
    errno_value = _errno.EIO


class DmaFault(KernelError):
    """A device's DMA was refused by the IOMMU; nothing was read or written.

    Carries what the IOMMU recorded: the stream, the address, the direction
    and the fault (``reason``, e.g. ``"F_TRANSLATION"``).
    """

    errno_value = _errno.EIO

    def __init__(self, message: str, *, sid: int, iova: int, write: bool, reason: str) -> None:
        super().__init__(message)
        self.sid, self.iova, self.write, self.reason = sid, iova, write, reason


class CorruptPageTable(RuntimeError):
    """A descriptor the kernel would dereference as garbage (not a kernel errno).

    Raised where the kernel code would follow a malformed entry into memory
    that is not a page table; only reachable by writing tables by hand.
    """


_BY_ERRNO: dict[int, type[KernelError]] = {
    cls.errno_value: cls
    for cls in (
        InvalidArgument,
        AlreadyExists,
        OutOfRange,
        OutOfMemory,
        NotSupported,
        NoDevice,
        NoEntry,
        Busy,
        BadAddress,
        NotPermitted,
        AddressInUse,
        Overflow,
        NoSpace,
        NoSuchDevice,
        TooBig,
    )
}


def kernel_error(err: int, message: str) -> KernelError:
    """Build the :class:`KernelError` subclass for ``err`` (any errno value)."""
    cls = _BY_ERRNO.get(err)
    if cls is None:  # one class per errno, made once
        cls = _BY_ERRNO[err] = type(f"KernelError_{_errno.errorcode.get(err, err)}",
                                    (KernelError,), {"errno_value": err})
    return cls(message)
