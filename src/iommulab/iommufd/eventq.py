"""Event queues of an iommufd context: objects that hand records to user space through a
file of their own (drivers/iommu/iommufd/fault.c of 6.12; 7.0 calls it eventq.c and
derives both IOMMUFD_OBJ_FAULT and IOMMUFD_OBJ_VEVENTQ from ``struct iommufd_eventq``).

:class:`EventqObject` is that common part: the object, the records waiting to be read
(``deliver``), and the anon-inode file (:class:`EventqFile`) whose ``read``/``write``
the kind of queue defines and whose ``poll`` and ``release`` are shared.
:class:`FaultObject` is IOMMUFD_OBJ_FAULT: I/O page fault groups from the HWPTs that
name it (``IOMMU_HWPT_FAULT_ID_VALID``), read as ``struct iommu_hwpt_pgfault`` records
and answered with ``struct iommu_hwpt_page_response`` records written to its fd.

How a queue kind plugs in (what a vEVENTQ adds the same way):

* subclass :class:`EventqObject`, set :attr:`EventqObject.anon_name`, implement
  :meth:`EventqObject.read_records` (and :meth:`EventqObject.write_records` when the
  file is writable; the default refuses, as a file without ``write``) and ``destroy``;
* allocate it as :func:`fault_alloc` does: ``ctx.object_alloc``, the object,
  :meth:`EventqObject.eventq_init` (file and fd), the response, ``ctx.add``,
  :meth:`EventqObject.install`; on an error after the file, :meth:`EventqObject.abort`;
* producers append to ``deliver`` (under the kernel's spinlock; the model has no
  concurrency) and count the wake-up in ``wakeups``; readers see it through ``poll``.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BadAddress, InvalidArgument, KernelError, NotSupported, kernel_error
from ..iommu.iopf import (
    IOMMU_PAGE_RESP_INVALID,
    IOMMU_PAGE_RESP_SUCCESS,
    AttachHandle,
    IopfGroup,
    iopf_free_group,
    iopf_group_dequeue,
    iopf_group_response,
)
from ..mem.fault import xa_nodes_needed
from ..syscall.file import File, fput
from .objects import IommufdObject

if TYPE_CHECKING:
    from ..syscall.process import Process
    from .objects import IommufdCtx

__all__ = [
    "EPOLLIN",
    "EPOLLOUT",
    "EPOLLRDNORM",
    "HWPT_PGFAULT",
    "PAGE_RESPONSE",
    "CopyFromUser",
    "CopyToUser",
    "EventqFile",
    "EventqObject",
    "FaultObject",
    "fault_alloc",
]

EPOLLIN, EPOLLOUT, EPOLLRDNORM = 0x1, 0x4, 0x40
#: struct iommu_hwpt_pgfault: flags dev_id pasid grpid perm __reserved addr length cookie
HWPT_PGFAULT = struct.Struct("<IIIIIIQII")
#: struct iommu_hwpt_page_response: cookie code
PAGE_RESPONSE = struct.Struct("<II")

#: ``copy_to_user(buf + offset, data)``: EFAULT (BadAddress) where the user's buffer faults
CopyToUser = Callable[[int, bytes], None]
#: ``copy_from_user(buf + offset, n)``: the bytes, or EFAULT
CopyFromUser = Callable[[int, int], bytes]


@dataclass(eq=False, kw_only=True)
class EventqObject(IommufdObject):
    """``struct iommufd_eventq``: an object whose records (``deliver``, oldest first) a
    process reads through its fd. ``ctx`` is the context (its file is held while the
    queue's file is open: ``iommufd_ctx_get``); ``file`` is the queue's file once made,
    which holds one of the object's ``users`` until it is released, so IOMMU_DESTROY is
    EBUSY while the fd (or a dup of it) is open."""

    #: the anon inode's name (``anon_inode_getfile``), what ``/proc/PID/fd`` shows
    anon_name = "[iommufd-eventq]"

    ctx: IommufdCtx = field(repr=False)
    file: EventqFile | None = field(default=None, repr=False)
    deliver: list[Any] = field(default_factory=list, repr=False)
    #: ``wake_up_interruptible(&wait_queue)`` calls, one per record queued: each is a
    #: new edge for an EPOLLET waiter even while the queue stays readable
    wakeups: int = field(default=0, repr=False)

    # -- the kind's hooks ------------------------------------------------------------
    def read_records(self, count: int, copy_out: CopyToUser) -> int:
        """The file's ``read`` of ``count`` bytes: the bytes given (0 when nothing
        waits), or raise."""
        raise InvalidArgument("read: this event queue has no read operation")

    def write_records(self, count: int, copy_in: CopyFromUser) -> int:
        """The file's ``write``: by default the file has none (EINVAL, FMODE_CAN_WRITE
        unset)."""
        raise InvalidArgument("write: this event queue has no write operation")

    def poll(self) -> int:
        """``iommufd_fault_fops_poll`` (7.0 ``iommufd_eventq_fops_poll``): always
        writable; readable while a record waits."""
        return EPOLLOUT | (EPOLLIN | EPOLLRDNORM if self.deliver else 0)

    # -- the file and its fd -----------------------------------------------------------
    def eventq_init(self, proc: Process) -> int:
        """What 6.12's ``iommufd_fault_alloc`` (7.0's ``iommufd_eventq_init``) does
        after the object: the anon-inode file (``anon_inode_getfile``: its dentry and
        its file, ENOMEM), which takes a user of the object and holds the context, then
        a free fd in ``proc`` (``get_unused_fd_flags(O_CLOEXEC)``: EMFILE). The fd, for
        :meth:`install` once the command has answered, or :meth:`abort` on an error.
        When no fd can be had the file is put here, as newer kernels'
        ``iommufd_eventq_init`` does (6.12.118's ``iommufd_fault_alloc`` never puts it
        on its error paths, leaking it and the context it holds: a leak the model does
        not keep)."""
        fail = self.ctx.mem.fail_nth
        fail.check("d_alloc_pseudo(anon_inode_getfile)")  # alloc_file_pseudo: the dentry
        fail.check("alloc_empty_file(anon_inode_getfile)")  # and the file
        self.file = EventqFile(self)
        self.users += 1
        self.ctx.ctx_get()
        try:
            return proc.get_unused_fd()
        except KernelError:
            self._put_file()
            raise

    def install(self, proc: Process, fd: int) -> None:
        """``fd_install``: the file at ``fd`` in ``proc``."""
        assert self.file is not None
        proc.fd_install(fd, self.file)

    def abort(self) -> None:
        """The error path after :meth:`eventq_init` (``put_unused_fd`` of a number that
        was never installed; the file put, see :meth:`eventq_init`)."""
        self._put_file()

    def _put_file(self) -> None:
        if self.file is not None:
            fput(self.file)

    def released(self) -> None:
        """``iommufd_fault_fops_release``: the file's user of the object and its hold on
        the context go (the object may be destroyed by then only if the file never
        reached a process)."""
        self.file = None
        self.users -= 1
        self.ctx.ctx_put()


class EventqFile(File):
    """The anon-inode file of an :class:`EventqObject` (``nonseekable_open``: ``pread``
    and ``pwrite`` are ESPIPE, the file position stays 0). ``read_fd``/``write_fd`` are
    the Python door (the bytes in and out); :meth:`read_user`/:meth:`write_user` take the
    caller's ``copy_to_user``/``copy_from_user``, for a real program's buffer."""

    positional = False

    def __init__(self, eventq: EventqObject) -> None:
        self.eventq = eventq
        self.anon_name = eventq.anon_name

    def read_user(self, count: int, copy_out: CopyToUser) -> int:
        return self.eventq.read_records(count, copy_out)

    def write_user(self, count: int, copy_in: CopyFromUser) -> int:
        return self.eventq.write_records(count, copy_in)

    def read_fd(self, n: int) -> bytes:
        out = bytearray()

        def copy_out(offset: int, data: bytes) -> None:
            out[offset:offset + len(data)] = data

        done = self.read_user(n, copy_out)
        return bytes(out[:done])

    def write_fd(self, data: bytes) -> int:
        return self.write_user(len(data), lambda offset, n: data[offset:offset + n])

    def poll(self) -> int:
        return self.eventq.poll()

    def holds(self) -> list[File]:
        """The context's file (``iommufd_ctx_get``)."""
        f = self.eventq.ctx.file
        return [f] if f is not None else []

    def release(self) -> None:
        self.eventq.released()


