"""``/dev/iommu``: the iommufd ioctls, their argument checks in the kernel's order and their
responses (drivers/iommu/iommufd/main.c, ioas.c, hw_pagetable.c, device.c), as Linux 6.12
or 7.0 answers them (the machine's ``kernel``).

Every command goes through :func:`~iommulab.iommufd.uapi.read_ucmd` (ENOTTY
for a number the release's table lacks, then the size rule); the handlers
follow the kernel's functions named in their docstrings. Arrays and bitmaps the
commands point at are user memory of the calling process (EFAULT when not
mapped). The mock platform adds ``IOMMU_TEST_CMD``
(:mod:`iommulab.iommufd.selftest`); the VFIO compatibility container
(:mod:`iommulab.iommufd.vfio_compat`) answers the VFIO container ioctls.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import (
    BadAddress,
    BadFileDescriptor,
    InvalidArgument,
    KernelError,
    NoDevice,
    NoEntry,
    NotPermitted,
    NotSupported,
    Overflow,
    kernel_error,
)
from ..iommu.dirty import BatchedDirtyBitmap, IommuDirtyBitmap, IovaBitmap, user_iova_bitmap
from ..iommu.gather import IommuIotlbGather
from ..iommu.resv import IommuCap
from ..iommu.user_data import IommuUserData, IommuUserDataArray, page_cached_reader
from ..kernel import LINUX_7_0
from ..mem.fault import FailNth, xa_nodes_needed
from ..mem.mm import MmStruct, access_ok
from ..prot import Prot
from ..sizes import PAGE_SIZE
from ..syscall.file import File
from ..syscall.memfd import MemFdFile
from ..uapi import iommufd as _h
from . import uapi as u
from .eventq import FaultObject, fault_alloc
from .io_pagetable import PagesSlice
from .iova_space import ULONG_MAX
from .objects import Device, HwptNested, HwptPaging, Ioas, IommufdCtx
from .pages import ACCOUNT_MM, ACCOUNT_NONE, ACCOUNT_USER, Account, IoptPages, PfnSource
from .sources import FileSource, OtherFileSource, UserSource
from .viommu import (
    Viommu,
    abort,
    vdevice_alloc,
    veventq_alloc,
    viommu_alloc,
    viommu_alloc_hwpt_nested,
)

if TYPE_CHECKING:
    from ..syscall.devtable import DeviceTable
    from ..syscall.host import Host
    from ..syscall.process import Process

__all__ = ["IommufdFile", "MemFdFile", "iommufd_init", "open_iommufd", "open_vfio_compat"]

_ZEROS = bytes(1 << 20)  # what _clear_user writes, a chunk at a time
_MAP_FLAGS = u.IOMMU_IOAS_MAP_FIXED_IOVA | u.IOMMU_IOAS_MAP_WRITEABLE | \
    u.IOMMU_IOAS_MAP_READABLE
_SIZE_MAX = ULONG_MAX


def _prot(flags: int) -> int:
    """``conv_iommu_prot``: IOMMU_CACHE always."""
    prot = int(Prot.CACHE)
    if flags & u.IOMMU_IOAS_MAP_WRITEABLE:
        prot |= Prot.WRITE
    if flags & u.IOMMU_IOAS_MAP_READABLE:
        prot |= Prot.READ
    return prot


class IommufdFile(File):
    """One open of ``/dev/iommu`` (or of ``/dev/vfio/vfio`` when iommufd provides it:
    ``vfio_container``): an :class:`IommufdCtx` and its ioctls."""

    def __init__(self, machine: Host, *, vfio_container: bool = False) -> None:
        machine.mem.fail_nth.check("kzalloc(iommufd_ctx)")  # iommufd_fops_open
        self.machine = machine
        self.ctx = IommufdCtx(machine.core, machine.mem, machine.iommufd_test_memory_limit,
                              machine.cache_flush, kernel=machine.kernel,
                              vfio_container=vfio_container, file=self)

    def release(self) -> None:
        self.ctx.release()

    def holds(self) -> list[File]:
        """The files its IOASes' pages hold (IOAS_MAP_FILE of a file that is not a
        memfd), once per pages. O(areas)."""
        held: dict[int, File] = {}
        for obj in list(self.ctx.objects.values()):
            if isinstance(obj, Ioas):
                for area in obj.iopt.areas():
                    pages = area.pages
                    if pages is not None and isinstance(pages.source, OtherFileSource):
                        held[id(pages)] = pages.source.file
        return list(held.values())

    def collect(self) -> None:
        """Release the context now (nothing outside holds this file): the files its
        pages hold go with their IOASes."""
        if not self.ctx.releasing:
            self.ctx.release()

    def ioctl(self, proc: Process, request: int, arg: int | bytes | bytearray) -> int:
        cmd = u.command(request, self.machine.kernel)
        if cmd is None:
            if request == u.IOMMU_TEST_CMD and self.machine.platform == "mock":
                from .selftest import test_cmd
                return test_cmd(self, proc, _buf(arg))
            from .vfio_compat import vfio_compat_ioctl
            return vfio_compat_ioctl(self, proc, request, arg)
        buf = _buf(arg)
        fields, usize = u.read_ucmd(buf, cmd)
        handler = getattr(self, "_" + cmd.name.removeprefix("IOMMU_").lower())
        return int(handler(proc, buf, usize, *fields[1:]))

    # -- helpers ---------------------------------------------------------------------------
    def _respond(self, buf: bytearray, request: int, usize: int, *fields: Any) -> None:
        u.respond(buf, u.COMMANDS[request], usize, (usize, *fields))

    def ioas(self, id: int) -> Ioas:
        obj: Ioas = self.ctx.get(id, Ioas)
        return obj

    def account(self, proc: Process) -> Account:
        """``iopt_alloc_pages``' accounting: NONE with CAP_IPC_LOCK, else USER, or MM
        when the context was switched to it."""
        mode = ACCOUNT_NONE if proc.cap_ipc_lock else ACCOUNT_USER
        if mode == ACCOUNT_USER and self.ctx.account_mode == ACCOUNT_MM:
            mode = ACCOUNT_MM
        return Account(mode, proc.mm, proc.user, proc.memlock_limit)

    def new_pages(self, proc: Process, source: PfnSource, start_byte: int,
                  length: int, writable: bool, *, uptr: int | None = None) -> IoptPages:
        """``iopt_alloc_pages``: EINVAL for a length of 0 or past SIZE_MAX - PAGE_SIZE;
        given ``uptr`` (6.12's takes the user address), then EOVERFLOW when ``uptr +
        length`` wraps; then the allocation."""
        _check_pages_length(length)
        if uptr is not None:
            _check_user_wrap(uptr, length)
        self.machine.mem.fail_nth.check("kzalloc(iopt_pages)")
        npages = -(-(length + start_byte) // PAGE_SIZE)
        return IoptPages(source, npages, writable, self.account(proc),
                         fail_nth=self.machine.mem.fail_nth, stats=self.ctx.stats,
                         limit=self.ctx.temp_memory_limit, flusher=self.ctx.cache_flush)

    def map_user_pages(self, proc: Process, ioas: Ioas, user_va: int, length: int,
                       iova: int, prot: int, *, fixed: bool) -> int:
        """``iopt_map_user_pages``: the IOVA used. 7.0's ``iopt_alloc_user_pages`` tests
        the user range for a wrap (EOVERFLOW) before :meth:`new_pages` tests the length;
        6.12's ``iopt_alloc_pages`` tests the length first."""
        new = self.machine.kernel >= LINUX_7_0
        if new:
            _check_user_wrap(user_va, length)
        start_byte = user_va % PAGE_SIZE
        pages = self.new_pages(proc, UserSource(proc.mm, user_va - start_byte), start_byte,
                               length, bool(prot & Prot.WRITE),
                               uptr=None if new else user_va)
        return self.map_pages(ioas, pages, start_byte, length, iova, prot, fixed=fixed,
                              addr=user_va)

    def map_pages(self, ioas: Ioas, pages: IoptPages, start_byte: int, length: int,
                  iova: int, prot: int, *, fixed: bool, addr: int) -> int:
        """``iopt_map_common``: the pages go if nothing uses them after an error."""
        try:
            return ioas.iopt.map_pages([PagesSlice(pages, start_byte, length)], iova, prot,
                                       fixed=fixed, addr=addr)
        finally:
            if not pages.users:
                pages.destroy()

    # -- commands --------------------------------------------------------------------------
    def _destroy(self, proc: Process, buf: bytearray, usize: int, id: int) -> int:
        """``iommufd_destroy``."""
        self.ctx.destroy(id)
        return 0

    def _ioas_alloc(self, proc: Process, buf: bytearray, usize: int, flags: int,
                    out: int) -> int:
        """``iommufd_ioas_alloc_ioctl``: EOPNOTSUPP for any flag; the id is written back
        before the IOAS is published, and an EFAULT there destroys it again
        (``iommufd_object_abort_and_destroy``: the id is free for the next object)."""
        if flags:
            raise NotSupported(f"IOAS_ALLOC: flags {flags:#x}")
        id, ioas = self.ctx.ioas_new()
        try:
            self._respond(buf, u.IOMMU_IOAS_ALLOC, usize, flags, id)
        except KernelError:
            ioas.destroy(self.ctx)
            self.ctx.abort_id(id)
            raise
        self.ctx.add(ioas, id)
        return 0

    def _ioas_iova_ranges(self, proc: Process, buf: bytearray, usize: int, ioas_id: int,
                          num: int, rsvd: int, uptr: int, align: int) -> int:
        """``iommufd_ioas_iova_ranges``: the holes of the reserved ranges; ``num_iovas`` is
        set to how many there are and EMSGSIZE returned (after the copy back) when the
        user's array was too short."""
        if rsvd:
            raise NotSupported("IOVA_RANGES: __reserved is not zero")
        ioas = self.ioas(ioas_id)
        holes = ioas.iopt.space.holes_of_reserved()
        for i, (start, last) in enumerate(holes[:num]):
            proc.mm.write(uptr + 16 * i, u.IOVA_RANGE.pack(start, last))
        self._respond(buf, u.IOMMU_IOAS_IOVA_RANGES, usize, ioas_id, len(holes), 0, uptr,
                      ioas.iopt.iova_alignment)
        if len(holes) > num:
            raise kernel_error(90, f"IOVA_RANGES: {len(holes)} ranges, room for {num}")
        return 0

    def _ioas_allow_iovas(self, proc: Process, buf: bytearray, usize: int, ioas_id: int,
                          num: int, rsvd: int, uptr: int) -> int:
        """``iommufd_ioas_allow_iovas``: the ranges are read one at a time from user
        memory (EFAULT) as :meth:`~.iova_space.IovaSpace.set_allowed` checks them, and
        a node is allocated for each once it passed (``iommufd_ioas_load_iovas``)."""
        if rsvd:
            raise NotSupported("ALLOW_IOVAS: __reserved is not zero")
        ioas = self.ioas(ioas_id)
        fail_nth = self.machine.mem.fail_nth

        def ranges() -> Iterator[tuple[int, int]]:
            for i in range(num):
                yield u.IOVA_RANGE.unpack(proc.mm.read(uptr + 16 * i, 16))
                # resumed when set_allowed asks for the next range: this one is checked
                fail_nth.check("kzalloc(iopt_allowed)")

        ioas.iopt.space.set_allowed(ranges())
        return 0

    def _ioas_map(self, proc: Process, buf: bytearray, usize: int, flags: int, ioas_id: int,
                  rsvd: int, user_va: int, length: int, iova: int) -> int:
        """``iommufd_ioas_map`` / ``iopt_map_user_pages``."""
        _check_map_args("IOAS_MAP", flags, length, iova, rsvd=rsvd)
        ioas = self.ioas(ioas_id)
        iova = self.map_user_pages(proc, ioas, user_va, length, iova, _prot(flags),
                                   fixed=bool(flags & u.IOMMU_IOAS_MAP_FIXED_IOVA))
        self._respond(buf, u.IOMMU_IOAS_MAP, usize, flags, ioas_id, 0, user_va, length, iova)
        return 0

    def _ioas_map_file(self, proc: Process, buf: bytearray, usize: int, flags: int,
                       ioas_id: int, fd: int, start: int, length: int, iova: int) -> int:
        """``iommufd_ioas_map_file`` / ``iopt_map_file_pages`` (7.0): EINVAL for a length
        of 0 and EOVERFLOW for a range that wraps, then EBADF for a closed fd. Any file
        maps (the pages hold it); only a memfd can be pinned, so another file fails
        (EINVAL) once a domain or an access needs its pages."""
        _check_map_args("IOAS_MAP_FILE", flags, length, iova)
        ioas = self.ioas(ioas_id)
        if not length:
            raise InvalidArgument("IOAS_MAP_FILE: length 0")
        if start + length - 1 > ULONG_MAX:
            raise Overflow(f"IOAS_MAP_FILE: start {start:#x} + length {length:#x} wraps")
        f = proc.fget(fd)
        if f is None:
            raise BadFileDescriptor(f"IOAS_MAP_FILE: fd {fd} is not open")
        start_byte = start % PAGE_SIZE
        source: FileSource | OtherFileSource
        if isinstance(f, MemFdFile):
            source = FileSource(f.memfd, start - start_byte)
        else:
            source = OtherFileSource(f, start - start_byte)
        pages = self.new_pages(proc, source, start_byte, length,
                               bool(flags & u.IOMMU_IOAS_MAP_WRITEABLE))
        source.hold()  # iopt_alloc_file_pages: get_file once the pages exist
        iova = self.map_pages(ioas, pages, start_byte, length, iova, _prot(flags),
                              fixed=bool(flags & u.IOMMU_IOAS_MAP_FIXED_IOVA), addr=start)
        self._respond(buf, u.IOMMU_IOAS_MAP_FILE, usize, flags, ioas_id, fd, start, length,
                      iova)
        return 0

    def _ioas_copy(self, proc: Process, buf: bytearray, usize: int, flags: int, dst_id: int,
                   src_id: int, length: int, dst_iova: int, src_iova: int) -> int:
        """``iommufd_ioas_copy``: the destination shares the source's pages. On the mock
        platform (a CONFIG_IOMMUFD_TEST kernel) MOCK_FLAGS_ACCESS_SYZ first turns
        ``src_iova`` from syzkaller's "nth area + offset" into an IOVA."""
        if self.machine.platform == "mock":
            from .selftest import copy_syz_src_iova
            flags, src_iova = copy_syz_src_iova(self.ctx, src_id, flags, src_iova)
        _check_map_args("IOAS_COPY", flags, length, src_iova, dst_iova)
        src = self.ioas(src_id)
        slices = src.iopt.get_pages(src_iova, length)
        dst = self.ioas(dst_id)
        first = slices[0]
        addr = first.start_byte + _source_addr(first.pages)
        iova = dst.iopt.map_pages(slices, dst_iova, _prot(flags),
                                  fixed=bool(flags & u.IOMMU_IOAS_MAP_FIXED_IOVA), addr=addr)
        self._respond(buf, u.IOMMU_IOAS_COPY, usize, flags, dst_id, src_id, length, iova,
                      src_iova)
        return 0

    def _ioas_unmap(self, proc: Process, buf: bytearray, usize: int, ioas_id: int, iova: int,
                    length: int) -> int:
        """``iommufd_ioas_unmap``: (0, U64_MAX) unmaps everything, even nothing; any other
        range that held no area is ENOENT (the io_pagetable itself calls that success);
        ``length`` out."""
        ioas = self.ioas(ioas_id)
        if iova == 0 and length == ULONG_MAX:
            unmapped = ioas.iopt.unmap_all()
        else:
            if iova >= ULONG_MAX or length >= ULONG_MAX:
                raise Overflow(f"IOAS_UNMAP: iova {iova:#x} or length {length:#x}")
            unmapped = ioas.iopt.unmap(iova, length)
            if not unmapped:
                raise NoEntry(f"IOAS_UNMAP: nothing mapped in [{iova:#x}, +{length:#x})")
        self._respond(buf, u.IOMMU_IOAS_UNMAP, usize, ioas_id, iova, unmapped)
        return 0

    def _option(self, proc: Process, buf: bytearray, usize: int, option: int, op: int,
                rsvd: int, object_id: int, val64: int) -> int:
        """``iommufd_option``: RLIMIT_MODE (global) and HUGE_PAGES (per IOAS)."""
        if rsvd:
            raise NotSupported("OPTION: __reserved is not zero")
        if option == u.IOMMU_OPTION_RLIMIT_MODE:
            if object_id:
                raise NotSupported("OPTION RLIMIT_MODE: object_id must be 0")
            if op == u.IOMMU_OPTION_OP_GET:
                val64 = int(self.ctx.account_mode == ACCOUNT_MM)
            elif op == u.IOMMU_OPTION_OP_SET:
                if not proc.cap_sys_resource:
                    raise NotPermitted("OPTION RLIMIT_MODE: needs CAP_SYS_RESOURCE")
                if self.ctx.objects:
                    raise kernel_error(16, "OPTION RLIMIT_MODE: objects exist")
                if val64 not in (0, 1):
                    raise InvalidArgument(f"OPTION RLIMIT_MODE: value {val64}")
                self.ctx.account_mode = ACCOUNT_MM if val64 else ACCOUNT_USER
            else:
                raise NotSupported(f"OPTION: op {op}")
        elif option == u.IOMMU_OPTION_HUGE_PAGES:
            ioas = self.ioas(object_id)
            if op == u.IOMMU_OPTION_OP_GET:
                val64 = int(not ioas.iopt.disable_large_pages)
            elif op == u.IOMMU_OPTION_OP_SET:
                if val64 not in (0, 1):
                    raise InvalidArgument(f"OPTION HUGE_PAGES: value {val64}")
                ioas.iopt.set_large_pages(bool(val64))
            else:
                raise NotSupported(f"OPTION: op {op}")
        else:
            raise NotSupported(f"OPTION: option {option}")
        self._respond(buf, u.IOMMU_OPTION, usize, option, op, 0, object_id, val64)
        return 0

    def _vfio_ioas(self, proc: Process, buf: bytearray, usize: int, ioas_id: int, op: int,
                   rsvd: int) -> int:
        """``iommufd_vfio_ioas``: GET (ENODEV without one), SET, CLEAR."""
        if rsvd:
            raise NotSupported("VFIO_IOAS: __reserved is not zero")
        if op == u.IOMMU_VFIO_IOAS_GET:
            if self.ctx.vfio_ioas is None:
                raise NoDevice("VFIO_IOAS GET: no compatibility IOAS")
            self._respond(buf, u.IOMMU_VFIO_IOAS, usize, self.ctx.vfio_ioas.id, op, 0)
        elif op == u.IOMMU_VFIO_IOAS_SET:
            self.ctx.vfio_ioas = self.ioas(ioas_id)
        elif op == u.IOMMU_VFIO_IOAS_CLEAR:
            self.ctx.vfio_ioas = None
        else:
            raise NotSupported(f"VFIO_IOAS: op {op}")
        return 0

    def _hwpt_alloc(self, proc: Process, buf: bytearray, usize: int, flags: int, dev_id: int,
                    pt_id: int, out: int, rsvd: int, data_type: int, data_len: int,
                    data_uptr: int, fault_id: int, rsvd2: int) -> int:
        """``iommufd_hwpt_alloc``: EOPNOTSUPP for ``__reserved``, EINVAL for a data type
        without data or the other way round, ENOENT for no such device, EINVAL for a
        ``pt_id`` that is no object at all. An IOAS gets a paging HWPT; a paging HWPT is
        the parent of a nested one (:meth:`IommufdCtx.hwpt_nested_alloc`), and in 7.0
        a vIOMMU too (EINVAL for one of another IOMMU instance, then
        ``iommufd_viommu_alloc_hwpt_nested``); any other object is EINVAL.
        With FAULT_ID_VALID (6.12: nested HWPTs only; 7.0 paging ones too) the fault
        object is looked up after the HWPT was made (``iommufd_get_fault``: ENOENT,
        and the HWPT is destroyed again); the HWPT takes a user of it and its domain
        delivers I/O page faults to it (``iopf_handler``)."""
        if rsvd:
            raise NotSupported("HWPT_ALLOC: __reserved is not zero")
        if (data_type == u.IOMMU_HWPT_DATA_NONE) == bool(data_len):
            raise InvalidArgument(f"HWPT_ALLOC: data_type {data_type} with {data_len} bytes")
        idev: Device = self.ctx.get(dev_id, Device)
        self.ctx.get_object_should_fail(InvalidArgument, "iommufd_hwpt_alloc")
        pt = self.ctx.objects.get(pt_id)
        if pt is None:  # iommufd_get_object's ENOENT becomes EINVAL here
            raise InvalidArgument(f"HWPT_ALLOC: no object {pt_id}")
        hwpt: HwptPaging | HwptNested
        user_data = IommuUserData(data_type, data_uptr, data_len, proc.mm.read)
        if isinstance(pt, Ioas):
            hwpt = self.ctx.hwpt_paging_alloc(pt, idev, flags, auto=False,
                                              user_data=user_data if data_len else None,
                                              finalize=False)
        elif isinstance(pt, HwptPaging):
            hwpt = self.ctx.hwpt_nested_alloc(pt, idev, flags, user_data)
        elif isinstance(pt, Viommu):  # 7.0 only: 6.12 can make no vIOMMU
            if pt.iommu_dev is not self.machine.core.driver:
                raise InvalidArgument(f"HWPT_ALLOC: vIOMMU {pt_id} is of another IOMMU")
            hwpt = viommu_alloc_hwpt_nested(self.ctx, pt, flags, user_data)
        else:
            raise InvalidArgument(f"HWPT_ALLOC: object {pt_id} is not an IOAS or a HWPT")
        if flags & u.IOMMU_HWPT_FAULT_ID_VALID:
            try:
                fault: FaultObject = self.ctx.get(fault_id, FaultObject)  # iommufd_get_fault
            except KernelError:
                self._abort_hwpt(hwpt)
                raise
            hwpt.fault = fault
            hwpt.domain.iopf_handler = fault.iopf_handler
            fault.users += 1
        try:  # responded before the HWPT is published: an EFAULT destroys it (out_hwpt)
            self._respond(buf, u.IOMMU_HWPT_ALLOC, usize, flags, dev_id, pt_id, hwpt.id,
                          rsvd, data_type, data_len, data_uptr, fault_id, rsvd2)
        except KernelError:
            self._abort_hwpt(hwpt)
            raise
        self.ctx.add(hwpt, hwpt.id)
        return 0

    def _fault_queue_alloc(self, proc: Process, buf: bytearray, usize: int, flags: int,
                           out_id: int, out_fd: int) -> int:
        """``iommufd_fault_alloc`` (:func:`~.eventq.fault_alloc`): out: the fault
        object's id and its fd in the caller."""
        def respond(id: int, fd: int) -> None:
            self._respond(buf, u.IOMMU_FAULT_QUEUE_ALLOC, usize, flags, id, fd)

        fault_alloc(self.ctx, proc, flags, respond)
        return 0

    def _abort_hwpt(self, hwpt: HwptPaging | HwptNested) -> None:
        if isinstance(hwpt, HwptNested):
            self.ctx.abort_nested(hwpt)
        else:
            self.ctx.abort_hwpt(hwpt)

    def _get_hw_info(self, proc: Process, buf: bytearray, usize: int, flags: int, dev_id: int,
                     data_len: int, data_uptr: int, data_type: int, pasid: int, rsvd: bytes,
                     caps: int) -> int:
        """``iommufd_get_hw_info``: the driver's info struct, cut to ``data_len`` and the
        rest of the user's ``data_len`` bytes zeroed (``clear_user``, without a buffer of
        that size); out: the driver's full length, its type and
        IOMMU_HW_CAP_DIRTY_TRACKING.
        7.0 also takes IOMMU_HW_INFO_FLAG_INPUT_TYPE (without it the type field is
        ignored on input; 6.12 refuses every flag) and reports
        IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED (no modelled device does ATS)."""
        new = self.machine.kernel >= LINUX_7_0
        if flags & ~(u.IOMMU_HW_INFO_FLAG_INPUT_TYPE if new else 0):
            raise NotSupported(f"GET_HW_INFO: flags {flags:#x}")
        if any(rsvd):
            raise NotSupported("GET_HW_INFO: __reserved is not zero")
        if not flags & u.IOMMU_HW_INFO_FLAG_INPUT_TYPE:
            data_type = u.IOMMU_HW_INFO_TYPE_DEFAULT
        idev: Device = self.ctx.get(dev_id, Device)
        master = idev.dev.dev_iommu.priv if idev.dev.dev_iommu else None
        info_type, data = _hw_info(self.machine, master, data_type)
        copy_len = min(data_len, len(data))
        _copy_to_user(proc.mm, data_uptr, data[:copy_len])
        if copy_len < data_len:  # the rest of the user's buffer is zeroed
            _clear_user(proc.mm, data_uptr + copy_len, data_len - copy_len)
        driver = self.machine.core.driver
        caps = u.IOMMU_HW_CAP_DIRTY_TRACKING if driver.capable(
            master, IommuCap.DIRTY_TRACKING) else 0
        if new and not driver.capable(master, IommuCap.PCI_ATS_SUPPORTED):
            caps |= u.IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED
        self._respond(buf, u.IOMMU_GET_HW_INFO, usize, flags, dev_id, len(data), data_uptr,
                      info_type, 0, b"\0" * 3, caps)
        return 0

    def _hwpt_set_dirty_tracking(self, proc: Process, buf: bytearray, usize: int, flags: int,
                                 hwpt_id: int, rsvd: int) -> int:
        """``iommufd_hwpt_set_dirty_tracking`` / ``iopt_set_dirty_tracking``: EOPNOTSUPP for
        an unknown flag (``__reserved`` is not looked at) or a domain without dirty ops;
        on enable every area's dirty bits are cleared first, for a clean snapshot."""
        if flags & ~u.IOMMU_HWPT_DIRTY_TRACKING_ENABLE:
            raise NotSupported(f"SET_DIRTY_TRACKING: flags {flags:#x}")
        hwpt: HwptPaging = self.ctx.get(hwpt_id, HwptPaging)
        domain = hwpt.domain
        if domain.dirty_ops is None:
            raise NotSupported(f"SET_DIRTY_TRACKING: {domain!r} cannot track dirty pages")
        enable = bool(flags & u.IOMMU_HWPT_DIRTY_TRACKING_ENABLE)
        if enable:  # iopt_clear_dirty_data: no bitmap, one gather, one sync
            gather = IommuIotlbGather()
            try:
                for area in hwpt.ioas.iopt.areas():
                    domain.dirty_ops.read_and_clear_dirty(domain, area.iova, area.length, 0,
                                                          IommuDirtyBitmap(None, gather))
            finally:
                domain.iotlb_sync(gather)
        granule = self.machine.dirty_granule if enable else None
        domain.set_dirty_tracking(enable, granule=granule)
        return 0

    def _hwpt_get_dirty_bitmap(self, proc: Process, buf: bytearray, usize: int, hwpt_id: int,
                               flags: int, rsvd: int, iova: int, length: int, page_size: int,
                               data: int) -> int:
        """``iommufd_hwpt_get_dirty_bitmap`` / ``iopt_read_and_clear_dirty_data``: the
        range checks of ``iommufd_check_iova_range``, then the dirty bits of the areas
        contiguous from ``iova`` OR-ed into the user bitmap (one bit per
        ``1 << __ffs(page_size)`` from ``iova``) and one IOTLB sync unless NO_CLEAR.

        At a hole, or when the driver fails, the walk stops. 6.12 then returns the
        error (EINVAL for a hole), or EPROTO when the driver reported a range outside
        the bitmap (``iova_bitmap_set`` refuses it); 7.0 returns 0 whatever happened,
        and writes a range that runs past the bitmap's end into the user's memory
        after it (:func:`~iommulab.iommu.dirty.user_iova_bitmap`). The bits already set
        stay in the user bitmap either way."""
        if flags & ~u.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR or rsvd:
            raise NotSupported(f"GET_DIRTY_BITMAP: flags {flags:#x} or __reserved")
        hwpt: HwptPaging = self.ctx.get(hwpt_id, HwptPaging)
        iopt = hwpt.ioas.iopt
        last = self._check_iova_range(iopt.iova_alignment, iova, length, page_size)
        domain = hwpt.domain
        ops = domain.dirty_ops
        if ops is None:
            raise NotSupported(f"GET_DIRTY_BITMAP: {domain!r} cannot track dirty pages")
        fail = self.machine.mem.fail_nth
        fail.check("kzalloc(iova_bitmap)")  # iova_bitmap_alloc: ENOMEM whatever failed
        fail.check("__get_free_page(iova_bitmap pages)")
        areas, done = iopt.contig_run(iova, last)
        if not length:  # 7.0 with iova 0: the bitmap reaches as far as the areas do
            length = max((a.last + 1 for a in areas), default=iova + 1) - iova
        bitmap = user_iova_bitmap(self.machine.kernel, iova, length, page_size & -page_size,
                                  data)
        gather = IommuIotlbGather()
        dirty = BatchedDirtyBitmap(bitmap, gather)  # records set a batch at a time
        err: KernelError | None = None
        try:
            for area in areas:
                lo, hi = max(iova, area.iova), min(last, area.last)
                ops.read_and_clear_dirty(domain, lo, hi - lo + 1, flags, dirty)
            if not done:
                err = InvalidArgument(f"GET_DIRTY_BITMAP: [{iova:#x}, {last:#x}] is not "
                                      "covered by contiguous areas")
        except KernelError as e:
            err = e
        finally:
            dirty.flush()  # what was recorded before an error stays set
        if not flags & u.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR:
            domain.iotlb_sync(gather)
        self._or_bitmap(proc, data, bitmap)
        if self.machine.kernel >= LINUX_7_0:
            return 0  # iommu_read_and_clear_dirty ignores iova_bitmap_for_each's result
        if err is None and bitmap.refused:
            err = kernel_error(errno.EPROTO, f"GET_DIRTY_BITMAP: the IOMMU reported a dirty "
                               f"range outside [{iova:#x}, {last:#x}]")
        if err is not None:
            raise err
        return 0

    def _check_iova_range(self, align: int, iova: int, length: int, page_size: int) -> int:
        """``iommufd_check_iova_range``, with masks as the kernel tests alignment (a page
        size that is not a power of two passes when the range fits its mask): the
        range's last byte. 6.12 refuses a length of 0 (EINVAL); 7.0 lets ``length - 1``
        wrap, an overflow unless ``iova`` is 0."""
        if not length and self.machine.kernel < LINUX_7_0:
            raise InvalidArgument("GET_DIRTY_BITMAP: length 0")
        last = iova + ((length - 1) & ULONG_MAX)
        if last > ULONG_MAX:
            raise Overflow(f"GET_DIRTY_BITMAP: [{iova:#x}, +{length:#x}) wraps")
        end = (last + 1) & ULONG_MAX
        if iova & (align - 1) or end & (align - 1):
            raise InvalidArgument(f"GET_DIRTY_BITMAP: range not aligned to {align:#x}")
        if not page_size or iova & (page_size - 1) or end & (page_size - 1):
            raise InvalidArgument(f"GET_DIRTY_BITMAP: page_size {page_size:#x}")
        return last

    @staticmethod
    def _or_bitmap(proc: Process, data: int, bitmap: IovaBitmap) -> None:
        """Set the bitmap's bits in the user bitmap, as ``iova_bitmap_set`` does on the
        pages it pins for writing: the words holding set bits, each page OR-ed in
        place; a page that cannot be pinned loses its bits without an error."""
        for first_word, raw in bitmap.words():
            start = data + 8 * first_word
            pos, end = start, start + len(raw)
            while pos < end:
                stop = min(end, (pos | (PAGE_SIZE - 1)) + 1)
                vma = proc.mm.find_vma(pos)
                if vma is not None and vma.writable and not vma.pfnmap:
                    stop = min(end, vma.end)
                    old = np.frombuffer(proc.mm.read(pos, stop - pos), dtype=np.uint8)
                    new = np.frombuffer(raw[pos - start:stop - start], dtype=np.uint8)
                    proc.mm.write(pos, (old | new).tobytes())
                pos = stop

    def _hwpt_invalidate(self, proc: Process, buf: bytearray, usize: int, hwpt_id: int,
                         data_uptr: int, data_type: int, entry_len: int, entry_num: int,
                         rsvd: int) -> int:
        """``iommufd_hwpt_invalidate``: the invalidation goes to a nested HWPT (7.0: or a
        vIOMMU): EOPNOTSUPP for ``__reserved``; EINVAL for entries without data or
        length (6.12 also for ``entry_len`` past PAGE_SIZE or more than 1 << 19
        entries); 6.12 ENOENT for an id that is not a nested HWPT
        (``iommufd_get_hwpt_nested``), 7.0 ENOENT for no object and EINVAL for one of
        another kind, EOPNOTSUPP for a nested HWPT without ``cache_invalidate_user``
        or a vIOMMU without ``cache_invalidate``. A nested HWPT's domain
        (``cache_invalidate_user``) or the vIOMMU (``cache_invalidate``) runs the
        request array and ``entry_num`` comes back as the entries it did, before its
        error is returned; on the other errors it comes back 0."""
        err: KernelError
        new = self.machine.kernel >= LINUX_7_0
        bad_entries = not data_uptr or not entry_len or (
            not new and (entry_len > PAGE_SIZE or entry_num > 1 << 19))
        if rsvd:
            err = NotSupported("HWPT_INVALIDATE: __reserved is not zero")
        elif entry_num and bad_entries:
            err = InvalidArgument(f"HWPT_INVALIDATE: {entry_num} entries of {entry_len} "
                                  f"bytes at {data_uptr:#x}")
        elif self.ctx.fail_nth_get_object():
            err = NoEntry("HWPT_INVALIDATE: iommufd_get_object: injected failure")
        elif isinstance(target := self.ctx.objects.get(hwpt_id), HwptNested | Viommu) and (
                new or isinstance(target, HwptNested)):
            op = getattr(target.domain, "cache_invalidate_user", None) if isinstance(
                target, HwptNested) else getattr(target.ops, "cache_invalidate", None)
            if op is None:
                err = NotSupported(f"HWPT_INVALIDATE: object {hwpt_id} cannot invalidate")
            else:
                array = IommuUserDataArray(data_type, data_uptr, entry_len, entry_num,
                                           page_cached_reader(proc.mm.read))
                done, driver_err = op(array)
                self._respond(buf, u.IOMMU_HWPT_INVALIDATE, usize, hwpt_id, data_uptr,
                              data_type, entry_len, done, rsvd)
                if driver_err is not None:
                    raise driver_err
                return 0
        elif new and hwpt_id in self.ctx.objects:
            err = InvalidArgument(f"HWPT_INVALIDATE: object {hwpt_id} is not a nested HWPT "
                                  "or a vIOMMU")
        else:
            err = NoEntry(f"HWPT_INVALIDATE: no nested HWPT {hwpt_id}")
        self._respond(buf, u.IOMMU_HWPT_INVALIDATE, usize, hwpt_id, data_uptr, data_type,
                      entry_len, 0, rsvd)
        raise err

    # -- Linux 7.0's vIOMMU commands (viommu.c, eventq.c; absent from 6.12's table) -------
    def _viommu_alloc(self, proc: Process, buf: bytearray, usize: int, flags: int, type: int,
                      dev_id: int, hwpt_id: int, out: int, data_len: int, rsvd: int,
                      data_uptr: int) -> int:
        """``iommufd_viommu_alloc_ioctl``: EOPNOTSUPP for flags or the DEFAULT type (no
        check of ``__reserved``), the device (ENOENT), then
        :func:`.viommu.viommu_alloc`; the id answered before the object is published
        (an EFAULT destroys it)."""
        if flags or type == _h.IOMMU_VIOMMU_TYPE_DEFAULT:
            raise NotSupported(f"VIOMMU_ALLOC: flags {flags:#x}, type {type:#x}")
        idev: Device = self.ctx.get(dev_id, Device)
        user_data = IommuUserData(type, data_uptr, data_len, proc.mm.read)
        viommu = viommu_alloc(self.ctx, flags, type, idev, hwpt_id, user_data)
        if viommu.ops is None:  # a driver bug (WARN_ON_ONCE)
            abort(self.ctx, viommu)
            raise NotSupported("VIOMMU_ALLOC: the driver set no vIOMMU ops")
        try:
            self._respond(buf, u.IOMMU_VIOMMU_ALLOC, usize, flags, type, dev_id, hwpt_id,
                          viommu.id, data_len, rsvd, data_uptr)
        except KernelError:
            abort(self.ctx, viommu)
            raise
        self.ctx.add(viommu, viommu.id)
        return 0

    def _vdevice_alloc(self, proc: Process, buf: bytearray, usize: int, viommu_id: int,
                       dev_id: int, out: int, virt_id: int) -> int:
        """``iommufd_vdevice_alloc_ioctl`` (:func:`.viommu.vdevice_alloc`), the id
        answered before the object is published (an EFAULT destroys it)."""
        vdev = vdevice_alloc(self.ctx, viommu_id, dev_id, virt_id)
        try:
            self._respond(buf, u.IOMMU_VDEVICE_ALLOC, usize, viommu_id, dev_id, vdev.id,
                          virt_id)
        except KernelError:
            abort(self.ctx, vdev)
            raise
        self.ctx.add(vdev, vdev.id)
        return 0

    def _veventq_alloc(self, proc: Process, buf: bytearray, usize: int, flags: int,
                       viommu_id: int, type: int, depth: int, out_id: int, out_fd: int,
                       rsvd: int) -> int:
        """``iommufd_veventq_alloc``: :func:`.viommu.veventq_alloc`, its file and fd
        (``iommufd_eventq_init``: the file holds the vEVENTQ and the context), the id
        and fd answered, then the object published and the fd installed. A failure
        after the file puts it and destroys the object."""
        veventq = veventq_alloc(self.ctx, flags, viommu_id, type, depth, rsvd)
        try:
            fd = veventq.eventq_init(proc)
        except KernelError:
            abort(self.ctx, veventq)
            raise
        try:
            self._respond(buf, u.IOMMU_VEVENTQ_ALLOC, usize, flags, viommu_id, type, depth,
                          veventq.id, fd, rsvd)
        except KernelError:
            veventq.abort()
            abort(self.ctx, veventq)
            raise
        self.ctx.add(veventq, veventq.id)
        veventq.install(proc, fd)
        return 0

    def _ioas_change_process(self, proc: Process, buf: bytearray, usize: int,
                             rsvd: int) -> int:
        """``iommufd_ioas_change_process``: every IOAS, in id order, locked and stored in a
        local xarray (``iommufd_take_all_iova_rwsem``: its nodes are fail-nth points an
        xarray retries, so none fails the call), then EINVAL unless every area of every
        IOAS maps a file. The pins of the pages whose charge would move (``need_charge_update``:
        USER when the user or the mm differs, MM when the mm does, never NONE) are
        charged to the caller, summed per accounting mode, then released from their
        old owner; every pages then belongs to the caller. Pages that need no update
        keep their charge where it was, NONE pages included, whose later unpin is
        taken from the new mm's ``pinned_vm`` (a kernel wart kept)."""
        if rsvd:
            raise NotSupported("IOAS_CHANGE_PROCESS: __reserved is not zero")
        ioases = sorted((o for o in self.ctx.objects.values() if isinstance(o, Ioas)),
                        key=lambda o: o.id)
        _take_all_iova_rwsem(ioases, self.machine.mem.fail_nth)
        areas = [a for o in ioases for a in o.iopt.areas()]
        if any(a.pages is None or not a.pages.source.is_file for a in areas):
            raise InvalidArgument("IOAS_CHANGE_PROCESS: a mapping is not of a file")
        pages = list({id(a.pages): a.pages for a in areas if a.pages is not None}.values())
        moving = [p for p in pages if _need_charge_update(p.account, proc)]
        _charge_current(proc, moving)
        for p in moving:
            p.account.uncharge(p.npinned)
        for p in pages:
            p.account = Account(p.account.mode, proc.mm, proc.user, proc.memlock_limit)
        return 0


def _take_all_iova_rwsem(ioases: list[Ioas], fail: FailNth) -> None:
    """``iommufd_take_all_iova_rwsem``'s ``xa_store`` of each IOAS (in id order) into an
    empty local xarray: the nodes each new index needs. O(IOASes² x levels), few IOASes."""
    for n, ioas in enumerate(ioases):
        held = np.array([o.id for o in ioases[:n]], dtype=np.int64)
        fail.xa_nodes("ioas_list", xa_nodes_needed(held, ioas.id, ioas.id))


def _need_charge_update(account: Account, proc: Process) -> bool:
    """``need_charge_update``: whether the pins would be charged elsewhere if ``proc``
    took the pages over."""
    if account.mode == ACCOUNT_NONE:
        return False
    if account.mode == ACCOUNT_MM:
        return account.mm is not proc.mm
    return account.user is not proc.user or account.mm is not proc.mm


def _charge_current(proc: Process, pages: list[IoptPages]) -> None:
    """``charge_current``: one charge per accounting mode, in mode order, of the pins of
    ``pages`` to ``proc``; ENOMEM (the earlier charges undone) over its limit."""
    done: list[Account] = []
    total: dict[int, int] = {}
    for p in pages:
        total[p.account.mode] = total.get(p.account.mode, 0) + p.npinned
    try:
        for mode in sorted(total):
            if total[mode]:
                tmp = Account(mode, proc.mm, proc.user, proc.memlock_limit)
                tmp.charge(total[mode])
                done.append(tmp)
    except KernelError:
        for tmp in reversed(done):
            tmp.uncharge(total[tmp.mode])
        raise


def _check_pages_length(length: int) -> None:
    """``iopt_alloc_pages``: EINVAL for a length of 0 or past SIZE_MAX - PAGE_SIZE."""
    if length > _SIZE_MAX - PAGE_SIZE or not length:
        raise InvalidArgument(f"map: length {length:#x}")


def _check_user_wrap(uptr: int, length: int) -> None:
    """``check_add_overflow(uptr, length)``: EOVERFLOW when the user range wraps."""
    if uptr + length > ULONG_MAX:
        raise Overflow(f"map: user_va {uptr:#x} + length {length:#x} wraps")


def _check_map_args(what: str, flags: int, length: int, *iovas: int, rsvd: int = 0) -> None:
    """The checks MAP, MAP_FILE and COPY open with, in order: unknown flags or a non-zero
    ``__reserved`` EOPNOTSUPP, a length or IOVA of ULONG_MAX EOVERFLOW, neither READABLE
    nor WRITEABLE EINVAL."""
    if flags & ~_MAP_FLAGS or rsvd:
        raise NotSupported(f"{what}: flags {flags:#x} or __reserved")
    if length >= ULONG_MAX or any(iova >= ULONG_MAX for iova in iovas):
        raise Overflow(f"{what}: length {length:#x} or an iova is ULONG_MAX")
    if not flags & (u.IOMMU_IOAS_MAP_WRITEABLE | u.IOMMU_IOAS_MAP_READABLE):
        raise InvalidArgument(f"{what}: neither READABLE nor WRITEABLE")


def _copy_to_user(mm: MmStruct, addr: int, data: bytes) -> None:
    """``copy_to_user``: EFAULT (what fits written) outside user space or at the first
    page that cannot be written."""
    if not access_ok(addr, len(data)) or mm.copy_to_user(addr, data):
        raise BadAddress(f"copy_to_user of {len(data)} bytes at {addr:#x}")


def _clear_user(mm: MmStruct, addr: int, n: int) -> None:
    """``clear_user``: zero ``n`` bytes at ``addr`` a chunk at a time (what was cleared
    stays so); EFAULT outside user space or where a page cannot be written. ``n`` sizes
    no host buffer: the work ends where the user's writable memory does."""
    if not access_ok(addr, n):
        raise BadAddress(f"clear_user of {n:#x} bytes at {addr:#x}: not user memory")
    done = 0
    while done < n:
        k = min(len(_ZEROS), n - done)
        _copy_to_user(mm, addr + done, _ZEROS[:k])
        done += k


def _buf(arg: int | bytes | bytearray) -> bytearray:
    if isinstance(arg, int):
        raise BadAddress("iommufd: the argument must point at the command struct")
    return arg if isinstance(arg, bytearray) else bytearray(arg)


def _source_addr(pages: IoptPages) -> int:
    src = pages.source
    if isinstance(src, UserSource):
        return src.uptr
    assert isinstance(src, FileSource | OtherFileSource)
    return src.start


def _hw_info(machine: Host, master: Any, in_type: int) -> tuple[int, bytes]:
    """The driver's ``hw_info``: type and data, EOPNOTSUPP (7.0) when the caller asks for
    a type other than the driver's own. Mock (``mock_domain_hw_info``): the test
    register. SMMUv3 (``arm_smmu_hw_info``, 7.0; 6.12's driver has no ``hw_info`` and
    reports type NONE): IDR0-5, IIDR and AIDR as the registers read (IDR2 and IDR4 are
    not modelled and read 0). VT-d (``intel_iommu_hw_info``): the errata flag and the
    unit's CAP and ECAP registers."""
    if machine.platform == "mock":
        own = u.IOMMU_HW_INFO_TYPE_SELFTEST
        data = u.HW_INFO_SELFTEST.pack(0, u.IOMMU_HW_INFO_SELFTEST_REGVAL)
    elif machine.platform == "arm64-smmuv3" and machine.kernel >= LINUX_7_0:
        from ..drivers.smmuv3.regs import Reg
        hw = machine.translator
        idr = [hw.read_reg(4 * i) if 4 * i in (Reg.IDR0, Reg.IDR1, Reg.IDR3, Reg.IDR5) else 0
               for i in range(6)]
        own = u.IOMMU_HW_INFO_TYPE_ARM_SMMUV3
        data = u.HW_INFO_ARM_SMMUV3.pack(0, 0, *idr, hw.read_reg(Reg.IIDR), hw.read_reg(Reg.AIDR))
    elif machine.platform == "x86-vtd":
        unit = master.unit
        own = u.IOMMU_HW_INFO_TYPE_INTEL_VTD
        data = u.HW_INFO_VTD.pack(u.IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17, 0, unit.cap_reg,
                                  unit.ecap_reg)
    else:  # no hw_info op: type NONE, whatever was asked
        return u.IOMMU_HW_INFO_TYPE_NONE, b""
    if in_type not in (u.IOMMU_HW_INFO_TYPE_DEFAULT, own):
        raise NotSupported(f"GET_HW_INFO: data type {in_type:#x}; this IOMMU reports {own:#x}")
    machine.mem.fail_nth.check("kzalloc(hw_info)")  # the driver's copy of its info
    return own, data


#: ``/dev/iommu``'s misc minor (MISC_DYNAMIC_MINOR: the value a typical boot gives)
IOMMUFD_MINOR = 124
#: VFIO_MINOR (include/linux/miscdevice.h), ``/dev/vfio/vfio`` when iommufd provides it
VFIO_MINOR = 196


def open_iommufd(proc: Process, path: str) -> IommufdFile:
    """``/dev/iommu``: ``iommufd_fops_open``."""
    return IommufdFile(proc.machine)


def open_vfio_compat(proc: Process, path: str) -> IommufdFile:
    """``/dev/vfio/vfio`` under CONFIG_IOMMUFD_VFIO_CONTAINER: ``iommufd_fops_open`` of
    ``vfio_misc_dev``, a context that answers the VFIO container's ioctls."""
    return IommufdFile(proc.machine, vfio_container=True)


def iommufd_init(table: DeviceTable) -> None:
    """iommufd's ``module_init`` (``iommufd_init``): ``/dev/iommu``, and ``/dev/vfio/vfio``
    when the machine's kconfig has CONFIG_IOMMUFD_VFIO_CONTAINER."""
    table.misc_register("/dev/iommu", IOMMUFD_MINOR, open_iommufd)
    table.misc_register("/dev/vfio/vfio", VFIO_MINOR, open_vfio_compat,
                        present=lambda m, minor: m.kconfig["CONFIG_IOMMUFD_VFIO_CONTAINER"])
