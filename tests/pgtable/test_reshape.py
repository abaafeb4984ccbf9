"""Lab split and merge (pgtable/reshape.py): exact round trips, refusals, BBM windows."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iommulab import Prot
from iommulab.errors import InvalidArgument, OutOfMemory
from iommulab.iommu import IommuDirtyBitmap, IovaBitmap
from iommulab.kernel import LINUX_7_0
from iommulab.mem import PhysMem
from iommulab.pgtable import IoPgtable, IoPgtableCfg, IoPgtableFmt, Quirk, alloc_io_pgtable_ops
from iommulab.sizes import SZ_1G, SZ_2M, SZ_4K, SZ_16K, SZ_32M, SZ_64K, SZ_512M
from iommulab.testing import RecordingTlb

RW = Prot.READ | Prot.WRITE
S1, S2 = IoPgtableFmt.ARM_64_LPAE_S1, IoPgtableFmt.ARM_64_LPAE_S2
PTE_AP_RDONLY = 1 << 7
PTE_SW_SPLIT = 1 << 56


def _ops(fmt: IoPgtableFmt = S1, bitmap: int = SZ_4K | SZ_2M | SZ_1G,
         quirks: Quirk = Quirk.ARM_HD, coherent: bool = True,
         mem: PhysMem | None = None) -> tuple[IoPgtable, RecordingTlb]:
    tlb = RecordingTlb(cookie := object())
    if fmt == S2:
        quirks &= ~Quirk.ARM_HD
    cfg = IoPgtableCfg(bitmap, 48, 48, quirks=quirks | Quirk.NO_WARN, coherent_walk=coherent,
                       tlb=tlb, kernel=LINUX_7_0)  # NO_WARN is 6.14+
    # No size check on the recorder: one walk flush covers the whole span changed,
    # which need not be a page size (the kernel's selftest never splits or merges).
    return alloc_io_pgtable_ops(fmt, cfg, cookie, mem=mem or PhysMem("8G")), tlb


def _leaves(ops: IoPgtable) -> list[tuple[int, int, int]]:
    return [(iova, size, pte) for iova, size, leaf, pte in ops.iter_entries() if leaf]


def _dirty(ops: IoPgtable, iova: int, size: int, flags: int = 0) -> list[int]:
    bitmap = IovaBitmap(iova, size, SZ_4K)
    ops.read_and_clear_dirty(iova, size, flags, IommuDirtyBitmap(bitmap))
    return [iova + i * SZ_4K for i in range(size // SZ_4K) if bitmap.is_set(iova + i * SZ_4K)]


def _write(ops: IoPgtable, iova: int) -> None:
    """HTTU's dirty update: clear AP[2] of the DBM leaf mapping ``iova``."""
    walk = ops.pgtable_walk(iova)
    table_pa = ops.pgd_pa if len(walk) == 1 else walk[-2] & 0xFFFF_FFFF_F000
    level = ops.format.levels[len(walk) - 1]
    pa = table_pa + ((iova >> level.shift) & level.index_mask) * 8
    ops.mem.write_u64(pa, ops.mem.read_u64(pa) & ~PTE_AP_RDONLY)


