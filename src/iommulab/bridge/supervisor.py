"""The bridge: run a real program with its IOMMU device calls answered by a handler.

``Bridge.spawn`` starts the program under a seccomp filter whose listener it keeps
(``SECCOMP_FILTER_FLAG_NEW_LISTENER``) and, where the kernel has Landlock, under a fence
that keeps the real devices out of reach (``_landlock``). ``Bridge.serve`` then answers
each trapped syscall (``SECCOMP_IOCTL_NOTIF_RECV``/``SEND``): through the handler when it
concerns a served path or a file the bridge installed, with
``SECCOMP_USER_NOTIF_FLAG_CONTINUE`` otherwise, so the real kernel runs it untouched.

A file the program opens on a served path is an unlinked tmpfs inode (``O_TMPFILE``)
installed into the program with ``SECCOMP_IOCTL_NOTIF_ADDFD`` at a number in the fd
window, which is what lets the filter pick that fd's read/write/mmap out of all others.
The bridge recognises its files by inode (``stat /proc/TID/fd/N``), and learns that the
last reference to one has gone (close, exit, munmap, in any process) from inotify's
``IN_CLOSE`` on that inode: the kernel's ``release``, exactly when the kernel calls it.

``poll``, ``select`` and ``epoll`` are not trapped: the program's kernel answers them on
the backing. A tmpfs file is always ready, as a driver's file without ``poll`` is
(DEFAULT_POLLMASK). A file the handler installs that has a ``poll`` of its own (an
iommufd event queue: :meth:`Handler.poll`) is backed by a FIFO on tmpfs instead, and
after every call the handler answers (and every release and watch callback) the bridge
puts one byte in it or takes it out, so that the FIFO is readable exactly while the
handler's ``poll`` has EPOLLIN (and one byte more for each round the handler's wait
queue was woken in, so that EPOLLET sees an edge per record queued, as the kernel's
``wake_up`` gives it): the program's waits in ``poll`` or ``epoll_wait`` end when
another of its threads or processes makes the model queue a record, before that call
returns, and its reads and writes of the fd are still trapped (the window).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import resource
import select
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Final

from . import _abi as A
from . import _landlock
from ._bpf import FilterConfig, build_filter
from ._resolve import Resolution, Resolver
from ._stat import pack_stat, pack_statx
from .handler import Backing, Continue, Handler, Node
from .memory import TargetMemory

__all__ = ["DEFAULT_PROTECT", "Bridge", "BridgeStats", "fd_window"]

#: The real device paths a program under the bridge must never open.
DEFAULT_PROTECT: Final = ("/dev/iommu", "/dev/vfio")
#: ioctls the VFS answers before the driver sees them (``do_vfs_ioctl``), on any file.
_VFS_IOCTLS = frozenset({0x5451, 0x5450, 0x5421, 0x5452})  # FIOCLEX FIONCLEX FIONBIO FIOASYNC
_WATCH = A.IN_CLOSE_WRITE | A.IN_CLOSE_NOWRITE
_ZERO_NOTIF = bytes(A.NOTIF.size)
_IOV = 16  # sizeof(struct iovec)
_UIO_MAXIOV = 1024


class _ServedDir:
    """The handle of a served directory the program opened (the bridge's own: no
    handler ``open`` or ``release``; ``getdents`` lists :meth:`Handler.readdir`)."""

    __slots__ = ()


_DIR_HANDLE: Final = _ServedDir()


class _Gone(Exception):
    """The notification is no longer valid: the caller died or its syscall was restarted."""


class _Answered(Exception):
    """The syscall has been answered already (ADDFD with SECCOMP_ADDFD_FLAG_SEND)."""


def fd_window(soft_limit: int | None = None) -> tuple[int, int]:
    """The default fd window ``[base, top)``: the top of ``select``'s range, below the limit.

    Kept below FD_SETSIZE (1024) so that programs using ``select`` can wait on the
    bridge's fds, and below the soft ``RLIMIT_NOFILE`` so that ADDFD may place them.
    """
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0] if soft_limit is None else soft_limit
    top = min(soft if soft != resource.RLIM_INFINITY else 1024, 1024)
    return top - min(256, top // 4), top


@dataclass
class _File:
    """One file description the bridge installed: the handler's handle and its backing."""

    handle: object
    node: Node
    path: str
    backing: int  # the supervisor's own read-write description of the inode
    wd: int
    flags: int = os.O_RDWR  # the program's open flags (its access mode)
    polled: bool = False  # a FIFO whose readability mirrors the handler's poll
    ready: bool = False  # the FIFO holds bytes (the handler's poll had EPOLLIN)
    wakeups: int = 0  # the handler's wakeups when last synced


@dataclass
class _Pending:
    """A file the handler installs during the call it is answering (:meth:`Bridge.install`)."""

    path: str
    node: Node
    handle: object
    slot: int
    cloexec: bool


@dataclass
class BridgeStats:
    """Counts of what the supervisor did, by outcome and by syscall number."""

    received: int = 0
    continued: int = 0
    answered: int = 0
    installed: int = 0
    released: int = 0
    gone: int = 0

    def __post_init__(self) -> None:
        self.by_nr: Counter[int] = Counter()


_Call = Callable[[int, int, int, tuple[int, ...]], int | None]


