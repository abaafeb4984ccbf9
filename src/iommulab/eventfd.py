"""eventfd(2) as the model needs it (fs/eventfd.c): a 64-bit counter that a driver
signals and a process reads, behind an fd.

:class:`EventFdCtx` is ``struct eventfd_ctx``: drivers hold it by reference
(``eventfd_ctx_fdget``), so it outlives the fd the process closes, as it does in the
kernel. :class:`EventFdFile` is the file the fd points at.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from .errors import BadFileDescriptor, InvalidArgument, kernel_error
from .syscall.file import File

if TYPE_CHECKING:
    from .syscall.process import Process

__all__ = ["EventFdCtx", "EventFdFile", "eventfd_ctx_fdget"]

_ULLONG_MAX = (1 << 64) - 1
EAGAIN = 11
EPOLLIN, EPOLLHUP = 0x1, 0x10


class Waiter(Protocol):
    """An entry on the eventfd's wait queue (a virqfd's ``wait``)."""

    def wake(self, flags: int) -> None: ...


class EventFdCtx:
    """``struct eventfd_ctx``: ``count`` and ``kref`` (one for the file, one per driver
    that holds it); ``signals`` counts every ``eventfd_signal`` (lab: for reports)."""

    def __init__(self) -> None:
        self.count = 0
        self.kref = 1
        self.signals = 0
        self.waiters: list[Waiter] = []  # wqh

    def _check(self) -> None:
        """Invariants (tests only): a u64 counter (ULLONG_MAX is reachable only by
        ``eventfd_signal``, the overflow poll reports as EPOLLERR), no negative kref,
        nobody waiting on a context nobody holds."""
        assert 0 <= self.count <= _ULLONG_MAX and self.kref >= 0
        assert self.kref or not self.waiters

    def _wake(self, flags: int) -> None:
        for w in list(self.waiters):
            w.wake(flags)

    def signal(self) -> None:
        """``eventfd_signal``: one more, saturating below ULLONG_MAX as 6.12's
        ``eventfd_signal_mask`` does (``if (ctx->count < ULLONG_MAX) ctx->count++``)."""
        if self.count < _ULLONG_MAX:
            self.count += 1
        self.signals += 1
        self._wake(EPOLLIN)

    def get(self) -> None:
        """``kref_get`` on the context (what ``eventfd_ctx_fdget`` takes)."""
        self.kref += 1

    def put(self) -> None:
        """``eventfd_ctx_put``."""
        assert self.kref > 0
        self.kref -= 1


class EventFdFile(File):
    """The file ``eventfd(initval, flags)`` returns. Lab: the model cannot block, so a
    read of a zero counter and a write that would overflow it answer EAGAIN, as they do
    with EFD_NONBLOCK. EFD_SEMAPHORE is honoured."""

    positional = False  # anon_inode_getfile: no FMODE_PREAD

    def __init__(self, initval: int, semaphore: bool) -> None:
        self.ctx = EventFdCtx()
        self.ctx.count = initval
        self.semaphore = semaphore

    def read_fd(self, n: int) -> bytes:
        """``eventfd_read``: EINVAL below 8 bytes; EAGAIN at zero; else the counter (1
        with EFD_SEMAPHORE), which is reset (decremented)."""
        if n < 8:
            raise InvalidArgument(f"eventfd read of {n} bytes: needs 8")
        ctx = self.ctx
        if not ctx.count:
            raise kernel_error(EAGAIN, "eventfd read: the counter is 0 (would block)")
        value = 1 if self.semaphore else ctx.count
        ctx.count -= value
        return value.to_bytes(8, "little")

    def write_fd(self, data: bytes) -> int:
        """``eventfd_write``: EINVAL for fewer than 8 bytes or the value ULLONG_MAX;
        EAGAIN when the sum would pass ULLONG_MAX - 1; 8."""
        if len(data) < 8:
            raise InvalidArgument(f"eventfd write of {len(data)} bytes: needs 8")
        value = int.from_bytes(data[:8], "little")
        if value == _ULLONG_MAX:
            raise InvalidArgument("eventfd write of 0xffffffffffffffff")
        if _ULLONG_MAX - self.ctx.count <= value:
            raise kernel_error(EAGAIN, "eventfd write: the counter would overflow")
        self.ctx.count += value
        if self.ctx.count:
            self.ctx._wake(EPOLLIN)
        return 8

    def poll(self) -> int:
        """``eventfd_poll``: EPOLLIN above 0, EPOLLERR at ULLONG_MAX, EPOLLOUT while a
        write of 1 fits."""
        count = self.ctx.count
        return (EPOLLIN if count else 0) | (0x8 if count == _ULLONG_MAX else 0) | \
            (0x4 if count < _ULLONG_MAX - 1 else 0)

    def release(self) -> None:
        """``eventfd_release``: waiters see EPOLLHUP, then the file's reference to the
        context goes."""
        self.ctx._wake(EPOLLHUP)
        self.ctx.put()


def eventfd_ctx_fdget(proc: Process, fd: int) -> EventFdCtx:
    """``eventfd_ctx_fdget``: EBADF for an fd that is not open, EINVAL for a file that
    is not an eventfd; the context with one more reference."""
    f = proc.fget(fd)
    if f is None:
        raise BadFileDescriptor(f"eventfd_ctx_fdget: fd {fd} is not open")
    if not isinstance(f, EventFdFile):
        raise InvalidArgument(f"eventfd_ctx_fdget: fd {fd} is not an eventfd")
    f.ctx.get()
    return f.ctx
