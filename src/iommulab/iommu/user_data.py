"""``struct iommu_user_data``: driver-specific data a HWPT_ALLOC passes to the driver
(include/linux/iommu.h)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import InvalidArgument

__all__ = [
    "IommuUserData",
    "IommuUserDataArray",
    "iommu_copy_struct_from_user",
    "iommu_copy_struct_from_user_array",
]


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
