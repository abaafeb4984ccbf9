"""Intel VT-d second-stage (second-level) paging entries, as the intel-iommu driver writes them.

Sources: drivers/iommu/intel/iommu.h (``DMA_PTE_READ``/``WRITE``/``LARGE_PAGE``/``SNP``,
``dma_pte_present``, ``dma_pte_superpage``), iommu.c (``pfn_to_dma_pte`` installs
tables as ``phys | DMA_PTE_READ | DMA_PTE_WRITE``; ``__domain_mapping`` leaves as
``phys | prot | LARGE_PAGE`` above level 1; ``intel_iommu_map`` takes READ/WRITE
from the IOMMU prot and SNP only when ``set_pte_snp``), and the VT-d spec
(rev. 4, 9.8 "Second-Stage Paging Entries"), and for Linux 7.0 generic_pt's
``fmt/vtdss.h``. A table of 512 entries per 4K page, 3, 4 or 5 levels; the depth
(SAGAW) and the IOVA width (MGAW) are separate, so a 4-level table may hold a
46-bit or even a 39-bit IOVA space. Legacy (non-scalable) mode has no
access/dirty bits, so no dirty tracking.
Lab: the kernel's VT-d tables are not an io-pgtable format (they are generic_pt
``vtdss`` in Linux 7.0); the model keeps them in the shared walker's table storage.
The kernel's map and unmap algorithms run on it from :mod:`.vtd_legacy` (6.12's
intel-iommu code) and :mod:`.iommu_pt` (7.0's generic_pt); the walker's own
``map_pages``/``unmap_pages`` are the lab's io-pgtable view of the format.
"""

from __future__ import annotations

from typing import cast

import numpy as np

from ..errors import InvalidArgument
from ..prot import Prot
from ..sizes import SZ_1G, SZ_2M, SZ_4K
from .bits import Field, Layout
from .cfg import IoPgtableCfg
from .format import INVALID, LEAF, TABLE, BoolArray, Level, U64Array

__all__ = ["VTD_SS_LEAF", "VTD_SS_TABLE", "VtdSsFormat", "vtd_levels_for", "vtd_ss_alloc"]

DMA_PTE_READ = 1 << 0
DMA_PTE_WRITE = 1 << 1
DMA_PTE_LARGE_PAGE = 1 << 7
DMA_PTE_SNP = 1 << 11
#: ``DMA_SL_PTE_DIRTY``: bit 9, which a scalable-mode unit sets with SSADE (bit 8 is A)
DMA_SL_PTE_DIRTY = 1 << 9
DMA_SL_PTE_ACCESS = 1 << 8
#: the state a unit with SSADE writes into leaves: the lab's merge compares without it
_HW_STATE = DMA_SL_PTE_ACCESS | DMA_SL_PTE_DIRTY
#: 6.12 first-level domains (``use_first_level``) put US and A in every table entry, and
#: US, A and (writable) D in every leaf (``pfn_to_dma_pte``, ``__domain_mapping``)
DMA_FL_PTE_US, DMA_FL_PTE_ACCESS, DMA_FL_PTE_DIRTY = 1 << 2, 1 << 5, 1 << 6
FL_TABLE_BITS = DMA_FL_PTE_US | DMA_FL_PTE_ACCESS

_R = Field("R", 0, 0, "read")
_W = Field("W", 1, 1, "write")
_ADDR = Field("ADDR", 51, 12, "address of the page, superpage or next table", address=True)
# Bits 61:52 are ignored by hardware; the lab marks pages split_blocks made.
_SW_SPLIT = Field("SW_SPLIT", 58, 58, "lab: page made by split_blocks (ignored bit)")

