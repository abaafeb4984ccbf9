"""What one page-table format provides to the shared walker.

This is the generic_pt shape (drivers/iommu/generic_pt/pt_defs.h): a format
is geometry plus a handful of per-entry hooks (load, install leaf, install
table, attributes, dirty test/clear); map, unmap, walk and dirty scans are
written once in :mod:`.walker`. Hooks come in scalar form (one entry, for the
descent) and array form (a run of entries of one table, for bulk work).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from .walker import IoPgtable

__all__ = ["INVALID", "LEAF", "TABLE", "BoolArray", "ContigLeaves", "Level", "PtFormat",
           "SplitBlkUnmap", "U64Array"]

U64Array = npt.NDArray[np.uint64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Level:
    """One level of a table instance, top level first.

    ``lvl`` is the format's own level number (ARM: 0..3, 3 = last);
    ``entries`` bounds a walk of one table at this level (the PGD may be
    smaller or, concatenated, larger than a granule).
    """

    lvl: int
    shift: int
    index_mask: int
    entries: int
    table_bytes: int

    @property
    def block_size(self) -> int:
        return 1 << self.shift


#: Entry kinds in :attr:`PtFormat.kinds` (an empty entry is the value 0).
INVALID, TABLE, LEAF = 0, 1, 2


class SplitBlkUnmap(Protocol):
    """A format's answer to an unmap of ``size`` that lands inside the larger leaf at
    ``table[idx]`` (depth ``depth``): the bytes unmapped, or None to go on unmapping in
    the table it put there. Formats without one refuse (the walker WARNs once, returns
    0); ARM LPAE under 6.12 has :func:`~.arm_lpae.split_blk_unmap`."""

    def __call__(self, pgtbl: IoPgtable, table: U64Array, idx: int, depth: int, iova: int,
                 size: int, pgcount: int, gather: Any) -> int | None: ...


class ContigLeaves(Protocol):
    """Hooks of a format whose leaves may cover several items of one table (generic_pt's
    contiguous entries, AMDv1's encoded page sizes): each item of such a leaf holds the
    same entry, and ``leaf_oa`` is the OA at the leaf's start."""

    def contig_lg2(self, pte: int, depth: int) -> int:
        """``pt_entry_num_contig_lg2``: log2 of the items the leaf ``pte`` covers."""

    def contig_lg2s(self, ptes: U64Array, depth: int) -> U64Array:
        """:meth:`contig_lg2` of many leaves."""


class PtFormat(Protocol):
    """Per-format hooks; ``depth`` indexes :attr:`levels` (0 = top).

    The descent reads two pieces of data instead of calling hooks, so that a
    single map or lookup costs a few operations per level: ``kinds[depth]``
    indexed by ``pte & kind_mask`` gives INVALID/TABLE/LEAF, and
    ``pte & table_key_mask`` identifies the next-level table.

    The optional hooks (:attr:`split_blk_unmap`, :attr:`contig_leaves`,
    :attr:`make_write_dirty`) are None where a format has none.
    """

    name: str
    levels: tuple[Level, ...]
    granule: int
    ptes_per_page: int  # entries of one table page: runs never cross it
    sw_sync_bit: int  # set in table entries once synced on non-coherent walkers (0: none)
    split_mark: int  # software bit the lab sets in pages made by split_blocks
    kind_mask: int
    kinds: tuple[tuple[int, ...], ...]
    table_key_mask: int
    ia_shift: int  # an IOVA is in range when iova >> ia_shift == ia_ext
    ia_ext: int

    def prot_to_attrs(self, prot: int) -> int: ...
    def is_leaf(self, pte: int, depth: int) -> bool: ...
    def is_table(self, pte: int, depth: int) -> bool: ...
    def leaf_mask(self, ptes: U64Array, depth: int) -> BoolArray: ...
    def table_mask(self, ptes: U64Array, depth: int) -> BoolArray: ...
    def make_table(self, table_pa: int, depth: int = 0) -> int:
        """The entry at ``depth`` that points at the table at ``table_pa`` (AMDv1 writes
        the entry's level into it; the walker keys tables by ``make_table(pa) &
        table_key_mask``, which is the same at every depth)."""
    def table_pa(self, pte: int) -> int: ...
    def leaf_oa(self, pte: int) -> int: ...
    def leaf_value(self, attrs: int, depth: int, pa: int) -> int: ...
    def fill_leaves(self, out: U64Array, attrs: int, depth: int, pa: int, size: int) -> None: ...
    def fill_leaf_rows(self, rows: U64Array, attrs: int, depth: int, pa: int, size: int
                       ) -> None:
        """:meth:`fill_leaves` of whole tables at once: row ``i`` of the 2-D ``rows`` is the
        table mapping from ``pa + i * rows.shape[1] * size`` (model-only bulk form)."""
    def make_tables(self, table_pas: U64Array) -> U64Array: ...
    def make_leaves(self, attrs: U64Array, depth: int, oas: U64Array) -> U64Array: ...
    def leaf_oas(self, ptes: U64Array) -> U64Array: ...
    def leaf_attrs(self, ptes: U64Array) -> U64Array: ...
    def run_rows(self, entries: U64Array, depth: int, ignore: int) -> BoolArray: ...
    def with_dirty(self, attrs: int) -> int: ...
    def write_dirty_mask(self, ptes: U64Array) -> BoolArray: ...
    def make_write_clean(self, ptes: U64Array, mask: BoolArray) -> None: ...
    def describe(self, pte: int, depth: int) -> str: ...

    @property
    def split_blk_unmap(self) -> SplitBlkUnmap | None:
        """What an unmap inside a larger leaf does (ARM LPAE under 6.12), else None."""

    @property
    def contig_leaves(self) -> ContigLeaves | None:
        """The contiguous-leaf hooks, or None if every leaf is one item."""

    @property
    def make_write_dirty(self) -> Callable[[U64Array], U64Array] | None:
        """``pt_entry_make_write_dirty`` of many items (generic_pt's ``set_dirty``, for the
        iommufd selftest), or None where the format has no such op."""
