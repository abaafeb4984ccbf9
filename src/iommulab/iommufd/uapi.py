"""include/uapi/linux/iommufd.h: command numbers, flags and struct layouts (x86_64), and the
size rule every command's argument goes through (``iommufd_fops_ioctl``).

Every iommufd command struct starts with ``__u32 size``. The kernel reads
``size``, refuses it below the offset of the end of the command's last
mandatory field (EINVAL), copies ``min(size, sizeof)`` bytes, and refuses a
longer struct whose extra bytes are not all zero (E2BIG,
``copy_struct_from_user``). Responses copy back ``min(size, sizeof)``
bytes. :data:`COMMANDS` holds, per command number, the layout and that
minimum, as ``iommufd_ioctl_ops[]`` (drivers/iommu/iommufd/main.c) declares
them, and the first release that has the command: 6.12's table lacks
IOMMU_IOAS_MAP_FILE, IOMMU_IOAS_CHANGE_PROCESS and the vIOMMU commands
(IOMMU_VIOMMU_ALLOC, IOMMU_VDEVICE_ALLOC, IOMMU_VEVENTQ_ALLOC) (:func:`command`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from ..errors import BadAddress, InvalidArgument, TooBig
from ..kernel import LINUX_6_12, LINUX_7_0, KernelVersion
from ..uapi import iommufd as _h
from ..uapi._base import ioc_io, struct_layout
from ..uapi.iommufd import (  # the numbers, flags and enums: defined once, there
    IOMMU_DESTROY,
    IOMMU_FAULT_QUEUE_ALLOC,
    IOMMU_GET_HW_INFO,
    IOMMU_HW_CAP_DIRTY_TRACKING,
    IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED,
    IOMMU_HW_INFO_FLAG_INPUT_TYPE,
    IOMMU_HW_INFO_TYPE_ARM_SMMUV3,
    IOMMU_HW_INFO_TYPE_DEFAULT,
    IOMMU_HW_INFO_TYPE_INTEL_VTD,
    IOMMU_HW_INFO_TYPE_NONE,
    IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17,
    IOMMU_HWPT_ALLOC,
    IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
    IOMMU_HWPT_ALLOC_NEST_PARENT,
    IOMMU_HWPT_ALLOC_PASID,
    IOMMU_HWPT_DATA_NONE,
    IOMMU_HWPT_DIRTY_TRACKING_ENABLE,
    IOMMU_HWPT_FAULT_ID_VALID,
    IOMMU_HWPT_GET_DIRTY_BITMAP,
    IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR,
    IOMMU_HWPT_INVALIDATE,
    IOMMU_HWPT_SET_DIRTY_TRACKING,
    IOMMU_IOAS_ALLOC,
    IOMMU_IOAS_ALLOW_IOVAS,
    IOMMU_IOAS_CHANGE_PROCESS,
    IOMMU_IOAS_COPY,
    IOMMU_IOAS_IOVA_RANGES,
    IOMMU_IOAS_MAP,
    IOMMU_IOAS_MAP_FILE,
    IOMMU_IOAS_MAP_FIXED_IOVA,
    IOMMU_IOAS_MAP_READABLE,
    IOMMU_IOAS_MAP_WRITEABLE,
    IOMMU_IOAS_UNMAP,
    IOMMU_OPTION,
    IOMMU_OPTION_HUGE_PAGES,
    IOMMU_OPTION_OP_GET,
    IOMMU_OPTION_OP_SET,
    IOMMU_OPTION_RLIMIT_MODE,
    IOMMU_VDEVICE_ALLOC,
    IOMMU_VEVENTQ_ALLOC,
    IOMMU_VFIO_IOAS,
    IOMMU_VFIO_IOAS_CLEAR,
    IOMMU_VFIO_IOAS_GET,
    IOMMU_VFIO_IOAS_SET,
    IOMMU_VIOMMU_ALLOC,
    IOMMUFD_TYPE,
)

__all__ = [  # and the header names imported above
    "COMMANDS",
    "IOMMUFD_TYPE",
    "IOMMU_DESTROY",
    "IOMMU_FAULT_QUEUE_ALLOC",
    "IOMMU_GET_HW_INFO",
    "IOMMU_HWPT_ALLOC",
    "IOMMU_HWPT_ALLOC_DIRTY_TRACKING",
    "IOMMU_HWPT_ALLOC_NEST_PARENT",
    "IOMMU_HWPT_ALLOC_PASID",
    "IOMMU_HWPT_DATA_NONE",
    "IOMMU_HWPT_DIRTY_TRACKING_ENABLE",
    "IOMMU_HWPT_FAULT_ID_VALID",
    "IOMMU_HWPT_GET_DIRTY_BITMAP",
    "IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR",
    "IOMMU_HWPT_INVALIDATE",
    "IOMMU_HWPT_SET_DIRTY_TRACKING",
    "IOMMU_HW_CAP_DIRTY_TRACKING",
    "IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED",
    "IOMMU_HW_INFO_FLAG_INPUT_TYPE",
    "IOMMU_HW_INFO_TYPE_ARM_SMMUV3",
    "IOMMU_HW_INFO_TYPE_DEFAULT",
    "IOMMU_HW_INFO_TYPE_INTEL_VTD",
    "IOMMU_HW_INFO_TYPE_NONE",
    "IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17",
    "IOMMU_IOAS_ALLOC",
    "IOMMU_IOAS_ALLOW_IOVAS",
    "IOMMU_IOAS_CHANGE_PROCESS",
    "IOMMU_IOAS_COPY",
    "IOMMU_IOAS_IOVA_RANGES",
    "IOMMU_IOAS_MAP",
    "IOMMU_IOAS_MAP_FILE",
    "IOMMU_IOAS_MAP_FIXED_IOVA",
    "IOMMU_IOAS_MAP_READABLE",
    "IOMMU_IOAS_MAP_WRITEABLE",
    "IOMMU_IOAS_UNMAP",
    "IOMMU_OPTION",
    "IOMMU_OPTION_HUGE_PAGES",
    "IOMMU_OPTION_OP_GET",
    "IOMMU_OPTION_OP_SET",
    "IOMMU_OPTION_RLIMIT_MODE",
    "IOMMU_VDEVICE_ALLOC",
    "IOMMU_VEVENTQ_ALLOC",
    "IOMMU_VFIO_IOAS",
    "IOMMU_VFIO_IOAS_CLEAR",
    "IOMMU_VFIO_IOAS_GET",
    "IOMMU_VFIO_IOAS_SET",
    "IOMMU_VIOMMU_ALLOC",
    "Command",
    "command",
    "read_ucmd",
    "respond",
]

IOMMU_TEST_CMD = ioc_io(IOMMUFD_TYPE, 0x80 + 32)  # iommufd_test.h: IOMMUFD_CMD_BASE + 32
IOMMU_HW_INFO_TYPE_SELFTEST = 0xFEEDBEEF  # iommufd_test.h
IOMMU_HW_INFO_SELFTEST_REGVAL = 0xDEADBEEF

# struct layouts, derived from the typed structs of :mod:`iommulab.uapi.iommufd`
# (little-endian x86_64; __aligned_u64 fields fall on 8-byte offsets)
DESTROY = struct_layout(_h.iommu_destroy)  # size, id
IOAS_ALLOC = struct_layout(_h.iommu_ioas_alloc)  # size, flags, out_ioas_id
IOVA_RANGE = struct_layout(_h.iommu_iova_range)  # start, last (inclusive)
IOAS_IOVA_RANGES = struct_layout(_h.iommu_ioas_iova_ranges)  # size ioas num rsvd allowed align
IOAS_ALLOW_IOVAS = struct_layout(_h.iommu_ioas_allow_iovas)  # size ioas num rsvd allowed
IOAS_MAP = struct_layout(_h.iommu_ioas_map)  # size flags ioas_id rsvd user_va length iova
IOAS_MAP_FILE = struct_layout(_h.iommu_ioas_map_file)  # size flags ioas_id fd start length iova
IOAS_COPY = struct_layout(_h.iommu_ioas_copy)  # size flags dst_ioas src_ioas length dst src
IOAS_UNMAP = struct_layout(_h.iommu_ioas_unmap)  # size, ioas_id, iova, length
OPTION = struct_layout(_h.iommu_option)  # size, option_id, op, rsvd, object_id, val64
VFIO_IOAS = struct_layout(_h.iommu_vfio_ioas)  # size, ioas_id, op, rsvd
HWPT_ALLOC = struct_layout(_h.iommu_hwpt_alloc)  # ... data_uptr, fault_id, rsvd2
HW_INFO_ARM_SMMUV3 = struct_layout(_h.iommu_hw_info_arm_smmuv3)  # flags rsvd idr[6] iidr aidr
HW_INFO_VTD = struct_layout(_h.iommu_hw_info_vtd)  # flags __reserved cap_reg ecap_reg
HW_INFO_SELFTEST = struct.Struct("<II")  # flags test_reg (iommufd_test.h, not uapi)
HW_INFO = struct_layout(_h.iommu_hw_info)  # size flags dev_id data_len uptr type pasid rsvd caps
HWPT_SET_DIRTY_TRACKING = struct_layout(_h.iommu_hwpt_set_dirty_tracking)  # size flags hwpt rsvd
HWPT_GET_DIRTY_BITMAP = struct_layout(_h.iommu_hwpt_get_dirty_bitmap)  # ... page_size, data
IOAS_CHANGE_PROCESS = struct_layout(_h.iommu_ioas_change_process)  # size, rsvd
HWPT_INVALIDATE = struct_layout(_h.iommu_hwpt_invalidate)  # size hwpt uptr type entry_len num rsvd
FAULT_ALLOC = struct_layout(_h.iommu_fault_alloc)  # size, flags, out_fault_id, out_fault_fd
VIOMMU_ALLOC = struct_layout(_h.iommu_viommu_alloc)  # size flags type dev hwpt out len rsvd uptr
VDEVICE_ALLOC = struct_layout(_h.iommu_vdevice_alloc)  # size viommu dev out virt_id
VEVENTQ_ALLOC = struct_layout(_h.iommu_veventq_alloc)  # size flags viommu type depth id fd rsvd
VEVENT_HEADER = struct_layout(_h.iommufd_vevent_header)  # flags, sequence


@dataclass(frozen=True)
class Command:
    """One entry of ``iommufd_ioctl_ops[]``: the request, its struct and minimum size."""

    name: str
    request: int
    layout: struct.Struct
    min_size: int  # offsetofend(struct, last mandatory field)
    since: KernelVersion = LINUX_6_12  # the first modelled release whose table has it


#: request number -> command (``IOCTL_OP(num, fn, struct, last)``).
COMMANDS: dict[int, Command] = {c.request: c for c in (
    Command("IOMMU_DESTROY", IOMMU_DESTROY, DESTROY, 8),  # id
    Command("IOMMU_IOAS_ALLOC", IOMMU_IOAS_ALLOC, IOAS_ALLOC, 12),  # out_ioas_id
    Command("IOMMU_IOAS_ALLOW_IOVAS", IOMMU_IOAS_ALLOW_IOVAS, IOAS_ALLOW_IOVAS, 24),
    Command("IOMMU_IOAS_COPY", IOMMU_IOAS_COPY, IOAS_COPY, 40),  # src_iova
    Command("IOMMU_IOAS_IOVA_RANGES", IOMMU_IOAS_IOVA_RANGES, IOAS_IOVA_RANGES, 32),
    Command("IOMMU_IOAS_MAP", IOMMU_IOAS_MAP, IOAS_MAP, 40),  # iova
    Command("IOMMU_IOAS_UNMAP", IOMMU_IOAS_UNMAP, IOAS_UNMAP, 24),  # length
    Command("IOMMU_OPTION", IOMMU_OPTION, OPTION, 24),  # val64
    Command("IOMMU_VFIO_IOAS", IOMMU_VFIO_IOAS, VFIO_IOAS, 12),  # __reserved
    Command("IOMMU_HWPT_ALLOC", IOMMU_HWPT_ALLOC, HWPT_ALLOC, 24),  # __reserved
    Command("IOMMU_GET_HW_INFO", IOMMU_GET_HW_INFO, HW_INFO, 32),  # __reserved[3]
    Command("IOMMU_HWPT_SET_DIRTY_TRACKING", IOMMU_HWPT_SET_DIRTY_TRACKING,
            HWPT_SET_DIRTY_TRACKING, 16),  # __reserved
    Command("IOMMU_HWPT_GET_DIRTY_BITMAP", IOMMU_HWPT_GET_DIRTY_BITMAP,
            HWPT_GET_DIRTY_BITMAP, 48),  # data
    Command("IOMMU_HWPT_INVALIDATE", IOMMU_HWPT_INVALIDATE, HWPT_INVALIDATE, 32),  # rsvd
    Command("IOMMU_FAULT_QUEUE_ALLOC", IOMMU_FAULT_QUEUE_ALLOC, FAULT_ALLOC, 16),  # out_fault_fd
    Command("IOMMU_IOAS_MAP_FILE", IOMMU_IOAS_MAP_FILE, IOAS_MAP_FILE, 40,  # iova
            LINUX_7_0),
    Command("IOMMU_IOAS_CHANGE_PROCESS", IOMMU_IOAS_CHANGE_PROCESS, IOAS_CHANGE_PROCESS, 8,
            LINUX_7_0),
    Command("IOMMU_VIOMMU_ALLOC", IOMMU_VIOMMU_ALLOC, VIOMMU_ALLOC, 24,  # out_viommu_id
            LINUX_7_0),
    Command("IOMMU_VDEVICE_ALLOC", IOMMU_VDEVICE_ALLOC, VDEVICE_ALLOC, 24,  # virt_id
            LINUX_7_0),
    Command("IOMMU_VEVENTQ_ALLOC", IOMMU_VEVENTQ_ALLOC, VEVENTQ_ALLOC, 28,  # out_veventq_fd
            LINUX_7_0),
)}


def command(request: int, kernel: KernelVersion) -> Command | None:
    """The entry of ``kernel``'s ioctl table for ``request``; None where that release
    has none (``iommufd_fops_ioctl`` then answers ENOTTY)."""
    cmd = COMMANDS.get(request)
    return cmd if cmd is not None and kernel >= cmd.since else None


def read_ucmd(buf: bytes | bytearray, cmd: Command) -> tuple[tuple[Any, ...], int]:
    """The command's fields as ``iommufd_fops_ioctl`` sees them, and the user ``size``.

    ``buf`` stands for the user memory at the argument pointer: EFAULT if it
    cannot hold the 4-byte ``size`` or the ``size`` bytes the kernel reads;
    EINVAL below the minimum; E2BIG for non-zero bytes beyond the kernel's
    struct. A short struct reads as zero-filled.
    """
    if len(buf) < 4:
        raise BadAddress(f"{cmd.name}: no room for the size field")
    (usize,) = struct.unpack_from("<I", buf)
    if usize < cmd.min_size:
        raise InvalidArgument(f"{cmd.name}: size {usize} is below the minimum {cmd.min_size}")
    ksize = cmd.layout.size
    if len(buf) < usize:  # the struct and any tail are read (check_zeroed_user)
        raise BadAddress(f"{cmd.name}: size {usize} runs past the {len(buf)}-byte buffer")
    if usize > ksize and any(buf[ksize:usize]):
        raise TooBig(f"{cmd.name}: bytes {ksize}..{usize - 1} beyond the kernel's struct "
                     "are not zero")
    raw = bytes(buf[:min(usize, ksize)]).ljust(ksize, b"\0")
    return cmd.layout.unpack(raw), usize


def respond(buf: bytearray, cmd: Command, usize: int, fields: tuple[int | bytes, ...]) -> None:
    """``iommufd_ucmd_respond``: copy ``min(size, sizeof)`` bytes of the struct back."""
    raw = cmd.layout.pack(*fields)
    n = min(usize, len(raw))
    buf[:n] = raw[:n]
