"""AMDv1 entries bit for bit (drivers/iommu/generic_pt/fmt/amdv1.h, Linux 7.0; the AMD
IOMMU spec's table 14 for the page-size encoding), in the iommufd selftest's 2K-granule
variant and the real 4K one, and generic_pt's map/unmap/dirty rules over them."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from iommulab.errors import KernelError
from iommulab.iommu.dirty import IommuDirtyBitmap, IovaBitmap
from iommulab.iommu.gather import IommuIotlbGather
from iommulab.mem import PhysMem
from iommulab.pgtable import IoPgtable, IoPgtableCfg, IoPgtableFmt
from iommulab.pgtable.amdv1 import AMDV1, AMDV1_LEAF, AMDV1_MOCK, Amdv1Format
from iommulab.pgtable.iommu_pt import PtIommu

IR_IW = 3 << 61
RW = 3  # IOMMU_READ | IOMMU_WRITE


def _mock(levels: int = 2) -> tuple[PtIommu[IommuIotlbGather], Amdv1Format]:
    fmt = Amdv1Format(AMDV1_MOCK, levels, 38)
    pgtbl = IoPgtable(IoPgtableFmt.AMD_IOMMU_V1, IoPgtableCfg(fmt.pgsize_bitmap(51), 38, 51),
                      fmt, PhysMem("1G"), None)
    pt = PtIommu(pgtbl, max_vasz_lg2=38, max_oasz_lg2=51, new_gather=IommuIotlbGather,
                 iotlb_sync=lambda g: None)
    return pt, fmt


def _entries(pt: PtIommu[IommuIotlbGather]) -> list[tuple[int, int, bool, int]]:
    return pt.pgtbl.iter_entries()


def test_mock_variant_page_sizes_are_every_power_of_two_from_2k() -> None:
    """``amdv1pt_possible_sizes`` for the mock (granule 11) at levels 0-2: 2K-512K, 1M-256M,
    512M-128G; ``get_info`` ORs them."""
    _, fmt = _mock()
    assert [fmt.possible_sizes(d) for d in (2, 1, 0)] == [  # depth 0 is the top, level 2
        0x000FF800, 0x1FF00000, 0x3FE0000000]
    assert fmt.pgsize_bitmap(51) == 0x3F_FFFF_F800


def test_real_variant_never_offers_512g_nor_leaves_at_level_5() -> None:
    """4K granule: level 3 items are 512G, ``& ~SZ_512G`` drops that size (a hardware bug);
    sizes stop at 2^51; the top level (5) cannot hold leaves."""
    fmt = Amdv1Format(AMDV1, 5, 64)
    assert fmt.possible_sizes(5 - 3) == ((1 << 48) - 1) & ~((1 << 40) - 1)
    assert fmt.possible_sizes(5 - 4) == ((1 << 52) - 1) & ~((1 << 48) - 1)
    assert fmt.possible_sizes(0) == 0


@pytest.mark.parametrize(("depth", "pa", "size", "entry"), [
    (2, 0x4010_0800, 0x800, 0x6000_0000_8020_1001),        # one 2K item
    (2, 0x4010_1000, 0x1000, 0x6000_0000_8020_2E01),       # 4K: NEXT_LEVEL 7, no ones
    (2, 0x4010_2000, 0x2000, 0x6000_0000_8020_5E01),       # 8K: one 1 (OA bit 12)
    (1, 0x4010_0000, 1 << 20, 0x6000_0000_8020_0001),      # one 1M item at level 1
    (1, 0x4020_0000, 2 << 20, 0x6000_0000_805F_FE01),      # 2M: nine ones
])
def test_mock_leaf_encoding(depth: int, pa: int, size: int, entry: int) -> None:
    """``amdv1pt_install_leaf_entry`` with a 2K granule: OA field ``pa >> 11``; a size above
    the item size sets NEXT_LEVEL 7 and ``log2(size) - 12`` ones; decoding gives the
    start OA and the items covered back (``amdv1pt_entry_oa``,
    ``amdv1pt_entry_num_contig_lg2``)."""
    _, fmt = _mock()
    got = fmt.sized_leaf(IR_IW, depth, pa, size)
    assert got == entry, (hex(got), AMDV1_LEAF.describe(got))
    assert fmt.leaf_oa(got) == pa
    item = fmt.levels[depth].block_size
    assert 1 << fmt.contig_lg2(got, depth) == size // item
    arr = np.array([got], dtype=np.uint64)
    assert int(fmt.leaf_oas(arr)[0]) == pa
    assert int(fmt.contig_lg2s(arr, depth)[0]) == fmt.contig_lg2(got, depth)


@pytest.mark.parametrize(("depth", "pa", "size", "entry"), [
    (3, 0x1234_5000, 0x1000, 0x6000_0000_1234_5001),   # 4K page: the OA in place
    (3, 0x1234_6000, 0x2000, 0x6000_0000_1234_6E01),   # 8K: NL 7, bit 12 = 0 (table 14)
    (3, 0x1234_4000, 0x4000, 0x6000_0000_1234_5E01),   # 16K: bit 12 = 1, bit 13 = 0
    (2, 0x4020_0000, 2 << 20, 0x6000_0000_4020_0001),  # one 2M item at level 1
    (2, 0x4040_0000, 4 << 20, 0x6000_0000_405F_FE01),  # 4M: bits 20:12 = 1, bit 21 = 0
])
def test_real_leaf_encoding_matches_the_spec_table(depth: int, pa: int, size: int,
                                                   entry: int) -> None:
    """The 4K-granule format is the AMD spec's: a page's OA in bits 51:12, and a page size
    as NEXT_LEVEL 7 with ones from bit 12 to ``log2(size) - 2``."""
    fmt = Amdv1Format(AMDV1, 3, 48)
    got = fmt.sized_leaf(IR_IW, depth, pa, size)
    assert got == entry, hex(got)
    assert fmt.leaf_oa(got) == pa
    assert fmt.contig_lg2(got, depth) == (size // fmt.levels[depth].block_size).bit_length() - 1


def test_table_entries_carry_their_level_and_ir_iw() -> None:
    """``amdv1pt_install_table``: PR, NEXT_LEVEL = the level of the entry (2 in the top
    table of the mock, 1 below it), the table's OA field, IR and IW."""
    pt, fmt = _mock()
    pt.map_range(1 << 24, 0x4010_0000, 0x800, RW, fmt.pgsize_bitmap(51))
    tables = [(size, pte) for _, size, leaf, pte in _entries(pt) if not leaf]
    assert [(size, (pte >> 9) & 7, pte & (IR_IW | 1) == IR_IW | 1) for size, pte in tables] \
        == [(1 << 29, 2, True), (1 << 20, 1, True)]
    assert all(fmt.table_pa(pte) % 4096 == 0 for _, pte in tables)
    pt.pgtbl._check()


