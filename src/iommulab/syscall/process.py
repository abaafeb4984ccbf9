"""A process on the syscall surface: its address space, its fd table and the calls
that reach a file through an fd (``open``, ``ioctl``, ``mmap``, ``read``/``write``,
``fork``, exit).

This is the one door the Python API and the exec bridge's handler
(:mod:`iommulab.exec.handler`, whose process subclasses this one) both go through;
paths are resolved in the device-file table the front ends register into
(:mod:`.devtable`). The process sees the machine only through :class:`.host.Host`.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, overload

from ..errors import BadFileDescriptor, InvalidArgument, KernelError, kernel_error
from ..iommufd.pages import UserStruct
from ..mem.fault import FailNth
from ..mem.mm import MmStruct
from ..sizes import parse_size
from .devtable import DEVICE_FILES
from .file import File, fput, get_file
from .ioctlarg import fcntl_ioctl
from .memfd import MemFdFile

if TYPE_CHECKING:
    from array import array

    from _typeshed import ReadableBuffer, WriteableBuffer

    from .host import Host

__all__ = ["MAX_RW_COUNT", "NR_OPEN_DEFAULT", "RLIMIT_NOFILE_DEFAULT", "Process"]

#: RLIMIT_NOFILE's usual soft limit (INR_OPEN_CUR)
RLIMIT_NOFILE_DEFAULT = 1024
#: the fds of the ``fdtable`` embedded in ``files_struct`` (BITS_PER_LONG)
NR_OPEN_DEFAULT = 64


#: MAX_RW_COUNT: the most one read or write moves (INT_MAX rounded down to a page)
MAX_RW_COUNT = ((1 << 31) - 1) & ~0xFFF


def _rw_count(n: int, pos: int) -> int:
    """``rw_verify_area`` and the cut to MAX_RW_COUNT: EINVAL for a count that is
    negative as an ssize_t or that takes the position past 2^63 - 1."""
    if n < 0 or n >= 1 << 63 or pos + n >= 1 << 63:
        raise InvalidArgument(f"read/write of {n} bytes at {pos:#x}: not a valid range")
    return min(n, MAX_RW_COUNT)


def _length_arg(size: int | str) -> int:
    """A length given as an int or a size string ("2M"); EINVAL for text that is none."""
    if isinstance(size, int):
        return size
    try:
        return parse_size(size)
    except ValueError as err:
        raise InvalidArgument(str(err)) from None



def _alloc_fdtable(fail: FailNth, slots_wanted: int) -> int:
    """``alloc_fdtable``: a table of the smallest power of two of fds that gives
    ``slots_wanted``: the ``fdtable``, its array of files and its bitmaps (ENOMEM,
    nothing kept). Returns its size (``max_fds``)."""
    nr = 1 << (slots_wanted - 1).bit_length()
    fail.check("kmalloc(fdtable)")
    fail.kvmalloc("fdtable fd array", nr * 8)  # kvmalloc_array(nr, sizeof(struct file *))
    bitbit = -(-(nr // 64) // 64) * 8  # BITBIT_SIZE(nr)
    fail.kvmalloc("fdtable bitmaps", max(2 * nr // 8 + bitbit, 64))  # L1_CACHE_BYTES
    return nr


@dataclass
class Process:
    """A process: address space, RLIMIT_MEMLOCK (None: unlimited), CAP_IPC_LOCK, files
    (fewer than RLIMIT_NOFILE ``nofile_limit``)."""

    machine: Host
    memlock_limit: int | None
    cap_ipc_lock: bool
    uid: int = 1000
    cap_sys_resource: bool = False
    nofile_limit: int = RLIMIT_NOFILE_DEFAULT
    mm: MmStruct = field(init=False)
    files: dict[int, File] = field(default_factory=dict, init=False)
    max_fds: int = field(default=NR_OPEN_DEFAULT, init=False)  # the fd table's size

    def __post_init__(self) -> None:
        self.mm = MmStruct(self.machine.mem, self.machine.kernel)

    @property
    def user(self) -> UserStruct:
        """``current_user()``: shared by every process of this uid."""
        return self.machine.users.setdefault(self.uid, UserStruct(self.uid))

    # -- memory ------------------------------------------------------------------------------------
    def mmap(self, length: int | str, backing: str = "anon", prot: str = "rw",
             populate: bool = False, fd: int | None = None, offset: int = 0, *,
             shared: bool = False, private: bool = False) -> int:
        """``mmap``: anonymous memory of ``backing`` (``shared``: MAP_SHARED | MAP_ANONYMOUS,
        shmem that a forked child shares), a memfd (MAP_SHARED, or MAP_PRIVATE with
        ``private``: copied on write) or a VFIO device region (``fd``). x86_64's
        ``sys_mmap`` first: EINVAL for an offset that is not whole pages, then EBADF for
        an fd that is not open; the rest is :meth:`MmStruct.mmap`'s (``do_mmap``): a file
        without ``mmap`` is ENODEV, and a device region wants MAP_SHARED (EINVAL,
        ``vfio_pci_core_mmap``)."""
        if prot not in ("rw", "r"):
            raise InvalidArgument(f"mmap: prot {prot!r} is not 'rw' or 'r'")
        if not -(1 << 63) <= offset < 1 << 64 or offset & 0xFFF:
            raise InvalidArgument(f"mmap: offset {offset:#x} is not a multiple of the page size")
        if fd is None:
            return self.mm.mmap(length, backing, writable=prot == "rw", populate=populate,
                                shared=shared, private=private)
        f = self._file(fd)
        if isinstance(f, MemFdFile):
            return self.mm.mmap(length, backing, writable=prot == "rw", populate=populate,
                                file=f.memfd, offset=offset, private=private)

        def region(nbytes: int) -> int:
            return f.mmap_region(nbytes, offset, not private)  # ENODEV where none

        return self.mm.mmap(length, backing, writable=prot == "rw", populate=populate,
                            device=region, offset=offset)

    def memfd_create(self, name: str, size: int | str = 0, hugetlb: str | None = None) -> int:
        """``memfd_create`` (MFD_HUGETLB with ``hugetlb`` "2M" or "1G") and ``ftruncate``
        to ``size``: the fd. Nothing is allocated for the size. After the flags and the
        name are checked (EINVAL): the name's copy, the fd (EMFILE), then the shmem or
        hugetlbfs file (:func:`~.mem.memfd.file_setup`)."""
        from ..mem.memfd import MemFd, file_setup
        memfd = MemFd(self.machine.mem, name, _length_arg(size), hugetlb)
        fail = self.machine.mem.fail_nth
        fail.check("kmalloc(memfd_create name)")
        fd = self.get_unused_fd()
        file_setup(fail, hugetlb=memfd.order > 0)
        return self.fd_install(fd, MemFdFile(memfd))

    def ftruncate(self, fd: int, size: int | str) -> None:
        """``ftruncate``: EINVAL for a negative length, EBADF for an fd not open, EINVAL
        for a file that is not a memfd (``do_sys_ftruncate``)."""
        length = _length_arg(size)
        if length < 0:
            raise InvalidArgument(f"ftruncate: length {length} is negative")
        f = self._file(fd)
        if not isinstance(f, MemFdFile):
            raise InvalidArgument(f"ftruncate: fd {fd} is not a memfd")
        f.memfd.ftruncate(length)

    def munmap(self, vaddr: int, length: int) -> None:
        self.mm.munmap(vaddr, length)

    def read(self, vaddr: int, n: int) -> bytes:
        return self.mm.read(vaddr, n)

    def write(self, vaddr: int, data: bytes | bytearray | memoryview) -> None:
        self.mm.write(vaddr, data)

    def clflush(self, vaddr: int, n: int) -> None:
        """``clflush`` over ``[vaddr, vaddr + n)``: what a driver for a device that does not
        snoop does around its DMA (lab: the CPU cache model)."""
        self.mm.clflush(vaddr, n)

    # -- files -------------------------------------------------------------------------------------
    def open(self, path: str) -> int:
        """``/dev/iommu``, ``/dev/vfio/vfio``, ``/dev/vfio/<group>``,
        ``/dev/vfio/devices/vfio<N>``. ``do_sys_openat2``'s order: the path's copy
        (``getname``: a names_cache allocation), the fd (EMFILE, before the path is
        looked at), the file (``alloc_empty_file`` in ``path_openat``, before it walks
        the path), then :meth:`open_file`; an allocation failing is ENOMEM with nothing
        done."""
        fail = self.machine.mem.fail_nth
        fail.check("getname(do_sys_openat2)")
        fd = self.get_unused_fd()
        fail.check("alloc_empty_file(path_openat)")
        return self.fd_install(fd, self.open_file(path))

    def open_file(self, path: str) -> File:
        """The lookup (ENOENT) and the device's ``open`` of ``path`` in the device-file
        table (:meth:`.devtable.DeviceTable.open`): the new file, in no fd table yet (what
        follows the VFS's own allocations)."""
        return DEVICE_FILES.open(self, path)

    def fget(self, fd: int) -> File | None:
        """``fdget``: the file at ``fd``, None when it is not open (a negative fd too)."""
        return self.files.get(fd)

    def get_unused_fd(self) -> int:
        """``get_unused_fd_flags`` (``alloc_fd``): the lowest free fd, which the caller
        then gives a file (:meth:`fd_install`). EMFILE when none is below RLIMIT_NOFILE;
        past the fd table, ``expand_files`` first makes a larger one (ENOMEM, the table
        as it was). O(files)."""
        fd = next(i for i in range(3, len(self.files) + 4) if i not in self.files)
        if fd >= self.nofile_limit:
            raise kernel_error(errno.EMFILE, f"no fd below RLIMIT_NOFILE "
                               f"({self.nofile_limit}): {len(self.files)} files open")
        if fd >= self.max_fds:
            self.max_fds = _alloc_fdtable(self.machine.mem.fail_nth, fd + 1)  # expand_fdtable
        return fd

    def fd_install(self, fd: int, f: File) -> int:
        """``fd_install``: ``f`` at ``fd`` (from :meth:`get_unused_fd`); returns ``fd``."""
        self.files[fd] = f
        return fd

    def install(self, f: File) -> int:
        """:meth:`get_unused_fd` + :meth:`fd_install` of a file already made, for the
        callers whose kernel path takes the fd after the file; when no fd can be had the
        caller's reference to the file is dropped, as its error path would (``fput``)."""
        try:
            fd = self.get_unused_fd()
        except KernelError:
            fput(f)
            raise
        return self.fd_install(fd, f)

    def close(self, fd: int) -> None:
        f = self._file(fd)
        del self.files[fd]
        fput(f)

    def eventfd(self, initval: int = 0, *, semaphore: bool = False) -> int:
        """``eventfd(initval, EFD_SEMAPHORE if semaphore)``: EINVAL for an initial value
        that is not an unsigned int. Read it with :meth:`read_fd` (lab: it never
        blocks, as with EFD_NONBLOCK: EAGAIN at zero)."""
        from ..eventfd import EventFdFile
        if not 0 <= initval <= 0xFFFF_FFFF:
            raise InvalidArgument(f"eventfd: initval {initval} is not an unsigned int")
        return self.install(EventFdFile(initval, semaphore))

    def read_fd(self, fd: int, n: int) -> bytes:
        """``read(fd, buf, n)``: what the file gives (an eventfd its counter, a VFIO
        device fd the region at its file position); EINVAL for a negative ``n``, EBADF
        for an fd not open, EINVAL for a file with no read."""
        count = _rw_count(n, 0)
        return self._file(fd).read_fd(count)

    def write_fd(self, fd: int, data: bytes | bytearray) -> int:
        """``write(fd, data, len(data))``: the count written."""
        return self._file(fd).write_fd(bytes(data[:MAX_RW_COUNT]))

    def poll(self, fd: int) -> int:
        """``poll`` of one fd without waiting: the events the file reports (EPOLL*
        bits); EBADF for an fd not open (lab: ``poll(2)`` itself reports POLLNVAL)."""
        return self._file(fd).poll()

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        """``pread64``: EINVAL for a negative ``offset`` (before the fd is looked up),
        EBADF for an fd not open, ESPIPE for a file without positional reads (an
        eventfd), EINVAL for one with no read or for ``offset + n`` past 2^63 - 1
        (``rw_verify_area``); ``n`` is cut to MAX_RW_COUNT. The bytes read (fewer at
        the end of a region)."""
        if offset < 0 or offset >= 1 << 63:
            raise InvalidArgument(f"pread: offset {offset:#x} is negative")
        f = self._file(fd)
        if not f.positional:
            raise kernel_error(errno.ESPIPE, f"pread: fd {fd} cannot seek")
        return f.pread(_rw_count(n, offset), offset)

    def pwrite(self, fd: int, data: bytes | bytearray, offset: int) -> int:
        """``pwrite64``: as :meth:`pread`; the count written."""
        if offset < 0 or offset >= 1 << 63:
            raise InvalidArgument(f"pwrite: offset {offset:#x} is negative")
        f = self._file(fd)
        if not f.positional:
            raise kernel_error(errno.ESPIPE, f"pwrite: fd {fd} cannot seek")
        count = _rw_count(len(data), offset)
        return f.pwrite(bytes(data[:count]), offset)

    def fork(self) -> Process:
        """``fork``: a child with the same credentials and limits, the same open files
        and the address space as ``dup_mmap`` gives it (:meth:`MmStruct.fork`: private
        memory shared until written, pages that may be pinned copied now).

        ``copy_process``'s allocations, in its order, where the model has what they
        hold: the task (``dup_task_struct``), its credentials (``copy_creds``), the file
        table (``dup_fd``, a larger fd table when the parent's open fds pass
        NR_OPEN_DEFAULT), the rlimits (``copy_signal``), the address space (``dup_mm``).
        ENOMEM undoes what was made: the child's file references are dropped and its
        half-built mm torn down (what the parent's pages keep from it:
        :meth:`MmStruct.fork`). Lab: the thread stack, fs_struct, sighand, page tables,
        maple tree nodes and the pid have no state in the model and are no points."""
        fail = self.machine.mem.fail_nth
        fail.check("alloc_task_struct_node(dup_task_struct)")
        fail.check("kmem_cache_alloc(cred_jar)")  # prepare_creds
        fail.check("kmem_cache_alloc(files_cachep)")  # dup_fd
        max_fds = NR_OPEN_DEFAULT
        open_files = (max(self.files) // NR_OPEN_DEFAULT + 1) * NR_OPEN_DEFAULT \
            if self.files else 0  # sane_fdtable_size: whole words of the open fds bitmap
        if open_files > max_fds:
            max_fds = _alloc_fdtable(fail, open_files)
        files = {fd: get_file(f) for fd, f in self.files.items()}
        try:
            fail.check("kmem_cache_alloc(signal_cachep)")  # copy_signal
            mm = self.mm.fork()
        except KernelError:
            for f in files.values():
                fput(f)
            raise
        child = Process(self.machine, self.memlock_limit, self.cap_ipc_lock, self.uid,
                        self.cap_sys_resource, self.nofile_limit)
        child.mm.close()  # lab: the empty mm Process made is replaced by the copy
        child.mm, child.files, child.max_fds = mm, files, max_fds
        return child

    @overload
    def ioctl(self, fd: int, request: int, arg: int = 0, mutate_flag: bool = True) -> int: ...
    @overload
    def ioctl(self, fd: int, request: int, arg: bytes | str,
              mutate_flag: bool = True) -> bytes: ...
    @overload
    def ioctl(self, fd: int, request: int, arg: bytearray | array[Any],
              mutate_flag: Literal[True] = True) -> int: ...
    @overload
    def ioctl(self, fd: int, request: int, arg: WriteableBuffer,
              mutate_flag: Literal[False]) -> bytes: ...
    @overload
    def ioctl(self, fd: int, request: int, arg: ReadableBuffer,
              mutate_flag: bool = True) -> Any: ...

    def ioctl(self, fd: int, request: int, arg: object = 0,
              mutate_flag: bool = True) -> int | bytes:
        """``ioctl(2)`` called as ``fcntl.ioctl(fd, request, arg, mutate_flag)`` calls it
        (:func:`.ioctlarg.fcntl_ioctl`: an int is the value; a mutable buffer is written
        in place and the int returned, unless ``mutate_flag`` is false; anything else
        with the buffer protocol gives new bytes of what the kernel wrote). fcntl's
        ValueError for a negative fd and the argument's own errors (TypeError,
        OverflowError, ValueError) come first, then :meth:`sys_ioctl`."""
        if fd < 0:  # fcntl's fildes converter
            raise ValueError(f"file descriptor cannot be a negative integer ({fd})")
        return fcntl_ioctl(lambda a: self.sys_ioctl(fd, request, a), arg, mutate_flag)

    def sys_ioctl(self, fd: int, request: int, arg: int | bytearray = 0) -> int:
        """``SYSCALL_DEFINE3(ioctl)`` as a C program makes it: the request as an unsigned
        int, EBADF for an fd not open, then the file's ``unlocked_ioctl`` with ``arg``
        the unsigned long value or the user memory it points at (written in place); the
        return value, or OSError with the kernel's errno."""
        return self._file(fd).ioctl(self, request & 0xFFFF_FFFF, arg)

    def exit(self) -> None:
        """Close every file, then drop the address space."""
        for fd in sorted(self.files):
            self.close(fd)
        self.mm.close()

    def _file(self, fd: int) -> File:
        f = self.files.get(fd)
        if f is None:
            raise BadFileDescriptor(f"fd {fd} is not open")
        return f
