"""The files behind /dev/vfio: container and group fds (drivers/vfio/container.c, group.c,
vfio_iommu_type1.c's ioctl handlers); the device fds are in :mod:`.device` and
:mod:`.cdev`.

Each ioctl reads the argument the way the kernel copies it (``minsz`` first,
then ``argsz`` rules), checks in the kernel's order and writes back what
the kernel writes back. A buffer shorter than what the kernel would touch
gives EFAULT.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

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
from ..kernel import LINUX_7_0
from ..mem.mm import access_ok
from ..syscall.file import File, collect_cycles, fput, get_file
from . import uapi as u
from .type1 import Type1Report, VfioIommu, _ffs, check_range_7_0, type1_check_extension

if TYPE_CHECKING:
    from ..iommufd.file import IommufdFile
    from ..syscall.devtable import DeviceTable
    from ..syscall.host import Host
    from ..syscall.process import Process
    from .device import VfioDevice

EBADFD = 77
#: VFIO_MINOR (include/linux/miscdevice.h)
VFIO_MINOR = 196

__all__ = ["CONTAINER_IOCTLS", "GROUP_IOCTLS", "Container", "GroupFile", "VfioFile",
           "collect_cycles", "fput", "get_file", "open_container", "open_group", "vfio_init"]

#: The open file (the syscall layer's :class:`~iommulab.syscall.file.File`), by the name
#: the VFIO and iommufd code has always used for it.
VfioFile = File


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


#: the group nodes' major (``vfio_group_init``'s ``alloc_chrdev_region``: dynamic, the
#: value a typical boot gives)
GROUP_MAJOR = 243


def open_container(proc: Process, path: str) -> VfioFile:
    """``/dev/vfio/vfio``: ``vfio_fops_open``, a new container."""
    return Container(proc.machine)


def _group_present(m: Host, group_id: int) -> bool:
    """``/dev/vfio/<group>`` exists once a device of the group is bound to vfio-pci
    (``vfio_group_find_or_alloc`` at its probe)."""
    return any(d.driver == "vfio-pci" for d in m.group_devices(group_id))


def open_group(proc: Process, path: str) -> VfioFile:
    """``/dev/vfio/<group>``: ``vfio_group_fops_open``."""
    m = proc.machine
    name = path.removeprefix("/dev/vfio/")
    group_id = int(name)
    devices = m.group_devices(group_id)
    if any(d.driver != "vfio-pci" for d in devices):
        raise NoEntry(f"open: {path}: the group's devices are not bound to vfio-pci")
    # vfio_group_fops_open: EBUSY while a cdev of one of its devices is bound
    # (cdev_device_open_cnt), then while the group is open
    bound = [vd.dev.bdf for vd in _vfio_devices(m, group_id) if vd.cdev_opened]
    if bound:
        raise Busy(f"open: {path}: the cdev of {', '.join(bound)} is bound to an iommufd")
    if group_id in m.open_groups:
        raise Busy(f"open: {path}: the group is already open")
    m.open_groups.add(group_id)
    return GroupFile(m, group_id)


def vfio_init(table: DeviceTable) -> None:
    """VFIO's ``module_init`` (``vfio_init``): ``/dev/vfio/vfio``, the type1 container,
    unless CONFIG_IOMMUFD_VFIO_CONTAINER has iommufd provide it (container.c is then not
    built), and the region of group nodes ``/dev/vfio/<group>``."""
    table.misc_register("/dev/vfio/vfio", VFIO_MINOR, open_container,
                        present=lambda m, minor: not m.kconfig["CONFIG_IOMMUFD_VFIO_CONTAINER"])
    table.cdev_add("/dev/vfio/", GROUP_MAJOR, open_group, _group_present)


def _vfio_devices(m: Host, group_id: int) -> list[VfioDevice]:
    """The ``struct vfio_device`` of each device of the group that has been opened."""
    return [vd for d in m.group_devices(group_id) if (vd := m.vfio_devices.get(d.bdf))]


class Container(VfioFile):
    """``struct vfio_container``: groups, and the type1 IOMMU once SET_IOMMU ran."""

    def __init__(self, machine: Host) -> None:
        machine.mem.fail_nth.check("kzalloc(vfio_container)")  # vfio_fops_open
        self.machine = machine
        self.groups: list[GroupFile] = []
        self.iommu: VfioIommu | None = None

    def report(self) -> Type1Report:
        """Lab statistics of the container (:meth:`VfioIommu.report`)."""
        if self.iommu is None:
            raise InvalidArgument("report: no IOMMU driver set on the container")
        return self.iommu.report()

    def ioctl(self, proc: Process, request: int, arg: int | bytes | bytearray) -> int:
        """``vfio_fops_unl_ioctl``: its own requests (:data:`CONTAINER_IOCTLS`), then the
        IOMMU driver's (``vfio_iommu_type1_ioctl``, :data:`TYPE1_IOCTLS`); EINVAL for
        anything else before a driver is set, ENOTTY after."""
        if request == u.VFIO_GET_API_VERSION:
            return u.VFIO_API_VERSION
        if request == u.VFIO_CHECK_EXTENSION:
            return type1_check_extension(self.iommu, _int(arg), self.machine.kernel)
        if request == u.VFIO_SET_IOMMU:
            self._set_iommu(_int(arg), proc)
            return 0
        if self.iommu is None:  # no driver: the kernel's default -EINVAL
            raise InvalidArgument(f"ioctl {request:#x}: no IOMMU driver set on the container")
        handler = _TYPE1_IOCTLS.get(request)
        if handler is None:
            raise NotATty(f"ioctl {request:#x}: unknown to the type1 IOMMU")
        return handler(self, proc, _Arg(arg))

    # -- SET_IOMMU and groups ----------------------------------------------------------------------
    def _set_iommu(self, type: int, proc: Process) -> None:
        """``vfio_ioctl_set_iommu``: EINVAL without a group or with a driver already set;
        the type1 driver takes a type its CHECK_EXTENSION answers for (ENODEV otherwise),
        and its ``open`` refuses the extensions that are not IOMMU types (EINVAL); then
        every group is attached, the newest first (``list_add`` puts a group at the head
        of the container's list)."""
        if not self.groups or self.iommu is not None:
            raise InvalidArgument("SET_IOMMU: no group in the container, or already set")
        kernel = self.machine.kernel
        if type1_check_extension(None, type, kernel) <= 0:
            raise NoDevice(f"SET_IOMMU: no IOMMU driver for type {type}")
        if type not in (u.VFIO_TYPE1_IOMMU, u.VFIO_TYPE1v2_IOMMU, u.VFIO_TYPE1_NESTING_IOMMU):
            raise InvalidArgument(f"SET_IOMMU: type {type} is an extension, not an IOMMU "
                                  "type (vfio_iommu_type1_open)")
        params = self.machine.module_params
        self.machine.mem.fail_nth.check("kzalloc(vfio_iommu)")  # vfio_iommu_type1_open
        iommu = VfioIommu(type == u.VFIO_TYPE1v2_IOMMU,
                          params["vfio_iommu_type1.dma_entry_limit"],
                          bool(params["vfio_iommu_type1.disable_hugepages"]),
                          bool(params["vfio_iommu_type1.allow_unsafe_interrupts"]),
                          kernel=kernel, nesting=type == u.VFIO_TYPE1_NESTING_IOMMU)
        attached: list[GroupFile] = []
        try:
            for g in self.groups:
                self._attach(iommu, g, proc)
                attached.append(g)
        except KernelError:
            for g in reversed(attached):
                self._detach(iommu, g)
            raise
        self.iommu = iommu

    def _attach(self, iommu: VfioIommu, g: GroupFile, proc: Process) -> None:
        """``vfio_iommu_type1_attach_group``'s start: its group and domain structures
        (``kzalloc``), a paging domain, the group attached (``iommu_attach_group``: it is
        on its blocking domain, VFIO owns it); then type1 checks and keeps or swaps it
        (``proc``: the process attaching, ``current`` for a replay that pins). On failure
        the group is detached again, back to blocking."""
        core = self.machine.core
        group = g.group
        fail = self.machine.mem.fail_nth
        fail.check("kzalloc(vfio_iommu_group)")
        fail.check("kzalloc(vfio_domain)")
        first = group.devices[0].dev_iommu  # iommu_paging_domain_alloc(first device)
        domain: IommuDomain = core.driver.domain_alloc_paging(
            first.priv if first is not None else None, DomainType.UNMANAGED)
        if iommu.nesting:
            try:
                _iommu_enable_nesting(core.driver, domain)
            except KernelError:
                domain.free()
                raise

        def join(existing: IommuDomain) -> bool:
            """vfio_iommu_type1_attach_group's move onto a compatible domain: detach from
            ``domain``, iommu_attach_group(d->domain), and if that is refused attach
            ``domain`` again (7.0's revert leaves the refusing device where it was)."""
            core.detach_group(group)
            try:
                core.attach_group(existing, group)
            except KernelError:
                core.attach_group(domain, group)
                return False
            return True

        try:
            core.attach_group(domain, group)
            enforce_cc = bool(getattr(core.driver, "enforce_cache_coherency",
                                      lambda d: False)(domain))
            target = iommu.attach_group(group, domain, msi_isolated=True,
                                        enforce_cc=enforce_cc, join=join,
                                        current=proc)
        except KernelError:
            core.detach_group(group)  # out_detach; a no-op if the attach itself failed
            domain.free()
            raise
        if target is not domain:  # joined an existing domain
            domain.free()

    def _detach(self, iommu: VfioIommu, g: GroupFile) -> None:
        """``vfio_iommu_type1_detach_group``: ``iommu_detach_group`` leaves the group on
        its blocking domain while VFIO still owns it, before the mappings of a last
        domain are unmapped and unpinned; an emptied domain is freed."""
        core = self.machine.core
        freed = iommu.detach_group(g.group, lambda: core.detach_group(g.group))
        if freed is not None:
            freed.free()

    def add_group(self, g: GroupFile, proc: Process) -> None:
        """``vfio_container_attach_group``: the VFIO group claims DMA ownership of its
        IOMMU group (``iommu_group_claim_dma_owner``: EPERM if anyone owns it, EBUSY if
        it is not on its default domain, which moves it to the blocking domain); with a
        driver set, the group is attached now (ownership released if that fails); the
        group goes to the head of the list (``list_add``)."""
        core = self.machine.core
        core.group_claim_dma_owner(g.group, g)
        if self.iommu is not None:
            try:
                self._attach(self.iommu, g, proc)
            except KernelError:
                core.group_release_dma_owner(g.group)
                raise
        self.groups.insert(0, g)

    def remove_group(self, g: GroupFile) -> None:
        """``vfio_group_detach_container``: type1 detaches the group, then its DMA
        ownership is released (back to the default domain); the last group out drops
        the IOMMU driver."""
        if self.iommu is not None:
            self._detach(self.iommu, g)
        self.machine.core.group_release_dma_owner(g.group)
        self.groups.remove(g)
        if not self.groups:
            self.iommu = None

    # -- type1 ioctls ------------------------------------------------------------------------------
    def _get_info(self, a: _Arg) -> int:
        """``vfio_iommu_type1_get_info``: the argsz-growth rule for the capability chain;
        ``min(argsz, 24)`` bytes of the struct are written back, from the argsz the user
        gave, not the grown one."""
        argsz = int.from_bytes(a.read(0, u.IOMMU_INFO_MINSZ)[:4], "little")
        if argsz < u.IOMMU_INFO_MINSZ:
            raise InvalidArgument(f"GET_INFO: argsz {argsz} < {u.IOMMU_INFO_MINSZ}")
        minsz = min(argsz, u.IOMMU_INFO.size)
        assert self.iommu is not None
        caps = self.iommu.info_caps(self.machine.mem.fail_nth)
        flags = u.VFIO_IOMMU_INFO_PGSIZES | (u.VFIO_IOMMU_INFO_CAPS if caps else 0)
        cap_offset = 0
        if caps:
            if argsz < u.IOMMU_INFO.size + len(caps):
                argsz = u.IOMMU_INFO.size + len(caps)
            else:
                a.write(u.IOMMU_INFO.size, caps)
                cap_offset = u.IOMMU_INFO.size
        info = u.IOMMU_INFO.pack(argsz, flags, self.iommu.pgsize_bitmap, cap_offset, 0)
        a.write(0, info[:minsz])
        return 0

    def _map_dma(self, proc: Process, a: _Arg) -> int:
        argsz, flags, vaddr, iova, size = u.DMA_MAP.unpack(a.read(0, u.DMA_MAP.size))
        valid = u.VFIO_DMA_MAP_FLAG_READ | u.VFIO_DMA_MAP_FLAG_WRITE | u.VFIO_DMA_MAP_FLAG_VADDR
        if argsz < u.DMA_MAP.size or flags & ~valid:
            raise InvalidArgument(f"MAP_DMA: argsz {argsz} or flags {flags:#x} invalid")
        assert self.iommu is not None
        self.iommu.map_dma(proc, flags, vaddr, iova, size)
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
            _verify_bitmap(data, bsize, size >> _ffs(pgsize) if pgsize else 0)
            dirty = (pgsize, data, proc.mm)
        assert self.iommu is not None
        unmapped = self.iommu.unmap_dma(flags, iova, size, dirty)
        a.write(0, u.DMA_UNMAP.pack(argsz, flags, iova, unmapped))
        return 0

    def _dirty_pages(self, proc: Process, a: _Arg) -> int:
        """``vfio_iommu_type1_dirty_pages``: EACCES for v1; exactly one of START, STOP,
        GET_BITMAP (no flag falls through every branch to EINVAL). Linux 7.0 checks a
        GET_BITMAP range's size and wrap before the bitmap, the wrap with EOVERFLOW."""
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
            if self.machine.kernel >= LINUX_7_0:
                check_range_7_0("DIRTY_PAGES GET_BITMAP", iova, size)
            elif iova + size >= 1 << 64:  # iova + size < iova in u64
                raise InvalidArgument("DIRTY_PAGES GET_BITMAP: range wraps")
            _verify_bitmap(data, bsize, size >> _ffs(pgsize) if pgsize else 0)
            self.iommu.dirty_get_bitmap(iova, size, pgsize, data, proc.mm)
        else:
            raise InvalidArgument("DIRTY_PAGES: no flag set")
        return 0

    def release(self) -> None:
        """``vfio_fops_release`` only puts the file's reference to the container: each
        group holds one too (``vfio_container_get`` in SET_CONTAINER), so its groups stay
        attached, their mappings mapped and the IOMMU set until the last group leaves."""


def _verify_bitmap(data: int, bsize: int, npages: int) -> None:
    """``access_ok`` (an address range check: an unmapped bitmap passes and faults when
    written, EFAULT) then ``verify_bitmap_size``."""
    if not access_ok(data, bsize):
        raise InvalidArgument(f"dirty bitmap [{data:#x}, +{bsize:#x}) is not in user space")
    if not npages or not bsize or bsize > u.DIRTY_BITMAP_SIZE_MAX or \
            bsize < u.DIRTY_BITMAP_BYTES(npages):
        raise InvalidArgument(f"dirty bitmap of {bsize} bytes for {npages} pages")


def _iommu_enable_nesting(driver: object, domain: IommuDomain) -> None:
    """``iommu_enable_nesting`` (Linux 6.12, for VFIO_TYPE1_NESTING_IOMMU): EINVAL unless
    the driver has ``enable_nesting`` (of the model's drivers only arm-smmu-v3 has)."""
    enable = getattr(driver, "enable_nesting", None)
    if domain.type != DomainType.UNMANAGED or enable is None:
        raise InvalidArgument("SET_IOMMU: the IOMMU driver cannot enable nesting")
    enable(domain)


def _int(arg: int | bytes | bytearray) -> int:
    if not isinstance(arg, int):
        raise InvalidArgument("ioctl: this request takes an integer argument")
    return arg


class GroupFile(VfioFile):
    """``/dev/vfio/<group>``. ``devices_open`` counts the devices using its container
    (``container_users`` - 1); each holds the group file open."""

    def __init__(self, machine: Host, group_id: int) -> None:
        self.machine = machine
        self.id = group_id
        self.container: Container | None = None
        self.iommufd: IommufdFile | None = None  # group->iommufd
        self.devices_open = 0
        group = machine.core.groups[group_id]
        self.group = group

    def ioctl(self, proc: Process, request: int, arg: int | bytes | bytearray) -> int:
        """``vfio_group_fops_unl_ioctl`` (:data:`GROUP_IOCTLS`); ENOTTY for others."""
        handler = _GROUP_IOCTLS.get(request)
        if handler is None:
            raise NotATty(f"ioctl {request:#x}: unknown to a VFIO group")
        return handler(self, proc, arg)

    def _ioctl_set_container(self, proc: Process, arg: int | bytes | bytearray) -> int:
        fd = int.from_bytes(_Arg(arg).read(0, 4), "little", signed=True)
        f = proc.fget(fd)
        if f is None:  # fdget(): a negative fd is as closed as any other
            raise BadFileDescriptor(f"GROUP_SET_CONTAINER: fd {fd} is not open")
        self._set_container(f, proc)
        return 0

    def _ioctl_unset_container(self, proc: Process, arg: int | bytes | bytearray) -> int:
        """``vfio_group_ioctl_unset_container``: EINVAL without one, EBUSY while device
        fds use the container."""
        if self.container is None and self.iommufd is None:
            raise InvalidArgument("GROUP_UNSET_CONTAINER: no container")
        if self.container is not None and self.devices_open:
            raise Busy("GROUP_UNSET_CONTAINER: device fds are open")
        self.unset_container()
        return 0

    def has_iommu(self) -> bool:
        """``vfio_group_has_iommu``: a container or an iommufd."""
        return self.container is not None or self.iommufd is not None

    def _get_status(self, a: _Arg) -> int:
        """``vfio_group_ioctl_get_status``: VIABLE | CONTAINER_SET once the group has a
        container or an iommufd; before that VIABLE unless anyone owns the group's DMA
        (``iommu_group_dma_owner_claimed``: an iommufd bound one of its devices, or a
        kernel driver uses the DMA API)."""
        argsz, _ = u.GROUP_STATUS.unpack(a.read(0, u.GROUP_STATUS.size))
        if argsz < u.GROUP_STATUS.size:
            raise InvalidArgument(f"GROUP_GET_STATUS: argsz {argsz} < {u.GROUP_STATUS.size}")
        if self.has_iommu():
            flags = u.VFIO_GROUP_FLAGS_VIABLE | u.VFIO_GROUP_FLAGS_CONTAINER_SET
        elif self.machine.core.group_dma_owner_claimed(self.group):
            flags = 0
        else:
            flags = u.VFIO_GROUP_FLAGS_VIABLE
        a.write(0, u.GROUP_STATUS.pack(argsz, flags))
        return 0

    def _get_device_fd(self, proc: Process, a: _Arg) -> int:
        """``vfio_group_ioctl_get_device_fd``: ENODEV for a name no device of the group
        has, then the fd (EMFILE), then ``vfio_device_open_file`` (EINVAL without a
        container or iommufd), installed at that fd."""
        from .device import DeviceFile
        self.machine.mem.fail_nth.check("strndup_user")  # the name, copied in
        name = bytes(a.buf).split(b"\0", 1)[0].decode(errors="replace")
        dev = next((d for d in self.machine.group_devices(self.id) if d.bdf == name), None)
        if dev is None:
            raise NoDevice(f"GROUP_GET_DEVICE_FD: no device {name!r} in group {self.id}")
        fd = proc.get_unused_fd()
        return proc.fd_install(fd, DeviceFile.open(self, dev))

    def _set_container(self, f: VfioFile, proc: Process) -> None:
        """``vfio_group_ioctl_set_container``: EINVAL when already set; a type1 container
        takes the group, an iommufd gets its compatibility IOAS; EBADFD for other files."""
        from ..iommufd.file import IommufdFile
        if self.container is not None or self.iommufd is not None:
            raise InvalidArgument("GROUP_SET_CONTAINER: the group already has one")
        if isinstance(f, Container):
            f.add_group(self, proc)
            self.container = f
        elif isinstance(f, IommufdFile):
            f.ctx.compat_ioas_create()
            self.iommufd = get_file(f)  # iommufd_ctx_from_file: held until unset
        else:
            raise kernel_error(EBADFD, "GROUP_SET_CONTAINER: the fd is neither a container "
                               "nor an iommufd")

    def holds(self) -> list[VfioFile]:
        """The iommufd it was set to (``iommufd_ctx_from_file``'s reference)."""
        return [self.iommufd] if self.iommufd is not None else []

    def unset_container(self) -> None:
        if self.container is not None:
            self.container.remove_group(self)
            self.container = None
        if self.iommufd is not None:
            fput(self.iommufd)  # iommufd_ctx_put
            self.iommufd = None

    def release(self) -> None:
        self.unset_container()
        self.machine.open_groups.discard(self.id)


#: the IOMMU driver's requests a container passes on (``vfio_iommu_type1_ioctl``)
_TYPE1_IOCTLS: dict[int, Callable[[Container, Process, _Arg], int]] = {
    u.VFIO_IOMMU_GET_INFO: lambda c, proc, a: c._get_info(a),
    u.VFIO_IOMMU_MAP_DMA: Container._map_dma,
    u.VFIO_IOMMU_UNMAP_DMA: Container._unmap_dma,
    u.VFIO_IOMMU_DIRTY_PAGES: Container._dirty_pages,
}
#: what a container fd answers: ``vfio_fops_unl_ioctl``'s own requests, then the driver's
CONTAINER_IOCTLS: tuple[int, ...] = (u.VFIO_GET_API_VERSION, u.VFIO_CHECK_EXTENSION,
                                     u.VFIO_SET_IOMMU, *_TYPE1_IOCTLS)
#: ``vfio_group_fops_unl_ioctl``'s switch
_GROUP_IOCTLS: dict[int, Callable[[GroupFile, Process, int | bytes | bytearray], int]] = {
    u.VFIO_GROUP_GET_DEVICE_FD: lambda g, proc, arg: g._get_device_fd(proc, _Arg(arg)),
    u.VFIO_GROUP_GET_STATUS: lambda g, proc, arg: g._get_status(_Arg(arg)),
    u.VFIO_GROUP_SET_CONTAINER: GroupFile._ioctl_set_container,
    u.VFIO_GROUP_UNSET_CONTAINER: GroupFile._ioctl_unset_container,
}
GROUP_IOCTLS: tuple[int, ...] = tuple(_GROUP_IOCTLS)
