"""Where a driver's dirty record lands in the user's bitmap: 6.12's and 7.0's
``iova_bitmap_set`` (drivers/iommu/iommufd/iova_bitmap.c) for a record that runs past the
bitmap, and 6.12's mock ``mock_domain_read_and_clear_dirty`` for a read that starts
inside a huge entry."""

from __future__ import annotations

import errno

import numpy as np

from iommulab import Machine
from iommulab.iommufd import uapi as u

from ..helpers import Host, expect_errno
from .selftest_lib import MOCK_APERTURE_START, MOCK_PAGE_SIZE, Selftest

PAGE = 4096
HUGE_IOVA = 1 << 1  # MOCK_FLAGS_DEVICE_HUGE_IOVA (6.12)
MOCK_HUGE_PAGE_SIZE = 512 * MOCK_PAGE_SIZE


def _smmu_dirty_block(kernel: str, block: int) -> tuple[Host, int, int]:
    """An SMMUv3 dirty-tracking HWPT with one ``block``-sized block at 4G, written to."""
    m = Machine("arm64-smmuv3", ram="3G", kernel=kernel)
    dev = m.add_pci_device("0000:00:02.0")
    p = m.spawn_process(memlock_limit=None)
    h = Host(m, p, p.open("/dev/iommu"))
    cdev, devid = h.bind(0)
    ioas = h.ioas()
    hwpt = h.hwpt(devid, ioas, u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    h.attach(cdev, hwpt)
    buf = p.mmap(block, "hugetlb-1G" if block == 1 << 30 else "hugetlb-2M", populate=True)
    iova = 1 << 32
    h.ioctl(h.iommufd, u.IOMMU_IOAS_MAP, u.IOAS_MAP.pack(
        40, u.IOMMU_IOAS_MAP_FIXED_IOVA | 6, ioas, 0, buf, block, iova))
    h.ioctl(h.iommufd, u.IOMMU_HWPT_SET_DIRTY_TRACKING,
            u.HWPT_SET_DIRTY_TRACKING.pack(16, 1, hwpt, 0))
    dev.dma_write(iova + 5, b"x")
    return h, hwpt, iova


def _set_bytes(h: Host, addr: int, n: int) -> list[int]:
    raw = np.frombuffer(h.p.read(addr, n), dtype=np.uint8)
    nz = np.flatnonzero(raw)
    return [int(nz[0]), int(nz[-1]) + 1] if len(nz) else []


def test_7_0_iova_bitmap_set_writes_a_long_record_past_the_bitmap() -> None:
    """A 2M block dirty, a bitmap of its first 1M (256 bits, 32 bytes): io-pgtable-arm
    records the whole block from the walk's address. 6.12's ``iova_bitmap_set`` refuses
    a range outside the bitmap (``bitmap->err = -EPROTO``, nothing set, the ioctl
    fails); 7.0 dropped that check and sets all 512 bits, the last 256 in the 32 bytes
    after the user's bitmap."""
    for kernel in ("6.12", "7.0"):
        h, hwpt, iova = _smmu_dirty_block(kernel, 2 << 20)
        data = h.p.mmap(2 * PAGE)
        if kernel == "6.12":
            expect_errno(errno.EPROTO, h.get_dirty_bitmap, hwpt, iova, 1 << 20, data)
            assert _set_bytes(h, data, 2 * PAGE) == []
        else:
            h.get_dirty_bitmap(hwpt, iova, 1 << 20, data)
            assert _set_bytes(h, data, 2 * PAGE) == [0, 64]
        h.p.exit()
        assert h.m.mem.pins.pins == 0


def test_7_0_record_past_the_bitmap_stops_at_the_pages_pinned_for_it() -> None:
    """7.0 ``iova_bitmap_get`` pins from the page of the record's first word as many pages
    as the remaining words need, plus one when that word is not page aligned: a 1G
    record (262144 bits) into a 32-byte bitmap at a page boundary fills that one page
    and no more; the same bitmap 16 bytes before a page boundary gets two pages."""
    h, hwpt, iova = _smmu_dirty_block("7.0", 1 << 30)
    area = h.p.mmap(4 * PAGE)
    h.get_dirty_bitmap(hwpt, iova, 1 << 20, area,
                       flags=u.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR)
    assert _set_bytes(h, area, 4 * PAGE) == [0, PAGE]
    h.p.write(area, bytes(4 * PAGE))
    h.get_dirty_bitmap(hwpt, iova, 1 << 20, area + PAGE - 16)
    assert _set_bytes(h, area, 4 * PAGE) == [PAGE - 16, 2 * PAGE]
    h.p.exit()
    assert h.m.mem.pins.pins == 0


def _huge_mock_6_12() -> tuple[Selftest, int, int, int]:
    """6.12: a HUGE_IOVA mock device on a dirty-tracking HWPT with two 1M entries."""
    t = Selftest()
    ioas = t.ioas_alloc()
    md = t.mock_domain(ioas, HUGE_IOVA)
    hwpt = t.hwpt_alloc(md.idev_id, ioas, u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    t.mock_domain_replace(md.stdev_id, hwpt)
    buf = t.p.mmap(2 << 20, "hugetlb-2M", populate=True)
    iova = t.map_fixed(ioas, buf, 2 << 20, MOCK_APERTURE_START)
    t.set_dirty_tracking(hwpt, True)
    return t, ioas, hwpt, iova


def _dirty_first_slot(t: Selftest, hwpt: int, iova: int) -> None:
    bits = t.p.mmap(PAGE)
    t.p.write(bits, b"\x01")
    assert t.mock_dirty(hwpt, iova, MOCK_PAGE_SIZE, MOCK_PAGE_SIZE, bits) == 1


def test_6_12_mock_dirty_read_inside_a_huge_entry_records_1m_from_the_walked_iova() -> None:
    """6.12 ``mock_domain_read_and_clear_dirty``: at a HUGE slot it tests and clears the
    1M entry from ``head = iova & ~(pgsize - 1)`` but calls
    ``iommu_dirty_bitmap_record(dirty, iova, pgsize)`` with the walked ``iova``. A read
    of [+512K, +1.5M) with only the first entry dirty therefore reports all of it:
    the first entry's second half and the clean second entry's first half (a kernel
    wart kept), and succeeds, since the record lies inside the bitmap."""
    t, ioas, hwpt, iova = _huge_mock_6_12()
    _dirty_first_slot(t, hwpt, iova)
    data = t.p.mmap(PAGE)
    half = MOCK_HUGE_PAGE_SIZE // 2
    t.get_dirty_bitmap(hwpt, iova + half, MOCK_HUGE_PAGE_SIZE, MOCK_PAGE_SIZE, data)
    bits = np.unpackbits(np.frombuffer(t.p.read(data, 64), dtype=np.uint8), bitorder="little")
    assert np.flatnonzero(bits).tolist() == list(range(512))
    t.p.write(data, bytes(64))  # and the first entry was cleared whole
    t.get_dirty_bitmap(hwpt, iova, 2 * MOCK_HUGE_PAGE_SIZE, MOCK_PAGE_SIZE, data)
    assert t.p.read(data, 128) == bytes(128)
    t.unmap(ioas, iova, 2 << 20)
    t.close()


def test_6_12_mock_dirty_read_walks_on_at_the_same_offset_into_each_entry() -> None:
    """The walk steps ``iova += pgsize`` from the walked IOVA: from +512K it lands at
    +1.5M, inside the second entry, whose dirty state is recorded as 1M from there,
    past the end of a bitmap that stops at +2M: ``iova_bitmap_set`` refuses it and
    6.12 fails the ioctl with EPROTO."""
    t, ioas, hwpt, iova = _huge_mock_6_12()
    bits = t.p.mmap(PAGE)
    marks = np.zeros(1024, dtype=np.uint8)
    marks[512] = 1  # the second entry's first slot
    t.p.write(bits, np.packbits(marks, bitorder="little").tobytes())
    assert t.mock_dirty(hwpt, iova, 2 << 20, MOCK_PAGE_SIZE, bits) == 1
    data = t.p.mmap(PAGE)
    half = MOCK_HUGE_PAGE_SIZE // 2
    expect_errno(errno.EPROTO, t.get_dirty_bitmap, hwpt, iova + half,
                 3 * half, MOCK_PAGE_SIZE, data)
    assert t.p.read(data, 128) == bytes(128)
    t.unmap(ioas, iova, 2 << 20)
    t.close()

