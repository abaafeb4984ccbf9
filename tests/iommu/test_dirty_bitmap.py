"""IovaBitmap and iommu_dirty_bitmap_record."""

import tracemalloc

import numpy as np
import pytest

from iommulab.iommu import IommuDirtyBitmap, IommuIotlbGather, IovaBitmap
from iommulab.iommu.dirty import UserIovaBitmap
from iommulab.sizes import SZ_1G, SZ_2M, SZ_4K, SZ_64K


def test_set_marks_overlapping_pages_and_clips() -> None:
    b = IovaBitmap(0x10000, 16 * SZ_4K, SZ_4K)
    b.set(0x10000 + 100, 1)
    b.set(0x10000 + 3 * SZ_4K - 1, 2)  # straddles pages 2 and 3
    b.set(0, 0x11000)  # starts before the bitmap: page 0 only
    b.set(0x10000 + 15 * SZ_4K, SZ_1G)  # runs past the end
    assert [i for i in range(16) if b.is_set(0x10000 + i * SZ_4K)] == [0, 2, 3, 15]
    assert b.count() == 4


@pytest.mark.parametrize(("page_size", "leaf", "start"), [
    (SZ_4K, SZ_4K, 0), (SZ_4K, SZ_2M, 0), (SZ_4K, SZ_1G, 0),  # leaves of whole pages
    (SZ_2M, SZ_4K, SZ_2M), (SZ_64K, SZ_4K, 3 * SZ_4K),  # leaves inside one bitmap page
    (SZ_4K, 3 * SZ_4K, 512), (SZ_4K, SZ_4K, -8 * SZ_4K),  # unaligned; starts before the bitmap
])
def test_set_run_matches_set(page_size: int, leaf: int, start: int) -> None:
    rng = np.random.default_rng(page_size ^ leaf)
    base = 4 * SZ_1G
    for n in (1, 7, 512):
        hit = rng.random(n) < 0.4
        a = IovaBitmap(base, 64 * SZ_2M, page_size)
        b = IovaBitmap(base, 64 * SZ_2M, page_size)
        for i in np.flatnonzero(hit).tolist():
            a.set(base + start + i * leaf, leaf)
        b.set_run(base + start, leaf, hit)
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
    d.record_run(0x1000, SZ_4K, np.array([True, False, False, False, True, False]))
    assert (g.start, g.end) == (0x1000, 0x5FFF)
    d.record(0x9000, SZ_4K)
    assert (g.start, g.end) == (0x1000, 0x9FFF)
    d.record_run(0x20000, SZ_4K, np.zeros(4, dtype=np.bool_))
    assert (g.start, g.end) == (0x1000, 0x9FFF)


def test_bad_bitmaps_are_refused() -> None:
    with pytest.raises(ValueError, match="0x3000"):
        IovaBitmap(0, SZ_2M, 0x3000)
    with pytest.raises(ValueError, match="length"):
        IovaBitmap(0, 0, SZ_4K)


def _bitmap(user: bool, iova: int, length: int) -> IovaBitmap:
    """A plain bitmap, or 7.0's user bitmap (which keeps a record that starts in it and
    drops one that starts before it)."""
    if user:
        return UserIovaBitmap(iova, length, SZ_4K, 0x10000)
    return IovaBitmap(iova, length, SZ_4K)


@pytest.mark.parametrize("user", [False, True])
def test_set_ranges_matches_set(user: bool) -> None:
    """``set_ranges`` (overlapping, unsorted, clipped ranges) sets what ``set`` of each does."""
    rng = np.random.default_rng(int(user))
    base, length = 4 * SZ_1G, 256 * SZ_4K
    for n in (1, 2, 9, 200):
        starts = base + rng.integers(-8 * SZ_4K, length + 8 * SZ_4K, n)
        lengths = rng.integers(1, 40 * SZ_4K, n)
        a, b = (_bitmap(user, base, length) for _ in range(2))
        for iova, size in zip(starts.tolist(), lengths.tolist(), strict=True):
            a.set(iova, size)
        b.set_ranges(starts.astype(np.int64), lengths.astype(np.int64))
        assert a.to_bytes() == b.to_bytes()


@pytest.mark.parametrize("user", [False, True])
def test_a_record_costs_what_it_touches_not_the_whole_bitmap(user: bool) -> None:
    """A dirty read records once per table (``iova_bitmap_set`` per dirty leaf in the
    kernel): marking 512 pages of a 16 GiB bitmap (4M bits) must not build arrays the
    size of the bitmap, or a scan costs tables x bitmap bits."""
    size = 16 * SZ_1G
    bitmap = _bitmap(user, 0, size)
    hit = np.ones(512, dtype=np.bool_)
    tracemalloc.start()
    try:
        bitmap.set_run(8 * SZ_1G, SZ_4K, hit)
        bitmap.set_ranges(np.array([SZ_1G, SZ_1G + SZ_2M], dtype=np.int64),
                          np.array([SZ_4K, SZ_2M], dtype=np.int64))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 << 10, f"{peak} bytes for 1025 bits of a {size >> 12}-bit bitmap"
    assert bitmap.count() == 512 + 1 + 512


def test_a_bitmap_of_any_length_costs_what_its_records_touch() -> None:
    """``iova_bitmap_alloc`` allocates nothing for the length (the user's bitmap is pinned
    a window at a time): a bitmap over 2^63 bytes at 1-byte pages, with two records 2^62
    apart and ranges scattered over 2^40 bits, holds only the chunks they set, and
    reports the words that hold them."""
    tracemalloc.start()
    try:
        b = IovaBitmap(0, 1 << 63, 1)
        b.set(5, 3)
        b.set(1 << 62, 1)
        starts = np.arange(0, 1 << 40, 1 << 30, dtype=np.int64)
        b.set_ranges(starts, np.full(len(starts), 2, dtype=np.int64))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"{peak} bytes"
    assert b.count() == 3 + 1 + 2 * len(starts)
    assert b.is_set(1 << 62) and not b.is_set((1 << 62) + 1)
    first, raw = b.words()[0]
    assert first == 0 and raw[:1] == bytes([0b11100011])
    assert b.words()[-1] == ((1 << 62) >> 6, (1).to_bytes(8, "little"))
