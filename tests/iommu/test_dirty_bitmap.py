"""IovaBitmap and iommu_dirty_bitmap_record."""

import numpy as np
import pytest

from iommulab.iommu import IommuDirtyBitmap, IommuIotlbGather, IovaBitmap
from iommulab.sizes import SZ_1G, SZ_2M, SZ_4K


def test_set_marks_overlapping_pages_and_clips() -> None:
    b = IovaBitmap(0x10000, 16 * SZ_4K, SZ_4K)
    b.set(0x10000 + 100, 1)
    b.set(0x10000 + 3 * SZ_4K - 1, 2)  # straddles pages 2 and 3
    b.set(0, 0x11000)  # starts before the bitmap: page 0 only
    b.set(0x10000 + 15 * SZ_4K, SZ_1G)  # runs past the end
    assert [i for i in range(16) if b.is_set(0x10000 + i * SZ_4K)] == [0, 2, 3, 15]
    assert b.count() == 4


def test_set_pages_matches_set() -> None:
    rng = np.random.default_rng(0)
    for length in (SZ_4K, 3 * SZ_4K, SZ_2M):
        a, b = IovaBitmap(0, 64 * SZ_2M, SZ_4K), IovaBitmap(0, 64 * SZ_2M, SZ_4K)
        iovas = np.unique(rng.integers(-4, 70 * SZ_2M // SZ_4K, 300)) * SZ_4K + 512
        for iova in iovas.tolist():
            a.set(iova, length)
        b.set_pages(iovas.astype(np.uint64) if (iovas >= 0).all() else
                    iovas[iovas >= 0].astype(np.uint64), length)
        if (iovas < 0).any():
            for iova in iovas[iovas < 0].tolist():
                b.set(iova, length)
        assert a.to_bytes() == b.to_bytes()


def test_to_bytes_is_little_endian_u64_words() -> None:
    b = IovaBitmap(0, 70 * SZ_4K, SZ_4K)
    b.set(0, SZ_4K)
    b.set(9 * SZ_4K, SZ_4K)
    b.set(64 * SZ_4K, SZ_4K)
    words = np.frombuffer(b.to_bytes(), dtype="<u8")
    assert list(words) == [1 | 1 << 9, 1]


def test_record_widens_the_gather() -> None:
    g = IommuIotlbGather()
    d = IommuDirtyBitmap(None, g)
    d.record_pages(np.array([0x5000, 0x1000], dtype=np.uint64), SZ_4K)
    d.record(0x9000, SZ_4K)
    assert (g.start, g.end) == (0x1000, 0x9FFF)


def test_bad_bitmaps_are_refused() -> None:
    with pytest.raises(ValueError, match="0x3000"):
        IovaBitmap(0, SZ_2M, 0x3000)
    with pytest.raises(ValueError, match="length"):
        IovaBitmap(0, 0, SZ_4K)
