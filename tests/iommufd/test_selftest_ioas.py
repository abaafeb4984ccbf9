"""tools/testing/selftests/iommu/iommufd.c, ported: the iommufd, iommufd_ioas and
iommufd_mock_domain groups (reference §2.17 cases 1-5, 7-23, 26-30, 32-36) on the mock
platform, with the kernel's errno. Every test ends with nothing pinned or charged.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterator

import pytest

from iommulab.iommufd import uapi as u
from iommulab.uapi import ioc_io

from ..helpers import expect_errno
from .selftest_lib import (
    BUFFER_SIZE,
    HUGEPAGE_SIZE,
    MOCK_APERTURE_LAST,
    MOCK_APERTURE_START,
    MOCK_PAGE_SIZE,
    PAGE_SIZE,
    IoasFix,
    MockDomain,
    Selftest,
    access_rw_sweep,
)

NEEDS_PIN = 1 << 0


# -- FIXTURE(iommufd) -------------------------------------------------------------------------
@pytest.fixture
def t() -> Iterator[Selftest]:
    st = Selftest()
    yield st
    st.close()


def test_simple_close(t: Selftest) -> None:
    t.p.close(t.fd)
    t.fd = t.p.open("/dev/iommu")


def test_cmd_fail(t: Selftest) -> None:
    expect_errno(errno.ENOENT, t.destroy, 0)
    expect_errno(errno.EFAULT, t.p.ioctl, t.fd, u.IOMMU_DESTROY, 0)  # NULL argument
    expect_errno(errno.ENOTTY, t.p.ioctl, t.fd, ioc_io(u.IOMMUFD_TYPE, 0x7F), bytearray(8))


_CMDS = [u.COMMANDS[r] for r in sorted(u.COMMANDS)]


@pytest.mark.parametrize("cmd", _CMDS, ids=[c.name for c in _CMDS])
def test_cmd_length(cmd: u.Command) -> None:
    """One byte short of the last mandatory field: EINVAL; one byte more than the struct
    with a non-zero tail: E2BIG; with a zero tail: the same answer as the exact size (on
    the first release that has the command)."""
    t = Selftest(kernel=str(cmd.since))
    ksize = cmd.layout.size

    def call(size: int, tail: bytes = b"") -> int:
        buf = bytearray(struct.pack("<I", size).ljust(ksize, b"\0") + tail)
        try:
            t.p.ioctl(t.fd, cmd.request, buf)
        except OSError as err:
            return err.errno or 0
        return 0

    assert call(cmd.min_size - 1, b"\0" * 8) == errno.EINVAL
    assert call(ksize + 1, b"\xaa") == errno.E2BIG
    assert call(ksize + 1, b"\0") == call(ksize)
    t.close()


@pytest.mark.parametrize("request_", [u.IOMMU_IOAS_MAP_FILE, u.IOMMU_IOAS_CHANGE_PROCESS],
                         ids=["IOMMU_IOAS_MAP_FILE", "IOMMU_IOAS_CHANGE_PROCESS"])
def test_commands_after_6_12_are_enotty_there(t: Selftest, request_: int) -> None:
    """6.12's ``iommufd_ioctl_ops[]`` has no IOMMU_IOAS_MAP_FILE (0x8f) nor
    IOMMU_IOAS_CHANGE_PROCESS (0x92): ENOTTY, whatever the struct holds."""
    cmd = u.COMMANDS[request_]
    expect_errno(errno.ENOTTY, t.p.ioctl, t.fd, request_, bytearray(cmd.layout.size))
    buf = bytearray(cmd.layout.size)
    buf[:4] = cmd.layout.size.to_bytes(4, "little")
    expect_errno(errno.ENOTTY, t.p.ioctl, t.fd, request_, buf)


def test_cmd_ex_fail(t: Selftest) -> None:
    big = bytearray(u.DESTROY.pack(16, 0) + bytes(8))
    expect_errno(errno.ENOENT, t.p.ioctl, t.fd, u.IOMMU_DESTROY, big)
    big[12] = 1
    expect_errno(errno.E2BIG, t.p.ioctl, t.fd, u.IOMMU_DESTROY, big)
    expect_errno(errno.EINVAL, t.p.ioctl, t.fd, u.IOMMU_DESTROY,
                 bytearray(u.DESTROY.pack(7, 0)))


def test_global_options(t: Selftest) -> None:
    mode = u.IOMMU_OPTION_RLIMIT_MODE
    assert t.option(mode, u.IOMMU_OPTION_OP_GET) == 0
    t.option(mode, u.IOMMU_OPTION_OP_SET, val=1)
    expect_errno(errno.EINVAL, t.option, mode, u.IOMMU_OPTION_OP_SET, val=2)
    assert t.option(mode, u.IOMMU_OPTION_OP_GET) == 1
    t.option(mode, u.IOMMU_OPTION_OP_SET, val=0)
    huge = u.IOMMU_OPTION_HUGE_PAGES
    expect_errno(errno.ENOENT, t.option, huge, u.IOMMU_OPTION_OP_GET, 0)
    expect_errno(errno.ENOENT, t.option, huge, u.IOMMU_OPTION_OP_SET, 0)
    ioas = t.ioas_alloc()  # with an object the mode cannot change
    expect_errno(errno.EBUSY, t.option, mode, u.IOMMU_OPTION_OP_SET, val=1)
    t.destroy(ioas)


# -- FIXTURE(iommufd_ioas) with its variants: IoasFix and the fixture f (conftest.py) --------
def test_ioas_auto_destroy(f: IoasFix) -> None:
    pass


def test_ioas_destroy(f: IoasFix) -> None:
    if f.domains:
        expect_errno(errno.EBUSY, f.t.destroy, f.ioas)  # a device holds it
    else:
        f.t.destroy(f.ioas)


def test_hwpt_attach(f: IoasFix) -> None:
    t = f.t
    if f.domains:
        hwpt = t.hwpt_alloc(f.mds[0].idev_id, f.ioas)
        md = t.mock_domain(hwpt)
        assert md.hwpt_id == hwpt
        expect_errno(errno.EBUSY, t.destroy, hwpt)
        t.destroy(md.stdev_id)
        t.destroy(hwpt)
    else:
        expect_errno(errno.ENOENT, t.mock_domain, f.ioas + 100)


def test_ioas_area_destroy(f: IoasFix) -> None:
    t = f.t
    t.map_fixed(f.ioas, t.buffer, PAGE_SIZE, f.base_iova)
    if f.domains:
        expect_errno(errno.EBUSY, t.destroy, f.ioas)
    else:
        t.destroy(f.ioas)


def test_ioas_area_auto_destroy(f: IoasFix) -> None:
    t = f.t
    for i in range(10):
        t.map_fixed(f.ioas, t.buffer, PAGE_SIZE, f.base_iova + i * PAGE_SIZE)


def test_area(f: IoasFix) -> None:
    t, ioas, base = f.t, f.ioas, f.base_iova
    for i in range(10):  # unmap of an empty IOAS
        expect_errno(errno.ENOENT, t.unmap, ioas, base + i * PAGE_SIZE, PAGE_SIZE)
    for i in range(10):
        t.map_fixed(ioas, t.buffer, PAGE_SIZE, base + i * PAGE_SIZE)
    for i in range(10):
        assert t.unmap(ioas, base + i * PAGE_SIZE, PAGE_SIZE) == PAGE_SIZE
    t.map_fixed(ioas, t.buffer, 2 * PAGE_SIZE, base + 16 * PAGE_SIZE)  # 2-page area
    expect_errno(errno.ENOENT, t.unmap, ioas, base + 16 * PAGE_SIZE, PAGE_SIZE)
    expect_errno(errno.ENOENT, t.unmap, ioas, base + 17 * PAGE_SIZE, PAGE_SIZE)
    for start, end in ((16, 18), (16, 17), (17, 18), (15, 17), (15, 18)):
        expect_errno(errno.EEXIST, t.map_fixed, ioas, t.buffer, (end - start) * PAGE_SIZE,
                     base + start * PAGE_SIZE)
    assert t.unmap(ioas, 0, (1 << 64) - 1) == 2 * PAGE_SIZE
    assert t.unmap(ioas, 0, (1 << 64) - 1) == 0


def test_unmap_fully_contained_areas(f: IoasFix) -> None:
    t, ioas, base = f.t, f.ioas, f.base_iova
    for i in range(4):
        t.map_fixed(ioas, t.buffer, 8 * PAGE_SIZE, base + (4 + 16 * i) * PAGE_SIZE)
    expect_errno(errno.ENOENT, t.unmap, ioas, base + 7 * PAGE_SIZE, 56 * PAGE_SIZE)
    expect_errno(errno.ENOENT, t.unmap, ioas, base, 8 * PAGE_SIZE)  # cuts the first's tail
    assert t.unmap(ioas, base, 64 * PAGE_SIZE) == 32 * PAGE_SIZE


def test_unmap_is_not_atomic(f: IoasFix) -> None:
    """iopt_unmap_iova_range: areas before the one that sticks out are already gone."""
    t, ioas, base = f.t, f.ioas, f.base_iova
    for i in range(4):
        t.map_fixed(ioas, t.buffer, 8 * PAGE_SIZE, base + (4 + 16 * i) * PAGE_SIZE)
    expect_errno(errno.ENOENT, t.unmap, ioas, base, 53 * PAGE_SIZE)
    assert t.unmap(ioas, base, 64 * PAGE_SIZE) == 8 * PAGE_SIZE


def test_area_auto_iova(f: IoasFix) -> None:
    t, ioas = f.t, f.ioas
    iovas: list[int] = []
    t.add_reserved(ioas, f.base_iova + 4 * PAGE_SIZE, 100 * PAGE_SIZE)
    for i in range(10):
        length = PAGE_SIZE * (i + 1)
        iova = t.map(ioas, t.buffer, length)
        assert iova % (1 << ((length & -length).bit_length() - 1)) == 0
        assert not (f.base_iova + 4 * PAGE_SIZE <= iova < f.base_iova + 104 * PAGE_SIZE)
        iovas.append(iova)
        t.unmap(ioas, iova, length)
    start = MOCK_APERTURE_START if f.domains else 0
    expect_errno(errno.EADDRINUSE, t.allow_iovas, ioas,
                 [(start + PAGE_SIZE, start + 600 * PAGE_SIZE)])
    ranges = [(start + 200 * PAGE_SIZE, start + 600 * PAGE_SIZE - 1)]
    t.allow_iovas(ioas, ranges)
    for i in range(10):
        length = PAGE_SIZE * (i + 1)
        iova = t.map(ioas, t.buffer, length)
        assert ranges[0][0] <= iova and iova + length - 1 <= ranges[0][1]
        t.unmap(ioas, iova, length)
    t.allow_iovas(ioas, [])


def test_reserved_overflow(f: IoasFix) -> None:
    t, ioas = f.t, f.ioas
    if f.domains:  # the aperture reservation would collide
        return
    t.add_reserved(ioas, 6 * PAGE_SIZE, (1 << 64) - 6 * PAGE_SIZE - 0x7FFF)
    expect_errno(errno.ENOSPC, t.map, ioas, t.buffer, 0x5000)


def test_area_allowed(f: IoasFix) -> None:
    t, ioas = f.t, f.ioas
    base = MOCK_APERTURE_START if f.domains else 0
    allowed = (base + 16 * PAGE_SIZE, base + 32 * PAGE_SIZE)
    t.allow_iovas(ioas, [allowed])
    expect_errno(errno.EADDRINUSE, t.add_reserved, ioas, allowed[0] + PAGE_SIZE, PAGE_SIZE)
    t.allow_iovas(ioas, [])
    t.add_reserved(ioas, allowed[0] + PAGE_SIZE, PAGE_SIZE)
    expect_errno(errno.EADDRINUSE, t.allow_iovas, ioas, [allowed])


def test_copy_area(f: IoasFix) -> None:
    t, ioas = f.t, f.ioas
    t.map_fixed(ioas, t.buffer, PAGE_SIZE, f.base_iova)
    t.copy(ioas, ioas, f.base_iova, PAGE_SIZE, f.base_iova + PAGE_SIZE)  # within one IOAS
    other = t.ioas_alloc()
    t.copy(other, ioas, f.base_iova, PAGE_SIZE, 0)  # into a new IOAS at FIXED iova 0


def test_iova_ranges(f: IoasFix) -> None:
    t, ioas = f.t, f.ioas
    n, align, ranges = t.iova_ranges(ioas, 1)
    if f.domains:
        assert (n, align, ranges) == (1, MOCK_PAGE_SIZE, [(MOCK_APERTURE_START,
                                                          MOCK_APERTURE_LAST)])
    else:
        assert (n, align, ranges) == (1, 1, [(0, (1 << 64) - 1)])
    expect_errno(errno.EMSGSIZE, t.iova_ranges, ioas, 0)
    assert t.last_ranges_out[2] == 1 and t.last_ranges_raw == b"\xaa" * 16  # untouched
    t.add_reserved(ioas, PAGE_SIZE, PAGE_SIZE)
    if f.domains:  # the reservation lies below the aperture: still one range
        n, _, ranges = t.iova_ranges(ioas, 1)
        assert ranges == [(MOCK_APERTURE_START, MOCK_APERTURE_LAST)]
    else:
        expect_errno(errno.EMSGSIZE, t.iova_ranges, ioas, 1)
        assert t.last_ranges_out[2] == 2
        assert u.IOVA_RANGE.unpack_from(t.last_ranges_raw) == (0, PAGE_SIZE - 1)
        n, _, ranges = t.iova_ranges(ioas, 2)
        assert ranges == [(0, PAGE_SIZE - 1), (2 * PAGE_SIZE, (1 << 64) - 1)]


def test_access_domain_destory(f: IoasFix) -> None:
    t, ioas = f.t, f.ioas
    buf = t.p.mmap(2 * HUGEPAGE_SIZE, "hugetlb-2M")
    access = t.create_access(ioas, NEEDS_PIN)
    iova = t.map_fixed(ioas, buf, 2 * HUGEPAGE_SIZE, MOCK_APERTURE_START)
    item = t.access_pages(access, iova + PAGE_SIZE, PAGE_SIZE, buf + PAGE_SIZE)
    for md in f.mds:  # the domains go while the access still pins
        t.destroy(md.stdev_id)
    t.check_refs(buf + PAGE_SIZE, PAGE_SIZE, 1)
    t.destroy_access_pages(access, item)
    t.p.close(access)
    t.p.munmap(buf, 2 * HUGEPAGE_SIZE)


def test_access_pin(f: IoasFix) -> None:
    t, ioas = f.t, f.ioas
    iova = t.map_fixed(ioas, t.buffer, BUFFER_SIZE, MOCK_APERTURE_START)
    access = t.create_access(ioas, NEEDS_PIN)
    for npages in range(1, 16):
        item = t.access_pages(access, iova, npages * PAGE_SIZE, t.buffer)
        t.check_refs(t.buffer, npages * PAGE_SIZE, 1)
        item2 = t.access_pages(access, iova, npages * PAGE_SIZE, t.buffer)  # shared
        t.destroy_access_pages(access, item)
        t.destroy_access_pages(access, item2)
        if not f.domains:
            t.check_refs(t.buffer, npages * PAGE_SIZE, 0)
        else:
            t.check_refs(t.buffer, npages * PAGE_SIZE, 1)
    item = t.access_pages(access, iova, BUFFER_SIZE, t.buffer)
    md = t.mock_domain(ioas)  # a domain added while pinned reads the access's PFNs
    t.check_map(md.hwpt_id, iova, t.buffer, BUFFER_SIZE)
    t.check_refs(t.buffer, BUFFER_SIZE, 1)
    t.destroy(md.stdev_id)
    t.destroy_access_pages(access, item)
    t.unmap(ioas, iova, BUFFER_SIZE)
    t.check_refs(t.buffer, BUFFER_SIZE, 0)
    t.p.close(access)


def test_access_pin_unmap(f: IoasFix) -> None:
    t, ioas = f.t, f.ioas
    iova = t.map_fixed(ioas, t.buffer, BUFFER_SIZE, MOCK_APERTURE_START)
    access = t.create_access(ioas, NEEDS_PIN)
    item = t.access_pages(access, iova, BUFFER_SIZE, t.buffer)
    t.unmap(ioas, iova, BUFFER_SIZE)  # the access's unmap op unpins it
    expect_errno(errno.ENOENT, t.destroy_access_pages, access, item)
    t.check_refs(t.buffer, BUFFER_SIZE, 0)
    t.p.close(access)


def test_access_rw(f: IoasFix) -> None:
    t, ioas = f.t, f.ioas
    iova = t.map_fixed(ioas, t.buffer, BUFFER_SIZE, MOCK_APERTURE_START)
    access = t.create_access(ioas)
    access_rw_sweep(t, access, iova, t.buffer)
    t.p.close(access)


def test_access_rw_unaligned(f: IoasFix) -> None:
    t, ioas = f.t, f.ioas
    iova = t.map_fixed(ioas, t.buffer + MOCK_PAGE_SIZE, BUFFER_SIZE - MOCK_PAGE_SIZE,
                       MOCK_APERTURE_START)
    access = t.create_access(ioas)
    tmp = t.p.mmap(PAGE_SIZE)
    t.access_rw(access, iova, tmp, 1000)
    assert t.p.read(tmp, 1000) == t.p.read(t.buffer + MOCK_PAGE_SIZE, 1000)
    t.p.munmap(tmp, PAGE_SIZE)
    t.p.close(access)


def test_ioas_option_huge_pages(f: IoasFix) -> None:
    t, ioas, huge = f.t, f.ioas, u.IOMMU_OPTION_HUGE_PAGES
    assert t.option(huge, u.IOMMU_OPTION_OP_GET, ioas) == 1
    t.option(huge, u.IOMMU_OPTION_OP_SET, ioas, 0)
    assert t.option(huge, u.IOMMU_OPTION_OP_GET, ioas) == 0
    expect_errno(errno.EINVAL, t.option, huge, u.IOMMU_OPTION_OP_SET, ioas, 2)
    t.option(huge, u.IOMMU_OPTION_OP_SET, ioas, 1)


def test_ioas_iova_alloc(f: IoasFix) -> None:
    t, ioas = f.t, f.ioas
    for length in range(1, 2 * PAGE_SIZE):
        if f.domains and length % MOCK_PAGE_SIZE:
            expect_errno(errno.EINVAL, t.map, ioas, t.buffer, length)
        else:
            iova = t.map(ioas, t.buffer, length)
            assert t.unmap(ioas, iova, length) == length


def test_ioas_align_change(f: IoasFix) -> None:
    t, ioas, huge = f.t, f.ioas, u.IOMMU_OPTION_HUGE_PAGES
    if f.domains:
        return
    t.option(huge, u.IOMMU_OPTION_OP_SET, ioas, 0)
    expect_errno(errno.EINVAL, t.map_fixed, ioas, t.buffer + MOCK_PAGE_SIZE, MOCK_PAGE_SIZE,
                 MOCK_APERTURE_START)
    t.option(huge, u.IOMMU_OPTION_OP_SET, ioas, 1)
    t.map_fixed(ioas, t.buffer + MOCK_PAGE_SIZE, MOCK_PAGE_SIZE, MOCK_APERTURE_START)
    expect_errno(errno.EADDRINUSE, t.option, huge, u.IOMMU_OPTION_OP_SET, ioas, 0)


def test_copy_sweep(f: IoasFix) -> None:
    t, ioas = f.t, f.ioas
    mapped = MOCK_APERTURE_START + 4 * PAGE_SIZE
    t.map_fixed(ioas, t.buffer, 4 * PAGE_SIZE, mapped)
    dst = t.ioas_alloc()
    dst_iova = MOCK_APERTURE_START
    for src_iova in range(MOCK_APERTURE_START, mapped + 8 * PAGE_SIZE, 511):
        length = MOCK_PAGE_SIZE
        if mapped <= src_iova and src_iova + length - 1 <= mapped + 4 * PAGE_SIZE - 1:
            t.copy(dst, ioas, src_iova, length, dst_iova)
            assert t.unmap(dst, dst_iova, length) == length
        else:
            expect_errno(errno.ENOENT, t.copy, dst, ioas, src_iova, length, dst_iova)


# -- FIXTURE(iommufd_mock_domain) ---------------------------------------------------------------
MdFix = tuple[Selftest, int, list[MockDomain], str]

@pytest.fixture(params=["one", "two", "hugepage", "file", "file_hugepage"])
def md(request: pytest.FixtureRequest) -> Iterator[MdFix]:
    t = Selftest(kernel="7.0" if request.param.startswith("file") else "6.12")  # MAP_FILE
    ioas = t.ioas_alloc()
    n = 2 if request.param == "two" else 1
    mds = [t.mock_domain(ioas) for _ in range(n)]
    yield t, ioas, mds, request.param
    t.close()


def _mock_buffer(t: Selftest, variant: str, size: int) -> tuple[int, int | None]:
    """The variant's buffer: anonymous, hugetlb, or a memfd (shared mapping)."""
    huge = "hugepage" in variant
    if variant.startswith("file"):
        mfd = t.p.memfd_create("buffer", max(size, HUGEPAGE_SIZE if huge else size),
                               "2M" if huge else None)
        return t.p.mmap(size if not huge else HUGEPAGE_SIZE, fd=mfd), mfd
    return t.p.mmap(size, "hugetlb-2M" if huge else "anon"), None


