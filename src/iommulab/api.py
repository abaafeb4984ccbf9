"""A typed Python API over /dev/vfio and /dev/iommu that runs unchanged on a real kernel
and on the model.

The classes follow rust-vmm's ``vfio-ioctls`` (``VfioContainer.vfio_dma_map(iova, size,
user_addr)``) and the kernel selftest helpers (``tools/testing/selftests/iommu/
iommufd_utils.h``: ``ioas_alloc``, ``ioas_map`` returning the IOVA, ...), build every
argument from the :mod:`iommulab.uapi` ctypes structs and raise OSError with the
kernel's errno. What they talk to is a :class:`Kernel`: :class:`RealKernel` calls
``fcntl.ioctl`` and ``os.pread`` on real fds, :class:`ModelKernel` a model
:class:`~iommulab.syscall.process.Process` (whose ``ioctl`` takes arguments as
``fcntl.ioctl`` does). Both record the bytes of every ioctl argument (``calls``) as they
were handed over, so the two can be compared.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import weakref
from ctypes import sizeof
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from .uapi import iommufd as iu
from .uapi import offsetofend
from .uapi import vfio as vu

if TYPE_CHECKING:
    from .syscall.process import Process

__all__ = [
    "IommuInfo",
    "Iommufd",
    "Kernel",
    "ModelKernel",
    "RealKernel",
    "VfioContainer",
    "VfioDevice",
    "VfioGroup",
    "kernel_of",
]

_RW = iu.IOMMU_IOAS_MAP_READABLE | iu.IOMMU_IOAS_MAP_WRITEABLE
_DMA_RW = vu.VFIO_DMA_MAP_FLAG_READ | vu.VFIO_DMA_MAP_FLAG_WRITE
_MEM: TypeAlias = "ctypes.Structure | ctypes.Array[Any] | ctypes.c_int32 | bytearray"
_S = TypeVar("_S", bound=ctypes.Structure)


@dataclass
class Kernel:
    """Where the calls go: ``open``/``close``, ``ioctl`` with a mutable argument
    (written in place, the int result returned), positional reads and writes, and
    anonymous memory whose address the kernel is given (a bitmap, a DMA buffer)."""

    #: (request, argument bytes as handed over) of every ioctl, in order
    calls: list[tuple[int, bytes]] = field(default_factory=list, init=False)

    def ioctl(self, fd: int, request: int, arg: int | _MEM) -> int:
        self.calls.append((request, arg.to_bytes(8, "little", signed=True)
                           if isinstance(arg, int) else bytes(arg)))
        return self._ioctl(fd, request, arg)

    def _ioctl(self, fd: int, request: int, arg: int | _MEM) -> int:
        raise NotImplementedError

    def open(self, path: str) -> int:
        raise NotImplementedError

    def close(self, fd: int) -> None:
        raise NotImplementedError

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        raise NotImplementedError

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        raise NotImplementedError

    def alloc(self, length: int) -> int:
        """Zeroed anonymous memory, read-write: its address."""
        raise NotImplementedError

    def read(self, addr: int, n: int) -> bytes:
        raise NotImplementedError

    def write(self, addr: int, data: bytes) -> None:
        raise NotImplementedError


@dataclass
class RealKernel(Kernel):
    """This process on the running kernel: ``os.open``, ``fcntl.ioctl`` (mutate_flag
    true: the argument is written in place), ``os.pread``, ``mmap``."""

    _maps: list[mmap.mmap] = field(default_factory=list, init=False, repr=False)

    def _ioctl(self, fd: int, request: int, arg: int | _MEM) -> int:
        return fcntl.ioctl(fd, request, arg, True) if not isinstance(arg, int) \
            else fcntl.ioctl(fd, request, arg)

    def open(self, path: str) -> int:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)

    def close(self, fd: int) -> None:
        os.close(fd)

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        return os.pread(fd, n, offset)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        return os.pwrite(fd, data, offset)

    def alloc(self, length: int) -> int:
        m = mmap.mmap(-1, length)
        self._maps.append(m)  # kept for the life of this object: the kernel has its address
        return ctypes.addressof(ctypes.c_char.from_buffer(m))

    def read(self, addr: int, n: int) -> bytes:
        return ctypes.string_at(addr, n)

    def write(self, addr: int, data: bytes) -> None:
        ctypes.memmove(addr, data, len(data))


@dataclass
class ModelKernel(Kernel):
    """A model process: the same calls on :class:`~iommulab.syscall.process.Process`."""

    proc: Process

    def _ioctl(self, fd: int, request: int, arg: int | _MEM) -> int:
        return int(self.proc.ioctl(fd, request, arg))

    def open(self, path: str) -> int:
        return self.proc.open(path)

    def close(self, fd: int) -> None:
        self.proc.close(fd)

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        return self.proc.pread(fd, n, offset)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        return self.proc.pwrite(fd, data, offset)

    def alloc(self, length: int) -> int:
        return self.proc.mmap(length)

    def read(self, addr: int, n: int) -> bytes:
        return self.proc.read(addr, n)

    def write(self, addr: int, data: bytes) -> None:
        self.proc.write(addr, data)


def kernel_of(backend: Kernel | Process | None) -> Kernel:
    """A :class:`Kernel` for ``backend``: None is the running kernel (a new
    :class:`RealKernel`), a model process its :class:`ModelKernel` (the same one for
    every object built from that process)."""
    if backend is None:
        return RealKernel()
    if isinstance(backend, Kernel):
        return backend
    kernel = _MODEL_KERNELS.get(id(backend))
    if kernel is None or kernel.proc is not backend:
        kernel = _MODEL_KERNELS[id(backend)] = ModelKernel(backend)
    return kernel


#: the ModelKernel of each process some API object still uses, so that the objects built
#: from one process share one ``calls`` log (an entry goes with its last user; while it
#: lives it holds the process, so the id is that process's)
_MODEL_KERNELS: weakref.WeakValueDictionary[int, ModelKernel] = weakref.WeakValueDictionary()


class _Fd:
    """An open fd on a :class:`Kernel`."""

    def __init__(self, fd: int, kernel: Kernel | Process | None = None) -> None:
        self.fd = fd
        self.kernel = kernel_of(kernel)

    def ioctl(self, request: int, arg: int | _MEM = 0) -> int:
        return self.kernel.ioctl(self.fd, request, arg)

    def close(self) -> None:
        self.kernel.close(self.fd)


def _argsz(cls: type[_S], **fields: int) -> _S:
    """``cls`` with its first member (``argsz`` or ``size``) set to its size."""
    return cls(sizeof(cls), **fields)


def _with_tail(head: ctypes.Structure, tail: bytes) -> bytearray:
    """A struct followed by the variable part the header's ``data[]`` stands for."""
    return bytearray(bytes(head) + tail)


