"""Where a driver's dirty record lands in the user's bitmap: 6.12's and 7.0's
``iova_bitmap_set`` (drivers/iommu/iommufd/iova_bitmap.c) for a record that runs past the
bitmap."""

from __future__ import annotations

import errno

import numpy as np

from iommulab import Machine
from iommulab.iommufd import uapi as u

from .test_cdev import Host
from .test_selftest_ioas import expect_errno

PAGE = 4096


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


def _read_bitmap(h: Host, hwpt: int, iova: int, length: int, data: int, flags: int = 0
                 ) -> None:
    h.ioctl(h.iommufd, u.IOMMU_HWPT_GET_DIRTY_BITMAP,
            u.HWPT_GET_DIRTY_BITMAP.pack(48, hwpt, flags, 0, iova, length, PAGE, data))


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
            expect_errno(errno.EPROTO, _read_bitmap, h, hwpt, iova, 1 << 20, data)
            assert _set_bytes(h, data, 2 * PAGE) == []
        else:
            _read_bitmap(h, hwpt, iova, 1 << 20, data)
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
    _read_bitmap(h, hwpt, iova, 1 << 20, area, u.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR)
    assert _set_bytes(h, area, 4 * PAGE) == [0, PAGE]
    h.p.write(area, bytes(4 * PAGE))
    _read_bitmap(h, hwpt, iova, 1 << 20, area + PAGE - 16)
    assert _set_bytes(h, area, 4 * PAGE) == [PAGE - 16, 2 * PAGE]
    h.p.exit()
    assert h.m.mem.pins.pins == 0
