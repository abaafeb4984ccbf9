"""The calling program's memory as the kernel's uaccess sees it.

``copy_from_user``/``copy_to_user`` become ``process_vm_readv``/``process_vm_writev`` on the
thread blocked in the trapped syscall. Both honour the target's page protections (a
write to a read-only page faults, as ``copy_to_user`` does; ``/proc/PID/mem`` would not,
it writes with FOLL_FORCE) and both stop at the first unmapped page.
"""

from __future__ import annotations

import errno

from ..errors import BadAddress, kernel_error
from . import _abi as A

__all__ = ["TargetMemory"]

_ADDR_LIMIT = 1 << 47  # TASK_SIZE_MAX, 4-level paging: user pointers above fault


class TargetMemory:
    """Reads and writes one thread's address space; faults raise EFAULT.

    One object per trapped syscall; ``tid`` is the thread that made it. Each access is
    one syscall, so callers read a whole struct at once (the kernel's minsz copy).
    """

    __slots__ = ("reads", "tid", "writes")

    def __init__(self, tid: int) -> None:
        self.tid = tid
        self.reads = 0
        self.writes = 0

    def read(self, addr: int, size: int) -> bytes:
        """``copy_from_user``: all ``size`` bytes at ``addr`` or ``BadAddress``."""
        if size == 0:
            return b""
        data = self.read_partial(addr, size)
        if len(data) != size:
            raise BadAddress(f"copy_from_user of {size} bytes at {addr:#x} faulted "
                             f"after {len(data)}")
        return data

    def read_partial(self, addr: int, size: int) -> bytes:
        """The readable prefix of ``[addr, addr+size)``, possibly empty (never raises)."""
        if addr < 0 or addr + size > _ADDR_LIMIT or size <= 0:
            return b""
        self.reads += 1
        return A.process_vm_readv(self.tid, addr, size)

    def write(self, addr: int, data: bytes) -> None:
        """``copy_to_user``: all of ``data`` at ``addr`` or ``BadAddress``.

        A fault part-way leaves the bytes before the faulting page written, as the
        kernel's copy does.
        """
        if not data:
            return
        done = 0
        if addr >= 0 and addr + len(data) <= _ADDR_LIMIT:
            self.writes += 1
            done = A.process_vm_writev(self.tid, addr, bytes(data))
        if done != len(data):
            raise BadAddress(f"copy_to_user of {len(data)} bytes at {addr:#x} faulted "
                             f"after {done}")

    def read_string(self, addr: int, limit: int = A.PATH_MAX) -> bytes:
        """``strncpy_from_user`` for a path: bytes before the NUL.

        EFAULT when nothing at ``addr`` is readable or the string runs into a fault,
        ENAMETOOLONG when no NUL appears in ``limit`` bytes (``getname``'s rules).
        """
        data = self.read_partial(addr, min(256, limit))  # most paths: one short copy
        end = data.find(b"\0")
        if end < 0 and len(data) == min(256, limit) < limit:
            data = self.read_partial(addr, limit)
            end = data.find(b"\0")
        if end >= 0:
            return data[:end]
        if len(data) < limit:
            raise BadAddress(f"string at {addr:#x} runs into unmapped memory after "
                             f"{len(data)} bytes")
        raise kernel_error(errno.ENAMETOOLONG, f"no NUL in {limit} bytes at {addr:#x}")
