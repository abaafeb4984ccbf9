"""Geometry, register values and allocation failures of the ARM LPAE formats."""

from __future__ import annotations

import errno

import pytest

from iommulab.errors import InvalidArgument, OutOfMemory
from iommulab.kernel import LINUX_6_12, LINUX_7_0, KernelVersion
from iommulab.mem import PhysMem
from iommulab.pgtable import IoPgtableCfg, IoPgtableFmt, Quirk, alloc_io_pgtable_ops
from iommulab.sizes import SZ_1G, SZ_2M, SZ_4K, SZ_16K, SZ_32M, SZ_64K, SZ_512M

S1, S2 = IoPgtableFmt.ARM_64_LPAE_S1, IoPgtableFmt.ARM_64_LPAE_S2
G4K, G16K, G64K = SZ_4K | SZ_2M | SZ_1G, SZ_16K | SZ_32M, SZ_64K | SZ_512M

# (granule bitmap, ias, S1 levels, S1 PGD entries, S2 levels, S2 PGD entries) with
# oas = ias, from the reference's re-derivation of the Linux 7.0 rules.
GEOMETRY_7_0 = [
    (G4K, 32, 3, 4, 3, 4), (G4K, 36, 3, 64, 3, 64), (G4K, 40, 4, 2, 3, 1024),
    (G4K, 42, 4, 8, 3, 4096), (G4K, 44, 4, 32, 4, 32), (G4K, 48, 4, 512, 4, 512),
    (G16K, 32, 2, 128, 2, 128), (G16K, 36, 2, 2048, 2, 2048), (G16K, 40, 3, 16, 2, 32768),
    (G16K, 42, 3, 64, 3, 64), (G16K, 44, 3, 256, 3, 256), (G16K, 48, 4, 2, 3, 4096),
    (G64K, 32, 2, 8, 2, 8), (G64K, 36, 2, 128, 2, 128), (G64K, 40, 2, 2048, 2, 2048),
    (G64K, 42, 2, 8192, 2, 8192), (G64K, 44, 3, 4, 3, 4), (G64K, 48, 3, 64, 3, 64),
]


# Linux 6.12 concatenates a stage-2 PGD only when the walk would start at level 0 and
# at most 16 tables do (arm_64_lpae_alloc_pgtable_s2): 16K with ias 40 starts at
# level 1 and stays there; every other row is the same as 7.0's.
GEOMETRY_6_12 = [(G16K, 40, 3, 16, 3, 16) if (b, i) == (G16K, 40) else (b, i, *rest)
                 for b, i, *rest in GEOMETRY_7_0]


@pytest.mark.parametrize("kernel", [LINUX_6_12, LINUX_7_0])
@pytest.mark.parametrize("row", range(len(GEOMETRY_7_0)))
def test_levels_and_pgd_entries(kernel: KernelVersion, row: int) -> None:
    bitmap, ias, l1, e1, l2, e2 = (GEOMETRY_7_0 if kernel == LINUX_7_0 else GEOMETRY_6_12)[row]
    for fmt, levels, entries in ((S1, l1, e1), (S2, l2, e2)):
        ops = alloc_io_pgtable_ops(fmt, IoPgtableCfg(bitmap, ias, ias, kernel=kernel))
        assert (len(ops.format.levels), ops.format.levels[0].entries) == (levels, entries)
        # The PGD is allocated whole pages (iommu_alloc_pages rounds up), naturally aligned.
        pgd_bytes = max(entries * 8, SZ_4K)
        assert ops.stats.table_bytes == pgd_bytes and ops.pgd_pa % pgd_bytes == 0
        ops.free()


def test_stage1_registers_4k_48bit_coherent() -> None:
    ops = alloc_io_pgtable_ops(S1, IoPgtableCfg(G4K, 48, 48))
    s1 = ops.cfg.arm_lpae_s1_cfg
    assert s1 is not None
    # TCR: T0SZ = 64 - 48, TG0 4K = 0, SH inner = 3, IRGN/ORGN WBWA = 1, IPS 48-bit = 5.
    assert (s1.tcr.tsz, s1.tcr.tg, s1.tcr.sh, s1.tcr.irgn, s1.tcr.orgn, s1.tcr.ips) == (
        16, 0, 3, 1, 1, 5)
    # MAIR: attr0 NC 0x44, attr1 WBRWA 0xff, attr2 Device-nGnRE 0x04, attr3 0xf4.
    assert s1.mair == 0xF404FF44
    assert s1.ttbr == ops.pgd_pa
    assert ops.cfg.arm_lpae_s2_cfg is None