def test_mock_domain_basic(md: MdFix) -> None:
    t, ioas, mds, variant = md
    size = HUGEPAGE_SIZE if "hugepage" in variant else PAGE_SIZE * 4
    buf, mfd = _mock_buffer(t, variant, size)
    if mfd is None:
        iova = t.map(ioas, buf, PAGE_SIZE)
    else:
        iova = t.map_file(ioas, mfd, 0, PAGE_SIZE)
        expect_errno(errno.EINVAL, t.map_file, ioas, mfd, 0, size + 1 if "huge" not in
                     variant else HUGEPAGE_SIZE + 1)
    for m in mds:
        t.check_map(m.hwpt_id, iova, buf, PAGE_SIZE)
    t.unmap(ioas, iova, PAGE_SIZE)
    if mfd is None and "hugepage" not in variant:
        t.p.munmap(buf + 2 * PAGE_SIZE, 2 * PAGE_SIZE)  # half the buffer is gone
        expect_errno(errno.EFAULT, t.map, ioas, buf, 4 * PAGE_SIZE)
        t.p.munmap(buf, PAGE_SIZE)  # and now the first page
        expect_errno(errno.EFAULT, t.map, ioas, buf, PAGE_SIZE)
    elif mfd is not None:
        t.p.ftruncate(mfd, 0)  # a truncated memfd cannot be pinned
        expect_errno(errno.EINVAL, t.map_file, ioas, mfd, 0, PAGE_SIZE)


