"""An ioctl's argument as the model's handlers take it, from a real program's memory.

The model's ioctl handlers take the user memory at the argument pointer as a
``bytearray`` (or an ``int`` for the requests whose argument is a value) and treat a
buffer shorter than what they read or write as a fault (EFAULT). VFIO and iommufd
ioctls are ``_IO(';', n)``: the size bits are 0 and the struct's own first ``u32``
(``argsz`` for VFIO, ``size`` for iommufd) says how long it is. So the argument
becomes a :class:`UserArg` holding the *readable prefix* of ``[arg, arg + max(that
u32, 256))``: the kernel's reads fault exactly where the model's reads run off the end
of it. Writes go through to the program as they happen (``copy_to_user`` at the point
the kernel makes it, failing there with EFAULT and what fits written), so what the
program sees is exactly what the model wrote back, on success and on failure.
"""

from __future__ import annotations

import errno
import operator
from typing import Any

from ..bridge.memory import TargetMemory
from ..errors import BadAddress, kernel_error
from ..vfio import uapi as vu

__all__ = ["MAX_ARG_BYTES", "UserArg", "marshal"]

#: the longest argument struct read in one go (lab: the kernel's limit is the struct's
#: own size field; a longer one reads as if it ran into a fault here)
MAX_ARG_BYTES = 1 << 24
#: what is read when the first u32 says less: more than any fixed struct of these ioctls
_MIN_READ = 256
_PAGE_SIZE = 4096

#: requests whose argument is a value, not a pointer
_VALUE_ARG = frozenset({vu.VFIO_GET_API_VERSION, vu.VFIO_CHECK_EXTENSION, vu.VFIO_SET_IOMMU,
                        vu.VFIO_GROUP_UNSET_CONTAINER, vu.VFIO_DEVICE_RESET})


class UserArg(bytearray):
    """The bytes at the argument pointer; item and slice assignments are
    ``copy_to_user`` to the program first (EFAULT raised there), then kept here."""

    def __init__(self, data: bytes, addr: int, mem: TargetMemory) -> None:
        super().__init__(data)
        self.addr = addr
        self.mem = mem
        self.written: list[tuple[int, int]] = []  # (offset, length) of each write-back

    def __setitem__(self, key: Any, value: Any) -> None:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            data = bytes(value)
            if step != 1 or len(data) != max(0, stop - start):
                raise ValueError("UserArg: a write-back may not resize the user buffer")
        else:
            start = operator.index(key)
            start = start + len(self) if start < 0 else start
            if not 0 <= start < len(self):
                raise IndexError("UserArg index out of range")
            data = bytes([value])
        self.mem.write(self.addr + start, data)
        self.written.append((start, len(data)))
        if isinstance(key, slice):
            super().__setitem__(slice(start, start + len(data)), data)
        else:
            super().__setitem__(start, data[0])


def marshal(request: int, arg: int, mem: TargetMemory) -> int | bytes | bytearray:
    """The argument of ``ioctl(fd, request, arg)`` for the model's ``file.ioctl``."""
    if request in _VALUE_ARG:
        return arg
    if request == vu.VFIO_GROUP_GET_DEVICE_FD:
        return _device_name(arg, mem)
    if request == vu.VFIO_GROUP_SET_CONTAINER:
        return UserArg(mem.read_partial(arg, 4), arg, mem)
    data = mem.read_partial(arg, _MIN_READ)  # one copy for every fixed struct
    size = int.from_bytes(data[:4], "little") if len(data) >= 4 else 0
    if size > len(data) == _MIN_READ:
        data += mem.read_partial(arg + _MIN_READ, min(size, MAX_ARG_BYTES) - _MIN_READ)
    return UserArg(data, arg, mem)


def _device_name(arg: int, mem: TargetMemory) -> bytes:
    """``strndup_user(arg, PAGE_SIZE)``: EFAULT when nothing is readable there, EINVAL
    when no NUL ends it within a page."""
    data = mem.read_partial(arg, _PAGE_SIZE)
    end = data.find(b"\0")
    if end < 0:
        if len(data) < _PAGE_SIZE:
            raise BadAddress(f"GROUP_GET_DEVICE_FD: the name at {arg:#x} runs into a fault")
        raise kernel_error(errno.EINVAL, "GROUP_GET_DEVICE_FD: no NUL within a page")
    return data[:end + 1]