def test_map_writes_a_contiguous_leaf_into_every_item_it_covers() -> None:
    """``__map_range_leaf``: 16K of VA and OA both 16K aligned is one leaf of eight 2K items,
    all holding the same entry; ``iova_to_phys`` adds the offset into the whole leaf."""
    pt, fmt = _mock()
    pt.map_range(1 << 24, 0x4010_4000, 0x4000, RW, fmt.pgsize_bitmap(51))
    leaves = [pte for _, _, leaf, pte in _entries(pt) if leaf]
    assert leaves == [fmt.sized_leaf(IR_IW, 2, 0x4010_4000, 0x4000)] * 8
    assert pt.iova_to_phys((1 << 24) + 0x2A10) == 0x4010_6A10
    assert pt.pgtbl.leaf_histogram() == {0x4000: 1}
    assert pt.pgtbl.leaf_runs(1 << 24, 0x4000) == [(1 << 24, 0x4010_4000, 0x4000)]


def test_map_over_any_item_of_a_leaf_is_eaddrinuse_after_the_leaves_before_it() -> None:
    """``clear_contig`` runs over all items a new leaf covers: one present item is
    EADDRINUSE; leaves installed before it stay and count in ``mapped``."""
    pt, fmt = _mock()
    sizes = fmt.pgsize_bitmap(51)
    pt.map_range((1 << 24) + 0x1800, 0x4010_1800, 0x800, RW, sizes)
    with pytest.raises(KernelError) as err:
        pt.map_range(1 << 24, 0x4010_0000, 0x1000 + 0x1000, RW, 0x1000)  # 4K leaves only
    assert err.value.errno == errno.EADDRINUSE and err.value.mapped == 0x1000
    assert pt.iova_to_phys(1 << 24) == 0x4010_0000  # the first 4K leaf is in
    assert pt.iova_to_phys((1 << 24) + 0x1800) == 0x4010_1800  # the old item is untouched


def test_unmap_removes_a_whole_contiguous_leaf_and_refuses_a_start_inside_it() -> None:
    """``__unmap_range``: a range starting at a leaf's first byte clears all its items and
    counts them even if it ends inside (or reaches into a leaf at its end); one that
    starts inside a leaf (``log2_mod(va, pt_entry_oa_lg2sz)``) unmaps nothing."""
    pt, fmt = _mock()
    sizes = fmt.pgsize_bitmap(51)
    pt.map_range(1 << 24, 0x4010_0000, 0x4000, RW, sizes)  # one 16K leaf
    pt.map_range((1 << 24) + 0x4000, 0x4020_0000, 0x2000, RW, sizes)  # one 8K leaf
    assert pt.unmap_range((1 << 24) + 0x800, 0x800, IommuIotlbGather()) == 0
    gather = IommuIotlbGather()
    assert pt.unmap_range(1 << 24, 0x4800, gather) == 0x6000  # both leaves, whole
    assert (gather.start, gather.end) == (1 << 24, (1 << 24) + 0x5FFF)
    assert not [e for e in _entries(pt) if e[2]]
    pt.pgtbl._check()


def test_read_and_clear_dirty_records_one_item_short_of_a_covered_contiguous_leaf() -> None:
    """``record_dirty``: a contiguous leaf's length is ``end_index - index`` with
    ``end_index = log2_set_mod_max(index, num_contig_lg2)``, the index of its last item,
    so a leaf the range covers records one item less than it maps (the kernel's, kept);
    a range ending inside it is cut at ``pts->end_index``. Clearing clears every item."""
    pt, fmt = _mock()
    sizes = fmt.pgsize_bitmap(51)
    base = 1 << 24
    pt.map_range(base, 0x4010_0000, 0x4000, RW, sizes)  # one 16K leaf (8 items)
    pt.set_dirty(np.array([base + 0x3800], dtype=np.int64))  # the last item only
    bitmap = IovaBitmap(base, 0x4000, 0x800)
    pt.read_and_clear_dirty(base, 0x4000, 0, IommuDirtyBitmap(bitmap))
    assert bitmap.set_bits().tolist() == list(range(7))
    assert not any(pte & 1 << 6 for _, _, leaf, pte in _entries(pt) if leaf)
    pt.set_dirty(np.array([base], dtype=np.int64))
    part = IovaBitmap(base, 0x4000, 0x800)
    pt.read_and_clear_dirty(base, 0x1000, 1, IommuDirtyBitmap(part))  # NO_CLEAR, 2 items
    assert part.set_bits().tolist() == [0, 1]
    assert any(pte & 1 << 6 for _, _, leaf, pte in _entries(pt) if leaf)
