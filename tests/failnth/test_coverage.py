"""Every entry point the model implements has a fail-nth sweep (:mod:`.scenarios`).

The ioctls are read from the model's own dispatch tables (iommufd's ``COMMANDS`` per
kernel, the selftest ops, the VFIO compat ioctls of /dev/iommu, a VFIO container's,
group's and device file's requests and vfio-pci's), so a request added there without a
sweep fails here. The process calls and device paths have no table in the model; they
are listed below. Each scenario's ``covers`` is checked against what its ``op`` really
calls: the op runs once with the world's processes recording their calls.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from typing import Any

import pytest

from iommulab import Process
from iommulab.iommufd import uapi as iu
from iommulab.iommufd.file import IommufdFile, MemFdFile
from iommulab.iommufd.selftest import TEST_OPS
from iommulab.iommufd.vfio_compat import COMPAT_IOCTLS
from iommulab.kernel import KernelVersion
from iommulab.mem.vma import BACKINGS
from iommulab.vfio.cdev import DEVICE_FILE_IOCTLS
from iommulab.vfio.device import VFIO_PCI_IOCTLS, VfioDeviceFile
from iommulab.vfio.files import CONTAINER_IOCTLS, GROUP_IOCTLS, Container, GroupFile

from .scenarios import (
    COMPAT,
    CONTAINER,
    DEVICE,
    GROUP,
    IOMMUFD,
    KERNELS,
    MMAP,
    OPEN,
    PROC,
    SCENARIOS,
    SELFTEST,
    VFIO_PCI,
    Call,
    Scenario,
    on,
)

#: the files ``Process.open`` makes, by the kind of path
OPEN_PATHS = ("/dev/iommu", "/dev/vfio/vfio", "/dev/vfio/vfio (iommufd)", "/dev/vfio/<group>",
              "/dev/vfio/devices/vfio<N>")
#: the kinds of mapping ``Process.mmap`` makes: private anonymous memory of each backing,
#: shared anonymous memory (shmem, or hugetlb), a memfd shared or private, a hugetlb memfd,
#: a device region
MMAP_KINDS = (*BACKINGS, "anon shared", "hugetlb shared", "memfd", "memfd private",
              "memfd hugetlb", "device region")
#: the other process calls
PROCESS_CALLS = ("munmap", "fork", "memfd_create", "ftruncate", "close", "exit")


def required() -> dict[Call, tuple[str, ...]]:
    """Each entry point, with the kernels it exists on."""
    out: dict[Call, tuple[str, ...]] = {}
    for c in iu.COMMANDS.values():
        out[Call(IOMMUFD, c.request)] = tuple(k for k in KERNELS
                                              if KernelVersion.parse(k) >= c.since)
    tables = ((SELFTEST, TEST_OPS), (COMPAT, COMPAT_IOCTLS), (CONTAINER, CONTAINER_IOCTLS),
              (GROUP, GROUP_IOCTLS), (DEVICE, DEVICE_FILE_IOCTLS), (VFIO_PCI, VFIO_PCI_IOCTLS),
              (OPEN, OPEN_PATHS), (MMAP, MMAP_KINDS), (PROC, PROCESS_CALLS))
    for table, requests in tables:
        for call in on(table, *requests):
            out[call] = KERNELS
    return out


def test_every_entry_point_has_a_sweep() -> None:
    """For each kernel an entry point exists on, a scenario covers it on that kernel."""
    missing = [f"{call!r} on {k}" for call, kernels in required().items() for k in kernels
               if not any(call in s.covers and k in s.kernels for s in SCENARIOS)]
    assert not missing, "no fail-nth sweep for: " + ", ".join(missing)


def test_scenarios_name_real_entry_points() -> None:
    """A scenario names only entry points of the tables (no stale or mistyped one)."""
    known = required()
    stale = {f"{s.name}: {c!r}" for s in SCENARIOS for c in s.covers if c not in known}
    assert not stale, ", ".join(sorted(stale))
    assert all(s.covers for s in SCENARIOS)


# -- what an op calls -----------------------------------------------------------------------
def _ioctl_call(p: Process, fd: int, request: int, arg: Any = 0) -> Call:
    f = p.files.get(fd)
    if isinstance(f, IommufdFile):
        if request in iu.COMMANDS:
            return Call(IOMMUFD, request)
        if request == iu.IOMMU_TEST_CMD:
            return Call(SELFTEST, struct.unpack_from("<I", arg, 4)[0])
        return Call(COMPAT, request)
    if isinstance(f, Container):
        return Call(CONTAINER, request)
    if isinstance(f, GroupFile):
        return Call(GROUP, request)
    if isinstance(f, VfioDeviceFile):
        return Call(DEVICE if request in DEVICE_FILE_IOCTLS else VFIO_PCI, request)
    return Call("?", request)


def _open_call(p: Process, path: str) -> Call:
    if path == "/dev/vfio/vfio" and p.machine.kconfig["CONFIG_IOMMUFD_VFIO_CONTAINER"]:
        return Call(OPEN, "/dev/vfio/vfio (iommufd)")
    path = re.sub(r"^/dev/vfio/devices/vfio\d+$", "/dev/vfio/devices/vfio<N>", path)
    return Call(OPEN, re.sub(r"^/dev/vfio/\d+$", "/dev/vfio/<group>", path))


def _mmap_call(p: Process, length: Any, backing: str = "anon", prot: str = "rw",
               populate: bool = False, fd: int | None = None, offset: int = 0, *,
               shared: bool = False, private: bool = False) -> Call:
    if fd is None and shared:
        return Call(MMAP, "hugetlb shared" if backing.startswith("hugetlb") else "anon shared")
    if fd is None:
        return Call(MMAP, backing)
    f = p.files.get(fd)
    if isinstance(f, MemFdFile):
        kind = "memfd hugetlb" if f.memfd.order else "memfd private" if private else "memfd"
        return Call(MMAP, kind)
    return Call(MMAP, "device region")


def _record(p: Process, seen: set[Call]) -> None:
    """Make ``p`` note each call it is given in ``seen`` (then make the call)."""
    def spy(name: str, what: Callable[..., Call] | None) -> None:
        real = getattr(p, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            seen.add(what(p, *args, **kwargs) if what is not None else Call(PROC, name))
            out = real(*args, **kwargs)
            if isinstance(out, Process):  # a forked child records too
                _record(out, seen)
            return out
        setattr(p, name, call)

    spy("ioctl", _ioctl_call)
    spy("open", _open_call)
    spy("mmap", _mmap_call)
    for name in PROCESS_CALLS:
        spy(name, None)


@pytest.mark.parametrize("scenario", [pytest.param(s, id=f"{s.name}-{s.kernels[0]}")
                                      for s in SCENARIOS])
def test_covers_what_the_op_calls(scenario: Scenario) -> None:
    """The entry points a scenario names are among those its ``op`` calls."""
    w = scenario.setup(scenario.platforms[0], scenario.kernels[0])
    seen: set[Call] = set()
    for p in w.procs:
        _record(p, seen)
    try:
        scenario.op(w)
    except OSError as e:
        assert scenario.expect == e.errno, e
    try:
        assert set(scenario.covers) <= seen, f"the op calls {sorted(map(repr, seen))}"
    finally:
        w.close()
