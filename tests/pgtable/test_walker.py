"""The shared walker's semantics on ARM LPAE, case by case against io-pgtable-arm.c."""

from __future__ import annotations

import errno

import pytest

from iommulab import Prot
from iommulab.errors import AlreadyExists, InvalidArgument, OutOfMemory, OutOfRange
from iommulab.iommu import IommuDirtyBitmap, IommuIotlbGather, IovaBitmap
from iommulab.kernel import LINUX_7_0
from iommulab.mem import PhysMem
from iommulab.pgtable import (
    IOMMU_DIRTY_NO_CLEAR,
    IoPgtable,
    IoPgtableCfg,
    IoPgtableFmt,
    Quirk,
    alloc_io_pgtable_ops,
)
from iommulab.sizes import SZ_1G, SZ_2M, SZ_4K
from iommulab.testing import RecordingTlb

RW = Prot.READ | Prot.WRITE
G4K = SZ_4K | SZ_2M | SZ_1G
S1 = IoPgtableFmt.ARM_64_LPAE_S1


def _ops(quirks: Quirk = Quirk.NO_WARN, ias: int = 48, fmt: IoPgtableFmt = S1,
         mem: PhysMem | None = None) -> tuple[IoPgtable, RecordingTlb]:
    tlb = RecordingTlb(cookie := object())
    cfg = IoPgtableCfg(G4K, ias, 48, quirks=quirks, tlb=tlb, kernel=LINUX_7_0)  # NO_WARN
    ops = alloc_io_pgtable_ops(fmt, cfg, cookie, mem=mem)
    tlb.bitmap = ops.cfg.pgsize_bitmap
    return ops, tlb


def _pte_pa(ops: IoPgtable, iova: int) -> int:
    """Physical address of the last descriptor the walk of ``iova`` reads."""
    walk = ops.pgtable_walk(iova)
    table_pa = ops.pgd_pa if len(walk) == 1 else walk[-2] & 0xFFFF_FFFF_F000
    level = ops.format.levels[len(walk) - 1]
    return table_pa + ((iova >> level.shift) & level.index_mask) * 8


def _hw_write(ops: IoPgtable, iova: int) -> None:
    """What SMMU HTTU does on a DMA write to a writable-clean DBM entry: clear AP[2]."""
    pa = _pte_pa(ops, iova)
    pte = ops.mem.read_u64(pa)
    assert pte >> 51 & 1, "not a DBM entry"
    ops.mem.write(pa, (pte & ~(1 << 7)).to_bytes(8, "little"))


def test_a_run_stops_at_the_table_page_end() -> None:
    ops, _ = _ops()  # arm_lpae_map_pages, bulk passes on or off
    assert ops.map_pages(0x1000, 0x8000_1000, SZ_4K, 1000, RW) == 511 * SZ_4K
    assert ops.map_pages(SZ_2M, 0x8020_0000, SZ_4K, 1000, RW) == 512 * SZ_4K
    assert ops.iova_to_phys(SZ_2M + 0x1FFFFF) == 0x8020_0000 + 0x1FFFFF
    ops._check()
    bulk, _ = _ops()  # the core's loop in one call
    assert bulk.map_pages_run(0x1000, 0x8000_1000, SZ_4K, 1000, RW) == 1000 * SZ_4K
    assert bulk.stats.map_pages == 2  # the two calls the core would have made
    bulk._check()


def test_top_level_run_is_bounded_by_the_page_not_the_pgd() -> None:
    # ias 32: a 4-entry level-1 PGD in a 4K page. arm_lpae_max_entries counts
    # to the end of the page, so the kernel writes past the PGD's entries.
    ops, _ = _ops(ias=32)
    assert ops.format.levels[0].entries == 4
    assert ops.map_pages(0, 0, SZ_1G, 8, RW) == 8 * SZ_1G
    # The top-level index is masked to the PGD, so iova 5G aliases entry 1.
    assert ops.iova_to_phys(5 * SZ_1G + 42) == SZ_1G + 42
    assert ops.leaf_histogram() == {SZ_1G: 4}  # walks see the PGD's 4 entries only
    ops.free()
    assert ops.mem.iommu_pages == 0


