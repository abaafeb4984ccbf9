"""What the model answers to the calls of ``programs/iommufd_mock.c`` made from Python.

The same sequence, step for step, on a fresh mock machine with a model process: the
lines it prints are the lines the C program must print under ``iommulab exec``.
"""

from __future__ import annotations

import struct

from iommulab.iommufd import uapi as u
from iommulab.machine import Machine, Process

A = 1 << 24
LEN = 64 * 1024
_RANGES = struct.Struct("<IIIIQQ")
_MAP = struct.Struct("<IIIIQQQ")
_UNMAP = struct.Struct("<IIQQ")
_TEST = struct.Struct("<IIII48sII")
OP_MOCK_DOMAIN, OP_MD_CHECK_MAP, OP_MD_CHECK_REFS, OP_CREATE_ACCESS, OP_ACCESS_RW = 2, 3, 4, 5, 8
RW_WRITE, RW_SLOW = 1, 4
MAP_RW_FIXED = 1 | 2 | 4


def _hex(v: int) -> str:
    """C's ``%#llx``: no prefix for 0."""
    return f"{v:#x}" if v else "0"


class Log:
    def __init__(self, proc: Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.fd = -1

    def call(self, request: int, arg: bytearray | int) -> tuple[int, int]:
        try:
            return self.proc.ioctl(self.fd, request, arg), 0
        except OSError as e:
            return -1, e.errno or 0

    def test(self, op: int, id: int, union: bytes) -> tuple[int, int, bytearray]:
        buf = bytearray(_TEST.pack(_TEST.size, op, id, 0, union.ljust(48, b"\0"), 0, 0))
        rc, err = self.call(u.IOMMU_TEST_CMD, buf)
        return rc, err, buf

    def ioas_alloc(self, step: str) -> int:
        buf = bytearray(struct.pack("<III", 12, 0, 0))
        rc, err = self.call(u.IOMMU_IOAS_ALLOC, buf)
        ioas: int = struct.unpack_from("<I", buf, 8)[0]
        self.lines.append(f"{step} {rc} {err} {ioas}")
        return ioas

    def map(self, step: str, ioas: int, va: int, length: int, iova: int, flags: int) -> None:
        buf = bytearray(_MAP.pack(_MAP.size, flags, ioas, 0, va, length, iova))
        rc, err = self.call(u.IOMMU_IOAS_MAP, buf)
        self.lines.append(f"{step} {rc} {err} {_hex(_MAP.unpack(buf)[6])}")

    def ranges(self, step: str, ioas: int, scratch: int) -> None:
        buf = bytearray(_RANGES.pack(_RANGES.size, ioas, 0, 0, 0, 0))
        rc, err = self.call(u.IOMMU_IOAS_IOVA_RANGES, buf)
        self.lines.append(f"{step}-count {rc} {err} {_RANGES.unpack(buf)[2]}")
        self.proc.write(scratch, b"\xa5" * 128)
        struct.pack_into("<Q", buf, 16, scratch)
        rc, err = self.call(u.IOMMU_IOAS_IOVA_RANGES, buf)
        n = _RANGES.unpack(buf)[2]
        text = f"{step} {rc} {err} {n}"
        for i in range(min(n, 8)):
            start, last = struct.unpack("<QQ", self.proc.read(scratch + 16 * i, 16))
            text += f" {_hex(start)}-{_hex(last)}"
        self.lines.append(text)

    def rw(self, step: str, access: int, iova: int, uptr: int, length: int,
           flags: int) -> None:
        rc, err, _ = self.test(OP_ACCESS_RW, access,
                               struct.pack("<QQQI", iova, length, uptr, flags))
        self.lines.append(f"{step} {rc} {err}")


def iommufd_mock_answers() -> list[str]:
    """The lines ``iommufd_mock.c`` prints, as the model answers its calls from Python."""
    m = Machine("mock")
    proc = m.spawn_process(cap_ipc_lock=True)
    log = Log(proc)
    log.fd = proc.open("/dev/iommu")
    log.lines.append("open 0 0")
    scratch = proc.mmap(4096)
    ioas = log.ioas_alloc("ioas_alloc")
    log.ranges("ranges_empty", ioas, scratch)
    rc, err, buf = log.test(OP_MOCK_DOMAIN, ioas, b"")
    stdev, hwpt, idev = struct.unpack_from("<III", buf, 16)
    log.lines.append(f"mock_domain {rc} {err} {stdev} {hwpt} {idev}")
    log.ranges("ranges_mock", ioas, scratch)
    buf_va, heap_va = proc.mmap(LEN), proc.mmap(LEN)
    proc.write(buf_va, bytes((i * 7 + 3) & 0xFF for i in range(LEN)))
    proc.write(heap_va, bytes((i * 13 + 1) & 0xFF for i in range(LEN)))
    log.map("map_mmap", ioas, buf_va, LEN, A, MAP_RW_FIXED)
    log.map("map_heap", ioas, heap_va, LEN, A + 0x100000, MAP_RW_FIXED)
    log.map("map_bad_va", ioas, 0x10000, LEN, A + 0x200000, MAP_RW_FIXED)
    log.map("map_overlap", ioas, buf_va, LEN, A, 1 | 4)
    rc, err, _ = log.test(OP_MD_CHECK_MAP, hwpt, struct.pack("<QQQ", A, LEN, buf_va))
    log.lines.append(f"check_map {rc} {err}")
    rc, err, _ = log.test(OP_MD_CHECK_REFS, stdev, struct.pack("<QQI", LEN, heap_va, 1))
    log.lines.append(f"check_refs {rc} {err}")
    rc, err, buf = log.test(OP_CREATE_ACCESS, ioas, b"")
    access = struct.unpack_from("<I", buf, 16)[0]
    log.lines.append(f"create_access {rc} {err}")
    out, msg = proc.mmap(4096), proc.mmap(4096)
    proc.write(msg, b"hello from the device\0")
    log.rw("rw_read", access, A + 100, out, 300, 0)
    log.rw("rw_read_slow", access, A + 0x100000 + 4000, out, 300, RW_SLOW)
    proc.write(buf_va + 8192, b"written by the CPU after the map")
    log.rw("rw_read_slow_late", access, A + 8192, out, 32, RW_SLOW)
    log.rw("rw_write_slow", access, A + 0x100000 + 4090, msg, 22, RW_WRITE | RW_SLOW)
    log.rw("rw_write", access, A + 5, msg, 22, RW_WRITE)
    log.rw("rw_read_bad_uptr", access, A, 0x10000, 16, 0)
    log.rw("rw_unmapped_iova", access, A + 0x800000, out, 16, RW_SLOW)

    child = proc.fork()
    parent_log, log = log, Log(child)
    log.fd = parent_log.fd
    cbuf = child.mmap(8192)
    child.write(cbuf, b"\x5a" * 8192)
    cioas = log.ioas_alloc("child_ioas_alloc")
    log.map("child_map", cioas, cbuf, 8192, A, 1 | 4)
    ubuf = bytearray(_UNMAP.pack(_UNMAP.size, cioas, A, 8192))
    rc, err = log.call(u.IOMMU_IOAS_UNMAP, ubuf)
    log.lines.append(f"child_unmap {rc} {err} {_hex(_UNMAP.unpack(ubuf)[3])}")
    rc, err = log.call(u.IOMMU_DESTROY, bytearray(struct.pack("<II", 8, cioas)))
    log.lines.append(f"child_destroy {rc} {err}")
    child.exit()
    parent_log.lines += log.lines
    log = parent_log

    rc, err = log.call(u.IOMMU_IOAS_ALLOC, bytearray())  # a NULL pointer: nothing readable
    log.lines.append(f"null_arg {rc} {err}")
    rbuf = bytearray(_RANGES.pack(_RANGES.size, ioas, 4, 0, 0x10000, 0))
    rc, err = log.call(u.IOMMU_IOAS_IOVA_RANGES, rbuf)
    log.lines.append(f"ranges_bad_ptr {rc} {err} {_RANGES.unpack(rbuf)[2]}")
    ubuf = bytearray(_UNMAP.pack(_UNMAP.size, ioas, A, LEN))
    rc, err = log.call(u.IOMMU_IOAS_UNMAP, ubuf)
    log.lines.append(f"unmap {rc} {err} {_hex(_UNMAP.unpack(ubuf)[3])}")
    proc.close(access)
    for step, id in (("destroy_stdev", stdev), ("destroy_ioas", ioas)):
        rc, err = log.call(u.IOMMU_DESTROY, bytearray(struct.pack("<II", 8, id)))
        log.lines.append(f"{step} {rc} {err}")
    proc.exit()
    log.lines.append("done 0")
    return log.lines
