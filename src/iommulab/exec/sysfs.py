"""The sysfs files a VMM reads before it opens a VFIO group, from the model (lab:
``iommulab exec``): ``/sys/kernel/iommu_groups/N/{type,reserved_regions}`` and
``/sys/module/vfio_iommu_type1/parameters/*``.

Each attribute is generated at every read from the machine's state, as kernfs runs the
attribute's ``show`` (``sysfs_kf_seq_show``) for a read: ``iommu_group_show_type``,
``iommu_group_show_resv_regions`` (drivers/iommu/iommu.c) and the module parameter
getters (kernel/params.c: ``param_get_bool`` gives ``Y``/``N``, ``param_get_uint``
``%u``). A stat shows a regular file of PAGE_SIZE bytes, as sysfs does; the mode is the
attribute's (``type`` 0644, ``reserved_regions`` 0444, the parameters 0644).

Lab: the files are read-only under exec. Opening one for writing answers EACCES, which
the kernel gives only to a user without write permission; root may write ``type`` and
the parameters on a real host (the model's parameters are set with
``--set vfio_iommu_type1.PARAM=N`` instead).
"""

from __future__ import annotations

import errno
import os
import stat

from ..bridge.handler import Node
from ..errors import InvalidArgument, kernel_error
from ..iommu.domain import DomainType
from ..machine import Machine
from ..vfio.files import VfioFile

__all__ = ["SysfsFile", "sysfs_lookup", "sysfs_open", "sysfs_readdir"]

_DIR = Node(stat.S_IFDIR | 0o755)
_PAGE = 4096
_GROUPS = "/sys/kernel/iommu_groups"
_PARAMS = "/sys/module/vfio_iommu_type1/parameters"
#: vfio_iommu_type1.c's module_param_named types: name -> bool (else uint)
_PARAM_BOOL = {"allow_unsafe_interrupts": True, "disable_hugepages": True,
               "dma_entry_limit": False}
_TYPE_NAMES = {DomainType.BLOCKED: "blocked", DomainType.IDENTITY: "identity",
               DomainType.UNMANAGED: "unmanaged", DomainType.DMA: "DMA",
               DomainType.DMA_FQ: "DMA-FQ"}


def _attr(perm: int) -> Node:
    return Node(stat.S_IFREG | perm, size=_PAGE)


def _groups(m: Machine) -> set[int]:
    """The ids of the groups that have devices (an empty group has no sysfs directory)."""
    return {gid for gid, g in m.core.groups.items() if g.devices}


def sysfs_lookup(m: Machine, path: str) -> Node | None:
    """The node at ``path`` if it is one of the served sysfs paths."""
    if path in ("/sys/kernel/iommu_groups", "/sys/module/vfio_iommu_type1", _PARAMS):
        return _DIR
    if path.startswith(_PARAMS + "/"):
        return _attr(0o644) if path[len(_PARAMS) + 1:] in _PARAM_BOOL else None
    if not path.startswith(_GROUPS + "/"):
        return None
    parts = path[len(_GROUPS) + 1:].split("/")
    if not parts[0].isdigit() or parts[0] != str(int(parts[0])) or \
            int(parts[0]) not in _groups(m):
        return None
    if len(parts) == 1:
        return _DIR
    if len(parts) == 2 and parts[1] == "type":
        return _attr(0o644)
    if len(parts) == 2 and parts[1] == "reserved_regions":
        return _attr(0o444)
    return None


def sysfs_readdir(m: Machine, path: str) -> list[tuple[str, Node]]:
    """The entries of a served sysfs directory, sorted (kernfs lists by name hash;
    lab: by name)."""
    if path == "/sys/kernel/iommu_groups":
        names = [str(g) for g in sorted(_groups(m))]
    elif path == "/sys/module/vfio_iommu_type1":
        names = ["parameters"]
    elif path == _PARAMS:
        names = sorted(_PARAM_BOOL)
    else:
        names = ["reserved_regions", "type"]
    out = []
    for name in names:
        node = sysfs_lookup(m, f"{path}/{name}")
        assert node is not None
        out.append((name, node))
    return out


class SysfsFile(VfioFile):
    """An open sysfs attribute: its text, made at each read (``show``)."""

    def __init__(self, m: Machine, path: str) -> None:
        self.machine = m
        self.path = path

    def show(self) -> bytes:
        """The attribute's ``show``."""
        m, name = self.machine, os.path.basename(self.path)
        if self.path.startswith(_PARAMS + "/"):
            value = m.module_params[f"vfio_iommu_type1.{name}"]
            text = ("Y" if value else "N") if _PARAM_BOOL[name] else str(value)
            return f"{text}\n".encode()
        group = m.core.groups[int(self.path.split("/")[-2])]
        if name == "type":  # iommu_group_show_type
            dom = group.default_domain
            kind = "unknown" if dom is None else _TYPE_NAMES.get(dom.type, "unknown")
            return f"{kind}\n".encode()
        regions: str = group.sysfs_reserved_regions()
        return regions.encode()

    def pread(self, n: int, pos: int) -> bytes:
        """``seq_read`` of a fresh ``show``: the bytes at ``pos``."""
        if n < 0 or pos < 0:
            raise InvalidArgument(f"read of {n} bytes at {pos}")
        return self.show()[pos:pos + n]

    def pwrite(self, data: bytes, pos: int) -> int:
        """Never reached: the file is not open for writing (see the module's note)."""
        raise kernel_error(errno.EBADF, f"{self.path} is read-only under exec")


def sysfs_open(m: Machine, path: str, flags: int) -> SysfsFile:
    """``kernfs_fop_open``: the file, or EACCES for a write (lab: read-only, see above)."""
    if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
        raise kernel_error(errno.EACCES, f"{path}: read-only under exec")
    return SysfsFile(m, path)