# -- round trips -------------------------------------------------------------------------------
@pytest.mark.parametrize(("fmt", "bitmap", "block", "granule"), [
    (S1, SZ_4K | SZ_2M | SZ_1G, SZ_2M, SZ_4K),
    (S1, SZ_4K | SZ_2M | SZ_1G, SZ_1G, SZ_4K),
    (S1, SZ_4K | SZ_2M | SZ_1G, SZ_1G, SZ_2M),
    (S2, SZ_4K | SZ_2M | SZ_1G, SZ_2M, SZ_4K),
    (S1, SZ_16K | SZ_32M, SZ_32M, SZ_16K),
    (S2, SZ_64K | SZ_512M, SZ_512M, SZ_64K),
])
def test_split_then_merge_restores_the_tables_bit_for_bit(
        fmt: IoPgtableFmt, bitmap: int, block: int, granule: int) -> None:
    ops, tlb = _ops(fmt, bitmap)
    ops.map_pages(0, 4 * block, block, 2, RW)
    ops.map_pages(4 * block, 8 * block, block, 1, Prot.READ)
    before, tables = _leaves(ops), ops.stats.tables_allocated - ops.stats.tables_freed
    tlb.calls.clear()
    assert ops.split_blocks(0, 8 * block, granule) == 3
    assert ops.leaf_histogram() == {granule: 3 * (block // granule)}
    for iova in (0, block + 5 * granule + 3, 5 * block - 1):
        assert ops.iova_to_phys(iova) == 4 * block + iova
    assert all(pte & PTE_SW_SPLIT for _, _, pte in _leaves(ops))
    walk = ("flush_walk", 0, 5 * block, ops.format.granule)
    assert tlb.calls == [walk]  # one batch per call
    tlb.calls.clear()
    assert ops.merge_pages(0, 8 * block, split_only=True) == 3
    assert _leaves(ops) == before
    assert tlb.calls == [walk]
    assert ops.stats.tables_allocated - ops.stats.tables_freed == tables
    ops._check()
    ops.free()
    assert ops.mem.iommu_pages == 0


def test_split_keeps_dirty_state_and_merge_ors_it() -> None:
    ops, _ = _ops()
    ops.map_pages(0, 0x8000_0000, SZ_2M, 2, RW)
    _dirty(ops, 0, 2 * SZ_2M)  # fresh writable mappings start dirty: clean them
    _write(ops, SZ_2M + 17)
    ops.split_blocks(0, 2 * SZ_2M)
    # The dirty block becomes 512 dirty pages: the first read reports it whole once more.
    assert _dirty(ops, 0, 2 * SZ_2M) == [SZ_2M + i * SZ_4K for i in range(512)]
    _write(ops, 5 * SZ_4K)
    assert _dirty(ops, 0, 2 * SZ_2M, flags=1) == [5 * SZ_4K]  # 4K granularity now
    ops.merge_pages(0, 2 * SZ_2M)
    assert ops.leaf_histogram() == {SZ_2M: 2}
    assert _dirty(ops, 0, 2 * SZ_2M) == [i * SZ_4K for i in range(512)]  # any page: all dirty
    assert _dirty(ops, 0, 2 * SZ_2M) == []


def test_merge_builds_a_1g_block_from_pages_in_one_pass() -> None:
    ops, tlb = _ops()
    done = 0
    while done < SZ_1G:
        done += ops.map_pages(SZ_1G + done, SZ_1G + done, SZ_4K, 512, RW)
    assert ops.stats.tables_allocated == 1 + 1 + 1 + 512
    tlb.calls.clear()
    assert ops.merge_pages(0, 4 * SZ_1G) == 1  # the 1G entry replaces 512 tables of tables
    assert ops.leaf_histogram() == {SZ_1G: 1}
    assert ops.stats.tables_allocated - ops.stats.tables_freed == 2
    assert tlb.calls == [("flush_walk", SZ_1G, SZ_1G, SZ_4K)]
    assert ops.merge_pages(0, 4 * SZ_1G, split_only=True) == 0
    ops._check()


def test_split_only_leaves_runs_that_were_mapped_as_pages() -> None:
    ops, _ = _ops()
    ops.map_pages(0, 0x8000_0000, SZ_4K, 512, RW)  # mapped as pages by the user
    ops.map_pages(SZ_2M, 0x8020_0000, SZ_2M, 1, RW)
    ops.split_blocks(0, 2 * SZ_2M)
    assert ops.merge_pages(0, 2 * SZ_2M, split_only=True) == 1
    assert ops.leaf_histogram() == {SZ_4K: 512, SZ_2M: 1}
    assert ops.merge_pages(0, 2 * SZ_2M) == 1
    assert ops.leaf_histogram() == {SZ_2M: 2}


@pytest.mark.parametrize("change", ["unmapped", "remapped", "permissions", "unaligned"])
def test_merge_refuses_and_changes_nothing(change: str) -> None:
    ops, tlb = _ops()
    ops.map_pages(0, 0x8000_0000, SZ_2M, 1, RW)
    ops.split_blocks(0, SZ_2M)
    page = 77 * SZ_4K
    if change == "unaligned":  # contiguous but not 2M aligned in output
        ops.unmap_pages(0, SZ_4K, 512)
        ops.map_pages(0, 0x8000_1000, SZ_4K, 512, RW)
    else:
        ops.unmap_pages(page, SZ_4K, 1)
        if change == "remapped":
            ops.map_pages(page, 0x9000_0000, SZ_4K, 1, RW)
        elif change == "permissions":
            ops.map_pages(page, 0x8000_0000 + page, SZ_4K, 1, Prot.READ)
    before, allocated = _leaves(ops), ops.stats.tables_allocated
    tlb.calls.clear()
    assert ops.merge_pages(0, SZ_2M) == 0
    assert _leaves(ops) == before and ops.stats.tables_allocated == allocated
    assert tlb.calls == []


def test_merge_needs_the_whole_run_in_range() -> None:
    ops, _ = _ops()
    ops.map_pages(0, 0x8000_0000, SZ_2M, 1, RW)
    ops.split_blocks(0, SZ_2M)
    assert ops.merge_pages(0, SZ_2M - SZ_4K) == 0
    assert ops.merge_pages(SZ_4K, SZ_2M) == 0
    assert ops.merge_pages(0, SZ_2M) == 1


def test_merge_respects_the_pgsize_bitmap() -> None:
    # Without 1G in the bitmap, 512 contiguous 2M blocks stay 2M blocks.
    ops, _ = _ops(bitmap=SZ_4K | SZ_2M)
    for i in range(512):
        ops.map_pages(i * SZ_2M, SZ_1G + i * SZ_2M, SZ_2M, 1, RW)
    assert ops.merge_pages(0, SZ_1G) == 0
    assert ops.leaf_histogram() == {SZ_2M: 512}


def test_split_range_selects_blocks_it_overlaps() -> None:
    ops, _ = _ops()
    ops.map_pages(0, 0x8000_0000, SZ_2M, 4, RW)
    assert ops.split_blocks(SZ_2M + SZ_4K, SZ_4K) == 1  # one byte range splits its block
    assert ops.leaf_histogram() == {SZ_4K: 512, SZ_2M: 3}
    assert ops.split_blocks(0, 4 * SZ_2M) == 3
    assert ops.split_blocks(0, 4 * SZ_2M) == 0
    assert ops.split_blocks(0, 0) == 0


def test_bad_arguments_are_einval() -> None:
    ops, _ = _ops()
    with pytest.raises(InvalidArgument, match="granule 0x10000"):
        ops.split_blocks(0, SZ_2M, SZ_64K)
    with pytest.raises(InvalidArgument, match="granule 0x3000"):
        ops.split_blocks(0, SZ_2M, 3 * SZ_4K)
    ops.map_pages(0, 0, SZ_1G, 1, RW)
    assert ops.split_blocks(0, SZ_1G, SZ_1G) == 0  # nothing is larger than the granule
    with pytest.raises(InvalidArgument, match="bbm_level") as exc:
        ops.merge_pages(0, SZ_2M, bbm_level=3)
    assert exc.value.errno == errno.EINVAL
    ops.free()
    with pytest.raises(InvalidArgument, match="after free"):
        ops.split_blocks(0, SZ_2M)


def test_split_allocation_failure_changes_nothing() -> None:
    mem = PhysMem("8G")
    ops, tlb = _ops(mem=mem)
    ops.map_pages(0, SZ_1G, SZ_1G, 2, RW)
    before, pages = _leaves(ops), mem.iommu_pages
    for nth in (1, 2, 300, 513):
        mem.fail_nth.arm(nth)
        tlb.calls.clear()
        with pytest.raises(OutOfMemory):
            ops.split_blocks(0, 2 * SZ_1G, SZ_4K)
        assert mem.fail_nth.triggered
        assert _leaves(ops) == before and mem.iommu_pages == pages and tlb.calls == []
        ops._check()
    mem.fail_nth.disarm()


def test_non_coherent_walker_syncs_new_tables() -> None:
    ops, _ = _ops(coherent=False)
    ops.map_pages(0, 0x8000_0000, SZ_1G, 1, RW)
    syncs = ops.stats.cache_syncs
    ops.split_blocks(0, SZ_1G)
    assert ops.stats.cache_syncs > syncs
    assert all(pte & ops.format.sw_sync_bit for _, _, leaf, pte in ops.iter_entries()
               if not leaf)
    ops.merge_pages(0, SZ_1G)
    assert ops.leaf_histogram() == {SZ_1G: 1}
    ops._check()


# -- break-before-make ---------------------------------------------------------------------------
@pytest.mark.parametrize("bbm", [0, 1, 2])
def test_bbm_level_decides_whether_the_window_is_empty(bbm: int) -> None:
    ops, _ = _ops()
    ops.map_pages(0, 0x8000_0000, SZ_2M, 2, RW)
    seen: list[tuple[str, int]] = []

    def probe(phase: str) -> None:
        seen.append((phase, ops.iova_to_phys(SZ_2M + 0x1234)))

    ops.split_blocks(0, 2 * SZ_2M, bbm_level=bbm, on_step=probe)
    ops.merge_pages(0, 2 * SZ_2M, bbm_level=bbm, on_step=probe)
    good = 0x8020_1234
    during = 0 if bbm == 0 else good
    assert seen == [("write", during), ("invalidated", during)] * 2
    assert ops.iova_to_phys(SZ_2M + 0x1234) == good
    assert ops.stats.bbm_breaks == (4 if bbm == 0 else 0)


# -- property: round trip over random layouts ------------------------------------------------------
_block = st.tuples(st.integers(0, 15), st.sampled_from([SZ_2M, SZ_1G]), st.booleans(),
                   st.booleans())


@settings(max_examples=40, deadline=None)
@given(blocks=st.lists(_block, max_size=6, unique_by=lambda b: b[0]),
       granule=st.sampled_from([SZ_4K, SZ_2M]),
       probes=st.lists(st.integers(0, 16 * SZ_1G - 1), max_size=5))
def test_round_trip_property(blocks: list[tuple[int, int, bool, bool]], granule: int,
                             probes: list[int]) -> None:
    """Any layout of blocks: split, then merge, gives back the same entries."""
    ops, _ = _ops()
    for slot, size, writable, dirty in blocks:
        iova = slot * SZ_1G
        ops.map_pages(iova, 4 * SZ_1G + iova, size, 1, RW if writable else Prot.READ)
        if not dirty and writable:
            _dirty(ops, iova, size)
    before = _leaves(ops)
    split = ops.split_blocks(0, 16 * SZ_1G, granule)
    assert split == sum(1 for _, size, _, _ in blocks if size > granule)
    big = {slot for slot, size, _, _ in blocks if size > granule}
    for iova, _, pte in _leaves(ops):
        assert bool(pte & PTE_SW_SPLIT) == (iova // SZ_1G in big)
    for iova in probes:  # walks through the split tables give the same addresses
        mapped = any(s * SZ_1G <= iova < s * SZ_1G + size for s, size, _, _ in blocks)
        assert ops.iova_to_phys(iova) == (4 * SZ_1G + iova if mapped else 0)
    assert ops.merge_pages(0, 16 * SZ_1G, split_only=True) >= split
    assert _leaves(ops) == before
    ops._check()


def test_vtd_second_stage_merge_ignores_the_units_a_and_d() -> None:
    """A scalable-mode unit with SSADE sets A (bit 8) on every leaf it uses and D (bit 9)
    on writes: which 4K pages of a split block the device touched must not stop the merge,
    and the merged block is dirty (A and D) if any page was."""
    ops = alloc_io_pgtable_ops(IoPgtableFmt.INTEL_VTD_SS,
                               IoPgtableCfg(SZ_4K | SZ_2M | SZ_1G, 48, 48), mem=PhysMem("8G"))
    ops.map_pages(0, 0x4000_0000, SZ_2M, 2, RW)
    assert ops.split_blocks(0, 2 * SZ_2M, SZ_4K) == 2
    for iova, bits in ((5 * SZ_4K, 1 << 8), (SZ_2M + 7 * SZ_4K, 3 << 8)):  # A; A and D
        walk = ops.pgtable_walk(iova)
        pa = (walk[-2] & 0xF_FFFF_FFFF_F000) + ((iova >> 12) & 511) * 8
        ops.mem.write_u64(pa, ops.mem.read_u64(pa) | bits)
    assert ops.merge_pages(0, 2 * SZ_2M, split_only=True) == 2
    assert ops.leaf_histogram() == {SZ_2M: 2}
    first, second = ops.pgtable_walk(0)[-1], ops.pgtable_walk(SZ_2M)[-1]
    assert first == 0x4000_0083 and second == 0x4020_0383  # R|W|PS, then A|D too
    ops._check()
    ops.free()