def test_stage1_registers_noncoherent_outer_wbwa_ttbr1() -> None:
    cfg = IoPgtableCfg(G16K, 40, 44, quirks=Quirk.ARM_OUTER_WBWA | Quirk.ARM_TTBR1,
                       coherent_walk=False)
    tcr = alloc_io_pgtable_ops(S1, cfg).cfg.arm_lpae_s1_cfg
    assert tcr is not None
    # TG1 16K = 1 (TTBR1 encoding), SH outer = 2, IRGN NC, ORGN WBWA, IPS 44-bit = 4.
    assert (tcr.tcr.tg, tcr.tcr.sh, tcr.tcr.irgn, tcr.tcr.orgn, tcr.tcr.ips, tcr.tcr.tsz) == (
        1, 2, 0, 1, 4, 24)


@pytest.mark.parametrize(("bitmap", "ias", "sl0", "tg"), [
    # VTCR_EL2.SL0 (DDI0487 D8.2): 4K: 0=L2 1=L1 2=L0; 16K and 64K: 0=L3 1=L2 2=L1 3=L0.
    (G4K, 40, 1, 0),  # concatenated, starts at level 1
    (G4K, 48, 2, 0),  # starts at level 0
    (G4K, 32, 1, 0),  # level 1
    (G16K, 48, 2, 2),  # concatenated, level 1
    (G16K, 40, 1, 2),  # concatenated, level 2
    (G64K, 48, 2, 1),  # level 1
    (G64K, 42, 1, 1),  # level 2
])
def test_stage2_vtcr_sl0(bitmap: int, ias: int, sl0: int, tg: int) -> None:
    ops = alloc_io_pgtable_ops(S2, IoPgtableCfg(bitmap, ias, ias, kernel=LINUX_7_0))
    s2 = ops.cfg.arm_lpae_s2_cfg
    assert s2 is not None
    assert (s2.vtcr.sl, s2.vtcr.tg, s2.vtcr.tsz) == (sl0, tg, 64 - ias)
    assert s2.vttbr == ops.pgd_pa


def test_granule_follows_page_size() -> None:
    both = G4K | G64K
    assert alloc_io_pgtable_ops(S1, IoPgtableCfg(both, 48, 48)).format.granule == SZ_4K
    arm64k = alloc_io_pgtable_ops(S1, IoPgtableCfg(both, 48, 48), cpu_page_size=SZ_64K)
    assert arm64k.format.granule == SZ_64K
    # Nothing at PAGE_SIZE, nothing below it: the smallest above it.
    assert alloc_io_pgtable_ops(S1, IoPgtableCfg(G16K | G64K, 48, 48)).format.granule == SZ_16K
    # 64K granule, oas > 48: the 4TB level-1 block; ias/oas clamp at 52.
    big = alloc_io_pgtable_ops(S1, IoPgtableCfg(G64K | 1 << 42, 60, 52))
    assert big.cfg.pgsize_bitmap == G64K | 1 << 42 and (big.cfg.ias, big.cfg.oas) == (52, 52)


def test_a_52_bit_pgd_need_not_be_64k_aligned() -> None:
    # The 8K PGD of a 52-bit 64K-granule table is only 8K aligned; no descriptor points
    # at it, so its bits 15:12 must not go through the PA[51:48] packing (freeing it did).
    mem = PhysMem("1G")
    mem.alloc_pages(1)  # an 8K block first: the PGD lands 8K past a 64K boundary
    ops = alloc_io_pgtable_ops(S1, IoPgtableCfg(G64K, 52, 52), mem=mem)
    assert ops.pgd_pa % SZ_64K == 0x2000 and ops.format.levels[0].table_bytes == 0x2000
    ops.map_pages(1 << 51, 0x8000_0000, SZ_64K, 1, 3)
    assert ops.iova_to_phys((1 << 51) + 5) == 0x8000_0005
    ops._check()
    ops.free()
    assert mem.iommu_pages == 0


@pytest.mark.parametrize(("fmt", "cfg", "match"), [
    (S1, IoPgtableCfg(SZ_1G, 48, 48), "no 4K, 16K or 64K granule"),
    (S1, IoPgtableCfg(G4K, 48, 48, quirks=Quirk.ARM_S2FWB), "ARM_S2FWB"),
    (S2, IoPgtableCfg(G4K, 48, 48, quirks=Quirk.ARM_HD), "ARM_HD"),
    (S2, IoPgtableCfg(G4K, 48, 48, quirks=Quirk.ARM_NS), "ARM_NS"),
    (S1, IoPgtableCfg(G4K, 48, 48, quirks=Quirk.NO_PERMS), "NO_PERMS"),
    (S1, IoPgtableCfg(G4K, 48, 48, quirks=Quirk.ARM_OUTER_WBWA), "non-coherent"),
    (S1, IoPgtableCfg(G4K, 48, 34), "oas 34"),
    (S2, IoPgtableCfg(G4K, 48, 38), "oas 38"),
    (S1, IoPgtableCfg(G4K, 12, 48), "ias 12"),
    (IoPgtableFmt.ARM_32_LPAE_S1, IoPgtableCfg(G4K, 36, 40), "ias 36"),
    (IoPgtableFmt.ARM_32_LPAE_S2, IoPgtableCfg(G4K, 40, 44), "oas 44"),
    (IoPgtableFmt.APPLE_DART, IoPgtableCfg(G4K, 40, 40), "not modelled"),
])
def test_invalid_configurations_fail(fmt: IoPgtableFmt, cfg: IoPgtableCfg, match: str) -> None:
    mem = PhysMem("64M")
    with pytest.raises(InvalidArgument, match=match) as exc:
        alloc_io_pgtable_ops(fmt, cfg, mem=mem)
    assert exc.value.errno == errno.EINVAL
    assert mem.frames.allocated_blocks == 0


