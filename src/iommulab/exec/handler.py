"""The model behind the bridge: one :class:`~iommulab.machine.Machine` answers a real
program tree's calls on ``/dev/iommu``, ``/dev/vfio/vfio``, ``/dev/vfio/N`` and
``/dev/vfio/devices/vfioN`` (lab: ``iommulab exec``).

Each real process is a model :class:`ExecProcess` (created at the bridge's ``fork``,
its address space torn down at ``exit``) whose ``mm`` is the program's own memory
(:mod:`.usermem`). Each file description the program holds on a served path is one
model file (the bridge's handle is a :class:`ModelFile`); its ``release`` is the
model's last ``fput``. File descriptors the model reads from ioctl arguments are the
program's own numbers, looked up through the bridge (``fdget``); files the model hands
out (``get_unused_fd`` + ``fd_install``: device fds, selftest accesses) are installed
into the program.

A model file with a ``poll`` of its own (an iommufd event queue: a 6.12 fault queue, a
7.0 vEVENTQ) answers :meth:`ModelHandler.poll`, so the bridge backs its fd with a FIFO
it keeps readable while the model's ``poll`` has EPOLLIN (see
:mod:`iommulab.bridge.supervisor`): the program's own ``poll``, ``select`` and
``epoll`` run natively, as on its eventfds (:mod:`.realeventfd`), while its ``read``
and ``write`` of the fd stay the model's.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..bridge.handler import CONTINUE, Backing, Continue, Handler, Node
from ..bridge.memory import TargetMemory
from ..errors import kernel_error
from ..iommufd.eventq import EventqFile
from ..syscall.devtable import DEVICE_FILES
from ..syscall.file import File, fput
from ..syscall.process import Process
from ..vfio.cdev import cdev_devices
from ..vfio.device import VfioDeviceFile
from .argmarshal import marshal
from .barmap import BarMaps
from .devrw import eventq_rw, read_file, write_file
from .faultinject import (
    FAIL_NTH_NODE,
    DebugfsFile,
    FailNthFile,
    FaultKnobs,
    fail_nth_target,
)
from .realeventfd import RealEventFdCtx, RealEventFdFile, eventfd_id
from .report import ExecLog
from .sysfs import sysfs_lookup, sysfs_open, sysfs_readdir
from .usermem import SharedFiles, TargetMm

if TYPE_CHECKING:
    from ..bridge.supervisor import Bridge
    from ..syscall.host import Host

__all__ = ["ExecProcess", "ForeignFile", "ModelFile", "ModelHandler"]

_ANON = Node(0o600)  # an anon_inode file: no type bits
_CAP_IPC_LOCK = 14
_CAP_SYS_RESOURCE = 24


#: RLIMIT_MEMLOCK (None: unlimited), CAP_IPC_LOCK, real uid, CAP_SYS_RESOURCE
_Creds = tuple[int | None, bool, int, bool]


@dataclass(eq=False)
class ModelFile:
    """The bridge's handle of one file description: the model file behind it."""

    file: File
    path: str
    flags: int = os.O_RDWR  # the open's flags (FMODE_READ, FMODE_WRITE)


class ForeignFile(File):
    """A file of the program the model does not serve (a pipe, a real file): what
    ``fdget`` finds at an fd number the program passes that is open but not ours."""


