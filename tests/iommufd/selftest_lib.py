"""The helpers of tools/testing/selftests/iommu/iommufd_utils.h, over a model process.

Each helper builds the real struct bytes and calls ``Process.ioctl`` on the
/dev/iommu fd, as the C helpers do; failures raise OSError with the errno.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

from iommulab import Machine
from iommulab.iommufd import uapi as u
from iommulab.iommufd.selftest import (
    OP_ACCESS_PAGES,
    OP_ACCESS_REPLACE_IOAS,
    OP_ACCESS_RW,
    OP_ADD_RESERVED,
    OP_CREATE_ACCESS,
    OP_DESTROY_ACCESS_PAGES,
    OP_DIRTY,
    OP_MD_CHECK_MAP,
    OP_MD_CHECK_REFS,
    OP_MOCK_DOMAIN,
    OP_MOCK_DOMAIN_FLAGS,
    OP_MOCK_DOMAIN_REPLACE,
    OP_SET_TEMP_MEMORY_LIMIT,
    TEST_CMD,
)

PAGE_SIZE = 4096
MOCK_PAGE_SIZE = 2048
MOCK_HUGE_PAGE_SIZE = 512 * MOCK_PAGE_SIZE
IOMMU_HWPT_DATA_SELFTEST = 0xDEAD
MOCK_IOMMUPT_DEFAULT, MOCK_IOMMUPT_HUGE = 0, 1
MOCK_APERTURE_START = 1 << 24
MOCK_APERTURE_LAST = (1 << 31) - 1
HUGEPAGE_SIZE = 2 << 20
BUFFER_SIZE = 16 * PAGE_SIZE
RW = u.IOMMU_IOAS_MAP_WRITEABLE | u.IOMMU_IOAS_MAP_READABLE
FIXED = u.IOMMU_IOAS_MAP_FIXED_IOVA
MOCK_ACCESS_RW_WRITE = 1 << 0
MOCK_ACCESS_RW_SLOW_PATH = 1 << 2


@dataclass
class MockDomain:
    stdev_id: int
    hwpt_id: int
    idev_id: int


class Selftest:
    """A process with /dev/iommu open and a hugepage-aligned 16-page ``buffer``."""

    def __init__(self, *, memlock: int | None = None, cap_ipc_lock: bool = True,
                 ram: str = "1G", platform: str = "mock", kernel: str = "6.12") -> None:
        self.m = Machine(platform, ram=ram, kernel=kernel)
        self.p = self.m.spawn_process(memlock_limit=memlock, cap_ipc_lock=cap_ipc_lock,
                                      cap_sys_resource=True)
        self.fd = self.p.open("/dev/iommu")
        self.buffer = self.p.mmap(BUFFER_SIZE, "anon", populate=True)
        self.p.write(self.buffer, bytes(range(256)) * (BUFFER_SIZE // 256))

    def ioctl(self, request: int, buf: bytes | bytearray) -> bytearray:
        arg = bytearray(buf)
        self.p.ioctl(self.fd, request, arg)
        return arg

    # -- standard commands ----------------------------------------------------------------
    def ioas_alloc(self) -> int:
        out = self.ioctl(u.IOMMU_IOAS_ALLOC, u.IOAS_ALLOC.pack(12, 0, 0))
        return int(u.IOAS_ALLOC.unpack(out)[2])

    def destroy(self, id: int) -> None:
        self.ioctl(u.IOMMU_DESTROY, u.DESTROY.pack(8, id))

    def map(self, ioas: int, uptr: int, length: int, iova: int = 0, flags: int = RW) -> int:
        out = self.ioctl(u.IOMMU_IOAS_MAP, u.IOAS_MAP.pack(40, flags, ioas, 0, uptr, length,
                                                          iova))
        return int(u.IOAS_MAP.unpack(out)[6])

    def map_fixed(self, ioas: int, uptr: int, length: int, iova: int, flags: int = RW) -> int:
        return self.map(ioas, uptr, length, iova, flags | FIXED)

    def map_file(self, ioas: int, mfd: int, start: int, length: int, iova: int = 0,
                 flags: int = RW) -> int:
        out = self.ioctl(u.IOMMU_IOAS_MAP_FILE, u.IOAS_MAP_FILE.pack(40, flags, ioas, mfd,
                                                                    start, length, iova))
        return int(u.IOAS_MAP_FILE.unpack(out)[6])

    def unmap(self, ioas: int, iova: int, length: int) -> int:
        out = self.ioctl(u.IOMMU_IOAS_UNMAP, u.IOAS_UNMAP.pack(24, ioas, iova, length))
        return int(u.IOAS_UNMAP.unpack(out)[3])

    def copy(self, dst: int, src: int, src_iova: int, length: int, dst_iova: int = 0,
             flags: int = RW | FIXED) -> int:
        out = self.ioctl(u.IOMMU_IOAS_COPY, u.IOAS_COPY.pack(40, flags, dst, src, length,
                                                            dst_iova, src_iova))
        return int(u.IOAS_COPY.unpack(out)[5])

    def iova_ranges(self, ioas: int, num: int) -> tuple[int, int, list[tuple[int, int]]]:
        """(num_iovas out, alignment, the ranges written); raises EMSGSIZE like the C."""
        arr = self.p.mmap(max(16 * num, 16), "anon")
        self.p.write(arr, b"\xaa" * max(16 * num, 16))
        buf = bytearray(u.IOAS_IOVA_RANGES.pack(32, ioas, num, 0, arr, 0))
        try:
            self.p.ioctl(self.fd, u.IOMMU_IOAS_IOVA_RANGES, buf)
        finally:
            raw = self.p.read(arr, max(16 * num, 16))
            self.p.munmap(arr, max(16 * num, 16))
            self.last_ranges_out = u.IOAS_IOVA_RANGES.unpack(buf)
            self.last_ranges_raw = raw
        _, _, n, _, _, align = u.IOAS_IOVA_RANGES.unpack(buf)
        return n, align, [u.IOVA_RANGE.unpack_from(raw, 16 * i) for i in range(min(n, num))]

    def allow_iovas(self, ioas: int, ranges: list[tuple[int, int]]) -> None:
        arr = self.p.mmap(max(16 * len(ranges), 16), "anon")
        for i, (a, b) in enumerate(ranges):
            self.p.write(arr + 16 * i, u.IOVA_RANGE.pack(a, b))
        try:
            self.ioctl(u.IOMMU_IOAS_ALLOW_IOVAS, u.IOAS_ALLOW_IOVAS.pack(24, ioas, len(ranges),
                                                                        0, arr))
        finally:
            self.p.munmap(arr, max(16 * len(ranges), 16))

    def option(self, option: int, op: int, object_id: int = 0, val: int = 0) -> int:
        out = self.ioctl(u.IOMMU_OPTION, u.OPTION.pack(24, option, op, 0, object_id, val))
        return int(u.OPTION.unpack(out)[5])

    def hwpt_alloc(self, dev_id: int, pt_id: int, flags: int = 0, *, data_type: int = 0,
                   data_len: int = 0, data_uptr: int = 0, fault_id: int = 0) -> int:
        """IOMMU_HWPT_ALLOC with the struct's fields as given: the new HWPT's id."""
        out = self.ioctl(u.IOMMU_HWPT_ALLOC, u.HWPT_ALLOC.pack(
            48, flags, dev_id, pt_id, 0, 0, data_type, data_len, data_uptr, fault_id, 0))
        return int(u.HWPT_ALLOC.unpack(out)[4])

    def hwpt_alloc_data(self, dev_id: int, pt_id: int, flags: int, data_type: int,
                        data: bytes, data_len: int | None = None, *,
                        fault_id: int = 0) -> int:
        """HWPT_ALLOC with driver data: ``data`` copied into the process, ``data_len`` (the
        length of ``data`` by default) passed as the struct's ``data_len``."""
        uptr = self.p.mmap(PAGE_SIZE)
        self.p.write(uptr, data)
        size = len(data) if data_len is None else data_len
        try:
            return self.hwpt_alloc(dev_id, pt_id, flags, data_type=data_type, data_len=size,
                                   data_uptr=uptr, fault_id=fault_id)
        finally:
            self.p.munmap(uptr, PAGE_SIZE)

    def hwpt_alloc_iommupt(self, dev_id: int, pt_id: int, flags: int,
                           pagetable_type: int) -> int:
        """``test_cmd_hwpt_alloc_iommupt`` (7.0): a ``struct iommu_hwpt_selftest`` with
        ``pagetable_type`` as IOMMU_HWPT_DATA_SELFTEST data."""
        return self.hwpt_alloc_data(dev_id, pt_id, flags, IOMMU_HWPT_DATA_SELFTEST,
                                    struct.pack("<II", 0, pagetable_type))

    def set_dirty_tracking(self, hwpt: int, enable: bool) -> None:
        self.ioctl(u.IOMMU_HWPT_SET_DIRTY_TRACKING,
                   u.HWPT_SET_DIRTY_TRACKING.pack(16, int(enable), hwpt, 0))

    def get_dirty_bitmap(self, hwpt: int, iova: int, length: int, page_size: int,
                         data: int, flags: int = 0) -> None:
        self.ioctl(u.IOMMU_HWPT_GET_DIRTY_BITMAP, u.HWPT_GET_DIRTY_BITMAP.pack(
            48, hwpt, flags, 0, iova, length, page_size, data))

    # -- IOMMU_TEST_CMD -----------------------------------------------------------------
    def test_cmd(self, op: int, id: int, union: bytes) -> bytes:
        out = self.ioctl(u.IOMMU_TEST_CMD, TEST_CMD.pack(72, op, id, 0, union.ljust(48, b"\0"),
                                                        0))
        return bytes(TEST_CMD.unpack(out)[4])

    def raw_test_cmd(self, op: int, id: int, union: bytes, *, rsvd: int = 0,
                     last: int = 0) -> bytearray:
        """The whole ``struct iommu_test_cmd`` as the kernel left it in the caller's
        memory (``size, op, id, __reserved, union, last``)."""
        return self.ioctl(u.IOMMU_TEST_CMD, TEST_CMD.pack(72, op, id, rsvd,
                                                         union.ljust(48, b"\0"), last))

    def add_reserved(self, ioas: int, start: int, length: int) -> None:
        self.test_cmd(OP_ADD_RESERVED, ioas, struct.pack("<QQ", start, length))

    def mock_domain(self, pt_id: int, dev_flags: int = 0) -> MockDomain:
        op = OP_MOCK_DOMAIN_FLAGS if dev_flags else OP_MOCK_DOMAIN
        out = self.test_cmd(op, pt_id, struct.pack("<12xI", dev_flags))
        return MockDomain(*struct.unpack_from("<III", out))

    def mock_domain_replace(self, stdev_id: int, pt_id: int) -> int:
        out = self.test_cmd(OP_MOCK_DOMAIN_REPLACE, stdev_id, struct.pack("<I", pt_id))
        return int(struct.unpack_from("<I", out)[0])

    def check_map(self, hwpt: int, iova: int, uptr: int, length: int) -> None:
        self.test_cmd(OP_MD_CHECK_MAP, hwpt, struct.pack("<QQQ", iova, length, uptr))

    def check_refs(self, uptr: int, length: int, refs: int) -> None:
        self.test_cmd(OP_MD_CHECK_REFS, 0, struct.pack("<QQI", length, uptr, refs))

    def create_access(self, ioas: int, flags: int = 0) -> int:
        out = self.test_cmd(OP_CREATE_ACCESS, ioas, struct.pack("<II", 0, flags))
        return int(struct.unpack_from("<I", out)[0])

    def access_pages(self, access_fd: int, iova: int, length: int, uptr: int,
                     flags: int = 0) -> int:
        out = self.test_cmd(OP_ACCESS_PAGES, access_fd,
                            struct.pack("<IIQQQ", flags, 0, iova, length, uptr))
        return int(struct.unpack_from("<4xI", out)[0])

    def destroy_access_pages(self, access_fd: int, item: int) -> None:
        self.test_cmd(OP_DESTROY_ACCESS_PAGES, access_fd, struct.pack("<I", item))

    def access_rw(self, access_fd: int, iova: int, uptr: int, length: int,
                  flags: int = 0) -> None:
        self.test_cmd(OP_ACCESS_RW, access_fd, struct.pack("<QQQI", iova, length, uptr, flags))

    def access_replace_ioas(self, access_fd: int, ioas: int) -> None:
        self.test_cmd(OP_ACCESS_REPLACE_IOAS, access_fd, struct.pack("<I", ioas))

    def set_temp_memory_limit(self, limit: int) -> None:
        self.test_cmd(OP_SET_TEMP_MEMORY_LIMIT, 0, struct.pack("<I", limit))

    def mock_dirty(self, hwpt: int, iova: int, length: int, page_size: int, uptr: int) -> int:
        out = self.test_cmd(OP_DIRTY, hwpt, struct.pack("<I4xQQQQQ", 0, iova, length,
                                                        page_size, uptr, 0))
        return int(struct.unpack_from("<40xQ", out)[0])

    # -- teardown ---------------------------------------------------------------------------
    def close(self) -> None:
        """Close everything; nothing may stay pinned or charged."""
        self.p.exit()
        assert self.m.mem.pins.pins == 0, f"{self.m.mem.pins.pins} pins left"
        assert self.p.mm.locked_vm == 0 and self.p.mm.pinned_vm == 0
        assert all(user.locked_vm == 0 for user in self.m.users.values())