def test_stage2_concatenation_beyond_16_tables_fails() -> None:
    # 16K, ias = oas = 40: 16 level-1 entries become 16 concatenated level-2
    # tables (32768 entries). With ias 44 there would be 256 level-1 entries.
    ops = alloc_io_pgtable_ops(S2, IoPgtableCfg(G16K, 40, 40, kernel=LINUX_7_0))
    assert ops.format.levels[0].entries == 32768
    with pytest.raises(InvalidArgument, match="exceeds 16"):
        alloc_io_pgtable_ops(S2, IoPgtableCfg(G16K, 44, 40, kernel=LINUX_7_0))


@pytest.mark.parametrize(("bitmap", "ias", "oas", "levels", "entries", "sl0"), [
    (G4K, 40, 48, 3, 1024, 1),  # level 0 with 2 tables: concatenated (7.0: only for oas 40/42)
    (G16K, 40, 40, 3, 16, 2),  # starts at level 1: never concatenated (7.0: 16 tables)
    (G16K, 44, 40, 3, 256, 2),  # level 1 again: no WARN, no NULL (7.0 refuses it)
    (G4K, 44, 44, 4, 32, 2),  # level 0 but 32 tables: not concatenated
])
def test_stage2_concatenation_6_12_whenever_level_0_fits_16_tables(
        bitmap: int, ias: int, oas: int, levels: int, entries: int, sl0: int) -> None:
    """arm_64_lpae_alloc_pgtable_s2 (6.12): ``if (data->start_level == 0)`` and
    ``pgd_pages <= ARM_LPAE_S2_MAX_CONCAT_PAGES``, then start one level lower."""
    ops = alloc_io_pgtable_ops(S2, IoPgtableCfg(bitmap, ias, oas, kernel=LINUX_6_12))
    assert (len(ops.format.levels), ops.format.levels[0].entries) == (levels, entries)
    s2 = ops.cfg.arm_lpae_s2_cfg
    assert s2 is not None and s2.vtcr.sl == sl0


@pytest.mark.parametrize(("fmt", "quirks"), [
    (S1, Quirk.NO_WARN), (S2, Quirk.NO_WARN), (S2, Quirk.ARM_S2FWB)])
def test_6_12_knows_neither_no_warn_nor_s2fwb(fmt: IoPgtableFmt, quirks: Quirk) -> None:
    """Linux 6.12: stage 1 takes NS|TTBR1|OUTER_WBWA|HD, stage 2 no quirk at all
    (``if (cfg->quirks) return NULL``); IO_PGTABLE_QUIRK_NO_WARN and _ARM_S2FWB came later."""
    with pytest.raises(InvalidArgument, match=quirks.name or ""):
        alloc_io_pgtable_ops(fmt, IoPgtableCfg(G4K, 48, 48, quirks=quirks, kernel=LINUX_6_12))
    assert alloc_io_pgtable_ops(fmt, IoPgtableCfg(G4K, 48, 48, quirks=quirks,
                                                  kernel=LINUX_7_0)).cfg.quirks == quirks


def test_32bit_formats_restrict_to_4k() -> None:
    ops = alloc_io_pgtable_ops(IoPgtableFmt.ARM_32_LPAE_S1, IoPgtableCfg(G4K | G64K, 32, 40))
    assert ops.cfg.pgsize_bitmap == G4K


def test_allocation_failure_is_enomem_and_leaks_nothing() -> None:
    mem = PhysMem("64M")
    for nth in (1, 2):  # kmalloc of the table object, then the PGD pages
        mem.fail_nth.arm(nth)
        with pytest.raises(OutOfMemory):
            alloc_io_pgtable_ops(S1, IoPgtableCfg(G4K, 48, 48), mem=mem)
        assert mem.frames.allocated_blocks == 0
    mem.fail_nth.arm(3)
    ops = alloc_io_pgtable_ops(S1, IoPgtableCfg(G4K, 48, 48), mem=mem)
    assert not mem.fail_nth.triggered
    ops.free()