class ExecProcess(Process):
    """A real process as the model sees it: its ``mm`` is the program's memory
    (:class:`~.usermem.TargetMm`), its files are the program's fd table, and its
    RLIMIT_MEMLOCK, CAP_IPC_LOCK, CAP_SYS_RESOURCE and uid are the program's at the
    time of the call
    (read when the model first asks during a call: the kernel reads them at each call,
    so a child that lowered its limit or dropped the capability is charged by the new
    ones)."""

    def __init__(self, handler: ModelHandler, pid: int) -> None:
        self.pid = pid
        self.tid = pid  # the thread of the call being answered
        self._handler = handler
        self._creds: _Creds | None = None
        self._last_creds: _Creds = (None, False, 0, False)
        super().__init__(handler.machine, None, False, 0)

    def __post_init__(self) -> None:
        self.target_mm = TargetMm(self.machine.mem, self.machine.kernel, self.pid,
                                  self._handler.shared, skip_prefix=self._handler.backing_dir)
        self.mm = self.target_mm

    def new_call(self, tid: int) -> None:
        """A trapped call of thread ``tid`` begins: the mirror and credentials are stale."""
        self.tid = tid
        self.target_mm.stale = True
        self._creds = None

    def _now(self) -> _Creds:
        if self._creds is None:
            try:
                uid, caps = _creds(self.pid)
                self._creds = (_memlock(self.pid), bool(caps >> _CAP_IPC_LOCK & 1), uid,
                               bool(caps >> _CAP_SYS_RESOURCE & 1))
            except OSError:  # gone meanwhile: what was last known
                return self._last_creds
            self._last_creds = self._creds
        return self._creds

    @property
    def memlock_limit(self) -> int | None:
        return self._now()[0]

    @memlock_limit.setter
    def memlock_limit(self, value: int | None) -> None:
        """Set by ``Process.__init__`` only; the program's own limit is what counts."""

    @property
    def cap_ipc_lock(self) -> bool:
        return self._now()[1]

    @cap_ipc_lock.setter
    def cap_ipc_lock(self, value: bool) -> None:
        """Set by ``Process.__init__`` only."""

    @property
    def uid(self) -> int:
        return self._now()[2]

    @uid.setter
    def uid(self, value: int) -> None:
        """Set by ``Process.__init__`` only."""

    @property
    def cap_sys_resource(self) -> bool:
        """``capable(CAP_SYS_RESOURCE)`` (IOMMU_OPTION_RLIMIT_MODE's set)."""
        return self._now()[3]

    @cap_sys_resource.setter
    def cap_sys_resource(self, value: bool) -> None:
        """Set by ``Process.__init__`` only."""

    def fget(self, fd: int) -> File | None:
        """``fdget`` in the program's own fd table."""
        bridge = self._handler.bridge
        if bridge is None or fd < 0:
            return None
        handle = bridge.handle_at(self.tid, fd)
        if isinstance(handle, ModelFile):
            return handle.file
        if not bridge.fd_is_open(self.tid, fd):
            return None
        real = self._handler.real_eventfd(self.tid, fd)
        return real if real is not None else ForeignFile()

    def get_unused_fd(self) -> int:
        """``get_unused_fd_flags(O_CLOEXEC)`` in the program: a number reserved in the
        bridge's fd window (EMFILE when it is full)."""
        bridge = self._handler.bridge
        if bridge is None:
            raise kernel_error(24, "no program to install a file into")  # EMFILE
        return bridge.reserve_fd(self.tid)

    def fd_install(self, fd: int, f: File) -> int:
        """``fd_install`` in the program, done by the bridge once the call succeeds."""
        bridge = self._handler.bridge
        assert bridge is not None, "get_unused_fd reserved the number"
        name = f"anon_inode:{getattr(f, 'anon_name', f'[{type(f).__name__}]')}"
        return bridge.install_at(self.tid, fd, name, _ANON, ModelFile(f, name))