# -- IOMMUFD_OBJ_FAULT -----------------------------------------------------------------

@dataclass(eq=False, kw_only=True)
class FaultObject(EventqObject):
    """``struct iommufd_fault``: the I/O page fault groups of the HWPTs that name it,
    ``deliver`` (not read yet) then ``response`` (read, waiting for the answer, by the
    cookie the read gave them: ids from 1, the lowest free one)."""

    anon_name = "[iommufd-pgfault]"

    response: dict[int, IopfGroup] = field(default_factory=dict, repr=False)

    def iopf_handler(self, group: IopfGroup) -> None:
        """``iommufd_fault_iopf_handler``: off the device's pending list, onto the end
        of ``deliver`` (readers are woken: ``poll`` sees it)."""
        iopf_group_dequeue(group)
        self.deliver.append(group)
        self.wakeups += 1

    def read_records(self, count: int, copy_out: CopyToUser) -> int:
        """``iommufd_fault_fops_read``: ESPIPE unless ``count`` is whole records. Then
        whole groups, oldest first, one ``struct iommu_hwpt_pgfault`` per fault, as many
        as fit: a group that does not fit stays first in line, and is EINVAL when it is
        the first (a group is never split). Each group read gets the lowest free cookie
        and waits for its response. A record the user's buffer refuses (EFAULT) puts its
        group back unread; the groups before it count. The bytes read, or the error
        when none were. O(records)."""
        size = HWPT_PGFAULT.size
        if count % size:
            raise kernel_error(errno.ESPIPE, f"fault read of {count} bytes: not whole "
                               f"{size}-byte records")
        done = 0
        err: KernelError | None = None
        while self.deliver:
            group = self.deliver.pop(0)  # iommufd_fault_deliver_fetch
            if done >= count or group.fault_count * size > count - done:
                self.deliver.insert(0, group)  # iommufd_fault_deliver_restore
                if not done:
                    err = InvalidArgument(f"fault read of {count} bytes: the next group "
                                          f"has {group.fault_count} records")
                break
            cookie = self._alloc_cookie(group)
            idev = group.attach_handle.idev
            group_done = done
            try:
                for f in group.faults:  # iommufd_compose_fault_message
                    copy_out(group_done, HWPT_PGFAULT.pack(
                        f.flags, idev.id, f.pasid, f.grpid, f.perm, 0, f.addr, 0, cookie))
                    group_done += size
            except BadAddress as e:
                del self.response[cookie]
                self.deliver.insert(0, group)
                err = e
                break
            done = group_done
        if not done and err is not None:
            raise err
        return done

    def _alloc_cookie(self, group: IopfGroup) -> int:
        """``xa_alloc(&fault->response, ...)`` with XA_FLAGS_ALLOC1 and a 32-bit limit:
        the lowest free id from 1 (its nodes retried, never failed: the EBUSY of a full
        32-bit space is not reachable). O(responses)."""
        held = np.array(sorted(self.response), dtype=np.int64)
        free = np.flatnonzero(held != np.arange(1, len(held) + 1))
        cookie = int(free[0]) + 1 if len(free) else len(held) + 1
        self.ctx.mem.fail_nth.xa_nodes("fault->response",
                                       xa_nodes_needed(held, cookie, cookie))
        group.cookie = cookie
        self.response[cookie] = group
        return cookie

    def write_records(self, count: int, copy_in: CopyFromUser) -> int:
        """``iommufd_fault_fops_write``: ESPIPE unless ``count`` is whole responses.
        Then each ``struct iommu_hwpt_page_response`` in turn: EFAULT where the buffer
        cannot be read, EINVAL for a code other than SUCCESS or INVALID or a cookie no
        read group has; each good one answers its group to the device
        (``iopf_group_response``) and frees it. It stops at the first bad one; the bytes
        of the answered ones, or the error when none were. O(responses)."""
        size = PAGE_RESPONSE.size
        if count % size:
            raise kernel_error(errno.ESPIPE, f"fault write of {count} bytes: not whole "
                               f"{size}-byte responses")
        done = 0
        err: KernelError | None = None
        while count > done:
            try:
                cookie, code = PAGE_RESPONSE.unpack(copy_in(done, size))
            except BadAddress as e:
                err = e
                break
            if code not in (IOMMU_PAGE_RESP_SUCCESS, IOMMU_PAGE_RESP_INVALID):
                err = InvalidArgument(f"fault response code {code}")
                break
            group = self.response.pop(cookie, None)
            if group is None:
                err = InvalidArgument(f"fault response for cookie {cookie}: no such "
                                      "fault waits for one")
                break
            iopf_group_response(group, code)
            iopf_free_group(group)
            done += size
        if not done and err is not None:
            raise err
        return done

    def auto_response(self, handle: AttachHandle | None) -> None:
        """``iommufd_auto_response_faults``: every group of ``handle`` (the attachment
        being detached or replaced), read or not, answered INVALID and freed."""
        mine = [g for g in self.deliver if g.attach_handle is handle]
        self.deliver = [g for g in self.deliver if g.attach_handle is not handle]
        for group in mine:
            iopf_group_response(group, IOMMU_PAGE_RESP_INVALID)
            iopf_free_group(group)
        for cookie, group in list(self.response.items()):
            if group.attach_handle is handle:
                del self.response[cookie]
                iopf_group_response(group, IOMMU_PAGE_RESP_INVALID)
                iopf_free_group(group)

    def destroy(self, ctx: IommufdCtx) -> None:
        """``iommufd_fault_destroy``: every group still held, unread then read, answered
        INVALID and freed."""
        for group in self.deliver:
            iopf_group_response(group, IOMMU_PAGE_RESP_INVALID)
            iopf_free_group(group)
        self.deliver.clear()
        for group in self.response.values():
            iopf_group_response(group, IOMMU_PAGE_RESP_INVALID)
            iopf_free_group(group)
        self.response.clear()


def fault_alloc(ctx: IommufdCtx, proc: Process, flags: int,
                respond: Callable[[int, int], None]) -> FaultObject:
    """``iommufd_fault_alloc`` (IOMMU_FAULT_QUEUE_ALLOC): EOPNOTSUPP for any flag; the
    object (``kzalloc``, its id), its file and fd (:meth:`EventqObject.eventq_init`),
    then ``respond(id, fd)`` (``iommufd_ucmd_respond``: an EFAULT there undoes the fd,
    the file and the object), the object published, the fd installed."""
    if flags:
        raise NotSupported(f"FAULT_QUEUE_ALLOC: flags {flags:#x}")
    id = ctx.object_alloc("iommufd_fault")
    fault = FaultObject(id=id, ctx=ctx)
    try:
        fd = fault.eventq_init(proc)
    except KernelError:
        ctx.abort_id(id)
        raise
    try:
        respond(id, fd)
    except KernelError:
        fault.abort()
        ctx.abort_id(id)
        raise
    ctx.add(fault, id)
    fault.install(proc, fd)
    return fault
