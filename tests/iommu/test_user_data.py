"""``page_cached_reader``: the request array's reads, a page at a time, give exactly what
the uncached reads give (bytes or EFAULT)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from iommulab.errors import BadAddress
from iommulab.iommu.user_data import page_cached_reader

LO, HI = 0x10_0000 + 0x800, 0x10_3000  # readable bytes: [LO, HI)


def _read(addr: int, n: int) -> bytes:
    if addr < LO or addr + n > HI:
        raise BadAddress(f"read of {n} bytes at {addr:#x}")
    return bytes((addr + i) & 0xFF for i in range(n))


def _outcome(read: object, addr: int, n: int) -> bytes | str:
    try:
        return read(addr, n)  # type: ignore[operator, no-any-return]
    except BadAddress:
        return "EFAULT"


@given(st.lists(st.tuples(st.integers(0x0F_F000, 0x10_4000), st.integers(0, 0x2100)),
                max_size=20))
def test_cached_reads_match_the_uncached_ones(reads: list[tuple[int, int]]) -> None:
    cached = page_cached_reader(_read)
    for addr, n in reads:
        assert _outcome(cached, addr, n) == _outcome(_read, addr, n)


def test_a_page_is_read_once() -> None:
    calls: list[tuple[int, int]] = []

    def counting(addr: int, n: int) -> bytes:
        calls.append((addr, n))
        return _read(addr, n)

    cached = page_cached_reader(counting)
    for i in range(100):
        cached(0x10_1000 + 24 * i, 24)
    assert calls == [(0x10_1000, 4096)]
