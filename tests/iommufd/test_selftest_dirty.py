"""The selftest's iommufd_dirty_tracking group (reference §2.17 cases 37-41) on the mock
platform: HWPT_ALLOC(DIRTY_TRACKING), SET_DIRTY_TRACKING, GET_DIRTY_BITMAP with and
without NO_CLEAR, bits set through IOMMU_TEST_OP_DIRTY."""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from iommulab.iommufd import uapi as u

from ..helpers import expect_errno
from .selftest_lib import MOCK_APERTURE_START, MOCK_PAGE_SIZE, PAGE_SIZE, Selftest

NO_DIRTY, HUGE_IOVA = 1 << 0, 1 << 1
MOCK_HUGE_PAGE_SIZE = 512 * MOCK_PAGE_SIZE


@dataclass
class Dirty:
    t: Selftest
    ioas: int
    hwpt: int
    idev: int
    buffer: int
    size: int
    huge: bool


@pytest.fixture(params=[("8k", 8 << 10, False), ("256k", 256 << 10, False),
                        ("4M", 4 << 20, False), ("4M_huge", 4 << 20, True)],
                ids=lambda p: p[0])
def d(request: pytest.FixtureRequest) -> Iterator[Dirty]:
    _, size, huge = request.param
    t = Selftest()
    ioas = t.ioas_alloc()
    buffer = t.p.mmap(size, "hugetlb-2M" if huge else "anon", populate=True)
    md = t.mock_domain(ioas, HUGE_IOVA if huge else 0)
    hwpt = t.hwpt_alloc(md.idev_id, ioas, u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    t.mock_domain_replace(md.stdev_id, hwpt)
    yield Dirty(t, ioas, hwpt, md.idev_id, buffer, size, huge)
    t.close()


def test_enforce_dirty(d: Dirty) -> None:
    t = d.t
    expect_errno(errno.EINVAL, t.mock_domain, d.hwpt, NO_DIRTY)  # onto a dirty domain
    other = t.mock_domain(d.ioas, NO_DIRTY)
    expect_errno(errno.EOPNOTSUPP, t.hwpt_alloc, other.idev_id, d.ioas,
                 u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    t.destroy(other.stdev_id)


def test_set_dirty_tracking(d: Dirty) -> None:
    d.t.set_dirty_tracking(d.hwpt, True)
    d.t.set_dirty_tracking(d.hwpt, False)


def test_device_dirty_capability(d: Dirty) -> None:
    t = d.t
    data = t.p.mmap(PAGE_SIZE)
    out = t.ioctl(u.IOMMU_GET_HW_INFO, u.HW_INFO.pack(40, 0, d.idev, 8, data, 0, 0,
                                                      b"\0" * 3, 0))
    fields = u.HW_INFO.unpack(out)
    assert fields[8] & u.IOMMU_HW_CAP_DIRTY_TRACKING
    assert fields[5] == u.IOMMU_HW_INFO_TYPE_SELFTEST
    assert struct.unpack("<II", t.p.read(data, 8)) == (0, u.IOMMU_HW_INFO_SELFTEST_REGVAL)


def _round_trip(d: Dirty, no_clear: bool, offset: int) -> None:
    """``test_mock_dirty_bitmaps``: every other 2K page (every 1M entry when huge) dirtied,
    the bitmap read back, then read again."""
    t = d.t
    iova = t.map_fixed(d.ioas, d.buffer, d.size, MOCK_APERTURE_START)
    t.set_dirty_tracking(d.hwpt, True)
    pte = MOCK_HUGE_PAGE_SIZE if d.huge else MOCK_PAGE_SIZE
    npages = d.size // MOCK_PAGE_SIZE
    want = np.zeros(npages, dtype=np.uint8)
    for i in range(0, d.size // pte, 2):  # every other PTE
        want[i * pte // MOCK_PAGE_SIZE:(i + 1) * pte // MOCK_PAGE_SIZE] = 1
    nbytes = -(-npages // 64) * 8
    src = t.p.mmap(nbytes + PAGE_SIZE)
    t.p.write(src, np.packbits(want, bitorder="little").tobytes().ljust(nbytes, b"\0"))
    assert t.mock_dirty(d.hwpt, iova, d.size, MOCK_PAGE_SIZE, src) == int(want.sum())
    bitmap = t.p.mmap(nbytes + 2 * PAGE_SIZE) + offset
    flags = u.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR if no_clear else 0
    for again in (False, True):
        t.p.write(bitmap, bytes(nbytes))
        t.get_dirty_bitmap(d.hwpt, iova, d.size, MOCK_PAGE_SIZE, bitmap, flags)
        got = np.unpackbits(np.frombuffer(t.p.read(bitmap, nbytes), dtype=np.uint8),
                            bitorder="little")[:npages]
        expected = want if (no_clear or not again) else np.zeros_like(want)
        assert np.array_equal(got, expected), (again, int(got.sum()), int(expected.sum()))
    t.set_dirty_tracking(d.hwpt, False)
    t.unmap(d.ioas, iova, d.size)


@pytest.mark.parametrize("offset", [0, MOCK_PAGE_SIZE, 0xFF1])
def test_get_dirty_bitmap(d: Dirty, offset: int) -> None:
    _round_trip(d, False, offset)


@pytest.mark.parametrize("offset", [0, MOCK_PAGE_SIZE, 0xFF1])
def test_get_dirty_bitmap_no_clear(d: Dirty, offset: int) -> None:
    _round_trip(d, True, offset)


def test_dirty_bitmap_checks(d: Dirty) -> None:
    """``iommufd_check_iova_range`` and the flag checks, in order."""
    t = d.t
    iova = t.map_fixed(d.ioas, d.buffer, d.size, MOCK_APERTURE_START)
    bitmap = t.p.mmap(PAGE_SIZE)
    expect_errno(errno.EOPNOTSUPP, t.get_dirty_bitmap, d.hwpt, iova, d.size, PAGE_SIZE,
                 bitmap, 1 << 5)
    expect_errno(errno.EOVERFLOW, t.get_dirty_bitmap, d.hwpt, (1 << 64) - PAGE_SIZE,
                 2 * PAGE_SIZE, PAGE_SIZE, bitmap)
    expect_errno(errno.EINVAL, t.get_dirty_bitmap, d.hwpt, iova + 1, PAGE_SIZE, PAGE_SIZE,
                 bitmap)  # below the IOAS alignment
    expect_errno(errno.EINVAL, t.get_dirty_bitmap, d.hwpt, iova, d.size, 0, bitmap)
    expect_errno(errno.EINVAL, t.get_dirty_bitmap, d.hwpt, iova + MOCK_PAGE_SIZE, PAGE_SIZE,
                 PAGE_SIZE, bitmap)  # not aligned to page_size
    expect_errno(errno.ENOENT, t.get_dirty_bitmap, d.ioas, iova, d.size, PAGE_SIZE, bitmap)
    expect_errno(errno.ENOENT, t.set_dirty_tracking, d.hwpt + 100, True)
    t.unmap(d.ioas, iova, d.size)
