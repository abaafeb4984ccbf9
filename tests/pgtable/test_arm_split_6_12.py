"""io-pgtable-arm as Linux 6.12 has it, where it differs from 7.0.

Mainly ``arm_lpae_split_blk_unmap``: a partial unmap of a block splits it. Each test
states the 6.12 rule and checks the entries the split installs, the TLB callbacks it
makes and the bytes it returns; 7.0 (commit 33729a5fc0ca, 6.13) refuses the same
unmap with a one-time WARN and 0.
"""

from __future__ import annotations

import pytest

from iommulab import Prot
from iommulab.errors import InvalidArgument
from iommulab.iommu import IommuDirtyBitmap, IommuIotlbGather
from iommulab.kernel import LINUX_6_12, LINUX_7_0, KernelVersion
from iommulab.mem import PhysMem
from iommulab.pgtable import IoPgtable, IoPgtableCfg, IoPgtableFmt, Quirk, alloc_io_pgtable_ops
from iommulab.sizes import SZ_1G, SZ_2M, SZ_4K, SZ_64K, SZ_512M
from iommulab.testing import RecordingTlb

S1, S2 = IoPgtableFmt.ARM_64_LPAE_S1, IoPgtableFmt.ARM_64_LPAE_S2
G4K = SZ_4K | SZ_2M | SZ_1G
RW_CACHE = Prot.READ | Prot.WRITE | Prot.CACHE
IOVA, PA = 0x4000_0000, 0x8000_0000
TABLE_TYPE, PAGE_TYPE = 3, 3
PTE_NS, PTE_DBM, PTE_AP_RDONLY, PTE_CONT = 1 << 5, 1 << 51, 1 << 7, 1 << 52
PTE_SW_SYNC, PTE_NSTABLE = 1 << 55, 1 << 63
NO_QUIRKS = Quirk(0)


def _ops(kernel: KernelVersion = LINUX_6_12, *, fmt: IoPgtableFmt = S1, bitmap: int = G4K,
         quirks: Quirk = NO_QUIRKS, coherent: bool = True,
         mem: PhysMem | None = None) -> tuple[IoPgtable, RecordingTlb]:
    tlb = RecordingTlb(cookie := object())
    cfg = IoPgtableCfg(bitmap, 48, 48, quirks=quirks, coherent_walk=coherent, tlb=tlb,
                       kernel=kernel)
    ops = alloc_io_pgtable_ops(fmt, cfg, cookie, mem=mem)
    tlb.bitmap = ops.cfg.pgsize_bitmap
    return ops, tlb


def _table_under(ops: IoPgtable, iova: int, depth: int) -> list[int]:
    """The entries of the table the walk of ``iova`` reads at ``depth``."""
    pte = ops.pgtable_walk(iova)[depth - 1]
    entries: list[int] = ops._deref(pte)[:ops.format.ptes_per_page].tolist()
    return entries


def test_partial_unmap_of_a_2m_block_leaves_a_table_of_its_other_4k_pages() -> None:
    """split_blk_unmap (6.12): the block becomes a level-3 table whose pages carry the
    block's iopte_prot() bits (11:2, DBM, XN) at the block's addresses, except the
    ``pgcount`` pages unmapped, which are each added to the gather; no walk flush."""
    ops, tlb = _ops()
    ops.map_pages(IOVA, PA, SZ_2M, 1, RW_CACHE)
    block = ops.pgtable_walk(IOVA)[-1]
    assert block == 0x8000_0F45  # nG, AF, SH inner, AP[1], AttrIndx 1, type block
    before = ops.stats.tables_allocated
    assert ops.unmap_pages(IOVA + 3 * SZ_4K, SZ_4K, 2, IommuIotlbGather()) == 2 * SZ_4K
    table_entry = ops.pgtable_walk(IOVA)[-2]
    assert table_entry & 3 == TABLE_TYPE and not table_entry & PTE_SW_SYNC
    pages = _table_under(ops, IOVA, 3)
    expected = [0x8000_0F47 + i * SZ_4K for i in range(512)]
    expected[3] = expected[4] = 0
    assert pages == expected
    assert ops.stats.tables_allocated == before + 1
    assert tlb.calls[-2:] == [("add_page", IOVA + 3 * SZ_4K, SZ_4K),
                              ("add_page", IOVA + 4 * SZ_4K, SZ_4K)]
    assert not [c for c in tlb.calls if c[0] == "flush_walk"]
    assert ops.iova_to_phys(IOVA + 5 * SZ_4K + 7) == PA + 5 * SZ_4K + 7
    ops._check()


