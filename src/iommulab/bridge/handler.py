"""What the bridge asks of the model: the :class:`Handler` protocol and its values.

A handler serves a set of paths (:meth:`Handler.lookup`) and the files opened on them,
like a driver's ``file_operations``: ``open``, ``unlocked_ioctl``, ``read``, ``write``,
``mmap``, ``release``; plus the process lifetime events the kernel's fork and exit paths
see. Errors are ``OSError`` with the kernel's errno (``iommulab.errors``), answered to
the program as ``-errno``. Calls arrive one at a time, in the order the supervisor
receives the program's syscalls.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Final, Protocol

from ..errors import kernel_error
from .memory import TargetMemory

__all__ = ["CONTINUE", "Backing", "Continue", "Handler", "Node"]


class Continue:
    """Answer: let the real kernel run the call on the file's backing (a tmpfs file)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "CONTINUE"


CONTINUE: Final = Continue()


@dataclass(frozen=True)
class Node:
    """What ``stat`` shows for a served path and for ``fstat`` on a file opened on it.

    ``mode`` holds the type bits (``stat.S_IFCHR``, ``S_IFREG``, ``S_IFDIR``,
    ``S_IFLNK``) and the permission bits; ``rdev`` the device number of a character
    device; ``target`` what a symbolic link points at (the walk follows it as the
    kernel's would, ``readlink`` gives it).
    """

    mode: int
    rdev: int = 0
    size: int = 0
    target: str = ""

    @classmethod
    def chardev(cls, major: int, minor: int, perm: int = 0o600) -> Node:
        return cls(stat.S_IFCHR | perm, os.makedev(major, minor))

    @classmethod
    def symlink(cls, target: str) -> Node:
        return cls(stat.S_IFLNK | 0o777, size=len(os.fsencode(target)), target=target)

    @property
    def is_link(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def d_type(self) -> int:
        """The ``DT_*`` of a directory entry for this node (``fs_umode_to_dtype``)."""
        return stat.S_IFMT(self.mode) >> 12


class Backing:
    """The real file behind one opened model file: an unlinked tmpfs inode (a FIFO on
    tmpfs for a file the handler installed that has its own ``poll``, see
    :meth:`Handler.poll`).

    The program's fd is an open file description of this inode, so what the handler
    writes here is what an ``mmap`` answered with :data:`CONTINUE` maps (a vfio region
    at ``index << 40`` needs :meth:`truncate` past it first; tmpfs files are sparse).
    ``fd`` is the supervisor's own description, read-write, for ``mmap.mmap`` too.
    """

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)

    def pwrite(self, data: bytes, offset: int) -> None:
        if os.pwrite(self.fd, data, offset) != len(data):
            raise OSError(f"short write of {len(data)} bytes at {offset:#x}")

    def pread(self, size: int, offset: int) -> bytes:
        return os.pread(self.fd, size, offset)


class Handler(Protocol):
    """The model side of the bridge. Subclass it; the defaults are a bare char device's.

    ``pid`` is the calling process (thread-group id); ``mem`` the calling thread's memory.
    ``handle`` is whatever :meth:`open` returned, passed back for every call on a file
    description opened by it (dup'd, inherited by fork or passed over a socket alike).
    """

    def lookup(self, path: str) -> Node | None:
        """The node at the absolute, normalised ``path``, or None if not served."""
        return None

    def readdir(self, path: str) -> list[tuple[str, Node]]:
        """The entries of the served directory ``path`` (without ``.`` and ``..``), for
        ``getdents``. The bridge opens served directories itself (no :meth:`open`)."""
        return []

    def open(self, pid: int, path: str, flags: int, backing: Backing) -> object:
        """The driver's ``open``: a handle for the new file description, or raise."""
        raise kernel_error(19, f"no device at {path}")  # ENODEV

    def release(self, handle: object) -> None:
        """The last reference to the file description is gone (close, exit, munmap)."""

    def ioctl(self, pid: int, handle: object, request: int, arg: int,
              mem: TargetMemory) -> int:
        """``unlocked_ioctl``: the return value, or raise (ENOTTY for unknown requests)."""
        raise kernel_error(25, f"ioctl {request:#x} not supported")  # ENOTTY

    def read(self, pid: int, handle: object, buf: int, count: int, offset: int,
             mem: TargetMemory) -> int | Continue:
        """``read`` of ``count`` bytes at file ``offset`` into ``buf``: bytes read."""
        raise kernel_error(22, "read not supported")  # EINVAL

    def write(self, pid: int, handle: object, buf: int, count: int, offset: int,
              mem: TargetMemory) -> int | Continue:
        """``write`` of ``count`` bytes at ``buf`` to file ``offset``: bytes written."""
        raise kernel_error(22, "write not supported")  # EINVAL

    def stream(self, handle: object) -> bool:
        """Whether the file was opened as ``nonseekable_open`` does (an anon-inode queue
        such as iommufd's fault fd): ``pread``/``pwrite`` and their vector forms are
        ESPIPE, and ``read``/``write`` are given offset 0 and leave the file position
        as it was."""
        return False

    def poll(self, handle: object) -> int | None:
        """The file's ``poll`` now (EPOLL* bits), for a file with a ``poll`` of its own;
        None for one without (``vfs_poll``'s DEFAULT_POLLMASK: its tmpfs backing is
        always ready, as the program's own ``poll`` sees it).

        Asked once when the handler installs the file (:meth:`Bridge.install_at`): a
        file with a ``poll`` is then backed by a FIFO, read-write if the mask has
        EPOLLOUT (a file that is always writable) and read-only otherwise, and asked
        again after every call the handler answers, the FIFO holding one byte while
        the mask has EPOLLIN. The program's own ``poll``, ``select`` and ``epoll`` on
        its fd then see what this says, waits included (lab: with EPOLLWRNORM beside
        EPOLLOUT, and EPOLLRDNORM beside EPOLLIN, as ``pipe_poll`` gives them)."""
        return None

    def wakeups(self, handle: object) -> int:
        """How many times the wait queue the file's ``poll`` waits on has been woken
        (``wake_up``: a record queued), for a file :meth:`poll` answers: each new one
        while the file stays readable is one more byte in its FIFO, a new edge for an
        EPOLLET waiter (``pipe_write`` wakes a polled pipe's readers however full)."""
        return 0

    def mmap(self, pid: int, handle: object, addr: int, length: int, prot: int,
             flags: int, offset: int) -> Continue:
        """Accept the mapping (:data:`CONTINUE`: the kernel maps the backing) or raise."""
        raise kernel_error(19, "mmap not supported")  # ENODEV

    def fork(self, parent: int | None, child: int) -> None:
        """``child`` exists, forked from ``parent`` (None: the launched program itself)."""

    def exit(self, pid: int) -> None:
        """Process ``pid`` has exited (all its threads)."""

    def thread_exit(self, tid: int) -> None:
        """Thread ``tid`` (not a process's leader, and one the bridge has met) has exited
        while its process lives on."""
        return None
