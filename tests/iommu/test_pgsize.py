"""iommu_pgsize against worked examples and a brute-force restatement."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given

from iommulab.iommu import iommu_pgsize
from iommulab.sizes import SZ_1G, SZ_2M, SZ_4K, SZ_16K, SZ_32M, SZ_64K, SZ_512M

B4K = SZ_4K | SZ_2M | SZ_1G


def _plan(bitmap: int, iova: int, paddr: int, size: int) -> list[tuple[int, int]]:
    out = []
    while size:
        pgsize, count = iommu_pgsize(bitmap, iova, paddr, size)
        out.append((pgsize, count))
        iova, paddr, size = iova + pgsize * count, paddr + pgsize * count, size - pgsize * count
    return out


def test_kernel_examples() -> None:
    # Reference §2.2 and the iommupt KUnit test_mixed ("14 2M, 3 1G, 3 2M").
    assert _plan(B4K, 0x1FF000, 0x1FF000, 4 * SZ_2M // 2 + SZ_4K) == [(SZ_4K, 1), (SZ_2M, 2)]
    assert _plan(B4K, 0x3FE400000, 0x3FE400000, 0xC2200000) == [
        (SZ_2M, 14), (SZ_1G, 3), (SZ_2M, 3)]
    # pt_pgsz_count(2M|4K, 4K, 1G-1, 4K) == (2M-4K)/4K
    assert iommu_pgsize(SZ_4K | SZ_2M, SZ_4K, SZ_4K, SZ_1G - SZ_4K) == (SZ_4K, 511)


def test_misaligned_pa_never_uses_a_bigger_page() -> None:
    assert _plan(B4K, 0, SZ_4K, SZ_1G) == [(SZ_4K, SZ_1G // SZ_4K)]
    assert _plan(B4K, SZ_2M, SZ_4K + SZ_2M, 3 * SZ_2M) == [(SZ_4K, 3 * 512)]


def test_not_enough_length_for_the_next_size_keeps_small_pages() -> None:
    # offset to the 2M boundary + 2M does not fit: all 4K, one call.
    assert iommu_pgsize(B4K, 0x1FF000, 0x1FF000, SZ_2M) == (SZ_4K, 512)


def test_overflow_of_offset_plus_next_is_checked() -> None:
    # offset (2^63) + next size (2^63) wraps to 0 in 64 bits; without the
    # check_add_overflow() the count would grow to 2^63 / 4K.
    assert iommu_pgsize(SZ_4K | (1 << 63), 0, 0, 1 << 62) == (SZ_4K, 1 << 50)
    top = (1 << 64) - SZ_1G
    assert iommu_pgsize(B4K, top - SZ_4K, top - SZ_4K, SZ_1G + SZ_4K) == (SZ_4K, 1)


def test_no_size_fits_is_refused_naming_the_arguments() -> None:
    with pytest.raises(ValueError, match="iova 0x800"):
        iommu_pgsize(B4K, 0x800, 0, SZ_4K)


BITMAPS = [B4K, SZ_16K | SZ_32M, SZ_64K | SZ_512M | 1 << 42, SZ_4K | SZ_64K | SZ_2M]


@given(bitmap=st.sampled_from(BITMAPS), iova_pages=st.integers(0, 1 << 20),
       delta_pages=st.integers(-4, 1 << 12), pages=st.integers(1, 1 << 19))
def test_leaves_are_the_greedy_choice(bitmap: int, iova_pages: int, delta_pages: int,
                                      pages: int) -> None:
    """Each leaf is the largest size aligned for iova and paddr that still fits."""
    g = bitmap & -bitmap
    iova = iova_pages * g
    paddr = max(iova + delta_pages * g, 0)
    size = pages * g
    pos = 0
    for pgsize, count in _plan(bitmap, iova, paddr, size):
        assert count >= 1
        for i in (0, count - 1):  # the ends of a run stand for all of it
            at = pos + i * pgsize
            best = max(s for s in (1 << b for b in range(64)) if s & bitmap
                       and not (iova + at) % s and not (paddr + at) % s and s <= size - at)
            assert pgsize == best
        pos += count * pgsize
    assert pos == size