class IoasFix:
    """FIXTURE(iommufd_ioas) of ``variant``: an IOAS with none, one or two mock domains
    (``mock_domain_limit``: one, with a 16-byte temporary memory limit)."""

    def __init__(self, variant: str) -> None:
        self.t = Selftest()
        self.ioas = self.t.ioas_alloc()
        self.domains = {"no_domain": 0, "mock_domain": 1, "two_mock_domain": 2,
                        "mock_domain_limit": 1}[variant]
        if variant == "mock_domain_limit":
            self.t.set_temp_memory_limit(16)
        self.mds = [self.t.mock_domain(self.ioas) for _ in range(self.domains)]
        self.base_iova = MOCK_APERTURE_START if self.domains else 0


def access_rw_sweep(t: Selftest, access: int, iova: int, buffer: int) -> None:
    """``check_access_rw``: reads and writes through the access at IOVAs around a page
    boundary, of lengths 1-63, by the fast and the slow path, compared with ``buffer``
    (mapped at ``iova``); then one read of four pages."""
    tmp = t.p.mmap(PAGE_SIZE * 4)
    for access_iova in range(iova + PAGE_SIZE - 50, iova + PAGE_SIZE + 50, 7):
        for length in range(1, 64, 9):
            for flags in (0, MOCK_ACCESS_RW_SLOW_PATH):
                t.p.write(tmp, bytes(length))
                t.access_rw(access, access_iova, tmp, length, flags)
                assert t.p.read(tmp, length) == t.p.read(buffer + access_iova - iova, length)
                data = bytes(random.Random(access_iova + length).randrange(256)
                             for _ in range(length))
                t.p.write(tmp, data)
                t.access_rw(access, access_iova, tmp, length, flags | MOCK_ACCESS_RW_WRITE)
                assert t.p.read(buffer + access_iova - iova, length) == data
    t.access_rw(access, iova, tmp, PAGE_SIZE * 4)
    assert t.p.read(tmp, PAGE_SIZE * 4) == t.p.read(buffer, PAGE_SIZE * 4)
    t.p.munmap(tmp, PAGE_SIZE * 4)
