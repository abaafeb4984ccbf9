"""ARM LPAE (VMSAv8-64 long descriptor) stage 1 and stage 2, as io-pgtable-arm.c.

Sources: drivers/iommu/io-pgtable-arm.c and io-pgtable-arm.h (Linux 6.12 and
7.0), Arm DDI0487 D8 (translation table format, descriptor bits) and the
SMMUv3 spec for the TCR/VTCR fields. The geometry follows
``arm_lpae_alloc_pgtable`` and ``arm_lpae_restrict_pgsizes``; stage-2
concatenation follows ``arm_lpae_concat_mandatory`` (7.0; DDI0487 K.a R_DXBSH /
R_SRKBC) or 6.12's "level 0 with at most 16 tables"; descriptors follow
``arm_lpae_prot_to_pte``, ``paddr_to_iopte`` and ``iopte_to_paddr``. Where the
two releases differ the table follows ``cfg.kernel``: the quirks each stage
accepts, the stage-2 concatenation rule, and the partial unmap of a block,
which 6.12 splits (:func:`split_blk_unmap`) and 6.13+ refuses.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ..errors import InvalidArgument, OutOfMemory
from ..kernel import LINUX_7_0
from ..mem import FailNth
from ..prot import Prot
from ..sizes import SZ_1G, SZ_2M, SZ_4K, SZ_16K, SZ_32M, SZ_64K, SZ_512M
from .bits import Field, Layout
from .cfg import (
    ArmLpaeS1Cfg,
    ArmLpaeS2Cfg,
    ArmLpaeTcr,
    ArmLpaeVtcr,
    IoPgtableCfg,
    IoPgtableFmt,
    Quirk,
)
from .format import INVALID, LEAF, TABLE, BoolArray, Level, SplitBlkUnmap, U64Array

if TYPE_CHECKING:
    from .walker import IoPgtable

__all__ = [
    "S1_LEAF",
    "S2_LEAF",
    "TABLE_DESC",
    "ArmLpaeFormat",
    "arm_lpae_alloc",
]

ARM_LPAE_MAX_ADDR_BITS = 52
ARM_LPAE_S2_MAX_CONCAT_PAGES = 16
ARM_LPAE_MAX_LEVELS = 4

# Descriptor bit tables (DDI0487 D8.3; macro names from io-pgtable-arm.c).
_TYPE = Field("TYPE", 1, 0, "0b01 block, 0b11 table (page at level 3)")
_OA = Field("OA", 47, 12, "output address; with a 64K granule PA[51:48] sits in 15:12",
            address=True)
_SH = Field("SH", 9, 8, "shareability: 0 non, 2 outer, 3 inner")
_AF = Field("AF", 10, 10, "access flag")
_DBM = Field("DBM", 51, 51, "dirty bit modifier (HTTU)")
_XN = Field("XN", 54, 53, "execute never (UXN|PXN)")
# Bits 58:55 of a leaf are for software; the lab marks pages split_blocks made.
_SW_SPLIT = Field("SW_SPLIT", 56, 56, "lab: page made by split_blocks (software bit)")

S1_LEAF = Layout("ARM LPAE stage-1 leaf", (
    _TYPE,
    Field("ATTRINDX", 4, 2, "MAIR index: 0 NC, 1 cache, 2 device, 3 inner-NC outer-WB"),
    Field("NS", 5, 5, "non-secure output (QUIRK_ARM_NS)"),
    Field("AP_UNPRIV", 6, 6, "AP[1]: EL0/unprivileged access"),
    Field("AP_RDONLY", 7, 7, "AP[2]: read-only; the writable-clean state with DBM"),
    _SH, _AF,
    Field("nG", 11, 11, "not global (ASID-tagged)"),
    _OA, _DBM, _XN, _SW_SPLIT,
))

S2_LEAF = Layout("ARM LPAE stage-2 leaf", (
    _TYPE,
    Field("MEMATTR", 5, 2, "0xf OIWB, 0x5 NC, 0x1 device, 0x6 FWB write-back"),
    Field("S2AP", 7, 6, "bit 6 read, bit 7 write"),
    _SH, _AF, _OA, _DBM, _XN, _SW_SPLIT,
))

TABLE_DESC = Layout("ARM LPAE table", (
    _TYPE,
    Field("NLTA", 47, 12, "next-level table address", address=True),
    Field("SW_SYNC", 55, 55, "software: synced to a non-coherent walker"),
    Field("NSTABLE", 63, 63, "next level is non-secure (QUIRK_ARM_NS)"),
))

TYPE_MASK = _TYPE.mask
TYPE_BLOCK = 1
TYPE_TABLE = 3
TYPE_PAGE = 3
ADDR_MASK = _OA.mask  # GENMASK_ULL(47, 12)
PTE_AF = _AF.mask
PTE_DBM = _DBM.mask
PTE_XN = _XN.mask
PTE_SW_SPLIT = _SW_SPLIT.mask
PTE_nG = S1_LEAF["nG"].mask
PTE_NS = S1_LEAF["NS"].mask
PTE_AP_UNPRIV = S1_LEAF["AP_UNPRIV"].mask
PTE_AP_RDONLY = S1_LEAF["AP_RDONLY"].mask
PTE_AP_WR_CLEAN_MASK = PTE_AP_RDONLY | PTE_DBM
PTE_SW_SYNC = TABLE_DESC["SW_SYNC"].mask
PTE_NSTABLE = TABLE_DESC["NSTABLE"].mask
# ARM_LPAE_PTE_ATTR_MASK (6.12): what iopte_prot() keeps of a block for the pages a
# split makes: bits 11:2, DBM and XN; not the contiguous bit nor the software bits.
PTE_ATTR_MASK = (0x3FF << 2) | PTE_XN | PTE_DBM
SH_OS = _SH.put(2)
SH_IS = _SH.put(3)
HAP_READ = 1 << 6
HAP_WRITE = 2 << 6
ATTRINDX_SHIFT = 2
MAIR_ATTR_IDX_NC, MAIR_ATTR_IDX_CACHE, MAIR_ATTR_IDX_DEV, MAIR_ATTR_IDX_INC_OCACHE = 0, 1, 2, 3
MEMATTR_FWB_WB = 0x6 << 2
MEMATTR_OIWB = 0xF << 2
MEMATTR_NC = 0x5 << 2
MEMATTR_DEV = 0x1 << 2

# MAIR attribute encodings and the register value arm_64_lpae_alloc_pgtable_s1 builds.
MAIR_ATTR_DEVICE, MAIR_ATTR_NC, MAIR_ATTR_INC_OWBRWA, MAIR_ATTR_WBRWA = 0x04, 0x44, 0xF4, 0xFF
MAIR = (MAIR_ATTR_NC << (MAIR_ATTR_IDX_NC << 3)
        | MAIR_ATTR_WBRWA << (MAIR_ATTR_IDX_CACHE << 3)
        | MAIR_ATTR_DEVICE << (MAIR_ATTR_IDX_DEV << 3)
        | MAIR_ATTR_INC_OWBRWA << (MAIR_ATTR_IDX_INC_OCACHE << 3))

# TCR field encodings (io-pgtable-arm.h).
TCR_TG0 = {SZ_4K: 0, SZ_64K: 1, SZ_16K: 2}
TCR_TG1 = {SZ_16K: 1, SZ_4K: 2, SZ_64K: 3}
TCR_SH_OS, TCR_SH_IS = 2, 3
TCR_RGN_NC, TCR_RGN_WBWA = 0, 1
TCR_PS = {32: 0, 36: 1, 40: 2, 42: 3, 44: 4, 48: 5, 52: 6}

S1_QUIRKS = Quirk.ARM_NS | Quirk.ARM_TTBR1 | Quirk.ARM_OUTER_WBWA | Quirk.ARM_HD | Quirk.NO_WARN
S2_QUIRKS = Quirk.ARM_S2FWB | Quirk.NO_WARN
# Linux 6.12 knows neither NO_WARN nor S2FWB, and its stage 2 takes no quirk at all
# ("The NS quirk doesn't apply at stage 2": if (cfg->quirks) return NULL).
S1_QUIRKS_6_12 = Quirk.ARM_NS | Quirk.ARM_TTBR1 | Quirk.ARM_OUTER_WBWA | Quirk.ARM_HD
S2_QUIRKS_6_12 = Quirk(0)
_STAGE1 = (IoPgtableFmt.ARM_64_LPAE_S1, IoPgtableFmt.ARM_32_LPAE_S1)
_STAGE2 = (IoPgtableFmt.ARM_64_LPAE_S2, IoPgtableFmt.ARM_32_LPAE_S2)
LPAE_FORMATS = _STAGE1 + _STAGE2


def _fls(x: int) -> int:
    return x.bit_length() - 1


def _ffs(x: int) -> int:
    return (x & -x).bit_length() - 1


def restrict_pgsizes(cfg: IoPgtableCfg, cpu_page_size: int) -> IoPgtableCfg:
    """``arm_lpae_restrict_pgsizes``: one granule, its block sizes, clamped ias/oas."""
    bitmap = cfg.pgsize_bitmap
    page_mask = ~(cpu_page_size - 1)
    if bitmap & cpu_page_size:
        granule = cpu_page_size
    elif bitmap & ~page_mask:
        granule = 1 << _fls(bitmap & ~page_mask)
    elif bitmap & page_mask:
        granule = 1 << _ffs(bitmap & page_mask)
    else:
        granule = 0
    max_addr_bits = 48
    if granule == SZ_4K:
        page_sizes = SZ_4K | SZ_2M | SZ_1G
    elif granule == SZ_16K:
        page_sizes = SZ_16K | SZ_32M
    elif granule == SZ_64K:
        max_addr_bits = 52
        page_sizes = SZ_64K | SZ_512M
        if cfg.oas > 48:
            page_sizes |= 1 << 42  # 4TB
    else:
        page_sizes = 0
    return replace(cfg, pgsize_bitmap=bitmap & page_sizes, ias=min(cfg.ias, max_addr_bits),
                   oas=min(cfg.oas, max_addr_bits))


@dataclass(frozen=True)
class _Geometry:
    bits_per_level: int
    start_level: int
    pgd_bits: int

    @property
    def granule(self) -> int:
        return 8 << self.bits_per_level


def _geometry(cfg: IoPgtableCfg) -> _Geometry:
    pg_shift = _ffs(cfg.pgsize_bitmap)
    bpl = pg_shift - 3
    va_bits = cfg.ias - pg_shift
    if va_bits <= 0:
        # The kernel does not check this and would compute a table with no levels.
        raise InvalidArgument(f"io-pgtable-arm: ias {cfg.ias} leaves no address bits above "
                              f"the {1 << pg_shift:#x} granule")
    levels = -(-va_bits // bpl)
    return _Geometry(bpl, ARM_LPAE_MAX_LEVELS - levels, va_bits - bpl * (levels - 1))


def _concat_mandatory(cfg: IoPgtableCfg, geo: _Geometry) -> bool:
    """``arm_lpae_concat_mandatory`` (Linux 7.0; DDI0487 K.a R_DXBSH, R_SRKBC)."""
    if cfg.kernel < LINUX_7_0:
        # 6.12 arm_64_lpae_alloc_pgtable_s2: concatenate whenever the walk starts at
        # level 0 and at most ARM_LPAE_S2_MAX_CONCAT_PAGES tables would do.
        return geo.start_level == 0 and 1 << geo.pgd_bits <= ARM_LPAE_S2_MAX_CONCAT_PAGES
    if geo.granule == SZ_16K and geo.start_level == 0:
        return cfg.oas == 48 or cfg.ias == 48
    if geo.granule == SZ_4K and geo.start_level == 0:
        return cfg.oas in (40, 42)
    return geo.granule == SZ_16K and geo.start_level == 1 and cfg.oas == 40


def _null(fmt: IoPgtableFmt, why: str) -> InvalidArgument:
    return InvalidArgument(f"alloc_io_pgtable_ops({fmt.name}): {why} "
                           "(the kernel's allocator returns NULL)")


def arm_lpae_alloc(fmt: IoPgtableFmt, cfg: IoPgtableCfg, cpu_page_size: int,
                   fail_nth: FailNth) -> tuple[ArmLpaeFormat, IoPgtableCfg]:
    """The ``arm_{32,64}_lpae_alloc_pgtable_s{1,2}`` checks and register values.

    Returns the format instance and the filled-in cfg (TTBR/VTTBR left 0 for
    the caller, which allocates the PGD). Raises InvalidArgument where the
    kernel returns NULL for a bad configuration, in the kernel's order.
    """
    stage1 = fmt in _STAGE1
    if fmt == IoPgtableFmt.ARM_32_LPAE_S1:
        if cfg.ias > 32 or cfg.oas > 40:
            raise _null(fmt, f"ias {cfg.ias} / oas {cfg.oas} exceed 32 / 40 bits")
        cfg = replace(cfg, pgsize_bitmap=cfg.pgsize_bitmap & (SZ_4K | SZ_2M | SZ_1G))
    elif fmt == IoPgtableFmt.ARM_32_LPAE_S2:
        if cfg.ias > 40 or cfg.oas > 40:
            raise _null(fmt, f"ias {cfg.ias} / oas {cfg.oas} exceed 40 bits")
        cfg = replace(cfg, pgsize_bitmap=cfg.pgsize_bitmap & (SZ_4K | SZ_2M | SZ_1G))
    if cfg.kernel < LINUX_7_0:
        allowed = S1_QUIRKS_6_12 if stage1 else S2_QUIRKS_6_12
    else:
        allowed = S1_QUIRKS if stage1 else S2_QUIRKS
    if cfg.quirks & ~allowed:
        raise _null(fmt, f"quirks {Quirk(cfg.quirks & ~allowed)!r} not supported "
                         f"(allowed: {allowed!r})")
    # arm_lpae_alloc_pgtable()
    cfg = restrict_pgsizes(cfg, cpu_page_size)
    if not cfg.pgsize_bitmap & (SZ_4K | SZ_16K | SZ_64K):
        raise _null(fmt, "no 4K, 16K or 64K granule left in pgsize_bitmap")
    if cfg.ias > ARM_LPAE_MAX_ADDR_BITS or cfg.oas > ARM_LPAE_MAX_ADDR_BITS:
        raise _null(fmt, f"ias {cfg.ias} / oas {cfg.oas} above {ARM_LPAE_MAX_ADDR_BITS} bits")
    fail_nth.check("kmalloc(arm_lpae_io_pgtable)")
    geo = _geometry(cfg)
    granule = geo.granule
    if stage1:
        if cfg.coherent_walk:
            sh, irgn, orgn = TCR_SH_IS, TCR_RGN_WBWA, TCR_RGN_WBWA
            if cfg.quirks & Quirk.ARM_OUTER_WBWA:
                raise _null(fmt, "QUIRK_ARM_OUTER_WBWA is only for non-coherent walks")
        else:
            sh, irgn = TCR_SH_OS, TCR_RGN_NC
            orgn = TCR_RGN_WBWA if cfg.quirks & Quirk.ARM_OUTER_WBWA else TCR_RGN_NC
        tg = (TCR_TG1 if cfg.quirks & Quirk.ARM_TTBR1 else TCR_TG0)[granule]
        if cfg.oas not in TCR_PS:
            raise _null(fmt, f"oas {cfg.oas} is not an architected output size")
        tcr = ArmLpaeTcr(ips=TCR_PS[cfg.oas], tg=tg, sh=sh, orgn=orgn, irgn=irgn,
                         tsz=64 - cfg.ias)
        cfg = replace(cfg, arm_lpae_s1_cfg=ArmLpaeS1Cfg(ttbr=0, tcr=tcr, mair=MAIR))
    else:
        if _concat_mandatory(cfg, geo):
            if (8 << geo.pgd_bits) // 8 > ARM_LPAE_S2_MAX_CONCAT_PAGES:
                raise _null(fmt, f"stage-2 concatenation of {1 << geo.pgd_bits} tables "
                                 f"exceeds {ARM_LPAE_S2_MAX_CONCAT_PAGES} (WARN_ON)")
            geo = _Geometry(geo.bits_per_level, geo.start_level + 1,
                            geo.pgd_bits + geo.bits_per_level)
        if cfg.coherent_walk:
            sh, irgn, orgn = TCR_SH_IS, TCR_RGN_WBWA, TCR_RGN_WBWA
        else:
            sh, irgn, orgn = TCR_SH_OS, TCR_RGN_NC, TCR_RGN_NC
        sl = geo.start_level + (1 if granule == SZ_4K else 0)  # SL0 differs for 4K
        if cfg.oas not in TCR_PS:
            raise _null(fmt, f"oas {cfg.oas} is not an architected output size")
        vtcr = ArmLpaeVtcr(ps=TCR_PS[cfg.oas], tg=TCR_TG0[granule], sh=sh, orgn=orgn,
                           irgn=irgn, tsz=64 - cfg.ias, sl=~sl & 3)
        cfg = replace(cfg, arm_lpae_s2_cfg=ArmLpaeS2Cfg(vttbr=0, vtcr=vtcr))
    return ArmLpaeFormat(fmt, cfg, geo), cfg


class ArmLpaeFormat:
    """The hooks of one ARM LPAE table instance (see :class:`~.format.PtFormat`)."""

    sw_sync_bit = PTE_SW_SYNC
    split_mark = PTE_SW_SPLIT
    kind_mask = TYPE_MASK
    table_key_mask = ADDR_MASK  # the NLTA field, packed as paddr_to_iopte packs it
    contig_leaves = None  # every leaf is one entry (the contiguous hint is not modelled)
    make_write_dirty = None

    def __init__(self, fmt: IoPgtableFmt, cfg: IoPgtableCfg, geo: _Geometry) -> None:
        self.fmt = fmt
        self.name = fmt.name
        self.stage1 = fmt in _STAGE1
        self.quirks = cfg.quirks
        self.ias, self.oas = cfg.ias, cfg.oas
        self.granule = geo.granule
        self.ptes_per_page = self.granule // 8
        bpl = geo.bits_per_level
        levels = []
        for lvl in range(geo.start_level, ARM_LPAE_MAX_LEVELS):
            shift = (ARM_LPAE_MAX_LEVELS - lvl) * bpl + 3  # ARM_LPAE_LVL_SHIFT
            top = lvl == geo.start_level
            idx_bits = geo.pgd_bits if top else bpl  # bits_per_level + ARM_LPAE_PGD_IDX
            entries = 1 << idx_bits
            levels.append(Level(lvl, shift, entries - 1, entries,
                                entries * 8 if top else self.granule))
        self.levels = tuple(levels)
        self.last_depth = len(levels) - 1
        # arm_lpae_map_pages' iaext test: all ones above ias with TTBR1, else zero
        self.ia_shift = self.ias
        self.ia_ext = (1 << (64 - self.ias)) - 1 if cfg.quirks & Quirk.ARM_TTBR1 else 0
        # 64K granule with 52-bit PAs folds PA[51:48] into bits 15:12.
        self._packed_oa = self.granule == SZ_64K and cfg.oas > 48
        self._leaf_type = tuple(TYPE_PAGE if d == self.last_depth else TYPE_BLOCK
                                for d in range(len(levels)))
        self._leaf_type_u64 = tuple(np.uint64(t) for t in self._leaf_type)
        self._table_bits = TYPE_TABLE | (PTE_NSTABLE if cfg.quirks & Quirk.ARM_NS else 0)
        # The walker's answer to unmapping part of a block: 6.12 splits it, 6.13+ refuse.
        self.split_blk_unmap: SplitBlkUnmap | None = \
            split_blk_unmap if cfg.kernel < (6, 13) else None
        # iopte_leaf / iopte_table by type bits; types 0b00 and 0b10 are invalid.
        self.kinds: tuple[tuple[int, ...], ...] = tuple(
            (INVALID, LEAF, INVALID, LEAF) if d == self.last_depth
            else (INVALID, LEAF, INVALID, TABLE)
            for d in range(len(levels)))
        self._steps = {d: np.arange(self.ptes_per_page, dtype=np.uint64)
                       * np.uint64(lvl.block_size)
                       for d, lvl in enumerate(levels)}

    # -- attributes ----------------------------------------------------------------
    def prot_to_attrs(self, prot: int) -> int:
        """``arm_lpae_prot_to_pte``: permission and memory-attribute bits (no type, no OA)."""
        q = self.quirks
        if self.stage1:
            pte = PTE_nG
            if not prot & Prot.WRITE and prot & Prot.READ:
                pte |= PTE_AP_RDONLY
            elif q & Quirk.ARM_HD:
                pte |= PTE_DBM
            if not prot & Prot.PRIV:
                pte |= PTE_AP_UNPRIV
            if prot & Prot.MMIO:
                pte |= MAIR_ATTR_IDX_DEV << ATTRINDX_SHIFT
            elif prot & Prot.CACHE:
                pte |= MAIR_ATTR_IDX_CACHE << ATTRINDX_SHIFT
        else:
            pte = 0  # HAP_FAULT
            if prot & Prot.READ:
                pte |= HAP_READ
            if prot & Prot.WRITE:
                pte |= HAP_WRITE
            if prot & Prot.MMIO:
                pte |= MEMATTR_DEV
            elif prot & Prot.CACHE:
                pte |= MEMATTR_FWB_WB if q & Quirk.ARM_S2FWB else MEMATTR_OIWB
            else:
                pte |= MEMATTR_NC
        pte |= SH_IS if prot & Prot.CACHE else SH_OS
        if prot & Prot.NOEXEC:
            pte |= PTE_XN
        if q & Quirk.ARM_NS:
            pte |= PTE_NS
        return pte | PTE_AF

    # -- entries ---------------------------------------------------------------------
    def is_leaf(self, pte: int, depth: int) -> bool:
        """``iopte_leaf``: type 0b11 at the last level, 0b01 above it."""
        return (pte & TYPE_MASK) == self._leaf_type[depth]

    def is_table(self, pte: int, depth: int) -> bool:
        """``iopte_table``: type 0b11 above the last level."""
        return depth != self.last_depth and (pte & TYPE_MASK) == TYPE_TABLE

    def leaf_mask(self, ptes: U64Array, depth: int) -> BoolArray:
        return cast(BoolArray, (ptes & np.uint64(TYPE_MASK)) == self._leaf_type_u64[depth])

    def table_mask(self, ptes: U64Array, depth: int) -> BoolArray:
        if depth == self.last_depth:
            return np.zeros(len(ptes), dtype=np.bool_)
        return cast(BoolArray, (ptes & np.uint64(TYPE_MASK)) == np.uint64(TYPE_TABLE))

    def make_table(self, table_pa: int, depth: int = 0) -> int:
        """``arm_lpae_install_table``'s new entry (NSTABLE with the ARM_NS quirk), the same
        at every depth."""
        return ((table_pa | (table_pa >> 36)) & ADDR_MASK) | self._table_bits

    def leaf_oa(self, pte: int) -> int:
        """``iopte_to_paddr`` (of a leaf or, as ``table_pa``, a table entry)."""
        paddr = pte & ADDR_MASK
        if self.granule < SZ_64K:
            return paddr
        return (paddr | (paddr << 36)) & (ADDR_MASK << 4)

    def leaf_value(self, attrs: int, depth: int, pa: int) -> int:
        """One leaf: ``attrs | type | paddr_to_iopte(pa)``."""
        return attrs | self._leaf_type[depth] | ((pa | (pa >> 36)) & ADDR_MASK)

    table_pa = leaf_oa

    def fill_leaves(self, out: U64Array, attrs: int, depth: int, pa: int, size: int) -> None:
        """``__arm_lpae_init_pte``: ``out[i] = attrs | type | paddr_to_iopte(pa + i*size)``."""
        n = len(out)
        base = attrs | self._leaf_type[depth]
        steps = self._steps[depth][:n]
        if not self._packed_oa and pa + n * size <= 1 << 48:
            np.add(steps, np.uint64(base | pa), out=out)  # OA field is linear here
            return
        pas = steps + np.uint64(pa)
        np.bitwise_and(pas | (pas >> np.uint64(36)), np.uint64(ADDR_MASK), out=out)
        out |= np.uint64(base)

    def fill_leaf_rows(self, rows: U64Array, attrs: int, depth: int, pa: int, size: int
                       ) -> None:
        """:meth:`fill_leaves` of whole leaf tables, one table per row, in one vector step
        (model-only bulk of ``__arm_lpae_init_pte`` over consecutive tables)."""
        k, n = rows.shape
        base = attrs | self._leaf_type[depth]
        if not self._packed_oa and pa + k * n * size <= 1 << 48:
            starts = np.arange(k, dtype=np.uint64) * np.uint64(n * size) + np.uint64(base | pa)
            np.add(self._steps[depth][:n][None, :], starts[:, None], out=rows)
            return
        for i in range(k):
            self.fill_leaves(rows[i], attrs, depth, pa + i * n * size, size)

    def make_tables(self, table_pas: U64Array) -> U64Array:
        """``make_table`` for many tables at once."""
        out = (table_pas | (table_pas >> np.uint64(36))) & np.uint64(ADDR_MASK)
        return cast(U64Array, out | np.uint64(self._table_bits))

    def make_leaves(self, attrs: U64Array, depth: int, oas: U64Array) -> U64Array:
        """``leaf_value`` elementwise (arrays broadcast): attrs | type | paddr_to_iopte(oa)."""
        packed = (oas | (oas >> np.uint64(36))) & np.uint64(ADDR_MASK)
        return cast(U64Array, packed | attrs | self._leaf_type_u64[depth])

    def leaf_oas(self, ptes: U64Array) -> U64Array:
        """``iopte_to_paddr`` of many leaves."""
        oa = ptes & np.uint64(ADDR_MASK)
        if self.granule < SZ_64K:
            return cast(U64Array, oa)
        return cast(U64Array, (oa | (oa << np.uint64(36))) & np.uint64(ADDR_MASK << 4))

    def leaf_attrs(self, ptes: U64Array) -> U64Array:
        """Attribute bits of leaves (no type, no OA), dirty state normalised to clean.

        A stage-1 DBM entry is writable-clean with AP[2] set and dirty
        without it; the normalised form sets AP[2] wherever DBM is, so two
        entries differing only in dirty state compare equal.
        """
        attrs = ptes & np.uint64(~(ADDR_MASK | TYPE_MASK) & (1 << 64) - 1)
        if self.stage1:
            attrs |= (attrs & np.uint64(PTE_DBM)) >> np.uint64(_DBM.lo - S1_LEAF["AP_RDONLY"].lo)
        return cast(U64Array, attrs)

    def run_rows(self, entries: U64Array, depth: int, ignore: int) -> BoolArray:
        """Rows of ``entries`` that are runs: leaves with contiguous OAs, one attribute set.

        Attributes are compared with the dirty state normalised and the
        ``ignore`` bits dropped. The OA field is linear in the OA within an
        aligned block (bits 15:12 of a 52-bit OA stay fixed), so a run is
        exactly ``row == row[0] + i * size``: a few passes over the stack.
        """
        norm = entries | ((entries & np.uint64(PTE_DBM)) >> np.uint64(_DBM.lo - 7)) \
            if self.stage1 else entries.copy()
        if ignore:
            norm &= np.uint64(~ignore & ((1 << 64) - 1))
        expected = self._steps[depth][:entries.shape[1]] + norm[:, :1]
        ok = (norm == expected).all(axis=1)
        ok &= (norm[:, 0] & np.uint64(TYPE_MASK)) == self._leaf_type_u64[depth]
        return cast(BoolArray, ok)

    def with_dirty(self, attrs: int) -> int:
        """The writable-dirty form of normalised attributes (stage-1 DBM entries)."""
        return attrs & ~PTE_AP_RDONLY if self.stage1 and attrs & PTE_DBM else attrs

    # -- dirty (HTTU DBM scheme) ---------------------------------------------------------
    def write_dirty_mask(self, ptes: U64Array) -> BoolArray:
        """``iopte_writeable_dirty``: DBM set and AP_RDONLY clear."""
        return cast(BoolArray, (ptes & np.uint64(PTE_AP_WR_CLEAN_MASK)) == np.uint64(PTE_DBM))

    def make_write_clean(self, ptes: U64Array, mask: BoolArray) -> None:
        """``iopte_set_writeable_clean`` on the masked (writable-dirty) entries.

        Sets AP[2] wherever DBM is set: the dirty entries are exactly the DBM
        entries without AP[2], so this changes the same entries, in one pass.
        """
        ptes |= (ptes & np.uint64(PTE_DBM)) >> np.uint64(_DBM.lo - S1_LEAF["AP_RDONLY"].lo)

    # -- text ---------------------------------------------------------------------------
    def describe(self, pte: int, depth: int) -> str:
        if pte == 0:
            return "empty"
        if self.is_table(pte, depth):
            return "table " + TABLE_DESC.describe(pte)
        kind = "page" if depth == self.last_depth else "block"
        layout = S1_LEAF if self.stage1 else S2_LEAF
        if not self.is_leaf(pte, depth):
            kind = "invalid"
        return f"{kind} " + layout.describe(pte)



def split_blk_unmap(pgtbl: IoPgtable, table: U64Array, idx: int, depth: int, iova: int,
                    size: int, pgcount: int, gather: Any) -> int | None:
    """``arm_lpae_split_blk_unmap`` (Linux 6.12; gone in 6.13 with commit 33729a5fc0ca).

    Unmapping ``size`` (smaller than the block) inside the block at ``table[idx]``
    (depth ``depth``) puts a table one level down in the block's place, mapping the
    whole block at that level's size with the block's ``iopte_prot`` attributes (bits
    11:2, DBM and XN, so the dirty state carries over; the software bits do not).
    When ``size`` is that level's size, the entries asked for (``pgcount``, up to the
    end of the new table) are left empty, each is added to ``gather`` (even a queued
    one: this path does not ask) and their bytes are returned. Otherwise None: the
    walker goes on unmapping inside the new table, which splits again one level down.
    0 when the table cannot be allocated (GFP_ATOMIC), with nothing changed. No walk
    flush: only the gathered pages are invalidated. O(entries of one table), in
    vector steps.
    """
    pt = pgtbl.format
    split_depth = depth + 1
    if split_depth >= len(pt.levels):  # WARN_ON(lvl == ARM_LPAE_MAX_LEVELS)
        pgtbl._warn("split_blk_unmap: no level below the block")
        return 0
    blk_pte = table.item(idx)
    try:
        table_pa, tablep = pgtbl._alloc_table(pt.granule)
    except OutOfMemory:
        return 0
    level = pt.levels[split_depth]
    per = pt.ptes_per_page
    entries = tablep[:per]
    pt.fill_leaves(entries, blk_pte & PTE_ATTR_MASK, split_depth, pt.leaf_oa(blk_pte),
                   level.block_size)
    first = num = 0
    if size == level.block_size:
        first = (iova >> level.shift) & level.index_mask
        num = min(pgcount, per - (first & (per - 1)))  # arm_lpae_max_entries
        entries[first:first + num] = 0
    cfg, stats = pgtbl.cfg, pgtbl.stats
    new = pt.make_table(table_pa)
    if not cfg.coherent_walk:
        # __arm_lpae_init_pte syncs each entry it writes, arm_lpae_install_table the
        # new table entry, which then carries the software "synced" bit.
        stats.cache_syncs += per - num + 1
        stats.cache_sync_bytes += 8 * (per - num + 1)
        new |= pt.sw_sync_bit
    table[idx] = new
    if size != level.block_size:
        return None
    if cfg.tlb is not None:
        cfg.tlb.tlb_add_pages(gather, iova, size, num, pgtbl.cookie)
    return num * size
