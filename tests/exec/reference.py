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


def iommufd_mock_answers(kernel: str = "6.12") -> list[str]:
    """The lines ``iommufd_mock.c`` prints, as the model answers its calls from Python."""
    m = Machine("mock", kernel=kernel)
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


def vfio_type1_answers(platform: str, bdf: str = "0000:00:02.0") -> list[str]:
    """The lines ``vfio_type1.c GROUP BDF`` prints, as the model answers from Python."""
    from iommulab.vfio import uapi as v
    m = Machine(platform)
    group = m.add_pci_device(bdf).iommu_group
    proc = m.spawn_process(cap_ipc_lock=True)
    lines: list[str] = []

    def call(fd: int, request: int, arg: bytearray | bytes | int) -> tuple[int, int]:
        """The C program's ``ioctl``: the return value (a bytes argument is passed as
        a mutable copy so that fcntl's rules give the int back)."""
        try:
            return proc.ioctl(fd, request, bytearray(arg) if isinstance(arg, bytes) else arg), 0
        except OSError as e:
            return -1, e.errno or 0

    c = proc.open("/dev/vfio/vfio")
    lines.append("open_container 0 0")
    lines.append("api_version {} {}".format(*call(c, v.VFIO_GET_API_VERSION, 0)))
    lines.append("check_type1v2 {} {}".format(*call(c, v.VFIO_CHECK_EXTENSION,
                                                    v.VFIO_TYPE1v2_IOMMU)))
    g = proc.open(f"/dev/vfio/{group}")
    lines.append("open_group 0 0")
    st = bytearray(v.GROUP_STATUS.pack(8, 0))
    rc, err = call(g, v.VFIO_GROUP_GET_STATUS, st)
    lines.append(f"group_status {rc} {err} {v.GROUP_STATUS.unpack(st)[1]}")
    lines.append("set_iommu_early {} {}".format(*call(c, v.VFIO_SET_IOMMU,
                                                      v.VFIO_TYPE1v2_IOMMU)))
    lines.append("set_container {} {}".format(*call(g, v.VFIO_GROUP_SET_CONTAINER,
                                                    struct.pack("<i", c))))
    lines.append("set_container_bad_fd {} {}".format(
        *call(g, v.VFIO_GROUP_SET_CONTAINER, struct.pack("<i", 1000000))))
    lines.append("set_iommu {} {}".format(*call(c, v.VFIO_SET_IOMMU, v.VFIO_TYPE1v2_IOMMU)))
    info = bytearray(v.IOMMU_INFO.pack(24, 0, 0, 0, 0))
    rc, err = call(c, v.VFIO_IOMMU_GET_INFO, info)
    argsz, flags, pgsizes, _, _ = v.IOMMU_INFO.unpack(info)
    lines.append(f"get_info {rc} {err} {flags} {_hex(pgsizes)} {argsz}")
    full = bytearray(argsz)
    struct.pack_into("<I", full, 0, argsz)
    rc, err = call(c, v.VFIO_IOMMU_GET_INFO, full)
    _, flags, _, cap_offset, _ = v.IOMMU_INFO.unpack_from(full)
    text = f"get_info_caps {rc} {err} {flags} {cap_offset}"
    off = cap_offset
    while off and off < argsz:
        cid, ver, nxt = v.CAP_HEADER.unpack_from(full, off)
        text += f" cap{cid}.v{ver}"
        if cid == v.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE:
            (nr,) = struct.unpack_from("<I", full, off + 8)
            for i in range(nr):
                start, end = v.IOVA_RANGE.unpack_from(full, off + 16 + 16 * i)
                text += f" {_hex(start)}-{_hex(end)}"
        elif cid == v.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL:
            text += f" avail={struct.unpack_from('<I', full, off + 8)[0]}"
        off = nxt
    lines.append(text)

    ram_size = 2 << 20
    ram = proc.mmap(ram_size, "thp")
    proc.write(ram, b"\x11" * ram_size)
    page = proc.mmap(4096)
    ro = proc.mmap(4096, prot="r")
    rw = v.VFIO_DMA_MAP_FLAG_READ | v.VFIO_DMA_MAP_FLAG_WRITE
    for step, va, size, iova in (("map_ram", ram, ram_size, 0x1_0000_0000),
                                 ("map_page", page, 4096, 0x2_0000_0000),
                                 ("map_bad_vaddr", 0x10000, 4096, 0x3_0000_0000),
                                 ("map_overlap", page, 4096, 0x1_0000_0000),
                                 ("map_readonly_for_write", ro, 4096, 0x4_0000_0000)):
        lines.append("{} {} {}".format(step, *call(c, v.VFIO_IOMMU_MAP_DMA,
                                                   v.DMA_MAP.pack(32, rw, va, iova, size))))
    lines.append("dirty_start {} {}".format(*call(c, v.VFIO_IOMMU_DIRTY_PAGES, v.DIRTY_BITMAP.pack(
        8, v.VFIO_IOMMU_DIRTY_PAGES_FLAG_START))))
    words = ram_size // 4096 // 64
    bits = proc.mmap(4096)
    for step, data in (("unmap_dirty_bad_bitmap", 0x10000), ("unmap_dirty", bits)):
        un = bytearray(v.DMA_UNMAP.pack(48, v.VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
                                        0x1_0000_0000, ram_size)
                       + v.BITMAP.pack(4096, words * 8, data))
        rc, err = call(c, v.VFIO_IOMMU_UNMAP_DMA, un)
        text = f"{step} {rc} {err} {_hex(v.DMA_UNMAP.unpack_from(un)[3])}"
        if data == bits:
            ones = sum(bin(b).count("1") for b in proc.read(bits, words * 8))
            text += f" {ones}"
        lines.append(text)
    un = bytearray(v.DMA_UNMAP.pack(24, 0, 0x2_0000_0000, 4096))
    rc, err = call(c, v.VFIO_IOMMU_UNMAP_DMA, un)
    lines.append(f"unmap_page {rc} {err} {_hex(v.DMA_UNMAP.unpack(un)[3])}")
    dev, err = call(g, v.VFIO_GROUP_GET_DEVICE_FD, bytearray(bdf.encode() + b"\0"))
    lines.append(f"get_device_fd {min(dev, 0)} {err}")
    lines.append("get_device_fd_unknown {} {}".format(
        *call(g, v.VFIO_GROUP_GET_DEVICE_FD, bytearray(b"0000:00:1f.7\0"))))
    di = bytearray(v.DEVICE_INFO.pack(24, 0, 0, 0, 0, 0))
    rc, err = call(dev, v.VFIO_DEVICE_GET_INFO, di)
    _, flags, regions, irqs, _, _ = v.DEVICE_INFO.unpack(di)
    lines.append(f"device_info {rc} {err} {flags} {regions} {irqs}")
    proc.close(dev)
    lines.append("unset_container {} {}".format(*call(g, v.VFIO_GROUP_UNSET_CONTAINER, 0)))
    proc.exit()
    lines.append("done")
    return lines


