"""Linux 7.0's iommufd selftest mock on generic_pt AMDv1, through /dev/iommu: the cases of
tools/testing/selftests/iommu/iommufd.c (7.0) that differ from 6.12's, and the uAPI rules
of 7.0's selftest.c (``mock_domain_alloc_paging_flags``, ``mock_domain_alloc_pgtable``,
``iommufd_test_md_check_pa``, ``iommufd_test_dirty``) next to 6.12's answers."""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from iommulab.iommufd import uapi as u

from ..helpers import expect_errno
from .selftest_lib import (
    HUGEPAGE_SIZE,
    IOMMU_HWPT_DATA_SELFTEST,
    MOCK_APERTURE_LAST,
    MOCK_APERTURE_START,
    MOCK_HUGE_PAGE_SIZE,
    MOCK_IOMMUPT_DEFAULT,
    MOCK_IOMMUPT_HUGE,
    MOCK_PAGE_SIZE,
    PAGE_SIZE,
    Selftest,
)

DIRTY = u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING
NO_CLEAR = u.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR


def _domain(t: Selftest, hwpt: int):  # type: ignore[no-untyped-def]
    return t.p.files[t.fd].ctx.objects[hwpt].domain  # type: ignore[attr-defined]


def _iova_ranges(t: Selftest, ioas: int) -> tuple[int, list[tuple[int, int]]]:
    n, align, ranges = t.iova_ranges(ioas, 4)
    return align, ranges[:n]


# -- mock_domain_alloc_paging_flags / mock_domain_alloc_pgtable ---------------------------------
def test_7_0_default_mock_domain_has_every_power_of_two_from_2k_in_the_mock_aperture() -> None:
    """7.0 ``mock_domain_alloc_pgtable`` (DEFAULT): ``pt_iommu_amdv1_mock_init`` at starting
    level 2 gives the sizes of levels 0-2 (``amdv1pt_possible_sizes``: 2K to 128G) and
    the MOCK aperture is put over the table's; 6.12's mock has 2K pages only."""
    for kernel, sizes in (("6.12", MOCK_PAGE_SIZE), ("7.0", ((1 << 38) - 1) & ~0x7FF)):
        t = Selftest(kernel=kernel)
        ioas = t.ioas_alloc()
        md = t.mock_domain(ioas)
        domain = _domain(t, md.hwpt_id)
        assert domain.pgsize_bitmap == sizes
        assert _iova_ranges(t, ioas) == (MOCK_PAGE_SIZE,
                                         [(MOCK_APERTURE_START, MOCK_APERTURE_LAST)])
        t.close()


def test_7_0_huge_mock_table_takes_1m_and_page_size_over_the_whole_38_bit_table() -> None:
    """``MOCK_IOMMUPT_HUGE``: ``pgsize_bitmap = MOCK_HUGE_PAGE_SIZE | PAGE_SIZE`` and the
    aperture is not narrowed: ``[0, 2^38 - 1]`` (11 + 9 * 3 bits)."""
    t = Selftest(kernel="7.0")
    ioas = t.ioas_alloc()
    md = t.mock_domain(ioas)
    other = t.ioas_alloc()
    hwpt = t.hwpt_alloc_iommupt(md.idev_id, other, 0, MOCK_IOMMUPT_HUGE)
    domain = _domain(t, hwpt)
    assert domain.pgsize_bitmap == MOCK_HUGE_PAGE_SIZE | PAGE_SIZE
    assert (domain.geometry.aperture_start, domain.geometry.aperture_end) == (0, (1 << 38) - 1)
    assert _iova_ranges(t, other) == (PAGE_SIZE, [(0, (1 << 38) - 1)])
    t.destroy(hwpt)
    t.close()