class Bridge:
    """One program tree under one handler. Not thread-safe; one ``serve`` at a time.

    ``protect`` lists the real paths the program may never open (the defaults are the
    IOMMU devices; a test passes a stand-in). Without Landlock the bridge refuses to
    start unless ``require_fence=False``, and then only its own walk guards them.
    """

    def __init__(self, handler: Handler, *, protect: Sequence[str] = DEFAULT_PROTECT,
                 window: tuple[int, int] | None = None, deny_io_uring: bool = True,
                 require_fence: bool = True) -> None:
        self.handler = handler
        self.protect = tuple(os.path.normpath(os.path.abspath(p)) for p in protect)
        self.window = window or fd_window()
        self.stats = BridgeStats()
        #: Exceptions other than OSError raised by the handler (answered EIO).
        self.handler_errors: list[BaseException] = []
        self.fence = "landlock" if _landlock.landlock_abi() >= 1 else "none"
        if self.fence == "none" and require_fence:
            raise OSError(errno.EOPNOTSUPP, "Landlock is unavailable: the real devices "
                          "could be reached; pass require_fence=False to run anyway")
        self._filter = build_filter(FilterConfig(*self.window, deny_io_uring=deny_io_uring))
        self._listener = -1
        self._popen: subprocess.Popen[bytes] | None = None
        self._root_pid = 0
        self._files: dict[tuple[int, int], _File] = {}
        self._by_wd: dict[int, tuple[int, int]] = {}
        self._tids: dict[int, int] = {}  # tid -> tgid
        self._procs: dict[int, int] = {}  # tgid -> process pidfd
        self._pidfds: dict[int, tuple[int, bool]] = {}  # pidfd -> (tgid or tid, is_process)
        self._thread_pidfds: dict[int, int] = {}  # tid -> thread pidfd
        self._inotify = A.inotify_init()
        self._poll = select.poll()
        self._poll.register(self._inotify, select.POLLIN)
        self._shm = tempfile.mkdtemp(prefix="iommulab-bridge-",
                                     dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        self._resolver = Resolver(handler.lookup, lambda d, i: (d, i) in self._files,
                                  self._served_dir_at)
        self._protected = self._protected_devices()
        self._buf = bytearray(A.NOTIF.size)
        self._resp = bytearray(A.NOTIF_RESP.size)
        self._idbuf = bytearray(8)
        self._inos: dict[str, int] = {}
        self._dev = os.stat("/dev").st_dev if os.path.isdir("/dev") else 5
        self._epoch = int(time.time())
        self._calls: dict[int, _Call] = self._dispatch()
        self._caller = 0  # the thread whose ioctl the handler is answering (0: none)
        #: The thread whose syscall is being answered (0 between calls): what a handler
        #: needs for per-thread state (``current``) in calls that only carry the pid.
        self.current_tid = 0
        self._pending: list[_Pending] = []
        self._reserved: set[int] = set()  # fd numbers reserved by the call being answered
        #: the thread whose close of a file of ours may free it (key -> tid), until
        #: that release or that thread's next trapped call
        self._closers: dict[tuple[int, int], int] = {}
        self._watched: dict[int, Callable[[], None]] = {}  # handler fds polled (watch)
        self._polled: dict[tuple[int, int], _File] = {}  # FIFO-backed files (Handler.poll)
        self._fifos = 0  # FIFOs made, for their names

    # ----------------------------------------------------------------- launch
    def spawn(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
              cwd: str | None = None, stdin: int | IO[bytes] | None = None,
              stdout: int | IO[bytes] | None = None,
              stderr: int | IO[bytes] | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` under the filter and the fence; returns its ``Popen``.

        The child installs both in ``preexec_fn`` (after fork, before execve) and hands
        the listener back over a socketpair; nothing it does between the install and
        ``execve`` is trapped, so ``Popen`` returns before the supervisor serves.
        """
        if self._popen is not None:
            raise RuntimeError("a bridge runs one program tree")
        ruleset = _landlock.make_ruleset(self.protect) if self.fence == "landlock" else -1
        prog = ctypes.create_string_buffer(self._filter, len(self._filter))
        fprog = ctypes.create_string_buffer(
            (len(self._filter) // 8).to_bytes(2, "little") + bytes(6)
            + ctypes.addressof(prog).to_bytes(8, "little"), 16)
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        flags = A.SECCOMP_FILTER_FLAG_NEW_LISTENER | A.SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
        need_nnp = os.geteuid() != 0

        def install() -> None:  # runs in the child
            if need_nnp:
                A.syscall(157, 38, 1, 0, 0, 0)  # prctl(PR_SET_NO_NEW_PRIVS, 1)
            if ruleset >= 0:
                _landlock.restrict_self(ruleset)
            listener = A.syscall(A.NR_seccomp, A.SECCOMP_SET_MODE_FILTER, flags,
                                 ctypes.addressof(fprog))
            socket.send_fds(child, [b"L"], [listener])
            # the listener is close-on-exec: execve drops the program's copy

        try:
            popen = subprocess.Popen(list(argv), preexec_fn=install, close_fds=False,
                                     env=env, cwd=cwd, stdin=stdin, stdout=stdout,
                                     stderr=stderr)
            parent.settimeout(10)
            _, fds, _, _ = socket.recv_fds(parent, 1, 1)
        finally:
            parent.close()
            child.close()
            if ruleset >= 0:
                os.close(ruleset)
        self._listener = fds[0]
        with contextlib.suppress(OSError):  # wake the target on this CPU (6.6+)
            fcntl.ioctl(self._listener, A.SECCOMP_IOCTL_NOTIF_SET_FLAGS,
                        A.SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP)
        self._poll.register(self._listener, select.POLLIN)
        self._popen = popen
        self._root_pid = popen.pid
        self._add_process(popen.pid, None)
        return popen

    def run(self, argv: Sequence[str], *, timeout: float | None = None,
            **kwargs: object) -> int:
        """``spawn`` then ``serve`` until every task of the tree is gone: the exit status."""
        try:
            popen = self.spawn(argv, **kwargs)  # type: ignore[arg-type]
            try:
                self.serve(timeout)
            except BaseException:
                popen.kill()
                raise
        finally:
            self.close()
        return popen.wait()

    def __enter__(self) -> Bridge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release what is left and drop the listener (trapped calls then get ENOSYS)."""
        if self._listener >= 0:
            os.close(self._listener)
            self._listener = -1
        self._reap_releases()
        for key in list(self._files):
            self._release(key)
        for tgid in list(self._procs):
            self._process_exit(tgid)
        for pidfd in list(self._thread_pidfds.values()):
            os.close(pidfd)
        self._thread_pidfds.clear()
        self._pidfds.clear()
        if self._inotify >= 0:
            os.close(self._inotify)
            self._inotify = -1
        with contextlib.suppress(OSError):
            os.rmdir(self._shm)

    # ------------------------------------------------------- for the handler
    @property
    def backing_dir(self) -> str:
        """The directory of the backing inodes (what a program's maps show for them)."""
        return self._shm

    def handle_at(self, tid: int, fd: int) -> object | None:
        """The handle of the bridge's file at thread ``tid``'s ``fd`` (None for any other)."""
        f = self._file_at(tid, fd)
        return None if f is None else f.handle

    def backing_of(self, handle: object) -> Backing | None:
        """The backing inode of the bridge's file whose handle is ``handle`` (the one an
        ``mmap`` answered CONTINUE maps), the supervisor's own description of it; None
        once released. For the handler to ``os.dup`` and keep: closing a new
        description of the inode instead would read as the program's release. O(files)."""
        for f in self._files.values():
            if f.handle is handle:
                return Backing(f.backing)
        return None

    def fd_is_open(self, tid: int, fd: int) -> bool:
        """Whether ``fd`` is open in ``tid`` (any file, the bridge's or not)."""
        return 0 <= fd < 1 << 31 and os.path.lexists(f"/proc/{tid}/fd/{fd}")

    def take_fd(self, tid: int, fd: int) -> int:
        """A supervisor fd for the open file description at thread ``tid``'s ``fd``
        (``pidfd_getfd``): the program's own file, shared, for the handler to keep (an
        eventfd it signals) and close when done. EBADF when ``fd`` is not open."""
        return A.pidfd_getfd(self._pidfd(tid), fd)

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever the handler's own ``fd`` is readable (POLLIN), in
        the serving loop: after the exits and releases of a round, before its call (an
        eventfd the program writes, that the model waits on). Until :meth:`unwatch`."""
        if fd not in self._watched:
            self._poll.register(fd, select.POLLIN)
        self._watched[fd] = callback

    def unwatch(self, fd: int) -> None:
        """Stop :meth:`watch`ing ``fd`` (before the handler closes it)."""
        if self._watched.pop(fd, None) is not None:
            self._poll.unregister(fd)

    def reserve_fd(self, tid: int) -> int:
        """A free fd number in the caller's table, for a file the handler is about to
        hand out (a driver's ``get_unused_fd_flags``): taken from the top of the window,
        kept from other reservations of the same call. Only while answering an ioctl of
        ``tid``; EMFILE when the window is full. A reservation no :meth:`install_at`
        uses is dropped when the call ends (``put_unused_fd``)."""
        if tid != self._caller:
            raise RuntimeError("Bridge.reserve_fd outside an ioctl of that thread")
        slot = self._free_slot(tid, exclude=self._reserved)
        if slot is None:
            raise OSError(errno.EMFILE, "no free fd in the window")
        self._reserved.add(slot)
        return slot

    def install_at(self, tid: int, fd: int, path: str, node: Node, handle: object, *,
                   cloexec: bool = True) -> int:
        """``fd_install``: ``handle``'s new file at ``fd`` (from :meth:`reserve_fd`).

        The file is installed after the handler returns, before the answer; if the
        handler raises, nothing is installed and ``release(handle)`` is called, as the
        kernel's error paths ``put_unused_fd`` and ``fput``.
        """
        if tid != self._caller or fd not in self._reserved:
            raise RuntimeError(f"Bridge.install_at: fd {fd} was not reserved by this call")
        self._pending.append(_Pending(path, node, handle, fd, cloexec))
        return fd

    def _install_pending(self, nid: int, tid: int) -> None:
        """Install what the handler asked for (ADDFD at the reserved numbers, no SEND)."""
        pending, self._pending = self._pending, []
        for i, p in enumerate(pending):
            try:
                target = self._register(p.path, p.node, os.O_RDWR, p.handle)
            except BaseException:
                self._release_pending(pending[i + 1:])
                raise
            try:
                self._install(nid, tid, target, cloexec=p.cloexec, slot=p.slot, send=False)
            except BaseException:
                os.close(target)  # never reached the program: this is its release
                self._release_pending(pending[i + 1:])
                raise
            os.close(target)

    def _release_pending(self, pending: list[_Pending]) -> None:
        for p in pending:
            try:
                self.handler.release(p.handle)
            except Exception as e:
                self.handler_errors.append(e)

    # ------------------------------------------------------------------ loop
    def serve(self, timeout: float | None = None) -> None:
        """Answer the program's trapped calls until no task uses the filter any more.

        ``timeout`` (seconds) bounds the whole run: ``TimeoutError`` when it passes.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        listener = self._listener
        while True:
            wait = -1 if deadline is None else max(0, int((deadline - time.monotonic()) * 1e3))
            ready = self._poll.poll(wait)
            if not ready:
                raise TimeoutError(f"the program still runs after {timeout} s")
            # exits, then releases, then calls: a process's exit is reported before the
            # release of the files it held (the kernel's exit_mm precedes exit_files),
            # and both before any later call
            hup = False
            calls = releases = False
            woken: list[int] = []
            for fd, ev in ready:
                if fd == listener:
                    calls = bool(ev & select.POLLIN)
                    hup = not calls and bool(ev & (select.POLLHUP | select.POLLERR))
                elif fd == self._inotify:
                    releases = True
                elif fd in self._watched:
                    woken.append(fd)
                else:
                    who = self._pidfds.get(fd)
                    if who is not None and who[1]:
                        self._process_exit(who[0])
                    elif who is not None:
                        self._thread_exit(who[0])
            if releases:
                self._reap_releases()
            for fd in woken:  # before the calls: the program's write came first
                callback = self._watched.get(fd)
                if callback is not None:
                    try:
                        callback()
                    except Exception as e:
                        self.handler_errors.append(e)
            if calls:
                self._handle_one()  # syncs the FIFOs before it answers
            elif self._polled:  # a release, an exit or a watched fd may have run the model
                self._sync_polled()
            if hup:
                self._poll.unregister(listener)
                self._reap_releases()
                for tgid in list(self._procs):
                    self._process_exit(tgid)
                return

    def _handle_one(self) -> None:
        buf = self._buf
        buf[:] = _ZERO_NOTIF
        try:
            fcntl.ioctl(self._listener, A.SECCOMP_IOCTL_NOTIF_RECV, buf, True)
        except OSError as e:  # ENOENT: the caller went away before we got it
            if e.errno in (errno.ENOENT, errno.EINTR):
                return
            raise
        nid, tid, _flags, nr, _arch, _ip, *args = A.NOTIF.unpack(buf)
        st = self.stats
        st.received += 1
        st.by_nr[nr] += 1
        call = self._calls.get(nr)
        val = err = flags = 0
        if self._closers:  # its close freed nothing (another reference holds the file)
            for key in [k for k, t in self._closers.items() if t == tid]:
                del self._closers[key]
        try:
            tgid = self._tids.get(tid) or self._discover(tid)
            self.current_tid = tid
            ret = call(nid, tid, tgid, tuple(args)) if call is not None else None
            if ret is None:
                flags = A.SECCOMP_USER_NOTIF_FLAG_CONTINUE
            else:
                val = ret
        except _Answered:
            st.answered += 1
            return
        except _Gone:
            st.gone += 1
            return
        except OSError as e:
            err = e.errno if e.errno else errno.EIO
        except Exception as e:  # a handler bug: the program gets EIO, the bridge lives
            self.handler_errors.append(e)
            err = errno.EIO
        finally:
            self.current_tid = 0
            if self._polled:  # before the answer: the call may have queued a record
                self._sync_polled()
        if not self._send(nid, val, -err, flags):
            st.gone += 1
        elif flags:
            st.continued += 1
        else:
            st.answered += 1

    def _send(self, nid: int, val: int, error: int, flags: int) -> bool:
        """SECCOMP_IOCTL_NOTIF_SEND; False if the caller has gone meanwhile."""
        A.NOTIF_RESP.pack_into(self._resp, 0, nid, val, error, flags)
        try:
            fcntl.ioctl(self._listener, A.SECCOMP_IOCTL_NOTIF_SEND, self._resp, True)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
            return False
        return True

    def _valid(self, nid: int) -> None:
        """SECCOMP_IOCTL_NOTIF_ID_VALID: what was read belongs to the live caller."""
        self._idbuf[:] = nid.to_bytes(8, "little")
        try:
            fcntl.ioctl(self._listener, A.SECCOMP_IOCTL_NOTIF_ID_VALID, self._idbuf, True)
        except OSError:
            raise _Gone from None

    # ------------------------------------------------------- processes, files
    def _discover(self, tid: int) -> int:
        """First call from ``tid``: find its process; a new process is a fork."""
        try:
            tgid, ppid, _ = _status(tid)
        except OSError:
            raise _Gone from None
        if tgid not in self._procs:
            self._add_process(tgid, self._known_parent(ppid))
        if tid != tgid and tid not in self._thread_pidfds:
            try:
                pidfd = A.pidfd_open(tid, A.PIDFD_THREAD)
            except OSError:
                pidfd = -1
            if pidfd >= 0:
                self._thread_pidfds[tid] = pidfd
                self._pidfds[pidfd] = (tid, False)
                self._poll.register(pidfd, select.POLLIN)
        self._tids[tid] = tgid
        return tgid

    def _known_parent(self, ppid: int) -> int | None:
        if ppid in self._procs:
            return ppid
        try:
            tgid, grand, filtered = _status(ppid)
        except OSError:
            return None
        if not filtered or ppid == os.getpid():
            return None
        self._add_process(tgid, self._known_parent(grand))
        return tgid

    def _add_process(self, tgid: int, parent: int | None) -> None:
        try:
            pidfd = A.pidfd_open(tgid)
        except OSError:
            return
        self._procs[tgid] = pidfd
        self._pidfds[pidfd] = (tgid, True)
        self._tids[tgid] = tgid
        self._poll.register(pidfd, select.POLLIN)
        self.handler.fork(parent, tgid)

    def _process_exit(self, tgid: int) -> None:
        pidfd = self._procs.pop(tgid, None)
        if pidfd is None:
            return
        self._poll.unregister(pidfd)
        del self._pidfds[pidfd]
        os.close(pidfd)
        for tid in [t for t, g in self._tids.items() if g == tgid]:
            del self._tids[tid]
            self._thread_exit(tid)
        if tgid == self._root_pid and self._popen is not None:
            self._popen.poll()  # reap it: the filter is released when the task is
        self.handler.exit(tgid)

    def _thread_exit(self, tid: int) -> None:
        pidfd = self._thread_pidfds.pop(tid, None)
        if pidfd is not None:
            self._poll.unregister(pidfd)
            del self._pidfds[pidfd]
            os.close(pidfd)
            self._tids.pop(tid, None)
            try:
                self.handler.thread_exit(tid)
            except Exception as e:
                self.handler_errors.append(e)

    def _pidfd(self, tid: int) -> int:
        fd = self._thread_pidfds.get(tid) or self._procs.get(tid)
        if fd is None:
            raise _Gone
        return fd

    def _file_at(self, tid: int, fd: int) -> _File | None:
        """The bridge's file at the caller's ``fd``, None for any other (one ``stat``)."""
        try:
            st = os.stat(f"/proc/{tid}/fd/{fd}")
        except OSError:
            return None
        return self._files.get((st.st_dev, st.st_ino))

    def _served_dir_at(self, tid: int, fd: int) -> str | None:
        f = self._file_at(tid, fd & 0xFFFFFFFF) if fd >= 0 else None
        return f.path if f is not None and f.handle is _DIR_HANDLE else None

    def _reap_releases(self) -> None:
        """Turn inotify's IN_CLOSE on a backing inode into the handler's ``release``."""
        if self._inotify < 0:
            return
        while True:
            try:
                data = os.read(self._inotify, 4096)
            except BlockingIOError:
                return
            off = 0
            while off < len(data):
                wd, mask, _cookie, ln = A.INOTIFY_EVENT.unpack_from(data, off)
                off += A.INOTIFY_EVENT.size + ln
                key = self._by_wd.get(wd)
                if key is not None and mask & _WATCH:
                    self._release(key)

    def _release(self, key: tuple[int, int]) -> None:
        """The handler's ``release``, as the thread whose ``close`` freed the file
        (:attr:`current_tid`; the kernel runs the last ``fput`` of a ``close`` in the
        closing task before the call returns) or, freed otherwise (exit, munmap, a close
        the bridge did not see), as no thread (0)."""
        f = self._files.pop(key)
        del self._by_wd[f.wd]
        self._polled.pop(key, None)
        os.close(f.backing)  # frees the inode; inotify drops the watch (IN_IGNORED)
        self.stats.released += 1
        _closer = self._closers.pop(key, 0)
        if f.handle is _DIR_HANDLE:
            return
        saved, self.current_tid = self.current_tid, _closer
        try:
            self.handler.release(f.handle)
        except Exception as e:
            self.handler_errors.append(e)
        finally:
            self.current_tid = saved

    def _new_file(self, tgid: int, path: str, node: Node, flags: int) -> int:
        """Open the model file: a backing inode, the handler's ``open``, the fd to install.

        Returns a supervisor fd for the program's own description (its access mode and
        O_NONBLOCK), which the caller installs and closes.
        """
        backing = os.open(self._shm, A.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            handle = self.handler.open(tgid, path, flags, Backing(backing))
        except BaseException:
            os.close(backing)
            raise
        return self._register(path, node, flags, handle, backing)

    def _register(self, path: str, node: Node, flags: int, handle: object,
                  backing: int = -1) -> int:
        """Watch a backing inode (a new one unless given) for ``handle``: the supervisor fd
        of the program's description, for the caller to install and close. If this
        fails, ``handle`` is released."""
        mask = None
        wakeups = 0
        if backing < 0:
            try:
                mask = None if handle is _DIR_HANDLE else self.handler.poll(handle)
                wakeups = self.handler.wakeups(handle) if mask is not None else 0
                backing = self._fifo() if mask is not None else os.open(
                    self._shm, A.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
            except BaseException:
                if handle is not _DIR_HANDLE:
                    self.handler.release(handle)
                raise
        acc = flags & os.O_ACCMODE
        mode = os.O_RDWR if acc == os.O_ACCMODE else acc
        if mask is not None and not mask & select.POLLOUT:
            mode = os.O_RDONLY  # never writable: the FIFO's write side is not the program's
        try:
            target = os.open(f"/proc/self/fd/{backing}",
                             mode | (flags & os.O_NONBLOCK) | os.O_CLOEXEC)
            try:
                wd = A.inotify_add_watch(self._inotify, f"/proc/self/fd/{backing}", _WATCH)
            except BaseException:
                os.close(target)
                raise
        except BaseException:  # the file never reached the program: release it here
            os.close(backing)
            if handle is not _DIR_HANDLE:
                self.handler.release(handle)
            raise
        st = os.fstat(backing)
        key = (st.st_dev, st.st_ino)
        f = self._files[key] = _File(handle, node, path, backing, wd, flags,
                                     polled=mask is not None, wakeups=wakeups)
        if f.polled:
            self._polled[key] = f
        self._by_wd[wd] = key
        return target

    def _fifo(self) -> int:
        """A new FIFO in the backing directory, unlinked once open: the supervisor's
        read-write, non-blocking description of it (a reader and a writer, so the
        program's description never waits at open nor sees EPOLLHUP or EPOLLERR)."""
        self._fifos += 1
        path = os.path.join(self._shm, f"fifo{self._fifos}")
        os.mkfifo(path, 0o600)
        try:
            return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        finally:
            os.unlink(path)

    def _sync_polled(self) -> None:
        """Each FIFO-backed file as its :meth:`Handler.poll` says now: bytes in it while
        the mask has EPOLLIN (one more for new :meth:`Handler.wakeups`), none otherwise.
        O(FIFO-backed files)."""
        for f in list(self._polled.values()):
            try:
                mask = self.handler.poll(f.handle)
                wakeups = self.handler.wakeups(f.handle)
            except Exception as e:
                self.handler_errors.append(e)
                continue
            ready = mask is not None and bool(mask & select.POLLIN)
            woken, f.wakeups = wakeups != f.wakeups, wakeups
            if ready and (woken or not f.ready):
                try:
                    os.write(f.backing, b"\0")
                except BlockingIOError:  # full (64 KiB of wakeups unread): room, then
                    os.read(f.backing, 4096)
                    os.write(f.backing, b"\0")
            elif f.ready and not ready:
                with contextlib.suppress(BlockingIOError):
                    while os.read(f.backing, 65536):
                        pass
            f.ready = ready

    def _free_slot(self, tid: int, low: int | None = None,
                   exclude: set[int] | frozenset[int] = frozenset()) -> int | None:
        base, top = self.window
        try:
            used = {int(n) for n in os.listdir(f"/proc/{tid}/fd")} | exclude
        except OSError:
            raise _Gone from None
        if low is None:  # from the top down, away from the kernel's lowest-first choice
            return next((n for n in range(top - 1, base - 1, -1) if n not in used), None)
        try:
            limit = resource.prlimit(self._tids.get(tid, tid), resource.RLIMIT_NOFILE)[0]
        except OSError:
            raise _Gone from None
        if low >= limit:
            raise OSError(errno.EINVAL, f"F_DUPFD from {low}, at or past RLIMIT_NOFILE")
        return next((n for n in range(max(low, 0), limit) if n not in used), None)

    def _install(self, nid: int, tid: int, src: int, *, cloexec: bool,
                 slot: int | None, send: bool = True) -> int:
        """SECCOMP_IOCTL_NOTIF_ADDFD, with SEND: ``src``'s description becomes the answer."""
        flags = (A.SECCOMP_ADDFD_FLAG_SEND if send else 0) | (
            A.SECCOMP_ADDFD_FLAG_SETFD if slot is not None else 0)
        req = bytearray(A.NOTIF_ADDFD.pack(nid, flags, src, slot or 0,
                                           os.O_CLOEXEC if cloexec else 0))
        try:
            fd = fcntl.ioctl(self._listener, A.SECCOMP_IOCTL_NOTIF_ADDFD, req, True)
        except OSError as e:
            if e.errno == errno.ENOENT:
                raise _Gone from None
            raise
        self.stats.installed += 1
        return int(fd)

    def _install_new(self, nid: int, tid: int, src: int, cloexec: bool) -> None:
        """Install a new file in the window; below it if the program's limit forbids."""
        slot = self._free_slot(tid)
        try:
            self._install(nid, tid, src, cloexec=cloexec, slot=slot)
        except OSError as e:
            if e.errno != errno.EBADF or slot is None:  # EBADF: slot past RLIMIT_NOFILE
                raise
            self._install(nid, tid, src, cloexec=cloexec, slot=None)
        raise _Answered

    # ------------------------------------------------------------- syscalls
    def _dispatch(self) -> dict[int, _Call]:
        return {
            A.NR_ioctl: self._sys_ioctl,
            A.NR_open: lambda n, t, g, a: self._sys_open(n, t, g, A.AT_FDCWD, a[0], a[1]),
            A.NR_creat: lambda n, t, g, a: self._sys_open(
                n, t, g, A.AT_FDCWD, a[0], os.O_CREAT | os.O_WRONLY | os.O_TRUNC),
            A.NR_openat: lambda n, t, g, a: self._sys_open(n, t, g, _int(a[0]), a[1], a[2]),
            A.NR_openat2: self._sys_openat2,
            A.NR_stat: lambda n, t, g, a: self._sys_stat(n, t, g, A.AT_FDCWD, a[0], a[1], 0,
                                                         False),
            A.NR_lstat: lambda n, t, g, a: self._sys_stat(
                n, t, g, A.AT_FDCWD, a[0], a[1], A.AT_SYMLINK_NOFOLLOW, False),
            A.NR_newfstatat: lambda n, t, g, a: self._sys_stat(n, t, g, _int(a[0]), a[1],
                                                               a[2], a[3], False),
            A.NR_statx: lambda n, t, g, a: self._sys_stat(n, t, g, _int(a[0]), a[1], a[4],
                                                          a[2], True),
            A.NR_fstat: self._sys_fstat,
            A.NR_access: lambda n, t, g, a: self._sys_access(n, t, g, A.AT_FDCWD, a[0], a[1],
                                                             0),
            A.NR_faccessat: lambda n, t, g, a: self._sys_access(n, t, g, _int(a[0]), a[1],
                                                                a[2], 0),
            A.NR_faccessat2: lambda n, t, g, a: self._sys_access(n, t, g, _int(a[0]), a[1],
                                                                 a[2], a[3]),
            A.NR_readlink: lambda n, t, g, a: self._sys_readlink(n, t, g, A.AT_FDCWD, a[0],
                                                                 a[1], a[2]),
            A.NR_readlinkat: lambda n, t, g, a: self._sys_readlink(n, t, g, _int(a[0]), a[1],
                                                                   a[2], a[3]),
            A.NR_getxattr: lambda n, t, g, a: self._sys_xattr(n, t, g, a[0], True, True),
            A.NR_lgetxattr: lambda n, t, g, a: self._sys_xattr(n, t, g, a[0], False, True),
            A.NR_listxattr: lambda n, t, g, a: self._sys_xattr(n, t, g, a[0], True, False),
            A.NR_llistxattr: lambda n, t, g, a: self._sys_xattr(n, t, g, a[0], False,
                                                               False),
            A.NR_mmap: self._sys_mmap,
            A.NR_read: lambda n, t, g, a: self._sys_rw(n, t, g, a[0], a[1], a[2], None, False),
            A.NR_write: lambda n, t, g, a: self._sys_rw(n, t, g, a[0], a[1], a[2], None, True),
            A.NR_pread64: lambda n, t, g, a: self._sys_rw(n, t, g, a[0], a[1], a[2],
                                                          _int64(a[3]), False),
            A.NR_pwrite64: lambda n, t, g, a: self._sys_rw(n, t, g, a[0], a[1], a[2],
                                                           _int64(a[3]), True),
            A.NR_readv: lambda n, t, g, a: self._sys_rwv(n, t, g, a[0], a[1], a[2], None,
                                                         False),
            A.NR_writev: lambda n, t, g, a: self._sys_rwv(n, t, g, a[0], a[1], a[2], None,
                                                          True),
            A.NR_preadv: lambda n, t, g, a: self._sys_rwv(n, t, g, a[0], a[1], a[2],
                                                          _int64(a[3]), False),
            A.NR_pwritev: lambda n, t, g, a: self._sys_rwv(n, t, g, a[0], a[1], a[2],
                                                           _int64(a[3]), True),
            A.NR_preadv2: lambda n, t, g, a: self._sys_rwv(n, t, g, a[0], a[1], a[2],
                                                           _pos2(a[3]), False),
            A.NR_pwritev2: lambda n, t, g, a: self._sys_rwv(n, t, g, a[0], a[1], a[2],
                                                            _pos2(a[3]), True),
            A.NR_dup: lambda n, t, g, a: self._sys_dup(n, t, g, a[0], None, 0),
            A.NR_getdents64: lambda n, t, g, a: self._sys_getdents(n, t, g, a, True),
            A.NR_getdents: lambda n, t, g, a: self._sys_getdents(n, t, g, a, False),
            A.NR_dup2: lambda n, t, g, a: self._sys_dup(n, t, g, a[0], a[1] & 0xFFFFFFFF, 0),
            A.NR_dup3: lambda n, t, g, a: self._sys_dup(n, t, g, a[0], a[1] & 0xFFFFFFFF,
                                                        a[2]),
            A.NR_fcntl: self._sys_fcntl,
            A.NR_close: self._sys_close,
            A.NR_ftruncate: lambda n, t, g, a: self._sys_chardev_only(n, t, a, errno.EINVAL),
            A.NR_fsync: lambda n, t, g, a: self._sys_chardev_only(n, t, a, errno.EINVAL),
            A.NR_fdatasync: lambda n, t, g, a: self._sys_chardev_only(n, t, a, errno.EINVAL),
            A.NR_fallocate: lambda n, t, g, a: self._sys_chardev_only(n, t, a, errno.ENODEV),
            A.NR_sendfile: lambda n, t, g, a: self._sys_splice(n, t, a[0], a[1]),
            A.NR_tee: lambda n, t, g, a: self._sys_splice(n, t, a[0], a[1]),
            A.NR_splice: lambda n, t, g, a: self._sys_splice(n, t, a[0], a[2]),
            A.NR_copy_file_range: lambda n, t, g, a: self._sys_splice(n, t, a[0], a[2],
                                                                      copy=True),
        }

    def _sys_ioctl(self, nid: int, tid: int, tgid: int, a: tuple[int, ...]) -> int | None:
        f = self._file_at(tid, a[0] & 0xFFFFFFFF)
        req = a[1] & 0xFFFFFFFF
        if f is None or req in _VFS_IOCTLS:
            return None
        if f.handle is _DIR_HANDLE:
            raise OSError(errno.ENOTTY, "a served directory has no ioctl")
        self._valid(nid)
        self._caller, self._pending, self._reserved = tid, [], set()
        try:
            ret = self.handler.ioctl(tgid, f.handle, req, a[2], TargetMemory(tid))
        except BaseException:
            self._release_pending(self._pending)
            self._pending = []
            raise
        finally:
            self._caller, self._reserved = 0, set()
        if self._pending:
            self._install_pending(nid, tid)
        return ret

    def _read_path(self, tid: int, addr: int) -> bytes | None:
        try:
            return TargetMemory(tid).read_string(addr)
        except OSError:
            return None  # the kernel's getname will say EFAULT/ENAMETOOLONG itself

    def _resolve(self, nid: int, tid: int, tgid: int, dirfd: int, addr: int,
                 follow: bool) -> Resolution | None:
        raw = self._read_path(tid, addr)
        if not raw:
            return None
        res = self._resolver.resolve(tid, tgid, dirfd, raw, follow=follow)
        self._valid(nid)
        return res

    def _sys_open(self, nid: int, tid: int, tgid: int, dirfd: int, addr: int,
                  flags: int) -> int | None:
        flags &= 0xFFFFFFFF
        res = self._resolve(nid, tid, tgid, dirfd, addr, not flags & os.O_NOFOLLOW)
        if res is None:
            return None
        if res.error:
            raise OSError(res.error, os.strerror(res.error))
        if res.reopen is not None:
            f = self._files.get(res.reopen)
            if f is None:
                return None
            path, node = f.path, f.node
        elif res.served is not None and res.node is not None:
            path, node = res.served, res.node
        else:
            if res.real is not None and self._is_protected(res.real):
                raise OSError(errno.EACCES, "a protected device")
            return None
        if flags & os.O_CREAT and flags & os.O_EXCL:
            raise OSError(errno.EEXIST, path)
        if flags & A.O_PATH:
            return None  # an O_PATH open calls no driver; the kernel answers (ENOENT)
        if node.is_link:  # reached only with O_NOFOLLOW (do_open: ELOOP)
            raise OSError(errno.ELOOP, f"{path} is a symbolic link")
        if node.is_dir:  # do_open: EISDIR for a write or a create
            if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_CREAT:
                raise OSError(errno.EISDIR, path)
            target = self._register(path, node, flags, _DIR_HANDLE)
        elif flags & os.O_DIRECTORY:
            raise OSError(errno.ENOTDIR, path)
        else:
            target = self._new_file(tgid, path, node, flags)
        try:
            self._install_new(nid, tid, target, bool(flags & os.O_CLOEXEC))
        finally:
            os.close(target)  # if the install failed, this is the release
        return None  # not reached: _install_new raises _Answered

    def _sys_openat2(self, nid: int, tid: int, tgid: int, a: tuple[int, ...]) -> int | None:
        try:
            how = TargetMemory(tid).read(a[2], 24)
        except OSError:
            return None
        flags, _mode, resolve = (int.from_bytes(how[i:i + 8], "little") for i in (0, 8, 16))
        if resolve & (A.RESOLVE_BENEATH | A.RESOLVE_IN_ROOT | A.RESOLVE_NO_SYMLINKS
                      | A.RESOLVE_NO_MAGICLINKS | A.RESOLVE_NO_XDEV):
            return None  # restricted walks: the kernel's own answer (never the model)
        return self._sys_open(nid, tid, tgid, _int(a[0]), a[1], flags)

    def _node_stat(self, path: str, node: Node, statx: bool) -> bytes:
        ino = self._inos.setdefault(path, 0x1000 + len(self._inos))
        pack = pack_statx if statx else pack_stat
        return pack(node.mode, node.rdev, node.size, self._dev, ino, self._epoch)

    def _sys_stat(self, nid: int, tid: int, tgid: int, dirfd: int, addr: int, buf: int,
                  flags: int, statx: bool) -> int | None:
        raw = self._read_path(tid, addr)
        if raw is None:
            return None
        if not raw:
            if not flags & A.AT_EMPTY_PATH or dirfd == A.AT_FDCWD:
                return None
            f = self._file_at(tid, dirfd & 0xFFFFFFFF)
            if f is None:
                return None
            self._valid(nid)
            path, node = f.path, f.node
        else:
            res = self._resolver.resolve(tid, tgid, dirfd, raw,
                                         follow=not flags & A.AT_SYMLINK_NOFOLLOW)
            self._valid(nid)
            if res.error:
                raise OSError(res.error, os.strerror(res.error))
            key = res.reopen
            if key is not None and key in self._files:
                path, node = self._files[key].path, self._files[key].node
            elif res.served is not None and res.node is not None:
                path, node = res.served, res.node
            else:
                return None
        TargetMemory(tid).write(buf, self._node_stat(path, node, statx))
        return 0

    def _sys_fstat(self, nid: int, tid: int, tgid: int, a: tuple[int, ...]) -> int | None:
        f = self._file_at(tid, a[0] & 0xFFFFFFFF)
        if f is None:
            return None
        self._valid(nid)
        TargetMemory(tid).write(a[1], self._node_stat(f.path, f.node, False))
        return 0

    def _sys_access(self, nid: int, tid: int, tgid: int, dirfd: int, addr: int, mode: int,
                    flags: int) -> int | None:
        res = self._resolve(nid, tid, tgid, dirfd, addr,
                            not flags & A.AT_SYMLINK_NOFOLLOW)
        if res is None:
            return None
        if res.error:
            raise OSError(res.error, os.strerror(res.error))
        node = res.node if res.served is not None else (
            self._files[res.reopen].node if res.reopen in self._files else None)
        if node is None:
            return None
        if mode & os.X_OK and not node.mode & 0o111:
            raise OSError(errno.EACCES, "not executable")
        return 0

    def _sys_readlink(self, nid: int, tid: int, tgid: int, dirfd: int, addr: int, buf: int,
                      size: int) -> int | None:
        res = self._resolve(nid, tid, tgid, dirfd, addr, False)
        if res is None:
            return None
        if res.error:
            raise OSError(res.error, os.strerror(res.error))
        if res.served is not None:
            if res.node is None or not res.node.is_link:
                raise OSError(errno.EINVAL, "not a symlink")
            if _int(size) <= 0:
                raise OSError(errno.EINVAL, "bufsiz")
            target = os.fsencode(res.node.target)[:size]
            TargetMemory(tid).write(buf, target)
            return len(target)
        f = self._files.get(res.link_to) if res.link_to is not None else None
        if f is None:
            return None
        if _int(size) <= 0:
            raise OSError(errno.EINVAL, "bufsiz")
        data = os.fsencode(f.path)[:size]
        TargetMemory(tid).write(buf, data)
        return len(data)

    def _sys_xattr(self, nid: int, tid: int, tgid: int, addr: int, follow: bool,
                   get: bool) -> int | None:
        """``getxattr``/``listxattr`` of a served path: served nodes carry no extended
        attributes (ENODATA, an empty list), as devtmpfs and sysfs nodes without an LSM
        label or ACL."""
        res = self._resolve(nid, tid, tgid, A.AT_FDCWD, addr, follow)
        if res is None or (res.served is None and res.reopen not in self._files):
            if res is not None and res.error:
                raise OSError(res.error, os.strerror(res.error))
            return None
        if get:
            raise OSError(errno.ENODATA, "no such attribute")
        return 0

    def _sys_mmap(self, nid: int, tid: int, tgid: int, a: tuple[int, ...]) -> int | None:
        addr, length, prot, flags, fd, off = a
        if flags & A.MAP_ANONYMOUS:
            return None
        f = self._file_at(tid, fd & 0xFFFFFFFF)
        if f is None:
            return None
        self._valid(nid)
        if f.handle is _DIR_HANDLE:
            raise OSError(errno.ENODEV, "a directory has no mmap")
        ret = self.handler.mmap(tgid, f.handle, addr, length, prot & 0xFFFFFFFF,
                                flags & 0xFFFFFFFF, off)
        if isinstance(ret, Continue):
            return None
        raise TypeError(f"Handler.mmap must return CONTINUE or raise, not {ret!r}")

    def _file_pos(self, tid: int, fd: int) -> int:
        try:
            with open(f"/proc/{tid}/fdinfo/{fd}", "rb") as info:
                head = info.readline()
        except OSError:
            raise _Gone from None
        return int(head.split()[1])  # "pos:\t123"

    def _set_pos(self, tid: int, fd: int, pos: int) -> None:
        mine = A.pidfd_getfd(self._pidfd(tid), fd)
        try:
            os.lseek(mine, pos, os.SEEK_SET)
        finally:
            os.close(mine)

    def _sys_rw(self, nid: int, tid: int, tgid: int, fd: int, buf: int, count: int,
                pos: int | None, write: bool) -> int | None:
        fd &= 0xFFFFFFFF
        f = self._file_at(tid, fd)
        if f is None:
            return None
        _check_rw(f, write)
        if pos is not None and pos < 0:
            raise OSError(errno.EINVAL, "negative offset")
        stream = self.handler.stream(f.handle)
        if stream and pos is not None:
            raise OSError(errno.ESPIPE, f"{f.path}: no positional reads or writes")
        at = 0 if stream else self._file_pos(tid, fd) if pos is None else pos
        self._valid(nid)
        mem = TargetMemory(tid)
        op = self.handler.write if write else self.handler.read
        done = op(tgid, f.handle, buf, min(count, 0x7FFFF000), at, mem)  # MAX_RW_COUNT
        if isinstance(done, Continue):
            return None
        if pos is None and done > 0 and not stream:
            self._set_pos(tid, fd, at + done)
        return done

    def _sys_rwv(self, nid: int, tid: int, tgid: int, fd: int, iov: int, cnt: int,
                 pos: int | None, write: bool) -> int | None:
        fd &= 0xFFFFFFFF
        f = self._file_at(tid, fd)
        if f is None:
            return None
        _check_rw(f, write)
        if cnt > _UIO_MAXIOV:
            raise OSError(errno.EINVAL, f"{cnt} iovecs")
        if pos is not None and pos < 0:
            raise OSError(errno.EINVAL, "negative offset")
        stream = self.handler.stream(f.handle)
        if stream and pos is not None:
            raise OSError(errno.ESPIPE, f"{f.path}: no positional reads or writes")
        mem = TargetMemory(tid)
        vec = mem.read(iov, cnt * _IOV)
        at = 0 if stream else self._file_pos(tid, fd) if pos is None else pos
        self._valid(nid)
        op = self.handler.write if write else self.handler.read
        total = 0
        for i in range(cnt):  # do_loop_readv_writev: one ->read per segment
            base = int.from_bytes(vec[i * _IOV:i * _IOV + 8], "little")
            ln = int.from_bytes(vec[i * _IOV + 8:i * _IOV + 16], "little")
            if not ln:
                continue
            try:
                done = op(tgid, f.handle, base, ln, at if stream else at + total, mem)
            except OSError:
                if total:
                    break
                raise
            if isinstance(done, Continue):
                if total:
                    break
                return None
            total += done
            if done < ln:
                break
        if pos is None and total > 0 and not stream:
            self._set_pos(tid, fd, at + total)
        return total

    def _sys_getdents(self, nid: int, tid: int, tgid: int, a: tuple[int, ...],
                      wide: bool) -> int | None:
        """``getdents64`` (``wide``) or ``getdents`` of a served directory: ``.``, ``..``
        and the handler's entries from the file position (an entry index, as
        ``dcache_readdir``'s), as many whole records as ``count`` holds; EINVAL when
        not even the next one does (``filldir``), ENOTDIR on a file."""
        fd = a[0] & 0xFFFFFFFF
        f = self._file_at(tid, fd)
        if f is None:
            return None
        if f.handle is not _DIR_HANDLE:
            raise OSError(errno.ENOTDIR, "getdents of a file")
        count = a[2] & 0xFFFFFFFF
        pos = self._file_pos(tid, fd)
        self._valid(nid)
        parent = os.path.dirname(f.path)
        entries = [(".", f.path, f.node), ("..", parent, Node(stat.S_IFDIR | 0o755))] + [
            (name, f"{f.path}/{name}", node) for name, node in self.handler.readdir(f.path)]
        out = bytearray()
        at = pos
        while at < len(entries):
            name, path, node = entries[at]
            ino = self._inos.setdefault(path, 0x1000 + len(self._inos))
            rec = _dirent(ino, at + 1, node.d_type, os.fsencode(name), wide)
            if len(out) + len(rec) > count:
                break
            out += rec
            at += 1
        if not out and at < len(entries):
            raise OSError(errno.EINVAL, "the buffer cannot hold the next entry")
        if out:
            TargetMemory(tid).write(a[1], bytes(out))
            self._set_pos(tid, fd, at)
        return len(out)

    def _sys_dup(self, nid: int, tid: int, tgid: int, old: int, new: int | None,
                 flags: int) -> int | None:
        old &= 0xFFFFFFFF
        if old == new or flags & ~os.O_CLOEXEC:
            return None  # the kernel's EINVAL (dup3) or no-op (dup2)
        if self._file_at(tid, old) is None:
            return None  # not ours: the kernel closes an fd of ours at ``new`` itself
        self._valid(nid)
        mine = A.pidfd_getfd(self._pidfd(tid), old)
        try:
            cloexec = bool(flags & os.O_CLOEXEC)
            if new is None:
                self._install_new(nid, tid, mine, cloexec)
            self._install(nid, tid, mine, cloexec=cloexec, slot=new)
            raise _Answered
        finally:
            os.close(mine)

    def _sys_fcntl(self, nid: int, tid: int, tgid: int, a: tuple[int, ...]) -> int | None:
        old = a[0] & 0xFFFFFFFF
        cmd = a[1] & 0xFFFFFFFF
        if cmd not in (A.F_DUPFD, A.F_DUPFD_CLOEXEC) or self._file_at(tid, old) is None:
            return None
        low = _int(a[2])
        if low < 0:
            raise OSError(errno.EINVAL, "F_DUPFD with a negative fd")
        self._valid(nid)
        base, _top = self.window
        slot = self._free_slot(tid, max(low, base))
        if slot is None:
            raise OSError(errno.EMFILE, "no free fd")
        mine = A.pidfd_getfd(self._pidfd(tid), old)
        try:
            self._install(nid, tid, mine, cloexec=cmd == A.F_DUPFD_CLOEXEC,
                          slot=slot)
            raise _Answered
        finally:
            os.close(mine)

    def _sys_chardev_only(self, nid: int, tid: int, a: tuple[int, ...], err: int) -> None:
        f = self._file_at(tid, a[0] & 0xFFFFFFFF)
        if f is None or not stat.S_ISCHR(f.node.mode):
            return None
        raise OSError(err, os.strerror(err))

    def _sys_splice(self, nid: int, tid: int, fd_in: int, fd_out: int,
                    copy: bool = False) -> None:
        """A device file has no splice (EINVAL). A served regular file (sysfs) is not
        spliced either (lab: the backing is empty): EXDEV for ``copy_file_range`` (as
        between two filesystems without the op), EINVAL for the others, so that a
        program falls back to read and write."""
        for fd in (fd_in, fd_out):
            f = self._file_at(tid, fd & 0xFFFFFFFF)
            if f is None:
                continue
            if stat.S_ISCHR(f.node.mode):
                raise OSError(errno.EINVAL, "no splice on a device file")
            raise OSError(errno.EXDEV if copy else errno.EINVAL, "no splice of a served file")
        return None

    def _sys_close(self, nid: int, tid: int, tgid: int, a: tuple[int, ...]) -> None:
        """Note the closing thread of a file of ours, then let the kernel close it: if
        that was the last reference, the release (inotify) is that thread's."""
        f = self._file_at(tid, a[0] & 0xFFFFFFFF)
        if f is not None:
            st = os.fstat(f.backing)
            self._closers[(st.st_dev, st.st_ino)] = tid
        return None

    # ----------------------------------------------------------------- fence
    def _protected_devices(self) -> frozenset[int]:
        """Device numbers of the protected char devices that exist now."""
        out = set()
        for p in self.protect:
            for root, _dirs, names in os.walk(p) if os.path.isdir(p) else [("", [], [p])]:
                for n in names:
                    try:
                        st = os.stat(os.path.join(root, n))
                    except OSError:
                        continue
                    if stat.S_ISCHR(st.st_mode):
                        out.add(st.st_rdev)
        return frozenset(out)

    def _is_protected(self, st: os.stat_result) -> bool:
        return stat.S_ISCHR(st.st_mode) and st.st_rdev in self._protected


def _check_rw(f: _File, write: bool) -> None:
    """``vfs_read``/``vfs_write``'s first checks: EBADF without the access mode, and a
    directory has no ``read`` (``generic_read_dir``: EISDIR)."""
    acc = f.flags & os.O_ACCMODE
    if acc != os.O_RDWR and acc != (os.O_WRONLY if write else os.O_RDONLY):
        raise OSError(errno.EBADF, f"{f.path}: not open for that")
    if f.node.is_dir and not write:
        raise OSError(errno.EISDIR, f.path)


def _status(pid: int) -> tuple[int, int, bool]:
    """(Tgid, PPid, under a seccomp filter) from ``/proc/PID/status``."""
    tgid = ppid = 0
    filtered = False
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"Tgid:"):
                tgid = int(line.split()[1])
            elif line.startswith(b"PPid:"):
                ppid = int(line.split()[1])
            elif line.startswith(b"Seccomp:"):
                filtered = line.split()[1] == b"2"
    return tgid, ppid, filtered


def _dirent(ino: int, off: int, dtype: int, name: bytes, wide: bool) -> bytes:
    """One ``linux_dirent64`` (``wide``) or ``linux_dirent`` record, 8-byte aligned:
    inode, offset of the next, length, type (last byte of the old form), name, NUL."""
    head = 19 if wide else 18
    reclen = (head + len(name) + (1 if wide else 2) + 7) & ~7
    rec = bytearray(reclen)
    rec[0:16] = ino.to_bytes(8, "little") + off.to_bytes(8, "little")
    rec[16:18] = reclen.to_bytes(2, "little")
    if wide:
        rec[18] = dtype
    else:
        rec[reclen - 1] = dtype
    rec[head:head + len(name)] = name
    return bytes(rec)


def _int(v: int) -> int:
    """A 32-bit signed argument (an ``int`` fd, AT_FDCWD)."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def _int64(v: int) -> int:
    return v - (1 << 64) if v & (1 << 63) else v


def _pos2(v: int) -> int | None:
    """preadv2/pwritev2: offset -1 means the file position."""
    p = _int64(v)
    return None if p == -1 else p


if sys.platform != "linux":  # pragma: no cover
    raise ImportError("the bridge needs Linux")
