"""AMD IOMMU v1 host page tables, as generic_pt writes them (fmt/amdv1.h, Linux 7.0).

Source: drivers/iommu/generic_pt/fmt/amdv1.h and the AMD I/O Virtualization
Technology spec (section 2.2.3, tables 14 and 15). Levels are numbered as the
core numbers them: level 0 holds the smallest items (AMD's mode 1). Each table
is a 4K page of 512 entries; an item at level ``l`` spans ``granule << 9l``.
The top level cannot hold leaves.

A leaf with ``NEXT_LEVEL`` 0 maps one item. A larger power of two inside one
table is a *contiguous* leaf: ``NEXT_LEVEL`` 7 and the size encoded as a string
of ones in the low bits of the OA field, the same entry written to every item it
covers (``amdv1pt_install_leaf_entry``). 512G is never offered (a hardware bug).
A table entry carries the level of the entry it sits in as its ``NEXT_LEVEL``
and always IR and IW.

The iommufd selftest's mock (``AMDV1_IOMMUFD_SELFTEST``, fmt/iommu_mock.c) is the
same format with a 2K granule, a 56-bit VA, a 51-bit OA and at most level 4:
the OA field then holds ``oa >> 11`` in bits 51:12 (:data:`AMDV1_MOCK`).

Only generic_pt's operations (:mod:`.iommu_pt`) run on this format; the
walker's io-pgtable map and the lab's split/merge are not offered for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np

from ..errors import InvalidArgument
from ..prot import Prot
from ..sizes import SZ_4K
from .bits import Field, Layout, genmask
from .format import INVALID, LEAF, TABLE, BoolArray, Level, U64Array

__all__ = ["AMDV1", "AMDV1_LEAF", "AMDV1_MOCK", "AMDV1_TABLE", "Amdv1Format", "Amdv1Variant"]

AMDV1PT_FMT_PR = 1 << 0
AMDV1PT_FMT_D = 1 << 6
AMDV1PT_FMT_FC = 1 << 60
AMDV1PT_FMT_IR = 1 << 61
AMDV1PT_FMT_IW = 1 << 62
NL_DEFAULT, NL_SIZE = 0, 7  # AMDV1PT_FMT_NL_DEFAULT / AMDV1PT_FMT_NL_SIZE

_PR = Field("PR", 0, 0, "present")
_NL = Field("NEXT_LEVEL", 11, 9, "table: level of this entry; leaf: 0, or 7 for a page size "
            "encoded in the OA")
_OA = Field("OA", 51, 12, "output address >> granule (with a size code's trailing ones)")
_IR = Field("IR", 61, 61, "read permission")
_IW = Field("IW", 62, 62, "write permission")

AMDV1_LEAF = Layout("AMDv1 leaf", (
    _PR,
    Field("D", 6, 6, "dirty (set by the IOMMU on a write)"),
    _NL, _OA,
    Field("FC", 60, 60, "force coherent"),
    _IR, _IW,
))
AMDV1_TABLE = Layout("AMDv1 table", (_PR, _NL, _OA, _IR, _IW))

NL_MASK = _NL.mask
OA_MASK = _OA.mask
_OA_SHIFT = _OA.lo
_KIND_MASK = AMDV1PT_FMT_PR | NL_MASK
_ATTR_MASK = AMDV1PT_FMT_FC | AMDV1PT_FMT_IR | AMDV1PT_FMT_IW  # amdv1pt_attr_from_entry
_TABLE_BITS = AMDV1PT_FMT_PR | AMDV1PT_FMT_IR | AMDV1PT_FMT_IW
_TABLEMEM_LG2 = 12  # PT_TABLEMEM_LG2SZ: every table is one 4K page
_ITEMS_LG2 = _TABLEMEM_LG2 - 3  # 512 eight-byte entries
_SZ_512G = 1 << 39
_IOMMU_READ, _IOMMU_WRITE = int(Prot.READ), int(Prot.WRITE)


@dataclass(frozen=True)
class Amdv1Variant:
    """The compile-time constants of one build of the format (``PT_*`` in amdv1.h)."""

    granule_lg2: int  # PT_GRANULE_LG2SZ
    max_va_lg2: int  # PT_MAX_VA_ADDRESS_LG2
    max_oa_lg2: int  # PT_MAX_OUTPUT_ADDRESS_LG2
    max_top_level: int  # PT_MAX_TOP_LEVEL


AMDV1 = Amdv1Variant(12, 64, 52, 5)
#: ``AMDV1_IOMMUFD_SELFTEST``: 2K pages, to test a page size below the CPU's.
AMDV1_MOCK = Amdv1Variant(11, 56, 51, 4)


class Amdv1Format:
    """The hooks of one AMDv1 table (see :class:`~.format.PtFormat`): ``top_level`` is the
    starting level the driver asked for, ``vasz_lg2`` the IOVA width it got
    (``amdv1pt_iommu_fmt_init``)."""

    name = "AMD_IOMMU_V1"
    granule = SZ_4K  # table memory (PT_TABLEMEM_LG2SZ); the smallest item is levels[-1]
    ptes_per_page = 1 << _ITEMS_LG2
    sw_sync_bit = 0  # coherent walks only
    split_mark = 1 << 1  # an ignored bit; the lab's split/merge do not run here
    kind_mask = _KIND_MASK
    table_key_mask = OA_MASK
    split_blk_unmap = None  # generic_pt refuses to unmap part of a leaf

    def __init__(self, variant: Amdv1Variant, top_level: int, vasz_lg2: int,
                 force_coherence: bool = False) -> None:
        self.variant = variant
        self.top_level = top_level
        self.force_coherence = force_coherence
        g = variant.granule_lg2
        self._g = g
        self.levels = tuple(Level(lvl, g + _ITEMS_LG2 * lvl, self.ptes_per_page - 1,
                                  self.ptes_per_page, 1 << _TABLEMEM_LG2)
                            for lvl in range(top_level, -1, -1))
        self.last_depth = top_level
        self.ia_shift, self.ia_ext = vasz_lg2, 0
        self._isz = tuple(lv.shift for lv in self.levels)
        # amdv1pt_load_entry_raw: not present is empty; level 0 holds only leaves; above
        # it NEXT_LEVEL 0 or 7 is a leaf and anything else a table.
        self.kinds: tuple[tuple[int, ...], ...] = tuple(
            tuple(INVALID if not v & AMDV1PT_FMT_PR
                  else LEAF if d == self.last_depth or (v >> 9) in (NL_DEFAULT, NL_SIZE)
                  else TABLE
                  for v in range(_KIND_MASK + 1))
            for d in range(len(self.levels)))

    # -- geometry -------------------------------------------------------------------------
    def possible_sizes(self, depth: int) -> int:
        """``amdv1pt_possible_sizes``: every power of two from the item size up to half the
        table, at most 2^51, never 512G; none at the top level the hardware allows."""
        lvl = self.levels[depth].lvl
        if lvl >= self.variant.max_top_level:
            return 0
        isz = self._isz[depth]
        return genmask(min(51, isz + _ITEMS_LG2 - 1), isz) & ~_SZ_512G

    def pgsize_bitmap(self, max_oasz_lg2: int) -> int:
        """``get_info``: the sizes of every level, none at or above ``2^max_oasz_lg2``."""
        sizes = 0
        for d in range(len(self.levels)):
            sizes |= self.possible_sizes(d)
        return sizes & ((1 << max_oasz_lg2) - 1)

    # -- attributes ------------------------------------------------------------------------
    def prot_to_attrs(self, prot: int) -> int:
        """``amdv1pt_iommu_set_prot``: FC with PT_FEAT_AMDV1_FORCE_COHERENCE, IR, IW."""
        attrs = AMDV1PT_FMT_FC if self.force_coherence else 0
        if prot & _IOMMU_READ:
            attrs |= AMDV1PT_FMT_IR
        if prot & _IOMMU_WRITE:
            attrs |= AMDV1PT_FMT_IW
        return attrs

    # -- entries -----------------------------------------------------------------------------
    def is_leaf(self, pte: int, depth: int) -> bool:
        return self.kinds[depth][pte & _KIND_MASK] == LEAF

    def is_table(self, pte: int, depth: int) -> bool:
        return self.kinds[depth][pte & _KIND_MASK] == TABLE

    def leaf_mask(self, ptes: U64Array, depth: int) -> BoolArray:
        present = (ptes & np.uint64(AMDV1PT_FMT_PR)) != 0
        if depth == self.last_depth:
            return cast(BoolArray, present)
        nl = (ptes >> np.uint64(9)) & np.uint64(7)
        return cast(BoolArray, present & ((nl == NL_DEFAULT) | (nl == NL_SIZE)))

    def table_mask(self, ptes: U64Array, depth: int) -> BoolArray:
        if depth == self.last_depth:
            return np.zeros(len(ptes), dtype=np.bool_)
        present = (ptes & np.uint64(AMDV1PT_FMT_PR)) != 0
        nl = (ptes >> np.uint64(9)) & np.uint64(7)
        return cast(BoolArray, present & (nl != NL_DEFAULT) & (nl != NL_SIZE))

    def make_table(self, table_pa: int, depth: int = 0) -> int:
        """``amdv1pt_install_table``: PR, NEXT_LEVEL = the level of the entry at ``depth``,
        the table's address, IR and IW (permissions come from the leaves)."""
        return (_TABLE_BITS | self.levels[depth].lvl << 9
                | ((table_pa >> self._g) << _OA_SHIFT & OA_MASK))

    def make_tables(self, table_pas: U64Array) -> U64Array:
        """:meth:`make_table` of many tables at the top depth (the walker's keys)."""
        bits = np.uint64(_TABLE_BITS | self.levels[0].lvl << 9)
        field = (table_pas >> np.uint64(self._g)) << np.uint64(_OA_SHIFT)
        return cast(U64Array, (field & np.uint64(OA_MASK)) | bits)

    def table_pa(self, pte: int) -> int:
        """``amdv1pt_table_pa``."""
        return ((pte & OA_MASK) >> _OA_SHIFT) << self._g

    def leaf_oa(self, pte: int) -> int:
        """``amdv1pt_entry_oa``: the OA at the start of a contiguous leaf (the size code's
        trailing ones cleared)."""
        field = (pte & OA_MASK) >> _OA_SHIFT
        if (pte >> 9) & 7 == NL_SIZE:
            field &= field + 1
        return field << self._g

    @property
    def contig_leaves(self) -> Amdv1Format:
        """A leaf may cover several items (its encoded page size): the hooks are below."""
        return self

    def contig_lg2(self, pte: int, depth: int) -> int:
        """``amdv1pt_entry_num_contig_lg2``: log2 of the items one leaf covers, read as the
        run of ones in ``pte >> (11 + item_lg2 - granule_lg2)`` (NEXT_LEVEL's top bit and
        the size code)."""
        if (pte >> 9) & 7 != NL_SIZE:
            return 0
        code = (pte >> (_OA_SHIFT - 1 + self._isz[depth] - self._g)) & 0xFFFF_FFFF
        return ((code + 1) & ~code).bit_length() - 1

    def contig_lg2s(self, ptes: U64Array, depth: int) -> U64Array:
        """:meth:`contig_lg2` of many leaves."""
        shift = np.uint64(_OA_SHIFT - 1 + self._isz[depth] - self._g)
        code = (ptes >> shift) & np.uint64(0xFFFF_FFFF)
        ones = np.bitwise_count(((code + np.uint64(1)) & ~code) - np.uint64(1))
        sized = ((ptes >> np.uint64(9)) & np.uint64(7)) == np.uint64(NL_SIZE)
        return cast(U64Array, np.where(sized, ones, 0).astype(np.uint64))

    def leaf_value(self, attrs: int, depth: int, pa: int) -> int:
        """One leaf of the item size at ``depth`` (NEXT_LEVEL 0)."""
        return attrs | AMDV1PT_FMT_PR | ((pa >> self._g) << _OA_SHIFT & OA_MASK)

    def sized_leaf(self, attrs: int, depth: int, pa: int, size: int) -> int:
        """``amdv1pt_install_leaf_entry``'s entry for a leaf of ``size`` at ``depth``: the
        item size plain, a larger size with NEXT_LEVEL 7 and ``log2(size) - granule - 1``
        ones in the low bits of the OA field."""
        entry = self.leaf_value(attrs, depth, pa)
        lg2 = size.bit_length() - 1
        if lg2 == self._isz[depth]:
            return entry
        code = (1 << (lg2 - self._g - 1)) - 1
        return entry | NL_SIZE << 9 | (code << _OA_SHIFT & OA_MASK)

    def fill_leaves(self, out: U64Array, attrs: int, depth: int, pa: int, size: int) -> None:
        """Consecutive leaves of ``size`` from ``pa``, each written to all the items it
        covers (``len(out)`` is a whole number of them)."""
        step = size >> self._isz[depth]
        n = len(out) // step
        first = self.sized_leaf(attrs, depth, pa, size)
        values = np.arange(n, dtype=np.uint64) * np.uint64((size >> self._g) << _OA_SHIFT)
        values += np.uint64(first)
        out[:] = values if step == 1 else np.repeat(values, step)

    def fill_leaf_rows(self, rows: U64Array, attrs: int, depth: int, pa: int, size: int
                       ) -> None:
        """:meth:`fill_leaves` of whole tables, one per row (model-only bulk form): a
        leaf never spans two tables, so the rows fill as one run."""
        if not rows.flags.c_contiguous:  # table by table
            for i in range(rows.shape[0]):
                self.fill_leaves(rows[i], attrs, depth,
                                 pa + i * (rows.shape[1] << self._isz[depth]), size)
            return
        self.fill_leaves(rows.reshape(-1), attrs, depth, pa, size)

    def make_leaves(self, attrs: U64Array, depth: int, oas: U64Array) -> U64Array:
        """Item-size leaves elementwise (arrays broadcast)."""
        field = ((oas >> np.uint64(self._g)) << np.uint64(_OA_SHIFT)) & np.uint64(OA_MASK)
        return cast(U64Array, field | attrs | np.uint64(AMDV1PT_FMT_PR))

    def leaf_oas(self, ptes: U64Array) -> U64Array:
        """:meth:`leaf_oa` of many leaves."""
        field = (ptes & np.uint64(OA_MASK)) >> np.uint64(_OA_SHIFT)
        sized = ((ptes >> np.uint64(9)) & np.uint64(7)) == np.uint64(NL_SIZE)
        field = np.where(sized, field & (field + np.uint64(1)), field)
        return cast(U64Array, field << np.uint64(self._g))

    def leaf_attrs(self, ptes: U64Array) -> U64Array:
        """``amdv1pt_attr_from_entry``: FC, IR and IW."""
        return cast(U64Array, ptes & np.uint64(_ATTR_MASK))

    def run_rows(self, entries: U64Array, depth: int, ignore: int) -> BoolArray:
        raise InvalidArgument("AMDv1: the lab's merge is not offered for this format")

    def with_dirty(self, attrs: int) -> int:
        return attrs | AMDV1PT_FMT_D

    # -- dirty ---------------------------------------------------------------------------------
    def write_dirty_mask(self, ptes: U64Array) -> BoolArray:
        """The D bit of each item (``amdv1pt_entry_is_write_dirty`` ORs it over a leaf's
        items)."""
        return cast(BoolArray, (ptes & np.uint64(AMDV1PT_FMT_D)) != 0)

    def make_write_dirty(self, ptes: U64Array) -> U64Array:
        """``amdv1pt_entry_make_write_dirty``: D set in each item (the selftest's dirtier)."""
        return cast(U64Array, ptes | np.uint64(AMDV1PT_FMT_D))

    def make_write_clean(self, ptes: U64Array, mask: BoolArray) -> None:
        """``amdv1pt_entry_make_write_clean``: D cleared in the items of ``mask``."""
        ptes[mask] &= np.uint64(~AMDV1PT_FMT_D & ((1 << 64) - 1))

    def describe(self, pte: int, depth: int) -> str:
        if pte == 0:
            return "empty"
        if self.is_table(pte, depth):
            return f"table {AMDV1_TABLE.describe(pte)} -> {self.table_pa(pte):#x}"
        if not self.is_leaf(pte, depth):
            return "not present " + AMDV1_LEAF.describe(pte)
        size = 1 << (self._isz[depth] + self.contig_lg2(pte, depth))
        return f"{size:#x} leaf at {self.leaf_oa(pte):#x} " + AMDV1_LEAF.describe(pte)
