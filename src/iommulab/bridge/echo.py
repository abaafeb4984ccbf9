"""A tiny handler for tests and benchmarks (not the model): ``/dev/iommulab-test`` echoes.

Its ioctls use the VFIO/iommufd type byte (``';'``) with numbers no kernel header uses
(0xF0..0xF4), so the filter traps them on any fd, as it will the model's:

=============  =================================================================
``ECHO_NOP``   returns 0, touches no memory: the bare round trip
``ECHO_STRUCT`` ``struct { u32 argsz, flags; u64 in, out; }``: ``out = in + 1``, a
               small struct copied in and out like an iommufd ioctl's
``ECHO_COPY``  ``struct { u32 len, pad; u64 src, dst; }``: copies ``len`` bytes from
               ``src`` to ``dst`` in the caller (pointers inside the struct)
``ECHO_KILL``  SIGKILLs the caller before answering (a program killed mid-call)
``ECHO_PID``   returns the pid the bridge attributes the call to
=============  =================================================================

``read`` returns bytes ``(offset + i) & 0xff``, ``write`` keeps what it was given, and a
shared ``mmap`` of the first 4 KiB maps the backing, which holds ``b"ECHO"`` at 0.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import struct
from dataclasses import dataclass, field

from ..errors import kernel_error
from .handler import CONTINUE, Backing, Continue, Handler, Node
from .memory import TargetMemory

__all__ = ["ECHO_COPY", "ECHO_KILL", "ECHO_NOP", "ECHO_PATH", "ECHO_PID", "ECHO_STRUCT",
           "EchoFile", "EchoHandler"]

ECHO_PATH = "/dev/iommulab-test"
ECHO_NOP = 0x3BF0  # _IO(';', 0xf0)
ECHO_STRUCT = 0x3BF1
ECHO_COPY = 0x3BF2
ECHO_KILL = 0x3BF3
ECHO_PID = 0x3BF4
_STRUCT = struct.Struct("=IIQQ")
_MAP_SIZE = 4096


@dataclass
class EchoFile:
    """One open of the echo device."""

    serial: int
    pid: int
    flags: int
    written: bytearray = field(default_factory=bytearray)


class EchoHandler(Handler):
    """Serves ``ECHO_PATH`` (char device 240:0) and records every event in ``events``."""

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []
        self.open_files: dict[int, EchoFile] = {}
        self.ioctls = 0
        self._serial = 0

    def lookup(self, path: str) -> Node | None:
        return Node(stat.S_IFCHR | 0o600, os.makedev(240, 0)) if path == ECHO_PATH else None

    def open(self, pid: int, path: str, flags: int, backing: Backing) -> object:
        backing.truncate(_MAP_SIZE)
        backing.pwrite(b"ECHO", 0)
        self._serial += 1
        f = EchoFile(self._serial, pid, flags)
        self.open_files[f.serial] = f
        self.events.append(("open", pid, f.serial))
        return f

    def release(self, handle: object) -> None:
        assert isinstance(handle, EchoFile)
        del self.open_files[handle.serial]
        self.events.append(("release", handle.serial))

    def ioctl(self, pid: int, handle: object, request: int, arg: int,
              mem: TargetMemory) -> int:
        self.ioctls += 1
        if request == ECHO_NOP:
            return 0
        if request == ECHO_STRUCT:
            argsz, flags, val, _ = _STRUCT.unpack(mem.read(arg, _STRUCT.size))
            if argsz < _STRUCT.size or flags:
                raise kernel_error(errno.EINVAL, f"argsz {argsz} flags {flags:#x}")
            mem.write(arg + 16, struct.pack("=Q", (val + 1) & (2**64 - 1)))
            return 0
        if request == ECHO_COPY:
            length, _, src, dst = _STRUCT.unpack(mem.read(arg, _STRUCT.size))
            mem.write(dst, mem.read(src, length))
            return int(length)
        if request == ECHO_KILL:
            os.kill(pid, signal.SIGKILL)
            return 0
        if request == ECHO_PID:
            return pid
        raise kernel_error(errno.ENOTTY, f"echo ioctl {request:#x}")

    def read(self, pid: int, handle: object, buf: int, count: int, offset: int,
             mem: TargetMemory) -> int | Continue:
        n = min(count, 64)
        mem.write(buf, bytes((offset + i) & 0xFF for i in range(n)))
        return n

    def write(self, pid: int, handle: object, buf: int, count: int, offset: int,
              mem: TargetMemory) -> int | Continue:
        assert isinstance(handle, EchoFile)
        handle.written += mem.read(buf, count)
        return count

    def mmap(self, pid: int, handle: object, addr: int, length: int, prot: int,
             flags: int, offset: int) -> Continue:
        if offset + length > _MAP_SIZE:
            raise kernel_error(errno.EINVAL, f"mmap of {length:#x} at {offset:#x} past 4K")
        return CONTINUE

    def fork(self, parent: int | None, child: int) -> None:
        self.events.append(("fork", parent, child))

    def exit(self, pid: int) -> None:
        self.events.append(("exit", pid))
