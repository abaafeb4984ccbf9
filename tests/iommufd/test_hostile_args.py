"""Hostile arguments to iommufd and its selftest commands (issue 19): addresses past the
user address space, lengths and counts up to 2^64. Each answer is the kernel's errno,
nothing stays pinned, and no host memory is sized by what the caller asked for."""

from __future__ import annotations

import errno

import pytest

from ..helpers import expect_errno
from .selftest_lib import (
    BUFFER_SIZE,
    MOCK_APERTURE_START,
    MOCK_PAGE_SIZE,
    PAGE_SIZE,
    Selftest,
)

ULONG_MAX = (1 << 64) - 1
FAR = [1 << 63, ULONG_MAX + 1 - 2 * PAGE_SIZE]  # page-aligned, nothing maps them


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
@pytest.mark.parametrize("uptr", FAR, ids=hex)
def test_access_pages_with_a_uptr_past_the_address_space_unpins(kernel: str,
                                                                uptr: int) -> None:
    """``iommufd_test_access_pages``: after the pin, ``iommufd_test_check_pages`` walks
    ``uptr`` with ``get_user_pages_fast``, which finds nothing there (EFAULT); the error
    path unpins (``out_unaccess``), keeps no item, and the process then exits cleanly."""
    t = Selftest(kernel=kernel)
    ioas = t.ioas_alloc()
    t.map_fixed(ioas, t.buffer, BUFFER_SIZE, MOCK_APERTURE_START)
    access = t.create_access(ioas, 1)
    expect_errno(errno.EFAULT, t.access_pages, access, MOCK_APERTURE_START, PAGE_SIZE, uptr)
    assert t.m.mem.pins.pins == 0
    expect_errno(errno.ENOENT, t.destroy_access_pages, access, 0)
    item = t.access_pages(access, MOCK_APERTURE_START, PAGE_SIZE, t.buffer)
    assert t.m.mem.pins.pins == 1
    t.destroy_access_pages(access, item)
    t.access_pages(access, MOCK_APERTURE_START, PAGE_SIZE, t.buffer)
    t.close()  # exit releases the pin the access still holds


@pytest.mark.parametrize("uptr", FAR, ids=hex)
def test_check_refs_of_a_uptr_past_the_address_space_is_efault(uptr: int) -> None:
    """``iommufd_test_md_check_refs``: the alignment and wrap checks pass for ``uptr`` near
    the top of the 64-bit space (the page fits); ``get_user_pages_fast`` there is
    EFAULT."""
    t = Selftest()
    expect_errno(errno.EFAULT, t.check_refs, uptr, PAGE_SIZE, 0)
    t.close()


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_check_map_of_an_iova_past_the_domain_is_einval(kernel: str) -> None:
    """``iommufd_test_md_check_pa`` takes any aligned ``iova``: one at 2^63 or at the last
    page of the 64-bit space maps nothing, so the first comparison fails (EINVAL) once
    the user page was had."""
    t = Selftest(kernel=kernel)
    ioas = t.ioas_alloc()
    hwpt = t.mock_domain(ioas).hwpt_id
    for iova in (1 << 63, ULONG_MAX + 1 - 2 * PAGE_SIZE):
        expect_errno(errno.EINVAL, t.check_map, hwpt, iova, t.buffer, PAGE_SIZE)
    t.close()


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_check_map_of_a_huge_length_stops_where_the_user_memory_ends(kernel: str) -> None:
    """``iommufd_test_md_check_pa`` steps one IO page at a time, the user page first:
    with a length of 2^62 over 16 mapped pages whose next page is unmapped, all 16 mapped
    in the IOAS compare equal and the 17th is EFAULT from ``get_user_pages_fast``; with
    only 8 of them in the IOAS the 9th IO page is EINVAL. The model walks the user
    memory a chunk at a time, so the length sizes nothing."""
    t = Selftest(kernel=kernel)
    full, half = t.ioas_alloc(), t.ioas_alloc()
    hwpts = [t.mock_domain(ioas).hwpt_id for ioas in (full, half)]
    buf = t.p.mmap(BUFFER_SIZE + PAGE_SIZE, populate=True)
    t.p.munmap(buf + BUFFER_SIZE, PAGE_SIZE)
    t.map_fixed(full, buf, BUFFER_SIZE, MOCK_APERTURE_START)
    t.map_fixed(half, buf, BUFFER_SIZE // 2, MOCK_APERTURE_START)
    t.check_map(hwpts[0], MOCK_APERTURE_START, buf, BUFFER_SIZE)
    expect_errno(errno.EFAULT, t.check_map, hwpts[0], MOCK_APERTURE_START, buf, 1 << 62)
    expect_errno(errno.EINVAL, t.check_map, hwpts[1], MOCK_APERTURE_START, buf, 1 << 62)
    t.check_map(hwpts[1], MOCK_APERTURE_START, buf, BUFFER_SIZE // 2 - MOCK_PAGE_SIZE)
    t.close()


def test_check_refs_of_a_huge_length_stops_where_the_user_memory_ends() -> None:
    """``iommufd_test_md_check_refs`` with a length of 2^62: the mapped pages are checked
    (EIO at the first whose pin count differs), else EFAULT past their end."""
    t = Selftest()
    buf = t.p.mmap(BUFFER_SIZE + PAGE_SIZE, populate=True)
    t.p.munmap(buf + BUFFER_SIZE, PAGE_SIZE)
    expect_errno(errno.EFAULT, t.check_refs, buf, 1 << 62, 0)
    expect_errno(errno.EIO, t.check_refs, buf, 1 << 62, 1)
    t.close()