def test_hwpt_alloc_selftest_data_is_7_0() -> None:
    """6.12 ``mock_domain_alloc_user`` refuses driver data for a paging domain
    (EOPNOTSUPP). 7.0 ``mock_domain_alloc_paging_flags``: a type other than SELFTEST is
    EOPNOTSUPP; ``iommu_copy_struct_from_user`` wants 4 to 8 bytes (EINVAL) and a
    readable pointer (EFAULT); a ``pagetable_type`` other than DEFAULT and HUGE is
    EOPNOTSUPP (``mock_domain_alloc_pgtable``)."""
    old = Selftest()
    ioas = old.ioas_alloc()
    md = old.mock_domain(ioas)
    expect_errno(errno.EOPNOTSUPP, old.hwpt_alloc_iommupt, md.idev_id, ioas, 0,
                 MOCK_IOMMUPT_DEFAULT)
    old.close()
    t = Selftest(kernel="7.0")
    ioas = t.ioas_alloc()
    md = t.mock_domain(ioas)
    cfg = struct.pack("<II", 0, MOCK_IOMMUPT_HUGE)
    expect_errno(errno.EOPNOTSUPP, t.hwpt_alloc_data, md.idev_id, ioas, 0, 0xBEEF, cfg)
    expect_errno(errno.EINVAL, t.hwpt_alloc_data, md.idev_id, ioas, 0,
                 IOMMU_HWPT_DATA_SELFTEST, cfg[:3])
    expect_errno(errno.EINVAL, t.hwpt_alloc_data, md.idev_id, ioas, 0,
                 IOMMU_HWPT_DATA_SELFTEST, cfg + bytes(4))
    expect_errno(errno.EOPNOTSUPP, t.hwpt_alloc_iommupt, md.idev_id, ioas, 0, 2)
    bad_ptr = u.HWPT_ALLOC.pack(48, 0, md.idev_id, ioas, 0, 0, IOMMU_HWPT_DATA_SELFTEST, 8,
                                0x10, 0, 0)
    expect_errno(errno.EFAULT, t.ioctl, u.IOMMU_HWPT_ALLOC, bad_ptr)
    four = t.hwpt_alloc_data(md.idev_id, ioas, 0, IOMMU_HWPT_DATA_SELFTEST, cfg[:4])
    assert _domain(t, four).pgsize_bitmap & (1 << 20 | 1 << 11)  # the rest zero: DEFAULT
    t.destroy(four)
    t.close()


# -- map, unmap and MD_CHECK_MAP ----------------------------------------------------------------
def test_7_0_map_over_a_present_entry_is_eaddrinuse_where_6_12_overwrites() -> None:
    """Two IOASes share no IOVA space, so a double map reaches the mock only through the
    core: 7.0 ``__map_range_leaf``/``clear_contig`` refuse a present entry
    (EADDRINUSE, nothing changed); 6.12 ``mock_domain_map_pages`` WARNs and
    overwrites the slot."""
    for kernel in ("6.12", "7.0"):
        t = Selftest(kernel=kernel)
        md = t.mock_domain(t.ioas_alloc())
        domain = _domain(t, md.hwpt_id)
        pa = t.m.mem.alloc_pages(1) << 12
        domain.map(MOCK_APERTURE_START, pa, PAGE_SIZE, 3)
        if kernel == "7.0":
            with pytest.raises(OSError) as err:
                domain.map(MOCK_APERTURE_START, pa + 2 * PAGE_SIZE, PAGE_SIZE, 3)
            assert err.value.errno == errno.EADDRINUSE
            assert domain.iova_to_phys(MOCK_APERTURE_START) == pa
        else:
            domain.map(MOCK_APERTURE_START, pa + 2 * PAGE_SIZE, PAGE_SIZE, 3)
            assert domain.warnings["mock_domain_map_pages: slot already in use"] == 2
            assert domain.iova_to_phys(MOCK_APERTURE_START) == pa + 2 * PAGE_SIZE
        domain.unmap(MOCK_APERTURE_START, PAGE_SIZE)
        t.m.mem.free_pages(pa >> 12, 1)
        t.close()


