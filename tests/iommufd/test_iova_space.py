"""The io_pagetable's IOVA bookkeeping, with the selftest's cases (kernel_upper.md §2.4-2.6)."""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iommulab.errors import KernelError
from iommulab.iommufd.iova_space import PAGE_SIZE, ULONG_MAX, IovaSpace

P = PAGE_SIZE


def _errno(fn: Callable[..., object], *args: object) -> int:
    with pytest.raises(KernelError) as exc:
        fn(*args)
    assert exc.value.errno is not None
    return exc.value.errno


def test_auto_iova_keeps_the_lengths_alignment_and_avoids_reservations() -> None:
    """iommufd_ioas/area_auto_iova: reserved [4p, 104p); 1<<(ffs(len)-1) alignment."""
    s = IovaSpace()
    s.reserve(4 * P, 104 * P - 1)
    got = []
    for i in range(1, 10):
        length = i * P
        iova = s.alloc_iova(0, length)
        s.insert_area(iova, iova + length - 1, object())
        got.append(iova)
        assert iova % (1 << ((length & -length).bit_length() - 1)) == 0
        assert iova + length <= 4 * P or iova >= 104 * P
    s._check()
    assert got[0] == P  # never IOVA 0
    assert _errno(s.set_allowed, [(P, 600 * P)]) == errno.EADDRINUSE


def test_auto_iova_stays_inside_allowed_ranges() -> None:
    s = IovaSpace()
    s.set_allowed([(200 * P, 600 * P - 1)])
    for i in range(1, 10):
        iova = s.alloc_iova(0, i * P)
        s.insert_area(iova, iova + i * P - 1, object())
        assert iova >= 200 * P and iova + i * P - 1 <= 600 * P - 1


def test_reserved_overflow_gives_enospc() -> None:
    """iommufd_ioas/reserved_overflow: ALIGN_UP must not wrap past ULONG_MAX."""
    s = IovaSpace()
    s.reserve(6, 6 + 0xFFFF_FFFF_FFFF_8001 - 1)
    assert _errno(s.alloc_iova, 0, 0x5000) == errno.ENOSPC


def test_alignment_follows_the_address_and_caps_at_2m() -> None:
    s = IovaSpace()
    assert s.alloc_iova(0x12_3000, 8 * P) == 0x1000 * 1  # addr aligned to 4K only
    assert s.alloc_iova(0x40_0000, 16 << 20) == 2 << 20  # capped at HPAGE_SIZE
    assert s.alloc_iova(0x40_0800, 8 * P) == P | 0x800  # the page offset is kept
    s.iova_alignment = 2 * P
    assert _errno(s.alloc_iova, 0x1000, P) == errno.EINVAL
    assert _errno(s.alloc_iova, 0, 0) == errno.EOVERFLOW


def test_fixed_iova_checks_in_the_kernels_order() -> None:
    s = IovaSpace(iova_alignment=P)
    s.reserve(16 * P, 17 * P - 1)
    s.insert_area(20 * P, 22 * P - 1, object())
    assert _errno(s.check_iova, P + 1, P) == errno.EINVAL  # alignment
    assert _errno(s.check_iova, ULONG_MAX - P + 1, 2 * P) == errno.EOVERFLOW
    assert _errno(s.check_iova, 15 * P, 2 * P) == errno.EINVAL  # reserved
    for first, last in ((16, 18), (21, 22), (19, 21), (21, 23)):
        if first != 16:
            assert _errno(s.check_iova, first * P, (last - first) * P) == errno.EEXIST
    s.check_iova(18 * P, 2 * P)


def test_reserve_over_an_area_or_allowed_range_is_refused() -> None:
    """iommufd_ioas/area_allowed."""
    s = IovaSpace()
    s.set_allowed([(P, 10 * P)])
    assert _errno(s.reserve, 2 * P, 3 * P) == errno.EADDRINUSE
    s.set_allowed([])
    s.reserve(2 * P, 3 * P)
    assert _errno(s.set_allowed, [(P, 10 * P)]) == errno.EADDRINUSE
    assert s.allowed == []
    assert _errno(s.set_allowed, [(5 * P, 5 * P)]) == errno.EINVAL  # start >= last
    assert _errno(s.set_allowed, [(5 * P, 9 * P), (9 * P, 12 * P)]) == errno.EINVAL
    s.insert_area(20 * P, 21 * P - 1, object())
    assert _errno(s.reserve, 20 * P, 20 * P) == errno.EADDRINUSE


def test_iova_ranges_are_the_holes_between_reservations() -> None:
    """iommufd_ioas/iova_ranges, no domain: [0, SIZE_MAX], then around [p, 2p)."""
    s = IovaSpace()
    assert s.holes_of_reserved() == [(0, ULONG_MAX)]
    s.reserve(P, 2 * P - 1)
    assert s.holes_of_reserved() == [(0, P - 1), (2 * P, ULONG_MAX)]
    owner = object()
    s.reserve(0, (1 << 24) - 1, owner)
    s.reserve(1 << 31, ULONG_MAX, owner)
    assert s.holes_of_reserved() == [(1 << 24, (1 << 31) - 1)]
    s.remove_reservations(owner)
    assert s.holes_of_reserved() == [(0, P - 1), (2 * P, ULONG_MAX)]


@given(st.lists(st.tuples(st.integers(0, 63), st.integers(1, 16)), max_size=20),
       st.integers(1, 20))
def test_auto_iova_is_the_lowest_free_aligned_fit(maps: list[tuple[int, int]], n: int) -> None:
    """Against a plain search over pages: lowest page-aligned start >= P, aligned to the
    length's power of two, not meeting any area."""
    s = IovaSpace()
    taken: set[int] = set()
    for first, pages in maps:
        if taken.isdisjoint(range(first, first + pages)):
            s.insert_area(first * P, (first + pages) * P - 1, object())
            taken.update(range(first, first + pages))
    align = 1 << (n - 1).bit_length()
    want = next(p for p in range(align, 1 << 20, align) if taken.isdisjoint(range(p, p + n)))
    assert s.alloc_iova(0, n * P) == want * P


def test_set_allowed_checks_each_range_before_it_takes_the_next() -> None:
    """``iommufd_ioas_load_iovas``: range i is copied and checked before range i + 1 is
    copied, so a bad range stops the reading (the ranges after it are never taken)."""
    s = IovaSpace()
    taken: list[int] = []

    def ranges() -> Iterator[tuple[int, int]]:
        for i, r in enumerate([(P, 2 * P), (3 * P, 3 * P), (4 * P, 5 * P)]):
            taken.append(i)
            yield r

    assert _errno(s.set_allowed, ranges()) == errno.EINVAL
    assert taken == [0, 1] and s.allowed == []
