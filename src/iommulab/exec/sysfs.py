"""The sysfs files a VMM reads before it opens a VFIO group, from the model (lab:
``iommulab exec``): ``/sys/kernel/iommu_groups/N/{type,reserved_regions,devices/}``,
``/sys/module/vfio_iommu_type1/parameters/*``, and for each PCI function
``/sys/bus/pci/devices/BDF`` (a link to ``/sys/devices/pciDDDD:BB/BDF``) with its
``iommu_group`` link (``iommu_group_add_device``) and, bound to vfio-pci,
``vfio-dev/vfioN/dev`` (the cdev's ``major:minor``, what a VMM reads to find its
``/dev/vfio/devices/vfioN``).

Each attribute is generated at every read from the machine's state, as kernfs runs the
attribute's ``show`` (``sysfs_kf_seq_show``) for a read: ``iommu_group_show_type``,
``iommu_group_show_resv_regions`` (drivers/iommu/iommu.c) and the module parameter
getters (kernel/params.c: ``param_get_bool`` gives ``Y``/``N``, ``param_get_uint``
``%u``). A stat shows a regular file of PAGE_SIZE bytes, as sysfs does; the mode is the
attribute's (``type`` 0644, ``reserved_regions`` 0444, the parameters 0644).

Opening ``reserved_regions`` (no ``store``) for writing is EACCES, for root too
(``kernfs_fop_open`` under sysfs's KERNFS_ROOT_EXTRA_OPEN_PERM_CHECK). Lab: the other
files are read-only under exec too, with the same EACCES, where root may write ``type``
and the parameters on a real host (the model's parameters are set with
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
from ..vfio.cdev import cdev_devices
from ..vfio.files import VfioFile

__all__ = ["SysfsFile", "sysfs_lookup", "sysfs_open", "sysfs_readdir"]

_DIR = Node(stat.S_IFDIR | 0o755)
_CDEV_MAJOR = 237  # the vfio-dev major exec's /dev/vfio/devices/vfioN nodes show
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


def _device_dir(bdf: str) -> str:
    """Where a root-bus function sits: ``/sys/devices/pciDDDD:BB/DDDD:BB:DD.F``."""
    return f"/sys/devices/pci{bdf[:7]}/{bdf}"


def _tree(m: Machine) -> dict[str, Node]:
    """Every served sysfs path and its node. O(devices)."""
    tree = {_GROUPS: _DIR, "/sys/module/vfio_iommu_type1": _DIR, _PARAMS: _DIR}
    tree.update({f"{_PARAMS}/{name}": _attr(0o644) for name in _PARAM_BOOL})
    for gid in _groups(m):
        tree.update({f"{_GROUPS}/{gid}": _DIR, f"{_GROUPS}/{gid}/type": _attr(0o644),
                     f"{_GROUPS}/{gid}/reserved_regions": _attr(0o444),
                     f"{_GROUPS}/{gid}/devices": _DIR})
    cdevs = cdev_devices(m)
    for bdf, dev in m.devices.items():
        where = _device_dir(bdf)
        root = os.path.dirname(where)
        if root not in tree and not os.path.isdir(root):
            tree[root] = _DIR  # the host has no such root bus: the model's stands in
        tree[f"/sys/bus/pci/devices/{bdf}"] = Node.symlink(f"../../..{where[4:]}")
        tree[where] = _DIR
        if dev.iommu_group is not None:
            gid = dev.iommu_group
            tree[f"{where}/iommu_group"] = Node.symlink(f"../../../kernel/iommu_groups/{gid}")
            tree[f"{_GROUPS}/{gid}/devices/{bdf}"] = Node.symlink(f"../../../..{where[4:]}")
        if dev in cdevs:  # vfio_device_add: vfio-dev/vfioN with its dev attribute
            n = cdevs.index(dev)
            tree.update({f"{where}/vfio-dev": _DIR, f"{where}/vfio-dev/vfio{n}": _DIR,
                         f"{where}/vfio-dev/vfio{n}/dev": _attr(0o444)})
    return tree


def sysfs_lookup(m: Machine, path: str) -> Node | None:
    """The node at ``path`` if it is one of the served sysfs paths."""
    if not path.startswith(("/sys/kernel/iommu_groups", "/sys/module/vfio_iommu_type1",
                            "/sys/bus/pci/devices/", "/sys/devices/pci")):
        return None
    return _tree(m).get(path)


def sysfs_readdir(m: Machine, path: str) -> list[tuple[str, Node]]:
    """The entries of a served sysfs directory, sorted (kernfs lists by name hash;
    lab: by name)."""
    prefix = path + "/"
    return sorted((p[len(prefix):], node) for p, node in _tree(m).items()
                  if p.startswith(prefix) and "/" not in p[len(prefix):])


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
        if name == "dev":  # vfio-dev/vfioN/dev: the cdev's major:minor
            return f"{_CDEV_MAJOR}:{self.path.split('/')[-2][4:]}\n".encode()
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