def test_7_0_iova_to_phys_keeps_the_offset_into_a_large_leaf() -> None:
    """generic_pt ``iova_to_phys`` returns ``pt_entry_oa_exact``: the leaf's OA plus the
    IOVA's offset into it, so MD_CHECK_MAP can compare at any 2K step of a 4K or larger
    leaf. 6.12's mock returns the slot's address, 2K aligned."""
    for kernel, want in (("6.12", 0x800), ("7.0", 0x9A0)):
        t = Selftest(kernel=kernel)
        md = t.mock_domain(t.ioas_alloc())
        domain = _domain(t, md.hwpt_id)
        pa = t.m.mem.alloc_pages(1) << 12
        domain.map(MOCK_APERTURE_START, pa, 2 * PAGE_SIZE, 3)
        assert domain.iova_to_phys(MOCK_APERTURE_START + 0x9A0) == pa + want
        domain.unmap(MOCK_APERTURE_START, 2 * PAGE_SIZE)
        t.m.mem.free_pages(pa >> 12, 1)
        t.close()


def test_check_map_on_a_huge_table_is_in_page_size_steps() -> None:
    """7.0 ``iommufd_test_md_check_pa``: ``page_size = 1 << __ffs(pgsize_bitmap)``, 4K on a
    HUGE table, so a 2K-aligned range is EINVAL there and fine on the DEFAULT one."""
    t = Selftest(kernel="7.0")
    ioas = t.ioas_alloc()
    md = t.mock_domain(ioas)
    huge = t.hwpt_alloc_iommupt(md.idev_id, ioas, 0, MOCK_IOMMUPT_HUGE)
    iova = t.map(ioas, t.buffer, 4 * PAGE_SIZE)
    t.check_map(md.hwpt_id, iova + MOCK_PAGE_SIZE, t.buffer + MOCK_PAGE_SIZE, MOCK_PAGE_SIZE)
    expect_errno(errno.EINVAL, t.check_map, huge, iova + MOCK_PAGE_SIZE,
                 t.buffer + MOCK_PAGE_SIZE, MOCK_PAGE_SIZE)
    t.check_map(huge, iova, t.buffer, 4 * PAGE_SIZE)
    expect_errno(errno.EINVAL, t.check_map, huge, iova, t.buffer + PAGE_SIZE, PAGE_SIZE)
    t.unmap(ioas, iova, 4 * PAGE_SIZE)
    t.destroy(huge)
    t.close()


@pytest.mark.parametrize("copy", [False, True])
def test_mock_domain_all_aligns_7_0(copy: bool) -> None:
    """iommufd_mock_domain.all_aligns / all_aligns_copy (the same C in 6.12 and 7.0) run on
    7.0's AMDv1 mock: every 2K-aligned start and length of a 4-page buffer maps with
    the largest leaves that fit, ``check_mock_iova`` (MD_CHECK_MAP through
    ``iova_to_phys``) finds every byte, the unmap takes every leaf; with ``copy`` a new
    mock domain is filled from the existing one (PFNs read back from contiguous
    leaves)."""
    t = Selftest(kernel="7.0")
    ioas = t.ioas_alloc()
    md = t.mock_domain(ioas)
    end = (3 if copy else 4) * PAGE_SIZE
    for start in range(0, end, MOCK_PAGE_SIZE):
        for stop in range(start + MOCK_PAGE_SIZE, end + 1, MOCK_PAGE_SIZE):
            iova = t.map(ioas, t.buffer + start, stop - start)
            hwpt = md.hwpt_id
            if copy:
                extra = t.mock_domain(ioas)
                hwpt = extra.hwpt_id
            t.check_map(hwpt, iova, t.buffer + start, stop - start)
            if copy:
                t.destroy(extra.stdev_id)
            t.unmap(ioas, iova, stop - start)
    t.check_refs(t.buffer, end, 0)
    t.close()


