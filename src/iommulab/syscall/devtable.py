"""The device files: the table the front ends register the paths they serve into.

A front end registers a node the way its kernel module does at ``module_init``: one
path with a fixed minor (``misc_register``, drivers/char/misc.c: ``/dev/iommu``,
``/dev/vfio/vfio``) or a family of numbered nodes under one major (``cdev_add`` over
a region from ``alloc_chrdev_region``, fs/char_dev.c: ``/dev/vfio/N``,
``/dev/vfio/devices/vfioN``), each with the ``open`` of its ``file_operations`` and
a test of whether the node exists on a given machine (lab: devtmpfs's node appears
when the kernel creates the device; here the test answers from the machine's state).

Both doors onto the syscall surface resolve a path here: :meth:`Process.open_file
<.process.Process.open_file>` and the exec bridge's handler (its ``lookup`` shows
:meth:`DeviceTable.lookup`'s node, its ``open`` is the process's ``open_file``). The
registrations are made once, by :mod:`iommulab.frontends`.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import NoDevice, NoEntry

if TYPE_CHECKING:
    from .file import File
    from .host import Host
    from .process import Process

__all__ = ["DEVICE_FILES", "CharDev", "DevNode", "DeviceTable", "Opener", "Present"]

#: a node's ``open``: the process opening it and the path, the new file
Opener = Callable[["Process", str], "File"]
#: does the node with this minor exist on the machine
Present = Callable[["Host", int], bool]


@dataclass(frozen=True)
class DevNode:
    """What ``stat`` shows for a served path: type and permission bits, and for a
    character device its major and minor."""

    mode: int
    major: int = 0
    minor: int = 0

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


@dataclass(frozen=True)
class CharDev:
    """One registration: ``path`` is the node (``minor`` set: a misc device) or the
    prefix its numbered nodes add their minor to in decimal (``minor`` None)."""

    path: str
    major: int
    minor: int | None
    perm: int
    open: Opener
    present: Present

    def match(self, machine: Host, path: str) -> int | None:
        """The minor of the node ``path`` names on ``machine``, None if it names none.
        A numbered node's name is the canonical decimal (``/dev/vfio/07`` is no file)."""
        if self.minor is not None:
            return self.minor if path == self.path and self.present(machine, self.minor) \
                else None
        name = path[len(self.path):] if path.startswith(self.path) else ""
        if not name.isdigit() or name != str(int(name)):
            return None
        return int(name) if self.present(machine, int(name)) else None


def _always(machine: Host, minor: int) -> bool:
    return True


#: MISC_MAJOR (include/uapi/linux/major.h)
MISC_MAJOR = 10
_DIR = DevNode(stat.S_IFDIR | 0o755)


class DeviceTable:
    """The registered device files, in registration order (lab: the kernel's
    ``misc_list`` and ``cdev_map``, and the ``/dev`` devtmpfs shows for them)."""

    def __init__(self) -> None:
        self._devs: list[CharDev] = []

    def misc_register(self, path: str, minor: int, open: Opener, *,
                      present: Present = _always, perm: int = 0o666) -> None:
        """``misc_register``: ``path`` with MISC_MAJOR and ``minor``, there whenever
        ``present`` says so (a kernel configuration the machine selects)."""
        self._devs.append(CharDev(path, MISC_MAJOR, minor, perm, open, present))

    def cdev_add(self, prefix: str, major: int, open: Opener, present: Present, *,
                 perm: int = 0o600) -> None:
        """``cdev_add`` over a whole region of ``major``: node ``prefix + str(N)`` for
        each minor N that ``present`` finds on the machine."""
        self._devs.append(CharDev(prefix, major, None, perm, open, present))

    def find(self, machine: Host, path: str) -> tuple[CharDev, int] | None:
        """The registration serving ``path`` on ``machine`` and the node's minor."""
        for dev in self._devs:
            minor = dev.match(machine, path)
            if minor is not None:
                return dev, minor
        return None

    def directories(self) -> set[str]:
        """The directories below ``/dev`` that hold registered nodes."""
        dirs: set[str] = set()
        for dev in self._devs:
            parent = dev.path.rsplit("/", 1)[0]
            while parent.startswith("/dev/"):
                dirs.add(parent)
                parent = parent.rsplit("/", 1)[0]
        return dirs

    def _roots(self) -> tuple[str, ...]:
        """The names directly below ``/dev`` the registrations use (``/dev/iommu``,
        ``/dev/vfio``)."""
        return tuple(sorted({"/".join(dev.path.split("/")[:3]) for dev in self._devs}))

    def lookup(self, machine: Host, path: str) -> DevNode | None:
        """The node at ``path``: a registered device, a directory holding some, or None.
        ppc64-pseries has none (no VFIO or iommufd in the model there)."""
        if machine.pseries is not None:
            return None
        found = self.find(machine, path)
        if found is not None:
            dev, minor = found
            return DevNode(stat.S_IFCHR | dev.perm, dev.major, minor)
        return _DIR if path in self.directories() else None

    def open(self, proc: Process, path: str) -> File:
        """The lookup (ENOENT for no node) and the node's ``open``. Lab: on
        ppc64-pseries, a path under the front ends' names is ENODEV (SPAPR TCE is not
        modelled)."""
        if proc.machine.pseries is not None and path.startswith(self._roots()):
            raise NoDevice(f"open: {path}: ppc64-pseries has no VFIO or iommufd in the model "
                           "(SPAPR TCE is not modelled)")
        found = self.find(proc.machine, path)
        if found is None:
            raise NoEntry(f"open: {path}: No such file or directory")
        return found[0].open(proc, path)


#: The device files of every machine (the kernel's global tables); the front ends
#: register into it once, from :mod:`iommulab.frontends`.
DEVICE_FILES = DeviceTable()