def test_partial_unmap_of_a_1g_block_splits_twice_down_to_the_page_asked() -> None:
    """Unmapping 4K inside a 1G block: the first split (to 2M blocks) unmaps nothing
    (size != 2M) and __arm_lpae_unmap goes on in the new table, whose 2M block is split
    again; exactly 4K is unmapped and one page gathered."""
    ops, tlb = _ops()
    ops.map_pages(SZ_1G, 0x1_0000_0000, SZ_1G, 1, RW_CACHE)
    target = SZ_1G + SZ_2M + SZ_4K
    assert ops.unmap_pages(target, SZ_4K, 1, IommuIotlbGather()) == SZ_4K
    assert ops.leaf_histogram() == {SZ_4K: 511, SZ_2M: 511}
    blocks = _table_under(ops, SZ_1G, 2)
    assert blocks[0] == 0x1_0000_0F45 and blocks[511] == 0x1_0000_0F45 + 511 * SZ_2M
    assert blocks[1] & 3 == TABLE_TYPE
    assert ops.iova_to_phys(target) == 0
    assert ops.iova_to_phys(target + SZ_4K) == 0x1_0000_0000 + SZ_2M + 2 * SZ_4K
    assert [c for c in tlb.calls if c[0] == "add_page"] == [("add_page", target, SZ_4K)]
    ops._check()


def test_a_split_unmaps_no_further_than_the_end_of_the_new_table() -> None:
    """num_entries = min(pgcount, arm_lpae_max_entries(unmap_idx_start)): pages past the
    block are not unmapped by this call."""
    ops, _ = _ops()
    ops.map_pages(IOVA, PA, SZ_2M, 2, RW_CACHE)
    assert ops.unmap_pages(IOVA + 510 * SZ_4K, SZ_4K, 5, IommuIotlbGather()) == 2 * SZ_4K
    assert ops.iova_to_phys(IOVA + SZ_2M) == PA + SZ_2M  # the next block is untouched
    assert ops.leaf_histogram() == {SZ_4K: 510, SZ_2M: 1}


def test_split_pages_keep_the_dirty_state_and_drop_software_and_contiguous_bits() -> None:
    """iopte_prot() keeps AP[2] and DBM (a written-clean block gives written-clean pages)
    and NS; it drops the contiguous bit and bits 58:55. The table entry gets NSTABLE."""
    ops, _ = _ops(quirks=Quirk.ARM_HD | Quirk.ARM_NS)
    ops.map_pages(IOVA, PA, SZ_2M, 1, Prot.READ | Prot.WRITE)
    leaf = ops._deref(ops.pgtable_walk(IOVA)[-2])
    idx = (IOVA >> 21) & 511
    leaf[idx] |= PTE_AP_RDONLY | PTE_CONT | (0xF << 55)  # clean, contiguous, software bits
    assert ops.unmap_pages(IOVA, SZ_4K, 1, IommuIotlbGather()) == SZ_4K
    assert ops.pgtable_walk(IOVA)[-2] & PTE_NSTABLE
    page = _table_under(ops, IOVA, 3)[1]
    assert page & PTE_DBM and page & PTE_AP_RDONLY and page & PTE_NS
    assert not page & (PTE_CONT | 0xF << 55)
    assert page & 0x0000_FFFF_FFFF_F000 == PA + SZ_4K and page & 3 == PAGE_TYPE


def test_a_64k_granule_block_splits_into_8192_pages() -> None:
    ops, _ = _ops(bitmap=SZ_64K | SZ_512M)
    ops.map_pages(0, PA, SZ_512M, 1, RW_CACHE)
    assert ops.unmap_pages(SZ_64K, SZ_64K, 1, IommuIotlbGather()) == SZ_64K
    assert ops.leaf_histogram() == {SZ_64K: 8191}
    assert ops.iova_to_phys(2 * SZ_64K) == PA + 2 * SZ_64K