# -- FIXTURE(iommufd_dirty_tracking), 7.0 ---------------------------------------------------------
@dataclass
class Dirty7:
    t: Selftest
    ioas: int
    idev: int
    buffer: int
    size: int
    huge: bool


@pytest.fixture(params=[("8k", 8 << 10, False), ("16k", 16 << 10, False),
                        ("320k", 320 << 10, False), ("4M", 4 << 20, False),
                        ("4M_huge", 4 << 20, True)], ids=lambda p: p[0])
def d7(request: pytest.FixtureRequest) -> Iterator[Dirty7]:
    """7.0's fixture: huge pages off on the IOAS unless ``hugepages`` ("it is important
    that the page size fed into the iommu page tables matches the size the dirty logic
    expects"), a plain mock domain on it."""
    _, size, huge = request.param
    t = Selftest(kernel="7.0")
    ioas = t.ioas_alloc()
    buffer = t.p.mmap(max(size, HUGEPAGE_SIZE) if huge else size,
                      "hugetlb-2M" if huge else "anon", populate=True)
    if not huge:
        t.option(u.IOMMU_OPTION_HUGE_PAGES, u.IOMMU_OPTION_OP_SET, ioas, 0)
    md = t.mock_domain(ioas)
    yield Dirty7(t, ioas, md.idev_id, buffer, size, huge)
    t.close()