def test_map_over_a_leaf_is_eexist_and_warns_without_no_warn() -> None:
    ops, _ = _ops(quirks=Quirk(0))
    ops.map_pages(0, 0x8000_0000, SZ_2M, 1, RW)
    with pytest.raises(AlreadyExists) as exc:  # same level
        ops.map_pages(0, 0x9000_0000, SZ_2M, 1, RW)
    assert exc.value.errno == errno.EEXIST and exc.value.mapped == 0
    with pytest.raises(AlreadyExists, match="inside a 0x200000 block"):  # inside the block
        ops.map_pages(0x1000, 0x9000_0000, SZ_4K, 1, RW)
    assert sum(ops.stats.warnings.values()) == 2
    ops._check()


def test_block_over_populated_table_frees_it_silently() -> None:
    ops, tlb = _ops()
    ops.map_pages(SZ_2M + SZ_4K, 0x8000_0000, SZ_4K, 3, RW)
    before = ops.stats.tables_allocated
    assert ops.map_pages(SZ_2M, 0xA000_0000, SZ_2M, 1, RW) == SZ_2M
    assert ops.iova_to_phys(SZ_2M + SZ_4K) == 0xA000_0000 + SZ_4K  # 4K maps vanished
    assert ("flush_walk", SZ_2M, SZ_2M, SZ_4K) in tlb.calls
    assert ops.stats.tables_freed == 1 and ops.stats.tables_allocated == before
    ops._check()


def test_eexist_in_a_run_after_a_table_frees_the_table_first() -> None:
    ops, tlb = _ops()
    ops.map_pages(0, 0x8000_0000, SZ_4K, 1, RW)  # entry 0 of level 2: a table
    ops.map_pages(SZ_2M, 0x9000_0000, SZ_2M, 1, RW)  # entry 1: a block
    with pytest.raises(AlreadyExists) as exc:
        ops.map_pages(0, 0xA000_0000, SZ_2M, 2, RW)
    assert exc.value.mapped == 0
    assert ops.iova_to_phys(0) == 0  # the table was freed before the EEXIST
    assert ops.iova_to_phys(SZ_2M) == 0x9000_0000
    assert [c[0] for c in tlb.calls] == ["flush_walk"]
    ops._check()


def test_unmap_stops_at_the_first_empty_entry() -> None:
    ops, _ = _ops(quirks=Quirk(0))
    ops.map_pages(0, 0x8000_0000, SZ_4K, 2, RW)
    ops.map_pages(3 * SZ_4K, 0x8000_3000, SZ_4K, 1, RW)
    assert ops.unmap_pages(0, SZ_4K, 4) == 2 * SZ_4K
    assert ops.iova_to_phys(3 * SZ_4K) == 0x8000_3000
    assert ops.unmap_pages(0, SZ_4K, 1) == 0  # empty first entry
    assert sum(ops.stats.warnings.values()) == 2


def test_unmap_at_block_size_frees_a_table_under_it() -> None:
    ops, tlb = _ops()
    ops.map_pages(SZ_2M + SZ_4K, 0x8000_0000, SZ_4K, 1, RW)
    gather = IommuIotlbGather()
    assert ops.unmap_pages(SZ_2M, SZ_2M, 1, gather) == SZ_2M
    assert ("flush_walk", SZ_2M, SZ_2M, SZ_4K) in tlb.calls
    assert ("add_page", SZ_2M, SZ_2M) in tlb.calls
    assert ops.stats.tables_freed == 1
    ops._check()


def test_partial_unmap_of_a_block_is_refused_once_warned() -> None:
    ops, tlb = _ops()
    ops.map_pages(0, 0x8000_0000, SZ_2M, 1, RW)
    assert ops.unmap_pages(SZ_4K, SZ_4K, 1, IommuIotlbGather()) == 0
    assert ops.unmap_pages(0, SZ_4K, 1) == 0
    assert ops.iova_to_phys(SZ_4K) == 0x8000_1000
    assert ops.stats.warnings["Unmap of a partial large IOPTE is not allowed"] == 1
    assert tlb.calls == []


def test_unmap_adds_each_leaf_to_the_gather_unless_queued() -> None:
    ops, tlb = _ops()
    ops.map_pages(0, 0x8000_0000, SZ_4K, 16, RW)
    assert ops.unmap_pages(0, SZ_4K, 8, IommuIotlbGather()) == 8 * SZ_4K
    assert tlb.calls == [("add_page", i * SZ_4K, SZ_4K) for i in range(8)]
    tlb.calls.clear()
    assert ops.unmap_pages(8 * SZ_4K, SZ_4K, 8, IommuIotlbGather(queued=True)) == 8 * SZ_4K
    assert tlb.calls == []


