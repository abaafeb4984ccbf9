"""The program's own eventfds as the model's (lab: ``iommulab exec``).

When a program under exec hands the model an eventfd (``VFIO_DEVICE_SET_IRQS`` with
``DATA_EVENTFD``), ``eventfd_ctx_fdget`` finds a :class:`RealEventFdFile`: the model's
eventfd whose context, while a driver holds it, holds the program's real eventfd
(``pidfd_getfd``: the same open file description). ``eventfd_signal`` then adds one to
the real counter, so the program's ``read``, ``poll``, ``select`` or ``epoll`` on its
eventfd sees the interrupt. The real file is let go when the model's last reference
goes (``eventfd_ctx_put``: SET_IRQS replacing or tearing down the trigger, the device's
last close).

Each real eventfd is one context however many fds or processes name it: contexts are
keyed by the ``eventfd-id`` of ``/proc/self/fdinfo`` (``eventfd_show_fdinfo``: the
context's ida id, unique while the context lives, which holding the file ensures).

The other direction, an eventfd the model waits on (a ``virqfd``: INTx unmask through an
eventfd): the context's ``count`` is the real counter (``eventfd-count`` in fdinfo), and
``eventfd_ctx_do_read`` (the waiter setting it to 0) is a real ``read``, which takes one
from an EFD_SEMAPHORE eventfd as the kernel's does. While the model waits on it, the
handler has the bridge poll the real eventfd (:meth:`RealEventFdCtx.poll_wake`), so a
``write`` by the program wakes the waiter before the program's next trapped call is
answered. Lab: the kernel runs the waiter inside the program's ``write``; here it runs
in the supervisor just after (before any later model call of the program, not before
its untrapped calls).
"""

from __future__ import annotations

import os
import select
from collections.abc import Callable

from ..eventfd import EventFdCtx, EventFdFile

__all__ = ["RealEventFdCtx", "RealEventFdFile", "eventfd_id"]

_ONE = (1).to_bytes(8, "little")


def eventfd_id(fd: int) -> int | None:
    """The ``eventfd-id`` of the supervisor's ``fd``, None if it is not an eventfd."""
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
            for line in f:
                if line.startswith(b"eventfd-id:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class RealEventFdCtx(EventFdCtx):
    """An ``eventfd_ctx`` whose counter is the program's: ``fd`` is the supervisor's
    description of the real eventfd, held while any model reference is (``kref`` above
    the file's own one). ``on_free`` is told when the last model reference goes."""

    def __init__(self, fd: int, on_free: Callable[[RealEventFdCtx], None]) -> None:
        self.fd = fd
        super().__init__()
        self._on_free = on_free
        self.watched = False  # the bridge polls ``fd`` for the waiters

    @property
    def count(self) -> int:
        """The real counter (``eventfd-count`` in the supervisor's fdinfo); 0 once let go."""
        if getattr(self, "fd", -1) < 0:
            return 0
        with open(f"/proc/self/fdinfo/{self.fd}", "rb") as f:
            for line in f:
                if line.startswith(b"eventfd-count:"):
                    return int(line.split()[1], 16)
        return 0

    @count.setter
    def count(self, value: int) -> None:
        """Only ``eventfd_ctx_do_read`` sets it, to 0: one real ``read`` (all of the
        counter, or one of an EFD_SEMAPHORE eventfd), if there is anything to read."""
        if getattr(self, "fd", -1) < 0:
            return
        assert value == 0, "the model only ever resets an eventfd's count"
        if self.count:
            os.read(self.fd, 8)

    def poll_wake(self) -> bool:
        """The bridge saw the real eventfd readable: wake the waiters (EPOLLIN). False
        when nobody waits any more (stop polling it)."""
        if not self.waiters or self.fd < 0:
            return False
        if self.count:
            self._wake(1)  # EPOLLIN
        return True

    def signal(self) -> None:
        """``eventfd_signal``: one more on the real counter. The kernel's saturates
        below ULLONG_MAX; a ``write`` there would block (or EAGAIN), so a counter with
        no room (no POLLOUT, ``eventfd_poll``) is left as it is, which is the same."""
        self.signals += 1
        if self.fd >= 0:
            p = select.poll()
            p.register(self.fd, select.POLLOUT)
            if p.poll(0):
                os.write(self.fd, _ONE)
        self._wake(1)  # EPOLLIN, to model-side waiters (none in practice)

    def put(self) -> None:
        """``eventfd_ctx_put``: at the file's own reference again, the real eventfd is
        let go."""
        super().put()
        if self.kref == 1 and self.fd >= 0:
            self._on_free(self)  # first: the handler stops polling the fd
            os.close(self.fd)
            self.fd = -1


class RealEventFdFile(EventFdFile):
    """What ``fdget`` finds at a program's eventfd: the model file of its
    :class:`RealEventFdCtx`. Reads and writes are the program's own (not trapped)."""

    def __init__(self, ctx: RealEventFdCtx) -> None:
        super().__init__(0, False)
        self.ctx = ctx
