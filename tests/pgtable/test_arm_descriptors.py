"""Golden descriptor values worked out by hand from the Arm ARM (DDI0487 D8.3).

Stage-1 block/page descriptor: [1:0] type (01 block, 11 page at level 3),
[4:2] AttrIndx, [5] NS, [7:6] AP (AP[1] unprivileged, AP[2] read-only),
[9:8] SH (10 outer, 11 inner), [10] AF, [11] nG, [47:12] OA, [51] DBM,
[54:53] PXN/UXN. Stage 2: [5:2] MemAttr, [7:6] S2AP (bit 6 read, 7 write).
Table descriptor: [1:0] 11, [47:12] next-level table, [63] NSTable.
With the 64K granule and 52-bit OAs, OA[51:48] sits in bits [15:12].
"""

from __future__ import annotations

import pytest

from iommulab import Prot
from iommulab.kernel import LINUX_7_0
from iommulab.pgtable import IoPgtableCfg, IoPgtableFmt, Quirk, alloc_io_pgtable_ops
from iommulab.pgtable.arm_lpae import S1_LEAF, S2_LEAF, TABLE_DESC
from iommulab.sizes import SZ_1G, SZ_2M, SZ_4K, SZ_64K, SZ_512M

R, W, C, X, M, P = Prot.READ, Prot.WRITE, Prot.CACHE, Prot.NOEXEC, Prot.MMIO, Prot.PRIV
S1, S2 = IoPgtableFmt.ARM_64_LPAE_S1, IoPgtableFmt.ARM_64_LPAE_S2
G4K = SZ_4K | SZ_2M | SZ_1G


def _leaf(fmt: IoPgtableFmt, prot: int, pa: int, size: int = SZ_4K,
          quirks: Quirk = Quirk.NO_WARN, bitmap: int = G4K, oas: int = 48) -> int:
    cfg = IoPgtableCfg(bitmap, 48, oas, quirks=quirks, kernel=LINUX_7_0)  # NO_WARN, S2FWB
    ops = alloc_io_pgtable_ops(fmt, cfg)
    ops.map_pages(0x4000_0000, pa, size, 1, prot)
    return ops.pgtable_walk(0x4000_0000)[-1]


@pytest.mark.parametrize(("prot", "quirks", "pa", "size", "expected"), [
    # page, AttrIndx 1, AP[1], SH inner, AF, nG
    (R | W | C, Quirk(0), 0x8000_0000, SZ_4K, 0x0000_0000_8000_0F47),
    # read-only, non-cacheable, execute-never: AP[2], SH outer, XN
    (R | X, Quirk(0), 0x1234_5000, SZ_4K, 0x0060_0000_1234_5EC3),
    # 2M block of device memory: type 01, AttrIndx 2
    (R | W | M, Quirk(0), 0x4020_0000, SZ_2M, 0x0000_0000_4020_0E49),
    # HTTU: writable-and-tracked starts writable-dirty (DBM set, AP[2] clear)
    (R | W, Quirk.ARM_HD, 0x8000_1000, SZ_4K, 0x0008_0000_8000_1E43),
    # read-only stays read-only with ARM_HD (no DBM)
    (R, Quirk.ARM_HD, 0x8000_1000, SZ_4K, 0x0000_0000_8000_1EC3),
    # privileged only: AP[1] clear
    (R | W | P, Quirk(0), 0x8000_0000, SZ_4K, 0x0000_0000_8000_0E03),
    # write-only request still gives a read/write stage-1 entry
    (W, Quirk(0), 0x8000_0000, SZ_4K, 0x0000_0000_8000_0E43),
    # non-secure output: NS bit 5
    (R | W | C, Quirk.ARM_NS, 0x8000_0000, SZ_4K, 0x0000_0000_8000_0F67),
    # 1G block at level 1
    (R | W | C, Quirk(0), 0x1_4000_0000, SZ_1G, 0x0000_0001_4000_0F45),
])
def test_stage1_leaf(prot: int, quirks: Quirk, pa: int, size: int, expected: int) -> None:
    assert _leaf(S1, prot, pa, size, quirks) == expected


