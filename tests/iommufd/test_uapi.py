"""linux/iommufd.h layouts and the command size rule, against values read off the header."""

from __future__ import annotations

import errno
import struct

import pytest

from iommulab.errors import KernelError
from iommulab.iommufd import uapi as u

# sizeof() of each struct in the x86_64 header (kernel_upper.md §2.1 and iommufd.h)
SIZES = {"IOMMU_DESTROY": 8, "IOMMU_IOAS_ALLOC": 12, "IOMMU_IOAS_IOVA_RANGES": 32,
         "IOMMU_IOAS_ALLOW_IOVAS": 24, "IOMMU_IOAS_MAP": 40, "IOMMU_IOAS_MAP_FILE": 40,
         "IOMMU_IOAS_COPY": 40, "IOMMU_IOAS_UNMAP": 24, "IOMMU_OPTION": 24,
         "IOMMU_VFIO_IOAS": 12, "IOMMU_HWPT_ALLOC": 48, "IOMMU_GET_HW_INFO": 40,
         "IOMMU_HWPT_SET_DIRTY_TRACKING": 16, "IOMMU_HWPT_GET_DIRTY_BITMAP": 48,
         "IOMMU_IOAS_CHANGE_PROCESS": 8}


def test_request_numbers_are_io_semicolon_from_0x80() -> None:
    assert u.IOMMU_DESTROY == 0x3B80 and u.IOMMU_IOAS_MAP == 0x3B85
    assert u.IOMMU_HWPT_GET_DIRTY_BITMAP == 0x3B8C and u.IOMMU_IOAS_MAP_FILE == 0x3B8F


@pytest.mark.parametrize("name", sorted(SIZES))
def test_struct_sizes_and_minimums(name: str) -> None:
    cmd = next(c for c in u.COMMANDS.values() if c.name == name)
    assert cmd.layout.size == SIZES[name]
    assert 4 < cmd.min_size <= cmd.layout.size


def test_field_offsets() -> None:
    raw = u.IOAS_MAP.pack(40, 1, 2, 0, 0x1111, 0x2222, 0x3333)
    assert struct.unpack_from("<QQQ", raw, 16) == (0x1111, 0x2222, 0x3333)
    raw = u.OPTION.pack(24, 1, 1, 0, 7, 0x55)
    assert struct.unpack_from("<HHIQ", raw, 8) == (1, 0, 7, 0x55)
    raw = u.HW_INFO.pack(40, 0, 1, 0, 0, 2, 20, b"\0\0\0", 1)
    assert raw[28] == 20 and struct.unpack_from("<Q", raw, 32) == (1,)


MAP = u.COMMANDS[u.IOMMU_IOAS_MAP]


def _map_buf(size: int, tail: bytes = b"") -> bytearray:
    return bytearray(u.IOAS_MAP.pack(size, 6, 1, 0, 0x1000, 0x2000, 0x3000) + tail)


def test_exact_size_reads_every_field() -> None:
    fields, usize = u.read_ucmd(_map_buf(40), MAP)
    assert usize == 40 and fields == (40, 6, 1, 0, 0x1000, 0x2000, 0x3000)


@pytest.mark.parametrize(("usize", "tail", "err"), [
    (39, b"", errno.EINVAL),  # shorter than offsetofend(iova)
    (48, b"\0" * 7 + b"\1", errno.E2BIG),  # a non-zero byte the kernel does not know
    (48, b"\0" * 4, errno.EFAULT),  # size runs past the user buffer
])
def test_size_rule(usize: int, tail: bytes, err: int) -> None:
    buf = _map_buf(usize, tail)
    with pytest.raises(KernelError) as exc:
        u.read_ucmd(buf, MAP)
    assert exc.value.errno == err


def test_longer_struct_with_a_zero_tail_is_accepted_and_responses_stay_inside_it() -> None:
    buf = _map_buf(48, b"\0" * 8 + b"\xaa" * 8)  # guard bytes past size
    fields, usize = u.read_ucmd(buf, MAP)
    assert usize == 48 and fields[6] == 0x3000
    u.respond(buf, MAP, usize, (48, 6, 1, 0, 0x1000, 0x2000, 0x4000))
    assert struct.unpack_from("<Q", buf, 32) == (0x4000,) and buf[48:] == b"\xaa" * 8
    short = bytearray(u.IOAS_ALLOC.pack(12, 0, 0))
    alloc = u.COMMANDS[u.IOMMU_IOAS_ALLOC]
    u.respond(short, alloc, 12, (12, 0, 5))
    assert struct.unpack("<III", short) == (12, 0, 5)
