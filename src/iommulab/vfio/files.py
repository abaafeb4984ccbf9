"""The files behind /dev/vfio: container, group and device fds (drivers/vfio/container.c,
group.c, vfio_main.c, vfio_iommu_type1.c's ioctl handlers, vfio_pci_core.c).

Each ioctl reads the argument the way the kernel copies it (``minsz`` first,
then ``argsz`` rules), checks in the kernel's order and writes back what
the kernel writes back. A buffer shorter than what the kernel would touch
gives EFAULT.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..dma.cookie import get_msi_cookie
from ..errors import (
    BadAddress,
    BadFileDescriptor,
    Busy,
    InvalidArgument,
    KernelError,
    NoDevice,
    NoEntry,
    NotATty,
    PermissionDenied,
    kernel_error,
)
from ..iommu.domain import DomainType, IommuDomain
from ..iommu.resv import ResvType
from . import uapi as u
from .type1 import Type1Report, VfioIommu, type1_check_extension

if TYPE_CHECKING:
    from ..iommu.core import IommuGroup
    from ..iommufd.file import IommufdFile
    from ..iommufd.objects import Device as IommufdDevice
    from ..iommufd.objects import IommufdCtx
    from ..machine import Machine, PciDevice, Process

EBADFD = 77

__all__ = ["Container", "DeviceFile", "GroupFile", "VfioFile", "open_vfio_path"]


class _Arg:
    """The user memory at the ioctl argument pointer."""

    def __init__(self, arg: int | bytes | bytearray) -> None:
        if isinstance(arg, int):
            raise BadAddress("ioctl: this request takes a pointer to a struct")
        self.buf = arg

    def read(self, offset: int, n: int) -> bytes:
        if offset + n > len(self.buf):
            raise BadAddress(f"copy_from_user of {n} bytes at +{offset}: the buffer has "
                             f"{len(self.buf)}")
        return bytes(self.buf[offset:offset + n])

    def write(self, offset: int, data: bytes) -> None:
        if offset + len(data) > len(self.buf):
            raise BadAddress(f"copy_to_user of {len(data)} bytes at +{offset}: the buffer "
                             f"has {len(self.buf)}")
        if isinstance(self.buf, bytearray):
            self.buf[offset:offset + len(data)] = data


class VfioFile:
    """An open file; ``ioctl`` dispatches, ``release`` is the last close (``refs`` counts
    the fds pointing at it, in this process and in children that inherited it)."""

    refs = 1

    def ioctl(self, proc: Process, request: int, arg: int | bytes | bytearray) -> int:
        raise NotATty(f"ioctl {request:#x}: not supported by this file")

    def mmap_region(self, length: int, offset: int) -> int:
        raise NoDevice("mmap: this file cannot be mapped")

    def release(self) -> None:
        """Nothing to undo."""


def open_vfio_path(proc: Process, path: str) -> VfioFile:
    """``/dev/vfio/vfio`` (a new container), ``/dev/vfio/<group>`` or a device cdev
    ``/dev/vfio/devices/vfio<N>``."""
    m = proc.machine
    name = path.removeprefix("/dev/vfio/")
    if name == "vfio":
        if m.kconfig["CONFIG_IOMMUFD_VFIO_CONTAINER"]:
            from ..iommufd.file import IommufdFile
            return IommufdFile(m, vfio_container=True)
        return Container(m)
    if name.startswith("devices/vfio") and name[12:].isdigit():
        from .cdev import DeviceCdev, cdev_devices
        devices = cdev_devices(m)
        if int(name[12:]) < len(devices):
            return DeviceCdev(m, devices[int(name[12:])])
    if name.isdigit() and m.group_devices(int(name)):
        group_id = int(name)
        if any(d.driver != "vfio-pci" for d in m.group_devices(group_id)):
            raise NoEntry(f"open: {path}: the group's devices are not bound to vfio-pci")
        if group_id in m.open_groups:
            raise Busy(f"open: {path}: the group is already open")
        m.open_groups.add(group_id)
        return GroupFile(m, group_id)
    raise NoEntry(f"open: {path}: No such file or directory")


class Container(VfioFile):
    """``struct vfio_container``: groups, and the type1 IOMMU once SET_IOMMU ran."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.groups: list[GroupFile] = []
        self.iommu: VfioIommu | None = None

    def report(self) -> Type1Report:
        """Lab statistics of the container (:meth:`VfioIommu.report`)."""
        if self.iommu is None:
            raise InvalidArgument("report: no IOMMU driver set on the container")
        return self.iommu.report()

    def ioctl(self, proc: Process, request: int, arg: int | bytes | bytearray) -> int:
        if request == u.VFIO_GET_API_VERSION:
            return u.VFIO_API_VERSION
        if request == u.VFIO_CHECK_EXTENSION:
            return type1_check_extension(self.iommu, _int(arg))
        if request == u.VFIO_SET_IOMMU:
            self._set_iommu(_int(arg))
            return 0
        if self.iommu is None:  # no driver: the kernel's default -EINVAL
            raise InvalidArgument(f"ioctl {request:#x}: no IOMMU driver set on the container")
        if request == u.VFIO_IOMMU_GET_INFO:
            return self._get_info(_Arg(arg))
        if request == u.VFIO_IOMMU_MAP_DMA:
            return self._map_dma(proc, _Arg(arg))
        if request == u.VFIO_IOMMU_UNMAP_DMA:
            return self._unmap_dma(proc, _Arg(arg))
        if request == u.VFIO_IOMMU_DIRTY_PAGES:
            return self._dirty_pages(proc, _Arg(arg))
        raise NotATty(f"ioctl {request:#x}: unknown to the type1 IOMMU")

    # -- SET_IOMMU and groups ----------------------------------------------------------------------
    def _set_iommu(self, type: int) -> None:
        """``vfio_ioctl_set_iommu``: EINVAL without a group or with a driver already set,
        ENODEV for a type no driver takes; then every group is attached."""
        if not self.groups or self.iommu is not None:
            raise InvalidArgument("SET_IOMMU: no group in the container, or already set")
        if type not in (u.VFIO_TYPE1_IOMMU, u.VFIO_TYPE1v2_IOMMU, u.VFIO_TYPE1_NESTING_IOMMU):
            raise NoDevice(f"SET_IOMMU: no IOMMU driver for type {type}")
        params = self.machine.module_params
        iommu = VfioIommu(type != u.VFIO_TYPE1_IOMMU,
                          params["vfio_iommu_type1.dma_entry_limit"],
                          bool(params["vfio_iommu_type1.disable_hugepages"]),
                          bool(params["vfio_iommu_type1.allow_unsafe_interrupts"]))
        attached: list[GroupFile] = []
        try:
            for g in self.groups:
                self._attach(iommu, g)
                attached.append(g)
        except KernelError:
            for g in reversed(attached):
                self._detach(iommu, g)
            raise
        self.iommu = iommu

    def _attach(self, iommu: VfioIommu, g: GroupFile) -> None:
        """Allocate a paging domain, attach the group, let type1 check and keep or swap it."""
        core = self.machine.core
        group = g.group
        first = group.devices[0].dev_iommu  # iommu_paging_domain_alloc(first device)
        domain: IommuDomain = core.driver.domain_alloc_paging(
            first.priv if first is not None else None, DomainType.UNMANAGED)

        def join(existing: IommuDomain) -> bool:
            """iommu_attach_group(d->domain): False if refused (the core's revert has put
            the group back on ``domain``)."""
            try:
                core.set_group_domain(group, existing)
            except KernelError:
                return False
            return True

        try:
            core.set_group_domain(group, domain)
            enforce_cc = bool(getattr(core.driver, "enforce_cache_coherency",
                                      lambda d: False)(domain))
            target = iommu.attach_group(group, domain, msi_isolated=True,
                                        enforce_cc=enforce_cc, join=join)
        except KernelError:
            if group.domain is not _default(group):
                core.set_group_domain(group, _default(group))
            domain.free()
            raise
        if target is not domain:  # joined an existing domain
            domain.free()
            return
        sw_msi = [r for r in group.resv_regions() if r.type == ResvType.SW_MSI]
        if sw_msi and domain.cookie is None:
            get_msi_cookie(domain, sw_msi[0].start)

    def _detach(self, iommu: VfioIommu, g: GroupFile) -> None:
        core = self.machine.core
        freed = iommu.detach_group(g.group)
        core.set_group_domain(g.group, _default(g.group))
        if freed is not None:
            freed.cookie = None
            freed.free()

    def add_group(self, g: GroupFile) -> None:
        """``vfio_container_attach_group``: with a driver set, the group is attached now."""
        if self.iommu is not None:
            self._attach(self.iommu, g)
        self.groups.append(g)

    def remove_group(self, g: GroupFile) -> None:
        """``vfio_group_detach_container``; the last group out drops the IOMMU driver."""
        if self.iommu is not None:
            self._detach(self.iommu, g)
        self.groups.remove(g)
        if not self.groups:
            self.iommu = None

    # -- type1 ioctls ------------------------------------------------------------------------------
    def _get_info(self, a: _Arg) -> int:
        """``vfio_iommu_type1_get_info``: the argsz-growth rule for the capability chain."""
        argsz = int.from_bytes(a.read(0, u.IOMMU_INFO_MINSZ)[:4], "little")
        if argsz < u.IOMMU_INFO_MINSZ:
            raise InvalidArgument(f"GET_INFO: argsz {argsz} < {u.IOMMU_INFO_MINSZ}")
        assert self.iommu is not None
        caps = self.iommu.info_caps()
        flags = u.VFIO_IOMMU_INFO_PGSIZES | (u.VFIO_IOMMU_INFO_CAPS if caps else 0)
        cap_offset = 0
        if caps:
            if argsz < u.IOMMU_INFO.size + len(caps):
                argsz = u.IOMMU_INFO.size + len(caps)
            else:
                a.write(u.IOMMU_INFO.size, caps)
                cap_offset = u.IOMMU_INFO.size
        info = u.IOMMU_INFO.pack(argsz, flags, self.iommu.pgsize_bitmap, cap_offset, 0)
        a.write(0, info[:min(argsz, u.IOMMU_INFO.size)])
        return 0

    def _map_dma(self, proc: Process, a: _Arg) -> int:
        argsz, flags, vaddr, iova, size = u.DMA_MAP.unpack(a.read(0, u.DMA_MAP.size))
        valid = u.VFIO_DMA_MAP_FLAG_READ | u.VFIO_DMA_MAP_FLAG_WRITE | u.VFIO_DMA_MAP_FLAG_VADDR
        if argsz < u.DMA_MAP.size or flags & ~valid:
            raise InvalidArgument(f"MAP_DMA: argsz {argsz} or flags {flags:#x} invalid")
        assert self.iommu is not None
        self.iommu.map_dma(proc.mm, flags, vaddr, iova, size,
                           memlock_limit=proc.memlock_limit, lock_cap=proc.cap_ipc_lock)
        return 0

    def _unmap_dma(self, proc: Process, a: _Arg) -> int:
        """``vfio_iommu_type1_unmap_dma``: the size is written back only on success."""
        argsz, flags, iova, size = u.DMA_UNMAP.unpack(a.read(0, u.DMA_UNMAP.size))
        valid = (u.VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP | u.VFIO_DMA_UNMAP_FLAG_ALL |
                 u.VFIO_DMA_UNMAP_FLAG_VADDR)
        if argsz < u.DMA_UNMAP.size or flags & ~valid:
            raise InvalidArgument(f"UNMAP_DMA: argsz {argsz} or flags {flags:#x} invalid")
        get_dirty = flags & u.VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP
        if get_dirty and flags & (u.VFIO_DMA_UNMAP_FLAG_ALL | u.VFIO_DMA_UNMAP_FLAG_VADDR):
            raise InvalidArgument("UNMAP_DMA: GET_DIRTY_BITMAP with ALL or VADDR")
        dirty = None
        if get_dirty:
            if argsz < u.DMA_UNMAP.size + u.BITMAP.size:
                raise InvalidArgument(f"UNMAP_DMA: argsz {argsz} leaves no room for a bitmap")
            pgsize, bsize, data = u.BITMAP.unpack(a.read(u.DMA_UNMAP.size, u.BITMAP.size))
            _verify_bitmap(proc, data, bsize, size >> _ffs(pgsize) if pgsize else 0)
            dirty = (pgsize, data, proc.mm)
        assert self.iommu is not None
        unmapped = self.iommu.unmap_dma(flags, iova, size, dirty)
        a.write(0, u.DMA_UNMAP.pack(argsz, flags, iova, unmapped))
        return 0

    def _dirty_pages(self, proc: Process, a: _Arg) -> int:
        """``vfio_iommu_type1_dirty_pages``: EACCES for v1; one of START, STOP, GET_BITMAP."""
        assert self.iommu is not None
        if not self.iommu.v2:
            raise PermissionDenied("DIRTY_PAGES: needs a TYPE1v2 container")
        argsz, flags = u.DIRTY_BITMAP.unpack(a.read(0, u.DIRTY_BITMAP.size))
        valid = (u.VFIO_IOMMU_DIRTY_PAGES_FLAG_START | u.VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP |
                 u.VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP)
        if argsz < u.DIRTY_BITMAP.size or flags & ~valid or bin(flags).count("1") > 1:
            raise InvalidArgument(f"DIRTY_PAGES: argsz {argsz} flags {flags:#x}")
        if flags & u.VFIO_IOMMU_DIRTY_PAGES_FLAG_START:
            self.iommu.set_dirty_tracking(True)
        elif flags & u.VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP:
            self.iommu.set_dirty_tracking(False)
        elif flags & u.VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP:
            if argsz - u.DIRTY_BITMAP.size < u.DIRTY_BITMAP_GET.size:
                raise InvalidArgument("DIRTY_PAGES GET_BITMAP: argsz too small")
            iova, size, pgsize, bsize, data = u.DIRTY_BITMAP_GET.unpack(
                a.read(u.DIRTY_BITMAP.size, u.DIRTY_BITMAP_GET.size))
            if iova + size >= 1 << 64:  # iova + size < iova in u64
                raise InvalidArgument("DIRTY_PAGES GET_BITMAP: range wraps")
            _verify_bitmap(proc, data, bsize, size >> _ffs(pgsize) if pgsize else 0)
            self.iommu.dirty_get_bitmap(iova, size, pgsize, data, proc.mm)
        return 0

    def release(self) -> None:
        for g in list(self.groups):
            g.unset_container()