# -- iommufd ---------------------------------------------------------------------------------------

class Iommufd(_Fd):
    """``/dev/iommu``: the selftest helpers (iommufd_utils.h) as methods."""

    @classmethod
    def open(cls, kernel: Kernel | Process | None = None,
             path: str = "/dev/iommu") -> Iommufd:
        k = kernel_of(kernel)
        return cls(k.open(path), k)

    def ioas_alloc(self) -> int:
        """IOMMU_IOAS_ALLOC: the new IOAS id."""
        cmd = _argsz(iu.iommu_ioas_alloc)
        self.ioctl(iu.IOMMU_IOAS_ALLOC, cmd)
        return int(cmd.out_ioas_id)

    def ioas_map(self, ioas_id: int, user_va: int, length: int, iova: int | None = None,
                 flags: int = _RW) -> int:
        """IOMMU_IOAS_MAP of ``[user_va, user_va + length)``: at ``iova`` (FIXED_IOVA),
        or where the kernel chooses when None. The IOVA used."""
        if iova is not None:
            flags |= iu.IOMMU_IOAS_MAP_FIXED_IOVA
        cmd = _argsz(iu.iommu_ioas_map, flags=flags, ioas_id=ioas_id, user_va=user_va,
                     length=length, iova=iova or 0)
        self.ioctl(iu.IOMMU_IOAS_MAP, cmd)
        return int(cmd.iova)

    def ioas_unmap(self, ioas_id: int, iova: int, length: int) -> int:
        """IOMMU_IOAS_UNMAP: the length unmapped (iova 0, length 2**64 - 1: everything)."""
        cmd = _argsz(iu.iommu_ioas_unmap, ioas_id=ioas_id, iova=iova, length=length)
        self.ioctl(iu.IOMMU_IOAS_UNMAP, cmd)
        return int(cmd.length)

    def ioas_copy(self, dst_ioas_id: int, src_ioas_id: int, src_iova: int, length: int,
                  dst_iova: int | None = None, flags: int = _RW) -> int:
        """IOMMU_IOAS_COPY: the IOVA used in the destination."""
        if dst_iova is not None:
            flags |= iu.IOMMU_IOAS_MAP_FIXED_IOVA
        cmd = _argsz(iu.iommu_ioas_copy, flags=flags, dst_ioas_id=dst_ioas_id,
                     src_ioas_id=src_ioas_id, length=length, dst_iova=dst_iova or 0,
                     src_iova=src_iova)
        self.ioctl(iu.IOMMU_IOAS_COPY, cmd)
        return int(cmd.dst_iova)

    def ioas_iova_ranges(self, ioas_id: int) -> tuple[list[tuple[int, int]], int]:
        """IOMMU_IOAS_IOVA_RANGES: the usable ranges as (start, last) and the IOVA
        alignment. Asked once with no room; on EMSGSIZE asked again with room for
        ``num_iovas`` (the selftest's two-step)."""
        cmd = _argsz(iu.iommu_ioas_iova_ranges, ioas_id=ioas_id)
        try:
            self.ioctl(iu.IOMMU_IOAS_IOVA_RANGES, cmd)
        except OSError as e:
            if e.errno != errno.EMSGSIZE:  # the count is written back
                raise
        n = int(cmd.num_iovas)
        ranges = (iu.iommu_iova_range * n)()
        addr = self.kernel.alloc(max(sizeof(ranges), 1))
        cmd = _argsz(iu.iommu_ioas_iova_ranges, ioas_id=ioas_id, num_iovas=n,
                     allowed_iovas=addr)
        self.ioctl(iu.IOMMU_IOAS_IOVA_RANGES, cmd)
        ranges = (iu.iommu_iova_range * n).from_buffer_copy(
            self.kernel.read(addr, sizeof(ranges)))
        return [(int(r.start), int(r.last)) for r in ranges], int(cmd.out_iova_alignment)

    def ioas_allow_iovas(self, ioas_id: int, ranges: list[tuple[int, int]]) -> None:
        """IOMMU_IOAS_ALLOW_IOVAS: only ``ranges`` (start, last) may be allocated."""
        arr = (iu.iommu_iova_range * len(ranges))(
            *(iu.iommu_iova_range(start, last) for start, last in ranges))
        addr = self.kernel.alloc(max(sizeof(arr), 1))
        self.kernel.write(addr, bytes(arr))
        self.ioctl(iu.IOMMU_IOAS_ALLOW_IOVAS, _argsz(
            iu.iommu_ioas_allow_iovas, ioas_id=ioas_id, num_iovas=len(ranges),
            allowed_iovas=addr))

    def option(self, option_id: int, val64: int = 0, *, object_id: int = 0,
               op: int = iu.IOMMU_OPTION_OP_SET) -> int:
        """IOMMU_OPTION: the value after the call (the one read with OP_GET)."""
        cmd = _argsz(iu.iommu_option, option_id=option_id, op=op, object_id=object_id,
                     val64=val64)
        self.ioctl(iu.IOMMU_OPTION, cmd)
        return int(cmd.val64)

    def destroy(self, id: int) -> None:
        """IOMMU_DESTROY of any object id."""
        self.ioctl(iu.IOMMU_DESTROY, _argsz(iu.iommu_destroy, id=id))

    def hwpt_alloc(self, dev_id: int, pt_id: int, flags: int = 0) -> int:
        """IOMMU_HWPT_ALLOC of a paging HWPT on ``pt_id`` for ``dev_id``: its id."""
        cmd = _argsz(iu.iommu_hwpt_alloc, flags=flags, dev_id=dev_id, pt_id=pt_id)
        self.ioctl(iu.IOMMU_HWPT_ALLOC, cmd)
        return int(cmd.out_hwpt_id)

    def fault_queue_alloc(self) -> tuple[int, int]:
        """IOMMU_FAULT_QUEUE_ALLOC: the fault object's id, to name in a HWPT_ALLOC with
        IOMMU_HWPT_FAULT_ID_VALID, and its fd, which ``read`` gives whole
        ``struct iommu_hwpt_pgfault`` groups and ``write`` takes
        ``struct iommu_hwpt_page_response`` records (close it before the object can be
        destroyed)."""
        cmd = _argsz(iu.iommu_fault_alloc)
        self.ioctl(iu.IOMMU_FAULT_QUEUE_ALLOC, cmd)
        return int(cmd.out_fault_id), int(cmd.out_fault_fd)

    def hwpt_set_dirty_tracking(self, hwpt_id: int, enable: bool) -> None:
        """IOMMU_HWPT_SET_DIRTY_TRACKING."""
        self.ioctl(iu.IOMMU_HWPT_SET_DIRTY_TRACKING, _argsz(
            iu.iommu_hwpt_set_dirty_tracking, hwpt_id=hwpt_id,
            flags=iu.IOMMU_HWPT_DIRTY_TRACKING_ENABLE if enable else 0))

    def hwpt_get_dirty_bitmap(self, hwpt_id: int, iova: int, length: int,
                              page_size: int = 4096, flags: int = 0) -> bytes:
        """IOMMU_HWPT_GET_DIRTY_BITMAP: one bit per ``page_size`` of ``[iova, iova +
        length)``, in u64 words (cleared unless ``flags`` has NO_CLEAR)."""
        nbytes = -(-(length // page_size) // 64) * 8
        addr = self.kernel.alloc(max(nbytes, 8))
        self.ioctl(iu.IOMMU_HWPT_GET_DIRTY_BITMAP, _argsz(
            iu.iommu_hwpt_get_dirty_bitmap, hwpt_id=hwpt_id, flags=flags, iova=iova,
            length=length, page_size=page_size, data=addr))
        return self.kernel.read(addr, nbytes)

    # -- Linux 7.0's nesting uAPI (ENOTTY from a 6.12 kernel) ------------------------------
    def hwpt_alloc_nested(self, dev_id: int, pt_id: int, data_type: int, data: bytes,
                          flags: int = 0) -> int:
        """IOMMU_HWPT_ALLOC of a nested HWPT on ``pt_id`` (a nest-parent HWPT or a
        vIOMMU) with the driver's ``data`` (a guest STE for IOMMU_HWPT_DATA_ARM_SMMUV3):
        its id."""
        addr = self.kernel.alloc(max(len(data), 8))
        self.kernel.write(addr, data)
        cmd = _argsz(iu.iommu_hwpt_alloc, flags=flags, dev_id=dev_id, pt_id=pt_id,
                     data_type=data_type, data_len=len(data), data_uptr=addr)
        self.ioctl(iu.IOMMU_HWPT_ALLOC, cmd)
        return int(cmd.out_hwpt_id)

    def hwpt_invalidate(self, id: int, data_type: int, entries: list[bytes]) -> int:
        """IOMMU_HWPT_INVALIDATE of ``entries`` (equal lengths) at a nested HWPT or a
        vIOMMU: the entries the kernel handled. On an error the OSError raised carries
        that count as ``entry_num``."""
        entry_len = len(entries[0]) if entries else 0
        addr = self.kernel.alloc(max(entry_len * len(entries), 8))
        self.kernel.write(addr, b"".join(entries))
        cmd = _argsz(iu.iommu_hwpt_invalidate, hwpt_id=id, data_uptr=addr if entries else 0,
                     data_type=data_type, entry_len=entry_len, entry_num=len(entries))
        try:
            self.ioctl(iu.IOMMU_HWPT_INVALIDATE, cmd)
        except OSError as e:
            e.entry_num = int(cmd.entry_num)  # type: ignore[attr-defined]
            raise
        return int(cmd.entry_num)

    def viommu_alloc(self, dev_id: int, hwpt_id: int, type: int) -> int:
        """IOMMU_VIOMMU_ALLOC of a ``type`` vIOMMU on the nest-parent ``hwpt_id``: its id."""
        cmd = _argsz(iu.iommu_viommu_alloc, type=type, dev_id=dev_id, hwpt_id=hwpt_id)
        self.ioctl(iu.IOMMU_VIOMMU_ALLOC, cmd)
        return int(cmd.out_viommu_id)

    def vdevice_alloc(self, viommu_id: int, dev_id: int, virt_id: int) -> int:
        """IOMMU_VDEVICE_ALLOC: ``dev_id`` at ``virt_id`` (a vSID) of the vIOMMU; its id."""
        cmd = _argsz(iu.iommu_vdevice_alloc, viommu_id=viommu_id, dev_id=dev_id,
                     virt_id=virt_id)
        self.ioctl(iu.IOMMU_VDEVICE_ALLOC, cmd)
        return int(cmd.out_vdevice_id)

    def veventq_alloc(self, viommu_id: int, type: int, depth: int) -> tuple[int, int]:
        """IOMMU_VEVENTQ_ALLOC: (the vEVENTQ's id, its fd), which ``read`` gives
        ``struct iommufd_vevent_header`` + record pairs."""
        cmd = _argsz(iu.iommu_veventq_alloc, viommu_id=viommu_id, type=type,
                     veventq_depth=depth)
        self.ioctl(iu.IOMMU_VEVENTQ_ALLOC, cmd)
        return int(cmd.out_veventq_id), int(cmd.out_veventq_fd)


# -- VFIO ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class IommuInfo:
    """VFIO_IOMMU_GET_INFO with its capability chain parsed (vfio_iommu_type1_get_info)."""

    flags: int
    iova_pgsizes: int
    iova_ranges: list[tuple[int, int]] | None = None  # (start, end), inclusive
    migration: vu.vfio_iommu_type1_info_cap_migration | None = None
    dma_avail: int | None = None


def _parse_caps(buf: bytes, offset: int, info: dict[str, object]) -> None:
    """Walk ``vfio_info_cap_header.next`` from ``offset`` (0 ends it)."""
    seen = set()
    while offset and offset not in seen and offset + sizeof(vu.vfio_info_cap_header) <= len(buf):
        seen.add(offset)
        hdr = vu.vfio_info_cap_header.from_buffer_copy(buf, offset)
        if hdr.id == vu.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE:
            cap = vu.vfio_iommu_type1_info_cap_iova_range.from_buffer_copy(buf, offset)
            at = offset + sizeof(cap)
            rs = (vu.vfio_iova_range * cap.nr_iovas).from_buffer_copy(buf, at)
            info["iova_ranges"] = [(int(r.start), int(r.end)) for r in rs]
        elif hdr.id == vu.VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION:
            info["migration"] = vu.vfio_iommu_type1_info_cap_migration.from_buffer_copy(
                buf, offset)
        elif hdr.id == vu.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL:
            info["dma_avail"] = int(
                vu.vfio_iommu_type1_info_dma_avail.from_buffer_copy(buf, offset).avail)
        offset = int(hdr.next)


class VfioContainer(_Fd):
    """``/dev/vfio/vfio`` (rust-vmm's ``VfioContainer``)."""

    @classmethod
    def open(cls, kernel: Kernel | Process | None = None,
             path: str = "/dev/vfio/vfio") -> VfioContainer:
        k = kernel_of(kernel)
        return cls(k.open(path), k)

    def check_extension(self, ext: int) -> int:
        return self.ioctl(vu.VFIO_CHECK_EXTENSION, ext)

    def set_iommu(self, iommu_type: int = vu.VFIO_TYPE1v2_IOMMU) -> None:
        self.ioctl(vu.VFIO_SET_IOMMU, iommu_type)

    def get_info(self) -> IommuInfo:
        """VFIO_IOMMU_GET_INFO, asked again at the ``argsz`` the kernel wants for the
        capabilities."""
        head = _argsz(vu.vfio_iommu_type1_info)
        self.ioctl(vu.VFIO_IOMMU_GET_INFO, head)
        buf = _with_tail(head, bytes(max(int(head.argsz) - sizeof(head), 0)))
        buf[:4] = max(int(head.argsz), sizeof(head)).to_bytes(4, "little")
        self.ioctl(vu.VFIO_IOMMU_GET_INFO, buf)
        full = vu.vfio_iommu_type1_info.from_buffer_copy(buf)
        caps: dict[str, object] = {}
        if full.flags & vu.VFIO_IOMMU_INFO_CAPS:
            _parse_caps(bytes(buf), int(full.cap_offset), caps)
        return IommuInfo(int(full.flags), int(full.iova_pgsizes), **caps)  # type: ignore[arg-type]

    def vfio_dma_map(self, iova: int, size: int, user_addr: int,
                     flags: int = _DMA_RW) -> None:
        """VFIO_IOMMU_MAP_DMA of ``[user_addr, user_addr + size)`` at ``iova``."""
        self.ioctl(vu.VFIO_IOMMU_MAP_DMA, _argsz(
            vu.vfio_iommu_type1_dma_map, flags=flags, vaddr=user_addr, iova=iova, size=size))

    def vfio_dma_unmap(self, iova: int, size: int, flags: int = 0) -> int:
        """VFIO_IOMMU_UNMAP_DMA: the size unmapped."""
        cmd = _argsz(vu.vfio_iommu_type1_dma_unmap, flags=flags, iova=iova, size=size)
        self.ioctl(vu.VFIO_IOMMU_UNMAP_DMA, cmd)
        return int(cmd.size)

    def vfio_dma_unmap_dirty(self, iova: int, size: int,
                             pgsize: int = 4096) -> tuple[int, bytes]:
        """VFIO_IOMMU_UNMAP_DMA with GET_DIRTY_BITMAP: the size unmapped and the bitmap
        of the pages dirtied in it (u64 words)."""
        nbytes = -(-(size // pgsize) // 64) * 8
        addr = self.kernel.alloc(max(nbytes, 8))
        head = vu.vfio_iommu_type1_dma_unmap(
            sizeof(vu.vfio_iommu_type1_dma_unmap) + sizeof(vu.vfio_bitmap),
            vu.VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, iova, size)
        buf = _with_tail(head, bytes(vu.vfio_bitmap(pgsize, nbytes, addr)))
        self.ioctl(vu.VFIO_IOMMU_UNMAP_DMA, buf)
        return int(vu.vfio_iommu_type1_dma_unmap.from_buffer_copy(buf).size), \
            self.kernel.read(addr, nbytes)

    def _dirty(self, flags: int, tail: bytes = b"") -> int:
        head = vu.vfio_iommu_type1_dirty_bitmap(
            sizeof(vu.vfio_iommu_type1_dirty_bitmap) + len(tail), flags)
        return self.ioctl(vu.VFIO_IOMMU_DIRTY_PAGES, _with_tail(head, tail))

    def start_dirty_pages(self) -> None:
        self._dirty(vu.VFIO_IOMMU_DIRTY_PAGES_FLAG_START)

    def stop_dirty_pages(self) -> None:
        self._dirty(vu.VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP)

    def get_dirty_bitmap(self, iova: int, size: int, pgsize: int = 4096) -> bytes:
        """VFIO_IOMMU_DIRTY_PAGES GET_BITMAP of ``[iova, iova + size)`` (a whole
        mapping, as type1 wants): the bitmap, in u64 words."""
        nbytes = -(-(size // pgsize) // 64) * 8
        addr = self.kernel.alloc(max(nbytes, 8))
        get = vu.vfio_iommu_type1_dirty_bitmap_get(iova, size,
                                                   vu.vfio_bitmap(pgsize, nbytes, addr))
        self._dirty(vu.VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP, bytes(get))
        return self.kernel.read(addr, nbytes)


class VfioGroup(_Fd):
    """``/dev/vfio/<group>``."""

    @classmethod
    def open(cls, group_id: int, kernel: Kernel | Process | None = None) -> VfioGroup:
        k = kernel_of(kernel)
        return cls(k.open(f"/dev/vfio/{group_id}"), k)

    def status(self) -> int:
        """VFIO_GROUP_GET_STATUS: its flags (VIABLE, CONTAINER_SET)."""
        cmd = _argsz(vu.vfio_group_status)
        self.ioctl(vu.VFIO_GROUP_GET_STATUS, cmd)
        return int(cmd.flags)

    def set_container(self, container: VfioContainer | Iommufd) -> None:
        """VFIO_GROUP_SET_CONTAINER (an iommufd serves as a compat container)."""
        self.ioctl(vu.VFIO_GROUP_SET_CONTAINER, ctypes.c_int32(container.fd))

    def unset_container(self) -> None:
        self.ioctl(vu.VFIO_GROUP_UNSET_CONTAINER)

    def get_device_fd(self, name: str) -> VfioDevice:
        """VFIO_GROUP_GET_DEVICE_FD of the device ``name`` ("0000:00:02.0")."""
        arg = ctypes.create_string_buffer(name.encode())
        return VfioDevice(self.ioctl(vu.VFIO_GROUP_GET_DEVICE_FD, arg), self.kernel)


class VfioDevice(_Fd):
    """A device fd: from :meth:`VfioGroup.get_device_fd` or a cdev
    (``/dev/vfio/devices/vfioN``) bound to an iommufd."""

    @classmethod
    def open_cdev(cls, path: str, kernel: Kernel | Process | None = None) -> VfioDevice:
        k = kernel_of(kernel)
        return cls(k.open(path), k)

    def bind_iommufd(self, iommufd: Iommufd) -> int:
        """VFIO_DEVICE_BIND_IOMMUFD: the device id."""
        cmd = vu.vfio_device_bind_iommufd(
            offsetofend(vu.vfio_device_bind_iommufd, "out_devid"), 0, iommufd.fd)
        self.ioctl(vu.VFIO_DEVICE_BIND_IOMMUFD, cmd)
        return int(cmd.out_devid)

    def attach_pt(self, pt_id: int) -> int:
        """VFIO_DEVICE_ATTACH_IOMMUFD_PT: the id attached (an IOAS gives its HWPT's)."""
        cmd = vu.vfio_device_attach_iommufd_pt(
            offsetofend(vu.vfio_device_attach_iommufd_pt, "pt_id"), 0, pt_id)
        self.ioctl(vu.VFIO_DEVICE_ATTACH_IOMMUFD_PT, cmd)
        return int(cmd.pt_id)

    def detach_pt(self) -> None:
        self.ioctl(vu.VFIO_DEVICE_DETACH_IOMMUFD_PT, vu.vfio_device_detach_iommufd_pt(
            offsetofend(vu.vfio_device_detach_iommufd_pt, "flags"), 0))

    def get_info(self) -> vu.vfio_device_info:
        cmd = _argsz(vu.vfio_device_info)
        self.ioctl(vu.VFIO_DEVICE_GET_INFO, cmd)
        return cmd

    def region_info(self, index: int) -> vu.vfio_region_info:
        cmd = _argsz(vu.vfio_region_info, index=index)
        self.ioctl(vu.VFIO_DEVICE_GET_REGION_INFO, cmd)
        return cmd

    def irq_info(self, index: int) -> vu.vfio_irq_info:
        cmd = _argsz(vu.vfio_irq_info, index=index)
        self.ioctl(vu.VFIO_DEVICE_GET_IRQ_INFO, cmd)
        return cmd

    def set_irqs(self, index: int, flags: int, start: int = 0, count: int = 0,
                 data: bytes = b"") -> None:
        """VFIO_DEVICE_SET_IRQS with ``data`` (eventfds as s32, bools as u8) after it."""
        head = vu.vfio_irq_set(sizeof(vu.vfio_irq_set) + len(data), flags, index, start,
                               count)
        self.ioctl(vu.VFIO_DEVICE_SET_IRQS, _with_tail(head, data))

    def reset(self) -> None:
        self.ioctl(vu.VFIO_DEVICE_RESET)

    def read_region(self, index: int, offset: int, n: int) -> bytes:
        """``pread`` at the region's offset in the device fd."""
        return self.kernel.pread(self.fd, n, int(self.region_info(index).offset) + offset)

    def write_region(self, index: int, offset: int, data: bytes) -> int:
        return self.kernel.pwrite(self.fd, data, int(self.region_info(index).offset) + offset)