def test_a_stage_2_block_splits_the_same_way() -> None:
    ops, _ = _ops(fmt=S2)
    ops.map_pages(IOVA, PA, SZ_2M, 1, Prot.READ | Prot.WRITE | Prot.CACHE)
    block = ops.pgtable_walk(IOVA)[-1]
    assert ops.unmap_pages(IOVA, SZ_4K, 1, IommuIotlbGather()) == SZ_4K
    assert _table_under(ops, IOVA, 3)[1] == (block & ~3 | 3) + SZ_4K


def test_a_non_coherent_split_syncs_the_table_each_entry_and_the_table_entry() -> None:
    """__arm_lpae_alloc_pages maps the new table (one sync of the granule), each
    __arm_lpae_init_pte syncs its entry, arm_lpae_install_table syncs the table entry
    and marks it ARM_LPAE_PTE_SW_SYNC."""
    ops, _ = _ops(coherent=False)
    ops.map_pages(IOVA, PA, SZ_2M, 1, RW_CACHE)
    syncs, nbytes = ops.stats.cache_syncs, ops.stats.cache_sync_bytes
    assert ops.unmap_pages(IOVA, SZ_4K, 1, IommuIotlbGather()) == SZ_4K
    assert ops.stats.cache_syncs - syncs == 1 + 511 + 1
    assert ops.stats.cache_sync_bytes - nbytes == SZ_4K + 8 * 511 + 8
    assert ops.pgtable_walk(IOVA)[-2] & PTE_SW_SYNC


def test_a_split_that_cannot_allocate_its_table_unmaps_nothing() -> None:
    """__arm_lpae_alloc_pages(GFP_ATOMIC) failing: 0 bytes unmapped, the block intact."""
    mem = PhysMem("256M")
    ops, tlb = _ops(mem=mem)
    ops.map_pages(IOVA, PA, SZ_2M, 1, RW_CACHE)
    pages, calls = mem.iommu_pages, len(tlb.calls)
    mem.fail_nth.arm(1)
    assert ops.unmap_pages(IOVA, SZ_4K, 1, IommuIotlbGather()) == 0
    assert mem.iommu_pages == pages and len(tlb.calls) == calls
    assert ops.iova_to_phys(IOVA) == PA
    ops._check()


def test_a_split_gathers_its_pages_even_in_flush_queue_mode() -> None:
    """The split path calls io_pgtable_tlb_add_page without iommu_iotlb_gather_queued()."""
    ops, tlb = _ops()
    ops.map_pages(IOVA, PA, SZ_2M, 1, RW_CACHE)
    gather = IommuIotlbGather()
    gather.queued = True
    assert ops.unmap_pages(IOVA, SZ_4K, 1, gather) == SZ_4K
    assert tlb.calls[-1] == ("add_page", IOVA, SZ_4K)


@pytest.mark.parametrize("kernel", [LINUX_6_12, LINUX_7_0])
def test_partial_unmap_by_version(kernel: KernelVersion) -> None:
    ops, _ = _ops(kernel)
    ops.map_pages(IOVA, PA, SZ_2M, 1, RW_CACHE)
    done = ops.unmap_pages(IOVA, SZ_4K, 1, IommuIotlbGather())
    if kernel == LINUX_6_12:
        assert done == SZ_4K and not ops.stats.warnings
    else:
        assert done == 0 and ops.iova_to_phys(IOVA) == PA
        assert dict(ops.stats.warnings) == {"Unmap of a partial large IOPTE is not allowed": 1}


@pytest.mark.parametrize("kernel", [LINUX_6_12, LINUX_7_0])
def test_a_dirty_walk_that_meets_a_hole_warns_on_6_12_only(kernel: KernelVersion) -> None:
    """io_pgtable_visit_dirty (6.12): ``if (WARN_ON(!iopte_table(pte, lvl))) return
    -EINVAL``; 7.0's io_pgtable_visit returns -EINVAL without the WARN."""
    ops, _ = _ops(kernel, quirks=Quirk.ARM_HD)
    ops.map_pages(0, PA, SZ_4K, 1, Prot.READ | Prot.WRITE)
    with pytest.raises(InvalidArgument, match="hole at iova 0x1000"):
        ops.read_and_clear_dirty(0, 2 * SZ_4K, 0, IommuDirtyBitmap())
    expected = {"read_and_clear_dirty: hole": 1} if kernel == LINUX_6_12 else {}
    assert dict(ops.stats.warnings) == expected