def _memlock(pid: int) -> int | None:
    soft = resource.prlimit(pid, resource.RLIMIT_MEMLOCK)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def _status_field(pid: int, name: bytes) -> int | None:
    """The number after ``name`` (``b"PPid:"``, ``b"Tgid:"``) in ``/proc/PID/status``;
    None when the process is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(name):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _ppid(pid: int) -> int:
    """The parent of ``pid`` (0 when it is gone)."""
    return _status_field(pid, b"PPid:") or 0


def _creds(pid: int) -> tuple[int, int]:
    """(real uid, CapEff) of ``pid``."""
    with open(f"/proc/{pid}/status", "rb") as f:
        text = f.read()
    at = text.find(b"\nUid:")
    cap = text.find(b"\nCapEff:")
    if at < 0 or cap < 0:
        raise OSError(f"/proc/{pid}/status has no Uid or CapEff")
    return int(text[at + 5:text.index(b"\n", at + 1)].split()[0]), \
        int(text[cap + 8:text.index(b"\n", cap + 1)].strip(), 16)


class ModelHandler(Handler):
    """Serves a :class:`Machine`'s device paths to a program tree under a bridge.

    Set :attr:`bridge` before the program runs (``run_exec`` does): it is how the
    model reads the program's fd numbers and installs files into it.
    """

    def __init__(self, machine: Host, *, backing_dir: str = "",
                 log: ExecLog | None = None) -> None:
        self.machine = machine
        self.log = log  # told of every model ioctl, for the report
        self.bridge: Bridge | None = None
        self.backing_dir = backing_dir
        self.shared = SharedFiles(machine.mem)
        self.procs: dict[int, ExecProcess] = {}
        self.ioctls = 0
        #: each thread's ``fail_nth`` (tid -> counter; absent: 0), and its process
        self.fail_nth: dict[int, int] = {}
        self._task_pid: dict[int, int] = {}
        #: every write to a fail-nth file that set a counter: (pid, tid, value)
        self.fail_nth_writes: list[tuple[int, int, int]] = []
        self.knobs = FaultKnobs(machine.mem.fail_nth.iommufd_test)
        #: the program's eventfds the model holds, by eventfd-id (:mod:`.realeventfd`)
        self.eventfds: dict[int, RealEventFdCtx] = {}
        #: the BARs a program has mapped, their bytes in the backing inode (:mod:`.barmap`)
        self.bars = BarMaps(machine.mem, self.shared)
        #: devices whose BAR 0 is registers: not mmap-able for the run (see :meth:`mmap`)
        self._register_bars = [d for d in machine.devices.values()
                               if d.bar0_mmap and machine.mem.has_mmio_ops(d.bar0)]
        for dev in self._register_bars:
            dev.bar0_mmap = False

    # -- the tree of served paths ------------------------------------------------------------------
    def lookup(self, path: str) -> Node | None:
        """The fail-nth and debugfs stand-ins, the sysfs files, then the node the
        device-file table shows at ``path`` (:data:`~iommulab.syscall.devtable.
        DEVICE_FILES`, where the front ends registered their paths)."""
        m = self.machine
        task = fail_nth_target(path)
        if task is not None:
            return FAIL_NTH_NODE if self._our_task(*task) else None
        knob = self.knobs.lookup(path)
        if knob is not None:
            return knob
        if m.pseries is not None:
            return None
        if path.startswith("/sys/"):
            return sysfs_lookup(m, path)
        node = DEVICE_FILES.lookup(m, path)
        if node is None:
            return None
        if node.is_dir:
            return Node(node.mode)
        return Node(node.mode, os.makedev(node.major, node.minor))

    def readdir(self, path: str) -> list[tuple[str, Node]]:
        """The entries of a served directory: ``/dev/vfio`` (``vfio``, the groups,
        ``devices``), ``/dev/vfio/devices`` (the cdevs), the debugfs stand-in's and the
        sysfs directories."""
        if path.startswith("/sys/kernel/debug"):
            return self.knobs.readdir(path)
        if path.startswith("/sys/"):
            return sysfs_readdir(self.machine, path)
        if path == "/dev/vfio/devices":
            names = [f"vfio{n}" for n in range(len(cdev_devices(self.machine)))]
        else:
            groups = sorted({d.iommu_group for d in self.machine.devices.values()
                             if d.driver == "vfio-pci" and d.iommu_group is not None})
            names = ["devices", *(str(g) for g in groups), "vfio"]
        out = []
        for name in names:
            node = self.lookup(f"{path}/{name}")
            if node is not None:
                out.append((name, node))
        return out

    # -- processes ---------------------------------------------------------------------------------
    def fork(self, parent: int | None, child: int) -> None:
        """A new model process for ``child``: the real fork already copied the memory and
        the fd table (the files are shared descriptions, one model file each)."""
        with contextlib.suppress(OSError):  # gone before we could read it: no exit either
            self.procs[child] = ExecProcess(self, child)

    def exit(self, pid: int) -> None:
        """``exit_mm``: the mirror goes; the files go with their releases. Its threads'
        fail-nth counters go too (a new task starts at 0: ``dup_task_struct``)."""
        proc = self.procs.pop(pid, None)
        if proc is not None:
            proc.target_mm.close()
        for tid in [t for t, p in self._task_pid.items() if p == pid]:
            del self._task_pid[tid]
            self.fail_nth.pop(tid, None)

    def thread_exit(self, tid: int) -> None:
        """A thread's ``fail_nth`` goes with it (a later task with its number starts at
        0)."""
        self._task_pid.pop(tid, None)
        self.fail_nth.pop(tid, None)

    def _our_task(self, pid: int, tid: int) -> bool:
        """Whether thread ``tid`` of process ``pid`` is one of the program tree's: a
        process the bridge has met, or one forked from such a process that has not made
        a trapped call yet (its parents read from ``/proc/PID/status``)."""
        if not os.path.isdir(f"/proc/{pid}/task/{tid}"):
            return False
        p = pid
        for _ in range(64):
            if p in self.procs:
                return True
            p = _ppid(p)
            if p <= 1:
                return False
        return False

    @contextlib.contextmanager
    def _current(self, pid: int, tid: int) -> Iterator[None]:
        """The model's kernel runs as thread ``tid``: its ``fail_nth`` is the model's
        counter for the call, what is left of it kept afterwards; between calls (the
        bridge's own work, mirror upkeep at fork and exit, releases) nothing is armed."""
        fail = self.machine.mem.fail_nth
        fail.load(self.fail_nth.get(tid, 0))
        try:
            yield
        finally:
            left = fail.remaining
            fail.load(0)
            if left or tid in self.fail_nth:
                self.fail_nth[tid] = left
                self._task_pid[tid] = pid

    def _tid(self, pid: int) -> int:
        return (self.bridge.current_tid if self.bridge is not None else 0) or pid

    def _proc(self, pid: int, tid: int) -> ExecProcess:
        proc = self.procs.get(pid)
        if proc is None:
            proc = self.procs[pid] = ExecProcess(self, pid)
        proc.tid = tid
        return proc

    # -- files -------------------------------------------------------------------------------------
    def open(self, pid: int, path: str, flags: int, backing: Backing) -> object:
        """``do_sys_openat2`` past the bridge: the path's copy and the file
        (``getname``, ``alloc_empty_file``: allocation points, as ``Process.open``
        counts them) then the file's own ``open``: a device's, a sysfs file's, or a
        fail-nth or debugfs stand-in's (the bridge opens served directories itself)."""
        tid = self._tid(pid)
        proc = self._proc(pid, tid)  # (made at fork; here only if that read failed)
        with self._current(pid, tid):
            fail = self.machine.mem.fail_nth
            fail.check("getname(do_sys_openat2)")
            fail.check("alloc_empty_file(path_openat)")
            task = fail_nth_target(path)
            if task is not None:
                return FailNthFile(task[1], self.fail_nth)
            if path.startswith("/sys/kernel/debug/"):
                d, _, knob = path.removeprefix("/sys/kernel/debug/").partition("/")
                return DebugfsFile(self.knobs, d, knob)
            if path.startswith("/sys/"):
                return ModelFile(sysfs_open(self.machine, path, flags, proc.uid), path,
                                 flags)
            return ModelFile(proc.open_file(path), path, flags)

    def release(self, handle: object) -> None:
        """The last ``fput``: a model file's ``release``, its points counted against the
        thread whose ``close`` freed it (``____fput`` runs as task work of the closing
        task), or no thread's when the bridge saw no such close (exit, munmap)."""
        if not isinstance(handle, ModelFile):
            return
        self.bars.release(handle)  # before vfio-pci's close: the mapping is gone
        tid = self.bridge.current_tid if self.bridge is not None else 0
        if not tid:
            fput(handle.file)
            return
        with self._current(self._task_pid.get(tid, tid), tid):
            fput(handle.file)

    @staticmethod
    def _alive(tid: int) -> bool:
        return os.path.exists(f"/proc/{tid}/status")

    def _pid_of(self, tid: int, default: int) -> int:
        tgid = _status_field(tid, b"Tgid:")
        return default if tgid is None else tgid

    def _ioctl(self, pid: int, handle: object, request: int, arg: int,
               mem: TargetMemory) -> int:
        if not isinstance(handle, ModelFile):  # no unlocked_ioctl: vfs_ioctl's ENOTTY
            raise kernel_error(errno.ENOTTY, f"ioctl {request:#x} on a file with none")
        self.ioctls += 1
        proc = self._proc(pid, mem.tid)
        proc.new_call(mem.tid)
        if self.log is None:
            with self._current(pid, mem.tid):
                return handle.file.ioctl(proc, request, marshal(request, arg, mem))
        device = isinstance(handle.file, VfioDeviceFile)
        try:
            with self._current(pid, mem.tid):
                ret = handle.file.ioctl(proc, request, marshal(request, arg, mem))
        except OSError as e:
            self.log.record(pid, request, e.errno or 0, device=device)
            raise
        self.log.record(pid, request, 0, device=device)
        return ret

    def ioctl(self, pid: int, handle: object, request: int, arg: int,
              mem: TargetMemory) -> int:
        """``unlocked_ioctl`` of the model file; afterwards the program's eventfds that
        ``fdget`` found but no driver kept are let go (``fdput``)."""
        try:
            return self._ioctl(pid, handle, request, arg, mem)
        finally:
            for key, ctx in list(self.eventfds.items()):
                if ctx.kref == 1:
                    del self.eventfds[key]
                    os.close(ctx.fd)
                    ctx.fd = -1
                elif bool(ctx.waiters) != ctx.watched:
                    self._watch(ctx, bool(ctx.waiters))

    def _watch(self, ctx: RealEventFdCtx, on: bool) -> None:
        """Have the bridge poll ``ctx``'s real eventfd for its waiters, or stop."""
        assert self.bridge is not None
        ctx.watched = on
        if not on:
            self.bridge.unwatch(ctx.fd)
            return

        def wake() -> None:
            if not ctx.poll_wake() and ctx.watched:
                self._watch(ctx, False)
        self.bridge.watch(ctx.fd, wake)

    # -- the program's eventfds ------------------------------------------------------------
    def real_eventfd(self, tid: int, fd: int) -> RealEventFdFile | None:
        """``fdget`` of a program fd that is not the model's: its eventfd as a model
        eventfd (:mod:`.realeventfd`), or None for any other kind of file."""
        assert self.bridge is not None
        try:
            if os.readlink(f"/proc/{tid}/fd/{fd}") != "anon_inode:[eventfd]":
                return None
            mine = self.bridge.take_fd(tid, fd)
        except OSError:
            return None
        key = eventfd_id(mine)
        if key is None:
            os.close(mine)
            return None
        ctx = self.eventfds.get(key)
        if ctx is not None:
            os.close(mine)
        else:
            ctx = self.eventfds[key] = RealEventFdCtx(mine, self._eventfd_freed)
        return RealEventFdFile(ctx)

    def _eventfd_freed(self, ctx: RealEventFdCtx) -> None:
        """The model's last reference to ``ctx`` is going; it closes the real fd next."""
        if ctx.watched:
            self._watch(ctx, False)
        if self.log is not None:
            self.log.eventfd_signals += ctx.signals
        for key, held in list(self.eventfds.items()):
            if held is ctx:
                del self.eventfds[key]

    # -- read, write, mmap ----------------------------------------------------------------
    def read(self, pid: int, handle: object, buf: int, count: int, offset: int,
             mem: TargetMemory) -> int | Continue:
        """``vfs_read`` of the model file into the program's ``buf`` (:mod:`.devrw`), or
        of a fail-nth or debugfs stand-in."""
        if isinstance(handle, FailNthFile):
            return handle.read(mem, buf, count, offset, self._alive(handle.tid))
        if isinstance(handle, DebugfsFile):
            return handle.read(mem, buf, count, offset)
        assert isinstance(handle, ModelFile)
        return self._rw(pid, handle, buf, count, offset, mem, write=False)

    def write(self, pid: int, handle: object, buf: int, count: int, offset: int,
              mem: TargetMemory) -> int | Continue:
        """``vfs_write`` from the program's ``buf`` to the model file (:mod:`.devrw`), or
        to a fail-nth or debugfs stand-in."""
        if isinstance(handle, FailNthFile):
            done = handle.write(mem, buf, count, self._alive(handle.tid))
            self._task_pid.setdefault(handle.tid, self._pid_of(handle.tid, pid))
            self.fail_nth_writes.append((pid, handle.tid, self.fail_nth[handle.tid]))
            return done
        if isinstance(handle, DebugfsFile):
            return handle.write(mem, buf, count)
        assert isinstance(handle, ModelFile)
        try:
            return self._rw(pid, handle, buf, count, offset, mem, write=True)
        finally:
            if isinstance(handle.file, VfioDeviceFile):
                self._evtq_irq()

    def _evtq_irq(self) -> None:
        """The SMMU's event-queue interrupt after a device write (which may have run a
        DMA that faulted): ``arm_smmu_evtq_thread`` decodes the new records, reporting a
        nested device's to its vEVENTQ. Lab: the kernel's threaded IRQ runs soon after
        the fault; here it has run before the write returns, so the program's next
        ``read`` of a vEVENTQ or fault fd finds the event."""
        m = self.machine
        if m.platform == "arm64-smmuv3":
            m.driver.handle_events()

    def poll(self, handle: object) -> int | None:
        """``vfs_poll`` of a model file with a ``poll`` of its own (an iommufd event
        queue's: ``iommufd_fault_fops_poll``, 7.0's ``iommufd_eventq_fops_poll``), which
        the bridge mirrors into the program's fd; None for the others (always ready)."""
        if isinstance(handle, ModelFile) and type(handle.file).poll is not File.poll:
            return handle.file.poll()
        return None

    def wakeups(self, handle: object) -> int:
        """An event queue's wake-ups (a record queued: ``iommufd_fault_iopf_handler``,
        ``iommufd_vevent_handler``); 0 for the other files."""
        if isinstance(handle, ModelFile) and isinstance(handle.file, EventqFile):
            return handle.file.eventq.wakeups
        return 0

    def stream(self, handle: object) -> bool:
        """A model file without positional reads (an iommufd event queue's fd)."""
        return isinstance(handle, ModelFile) and not handle.file.positional

    def _rw(self, pid: int, handle: ModelFile, buf: int, count: int, offset: int,
            mem: TargetMemory, *, write: bool) -> int:
        """A model file's read or write (:mod:`.devrw`), a device's logged for the
        report with its outcome; an event queue's with the program's buffer."""
        proc = self._proc(pid, mem.tid)
        proc.new_call(mem.tid)
        if isinstance(handle.file, EventqFile):
            with self._current(pid, mem.tid):
                return eventq_rw(handle.file, buf, count, mem, write=write)
        rw = write_file if write else read_file
        if self.log is None or not isinstance(handle.file, VfioDeviceFile):
            return rw(handle.file, handle.flags, buf, count, offset, mem)
        try:
            done = rw(handle.file, handle.flags, buf, count, offset, mem)
        except OSError as e:
            self.log.record_rw(pid, offset, write, 0, e.errno or 0)
            raise
        self.log.record_rw(pid, offset, write, done, 0)
        return done

    def mmap(self, pid: int, handle: object, addr: int, length: int, prot: int,
             flags: int, offset: int) -> Continue:
        """The file's ``mmap``: ``do_mmap``'s checks, then a device fd asks vfio-pci
        (``vfio_device_fops_mmap``, ``vfio_pci_core_mmap``: EINVAL for MAP_PRIVATE, a
        region other than BAR 0, a BAR of registers, a range past the BAR). An accepted
        mapping is the backing inode, which holds the BAR's bytes from now until the
        description's release (:mod:`.barmap`); the kernel maps it (CONTINUE). The other
        files have no ``mmap`` (ENODEV)."""
        if not isinstance(handle, ModelFile):
            raise kernel_error(errno.ENODEV, "a fault-injection file has no mmap")
        kind = flags & 0x0F  # MAP_TYPE
        if offset & 0xFFF or not length or kind not in (1, 2, 3):
            raise kernel_error(errno.EINVAL, "mmap: offset, length or map type")  # do_mmap
        if kind != 2 and prot & 0x2 and handle.flags & os.O_ACCMODE == os.O_RDONLY:
            raise kernel_error(errno.EACCES, "mmap: a shared writable map of a read-only fd")
        if isinstance(handle.file, VfioDeviceFile):
            if kind == 2:  # vfio_pci_core_mmap: no VM_SHARED
                raise kernel_error(errno.EINVAL, "mmap of a device region wants MAP_SHARED")
            handle.file.mmap_region(length, offset)
            backing = self.bridge.backing_of(handle) if self.bridge is not None else None
            if backing is None:  # no program holds the file: nothing to map into
                raise kernel_error(errno.EBADF, f"mmap: {handle.path} is not open")
            self.bars.map(handle.file.dev, handle, backing)
            return CONTINUE
        raise kernel_error(errno.ENODEV, f"{handle.path} has no mmap")

    def close(self) -> None:
        """After the run: the model files of shared mappings go."""
        for pid in list(self.procs):
            self.exit(pid)
        self.shared.close()
        for ctx in self.eventfds.values():  # none once every device file is released
            if self.log is not None:
                self.log.eventfd_signals += ctx.signals
            os.close(ctx.fd)
            ctx.fd = -1
        self.eventfds.clear()
        self.bars.close()  # none once every device file is released
        for dev in self._register_bars:
            dev.bar0_mmap = True
        self._register_bars = []

