"""Lab: one-page map and unmap on an :class:`~.walker.IoPgtable`, flattened (model-only).

``arm_lpae_map_pages`` / ``arm_lpae_unmap_pages`` with ``pgcount == 1`` at the
last level, where the leaf table is already in the walker's last-level memo and
the entry is empty (map) or a page leaf (unmap). Everything else (a missing
table, an entry in the way, a bad address or size, a non-coherent walker, a
freed table) returns False before changing anything, and the caller takes the
walker's own ``map_pages``/``unmap_pages``, which stay the reference: the fast
path writes the same entry and counts the same statistics.
"""

from __future__ import annotations

from .arm_lpae import ADDR_MASK, ArmLpaeFormat
from .format import LEAF
from .walker import IoPgtable

__all__ = ["SinglePage"]


class SinglePage:
    """The single-page fast path of one table; see :func:`SinglePage.usable`.

    Reads the walker's geometry and memo once per call through the table (a VT-d
    ``replace_root`` swaps the format: the path then declines until rebuilt).
    """

    __slots__ = (
        "_above",
        "_attrs",
        "_base",
        "_fmt",
        "_ia_ext",
        "_ia_shift",
        "_idx_mask",
        "_idx_shift",
        "_kind_mask",
        "_leaf_kind",
        "_leaf_oa",
        "_leaf_tables",
        "_leaf_type",
        "_leaf_value",
        "_linear",
        "_oa_mask",
        "_oas",
        "_stats",
        "pgsize",
        "pgtbl",
    )

    def __init__(self, pgtbl: IoPgtable) -> None:
        pt = pgtbl.format
        last = len(pt.levels) - 1
        self.pgtbl = pgtbl
        self.pgsize = pt.levels[last].block_size
        self._fmt = pt
        self._above = pt.levels[last - 1].shift
        self._idx_shift = pt.levels[last].shift
        self._idx_mask = pt.levels[last].index_mask
        self._ia_shift, self._ia_ext = pt.ia_shift, pt.ia_ext
        self._oas = pgtbl.cfg.oas
        self._leaf_tables = pgtbl._leaf_tables
        self._attrs = pgtbl._attrs
        self._stats = pgtbl.stats
        self._leaf_kind = pt.kinds[last]
        self._kind_mask = pt.kind_mask
        # ARM LPAE with OAs below 2^48: paddr_to_iopte(pa) is pa itself (its bits 47:12)
        self._linear = isinstance(pt, ArmLpaeFormat) and pgtbl.cfg.oas <= 48
        self._leaf_value = pt.leaf_value
        self._leaf_oa = pt.leaf_oa
        # ARM LPAE: a leaf's OA is 0 exactly when its address bits (47:12) are
        self._oa_mask = ADDR_MASK if isinstance(pt, ArmLpaeFormat) else 0
        self._leaf_type = pt.leaf_value(0, last, 0)
        self._base: dict[int, int] = {}  # attrs | leaf type, by prot

    @staticmethod
    def usable(pgtbl: IoPgtable) -> bool:
        """Whether a table can take the fast path: a multi-level, coherent, live table
        whose smallest page size is its last level's."""
        pt = pgtbl.format
        cfg = pgtbl.cfg
        return len(pt.levels) > 1 and cfg.coherent_walk and not pgtbl._freed \
            and cfg.pgsize_bitmap & -cfg.pgsize_bitmap == pt.levels[-1].block_size

    def map_one(self, iova: int, paddr: int, prot: int) -> bool:
        """``arm_lpae_map_pages(iova, paddr, pgsize, 1, prot)`` when it would write one
        empty last-level entry of an existing table; False (nothing done) otherwise.
        O(1): two dict lookups and one entry write."""
        # The memo only holds tables of in-range IOVAs (it is filled by a map that
        # passed the range check) and is emptied whenever a table is freed, so a hit
        # also means a live table and an IOVA in range.
        table = self._leaf_tables.get(iova >> self._above)
        if table is None or paddr >> self._oas or self.pgtbl.format is not self._fmt:
            return False
        base = self._base.get(prot)
        if base is None:
            attrs = self._attrs.get(prot)
            if attrs is None:
                return False  # the walker checks and caches this prot first
            base = self._base[prot] = attrs | self._leaf_type
        idx = (iova >> self._idx_shift) & self._idx_mask
        if table.item(idx):
            return False  # EEXIST or a table to free: the walker's _clear_for_leaves
        self._stats.map_pages += 1
        if self._linear:
            table[idx] = base | paddr
        else:
            table[idx] = self._leaf_value(self._attrs[prot], len(self._fmt.levels) - 1, paddr)
        return True

    def unmap_one(self, iova: int) -> bool:
        """``arm_lpae_unmap_pages(iova, pgsize, 1, gather)`` when it would clear one page
        leaf of an existing table, without the gather (the caller adds the page); False
        (nothing done) otherwise. O(1)."""
        table = self._leaf_tables.get(iova >> self._above)
        if table is None or self.pgtbl.format is not self._fmt:  # see map_one
            return False
        idx = (iova >> self._idx_shift) & self._idx_mask
        pte = table.item(idx)
        if not pte or self._leaf_kind[pte & self._kind_mask] != LEAF:
            return False  # the walker warns, or unmaps a table under the entry
        self._stats.unmap_pages += 1
        table[idx] = 0
        return True

    def unmap_one_mapped(self, iova: int, off: int) -> bool:
        """:meth:`unmap_one` of the page at ``iova`` when ``arm_lpae_iova_to_phys(iova +
        off)`` is non-zero (dma-iommu's double-unmap check, ``off`` inside the page);
        False (nothing done) otherwise. O(1)."""
        table = self._leaf_tables.get(iova >> self._above)
        if table is None or self.pgtbl.format is not self._fmt:  # see map_one
            return False
        idx = (iova >> self._idx_shift) & self._idx_mask
        pte = table.item(idx)
        if not pte or self._leaf_kind[pte & self._kind_mask] != LEAF:
            return False
        if not off and not (pte & self._oa_mask if self._oa_mask else self._leaf_oa(pte)):
            return False  # iova_to_phys gives 0: the caller's WARN path
        self._stats.unmap_pages += 1
        table[idx] = 0
        return True