def _verify_bitmap(proc: Process, data: int, bsize: int, npages: int) -> None:
    """``access_ok`` then ``verify_bitmap_size``."""
    if not npages or not bsize or bsize > u.DIRTY_BITMAP_SIZE_MAX or \
            bsize < u.DIRTY_BITMAP_BYTES(npages):
        raise InvalidArgument(f"dirty bitmap of {bsize} bytes for {npages} pages")
    if proc.mm.find_vma(data) is None:
        raise InvalidArgument(f"dirty bitmap at {data:#x} is not user memory")


def _ffs(x: int) -> int:
    return (x & -x).bit_length() - 1


def _int(arg: int | bytes | bytearray) -> int:
    if not isinstance(arg, int):
        raise InvalidArgument("ioctl: this request takes an integer argument")
    return arg


def _default(group: IommuGroup) -> IommuDomain:
    assert group.default_domain is not None
    return group.default_domain


class GroupFile(VfioFile):
    """``/dev/vfio/<group>``."""

    def __init__(self, machine: Machine, group_id: int) -> None:
        self.machine = machine
        self.id = group_id
        self.container: Container | None = None
        self.iommufd: IommufdFile | None = None  # group->iommufd
        self.devices_open = 0
        group = machine.core.groups[group_id]
        self.group = group

    def ioctl(self, proc: Process, request: int, arg: int | bytes | bytearray) -> int:
        if request == u.VFIO_GROUP_GET_STATUS:
            a = _Arg(arg)
            argsz, _ = u.GROUP_STATUS.unpack(a.read(0, u.GROUP_STATUS.size))
            if argsz < u.GROUP_STATUS.size:
                raise InvalidArgument(f"GROUP_GET_STATUS: argsz {argsz} < 8")
            flags = u.VFIO_GROUP_FLAGS_VIABLE
            if self.container is not None:
                flags |= u.VFIO_GROUP_FLAGS_CONTAINER_SET
            a.write(0, u.GROUP_STATUS.pack(argsz, flags))
            return 0
        if request == u.VFIO_GROUP_SET_CONTAINER:
            fd = int.from_bytes(_Arg(arg).read(0, 4), "little", signed=True)
            if fd < 0:
                raise InvalidArgument(f"GROUP_SET_CONTAINER: fd {fd}")
            f = proc.files.get(fd)
            if f is None:
                raise BadFileDescriptor(f"GROUP_SET_CONTAINER: fd {fd} is not open")
            self._set_container(f)
            return 0
        if request == u.VFIO_GROUP_UNSET_CONTAINER:
            if self.container is None and self.iommufd is None:
                raise InvalidArgument("GROUP_UNSET_CONTAINER: no container")
            if self.container is not None and self.devices_open:
                raise Busy("GROUP_UNSET_CONTAINER: device fds are open")
            self.unset_container()
            return 0
        if request == u.VFIO_GROUP_GET_DEVICE_FD:
            raw = bytes(_Arg(arg).buf)
            name = raw.split(b"\0", 1)[0].decode(errors="replace")
            if self.iommufd is None and (self.container is None or
                                         self.container.iommu is None):
                raise InvalidArgument("GROUP_GET_DEVICE_FD: the group has no IOMMU yet")
            dev = next((d for d in self.machine.group_devices(self.id) if d.bdf == name), None)
            if dev is None:
                raise NoDevice(f"GROUP_GET_DEVICE_FD: no device {name!r} in group {self.id}")
            df = DeviceFile(self, dev)
            if self.iommufd is not None:
                df.bind_compat(self.iommufd)
            self.devices_open += 1
            return proc.install(df)
        raise NotATty(f"ioctl {request:#x}: unknown to a VFIO group")

    def _set_container(self, f: VfioFile) -> None:
        """``vfio_group_ioctl_set_container``: EINVAL when already set; a type1 container
        takes the group, an iommufd gets its compatibility IOAS; EBADFD for other files."""
        from ..iommufd.file import IommufdFile
        if self.container is not None or self.iommufd is not None:
            raise InvalidArgument("GROUP_SET_CONTAINER: the group already has one")
        if isinstance(f, Container):
            f.add_group(self)
            self.container = f
        elif isinstance(f, IommufdFile):
            f.ctx.compat_ioas_create()
            self.iommufd = f
        else:
            raise kernel_error(EBADFD, "GROUP_SET_CONTAINER: the fd is neither a container "
                               "nor an iommufd")

    def unset_container(self) -> None:
        if self.container is not None:
            self.container.remove_group(self)
            self.container = None
        self.iommufd = None

    def release(self) -> None:
        self.unset_container()
        self.machine.open_groups.discard(self.id)