def iommufd_pointers_answers(kernel: str = "6.12") -> list[str]:
    """The lines ``iommufd_pointers.c`` prints, as the model answers from Python."""
    m = Machine("mock", kernel=kernel)
    proc = m.spawn_process(cap_ipc_lock=True)
    log = Log(proc)
    log.fd = proc.open("/dev/iommu")
    lines = log.lines
    ioas = log.ioas_alloc("ioas_alloc")
    lines.clear()  # the C program does not print it
    arr = proc.mmap(4096)
    proc.write(arr, struct.pack("<4Q", A, A + 0x3FFFFF, A + 0x1000000, A + 0x1FFFFFF))
    for step, ptr in (("allow_iovas", arr), ("allow_iovas_bad_ptr", 0x10000)):
        rc, err = log.call(u.IOMMU_IOAS_ALLOW_IOVAS,
                           bytearray(struct.pack("<IIIIQ", 24, ioas, 2, 0, ptr)))
        lines.append(f"{step} {rc} {err}")
    rc, err, buf = log.test(OP_MOCK_DOMAIN, ioas, b"")
    stdev, hwpt0, idev = struct.unpack_from("<III", buf, 16)
    lines.append(f"mock_domain {rc} {err} {stdev} {hwpt0} {idev}")
    info = proc.mmap(4096)
    proc.write(info, b"\xee" * 64)
    hi = bytearray(struct.pack("<IIIIQIIQ", 40, 0, idev, 64, info, 0, 0, 0))
    rc, err = log.call(u.IOMMU_GET_HW_INFO, hi)
    _, _, _, data_len, _, out_type, _, caps = struct.unpack("<IIIIQIIQ", hi)
    data = proc.read(info, 64)
    regval = struct.unpack_from("<I", data, 4)[0]
    lines.append(f"hw_info {rc} {err} {out_type:#x} {caps} {data_len} {regval:#x} "
                 f"{data.count(0xEE)}")
    struct.pack_into("<IQ", hi, 12, 64, 0x10000)
    rc, err = log.call(u.IOMMU_GET_HW_INFO, hi)
    lines.append(f"hw_info_bad_ptr {rc} {err}")
    ha = bytearray(struct.pack("<IIIIIIIIQII", 48, 1 << 1, idev, ioas, 0, 0, 0, 0, 0, 0, 0))
    rc, err = log.call(u.IOMMU_HWPT_ALLOC, ha)
    hwpt = struct.unpack_from("<I", ha, 16)[0]
    lines.append(f"hwpt_alloc_dirty {rc} {err} {hwpt}")
    buf_va = proc.mmap(65536)
    proc.write(buf_va, b"\x01" * 65536)
    for step, iova in (("map", A), ("map_not_allowed", A + 0x800000)):
        rc, err = log.call(u.IOMMU_IOAS_MAP, bytearray(_MAP.pack(40, 7, ioas, 0, buf_va,
                                                                 65536, iova)))
        lines.append(f"{step} {rc} {err}")
    rc, err = log.call(u.IOMMU_HWPT_SET_DIRTY_TRACKING,
                       bytearray(struct.pack("<IIII", 16, 1, hwpt, 0)))
    lines.append(f"set_dirty_tracking {rc} {err}")
    marks = proc.mmap(4096)
    proc.write(marks, struct.pack("<Q", 0x80000005))
    for step, ptr in (("test_dirty", marks), ("test_dirty_bad_ptr", 0x10000)):
        rc, err, out = log.test(13, hwpt, struct.pack("<IIQQQQ", 0, 0, A, 65536, 2048, ptr))
        text = f"{step} {rc} {err}"
        if ptr == marks:
            text += f" {struct.unpack_from('<Q', out, 16 + 40)[0]}"
        lines.append(text)
    bitmap = proc.mmap(4096)
    for step, ptr in (("get_dirty_bitmap", bitmap), ("get_dirty_bitmap_bad_ptr", 0x10000)):
        rc, err = log.call(u.IOMMU_HWPT_GET_DIRTY_BITMAP, bytearray(
            struct.pack("<IIIIQQQQ", 48, hwpt, 0, 0, A, 65536, 4096, ptr)))
        text = f"{step} {rc} {err}"
        if ptr == bitmap:
            text += f" {_hex(struct.unpack('<Q', proc.read(bitmap, 8))[0])}"
        lines.append(text)
    proc.exit()
    lines.append("done")
    return lines
