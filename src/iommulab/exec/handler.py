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
"""

from __future__ import annotations

import contextlib
import os
import resource
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..bridge.handler import Backing, Handler, Node
from ..bridge.memory import TargetMemory
from ..errors import kernel_error
from ..syscall.devtable import DEVICE_FILES
from ..syscall.file import File, fput
from ..syscall.process import Process
from ..vfio.device import VfioDeviceFile
from .argmarshal import marshal
from .report import ExecLog
from .usermem import SharedFiles, TargetMm

if TYPE_CHECKING:
    from ..bridge.supervisor import Bridge
    from ..syscall.host import Host

__all__ = ["ExecProcess", "ForeignFile", "ModelFile", "ModelHandler"]

_ANON = Node(0o600)  # an anon_inode file: no type bits
_CAP_IPC_LOCK = 14


@dataclass(eq=False)
class ModelFile:
    """The bridge's handle of one file description: the model file behind it."""

    file: File
    path: str


class ForeignFile(File):
    """A file of the program the model does not serve (a pipe, a real file): what
    ``fdget`` finds at an fd number the program passes that is open but not ours."""


class ExecProcess(Process):
    """A real process as the model sees it: its ``mm`` is the program's memory
    (:class:`~.usermem.TargetMm`), its files are the program's fd table, and its
    RLIMIT_MEMLOCK, CAP_IPC_LOCK and uid are the program's at the time of the call
    (read when the model first asks during a call: the kernel reads them at each call,
    so a child that lowered its limit or dropped the capability is charged by the new
    ones)."""

    def __init__(self, handler: ModelHandler, pid: int) -> None:
        self.pid = pid
        self.tid = pid  # the thread of the call being answered
        self._handler = handler
        self._creds: tuple[int | None, bool, int] | None = None
        self._last_creds: tuple[int | None, bool, int] = (None, False, 0)
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

    def _now(self) -> tuple[int | None, bool, int]:
        if self._creds is None:
            try:
                uid, caps = _creds(self.pid)
                self._creds = (_memlock(self.pid), bool(caps >> _CAP_IPC_LOCK & 1), uid)
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

    def fget(self, fd: int) -> File | None:
        """``fdget`` in the program's own fd table."""
        bridge = self._handler.bridge
        if bridge is None or fd < 0:
            return None
        handle = bridge.handle_at(self.tid, fd)
        if isinstance(handle, ModelFile):
            return handle.file
        return ForeignFile() if bridge.fd_is_open(self.tid, fd) else None

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
        name = f"anon_inode:[{type(f).__name__}]"
        return bridge.install_at(self.tid, fd, name, _ANON, ModelFile(f, name))


def _memlock(pid: int) -> int | None:
    soft = resource.prlimit(pid, resource.RLIMIT_MEMLOCK)[0]
    return None if soft == resource.RLIM_INFINITY else soft


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

    # -- the tree of served paths ------------------------------------------------------------------
    def lookup(self, path: str) -> Node | None:
        """The node the device-file table shows at ``path`` (:data:`~iommulab.syscall.
        DEVICE_FILES`, where the front ends registered their paths)."""
        node = DEVICE_FILES.lookup(self.machine, path)
        if node is None:
            return None
        if node.is_dir:
            return Node(node.mode)
        return Node(node.mode, os.makedev(node.major, node.minor))

    # -- processes ---------------------------------------------------------------------------------
    def fork(self, parent: int | None, child: int) -> None:
        """A new model process for ``child``: the real fork already copied the memory and
        the fd table (the files are shared descriptions, one model file each)."""
        with contextlib.suppress(OSError):  # gone before we could read it: no exit either
            self.procs[child] = ExecProcess(self, child)

    def exit(self, pid: int) -> None:
        """``exit_mm``: the mirror goes; the files go with their releases."""
        proc = self.procs.pop(pid, None)
        if proc is not None:
            proc.target_mm.close()

    def _proc(self, pid: int, tid: int) -> ExecProcess:
        proc = self.procs.get(pid)
        if proc is None:
            proc = self.procs[pid] = ExecProcess(self, pid)
        proc.tid = tid
        return proc

    # -- files -------------------------------------------------------------------------------------
    def open(self, pid: int, path: str, flags: int, backing: Backing) -> object:
        proc = self._proc(pid, pid)
        return ModelFile(proc.open_file(path), path)

    def release(self, handle: object) -> None:
        assert isinstance(handle, ModelFile)
        fput(handle.file)

    def ioctl(self, pid: int, handle: object, request: int, arg: int,
              mem: TargetMemory) -> int:
        assert isinstance(handle, ModelFile)
        self.ioctls += 1
        proc = self._proc(pid, mem.tid)
        proc.new_call(mem.tid)
        if self.log is None:
            return handle.file.ioctl(proc, request, marshal(request, arg, mem))
        device = isinstance(handle.file, VfioDeviceFile)
        try:
            ret = handle.file.ioctl(proc, request, marshal(request, arg, mem))
        except OSError as e:
            self.log.record(pid, request, e.errno or 0, device=device)
            raise
        self.log.record(pid, request, 0, device=device)
        return ret

    def close(self) -> None:
        """After the run: the model files of shared mappings go."""
        for pid in list(self.procs):
            self.exit(pid)
        self.shared.close()

