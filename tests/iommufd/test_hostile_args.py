"""Hostile arguments to iommufd and its selftest commands (issue 19): addresses past the
user address space, lengths and counts up to 2^64. Each answer is the kernel's errno,
nothing stays pinned, and no host memory is sized by what the caller asked for."""

from __future__ import annotations

import errno

import pytest

from iommulab.iommufd import uapi as u
from iommulab.vfio import uapi as v

from ..helpers import expect_errno, make_host
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
@pytest.mark.parametrize("uptr", FAR, ids=hex)
def test_check_map_of_a_uptr_past_the_address_space_is_efault(kernel: str, uptr: int) -> None:
    """``iommufd_test_md_check_pa`` with a ``uptr`` near the top of the 64-bit space (a
    kernel address): ``get_user_pages_fast`` there is EFAULT, before any comparison
    (found by benchmarks/fuzz_long.py: the model's offset arithmetic overflowed)."""
    t = Selftest(kernel=kernel)
    hwpt = t.mock_domain(t.ioas_alloc()).hwpt_id
    expect_errno(errno.EFAULT, t.check_map, hwpt, MOCK_APERTURE_START, uptr, PAGE_SIZE)
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


# -- lengths that would size host memory (item 7) ----------------------------------------------
SZ_128T = 128 << 40


@pytest.mark.parametrize("compat", [False, True], ids=["IOAS_MAP", "compat-MAP_DMA"])
def test_map_of_128_tib_over_a_small_buffer_is_efault(compat: bool) -> None:
    """IOAS_MAP (or the VFIO compat MAP_DMA) of 128 TiB from a 1 MiB buffer into an IOAS
    with an SMMUv3 domain (a 48-bit IOVA space, so the range fits): ``iopt_fill_domains``
    pins batch by batch (``pfn_reader_user_pin``) and GUP fails at the first page past
    the buffer, EFAULT; the batch already mapped is unmapped and unpinned. Nothing is
    allocated for the length."""
    h, devs = make_host("arm64-smmuv3", 1)
    cdev, _ = h.bind(0)
    ioas = h.ioas()
    h.attach(cdev, ioas)
    buf = h.p.mmap(1 << 20, populate=True)
    if compat:
        h.ioctl(h.iommufd, u.IOMMU_VFIO_IOAS, u.VFIO_IOAS.pack(12, ioas, u.IOMMU_VFIO_IOAS_SET, 0))
        expect_errno(errno.EFAULT, h.ioctl, h.iommufd, v.VFIO_IOMMU_MAP_DMA, v.DMA_MAP.pack(
            v.DMA_MAP.size, v.VFIO_DMA_MAP_FLAG_READ | v.VFIO_DMA_MAP_FLAG_WRITE, buf,
            1 << 32, SZ_128T))
    else:
        expect_errno(errno.EFAULT, h.map, ioas, buf, SZ_128T)
    assert h.m.mem.pins.pins == 0 and h.p.mm.pinned_vm == 0
    assert not h.p.files[h.iommufd].ctx.objects[ioas].iopt.areas()  # type: ignore[attr-defined]
    iova = h.map(ioas, buf, 1 << 20)  # the IOAS still works
    devs[0].dma_write(iova, b"fine")
    h.p.exit()
    assert h.m.mem.pins.pins == 0


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_map_of_128_tib_without_a_domain_pins_only_what_an_access_asks(kernel: str) -> None:
    """Without a domain IOAS_MAP pins nothing, so 128 TiB of a 16-page buffer maps; an
    access then pins one page of it (``iopt_pages_add_access``: the xarray holds that
    page only) and a read past the buffer through the access is EFAULT."""
    t = Selftest(kernel=kernel)
    ioas = t.ioas_alloc()
    iova = t.map(ioas, t.buffer, SZ_128T)
    access = t.create_access(ioas, 1)
    item = t.access_pages(access, iova + PAGE_SIZE, PAGE_SIZE, t.buffer + PAGE_SIZE)
    assert t.m.mem.pins.pins == 1
    expect_errno(errno.EFAULT, t.access_pages, access, iova + BUFFER_SIZE, PAGE_SIZE, 0)
    t.destroy_access_pages(access, item)
    assert t.unmap(ioas, 0, ULONG_MAX) == SZ_128T
    assert t.m.mem.pins.pins == 0
    t.close()