def test_mock_domain_all_aligns(md: MdFix) -> None:
    t, ioas, mds, variant = md
    if variant != "one":
        return
    end = 4 * PAGE_SIZE
    for start in range(0, end, MOCK_PAGE_SIZE):
        for stop in range(start + MOCK_PAGE_SIZE, end + 1, MOCK_PAGE_SIZE):
            iova = t.map(ioas, t.buffer + start, stop - start)
            for m in mds:
                t.check_map(m.hwpt_id, iova, t.buffer + start, stop - start)
            first = start - start % PAGE_SIZE
            t.check_refs(t.buffer + first, -(-stop // PAGE_SIZE) * PAGE_SIZE - first, 1)
            t.unmap(ioas, iova, stop - start)
    t.check_refs(t.buffer, end, 0)


def test_mock_domain_all_aligns_copy(md: MdFix) -> None:
    t, ioas, _mds, variant = md
    if variant != "one":
        return
    end = 3 * PAGE_SIZE
    for start in range(0, end, MOCK_PAGE_SIZE):
        for stop in range(start + MOCK_PAGE_SIZE, end + 1, MOCK_PAGE_SIZE):
            iova = t.map(ioas, t.buffer + start, stop - start)
            extra = t.mock_domain(ioas)  # filled from the existing domain
            t.check_map(extra.hwpt_id, iova, t.buffer + start, stop - start)
            t.destroy(extra.stdev_id)
            t.unmap(ioas, iova, stop - start)
    t.check_refs(t.buffer, end, 0)


def test_mock_domain_user_copy(md: MdFix) -> None:
    t, ioas, mds, variant = md
    if variant != "one":
        return
    plain = t.ioas_alloc()  # no domain: an access pins, COPY shares the pages
    src_iova = t.map_fixed(plain, t.buffer, BUFFER_SIZE, MOCK_APERTURE_START)
    access = t.create_access(plain, NEEDS_PIN)
    item = t.access_pages(access, src_iova, BUFFER_SIZE, t.buffer)
    dst = t.copy(ioas, plain, src_iova, BUFFER_SIZE, MOCK_APERTURE_START)
    t.check_map(mds[0].hwpt_id, dst, t.buffer, BUFFER_SIZE)
    t.check_refs(t.buffer, BUFFER_SIZE, 1)
    t.destroy_access_pages(access, item)
    t.access_replace_ioas(access, ioas)
    t.unmap(ioas, dst, BUFFER_SIZE)
    t.unmap(plain, src_iova, BUFFER_SIZE)
    t.check_refs(t.buffer, BUFFER_SIZE, 0)
    t.p.close(access)


def test_mock_domain_replace(md: MdFix) -> None:
    t, ioas, mds, _variant = md
    other = t.ioas_alloc()
    new_hwpts = {t.mock_domain_replace(m.stdev_id, other) for m in mds}
    assert len(new_hwpts) == 1 and mds[0].hwpt_id not in new_hwpts  # one shared auto HWPT
    # the old automatic HWPT went with its last device
    expect_errno(errno.ENOENT, t.mock_domain_replace, mds[0].stdev_id, mds[0].hwpt_id)
    for m in mds:
        assert t.mock_domain_replace(m.stdev_id, ioas) not in new_hwpts


def test_mock_domain_alloc_hwpt(md: MdFix) -> None:
    t, ioas, mds, _ = md
    for m in mds:
        expect_errno(errno.EOPNOTSUPP, t.hwpt_alloc, m.idev_id, ioas, 1 << 31)
        hwpt = t.hwpt_alloc(m.idev_id, ioas)
        other = t.mock_domain(hwpt)
        expect_errno(errno.EBUSY, t.destroy, hwpt)
        t.destroy(other.stdev_id)
        t.destroy(hwpt)


def test_mock_domain_two_domains_share_pins(md: MdFix) -> None:
    """Not in the C file: with two domains each page is still pinned once."""
    t, ioas, mds, variant = md
    if variant != "two":
        return
    iova = t.map(ioas, t.buffer, BUFFER_SIZE)
    t.check_refs(t.buffer, BUFFER_SIZE, 1)
    # CAP_IPC_LOCK: account mode NONE, but pinned_vm counts in every mode
    assert t.p.mm.pinned_vm == 16 and t.m.users[1000].locked_vm == 0
    t.destroy(mds[0].stdev_id)  # the storage domain goes: the other takes over
    t.check_map(mds[1].hwpt_id, iova, t.buffer, BUFFER_SIZE)
    t.check_refs(t.buffer, BUFFER_SIZE, 1)
    t.unmap(ioas, iova, BUFFER_SIZE)



def test_mock_domain_ro_unshare(md: MdFix) -> None:
    """Case 31: a READABLE-only map of a MAP_PRIVATE file page; the CPU's write afterwards
    must not change the PFN the domain maps (the long-term pin took a private copy)."""
    t, ioas, mds, _ = md
    mfd = t.p.memfd_create("exe", PAGE_SIZE)
    buf = t.p.mmap(PAGE_SIZE, fd=mfd, private=True)
    t.p.close(mfd)
    iova = t.map(ioas, buf, PAGE_SIZE, flags=u.IOMMU_IOAS_MAP_READABLE)
    for m in mds:
        t.check_map(m.hwpt_id, iova, buf, PAGE_SIZE)
    t.p.write(buf, b"\x01" * PAGE_SIZE)
    for m in mds:
        t.check_map(m.hwpt_id, iova, buf, PAGE_SIZE)
    t.p.munmap(buf, PAGE_SIZE)
