"""The VFIO type1 container ioctls answered by ``/dev/iommu`` (drivers/iommu/iommufd/
vfio_compat.c, 7.0).

They act on the context's compatibility IOAS (``IOMMU_VFIO_IOAS`` SET, or the
one a VFIO group creates when it is given an iommufd as its container);
without it MAP, UNMAP, GET_INFO, SET_IOMMU and CHECK_EXTENSION(DMA_CC) give
ENODEV. Where the layer differs from real type1 it is on purpose, as the
kernel documents it (reference §2.15):

- MAP takes READ/WRITE only (VADDR is EINVAL) and does not require either;
- UNMAP takes ALL only; a range that cuts a mapping is ENOENT, one that
  holds nothing unmaps 0 bytes (``iopt_unmap_iova_range`` starts from
  rc = 0), and the size unmapped is written back even on error;
- TYPE1 (v1) disables large pages on the IOAS and cuts areas at the ends of
  the range before unmapping, so any page-aligned sub-range unmaps exactly;
- GET_INFO's chain is DMA_AVAIL (``U32_MAX``) then IOVA_RANGE, no MIGRATION;
- DIRTY_PAGES, UPDATE_VADDR and the nesting type are not offered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import InvalidArgument, KernelError, NoDevice, NotATty
from ..prot import Prot
from ..sizes import PAGE_SIZE
from ..vfio import uapi as v
from ..vfio.files import _Arg
from .iova_space import ULONG_MAX
from .objects import Ioas

if TYPE_CHECKING:
    from ..syscall.process import Process
    from .file import IommufdFile

__all__ = ["COMPAT_IOCTLS", "vfio_compat_ioctl"]

U32_MAX = (1 << 32) - 1

_Handler = Callable[["IommufdFile", "Process", "int | bytes | bytearray"], int]


def vfio_compat_ioctl(f: IommufdFile, proc: Process, request: int,
                      arg: int | bytes | bytearray) -> int:
    """``iommufd_vfio_ioctl``: ENOTTY (the kernel's ENOIOCTLCMD) for anything else,
    VFIO_IOMMU_DIRTY_PAGES included."""
    handler = _IOCTLS.get(request)
    if handler is None:
        raise NotATty(f"ioctl {request:#x}: neither an iommufd nor a VFIO compat command")
    return handler(f, proc, arg)


def compat_ioas(f: IommufdFile) -> Ioas:
    """``get_compat_ioas``: ENODEV when there is none."""
    ioas = f.ctx.vfio_ioas
    if ioas is None:
        raise NoDevice("VFIO compat: no compatibility IOAS (IOMMU_VFIO_IOAS SET, or a group "
                       "set to this iommufd)")
    return ioas


def _int(arg: int | bytes | bytearray) -> int:
    if not isinstance(arg, int):
        raise InvalidArgument("ioctl: this request takes an integer argument")
    return arg


def _check_extension(f: IommufdFile, ext: int) -> int:
    """``iommufd_vfio_check_extension``; DMA_CC is 1 iff every paging HWPT of the compat
    IOAS enforces cache coherency (``iommufd_vfio_cc_iommu``)."""
    if ext in (v.VFIO_TYPE1_IOMMU, v.VFIO_TYPE1v2_IOMMU, v.VFIO_UNMAP_ALL):
        return 1
    if ext == v.VFIO_DMA_CC_IOMMU:
        return int(all(h.enforce_cache_coherency for h in compat_ioas(f).hwpts))
    return 0  # NOIOMMU (not built), the nesting type, UPDATE_VADDR and anything else


def _set_iommu(f: IommufdFile, type: int) -> int:
    """``iommufd_vfio_set_iommu``: TYPE1 or TYPE1v2 (EINVAL otherwise), ENODEV without a
    compat IOAS; TYPE1 disables large pages so any range can be unmapped."""
    if type not in (v.VFIO_TYPE1_IOMMU, v.VFIO_TYPE1v2_IOMMU):
        raise InvalidArgument(f"SET_IOMMU: type {type} is not TYPE1 or TYPE1v2")
    ioas = compat_ioas(f)
    if type == v.VFIO_TYPE1_IOMMU:
        ioas.iopt.set_large_pages(False)
    return 0


def _map_dma(f: IommufdFile, proc: Process, a: _Arg) -> int:
    """``iommufd_vfio_map_dma``: EINVAL for a short argsz or a flag beyond READ|WRITE;
    the IOVA is fixed; neither READ nor WRITE is required."""
    argsz, flags, vaddr, iova, size = v.DMA_MAP.unpack(a.read(0, v.DMA_MAP.size))
    if argsz < v.DMA_MAP.size or flags & ~(v.VFIO_DMA_MAP_FLAG_READ |
                                           v.VFIO_DMA_MAP_FLAG_WRITE):
        raise InvalidArgument(f"MAP_DMA: argsz {argsz} or flags {flags:#x}")
    prot = int(Prot.CACHE)
    if flags & v.VFIO_DMA_MAP_FLAG_READ:
        prot |= Prot.READ
    if flags & v.VFIO_DMA_MAP_FLAG_WRITE:
        prot |= Prot.WRITE
    f.map_user_pages(proc, compat_ioas(f), vaddr, size, iova, prot, fixed=True)
    return 0


def _unmap_dma(f: IommufdFile, a: _Arg) -> int:
    """``iommufd_vfio_unmap_dma``: ALL needs iova = size = 0; with large pages disabled
    the range's ends are cut first; ``size`` is written back whatever the result."""
    argsz, flags, iova, size = v.DMA_UNMAP.unpack(a.read(0, v.DMA_UNMAP.size))
    if argsz < v.DMA_UNMAP.size or flags & ~v.VFIO_DMA_UNMAP_FLAG_ALL:
        raise InvalidArgument(f"UNMAP_DMA: argsz {argsz} or flags {flags:#x}")
    iopt = compat_ioas(f).iopt
    err: KernelError | None = None
    if flags & v.VFIO_DMA_UNMAP_FLAG_ALL:
        if iova or size:
            raise InvalidArgument("UNMAP_DMA: ALL with a non-zero iova or size")
        unmapped = iopt.unmap_all()
    else:
        if iopt.disable_large_pages:
            cuts = [(iova + size - 1) & ULONG_MAX] + ([iova - 1] if iova else [])
            iopt.cut_iova(cuts)
        try:
            unmapped = iopt.unmap(iova, size)
        except KernelError as e:
            unmapped, err = getattr(e, "unmapped", 0), e
    a.write(0, v.DMA_UNMAP.pack(argsz, flags, iova, unmapped))
    if err is not None:
        raise err
    return 0


def _get_info(f: IommufdFile, a: _Arg) -> int:
    """``iommufd_vfio_iommu_get_info``: the capability chain is written only where it fits
    in ``argsz``; ``cap_offset`` is set only when all of it fits, and ``argsz`` comes back
    as the size needed."""
    minsz = v.IOMMU_INFO_MINSZ
    argsz = int.from_bytes(a.read(0, minsz)[:4], "little")
    if argsz < minsz:
        raise InvalidArgument(f"GET_INFO: argsz {argsz} < {minsz}")
    ioas = compat_ioas(f)
    total = v.IOMMU_INFO.size
    last_next_at: int | None = None
    for fill in (_fill_cap_dma_avail, _fill_cap_iova):
        room = argsz - total if argsz > total else 0
        size = -(-fill(ioas, a if room else None, total, room) // 8) * 8
        if last_next_at is not None and argsz >= total:
            a.write(last_next_at, total.to_bytes(4, "little"))
        last_next_at = total + 4  # the header's ``next``
        total += size
    cap_offset = v.IOMMU_INFO.size if argsz >= total else 0
    flags = v.VFIO_IOMMU_INFO_PGSIZES | v.VFIO_IOMMU_INFO_CAPS
    info = v.IOMMU_INFO.pack(total, flags, _pagesizes(ioas), cap_offset, 0)
    a.write(0, info[:min(argsz, v.IOMMU_INFO.size)])
    return 0


def _fill_cap_dma_avail(ioas: Ioas, a: _Arg | None, at: int, room: int) -> int:
    """``iommufd_fill_cap_dma_avail``: U32_MAX, the real limit being the memory cgroup's;
    written if it fits; its size."""
    cap = v.CAP_DMA_AVAIL.pack(v.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, 1, 0, U32_MAX)
    if a is not None and room >= len(cap):
        a.write(at, cap)
    return len(cap)


def _fill_cap_iova(ioas: Ioas, a: _Arg | None, at: int, room: int) -> int:
    """``iommufd_fill_cap_iova``: the holes of the reserved ranges. Each range is written
    if the capability up to it fits, the header only if all of it does; its size."""
    holes = ioas.iopt.space.holes_of_reserved()
    head, item = v.CAP_IOVA_RANGE.size, v.IOVA_RANGE.size
    if a is not None:
        for i, (start, last) in enumerate(holes):
            if room >= head + item * (i + 1):
                a.write(at + head + item * i, v.IOVA_RANGE.pack(start, last))
        if room >= head + item * len(holes):
            a.write(at, v.CAP_IOVA_RANGE.pack(v.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, 1, 0,
                                              len(holes), 0))
    return head + item * len(holes)


def _pagesizes(ioas: Ioas) -> int:
    """``iommufd_get_pagesizes``: the domains' common sizes, sub-page sizes folded into
    PAGE_SIZE (as ``vfio_update_pgsize_bitmap``), at least the IOVA alignment."""
    bitmap = ULONG_MAX
    for domain in ioas.iopt.domains:
        bitmap &= domain.pgsize_bitmap
    if bitmap & (PAGE_SIZE - 1):
        bitmap = (bitmap & ~(PAGE_SIZE - 1) & ULONG_MAX) | PAGE_SIZE
    return max(bitmap, ioas.iopt.iova_alignment)


#: ``iommufd_vfio_ioctl``'s switch: request -> handler (``COMPAT_IOCTLS``: its requests)
_IOCTLS: dict[int, _Handler] = {
    v.VFIO_GET_API_VERSION: lambda f, proc, arg: v.VFIO_API_VERSION,
    v.VFIO_SET_IOMMU: lambda f, proc, arg: _set_iommu(f, _int(arg)),
    v.VFIO_CHECK_EXTENSION: lambda f, proc, arg: _check_extension(f, _int(arg)),
    v.VFIO_IOMMU_GET_INFO: lambda f, proc, arg: _get_info(f, _Arg(arg)),
    v.VFIO_IOMMU_MAP_DMA: lambda f, proc, arg: _map_dma(f, proc, _Arg(arg)),
    v.VFIO_IOMMU_UNMAP_DMA: lambda f, proc, arg: _unmap_dma(f, _Arg(arg)),
}
COMPAT_IOCTLS: tuple[int, ...] = tuple(_IOCTLS)
