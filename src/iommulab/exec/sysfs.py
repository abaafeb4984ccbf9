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
(``kernfs_fop_open`` under sysfs's KERNFS_ROOT_EXTRA_OPEN_PERM_CHECK); the parameters
are root's to write (0644, DAC: EACCES for another uid; lab: the real uid, no
capabilities), through ``param_attr_store``: ``param_set_bool`` (``kstrtobool``) and
``param_set_uint`` (``kstrtouint``), EINVAL or ERANGE for what they refuse, the new
value in the machine's ``module_params`` at once. Lab: ``type`` is read-only under
exec (EACCES for a write open), where root may write it on a host.
"""

from __future__ import annotations

import errno
import os
import stat

from ..bridge.handler import Node
from ..errors import InvalidArgument, kernel_error
from ..iommu.domain import DomainType
from ..syscall.host import Host
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


def _groups(m: Host) -> set[int]:
    """The ids of the groups that have devices (an empty group has no sysfs directory)."""
    return {gid for gid, g in m.core.groups.items() if g.devices}


def _device_dir(bdf: str) -> str:
    """Where a root-bus function sits: ``/sys/devices/pciDDDD:BB/DDDD:BB:DD.F``."""
    return f"/sys/devices/pci{bdf[:7]}/{bdf}"


def _tree(m: Host) -> dict[str, Node]:
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


def sysfs_lookup(m: Host, path: str) -> Node | None:
    """The node at ``path`` if it is one of the served sysfs paths."""
    if not path.startswith(("/sys/kernel/iommu_groups", "/sys/module/vfio_iommu_type1",
                            "/sys/bus/pci/devices/", "/sys/devices/pci")):
        return None
    return _tree(m).get(path)


def sysfs_readdir(m: Host, path: str) -> list[tuple[str, Node]]:
    """The entries of a served sysfs directory, sorted (kernfs lists by name hash;
    lab: by name)."""
    prefix = path + "/"
    return sorted((p[len(prefix):], node) for p, node in _tree(m).items()
                  if p.startswith(prefix) and "/" not in p[len(prefix):])


class SysfsFile(VfioFile):
    """An open sysfs attribute: its text, made at each read (``show``)."""

    def __init__(self, m: Host, path: str) -> None:
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
        """``sysfs_kf_write`` of a parameter (only they open for writing): the store of
        at most a page; the count, or the setter's error."""
        data = data[:_PAGE]
        if not data:
            return 0
        name = os.path.basename(self.path)
        text = data.split(b"\0", 1)[0]
        value = _kstrtobool(text) if _PARAM_BOOL[name] else _kstrtouint(text)
        self.machine.module_params[f"vfio_iommu_type1.{name}"] = value
        return len(data)


def _kstrtobool(s: bytes) -> int:
    """``kstrtobool``: y/Y/t/T/1 and on; n/N/f/F/0 and off; EINVAL otherwise."""
    if s[:1] in (b"y", b"Y", b"t", b"T", b"1") or s[:2].lower() == b"on":
        return 1
    if s[:1] in (b"n", b"N", b"f", b"F", b"0") or s[:2].lower() == b"of":
        return 0
    raise InvalidArgument(f"kstrtobool: {s!r}")


def _kstrtouint(s: bytes) -> int:
    """``kstrtouint(s, 0)``: an optional '+', 0x for hex, a leading 0 for octal, one
    trailing newline; EINVAL for anything else, ERANGE past 32 bits."""
    if s.startswith(b"+"):
        s = s[1:]
    base = 10
    if s.startswith(b"0"):
        base = 16 if s[1:2] in (b"x", b"X") and s[2:3].isalnum() and \
            s[2:3].lower() in b"0123456789abcdef" else 8
        if base == 16:
            s = s[2:]
    end = len(s) - 1 if s.endswith(b"\n") else len(s)
    digits = s[:end]
    if not digits or any(chr(c).lower() not in "0123456789abcdef"[:base] for c in digits):
        raise InvalidArgument(f"kstrtouint: {s!r}")
    value = int(digits, base)
    if value > 0xFFFF_FFFF:
        raise kernel_error(errno.ERANGE, f"kstrtouint: {s!r} does not fit 32 bits")
    return value


def sysfs_open(m: Host, path: str, flags: int, uid: int) -> SysfsFile:
    """``kernfs_fop_open`` (and the VFS's permission check before it): the file, or
    EACCES for a write of ``reserved_regions`` or ``type`` (see the module's note) or of
    a parameter by a uid other than root."""
    writes = flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC
    if writes and (not path.startswith(_PARAMS + "/") or uid != 0):
        raise kernel_error(errno.EACCES, f"{path}: not writable here")
    return SysfsFile(m, path)
