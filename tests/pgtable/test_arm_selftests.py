"""Ports of the io-pgtable-arm selftests of Linux 7.0 and 6.12.

7.0 (drivers/iommu/io-pgtable-arm-selftests.c): 63 configurations (three
granules, ias <= oas over {32..48}) for stage 1 and stage 2, each running the
15 checks of ``arm_lpae_run_tests`` with a TLB that fails on a foreign cookie or
a flush size outside the page sizes. The checks removed by commit 33729a5fc0ca
("Partial unmap") observe the v6.13+ behaviour: unmapping part of a block
returns 0, WARNs once and leaves the block in place.

6.12 (the selftest at the end of io-pgtable-arm.c): 18 configurations (three
granules, ias over {32..48}, oas 48) with the "Partial unmap" and "Remap of
partial unmap" checks, which ``arm_lpae_split_blk_unmap`` passes.
"""

from __future__ import annotations

import pytest

from iommulab import Prot
from iommulab.errors import AlreadyExists
from iommulab.kernel import LINUX_6_12, LINUX_7_0
from iommulab.pgtable import IoPgtableCfg, IoPgtableFmt, Quirk, alloc_io_pgtable_ops
from iommulab.sizes import SZ_1G, SZ_2G, SZ_2M, SZ_4K, SZ_16K, SZ_32M, SZ_64K, SZ_512M
from iommulab.testing import RecordingTlb

PGSIZES = (SZ_4K | SZ_2M | SZ_1G, SZ_16K | SZ_32M, SZ_64K | SZ_512M)
ADDRESS_SIZES = (32, 36, 40, 42, 44, 48)
CONFIGS = [(pg, ADDRESS_SIZES[k], ADDRESS_SIZES[j])
           for pg in PGSIZES for j in range(len(ADDRESS_SIZES)) for k in range(j + 1)]
RW_CACHE = Prot.READ | Prot.WRITE | Prot.NOEXEC | Prot.CACHE


def test_matrix_has_63_configurations() -> None:
    assert len(CONFIGS) == 63


def _sizes(bitmap: int) -> list[int]:
    return [1 << b for b in range(64) if bitmap >> b & 1]


@pytest.mark.parametrize("fmt", [IoPgtableFmt.ARM_64_LPAE_S1, IoPgtableFmt.ARM_64_LPAE_S2])
@pytest.mark.parametrize(("pgsize", "ias", "oas"), CONFIGS)
def test_arm_lpae_run_tests(fmt: IoPgtableFmt, pgsize: int, ias: int, oas: int) -> None:
    cookie = object()
    tlb = RecordingTlb(cookie)
    cfg = IoPgtableCfg(pgsize, ias, oas, quirks=Quirk.NO_WARN, coherent_walk=True, tlb=tlb,
                       kernel=LINUX_7_0)
    ops = alloc_io_pgtable_ops(fmt, cfg, cookie)  # 1
    tlb.bitmap = ops.cfg.pgsize_bitmap
    assert ops.iova_to_phys(42) == 0  # 2
    assert ops.iova_to_phys(SZ_1G + 42) == 0  # 3
    assert ops.iova_to_phys(SZ_2G + 42) == 0  # 4

    sizes = _sizes(ops.cfg.pgsize_bitmap)
    iova = 0
    for size in sizes:
        assert ops.map_pages(iova, iova, size, 1, RW_CACHE) == size  # 5
        with pytest.raises(AlreadyExists):  # 6: overlapping mapping
            ops.map_pages(iova, iova + size, size, 1, Prot.READ | Prot.NOEXEC)
        assert ops.iova_to_phys(iova + 42) == iova + 42  # 7
        iova += SZ_1G

    # Removed "Partial unmap" checks, v6.13+: refused, block intact, one WARN.
    s0 = sizes[0]
    assert ops.unmap_pages(SZ_1G + s0, s0, 1, None) == 0
    assert ops.iova_to_phys(SZ_1G + s0 + 42) == SZ_1G + s0 + 42
    with pytest.raises(AlreadyExists):
        ops.map_pages(SZ_1G + s0, s0, s0, 1, Prot.READ)

    iova = 0
    for size in sizes:
        assert ops.unmap_pages(iova, size, 1, None) == size  # 8: full unmap
        assert ops.iova_to_phys(iova + 42) == 0  # 9
        assert ops.map_pages(iova, iova, size, 1, Prot.WRITE) == size  # 10: remap
        assert ops.iova_to_phys(iova + 42) == iova + 42  # 11
        iova += SZ_1G

    size = 1 << (ops.cfg.pgsize_bitmap.bit_length() - 1)  # 12: last largest page of the IAS
    iova = (1 << ops.cfg.ias) - size
    mapped = ops.map_pages(iova, iova, size, 1, RW_CACHE)
    assert mapped == size  # 13
    assert ops.unmap_pages(iova, size, 1, None) == size  # 14
    ops._check()
    ops.free()  # 15
    assert ops.mem.iommu_pages == 0
    assert dict(ops.stats.warnings) == {"Unmap of a partial large IOPTE is not allowed": 1}
    assert tlb.calls[-1] == ("flush_all",)