VTD_SS_LEAF = Layout("VT-d second-stage leaf", (
    _R, _W,
    Field("X", 2, 2, "execute (requests with PASID only)"),
    Field("EMT", 5, 3, "extended memory type (only with extended capability)"),
    Field("IPAT", 6, 6, "ignore PAT"),
    Field("PS", 7, 7, "superpage (2M at level 2, 1G at level 3)"),
    Field("A", 8, 8, "accessed (scalable mode with SSADE)"),
    Field("D", 9, 9, "dirty (scalable mode with SSADE)"),
    Field("SNP", 11, 11, "snoop: force a snooped access"),
    _ADDR, _SW_SPLIT,
))
VTD_SS_TABLE = Layout("VT-d second-stage table", (_R, _W, _ADDR))

ADDR_MASK = _ADDR.mask
PTE_SW_SPLIT = _SW_SPLIT.mask
_PRESENT = DMA_PTE_READ | DMA_PTE_WRITE
_KIND_MASK = DMA_PTE_LARGE_PAGE | _PRESENT
_PGSIZES = SZ_4K | SZ_2M | SZ_1G
_LEVEL_STRIDE = 9
_IOMMU_READ, _IOMMU_WRITE = int(Prot.READ), int(Prot.WRITE)  # plain ints: IntFlag is slow


