"""The core's map/unmap/map_sg on a paging domain, and generic_pt cases B2-B8.

The B cases are drivers/iommu/generic_pt/kunit_iommu_pt.h in their ARM LPAE
form: an overlapping map is EEXIST (iommupt: EADDRINUSE) and unmapping part
of a large leaf returns 0 (iommupt removes the whole leaf).
"""

from __future__ import annotations

import errno
import random

import pytest

from iommulab import Prot
from iommulab.errors import AlreadyExists, InvalidArgument, KernelError, NoDevice, OutOfMemory
from iommulab.iommu import (
    DomainType,
    IommuDomain,
    IommuIotlbGather,
    SgEntry,
    alloc_paging_domain,
)
from iommulab.kernel import LINUX_7_0
from iommulab.mem import PhysMem
from iommulab.pgtable import IoPgtable, IoPgtableCfg, IoPgtableFmt, Quirk
from iommulab.sizes import SZ_1G, SZ_2M, SZ_4K, SZ_16K, SZ_32M, SZ_64K, SZ_512M

from .reference import ArmLpaeReference

RW = Prot.READ | Prot.WRITE
B4K = SZ_4K | SZ_2M | SZ_1G
CONFIGS = [(B4K, 39), (B4K, 48), (SZ_16K | SZ_32M, 47), (SZ_64K | SZ_512M, 48)]


def _domain(bitmap: int = B4K, ias: int = 48, mem: PhysMem | None = None,
            quirks: Quirk = Quirk.NO_WARN) -> IommuDomain:
    return alloc_paging_domain(IoPgtableFmt.ARM_64_LPAE_S1,
                               IoPgtableCfg(bitmap, ias, 48, quirks=quirks, kernel=LINUX_7_0),
                               mem=mem)


def _pgtbl(domain: IommuDomain) -> IoPgtable:
    assert domain.pgtbl is not None
    return domain.pgtbl


def _valid_entries(domain: IommuDomain) -> int:
    return sum(_pgtbl(domain).leaf_histogram().values())


# -- generic_pt B cases ---------------------------------------------------------------------
@pytest.mark.parametrize(("bitmap", "ias"), CONFIGS)
def test_b2_map_simple(bitmap: int, ias: int) -> None:
    d = _domain(bitmap, ias)
    sizes = [1 << b for b in range(64) if bitmap >> b & 1 and 1 << b < 1 << ias]
    smallest = sizes[0]
    va = 256 * smallest
    placed = []
    for size in sizes:
        va = (va + size - 1) // size * size
        d.map(va, va, size, RW)
        placed.append((va, size))
        va += size
    for va, size in placed:
        if size <= 1 << 31:
            for off in range(0, size, smallest):
                assert d.iova_to_phys(va + off) == va + off
    assert _pgtbl(d).leaf_histogram() == dict.fromkeys(sizes, 1)
    for va, size in placed:
        assert d.unmap(va, size) == size
    assert _valid_entries(d) == 0


