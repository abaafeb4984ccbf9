"""IOMMU_TEST_CMD as drivers/iommu/iommufd/selftest.c answers it, read with the caller's
whole struct (the kernel's own selftest reuses its struct between calls): what each
operation copies back, and its edge cases."""

from __future__ import annotations

import contextlib
import errno
import struct

import pytest

from iommulab.iommufd import uapi as u
from iommulab.iommufd.selftest import (
    OP_ACCESS_PAGES,
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
from iommulab.vfio import uapi as v

from ..helpers import expect_errno
from .selftest_lib import (
    HUGEPAGE_SIZE,
    MOCK_APERTURE_START,
    MOCK_PAGE_SIZE,
    PAGE_SIZE,
    Selftest,
)

SYZ = 1 << 16
OP_MD_CHECK_IOTLB, OP_TRIGGER_IOPF = 14, 15  # iommufd_test.h
NEEDS_PIN = 1


def _unpack(raw: bytearray) -> tuple[int, int, int, int, bytes, int]:
    size, op, id, rsvd, union, last = TEST_CMD.unpack(raw)
    return size, op, id, rsvd, bytes(union), last


def test_access_pages_copies_the_whole_command_back() -> None:
    """``iommufd_test_access_pages`` sets ``out_access_pages_id`` and responds with the
    whole command: ``flags``, ``iova``, ``length``, ``uptr``, ``__reserved`` and ``last``
    come back as they went in."""
    t = Selftest()
    ioas = t.ioas_alloc()
    t.map_fixed(ioas, t.buffer, 4 * PAGE_SIZE, MOCK_APERTURE_START)
    access = t.create_access(ioas, NEEDS_PIN)
    union = struct.pack("<IIQQQ", 1, 0xAAAA, MOCK_APERTURE_START, 2 * PAGE_SIZE, t.buffer)
    raw = t.raw_test_cmd(OP_ACCESS_PAGES, access, union + b"\x55" * 16, rsvd=9, last=0)
    size, op, id, rsvd, out, last = _unpack(raw)
    assert (size, op, id, rsvd, last) == (72, OP_ACCESS_PAGES, access, 9, 0)
    assert struct.unpack_from("<IIQQQ", out) == (1, 0, MOCK_APERTURE_START, 2 * PAGE_SIZE,
                                                 t.buffer)
    assert out[32:] == b"\x55" * 16
    t.p.close(access)
    t.close()


def test_access_pages_item_ids_count_from_0_and_are_not_reused() -> None:
    """``item->id = staccess->next_id++`` of a zeroed ``struct selftest_access``."""
    t = Selftest()
    ioas = t.ioas_alloc()
    t.map_fixed(ioas, t.buffer, 4 * PAGE_SIZE, MOCK_APERTURE_START)
    access = t.create_access(ioas, NEEDS_PIN)
    first = t.access_pages(access, MOCK_APERTURE_START, PAGE_SIZE, t.buffer)
    second = t.access_pages(access, MOCK_APERTURE_START, PAGE_SIZE, t.buffer)
    assert (first, second) == (0, 1)
    t.destroy_access_pages(access, first)
    assert t.access_pages(access, MOCK_APERTURE_START, PAGE_SIZE, t.buffer) == 2
    t.p.close(access)
    t.close()


def test_access_pages_checks_each_page_against_uptr() -> None:
    """``iommufd_test_check_pages``: page by page from ``uptr``; a pinned page that is not
    the user's is EBADE and the pins go again."""
    t = Selftest()
    ioas = t.ioas_alloc()
    t.map_fixed(ioas, t.buffer, 4 * PAGE_SIZE, MOCK_APERTURE_START)
    access = t.create_access(ioas, NEEDS_PIN)
    item = t.access_pages(access, MOCK_APERTURE_START, PAGE_SIZE + 100, t.buffer)
    t.check_refs(t.buffer, 2 * PAGE_SIZE, 1)  # the range touches two pages
    t.destroy_access_pages(access, item)
    expect_errno(errno.EBADE, t.access_pages, access, MOCK_APERTURE_START, PAGE_SIZE,
                 t.buffer + PAGE_SIZE)
    t.check_refs(t.buffer, 4 * PAGE_SIZE, 0)
    t.p.close(access)
    t.close()


def test_access_pages_refusals() -> None:
    """ENOMEM past 16 MiB, EOPNOTSUPP for an unknown flag, EBADFD for an fd that is not a
    selftest access (``iommufd_access_get``), EOPNOTSUPP for an access made without the
    pin ops."""
    t = Selftest()
    ioas = t.ioas_alloc()
    plain = t.create_access(ioas)
    expect_errno(errno.ENOMEM, t.access_pages, plain, 0, (16 << 20) + 1, 0)
    expect_errno(errno.EOPNOTSUPP, t.access_pages, plain, 0, PAGE_SIZE, 0, flags=2)
    expect_errno(errno.EBADFD, t.access_pages, t.fd, 0, PAGE_SIZE, 0)
    expect_errno(errno.EBADFD, t.access_pages, 99, 0, PAGE_SIZE, 0)
    expect_errno(errno.EOPNOTSUPP, t.access_pages, plain, 0, PAGE_SIZE, 0)
    expect_errno(errno.EBADFD, t.destroy_access_pages, t.fd, 0)
    expect_errno(errno.EBADFD, t.access_rw, t.fd, 0, t.buffer, 1)
    t.p.close(plain)
    t.close()


def test_access_syzkaller_iovas() -> None:
    """MOCK_FLAGS_ACCESS_SYZ: ``iova`` is (u32 nth area, u32 offset); area 1 offset 0x100
    reads the second area's bytes, a missing area is IOVA 0."""
    t = Selftest()
    ioas = t.ioas_alloc()
    t.map_fixed(ioas, t.buffer, PAGE_SIZE, MOCK_APERTURE_START)
    t.map_fixed(ioas, t.buffer + PAGE_SIZE, PAGE_SIZE, MOCK_APERTURE_START + 4 * PAGE_SIZE)
    access = t.create_access(ioas, NEEDS_PIN)
    out = t.p.mmap(PAGE_SIZE)
    t.access_rw(access, 1 | 0x100 << 32, out, 16, SYZ)
    assert t.p.read(out, 16) == t.p.read(t.buffer + PAGE_SIZE + 0x100, 16)
    item = t.access_pages(access, 1, PAGE_SIZE, t.buffer + PAGE_SIZE, SYZ)
    t.check_refs(t.buffer + PAGE_SIZE, PAGE_SIZE, 1)
    t.destroy_access_pages(access, item)
    expect_errno(errno.ENOENT, t.access_rw, access, 7, out, 16, SYZ)  # IOVA 0: no area
    t.p.close(access)
    t.close()


def test_check_refs_and_check_map_of_length_0_succeed() -> None:
    """``iommufd_test_md_check_refs`` and ``_check_pa`` loop ``for (; length; ...)``: with
    a length of 0 nothing is checked and the answer is 0."""
    t = Selftest()
    md = t.mock_domain(t.ioas_alloc())
    t.check_refs(t.buffer, 0, 5)
    t.check_map(md.hwpt_id, MOCK_APERTURE_START, t.buffer, 0)
    t.close()


def test_check_refs_skips_compound_pages() -> None:
    """``if (!PageCompound(pages[0]))``: THP and hugetlb pages are not compared."""
    t = Selftest()
    huge = t.p.mmap(HUGEPAGE_SIZE, "hugetlb-2M", populate=True)
    t.check_refs(huge, 4 * PAGE_SIZE, 3)
    expect_errno(errno.EIO, t.check_refs, t.buffer, PAGE_SIZE, 3)
    t.close()


def test_check_refs_and_check_map_fault_on_unmapped_memory() -> None:
    """A user page GUP cannot have is its error (EFAULT); a mismatch before it wins."""
    t = Selftest()
    ioas = t.ioas_alloc()
    md = t.mock_domain(ioas)
    gone = t.p.mmap(2 * PAGE_SIZE, populate=True)
    t.p.munmap(gone + PAGE_SIZE, PAGE_SIZE)
    expect_errno(errno.EFAULT, t.check_refs, gone, 2 * PAGE_SIZE, 0)
    t.map_fixed(ioas, gone, PAGE_SIZE, MOCK_APERTURE_START)
    expect_errno(errno.EFAULT, t.check_map, md.hwpt_id, MOCK_APERTURE_START, gone,
                 2 * PAGE_SIZE)
    expect_errno(errno.EINVAL, t.check_map, md.hwpt_id, MOCK_APERTURE_START + PAGE_SIZE,
                 gone, 2 * PAGE_SIZE)
    t.close()


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_check_map_checks_alignment_before_or_after_the_lookup(kernel: str) -> None:
    """6.12 ``iommufd_test_md_check_pa`` refuses an unaligned range (EINVAL) before looking
    the HWPT up; 7.0 looks it up first (ENOENT) and aligns to the domain's page size."""
    t = Selftest(kernel=kernel)
    t.ioas_alloc()
    err = errno.EINVAL if kernel == "6.12" else errno.ENOENT
    expect_errno(err, t.check_map, 99, MOCK_APERTURE_START + 1, t.buffer, PAGE_SIZE)
    t.close()


def test_mock_domain_takes_the_selftest_object_id_first() -> None:
    """``iommufd_test_mock_domain`` allocates the selftest object before binding the device
    and attaching it: with IOAS 1, stdev 2, device 3, automatic HWPT 4; the whole command
    comes back (``dev_flags`` as given)."""
    t = Selftest()
    ioas = t.ioas_alloc()
    raw = t.raw_test_cmd(OP_MOCK_DOMAIN_FLAGS, ioas, struct.pack("<12xI", 1) + b"\x33" * 32,
                         last=0)
    out = _unpack(raw)[4]
    assert struct.unpack_from("<IIII", out) == (2, 4, 3, 1)
    assert out[16:] == b"\x33" * 32
    md = t.mock_domain(ioas)
    assert (md.stdev_id, md.idev_id, md.hwpt_id) == (5, 6, 4)  # joins HWPT 4
    expect_errno(errno.EINVAL, t.mock_domain, ioas, 1 << 5)  # the reserved id goes back
    assert t.ioas_alloc() == 7
    t.close()


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_mock_domain_device_flags(kernel: str) -> None:
    """``mock_dev_create``: 6.12 knows NO_DIRTY and HUGE_IOVA, 7.0 NO_DIRTY and PASID
    (HUGE_IOVA is EINVAL there)."""
    t = Selftest(kernel=kernel)
    ioas = t.ioas_alloc()
    if kernel == "6.12":
        t.mock_domain(ioas, 1 << 1)
        expect_errno(errno.EINVAL, t.mock_domain, ioas, 1 << 2)
    else:
        expect_errno(errno.EINVAL, t.mock_domain, ioas, 1 << 1)
    t.close()


def test_mock_domain_replace_copies_back() -> None:
    """``iommufd_test_mock_domain_replace`` answers the HWPT in ``pt_id`` and the rest of
    the command as it was."""
    t = Selftest()
    ioas = t.ioas_alloc()
    md = t.mock_domain(ioas)
    other = t.ioas_alloc()
    raw = t.raw_test_cmd(OP_MOCK_DOMAIN_REPLACE, md.stdev_id,
                         struct.pack("<I", other) + b"\x77" * 44)
    out = _unpack(raw)[4]
    assert struct.unpack_from("<I", out)[0] == other + 1 and out[4:] == b"\x77" * 44
    t.close()


def test_create_access_copies_back_and_attaches_after_creating() -> None:
    """``iommufd_test_create_access``: EOPNOTSUPP for an unknown flag, ENOENT for no such
    IOAS (the access made is destroyed again); out: the fd, with ``flags`` kept."""
    t = Selftest()
    ioas = t.ioas_alloc()
    expect_errno(errno.EOPNOTSUPP, t.create_access, ioas, 2)
    expect_errno(errno.ENOENT, t.create_access, 99)
    raw = t.raw_test_cmd(OP_CREATE_ACCESS, ioas, struct.pack("<II", 0, NEEDS_PIN) + b"\x11")
    out = _unpack(raw)[4]
    fd, flags = struct.unpack_from("<II", out)
    assert flags == NEEDS_PIN and out[8] == 0x11 and fd in t.p.files
    t.p.close(fd)
    t.close()


def test_access_replace_ioas_keeps_the_access() -> None:
    """``iommufd_access_change_ioas`` joins the new IOAS first: when that fails (an access
    that pins needs PAGE_SIZE alignment, EADDRINUSE over an IOAS with an unaligned area)
    the access stays where it was with its pins; a replace unpins the items and moves
    the same access object."""
    t = Selftest()
    ioas = t.ioas_alloc()
    t.map_fixed(ioas, t.buffer, 2 * PAGE_SIZE, MOCK_APERTURE_START)
    access = t.create_access(ioas, NEEDS_PIN)
    access_id = ioas + 1
    item = t.access_pages(access, MOCK_APERTURE_START, PAGE_SIZE, t.buffer)
    odd = t.ioas_alloc()
    t.map_fixed(odd, t.buffer + 100, 100, MOCK_APERTURE_START)
    expect_errno(errno.EADDRINUSE, t.access_replace_ioas, access, odd)
    t.check_refs(t.buffer, PAGE_SIZE, 1)
    other = t.ioas_alloc()
    t.access_replace_ioas(access, other)
    t.check_refs(t.buffer, PAGE_SIZE, 0)
    expect_errno(errno.ENOENT, t.destroy_access_pages, access, item)
    expect_errno(errno.EBUSY, t.destroy, access_id)  # the same access, now on `other`
    expect_errno(errno.EBUSY, t.destroy, other)
    t.destroy(ioas)
    t.p.close(access)
    t.close()


def test_add_reserved_edges() -> None:
    """``iommufd_test_add_reserved``: EINVAL for a length of 0 and EOVERFLOW for a
    wrapping range, before the IOAS is looked up."""
    t = Selftest()
    expect_errno(errno.EINVAL, t.add_reserved, 99, PAGE_SIZE, 0)
    expect_errno(errno.EOVERFLOW, t.add_reserved, 99, 1 << 63, 1 << 63 | 1)
    expect_errno(errno.ENOENT, t.add_reserved, 99, PAGE_SIZE, PAGE_SIZE)
    raw = t.raw_test_cmd(OP_ADD_RESERVED, t.ioas_alloc(), struct.pack("<QQ", PAGE_SIZE,
                                                                       PAGE_SIZE), last=5)
    assert _unpack(raw)[5] == 5  # nothing written back
    t.close()


def test_set_temp_memory_limit_below_one_batch_element() -> None:
    """``if (cmd->memory_limit.limit < sizeof(unsigned long) + sizeof(u32)) -EINVAL``."""
    t = Selftest()
    expect_errno(errno.EINVAL, t.set_temp_memory_limit, 11)
    t.set_temp_memory_limit(12)
    t.set_temp_memory_limit(65536)
    t.close()


def _dirty_hwpt(t: Selftest) -> tuple[int, int]:
    ioas = t.ioas_alloc()
    md = t.mock_domain(ioas)
    out = t.ioctl(u.IOMMU_HWPT_ALLOC, u.HWPT_ALLOC.pack(
        48, u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING, md.idev_id, ioas, 0, 0, 0, 0, 0, 0, 0))
    hwpt = int(u.HWPT_ALLOC.unpack(out)[4])
    t.mock_domain_replace(md.stdev_id, hwpt)
    t.map_fixed(ioas, t.buffer, 4 * PAGE_SIZE, MOCK_APERTURE_START)
    t.set_dirty_tracking(hwpt, True)
    return ioas, hwpt


def test_dirty_copies_back_and_reads_only_the_bitmap_bytes() -> None:
    """``iommufd_test_dirty`` copies ``DIV_ROUND_UP(max, BITS_PER_BYTE)`` bytes of bitmap
    (a bitmap ending a page before unmapped memory works) and answers
    ``out_nr_dirty`` with the rest of the command as it was."""
    t = Selftest()
    _, hwpt = _dirty_hwpt(t)
    page = t.p.mmap(2 * PAGE_SIZE)
    t.p.munmap(page + PAGE_SIZE, PAGE_SIZE)
    bits = page + PAGE_SIZE - 1  # one byte: 8 pages of 2K
    t.p.write(bits, b"\x05")
    union = struct.pack("<IIQQQQQ", 3, 0xBEEF, MOCK_APERTURE_START, 8 * MOCK_PAGE_SIZE,
                        MOCK_PAGE_SIZE, bits, 99)
    raw = t.raw_test_cmd(OP_DIRTY, hwpt, union)
    assert struct.unpack_from("<IIQQQQQ", _unpack(raw)[4]) == (
        3, 0xBEEF, MOCK_APERTURE_START, 8 * MOCK_PAGE_SIZE, MOCK_PAGE_SIZE, bits, 2)
    t.close()


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_dirty_with_a_page_size_other_than_2k(kernel: str) -> None:
    """6.12 looks the mock's slot up at ``cur / page_size`` (the right slot only for 2K;
    with 4K it lands at half the IOVA, where nothing is mapped: 0 marked, a kernel wart
    kept); 7.0 marks ``iova + i * page_size`` and counts every set bit."""
    t = Selftest(kernel=kernel)
    _, hwpt = _dirty_hwpt(t)
    bits = t.p.mmap(PAGE_SIZE)
    t.p.write(bits, b"\x03")
    assert t.mock_dirty(hwpt, MOCK_APERTURE_START, 4 * PAGE_SIZE, PAGE_SIZE, bits) == \
        (0 if kernel == "6.12" else 2)
    t.close()


def test_dirty_refusals() -> None:
    """EINVAL for a zero page size or length, an unaligned range or no bitmap; EOVERFLOW
    (6.12) past 16M * 8 bits; ENOENT for no HWPT; EINVAL while not tracking."""
    t = Selftest()
    _, hwpt = _dirty_hwpt(t)
    bits = t.p.mmap(PAGE_SIZE)
    for args in ((MOCK_APERTURE_START, PAGE_SIZE, 0, bits),
                 (MOCK_APERTURE_START, 0, PAGE_SIZE, bits),
                 (MOCK_APERTURE_START + 1, PAGE_SIZE, PAGE_SIZE, bits),
                 (MOCK_APERTURE_START, PAGE_SIZE, PAGE_SIZE, 0)):
        expect_errno(errno.EINVAL, t.mock_dirty, hwpt, *args)
    expect_errno(errno.EOVERFLOW, t.mock_dirty, hwpt, 0, (16 << 20) * 8 * 2 + 2, 2, bits)
    expect_errno(errno.ENOENT, t.mock_dirty, 99, MOCK_APERTURE_START, PAGE_SIZE, PAGE_SIZE,
                 bits)
    t.set_dirty_tracking(hwpt, False)
    expect_errno(errno.EINVAL, t.mock_dirty, hwpt, MOCK_APERTURE_START, PAGE_SIZE,
                 PAGE_SIZE, bits)
    t.close()


def test_check_iotlb_and_trigger_iopf() -> None:
    """MD_CHECK_IOTLB wants a nested mock HWPT (the model has none: ENOENT); TRIGGER_IOPF
    reports a fault on a mock device (0), ENOENT for no device."""
    t = Selftest()
    md = t.mock_domain(t.ioas_alloc())
    expect_errno(errno.ENOENT, t.test_cmd, OP_MD_CHECK_IOTLB, md.hwpt_id, b"")
    t.test_cmd(OP_TRIGGER_IOPF, 0, struct.pack("<IIIIQ", md.idev_id, 0, 0, 0, 0))
    expect_errno(errno.ENOENT, t.test_cmd, OP_TRIGGER_IOPF, 0, struct.pack("<I", 99))
    expect_errno(errno.EOPNOTSUPP, t.test_cmd, 99, 0, b"")
    t.close()


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_trigger_iopf_on_a_device_that_is_not_a_mock(kernel: str) -> None:
    """6.12 ``iommufd_test_trigger_iopf`` refuses a device that is not a mock device
    (``iommufd_selftest_is_mock_dev``: EINVAL); 7.0 has no such check and reports the
    fault on any bound device (0)."""
    t = Selftest(kernel=kernel)
    t.m.add_pci_device("0000:00:02.0")
    cdev = t.p.open("/dev/vfio/devices/vfio0")
    out = bytearray(v.BIND_IOMMUFD.pack(16, 0, t.fd, 0))
    t.p.ioctl(cdev, v.VFIO_DEVICE_BIND_IOMMUFD, out)
    devid = v.BIND_IOMMUFD.unpack(out)[3]
    iopf = struct.pack("<IIIIQ", devid, 0, 0, 0, 0)
    if kernel == "6.12":
        expect_errno(errno.EINVAL, t.test_cmd, OP_TRIGGER_IOPF, 0, iopf)
    else:
        t.test_cmd(OP_TRIGGER_IOPF, 0, iopf)
    t.p.close(cdev)
    t.close()


@pytest.mark.parametrize("op", [OP_MD_CHECK_MAP, OP_MD_CHECK_REFS, OP_ACCESS_RW,
                                OP_DESTROY_ACCESS_PAGES, OP_SET_TEMP_MEMORY_LIMIT,
                                OP_MOCK_DOMAIN])
def test_operations_without_an_answer_leave_the_command_alone(op: int) -> None:
    """Only the operations with ``out_`` fields call ``iommufd_ucmd_respond``; the others
    write nothing back, on success or failure."""
    t = Selftest()
    ioas = t.ioas_alloc()
    md = t.mock_domain(ioas)
    t.map_fixed(ioas, t.buffer, PAGE_SIZE, MOCK_APERTURE_START)
    access = t.create_access(ioas, NEEDS_PIN)
    item = t.access_pages(access, MOCK_APERTURE_START, PAGE_SIZE, t.buffer)
    unions = {
        OP_MD_CHECK_MAP: (md.hwpt_id, struct.pack("<QQQ", MOCK_APERTURE_START, PAGE_SIZE,
                                                  t.buffer)),
        OP_MD_CHECK_REFS: (0, struct.pack("<QQI", PAGE_SIZE, t.buffer, 1)),
        OP_ACCESS_RW: (access, struct.pack("<QQQI", MOCK_APERTURE_START, 8, t.buffer, 0)),
        OP_DESTROY_ACCESS_PAGES: (access, struct.pack("<I", item)),
        OP_SET_TEMP_MEMORY_LIMIT: (0, struct.pack("<I", 65536)),
        OP_MOCK_DOMAIN: (99, b""),  # fails: no such IOAS
    }
    id, union = unions[op]
    tail = union.ljust(40, b"\0") + b"\xee" * 8
    sent = TEST_CMD.pack(72, op, id, 3, tail, 7)
    buf = bytearray(sent)
    with contextlib.suppress(OSError):
        t.p.ioctl(t.fd, u.IOMMU_TEST_CMD, buf)
    assert bytes(buf) == sent
    t.p.close(access)
    t.close()