def vtd_levels_for(width: int) -> int:
    """The fewest table levels (3, 4 or 5) whose IOVA space holds ``width`` bits."""
    return max(3, -(-(width - 12) // _LEVEL_STRIDE))


def vtd_ss_alloc(cfg: IoPgtableCfg, *, set_pte_snp: bool = False, levels: int | None = None
                 ) -> tuple[VtdSsFormat, IoPgtableCfg]:
    """A VT-d second-stage table: ``levels`` deep, IOVAs of ``cfg.ias`` bits.

    The driver picks the depth from SAGAW and the IOVA width from MGAW
    (``compute_vasz_lg2_ss`` in 7.0, ``agaw``/``gaw`` in 6.12); without ``levels``
    the table is the shallowest that holds ``ias`` bits. Page sizes are 4K plus
    the superpages the hardware reports (2M, 1G). ``set_pte_snp`` is what
    ``enforce_cache_coherency`` turns on when the unit has snoop control.
    EINVAL for a depth other than 3-5 or a width the table cannot hold.
    """
    depth = vtd_levels_for(cfg.ias) if levels is None else levels
    if not 3 <= depth <= 5:
        raise InvalidArgument(f"VT-d second stage: {depth} levels (SAGAW offers 3, 4 or 5)")
    if not 12 < cfg.ias <= 12 + _LEVEL_STRIDE * depth:
        raise InvalidArgument(f"VT-d second stage: an address width of {cfg.ias} bits does not "
                              f"fit a {depth}-level table (at most {12 + _LEVEL_STRIDE * depth})")
    if not cfg.pgsize_bitmap & SZ_4K or cfg.pgsize_bitmap & ~_PGSIZES:
        raise InvalidArgument(f"VT-d second stage: pgsize_bitmap {cfg.pgsize_bitmap:#x} "
                              "must hold 4K and only 4K, 2M and 1G")
    return VtdSsFormat(cfg, set_pte_snp, depth), cfg


class VtdSsFormat:
    """The hooks of one VT-d second-stage table (see :class:`~.format.PtFormat`)."""

    name = "INTEL_VTD_SS"
    granule = SZ_4K
    ptes_per_page = 512
    sw_sync_bit = 0  # the model's VT-d walks coherently (ECAP.C)
    split_mark = PTE_SW_SPLIT
    kind_mask = _KIND_MASK
    table_key_mask = ADDR_MASK
    split_blk_unmap = None  # generic_pt and 6.12's own code never split a superpage
    contig_leaves = None
    make_write_dirty = None  # no second-stage dirty tracking in the modelled legacy mode

    def __init__(self, cfg: IoPgtableCfg, set_pte_snp: bool, nlevels: int) -> None:
        self.levels = tuple(
            Level(lvl, 12 + _LEVEL_STRIDE * (lvl - 1), 511, 512, SZ_4K)
            for lvl in range(nlevels, 0, -1))
        self.last_depth = nlevels - 1
        self.ia_shift, self.ia_ext = cfg.ias, 0
        self.set_pte_snp = set_pte_snp
        # 7.0 PT_FEAT_VTDSS_FORCE_WRITEABLE (nest parents: ERRATA_772415_SPR17)
        self.force_writeable = False
        # 6.12 use_first_level: the same tables read as first-stage (IA-32e) entries
        self.first_level = False
        self._leaf_type = tuple(0 if d == self.last_depth else DMA_PTE_LARGE_PAGE
                                for d in range(nlevels))
        # dma_pte_present is R|W != 0; above level 1 the PS bit makes it a leaf.
        self.kinds: tuple[tuple[int, ...], ...] = tuple(
            tuple(INVALID if not v & _PRESENT
                  else LEAF if d == self.last_depth or v & DMA_PTE_LARGE_PAGE else TABLE
                  for v in range(_KIND_MASK + 1))
            for d in range(nlevels))
        self._steps = {d: np.arange(512, dtype=np.uint64) * np.uint64(lvl.block_size)
                       for d, lvl in enumerate(self.levels)}

    def prot_to_attrs(self, prot: int) -> int:
        """``intel_iommu_map``: READ/WRITE from the IOMMU prot, SNP with snoop control. A
        7.0 first-stage table (``x86_64_pt_iommu_set_prot``, present added at install):
        P|U|A, and RW|D when writable."""
        if self.first_level:
            return DMA_PTE_READ | FL_TABLE_BITS | (
                DMA_PTE_WRITE | DMA_FL_PTE_DIRTY if prot & _IOMMU_WRITE else 0)
        attrs = 0
        if prot & _IOMMU_READ:
            attrs |= DMA_PTE_READ
        if prot & _IOMMU_WRITE:
            attrs |= DMA_PTE_WRITE
        if self.set_pte_snp:
            attrs |= DMA_PTE_SNP
        if self.force_writeable and not prot & _IOMMU_WRITE:
            raise InvalidArgument("Read-only mapping is disallowed on the domain which serves "
                                  "as the parent in a nested configuration, due to HW errata "
                                  "(ERRATA_772415_SPR17)")
        return attrs

    def is_leaf(self, pte: int, depth: int) -> bool:
        return self.kinds[depth][pte & _KIND_MASK] == LEAF

    def is_table(self, pte: int, depth: int) -> bool:
        return self.kinds[depth][pte & _KIND_MASK] == TABLE

    def leaf_mask(self, ptes: U64Array, depth: int) -> BoolArray:
        present = (ptes & np.uint64(_PRESENT)) != 0
        if depth == self.last_depth:
            return cast(BoolArray, present)
        return cast(BoolArray, present & ((ptes & np.uint64(DMA_PTE_LARGE_PAGE)) != 0))

    def table_mask(self, ptes: U64Array, depth: int) -> BoolArray:
        if depth == self.last_depth:
            return np.zeros(len(ptes), dtype=np.bool_)
        present = (ptes & np.uint64(_PRESENT)) != 0
        return cast(BoolArray, present & ((ptes & np.uint64(DMA_PTE_LARGE_PAGE)) == 0))

    def make_table(self, table_pa: int, depth: int = 0) -> int:
        """``pfn_to_dma_pte``: ``virt_to_phys(table) | DMA_PTE_READ | DMA_PTE_WRITE`` at every
        depth (first level: with US and A)."""
        return table_pa | _PRESENT | (FL_TABLE_BITS if self.first_level else 0)

    def leaf_oa(self, pte: int) -> int:
        """``dma_pte_addr``."""
        return pte & ADDR_MASK

    table_pa = leaf_oa

    def leaf_value(self, attrs: int, depth: int, pa: int) -> int:
        return attrs | self._leaf_type[depth] | pa

    def fill_leaves(self, out: U64Array, attrs: int, depth: int, pa: int, size: int) -> None:
        """``__domain_mapping``: consecutive leaves of one size from ``pa``."""
        np.add(self._steps[depth][:len(out)], np.uint64(attrs | self._leaf_type[depth] | pa),
               out=out)

    def fill_leaf_rows(self, rows: U64Array, attrs: int, depth: int, pa: int, size: int
                       ) -> None:
        """:meth:`fill_leaves` of whole tables, one per row, in one vector step (model-only
        bulk of ``__domain_mapping`` over consecutive tables)."""
        k, n = rows.shape
        starts = np.arange(k, dtype=np.uint64) * np.uint64(n * size)
        starts += np.uint64(attrs | self._leaf_type[depth] | pa)
        np.add(self._steps[depth][:n][None, :], starts[:, None], out=rows)

    def make_tables(self, table_pas: U64Array) -> U64Array:
        extra = FL_TABLE_BITS if self.first_level else 0
        return cast(U64Array, table_pas | np.uint64(_PRESENT | extra))

    def make_leaves(self, attrs: U64Array, depth: int, oas: U64Array) -> U64Array:
        return cast(U64Array, oas | attrs | np.uint64(self._leaf_type[depth]))

    def leaf_oas(self, ptes: U64Array) -> U64Array:
        return cast(U64Array, ptes & np.uint64(ADDR_MASK))

    def leaf_attrs(self, ptes: U64Array) -> U64Array:
        """The attributes without the A and D a unit with SSADE sets (hardware state, not
        software's: the lab's split and merge put D back with :meth:`with_dirty`)."""
        return cast(U64Array, ptes & np.uint64(
            ~(ADDR_MASK | DMA_PTE_LARGE_PAGE | self._hw_state) & (1 << 64) - 1))

    def run_rows(self, entries: U64Array, depth: int, ignore: int) -> BoolArray:
        """Rows that are one run: leaves with consecutive addresses and one attribute set,
        A and D aside (which pages the unit accessed or dirtied does not stop a merge)."""
        norm = entries & np.uint64(~(ignore | self._hw_state) & ((1 << 64) - 1))
        expected = self._steps[depth][:entries.shape[1]] + norm[:, :1]
        ok = (norm == expected).all(axis=1)
        ok &= self.leaf_mask(norm[:, 0], depth)
        return cast(BoolArray, ok)

    def with_dirty(self, attrs: int) -> int:
        """Attributes of a dirty leaf: A and D, as the unit leaves a leaf it wrote through
        (only a scalable-mode unit with SSADE ever sets D, so legacy mode never asks)."""
        return attrs | self._hw_state

    @property
    def _hw_state(self) -> int:
        """Second-stage A and D; a 6.12 first-level table has no second-stage state."""
        return 0 if self.first_level else _HW_STATE

    def write_dirty_mask(self, ptes: U64Array) -> BoolArray:
        """vtdss ``pt_entry_is_write_dirty``: D (bit 9), which only a scalable-mode unit
        with SSADE sets (legacy mode ignores the bit)."""
        return cast(BoolArray, (ptes & np.uint64(DMA_SL_PTE_DIRTY)) != 0)

    def make_write_clean(self, ptes: U64Array, mask: BoolArray) -> None:
        """Clear D where ``mask`` says."""
        ptes[mask] &= np.uint64(~DMA_SL_PTE_DIRTY & ((1 << 64) - 1))

    def describe(self, pte: int, depth: int) -> str:
        if pte == 0:
            return "empty"
        if self.is_table(pte, depth):
            return "table " + VTD_SS_TABLE.describe(pte)
        if not self.is_leaf(pte, depth):
            return "invalid " + VTD_SS_LEAF.describe(pte)
        kind = "page" if depth == self.last_depth else "superpage"
        return f"{kind} " + VTD_SS_LEAF.describe(pte)
