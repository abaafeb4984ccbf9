"""The fuzzer's world: a small machine, its processes, and the operations run on them.

An :class:`Op` is one concrete call (a process's ``open``/``mmap``/``ioctl``/... or a
device's DMA) with literal arguments, so a recorded sequence replays on a fresh
:class:`World` of the same :class:`WorldConfig` without the generator, and prints as a
Python reproducer (:func:`render`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...iommufd import uapi as iu
from ...machine import Machine, Process
from ...vfio import uapi as vu
from ...vfio.files import VfioFile

if TYPE_CHECKING:
    from ...devices import DmaDevice

__all__ = ["REQUEST_NAMES", "Op", "ProcSpec", "Skip", "World", "WorldConfig", "find_device",
           "render"]


def _request_names() -> dict[int, str]:
    """Every VFIO_* and IOMMU_* request number (type ';' in the high byte). A device fd's
    requests that reuse a container request's number keep the container's name."""
    device_aliases = {"VFIO_DEVICE_GET_PCI_HOT_RESET_INFO", "VFIO_DEVICE_PCI_HOT_RESET"}
    names: dict[int, str] = {}
    for mod, prefix in ((vu, "VFIO_"), (iu, "IOMMU_")):
        for k, v in vars(mod).items():
            if k.startswith(prefix) and isinstance(v, int) and v >> 8 == vu.VFIO_TYPE \
                    and k not in device_aliases:
                names.setdefault(v, k)
    return names


#: request number -> its uapi name (VFIO_* and IOMMU_*), for reports.
REQUEST_NAMES = _request_names()


@dataclass(frozen=True)
class ProcSpec:
    """How a process is spawned (:meth:`Machine.spawn_process`)."""

    memlock_limit: int | None = None
    cap_ipc_lock: bool = False
    uid: int = 1000
    cap_sys_resource: bool = False

    def kwargs(self) -> dict[str, Any]:
        return {"memlock_limit": self.memlock_limit, "cap_ipc_lock": self.cap_ipc_lock,
                "uid": self.uid, "cap_sys_resource": self.cap_sys_resource}


@dataclass(frozen=True)
class WorldConfig:
    """The machine a sequence runs on: ``devices`` vfio-pci devices, each in its own group
    (the first not snooping with ``nosnoop``, QEMU's edu with ``edu``), a scalable-mode
    VT-d unit that nests (x86-vtd, ``vtd_scalable``),
    CONFIG_IOMMUFD_VFIO_CONTAINER (``compat``), type1's module parameters, and the
    processes present at the start."""

    platform: str
    kernel: str = "6.12"
    ram: str = "256M"
    devices: int = 2
    compat: bool = False
    nosnoop: bool = False
    dma_entry_limit: int = 65535
    disable_hugepages: bool = False
    procs: tuple[ProcSpec, ...] = (ProcSpec(),)
    edu: bool = False
    vtd_scalable: bool = False

    def setup_lines(self) -> list[str]:
        """The Python that builds this world (the reproducer's first lines)."""
        sm = ", vtd_scalable=True" if self.vtd_scalable else ""
        out = [f"m = Machine({self.platform!r}, ram={self.ram!r}, kernel={self.kernel!r}{sm})"]
        if self.compat:
            out.append("m.kconfig['CONFIG_IOMMUFD_VFIO_CONTAINER'] = True")
        if self.dma_entry_limit != 65535:
            out.append(f"m.module_params['vfio_iommu_type1.dma_entry_limit'] = "
                       f"{self.dma_entry_limit}")
        if self.disable_hugepages:
            out.append("m.module_params['vfio_iommu_type1.disable_hugepages'] = 1")
        for i in range(self.devices):
            snoop = "" if i or not self.nosnoop else ", snoop=False"
            model = ", model='edu'" if self.edu and not i else ""
            out.append(f"m.add_pci_device({_bdf(i)!r}{snoop}{model})")
        procs = ", ".join(f"m.spawn_process(**{p.kwargs()!r})" for p in self.procs)
        out.append(f"p = [{procs}]")
        return out


def _bdf(i: int) -> str:
    return f"0000:00:{2 + i:02x}.0"


class Skip(Exception):
    """The op names a process that does not exist (any more): a replay of a shortened
    sequence skips it."""


@dataclass(frozen=True)
class Op:
    """One call. ``who`` is a process index for process calls and a device's
    StreamID/RID for ``dma_read``/``dma_write``; ``fail_nth`` arms fail-nth for it."""

    who: int
    call: str
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()
    note: str = ""
    fail_nth: int = 0

    @property
    def name(self) -> str:
        """What the op is, for statistics: the call, with the ioctl's request name."""
        if self.call == "ioctl":
            req = self.args[1]
            return f"ioctl {REQUEST_NAMES.get(req, hex(req))}" + (
                f" {self.note.split()[0]}" if self.note.startswith("TEST_") else "")
        return self.call


@dataclass
class World:
    """A machine built from ``config``, its processes (index = spawn order, kept after
    exit), and every file any of them ever had (roots for the leak walk)."""

    config: WorldConfig
    machine: Machine = field(init=False)
    procs: list[Process] = field(default_factory=list, init=False)
    alive: list[bool] = field(default_factory=list, init=False)
    files_seen: dict[int, VfioFile] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        c = self.config
        m = self.machine = Machine(c.platform, ram=c.ram, kernel=c.kernel,
                                   vtd_scalable=c.vtd_scalable)
        m.kconfig["CONFIG_IOMMUFD_VFIO_CONTAINER"] = c.compat
        m.module_params["vfio_iommu_type1.dma_entry_limit"] = c.dma_entry_limit
        m.module_params["vfio_iommu_type1.disable_hugepages"] = int(c.disable_hugepages)
        for i in range(c.devices):
            m.add_pci_device(_bdf(i), snoop=bool(i or not c.nosnoop),
                             model="edu" if c.edu and not i else None)

    def spawn_initial(self) -> None:
        for spec in self.config.procs:
            self._add(self.machine.spawn_process(**spec.kwargs()))

    def _add(self, p: Process) -> None:
        self.procs.append(p)
        self.alive.append(True)

    def live(self) -> list[int]:
        return [i for i, a in enumerate(self.alive) if a]

    def devices(self) -> list[DmaDevice]:
        """Every device that can do DMA now: the PCI devices and the mock devices
        MOCK_DOMAIN made."""
        return _devices(self.machine)

    def note_files(self) -> None:
        for i in self.live():
            for f in self.procs[i].files.values():
                self.files_seen.setdefault(id(f), f)

    # -- running an op ---------------------------------------------------------------------
    def apply(self, op: Op) -> Any:
        """Run ``op``; its result (an ioctl gives ``(return value, argument after)``).
        Skip for a process or device that is not there."""
        if op.call in ("dma_read", "dma_write"):
            dev = find_device(self.machine, op.who)
            if dev is None:
                raise Skip(f"no device {op.who:#x}")
            return getattr(dev, op.call)(*op.args)
        if op.call == "spawn":
            self._add(self.machine.spawn_process(**dict(op.kwargs)))
            return len(self.procs) - 1
        if op.who >= len(self.procs) or not self.alive[op.who]:
            raise Skip(f"no process {op.who}")
        p = self.procs[op.who]
        if op.call == "fork":
            child = p.fork()
            self._add(child)
            return len(self.procs) - 1
        if op.call == "exit":
            self.alive[op.who] = False  # whatever exit raises, the process is gone
            p.exit()
            return None
        if op.call == "ioctl":
            fd, req, arg = op.args
            buf: int | bytearray = arg if isinstance(arg, int) else bytearray(arg)
            return p.sys_ioctl(fd, req, buf), buf
        return getattr(p, op.call)(*op.args, **dict(op.kwargs))


def _devices(m: Machine) -> list[DmaDevice]:
    out: list[DmaDevice] = list(m.devices.values())
    if m.core is not None:
        seen = {d.sid for d in out}
        out += [d for g in m.core.groups.values() for d in g.devices if d.sid not in seen]
    return out


def find_device(machine: Machine, sid: int) -> DmaDevice | None:
    """The device with StreamID/RID ``sid``: a PCI device, or a mock device made by
    IOMMU_TEST_OP_MOCK_DOMAIN (reproducers use it)."""
    return next((d for d in _devices(machine) if d.sid == sid), None)


def _lit(v: Any) -> str:
    """A Python literal for an op argument (bytes as ``bytes.fromhex``, ints in hex when
    large)."""
    if isinstance(v, bytes | bytearray):
        if len(v) > 16 and len(set(v)) == 1:
            return f"bytes([{v[0]}]) * {len(v)}"
        return f"bytes.fromhex({bytes(v).hex()!r})"
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return repr(v)
    if isinstance(v, int):
        return hex(v) if abs(v) > 4096 else str(v)
    return repr(v)


def render(config: WorldConfig, ops: Iterable[Op], *, teardown: bool = True) -> str:
    """A Python script that builds the world and runs ``ops`` (each OSError caught and
    printed), then lets every process exit: the reproducer of a finding."""
    lines = ["from iommulab import Machine",
             "from iommulab.testing.fuzz import find_device",
             "",
             "def call(fn, *args, **kwargs):",
             "    try:",
             "        return fn(*args, **kwargs)",
             "    except OSError as err:",
             "        print(err)",
             "",
             *config.setup_lines()]
    for op in ops:
        if op.fail_nth:
            lines.append(f"m.mem.fail_nth.arm({op.fail_nth})")
        args = [_lit(a) for a in op.args] + [f"{k}={_lit(v)}" for k, v in op.kwargs]
        if op.call == "ioctl":
            args[2] = _lit(op.args[2]) if isinstance(op.args[2], int) else \
                f"bytearray({_lit(op.args[2])})"
        comment = f"  # {op.note}" if op.note else ""
        if op.call in ("dma_read", "dma_write"):
            target = f"find_device(m, {op.who:#x}).{op.call}"
        elif op.call == "spawn":
            lines.append(f"p.append(m.spawn_process({', '.join(args)})){comment}")
            continue
        elif op.call == "fork":
            lines.append(f"p.append(p[{op.who}].fork()){comment}")
            continue
        elif op.call == "ioctl":  # the syscall, whatever fcntl would make of the value
            target = f"p[{op.who}].sys_ioctl"
        else:
            target = f"p[{op.who}].{op.call}"
        lines.append(f"call({', '.join([target, *args])}){comment}")
        if op.fail_nth:
            lines.append("m.mem.fail_nth.disarm()")
    if teardown:
        lines.append("for q in p:")
        lines.append("    if not q.mm.gone:")
        lines.append("        q.exit()")
    return "\n".join(lines) + "\n"