@pytest.mark.parametrize(("args", "exc", "match"), [
    ((0, 0, 0x3000, 1, RW), InvalidArgument, "pgsize 0x3000 .* 0x40201000"),
    ((0, 0, 0, 1, RW), InvalidArgument, "pgsize 0x0"),
    ((1 << 48, 0, SZ_4K, 1, RW), OutOfRange, "iova 0x1000000000000"),
    ((0, 1 << 48, SZ_4K, 1, RW), OutOfRange, "paddr 0x1000000000000"),
    ((0, 0, SZ_4K, 1, Prot.CACHE | Prot.NOEXEC), InvalidArgument, "neither READ nor WRITE"),
])
def test_map_errors_change_nothing(args: tuple[int, int, int, int, int],
                                   exc: type[Exception], match: str) -> None:
    ops, _ = _ops()
    with pytest.raises(exc, match=match):
        ops.map_pages(*args)
    assert ops.stats.tables_allocated == 1 and ops.leaf_histogram() == {}


def test_unmap_bad_arguments_return_zero() -> None:
    ops, _ = _ops()
    ops.map_pages(0, 0, SZ_4K, 1, RW)
    assert ops.unmap_pages(0, 0x3000, 1) == 0
    assert ops.unmap_pages(0, SZ_4K, 0) == 0
    assert ops.unmap_pages(1 << 48, SZ_4K, 1) == 0
    assert ops.iova_to_phys(0x10) == 0x10


def test_enomem_while_descending() -> None:
    mem = PhysMem("64M")
    ops, _ = _ops(mem=mem)
    mem.fail_nth.arm(2)  # the level-1 table succeeds, the level-2 one fails
    with pytest.raises(OutOfMemory) as exc:
        ops.map_pages(0, 0x8000_0000, SZ_4K, 1, RW)
    assert exc.value.mapped == 0 and ops.iova_to_phys(0) == 0
    # The kernel keeps the level-1 table it installed; it is owned, not leaked.
    assert ops.table_histogram() == {0: 1, 1: 1}
    ops._check()
    ops.map_pages(0, 0x8000_0000, SZ_4K, 1, RW)
    ops.free()
    assert mem.iommu_pages == 0 and mem.frames.allocated_blocks == 0


def test_pgtable_walk_reports_each_level() -> None:
    ops, _ = _ops()
    ops.map_pages(0x4000_0000, 0x8000_0000, SZ_2M, 1, RW)
    walk = ops.pgtable_walk(0x4000_1234)
    assert len(walk) == 3 and walk[-1] & 3 == 1  # level 0, 1 tables; level-2 block
    assert ops.describe(walk[-1], 2).startswith("block ")
    hole = ops.pgtable_walk(0x8000_0000)
    assert hole == [walk[0], 0]
    assert ops.describe(0, 1) == "empty"


def test_ttbr1_maps_the_upper_range() -> None:
    ops, _ = _ops(quirks=Quirk.ARM_TTBR1, ias=48)
    top = (1 << 64) - SZ_2M
    assert ops.map_pages(top, 0x8000_0000, SZ_4K, 1, RW) == SZ_4K
    assert ops.iova_to_phys(top + 5) == 0x8000_0005
    with pytest.raises(OutOfRange):
        ops.map_pages(0, 0x8000_0000, SZ_4K, 1, RW)


def test_use_after_free_is_refused() -> None:
    ops, tlb = _ops()
    ops.free()
    assert tlb.calls == [("flush_all",)]
    with pytest.raises(InvalidArgument, match="after free"):
        ops.iova_to_phys(0)


# -- dirty tracking ------------------------------------------------------------------------
def _dirty_ops() -> IoPgtable:
    ops, _ = _ops(quirks=Quirk.ARM_HD | Quirk.NO_WARN)
    ops.map_pages(0, 0x8000_0000, SZ_4K, 512, RW)
    ops.map_pages(SZ_2M, 0x8020_0000, SZ_2M, 1, RW)
    ops.map_pages(2 * SZ_2M, 0x8040_0000, SZ_4K, 4, Prot.READ)
    return ops


def _read_dirty(ops: IoPgtable, flags: int = 0, start: int = 0,
                size: int = 2 * SZ_2M + 4 * SZ_4K) -> tuple[IovaBitmap, IommuIotlbGather]:
    bitmap, gather = IovaBitmap(start, size, SZ_4K), IommuIotlbGather()
    ops.read_and_clear_dirty(start, size, flags, IommuDirtyBitmap(bitmap, gather))
    return bitmap, gather