@pytest.mark.parametrize(("bitmap", "ias"), CONFIGS)
def test_b3_map_table_to_oa(bitmap: int, ias: int) -> None:
    sizes = [1 << b for b in range(64) if bitmap >> b & 1]
    top = max(s for s in sizes if s < 16 * SZ_1G and s < 1 << ias)
    d = _domain(bitmap, ias)
    for size in (s for s in sizes if s <= top):
        for va in range(0, top, size):
            d.map(va, va, size, RW)
        assert _valid_entries(d) == top // size
        if size == top:
            assert d.unmap(0, top // 2) == 0  # ARM LPAE: half of a leaf is refused
            assert d.unmap(0, top) == top
        else:
            assert d.unmap(0, top // 2) == top // 2
            for va in range(top // 2, top, size):
                assert d.unmap(va, size) == size
        assert _valid_entries(d) == 0
    _pgtbl(d)._check()


@pytest.mark.parametrize(("bitmap", "ias"), CONFIGS)
def test_b4_unmap_split(bitmap: int, ias: int) -> None:
    sizes = [1 << b for b in range(64) if bitmap >> b & 1 and 1 << b < 1 << (ias - 2)]
    d = _domain(bitmap, ias)
    for base, nxt in ((a, b) for i, a in enumerate(sizes) for b in sizes[i + 1:]):
        va = 4 * nxt
        d.map(va, va, nxt, RW)
        assert d.unmap(va, base) == 0  # ARM LPAE 6.13+: part of a large leaf is refused
        assert d.unmap(va, nxt) == nxt
        d.map(va, va, 2 * nxt, RW)  # two adjacent large leaves
        assert d.unmap(va, base) == 0
        assert d.unmap(va, nxt) == nxt  # does not continue into the second
        assert d.iova_to_phys(va + nxt) == va + nxt
        assert d.unmap(va + nxt, nxt) == nxt
        assert _valid_entries(d) == 0


@pytest.mark.parametrize(("bitmap", "ias"), CONFIGS)
def test_b5_random_map(bitmap: int, ias: int) -> None:
    """1000 random maps: each succeeds or is EEXIST exactly when the reference says.

    In ARM LPAE form a map whose block covers a table of smaller mappings
    succeeds and replaces them, so what is mapped comes from the plain
    reference model; on a collision the overlapping leaves are unmapped
    (each ``iommu_unmap`` returns its length) and the map is retried.
    """
    rng = random.Random(ias * 7 + bitmap.bit_length())
    g = bitmap & -bitmap
    d = _domain(bitmap, ias)
    pgtbl = _pgtbl(d)
    ref = ArmLpaeReference(tuple(lv.block_size for lv in pgtbl.format.levels),
                           pgtbl.cfg.pgsize_bitmap, pgtbl.format.ptes_per_page)
    limit = min(1 << ias, 64 * SZ_1G)
    block = ref.level_sizes[-2]
    collisions = 0
    for _ in range(1000):
        pages = rng.choice([1, 3, 64, 512, 2000, 0])
        if pages:
            length = pages * g
            va = rng.randrange(0, limit - length, g)
        else:  # up to 1G, block aligned: big leaves rather than 10^5 small ones
            length = min(rng.randrange(1, 1 << 14) * block, SZ_1G)
            va = rng.randrange(0, limit - length, block)
        expected = ref.map(va, va, length)
        try:
            d.map(va, va, length, RW)
        except AlreadyExists:
            assert expected == errno.EEXIST
            collisions += 1
            for start, size in ref.leaves_in(va, length):
                assert d.unmap(start, size) == ref.unmap(start, size) == size
            assert ref.map(va, va, length) == 0
            d.map(va, va, length, RW)
        else:
            assert expected == 0
    assert collisions
    leaves = ref.leaves
    for start, (size, _) in leaves.items():
        for probe in (start, start + size - g):
            assert d.iova_to_phys(probe) == probe
    for start, (size, _) in leaves.items():
        assert d.unmap(start, size) == size
    assert _valid_entries(d) == 0
    pgtbl._check()


def test_b6_pgsize_boundary() -> None:
    d = _domain()
    d.map(0xFEF80000, 0x208B95D000, 0x20000, RW)
    assert d.iova_to_phys(0xFEF9FFFF) == 0x208B97CFFF


def test_b7_mixed() -> None:
    d = _domain()
    va = 0x3FE400 << 12
    d.map(va, va, (0x4C0600 - 0x3FE400) << 12, RW)
    assert _pgtbl(d).leaf_histogram() == {SZ_2M: 17, SZ_1G: 3}  # 20 entries
    assert d.iova_to_phys(va + (0xC0000 << 12) + 5) == va + (0xC0000 << 12) + 5


def test_b8_no_table_memory_leaks() -> None:
    mem = PhysMem("1G")
    d = _domain(mem=mem)
    d.map(0x1000, 0x1000, 3 * SZ_1G, RW)
    assert mem.iommu_pages > 1
    d.free()
    assert mem.iommu_pages == 0 and mem.frames.allocated_blocks == 0


# -- core semantics ------------------------------------------------------------------------
def test_map_rolls_back_fully_on_error() -> None:
    d = _domain()
    d.map(SZ_2M + 8 * SZ_4K, 0x9000_0000, SZ_4K, RW)  # in the way of the second run
    with pytest.raises(AlreadyExists):  # paddr not 2M-aligned with iova: all 4K pages
        d.map(SZ_4K, 0x8000_2000, 3 * SZ_2M, RW)
    assert [e[0] for e in _pgtbl(d).iter_entries() if e[2]] == [SZ_2M + 8 * SZ_4K]
    assert d.iova_to_phys(SZ_4K) == 0


def test_a_block_over_smaller_mappings_replaces_them() -> None:
    # io-pgtable-arm frees a populated table a block is mapped over (iommupt
    # refuses with EADDRINUSE); the old 4K mapping is gone without an error.
    d = _domain()
    d.map(SZ_2M + 8 * SZ_4K, 0x9000_0000, SZ_4K, RW)
    d.map(SZ_2M, 0x8020_0000, SZ_2M, RW)
    assert d.iova_to_phys(SZ_2M + 8 * SZ_4K) == 0x8020_8000
    assert d.tlb_stats.flush_walk == 1


@pytest.mark.parametrize(("args", "match"), [
    ((0x800, 0, SZ_4K), "unaligned: iova 0x800"),
    ((0, 0x800, SZ_4K), "pa 0x800"),
    ((0, 0, 0x800), "size 0x800 min_pagesz 0x1000"),
])
def test_unaligned_map_is_einval(args: tuple[int, int, int], match: str) -> None:
    d = _domain()
    with pytest.raises(InvalidArgument, match=match):
        d.map(*args, RW)
    assert _pgtbl(d).stats.tables_allocated == 1


def test_map_of_zero_bytes_is_a_no_op() -> None:
    d = _domain()
    d.map(0, 0, 0, RW)
    assert _valid_entries(d) == 0


def test_domains_without_tables() -> None:
    ident, blocked = IommuDomain(DomainType.IDENTITY), IommuDomain(DomainType.BLOCKED)
    assert ident.iova_to_phys(0x1234) == 0x1234 and blocked.iova_to_phys(0x1234) == 0
    with pytest.raises(InvalidArgument, match="IDENTITY"):
        ident.map(0, 0, SZ_4K, RW)
    assert ident.unmap(0, SZ_4K) == 0
    with pytest.raises(NoDevice):
        IommuDomain(DomainType.UNMANAGED).map(0, 0, SZ_4K, RW)


def test_unmap_may_exceed_the_size_and_stops_at_a_hole() -> None:
    d = _domain()
    d.map(0, 0, SZ_4K, RW)
    d.map(SZ_2M, SZ_2M, SZ_2M, RW)
    assert d.unmap(0, 2 * SZ_4K) == SZ_4K  # stops at the hole; iova + ret is where
    assert d.unmap(SZ_2M, SZ_4K) == 0  # part of a block
    assert d.unmap(SZ_2M, SZ_2M) == SZ_2M
    assert d.unmap(0x801, SZ_4K) == 0 and d.warnings["iommu_unmap: unaligned"] == 1


def test_unmap_over_a_table_entry_counts_the_whole_block() -> None:
    # Tables stay when their leaves go; unmapping at block size then "unmaps"
    # the empty table and reports the block's size (io-pgtable-arm behaviour).
    d = _domain()
    d.map(SZ_2M, SZ_2M, SZ_4K, RW)
    assert d.unmap(SZ_2M, SZ_4K) == SZ_4K
    assert d.unmap(SZ_2M, SZ_2M) == SZ_2M
    assert d.tlb_stats.flush_walk == 1


def test_invalidations_are_counted() -> None:
    d = _domain()
    d.map(0, 0, 8 * SZ_4K, RW)
    d.map(SZ_2M, SZ_2M, 2 * SZ_2M, RW)
    assert d.unmap(0, 8 * SZ_4K) == 8 * SZ_4K
    s = d.tlb_stats
    assert (s.add_page, s.iotlb_sync, s.sync_bytes) == (8, 1, 8 * SZ_4K)
    gather = IommuIotlbGather()
    assert d.unmap_fast(SZ_2M, 2 * SZ_2M, gather) == 2 * SZ_2M
    assert s.iotlb_sync == 1  # nothing synced yet
    assert (gather.start, gather.end, gather.pgsize) == (SZ_2M, 3 * SZ_2M - 1, SZ_2M)
    d.iotlb_sync(gather)
    assert (s.add_page, s.iotlb_sync) == (10, 2) and gather.empty
    d.free()
    assert s.flush_all == 1


def test_mixed_granules_in_one_unmap_sync_between_them() -> None:
    d = _domain()
    d.map(SZ_2M - SZ_4K, SZ_2M - SZ_4K, SZ_2M + SZ_4K, RW)  # 4K then 2M
    assert d.unmap(SZ_2M - SZ_4K, SZ_2M + SZ_4K) == SZ_2M + SZ_4K
    assert d.tlb_stats.iotlb_sync == 2  # add_page synced the 4K range before the 2M one


def test_map_sg_coalesces_contiguous_entries() -> None:
    d = _domain()
    sg = [SgEntry(0x8000_0000, SZ_4K), SgEntry(0x8000_1000, SZ_4K),
          SgEntry(0xC000_0000, 0, bus_address=True), SgEntry(0x9000_0000, 2 * SZ_4K)]
    calls: list[tuple[int, int, int]] = []
    orig = d.map_nosync

    def spy(iova: int, paddr: int, size: int, prot: int, gfp: int = 0) -> None:
        calls.append((iova, paddr, size))
        orig(iova, paddr, size, prot, gfp)

    d.map_nosync = spy  # type: ignore[method-assign]
    assert d.map_sg(0x10_0000, sg, RW) == 4 * SZ_4K
    assert calls == [(0x10_0000, 0x8000_0000, 2 * SZ_4K), (0x10_2000, 0x9000_0000, 2 * SZ_4K)]
    assert d.iova_to_phys(0x10_3000) == 0x9000_1000


def test_map_sg_unwinds_on_error() -> None:
    d = _domain()
    d.map(0x10_3000, 0, SZ_4K, RW)
    sg = [SgEntry(0x8000_0000, 2 * SZ_4K), SgEntry(0x9000_0000, 2 * SZ_4K)]
    with pytest.raises(AlreadyExists):
        d.map_sg(0x10_0000, sg, RW)
    assert d.iova_to_phys(0x10_0000) == 0 and d.iova_to_phys(0x10_3000) == 0


def test_map_sg_of_nothing() -> None:
    assert _domain().map_sg(0, [], RW) == 0


def test_map_errors_carry_the_drivers_errno() -> None:
    mem = PhysMem("64M")
    d = _domain(mem=mem)
    mem.fail_nth.arm(1)
    with pytest.raises(OutOfMemory) as exc:
        d.map(0, 0, SZ_4K, RW)
    assert exc.value.errno == errno.ENOMEM
    with pytest.raises(KernelError) as exc2:
        d.map(1 << 48, 0, SZ_4K, RW)
    assert exc2.value.errno == errno.ERANGE