class DeviceFile(VfioFile):
    """A vfio-pci device fd: GET_INFO, GET_REGION_INFO, BAR mmap."""

    def __init__(self, group: GroupFile, dev: PciDevice) -> None:
        self.group = group
        self.dev = dev
        self.iommufd: IommufdCtx | None = None
        self.idev: IommufdDevice | None = None

    def bind_compat(self, f: IommufdFile) -> None:
        """``vfio_df_iommufd_bind`` then ``vfio_iommufd_compat_attach_ioas``: the device
        joins the context's compatibility IOAS (ENODEV if it was cleared)."""
        from ..iommufd.vfio_compat import compat_ioas
        idev = f.ctx.bind(self.dev)
        try:
            f.ctx.attach(idev, compat_ioas(f).id)
        except KernelError:
            f.ctx.unbind(idev)
            raise
        self.iommufd, self.idev = f.ctx, idev

    def ioctl(self, proc: Process, request: int, arg: int | bytes | bytearray) -> int:
        if request == u.VFIO_DEVICE_GET_INFO:
            a = _Arg(arg)
            argsz = int.from_bytes(a.read(0, 4), "little")
            a.read(0, u.DEVICE_INFO_MINSZ)
            if argsz < u.DEVICE_INFO_MINSZ:
                raise InvalidArgument(f"DEVICE_GET_INFO: argsz {argsz}")
            info = u.DEVICE_INFO.pack(argsz, u.VFIO_DEVICE_FLAGS_PCI | u.VFIO_DEVICE_FLAGS_RESET,
                                      u.VFIO_PCI_NUM_REGIONS, u.VFIO_PCI_NUM_IRQS, 0, 0)
            a.write(0, info[:u.DEVICE_INFO_MINSZ])
            return 0
        if request == u.VFIO_DEVICE_GET_REGION_INFO:
            a = _Arg(arg)
            argsz, _, index, _, _, _ = u.REGION_INFO.unpack(a.read(0, u.REGION_INFO.size))
            if argsz < u.REGION_INFO.size:
                raise InvalidArgument(f"DEVICE_GET_REGION_INFO: argsz {argsz}")
            if index >= u.VFIO_PCI_NUM_REGIONS:
                raise InvalidArgument(f"DEVICE_GET_REGION_INFO: index {index}")
            size, flags = 0, 0
            if index == u.VFIO_PCI_BAR0_REGION_INDEX:
                size = self.dev.bar0_size
                flags = (u.VFIO_REGION_INFO_FLAG_READ | u.VFIO_REGION_INFO_FLAG_WRITE |
                         u.VFIO_REGION_INFO_FLAG_MMAP)
            elif index == u.VFIO_PCI_CONFIG_REGION_INDEX:
                size = 256
                flags = u.VFIO_REGION_INFO_FLAG_READ | u.VFIO_REGION_INFO_FLAG_WRITE
            a.write(0, u.REGION_INFO.pack(argsz, flags, index, 0, size,
                                          index << u.VFIO_PCI_OFFSET_SHIFT))
            return 0
        raise NotATty(f"ioctl {request:#x}: unknown to a vfio-pci device")

    def mmap_region(self, length: int, offset: int) -> int:
        """``vfio_pci_core_mmap``: BAR 0 only, within its size; the BAR's physical address."""
        index = offset >> u.VFIO_PCI_OFFSET_SHIFT
        start = offset & ((1 << u.VFIO_PCI_OFFSET_SHIFT) - 1)
        if index != u.VFIO_PCI_BAR0_REGION_INDEX or start & 0xFFF or \
                start + length > self.dev.bar0_size:
            raise InvalidArgument(f"mmap: offset {offset:#x} length {length:#x} is not "
                                  "inside BAR 0")
        return self.dev.bar0 + start

    def release(self) -> None:
        if self.iommufd is not None and self.idev is not None:
            self.iommufd.unbind(self.idev)
        self.group.devices_open -= 1