def test_fresh_writable_mappings_start_dirty_then_clean() -> None:
    ops = _dirty_ops()
    bitmap, gather = _read_dirty(ops, 0, 0, 64 * SZ_4K)
    assert bitmap.count() == 64 and (gather.start, gather.end) == (0, 64 * SZ_4K - 1)
    assert _read_dirty(ops, 0, 0, 64 * SZ_4K)[0].count() == 0
    assert ops.iova_to_phys(5 * SZ_4K) == 0x8000_5000  # cleaning keeps the mapping


def test_a_write_dirties_its_leaf_and_a_block_is_reported_whole() -> None:
    ops = _dirty_ops()
    _read_dirty(ops)
    _hw_write(ops, 7 * SZ_4K + 100)
    _hw_write(ops, SZ_2M + 12345)  # one byte into the 2M block
    bitmap, _ = _read_dirty(ops)
    assert bitmap.count() == 1 + 512
    assert bitmap.is_set(7 * SZ_4K) and bitmap.is_set(SZ_2M) and bitmap.is_set(2 * SZ_2M - 1)
    assert not bitmap.is_set(2 * SZ_2M)  # read-only pages are never dirty


def test_no_clear_reports_without_rearming() -> None:
    ops = _dirty_ops()
    _read_dirty(ops)
    _hw_write(ops, 3 * SZ_4K)
    assert _read_dirty(ops, IOMMU_DIRTY_NO_CLEAR)[0].count() == 1
    assert _read_dirty(ops, IOMMU_DIRTY_NO_CLEAR)[0].count() == 1
    assert _read_dirty(ops)[0].count() == 1
    assert _read_dirty(ops)[0].count() == 0


def test_a_hole_is_einval_after_the_leaves_before_it() -> None:
    ops = _dirty_ops()
    start, end = SZ_2M - 64 * SZ_4K, 2 * SZ_2M + 8 * SZ_4K  # 4 read-only pages, then a hole
    bitmap = IovaBitmap(start, end - start, SZ_4K)
    with pytest.raises(InvalidArgument, match="hole at iova 0x404000"):
        ops.read_and_clear_dirty(start, end - start, 0, IommuDirtyBitmap(bitmap))
    assert bitmap.count() == 64 + 512  # the leaves before the hole were recorded...
    assert _read_dirty(ops, 0, start, 2 * SZ_2M - start)[0].count() == 0  # ...and cleaned


@pytest.mark.parametrize(("iova", "size", "match"), [
    (0, 0, "size is 0"), (1 << 48, SZ_4K, "beyond ias"), ((1 << 48) - SZ_4K, 2 * SZ_4K, "ias")])
def test_dirty_bad_ranges(iova: int, size: int, match: str) -> None:
    ops = _dirty_ops()
    with pytest.raises(InvalidArgument, match=match):
        ops.read_and_clear_dirty(iova, size, 0, IommuDirtyBitmap())


def test_dirty_is_stage1_only() -> None:
    ops, _ = _ops(fmt=IoPgtableFmt.ARM_64_LPAE_S2)
    ops.map_pages(0, 0, SZ_4K, 1, RW)
    with pytest.raises(InvalidArgument, match="ARM_64_LPAE_S2"):
        ops.read_and_clear_dirty(0, SZ_4K, 0, IommuDirtyBitmap())


def test_dirty_walk_from_inside_a_block_follows_the_kernels_cursor() -> None:
    # __arm_lpae_iopte_walk records walk_data->addr, not the block start, and
    # advances it by the block size: starting 4K into a 2M block, the record
    # is [4K, 2M + 4K) and the next level-2 entry is entered at that offset.
    ops = _dirty_ops()
    bitmap = IovaBitmap(SZ_2M, SZ_2M, SZ_4K)
    ops.read_and_clear_dirty(SZ_2M + SZ_4K, SZ_2M - SZ_4K, 0, IommuDirtyBitmap(bitmap))
    assert bitmap.count() == 511  # clipped to the bitmap: [2M + 4K, 4M)


def test_histograms() -> None:
    ops = _dirty_ops()
    assert ops.leaf_histogram() == {SZ_4K: 516, SZ_2M: 1}
    assert ops.table_histogram() == {0: 1, 1: 1, 2: 1, 3: 2}
