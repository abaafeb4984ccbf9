"""The open file: what an fd points at, and its references (fs/file_table.c, fs/open.c).

:class:`File` is ``struct file`` with the ``file_operations`` a front end fills in
(``ioctl``, ``mmap``, ``read``/``write``); :func:`get_file` and :func:`fput` count the
references a process's fds and the kernel's own holders take.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, TypeVar

from ..errors import InvalidArgument, NoDevice, NotATty

if TYPE_CHECKING:
    from .process import Process

__all__ = ["File", "FileT", "collect_cycles", "fput", "get_file"]


class File:
    """An open file; ``ioctl`` dispatches, ``release`` is the last close (``refs`` counts
    the fds pointing at it, in this process and in children that inherited it)."""

    refs = 1

    def ioctl(self, proc: Process, request: int, arg: int | bytes | bytearray) -> int:
        raise NotATty(f"ioctl {request:#x}: not supported by this file")

    def mmap_region(self, length: int, offset: int, shared: bool = True) -> int:
        raise NoDevice("mmap: this file cannot be mapped")

    #: FMODE_PREAD | FMODE_PWRITE: the open of a character device sets them, an anon
    #: inode's file (an eventfd) lacks them, so pread/pwrite on it are ESPIPE
    positional = True

    def read_fd(self, n: int) -> bytes:
        """``vfs_read`` at the file position: EINVAL for a file with no ``read``
        (FMODE_CAN_READ unset), as the container, group and iommufd files are."""
        raise InvalidArgument("read: this file has no read operation")

    def write_fd(self, data: bytes) -> int:
        """``vfs_write``: EINVAL for a file with no ``write``."""
        raise InvalidArgument("write: this file has no write operation")

    def pread(self, n: int, pos: int) -> bytes:
        """``vfs_read`` at ``pos``: EINVAL for a file with no ``read``."""
        raise InvalidArgument("pread: this file has no read operation")

    def pwrite(self, data: bytes, pos: int) -> int:
        """``vfs_write`` at ``pos``: EINVAL for a file with no ``write``."""
        raise InvalidArgument("pwrite: this file has no write operation")

    def poll(self) -> int:
        """``vfs_poll``: a file without ``poll`` is always readable and writable
        (DEFAULT_POLLMASK: EPOLLIN | EPOLLOUT | EPOLLRDNORM | EPOLLWRNORM)."""
        return 0x1 | 0x4 | 0x40 | 0x100

    def release(self) -> None:
        """Nothing to undo."""

    def holds(self) -> list[File]:
        """The files this one holds a reference to, one entry per reference it took
        (lab: what :func:`collect_cycles` follows). Listing fewer than it holds is safe
        (the rest then looks held from outside); listing more is not."""
        return []

    def collect(self) -> None:
        """Drop what this file holds, as its release will, for a file that only files it
        holds (directly or not) still hold (lab: :func:`collect_cycles`)."""


FileT = TypeVar("FileT", bound=File)


def get_file(f: FileT) -> FileT:
    """``get_file``: one more reference to ``f``, for an fd a fork copies (``dup_fd``) or
    where the kernel keeps ``f`` open whatever the process closes (a bound device its
    iommufd, a group its iommufd, a device its group)."""
    f.refs += 1
    return f


def fput(f: File) -> None:
    """``fput``: drop such a reference (``close`` drops its fd's); the last one releases
    the file, another may leave it held only from inside a cycle
    (:func:`collect_cycles`)."""
    f.refs -= 1
    if not f.refs:
        f.release()
    else:
        collect_cycles(f)


def collect_cycles(f: File) -> None:
    """Lab: collect the files nothing outside holds any more, now that ``f`` lost a
    reference, as the kernel does not. 7.0's IOMMU_IOAS_MAP_FILE lets an iommufd's pages
    hold any file (``iopt_alloc_file_pages``: ``get_file``), the iommufd itself or one
    that holds it (a cdev bound to it, a group set to it, a selftest access); once the
    process closes its fds, each holds the other and neither is ever released, a
    kernel leak the model does not keep. Every file ``f`` reaches through
    :meth:`File.holds` whose ``refs`` all come from there, and that no file held from
    outside reaches, is garbage: each is told to :meth:`~File.collect`, and the
    references it drops release the rest. O(files reachable from ``f`` and what they
    hold); nothing for a file that holds nothing."""
    if not f.holds():
        return
    nodes: dict[int, File] = {id(f): f}
    inbound: Counter[int] = Counter()
    todo = [f]
    while todo:
        for g in todo.pop().holds():
            inbound[id(g)] += 1
            if id(g) not in nodes:
                nodes[id(g)] = g
                todo.append(g)
    live = [n for n in nodes.values() if n.refs > inbound[id(n)]]
    reached = {id(n) for n in live}
    while live:
        for g in live.pop().holds():
            if id(g) not in reached:
                reached.add(id(g))
                live.append(g)
    for key, node in nodes.items():
        if key not in reached:
            node.collect()