def test_get_hw_info_zeroes_the_rest_without_a_buffer_of_data_len() -> None:
    """``iommufd_get_hw_info`` copies ``min(data_len, driver's length)`` and zeroes the
    rest with ``clear_user``: with ``data_len`` just under 4 GiB over a 16-page buffer
    below an unmapped hole, the driver's 8 bytes are written, the buffer's other bytes
    zeroed up to the hole, and the clear faults there (EFAULT)."""
    t = Selftest()
    idev = t.mock_domain(t.ioas_alloc()).idev_id
    hole = t.p.mmap((4 << 30) + PAGE_SIZE, prot="r")  # reserve, then free, room at the top
    buf = t.p.mmap(BUFFER_SIZE, populate=True)
    t.p.munmap(hole, (4 << 30) + PAGE_SIZE)
    t.p.write(buf, b"\xaa" * BUFFER_SIZE)
    expect_errno(errno.EFAULT, t.ioctl, u.IOMMU_GET_HW_INFO, u.HW_INFO.pack(
        32, 0, idev, 0xFFFFFFFF, buf, 0, 0, b"\0" * 3, 0))
    assert t.p.read(buf, 8) == u.HW_INFO_SELFTEST.pack(0, u.IOMMU_HW_INFO_SELFTEST_REGVAL)
    assert t.p.read(buf + 8, BUFFER_SIZE - 8) == bytes(BUFFER_SIZE - 8)
    t.close()


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_dirty_bitmap_of_a_huge_length_costs_what_is_dirty(kernel: str) -> None:
    """IOMMU_HWPT_GET_DIRTY_BITMAP of 2^62 bytes at 4K from the start of a 16-page area:
    ``iova_bitmap`` pins the user's bitmap a window at a time and ``iova_bitmap_set``
    writes only the words of dirty pages, so the length sizes nothing. The walk stops at
    the hole after the area (6.12: EINVAL; 7.0: 0), the dirty pages' bits written."""
    t = Selftest(kernel=kernel)
    ioas = t.ioas_alloc()
    md = t.mock_domain(ioas)
    hwpt = t.hwpt_alloc(md.idev_id, ioas, u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    t.mock_domain_replace(md.stdev_id, hwpt)
    t.map_fixed(ioas, t.buffer, BUFFER_SIZE, MOCK_APERTURE_START)
    t.set_dirty_tracking(hwpt, True)
    bits = t.p.mmap(PAGE_SIZE, populate=True)
    t.p.write(bits, b"\x05")  # IO pages 0 and 2 (2K each in the mock)
    assert t.mock_dirty(hwpt, MOCK_APERTURE_START, BUFFER_SIZE, MOCK_PAGE_SIZE, bits) == 2
    t.p.write(bits, bytes(8))
    t.get_dirty_bitmap(hwpt, MOCK_APERTURE_START, BUFFER_SIZE, PAGE_SIZE, bits,
                       flags=u.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR)
    dirty = t.p.read(bits, 8)
    assert dirty != bytes(8)
    t.p.write(bits, bytes(8))
    args = (hwpt, MOCK_APERTURE_START, 1 << 62, PAGE_SIZE, bits)
    if kernel == "6.12":
        expect_errno(errno.EINVAL, t.get_dirty_bitmap, *args)
    else:
        t.get_dirty_bitmap(*args)
    assert t.p.read(bits, 8) == dirty
    t.close()


def _dirty_hwpt(t: Selftest) -> int:
    """A mock HWPT that tracks dirty pages, over 16 pages mapped at the aperture."""
    ioas = t.ioas_alloc()
    md = t.mock_domain(ioas)
    hwpt = t.hwpt_alloc(md.idev_id, ioas, u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
    t.mock_domain_replace(md.stdev_id, hwpt)
    t.map_fixed(ioas, t.buffer, BUFFER_SIZE, MOCK_APERTURE_START)
    t.set_dirty_tracking(hwpt, True)
    return hwpt


def test_selftest_dirty_bitmap_past_int_max_is_enomem_in_7_0() -> None:
    """7.0's ``iommufd_test_dirty`` has no bit limit: its ``kvzalloc`` of ``DIV_ROUND_UP(max,
    BITS_PER_LONG)`` longs fails past INT_MAX bytes (ENOMEM), before the user's bitmap
    is read. 6.12 refuses more than 2^27 bits first (EOVERFLOW)."""
    for kernel, code in (("7.0", errno.ENOMEM), ("6.12", errno.EOVERFLOW)):
        t = Selftest(kernel=kernel)
        hwpt = _dirty_hwpt(t)
        bits = t.p.mmap(PAGE_SIZE, populate=True)
        expect_errno(code, t.mock_dirty, hwpt, 0, 1 << 63, 1, bits)
        t.close()


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_selftest_dirty_at_iovas_past_2_63_marks_nothing(kernel: str) -> None:
    """``iommufd_test_dirty`` takes any aligned ``iova``: pages at 2^63 and at the top of
    the 64-bit space (``iova + i * page_size`` wraps there) hold nothing, so nothing is
    marked; 7.0 counts every set bit anyway, 6.12 the slots it found (none)."""
    t = Selftest(kernel=kernel)
    hwpt = _dirty_hwpt(t)
    bits = t.p.mmap(PAGE_SIZE, populate=True)
    t.p.write(bits, b"\xff")
    for iova in (1 << 63, ULONG_MAX + 1 - 4 * MOCK_PAGE_SIZE):
        count = t.mock_dirty(hwpt, iova, 8 * MOCK_PAGE_SIZE, MOCK_PAGE_SIZE, bits)
        assert count == (8 if kernel == "7.0" else 0)
    t.p.write(bits, bytes(8))
    t.get_dirty_bitmap(hwpt, MOCK_APERTURE_START, BUFFER_SIZE, PAGE_SIZE, bits)
    assert t.p.read(bits, 8) == bytes(8)
    t.close()


def test_selftest_dirty_of_an_unreadable_bitmap_marks_nothing() -> None:
    """``copy_from_user`` of the whole bitmap comes before any mark: a bitmap whose second
    page is unmapped is EFAULT and the first page's bits mark nothing."""
    t = Selftest()
    hwpt = _dirty_hwpt(t)
    bits = t.p.mmap(2 * PAGE_SIZE, populate=True)
    t.p.munmap(bits + PAGE_SIZE, PAGE_SIZE)
    t.p.write(bits, b"\xff" * PAGE_SIZE)
    expect_errno(errno.EFAULT, t.mock_dirty, hwpt, MOCK_APERTURE_START,
                 (PAGE_SIZE * 8 + 8) * MOCK_PAGE_SIZE, MOCK_PAGE_SIZE, bits)
    t.p.write(bits, bytes(8))
    t.get_dirty_bitmap(hwpt, MOCK_APERTURE_START, BUFFER_SIZE, PAGE_SIZE, bits)
    assert t.p.read(bits, 8) == bytes(8)
    t.close()


def test_syzkaller_offset_past_the_top_wraps() -> None:
    """``__iommufd_test_syz_conv_iova`` returns ``iopt_area_iova(area) + syz->offset`` as
    an unsigned long: for an area near the top of the 64-bit space a large offset wraps
    to a low IOVA, where nothing is mapped (ENOENT), not past 2^64 (EOVERFLOW)."""
    t = Selftest()
    ioas = t.ioas_alloc()  # no domain: any IOVA can be mapped
    top = ULONG_MAX + 1 - 16 * PAGE_SIZE
    t.map_fixed(ioas, t.buffer, PAGE_SIZE, top)
    access = t.create_access(ioas)
    out = t.p.mmap(PAGE_SIZE)
    syz = 1 << 16  # MOCK_FLAGS_ACCESS_SYZ
    t.access_rw(access, 0 | 0x10 << 32, out, 16, syz)  # area 0, offset 0x10
    assert t.p.read(out, 16) == t.p.read(t.buffer + 0x10, 16)
    expect_errno(errno.ENOENT, t.access_rw, access, 0 | 0xFFFFF000 << 32, out, 16, syz)
    other = t.ioas_alloc()
    expect_errno(errno.ENOENT, t.copy, other, ioas, 0 | 0xFFFFF000 << 32, PAGE_SIZE,
                 MOCK_APERTURE_START, flags=syz | 7)
    t.p.close(access)
    t.close()


def test_mock_6_12_walks_that_wrap_at_2_64_look_up_only_their_slots() -> None:
    """6.12's MD_CHECK_MAP and DIRTY step ``iova`` as an unsigned long, so a walk that
    starts near 2^64 goes on at 0: the slots it visits are two clusters, looked up as
    such (not as one range of 2^53 slots). Nothing is mapped there: MD_CHECK_MAP is
    EINVAL and DIRTY finds no slot."""
    t = Selftest()
    hwpt = _dirty_hwpt(t)
    big = 1 << 20
    expect_errno(errno.EINVAL, t.check_map, hwpt, ULONG_MAX + 1 - 4 * MOCK_PAGE_SIZE,
                 t.buffer, 8 * MOCK_PAGE_SIZE)
    bits = t.p.mmap(PAGE_SIZE, populate=True)
    t.p.write(bits, b"\xff")
    assert t.mock_dirty(hwpt, ULONG_MAX + 1 - 4 * big, 8 * big, big, bits) == 0
    t.close()
