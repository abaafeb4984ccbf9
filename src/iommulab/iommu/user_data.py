"""``struct iommu_user_data``: driver-specific data a HWPT_ALLOC passes to the driver
(include/linux/iommu.h)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import InvalidArgument, TooBig

__all__ = [
    "IommuUserData",
    "IommuUserDataArray",
    "iommu_copy_struct_from_full_user_array",
    "iommu_copy_struct_from_user",
    "iommu_copy_struct_from_user_array",
    "page_cached_reader",
]

_PAGE = 4096


@dataclass(frozen=True)
class IommuUserData:
    """``type``, ``uptr`` and ``len`` as the user gave them; ``read(uptr, n)`` copies ``n``
    bytes from the caller's memory (raising EFAULT as ``copy_from_user`` fails)."""

    type: int
    uptr: int
    len: int
    read: Callable[[int, int], bytes]


def iommu_copy_struct_from_user(user_data: IommuUserData, data_type: int, size: int,
                                min_len: int) -> bytes:
    """``__iommu_copy_struct_from_user``: EINVAL for another type or a length below
    ``min_len`` (the first version's ``offsetofend``) or above ``size``; then
    ``copy_struct_from_user``: the user's bytes, zero-filled to ``size``."""
    if user_data.type != data_type:
        raise InvalidArgument(f"driver data: type {user_data.type:#x}, not {data_type:#x}")
    if user_data.len < min_len or size < user_data.len:
        raise InvalidArgument(f"driver data: {user_data.len} bytes (want {min_len} to {size})")
    return user_data.read(user_data.uptr, user_data.len).ljust(size, b"\0")


@dataclass(frozen=True)
class IommuUserDataArray:
    """``struct iommu_user_data_array``: ``entry_num`` entries of ``entry_len`` bytes at
    ``uptr``, all of ``type`` (IOMMU_HWPT_INVALIDATE's request array)."""

    type: int
    uptr: int
    entry_len: int
    entry_num: int
    read: Callable[[int, int], bytes]


def page_cached_reader(read: Callable[[int, int], bytes]) -> Callable[[int, int], bytes]:
    """``read`` for one request array: whole 4K pages are read once and kept, so the
    per-entry copies of a long array (up to 2^32 entries on 7.0) cost a slice each. A
    page that cannot be read in full falls back to ``read`` of the exact bytes, which
    gives the EFAULT (or the bytes) the uncached copy gives. Only for a call that does
    not write the user's memory while it reads the array. O(pages) reads."""
    pages: dict[int, bytes] = {}

    def cached(addr: int, n: int) -> bytes:
        first, end = addr & ~(_PAGE - 1), addr + n
        if n <= 0 or end - first > 4 * _PAGE:
            return read(addr, n)
        chunks = []
        for base in range(first, end, _PAGE):
            page = pages.get(base)
            if page is None:
                try:
                    page = read(base, _PAGE)
                except OSError:
                    return read(addr, n)
                pages[base] = page
            chunks.append(page)
        return b"".join(chunks)[addr - first:end - first]

    return cached


def iommu_copy_struct_from_user_array(array: IommuUserDataArray, data_type: int,
                                      index: int, size: int, min_len: int) -> bytes:
    """``__iommu_copy_struct_from_user_array``: entry ``index`` (EINVAL past the end or in
    an empty array) read as :func:`iommu_copy_struct_from_user` reads driver data, from
    ``uptr + entry_len * index`` with ``entry_len`` as its length."""
    if index >= array.entry_num:
        raise InvalidArgument(f"driver data: entry {index} of {array.entry_num}")
    one = IommuUserData(array.type, array.uptr + array.entry_len * index, array.entry_len,
                        array.read)
    return iommu_copy_struct_from_user(one, data_type, size, min_len)


def iommu_copy_struct_from_full_user_array(array: IommuUserDataArray, data_type: int,
                                           size: int) -> list[bytes]:
    """``iommu_copy_struct_from_full_user_array`` (Linux 6.13+, 7.0): EINVAL for another
    type or an empty array; then every entry by ``copy_struct_from_user``: an entry
    shorter than ``size`` is zero-filled, a longer one must have a zero tail (E2BIG),
    EFAULT where the memory cannot be read. Unlike the per-entry helper there is no
    minimum length. The entries, ``size`` bytes each. O(entries)."""
    if array.type != data_type:
        raise InvalidArgument(f"driver data: type {array.type:#x}, not {data_type:#x}")
    if not array.entry_num:
        raise InvalidArgument("driver data: an empty array")
    n, size_u = array.entry_len, array.entry_num
    raw = array.read(array.uptr, n * size_u) if n else b""
    out: list[bytes] = []
    for i in range(size_u):
        one = raw[i * n:(i + 1) * n]
        if n > size and any(one[size:]):
            raise TooBig(f"driver data: entry {i} has non-zero bytes past {size}")
        out.append(one[:size].ljust(size, b"\0"))
    return out
