"""``struct stat`` and ``struct statx`` (x86_64) for served nodes."""

from __future__ import annotations

import os
import stat
import struct

__all__ = ["STATX_SIZE", "STAT_SIZE", "pack_stat", "pack_statx"]

#: struct stat, arch/x86/include/uapi/asm/stat.h (x86_64): 144 bytes.
_STAT = struct.Struct("=QQQIIIiQqqqqQqQqQ3q")
STAT_SIZE = _STAT.size
STATX_SIZE = 256
STATX_BASIC_STATS = 0x7FF
_STATX_HEAD = struct.Struct("=IIQIIIHHQQQQ")  # mask .. attributes_mask, 64 bytes
_STATX_TS = struct.Struct("=qIi")


def pack_stat(mode: int, rdev: int, size: int, dev: int, ino: int, when: int) -> bytes:
    nlink = 2 if stat.S_ISDIR(mode) else 1
    blocks = 0
    return _STAT.pack(dev, ino, nlink, mode, 0, 0, 0, rdev, size, 4096, blocks,
                      when, 0, when, 0, when, 0, 0, 0, 0)


def pack_statx(mode: int, rdev: int, size: int, dev: int, ino: int, when: int) -> bytes:
    nlink = 2 if stat.S_ISDIR(mode) else 1
    out = bytearray(STATX_SIZE)
    _STATX_HEAD.pack_into(out, 0, STATX_BASIC_STATS, 4096, 0, nlink, 0, 0, mode & 0xFFFF, 0,
                          ino, size, 0, 0)
    for off in (64, 80, 96, 112):  # atime, btime, ctime, mtime
        _STATX_TS.pack_into(out, off, when, 0, 0)
    struct.pack_into("=IIII", out, 128, os.major(rdev), os.minor(rdev), os.major(dev),
                     os.minor(dev))
    return bytes(out)
