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
IOMMU_IOAS_MAP_FILE and IOMMU_IOAS_CHANGE_PROCESS (:func:`command`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from ..errors import BadAddress, InvalidArgument, TooBig
from ..kernel import LINUX_6_12, LINUX_7_0, KernelVersion

__all__ = [
    "COMMANDS",
    "IOMMUFD_TYPE",
    "Command",
    "command",
    "read_ucmd",
    "respond",
]

IOMMUFD_TYPE = ord(";")


def _io(nr: int) -> int:
    """``_IO(IOMMUFD_TYPE, nr)``."""
    return IOMMUFD_TYPE << 8 | nr


IOMMU_DESTROY = _io(0x80)
IOMMU_IOAS_ALLOC = _io(0x81)
IOMMU_IOAS_ALLOW_IOVAS = _io(0x82)
IOMMU_IOAS_COPY = _io(0x83)
IOMMU_IOAS_IOVA_RANGES = _io(0x84)
IOMMU_IOAS_MAP = _io(0x85)
IOMMU_IOAS_UNMAP = _io(0x86)
IOMMU_OPTION = _io(0x87)
IOMMU_VFIO_IOAS = _io(0x88)
IOMMU_HWPT_ALLOC = _io(0x89)
IOMMU_GET_HW_INFO = _io(0x8A)
IOMMU_HWPT_SET_DIRTY_TRACKING = _io(0x8B)
IOMMU_HWPT_GET_DIRTY_BITMAP = _io(0x8C)
IOMMU_HWPT_INVALIDATE = _io(0x8D)
IOMMU_FAULT_QUEUE_ALLOC = _io(0x8E)
IOMMU_IOAS_MAP_FILE = _io(0x8F)
IOMMU_VIOMMU_ALLOC = _io(0x90)
IOMMU_VDEVICE_ALLOC = _io(0x91)
IOMMU_IOAS_CHANGE_PROCESS = _io(0x92)
IOMMU_VEVENTQ_ALLOC = _io(0x93)
IOMMU_TEST_CMD = _io(0x80 + 32)  # iommufd_test.h: IOMMUFD_CMD_BASE + 32 (CONFIG_IOMMUFD_TEST)

# flags and enums
IOMMU_IOAS_MAP_FIXED_IOVA = 1 << 0
IOMMU_IOAS_MAP_WRITEABLE = 1 << 1
IOMMU_IOAS_MAP_READABLE = 1 << 2
IOMMU_OPTION_RLIMIT_MODE = 0
IOMMU_OPTION_HUGE_PAGES = 1
IOMMU_OPTION_OP_SET = 0
IOMMU_OPTION_OP_GET = 1
IOMMU_VFIO_IOAS_GET = 0
IOMMU_VFIO_IOAS_SET = 1
IOMMU_VFIO_IOAS_CLEAR = 2
IOMMU_HWPT_ALLOC_NEST_PARENT = 1 << 0
IOMMU_HWPT_ALLOC_DIRTY_TRACKING = 1 << 1
IOMMU_HWPT_FAULT_ID_VALID = 1 << 2
IOMMU_HWPT_ALLOC_PASID = 1 << 3
IOMMU_HWPT_DATA_NONE = 0
IOMMU_HW_INFO_TYPE_NONE = 0
IOMMU_HW_INFO_TYPE_INTEL_VTD = 1
IOMMU_HW_INFO_TYPE_ARM_SMMUV3 = 2
IOMMU_HW_INFO_TYPE_SELFTEST = 0xFEEDBEEF  # iommufd_test.h
IOMMU_HW_INFO_SELFTEST_REGVAL = 0xDEADBEEF
IOMMU_HW_INFO_TYPE_DEFAULT = 0  # an input type: "whatever the driver reports"
IOMMU_HW_INFO_FLAG_INPUT_TYPE = 1 << 0
IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17 = 1 << 0
IOMMU_HW_CAP_DIRTY_TRACKING = 1 << 0
IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED = 1 << 3
IOMMU_HWPT_DIRTY_TRACKING_ENABLE = 1
IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR = 1

# struct layouts (little-endian x86_64; __aligned_u64 fields fall on 8-byte offsets)
DESTROY = struct.Struct("<II")  # size, id
IOAS_ALLOC = struct.Struct("<III")  # size, flags, out_ioas_id
IOVA_RANGE = struct.Struct("<QQ")  # start, last (inclusive)
IOAS_IOVA_RANGES = struct.Struct("<IIIIQQ")  # size, ioas_id, num_iovas, rsvd, allowed, align
IOAS_ALLOW_IOVAS = struct.Struct("<IIIIQ")  # size, ioas_id, num_iovas, rsvd, allowed_iovas
IOAS_MAP = struct.Struct("<IIIIQQQ")  # size, flags, ioas_id, rsvd, user_va, length, iova
IOAS_MAP_FILE = struct.Struct("<IIIiQQQ")  # size, flags, ioas_id, fd, start, length, iova
IOAS_COPY = struct.Struct("<IIIIQQQ")  # size, flags, dst_ioas, src_ioas, length, dst, src
IOAS_UNMAP = struct.Struct("<IIQQ")  # size, ioas_id, iova, length
OPTION = struct.Struct("<IIHHIQ")  # size, option_id, op, rsvd, object_id, val64
VFIO_IOAS = struct.Struct("<IIHH")  # size, ioas_id, op, rsvd
HWPT_ALLOC = struct.Struct("<IIIIIIIIQII")  # size flags dev pt out rsvd type len uptr fault rsvd2
HW_INFO_ARM_SMMUV3 = struct.Struct("<II6III")  # flags __reserved idr[6] iidr aidr
HW_INFO_VTD = struct.Struct("<IIQQ")  # flags __reserved cap_reg ecap_reg
HW_INFO_SELFTEST = struct.Struct("<II")  # flags test_reg (iommufd_test.h)
HW_INFO = struct.Struct("<IIIIQIB3sQ")  # size flags dev_id data_len data_uptr type pasid rsvd caps
HWPT_SET_DIRTY_TRACKING = struct.Struct("<IIII")  # size, flags, hwpt_id, rsvd
HWPT_GET_DIRTY_BITMAP = struct.Struct("<IIIIQQQQ")  # size hwpt flags rsvd iova len pgsz data
IOAS_CHANGE_PROCESS = struct.Struct("<II")  # size, rsvd
HWPT_INVALIDATE = struct.Struct("<IIQIIII")  # size hwpt_id data_uptr type entry_len num rsvd


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
    Command("IOMMU_IOAS_MAP_FILE", IOMMU_IOAS_MAP_FILE, IOAS_MAP_FILE, 40,  # iova
            LINUX_7_0),
    Command("IOMMU_IOAS_CHANGE_PROCESS", IOMMU_IOAS_CHANGE_PROCESS, IOAS_CHANGE_PROCESS, 8,
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