def _mock_dirty_bitmaps(d: Dirty7, hwpt: int, pte: int, offset: int, flags: int) -> None:
    """``_test_mock_dirty_bitmaps`` with ``page_size = MOCK_PAGE_SIZE``: mark the first bit
    of every other PTE dirty, then expect the first ``pte / page_size`` bits of each
    such PTE set and the rest clear; a second read is all clear unless NO_CLEAR."""
    t = d.t
    nbits = d.size // MOCK_PAGE_SIZE
    npte = pte // MOCK_PAGE_SIZE
    pteset = 2 * npte
    nbytes = -(-nbits // 64) * 8
    src = t.p.mmap(nbytes + PAGE_SIZE)
    marks = np.zeros(nbits, dtype=np.uint8)
    marks[::pteset] = 1
    t.p.write(src, np.packbits(marks, bitorder="little").tobytes())
    assert t.mock_dirty(hwpt, MOCK_APERTURE_START, d.size, MOCK_PAGE_SIZE, src) == \
        max(nbits // pteset, 1)
    want = np.zeros(nbits, dtype=np.uint8)
    for i in range(0, nbits, pteset):
        want[i:i + npte] = 1
    bitmap = t.p.mmap(nbytes + 2 * PAGE_SIZE) + offset
    for again in (False, True):
        t.p.write(bitmap, bytes(nbytes))
        t.get_dirty_bitmap(hwpt, MOCK_APERTURE_START, d.size, MOCK_PAGE_SIZE, bitmap, flags)
        got = np.unpackbits(np.frombuffer(t.p.read(bitmap, nbytes), dtype=np.uint8),
                            bitorder="little")[:nbits]
        expected = want if (flags & NO_CLEAR or not again) else np.zeros_like(want)
        assert np.array_equal(got, expected), (again, np.flatnonzero(got)[:8].tolist())


@pytest.mark.parametrize("flags", [0, NO_CLEAR], ids=["clear", "no_clear"])
@pytest.mark.parametrize("offset", [0, MOCK_PAGE_SIZE, 0xFF1])
def test_get_dirty_bitmap_7_0(d7: Dirty7, flags: int, offset: int) -> None:
    """iommufd_dirty_tracking.get_dirty_bitmap(_no_clear) in 7.0: the IOAS is mapped first,
    then a DIRTY_TRACKING HWPT of type HUGE (hugepage variants: 1M leaves, 512 bits a
    PTE) or DEFAULT (a 4K leaf of two 2K items per page) is filled from it. The DEFAULT
    case expects one bit per dirty 4K leaf, which is what ``record_dirty`` reports for
    a two-item contiguous leaf (``log2_set_mod_max`` gives the last item's index)."""
    t = d7.t
    t.map_fixed(d7.ioas, d7.buffer, d7.size, MOCK_APERTURE_START)
    kind = MOCK_IOMMUPT_HUGE if d7.huge else MOCK_IOMMUPT_DEFAULT
    hwpt = t.hwpt_alloc_iommupt(d7.idev, d7.ioas, DIRTY, kind)
    t.set_dirty_tracking(hwpt, True)
    _mock_dirty_bitmaps(d7, hwpt, MOCK_HUGE_PAGE_SIZE if d7.huge else MOCK_PAGE_SIZE,
                        offset, flags)
    t.set_dirty_tracking(hwpt, False)
    t.destroy(hwpt)
    t.unmap(d7.ioas, MOCK_APERTURE_START, d7.size)


def test_7_0_dirty_command_marks_one_item_and_reads_ignore_the_tracking_flag() -> None:
    """7.0 ``iommufd_test_dirty`` counts every set bit and ``set_dirty`` sets D in the one
    2K item that holds the IOVA (not the rest of its leaf); generic_pt's
    ``read_and_clear_dirty`` does not look at MOCK_DIRTY_TRACK (6.12's EINVAL with a
    bitmap while not tracking), so a read after tracking stopped still reports."""
    t = Selftest(kernel="7.0")
    ioas = t.ioas_alloc()
    md = t.mock_domain(ioas)
    hwpt = t.hwpt_alloc(md.idev_id, ioas, DIRTY)
    buf = t.p.mmap(HUGEPAGE_SIZE, "hugetlb-2M", populate=True)
    iova = t.map_fixed(ioas, buf, HUGEPAGE_SIZE, MOCK_APERTURE_START)
    domain = _domain(t, hwpt)
    assert domain.leaf_histogram() == {HUGEPAGE_SIZE: 1}  # two 1M items, NEXT_LEVEL 7
    t.set_dirty_tracking(hwpt, True)
    bits = t.p.mmap(PAGE_SIZE)
    t.p.write(bits, b"\x00\x00\x01")  # bit 16: the 2K page at +32K
    assert t.mock_dirty(hwpt, iova, 2 * MOCK_HUGE_PAGE_SIZE, MOCK_PAGE_SIZE, bits) == 1
    items = domain.ops.pgtbl.iter_entries()
    assert [bool(pte & 1 << 6) for _, size, leaf, pte in items if leaf] == [True, False]
    t.set_dirty_tracking(hwpt, False)
    out = t.p.mmap(PAGE_SIZE)
    t.get_dirty_bitmap(hwpt, iova, HUGEPAGE_SIZE, PAGE_SIZE, out)
    got = np.flatnonzero(np.unpackbits(np.frombuffer(t.p.read(out, 64), dtype=np.uint8),
                                       bitorder="little")).tolist()
    assert got == list(range(256))  # one item of the two: 1M at 4K
    t.unmap(ioas, iova, HUGEPAGE_SIZE)
    t.destroy(hwpt)
    t.close()


def test_6_12_dirty_read_while_not_tracking_is_einval() -> None:
    """6.12 ``mock_domain_read_and_clear_dirty``: ``if (!(mock->flags & MOCK_DIRTY_TRACK)
    && dirty->bitmap) return -EINVAL``."""
    t = Selftest()
    ioas = t.ioas_alloc()
    md = t.mock_domain(ioas)
    hwpt = t.hwpt_alloc(md.idev_id, ioas, DIRTY)
    iova = t.map(ioas, t.buffer, PAGE_SIZE)
    out = t.p.mmap(PAGE_SIZE)
    expect_errno(errno.EINVAL, t.get_dirty_bitmap, hwpt, iova, PAGE_SIZE, PAGE_SIZE, out)
    t.unmap(ioas, iova, PAGE_SIZE)
    t.destroy(hwpt)
    t.close()