@pytest.mark.parametrize(("prot", "quirks", "expected"), [
    (R | W | C, Quirk(0), 0x8000_07FF),  # MemAttr 1111, S2AP 11, SH inner, AF
    (R | C, Quirk.ARM_S2FWB, 0x8000_075B),  # FWB: MemAttr 0110; S2AP 01
    (W | M, Quirk(0), 0x8000_0687),  # device: MemAttr 0001; S2AP 10; SH outer
    (R, Quirk(0), 0x8000_0657),  # normal non-cacheable: MemAttr 0101
    (R | W | X, Quirk(0), 0x0060_0000_8000_06D7),  # XN
])
def test_stage2_leaf(prot: int, quirks: Quirk, expected: int) -> None:
    assert _leaf(S2, prot, 0x8000_0000, quirks=quirks) == expected


def test_table_descriptors() -> None:
    ops = alloc_io_pgtable_ops(S1, IoPgtableCfg(G4K, 48, 48))
    ops.map_pages(0, 0x8000_0000, SZ_4K, 1, R | W)
    walk = ops.pgtable_walk(0)
    for pte in walk[:-1]:
        assert pte & 0b11 == 0b11 and not pte & ~((1 << 48) - 1)  # table, no upper bits
        assert ops.mem.region_at(pte & 0xFFFF_FFFF_F000) is not None
    ns = alloc_io_pgtable_ops(S1, IoPgtableCfg(G4K, 48, 48, quirks=Quirk.ARM_NS))
    ns.map_pages(0, 0x8000_0000, SZ_4K, 1, R | W)
    assert all(pte >> 63 == 1 for pte in ns.pgtable_walk(0)[:-1])  # NSTable


def test_noncoherent_tables_carry_sw_sync() -> None:
    ops = alloc_io_pgtable_ops(S1, IoPgtableCfg(G4K, 48, 48, coherent_walk=False))
    ops.map_pages(0, 0x8000_0000, SZ_4K, 8, R | W)
    walk = ops.pgtable_walk(0)
    assert all(pte >> 55 & 1 for pte in walk[:-1]) and not walk[-1] >> 55 & 1
    # pgd map + 3 table allocs + 3 table entries + 1 run of leaves
    assert ops.stats.cache_syncs == 8
    assert TABLE_DESC.decode(walk[0])["SW_SYNC"] == 1


def test_52bit_output_address_packing_with_64k_granule() -> None:
    pa = 0x000F_0012_3456_0000  # OA[51:48] = 0xF
    pte = _leaf(S1, R | W, pa, SZ_64K, bitmap=SZ_64K | SZ_512M, oas=52)
    # By the Arm ARM: OA[47:16] in place, OA[51:48] in bits [15:12].
    oa_bits = (pa & ((1 << 48) - 1) & ~0xFFFF) | ((pa >> 48) & 0xF) << 12
    assert pte == oa_bits | 0xE43  # page, AP[1], SH outer, AF, nG
    ops = alloc_io_pgtable_ops(S1, IoPgtableCfg(SZ_64K | SZ_512M, 48, 52))
    ops.map_pages(0x4000_0000, pa, SZ_64K, 1, R | W)
    assert ops.iova_to_phys(0x4000_0000 + 0x1234) == pa + 0x1234


def test_layouts_decode_and_describe() -> None:
    pte = 0x0060_0000_1234_5EC3
    fields = S1_LEAF.decode(pte)
    assert fields["OA"] == 0x1234_5000 and fields["AP_RDONLY"] == 1 and fields["XN"] == 3
    assert S1_LEAF.encode(TYPE=3, AP_UNPRIV=1, AP_RDONLY=1, SH=2, AF=1, nG=1, XN=3,
                          OA=0x1234_5000) == pte
    assert S2_LEAF.decode(0x8000_07FF)["S2AP"] == 3
    assert "OA=0x12345000" in S1_LEAF.describe(pte)
    assert S1_LEAF.decode(pte | 1 << 60)["RES"] == 1 << 60
    with pytest.raises(ValueError, match="AF"):
        S1_LEAF.encode(AF=2)