def test_stage2_concatenated_pgd_last_page() -> None:
    """The corner case check 12 was added for: the last page of a concatenated PGD."""
    tlb = RecordingTlb(None)
    ops = alloc_io_pgtable_ops(IoPgtableFmt.ARM_64_LPAE_S2,
                               IoPgtableCfg(PGSIZES[0], 40, 40, tlb=tlb, kernel=LINUX_7_0))
    tlb.bitmap = ops.cfg.pgsize_bitmap
    assert ops.format.levels[0].entries == 1024  # two 4K pages of level-1 entries
    iova = (1 << 40) - SZ_1G
    assert ops.map_pages(iova, iova, SZ_1G, 1, RW_CACHE) == SZ_1G
    assert ops.iova_to_phys(iova + 123) == iova + 123
    # A run of level-1 blocks stops at the end of the first PGD page (index 511).
    assert ops.map_pages(510 * SZ_1G, 0, SZ_1G, 4, Prot.READ) == 2 * SZ_1G
    ops._check()


def test_selftest_config_is_not_modified() -> None:
    cfg = IoPgtableCfg(PGSIZES[0] | SZ_64K, 52, 52)
    ops = alloc_io_pgtable_ops(IoPgtableFmt.ARM_64_LPAE_S1, cfg)
    assert cfg.pgsize_bitmap == PGSIZES[0] | SZ_64K and cfg.ias == 52  # frozen input
    assert (ops.cfg.pgsize_bitmap, ops.cfg.ias, ops.cfg.oas) == (PGSIZES[0], 48, 48)


CONFIGS_6_12 = [(pg, ias) for pg in PGSIZES for ias in ADDRESS_SIZES]


@pytest.mark.parametrize("fmt", [IoPgtableFmt.ARM_64_LPAE_S1, IoPgtableFmt.ARM_64_LPAE_S2])
@pytest.mark.parametrize(("pgsize", "ias"), CONFIGS_6_12)
def test_arm_lpae_run_tests_6_12(fmt: IoPgtableFmt, pgsize: int, ias: int) -> None:
    """6.12 ``arm_lpae_run_tests``: a partial unmap of a block unmaps exactly the page
    asked for ("Partial unmap"), which can then be mapped again ("Remap of partial
    unmap"); the full unmap of each size still returns that size."""
    cookie = object()
    tlb = RecordingTlb(cookie)
    cfg = IoPgtableCfg(pgsize, ias, 48, coherent_walk=True, tlb=tlb, kernel=LINUX_6_12)
    ops = alloc_io_pgtable_ops(fmt, cfg, cookie)
    tlb.bitmap = ops.cfg.pgsize_bitmap
    assert ops.iova_to_phys(42) == ops.iova_to_phys(SZ_1G + 42) == 0
    assert ops.iova_to_phys(SZ_2G + 42) == 0

    sizes = _sizes(ops.cfg.pgsize_bitmap)
    iova = 0
    for size in sizes:
        assert ops.map_pages(iova, iova, size, 1, RW_CACHE) == size
        with pytest.raises(AlreadyExists):
            ops.map_pages(iova, iova + size, size, 1, Prot.READ | Prot.NOEXEC)
        assert ops.iova_to_phys(iova + 42) == iova + 42
        iova += SZ_1G

    size = sizes[0]  # Partial unmap
    assert ops.unmap_pages(SZ_1G + size, size, 1, None) == size
    assert ops.iova_to_phys(SZ_1G + size + 42) == 0
    assert ops.iova_to_phys(SZ_1G + 42) == SZ_1G + 42  # the rest of the block stays
    assert ops.map_pages(SZ_1G + size, size, size, 1, Prot.READ) == size  # Remap
    assert ops.iova_to_phys(SZ_1G + size + 42) == size + 42

    iova = 0
    for size in sizes:  # Full unmap
        assert ops.unmap_pages(iova, size, 1, None) == size
        assert ops.iova_to_phys(iova + 42) == 0
        assert ops.map_pages(iova, iova, size, 1, Prot.WRITE) == size
        assert ops.iova_to_phys(iova + 42) == iova + 42
        iova += SZ_1G
    ops._check()
    ops.free()
    assert ops.mem.iommu_pages == 0
    assert "Unmap of a partial large IOPTE is not allowed" not in ops.stats.warnings
